"""Finding the inference engines that run on this node, so that none needs configuring.

Each scan lists the processes whose command line is an engine's (its adapter's
:class:`~exporter.engines.adapter.ProcessMatch`) and the TCP ports they listen on (their
sockets, where the daemon may read them; else the port their command line sets, else the
engine's default port). A guess becomes an endpoint only once its metrics URL answers with
that engine's metrics: a look-alike process (a script named after an engine, a port that
serves something else) is never polled. An endpoint stays while its process lives and is
dropped when it exits. Configured endpoints win: a port one of them names is not guessed.
The count is bounded; what is found, dropped or left out is logged once and counted.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import psutil

from exporter import engines, logs
from exporter.config import Config, Endpoint
from exporter.endpoints import endpoint
from exporter.engines.adapter import Adapter
from exporter.expfmt import Parser
from exporter.expfmt_body import parse_body
from exporter.exposition.family import Spec
from exporter.exposition.lines import Families, labelstr
from exporter.fetch import Fetcher, FetchError

__all__ = ["DISCOVERED", "Candidate", "Discovery", "merged"]

DISCOVERED = Spec("inference_node_exporter_discovered_endpoints", "gauge",
                  "Engine endpoints found running on this node and polled, by engine.",
                  ("engine",))
LEFT_OUT = Spec("inference_node_exporter_discovery_left_out_endpoints", "gauge",
                "Engine endpoints found running but not polled, past --engines.max-discovered.",
                ())
PROBE_TIMEOUT = 2.0
"""Seconds a guessed metrics URL has to answer."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A guess: this process of this engine may serve its metrics on this host and port."""

    kind: str
    host: str
    port: int
    pid: int
    started: float
    """The process' creation time: a pid given to a later process is another candidate."""

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


def _probe_host(ip: str) -> str:
    """Where to reach a listener bound to ``ip``: loopback for a wildcard address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "127.0.0.1"
    if address.is_unspecified:
        return "127.0.0.1" if address.version == 4 else "::1"
    return ip


def listening(proc: psutil.Process) -> list[tuple[str, int]]:
    """The (host, port) a process listens on; empty where the daemon may not see its
    sockets (another user's, without root)."""
    try:
        read = getattr(proc, "net_connections", None) or proc.connections  # psutil < 6
        connections = read(kind="tcp")
    except (psutil.Error, OSError):
        return []
    return [(_probe_host(c.laddr.ip), c.laddr.port) for c in connections
            if c.status == psutil.CONN_LISTEN and c.laddr]


def candidates(adapters: Iterable[Adapter]) -> Iterator[Candidate]:
    """Every guess for the processes running now, in process-id order; the sockets of a
    process are read only when its command line is an engine's."""
    adapters = tuple(adapters)
    me = os.getpid()  # its own flags (--vllm.endpoint ...) name engines too
    for proc in sorted(psutil.process_iter(["pid", "cmdline", "create_time"]),
                       key=lambda p: p.pid):
        if proc.pid == me:
            continue
        cmd = proc.info.get("cmdline") or []
        started = proc.info.get("create_time") or 0.0
        ports: list[tuple[str, int]] | None = None
        for a in adapters:
            if not a.processes.matches(cmd):
                continue
            if ports is None:
                ports = listening(proc)
            guesses = ports or [("127.0.0.1", a.processes.port(cmd) or a.default_port)]
            for host, port in sorted(set(guesses)):
                yield Candidate(a.kind, host, port, proc.pid, started)


def answers(adapter: Adapter, url: str, max_bytes: int) -> bool:
    """Whether ``url`` serves ``adapter``'s engine's metrics now."""
    fetcher = Fetcher(url, PROBE_TIMEOUT, max_bytes)
    try:
        exp = parse_body(Parser(), fetcher.get(), adapter.keep)
        readings, _ = adapter.normaliser(1).normalise(exp, "")
    except (FetchError, ValueError):
        return False
    finally:
        fetcher.close()
    return bool(readings)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _address(e: Endpoint) -> tuple[str, int] | None:
    """The local (host, port) a configured endpoint names, loopback names made one."""
    try:
        parts = urlsplit(e.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if host == "localhost" or host.startswith("127."):
        host = "127.0.0.1"
    return host, port


class Discovery:
    """The engines found on this node, scan after scan."""

    def __init__(self, scan: Callable[[], Iterable[Candidate]] | None = None,
                 probe: Callable[[Adapter, str, int], bool] = answers) -> None:
        self.scan_processes = scan or (lambda: candidates(engines.adapters()))
        self.probe = probe
        self.log = logs.get("discovery")
        self.found: dict[Candidate, Endpoint] = {}
        """The confirmed candidates and the endpoint each is polled as."""
        self.left_out = 0
        self._said: set[tuple[str, str, int, int]] = set()
        """Look-alikes already logged: (what, kind, pid, port)."""

    def scan(self, cfg: Config) -> dict[str, tuple[Endpoint, ...]]:
        """Look again; the endpoints to poll by engine kind, configured ones left out."""
        configured = list(_configured(cfg))
        taken = {a for e in configured if (a := _address(e)) is not None}
        names = {e.name for e in configured}
        seen: dict[tuple[str, int], Candidate] = {}
        for c in self.scan_processes():
            if c.address not in taken and c.address not in seen \
                    and c.kind in cfg.collectors:
                seen[c.address] = c
            if len(seen) >= 4 * cfg.max_discovered:
                break
        alive = set(seen.values())
        for c in [c for c in self.found if c not in alive]:
            self.log.info("an engine found earlier is no longer polled as found: its process"
                          " exited, or an endpoint is configured for it", engine=c.kind,
                          endpoint=self.found[c].name, pid=c.pid)
            del self.found[c]
        left_out = 0
        for c in seen.values():
            if c in self.found:
                continue
            adapter = engines.adapter(c.kind)
            url = f"http://{_url_host(c.host)}:{c.port}{adapter.metrics_path}"
            if not self.probe(adapter, url, cfg.max_response_bytes):
                self._once("a process looks like an engine but its port does not serve that"
                           " engine's metrics; not polled", c, url)
                continue
            if len(self.found) >= cfg.max_discovered:
                left_out += 1
                self._once("more engines found than --engines.max-discovered; this one is"
                           " not polled", c, url)
                continue
            name = f"{c.kind}-{c.port}"
            self.found[c] = endpoint(url, name if name not in names else f"{name}-found",
                                     "discovered endpoint", adapter.metrics_path)
            self.log.info("found an engine running on this node; polling it", engine=c.kind,
                          endpoint=self.found[c].name, url=url, pid=c.pid)
        self.left_out = left_out
        out: dict[str, list[Endpoint]] = {}
        for c, e in sorted(self.found.items(), key=lambda item: item[1].name):
            out.setdefault(c.kind, []).append(e)
        return {kind: tuple(es) for kind, es in out.items()}

    def _once(self, message: str, c: Candidate, url: str) -> None:
        key = (message, c.kind, c.pid, c.port)
        if key not in self._said:
            self._said.add(key)
            self.log.info(message, engine=c.kind, url=url, pid=c.pid)

    def families(self) -> Families:
        """The discovery's self-metrics."""
        out = Families()
        counts: dict[str, int] = {}
        for c in self.found:
            counts[c.kind] = counts.get(c.kind, 0) + 1
        for kind in engines.kinds():
            out.add(DISCOVERED.name, labelstr(engine=kind), float(counts.get(kind, 0)))
        out.add(LEFT_OUT.name, "", float(self.left_out))
        return out


def _configured(cfg: Config) -> Iterator[Endpoint]:
    for e in cfg.engines.values():
        yield from e.endpoints


def merged(cfg: Config, found: Mapping[str, tuple[Endpoint, ...]]) -> Config:
    """``cfg`` with the endpoints discovery found added to their engines'."""
    if not found:
        return cfg
    return replace(cfg, engines={
        kind: replace(cfg.engine(kind), endpoints=cfg.engine(kind).endpoints + found.get(
            kind, ())) for kind in {*cfg.engines, *found}})
