"""The daemon's canaries: one prober per opted-in endpoint, matched to the settings on start
and on every reload, and their series for the scrape."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit, urlunsplit

from exporter import engines, logs
from exporter.canary.prober import Prober, Settings, Target
from exporter.canary.record import Record
from exporter.config import Config
from exporter.exposition.lines import Families
from exporter.fetch import redact

__all__ = ["Canaries", "resolve"]


def _origin(url: str) -> str:
    """``scheme://host:port`` of a metrics URL: where the engines serve their API too."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def resolve(cfg: Config) -> list[Target]:
    """The targets of ``cfg``'s canary settings, resolved against its endpoints (which
    :func:`exporter.config.check` has made sure exist and can be probed)."""
    by_name = {e.name: (kind, e) for kind, ec in cfg.engines.items() for e in ec.endpoints}
    out = []
    for t in cfg.canary_targets:
        kind, e = by_name[t.endpoint]
        api = engines.adapter(kind).canary
        if api is None:
            continue
        out.append(Target(kind, e.name, t.url or _origin(e.url), api, t.model, t.api_key))
    return out


class Canaries:
    """Owns the probers for the life of the daemon."""

    def __init__(self) -> None:
        self.log = logs.get("canary")
        self._lock = threading.Lock()
        self._probers: dict[tuple[str, str], tuple[Prober, tuple[object, ...]]] = {}

    def sync(self, cfg: Config) -> None:
        """Start, keep or replace probers so they match ``cfg``."""
        settings = Settings(cfg.canary_interval, cfg.canary_timeout, cfg.canary_prompt_tokens,
                            cfg.canary_max_tokens)
        wanted = {(t.engine, t.endpoint): t for t in resolve(cfg)}
        fp = (settings, cfg.windows, cfg.quantiles)
        with self._lock:
            for key in list(self._probers):
                prober, old = self._probers[key]
                if wanted.get(key) != prober.target or old != fp:
                    prober.stop()
                    del self._probers[key]
            for key, target in wanted.items():
                if key in self._probers:
                    continue
                record = Record(target.engine, target.endpoint, settings.interval,
                                cfg.windows, cfg.quantiles)
                prober = Prober(target, settings, record)
                self._probers[key] = (prober, fp)
                prober.start()
                self.log.info("canary probing", engine=target.engine, endpoint=target.endpoint,
                              url=redact(target.api_url), model=target.model or "(listed)",
                              every=settings.interval)

    def families(self) -> Families:
        """Every probed endpoint's series."""
        out = Families()
        now = time.monotonic()
        with self._lock:
            records = [p.record for p, _ in self._probers.values()]
        for record in records:
            record.render(now, out)
        return out

    def summary(self) -> tuple[tuple[str, str, str, str], ...]:
        """(engine, endpoint, API URL without password, last outcome) of each prober."""
        with self._lock:
            probers = [p for p, _ in self._probers.values()]
        return tuple((p.target.engine, p.target.endpoint, redact(p.target.api_url),
                      p.last_outcome) for p in probers)

    def stop(self) -> None:
        """Ask every prober to end (a probe in flight ends by its deadline)."""
        with self._lock:
            for prober, _ in self._probers.values():
                prober.stop()
            self._probers.clear()
