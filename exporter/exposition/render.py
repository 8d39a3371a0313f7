"""Renders ``/metrics``: every source's pre-rendered series merged by family, self-metrics,
and the process metrics of prometheus_client.

Sources render their lines when they poll, so a scrape joins strings and reads nothing that
a poll could hold up. A source whose series cannot be rendered is left out of that scrape and
counted; the scrape itself always succeeds. The format is the text format 0.0.4, which every
Prometheus release reads.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from threading import Lock

from prometheus_client import ProcessCollector, generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter import __version__, logs
from exporter.derive.attribution import attribute
from exporter.derive.platform import fingerprint
from exporter.exposition import selfmetrics
from exporter.exposition.lines import Families, labelstr
from exporter.kinds import PLATFORM
from exporter.schema import LIVE, SCHEMA, Spec
from exporter.snapshot import SnapshotStore, SourceState

__all__ = ["CONTENT_TYPE", "Renderer"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _header(spec: Spec) -> str:
    help_text = spec.help.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {spec.name} {help_text}\n# TYPE {spec.name} {spec.type}\n"


_HEADERS = {spec.name: _header(spec) for spec in SCHEMA}


class Renderer:
    """Builds the ``/metrics`` body from a :class:`SnapshotStore`."""

    def __init__(self, store: SnapshotStore, stale_after: Callable[[], float],
                 process_metrics: bool = True,
                 window: Callable[[], str] = lambda: "1m",
                 extra: Callable[[], Families] = Families) -> None:
        self.store = store
        self.extra = extra
        """Series of the daemon's own beside the sources' (discovery's)."""
        self.stale_after = stale_after
        self.window = window
        """The window label the GPU attribution takes engine rates over."""
        self.log = logs.get("exposition")
        self._render_errors: dict[str, int] = {}
        self._lock = Lock()
        self._build = labelstr(version=__version__, python_version=platform.python_version())
        self._process: CollectorRegistry | None = None
        if process_metrics:
            self._process = CollectorRegistry(auto_describe=False)
            ProcessCollector(registry=self._process)

    def render(self) -> bytes:
        """The whole body; never raises for a source's sake."""
        states = self.store.current()
        ordered = [states[key] for key in sorted(states)]
        merged: dict[str, list[str]] = {}
        now = time.monotonic()
        stale_after = self.stale_after()
        for state in ordered:
            try:
                self._source(state, merged, now, stale_after)
            except Exception:
                with self._lock:
                    self._render_errors[state.collector] = (
                        self._render_errors.get(state.collector, 0) + 1)
                self.log.exception("rendering a source failed", collector=state.collector,
                                   source=state.source)
        with self._lock:
            errors = dict(self._render_errors)
        for name, text in selfmetrics.render(self._build, ordered, errors).joined().items():
            merged.setdefault(name, []).append(text)
        try:
            for name, text in self.extra().joined().items():
                merged.setdefault(name, []).append(text)
        except Exception:
            self.log.exception("rendering the daemon's own series failed")
        try:
            for name, text in self._attribution(ordered, now, stale_after).joined().items():
                merged.setdefault(name, []).append(text)
        except Exception:
            with self._lock:
                self._render_errors["attribution"] = self._render_errors.get("attribution", 0) + 1
            self.log.exception("joining engines to GPUs failed")
        out: list[str] = []
        for spec in SCHEMA:
            chunks = merged.get(spec.name)
            if chunks:
                out.append(_HEADERS[spec.name])
                out.extend(chunks)
        body = "".join(out).encode()
        if self._process is not None:
            body += generate_latest(self._process)
        return body

    def _attribution(self, states: list[SourceState], now: float,
                     stale_after: float) -> Families:
        out = Families()
        serving = [s.facts for s in states if s.serves_data(now, stale_after)]
        gpus = [g for facts in serving for g in facts.gpus]
        engines = [facts.engine for facts in serving if facts.engine is not None]
        if gpus:
            attribute(engines, gpus, self.window(), out)
        host = next((facts.host for facts in serving if facts.host is not None), None)
        gpu_up = any(s.collector == "gpu" and s.up for s in states)
        engines_up = all(s.up for s in states if s.collector not in PLATFORM)
        fingerprint(host, gpus if gpu_up else None, engines, engines_up, out)
        return out

    @staticmethod
    def _source(state: SourceState, merged: dict[str, list[str]], now: float,
                stale_after: float) -> None:
        staged: list[tuple[str, str]] = list(state.health.items())
        if state.up:
            staged.extend(state.data.items())
        elif state.serves_data(now, stale_after):
            # Down: the last known state, but no rate or percentile it can no longer vouch for.
            staged.extend(item for item in state.data.items() if item[0] not in LIVE)
        for name, _ in staged:
            if name not in _HEADERS:
                raise KeyError(f"family {name!r} is not in the schema")
        for name, text in staged:
            merged.setdefault(name, []).append(text)
