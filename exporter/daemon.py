"""The daemon: workers per source, the web server, signals (SIGTERM stop, SIGHUP reload), and
systemd's notifications (READY, RELOADING, STOPPING, and watchdog pings while polling keeps its
schedule)."""

from __future__ import annotations

import ctypes
import gc
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from exporter import __version__, logs
from exporter.canary.probes import Canaries
from exporter.collectors import build_sources
from exporter.config import Config, Endpoint
from exporter.discovery import Discovery, merged
from exporter.exposition.lines import Families
from exporter.exposition.render import Renderer
from exporter.sdnotify import Notifier
from exporter.settings import ConfigError, format_duration
from exporter.snapshot import SnapshotStore
from exporter.wakeup import Wakeup
from exporter.web import Health, WebServer
from exporter.webconfig import WebConfig
from exporter.worker import PollWorker

__all__ = ["Daemon"]

_STOP_BUDGET = 1.5
"""Seconds stop() may spend waiting for workers; SIGTERM must end the process within 2 s."""


def _engine_limits(cfg: Config) -> tuple[tuple[str, int], ...]:
    return tuple((kind, e.max_engines_per_endpoint) for kind, e in cfg.engines.items())


def _fingerprint(cfg: Config) -> tuple[object, ...]:
    """The settings a worker is built with; a change means a new worker on reload."""
    return (cfg.poll_interval, cfg.poll_timeout, cfg.max_backoff, cfg.max_response_bytes,
            cfg.windows, cfg.quantiles, _engine_limits(cfg), cfg.gpu_expected_count,
            cfg.dcgm_url, cfg.pricing)


def _return_large_blocks() -> None:
    """Make glibc hand blocks of 256 KiB or more straight back to the system when freed.

    By default glibc raises that threshold to the largest block freed so far, so after one
    16 MiB answer every later large buffer comes from the heap, which it rarely shrinks: the
    daemon's memory would stay at the high-water mark of the largest answers ever read.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD (fixed: no dynamic raising)
        libc.mallopt(-1, 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


class Daemon:
    """Owns the workers and the web server for the life of the process."""

    def __init__(self, cfg: Config, loader: Callable[[], tuple[Config, WebConfig | None]],
                 notifier: Notifier | None = None, web: WebConfig | None = None) -> None:
        self.cfg = cfg
        self.web_config = web
        self.loader = loader
        self.log = logs.get("daemon")
        self.store = SnapshotStore()
        self.discovery = Discovery()
        self.discovered: dict[str, tuple[Endpoint, ...]] = {}
        """The endpoints discovery polls now, by engine kind."""
        self.canaries = Canaries()
        self.renderer = Renderer(self.store, lambda: self.cfg.stale_after,
                                 window=lambda: format_duration(self.cfg.windows[0]),
                                 extra=self._own_metrics)
        self.web = WebServer(cfg.host_port, self.renderer.render, self.health, web)
        self.workers: dict[tuple[str, str], tuple[PollWorker, tuple[object, ...]]] = {}
        self._wake: Wakeup | None = None
        """The main loop's wake-up, made by :meth:`run` (the only one that waits on it)."""
        self._apply_lock = threading.Lock()
        """Held while the workers are made to match the settings (reload, discovery)."""
        self._stop_discovery = threading.Event()
        self._discovery_thread: threading.Thread | None = None
        self._stopping = False
        self._reload = False
        self.notifier = Notifier() if notifier is None else notifier
        self._watchdog_withheld = False
        self._notify_failing = False

    def start(self) -> None:
        # A thread that waits for the interpreter (a scrape, while a poll parses a large
        # answer) gets it within 0.5 ms rather than the default 5 ms: a scrape waits for it
        # at each of its socket calls.
        sys.setswitchinterval(0.0005)
        self.web.start()
        self._apply(self.cfg)
        self._discovery_thread = threading.Thread(target=self._discover, name="discovery",
                                                  daemon=True)
        self._discovery_thread.start()
        gc.freeze()  # what start-up made lives for good: no collection scans it again
        _return_large_blocks()
        self.log.info("started", version=__version__, listen=self.cfg.listen_address,
                      port=self.web.port, config=self.cfg.source,
                      collectors=sorted(self.cfg.collectors),
                      sources=[f"{c}/{s}" for c, s in self.workers],
                      interval=format_duration(self.cfg.poll_interval))

    def _discover(self) -> None:
        """Scan the node for engines now and every ``discover_interval``; a change of what is
        found makes the workers match it."""
        while not self._stop_discovery.is_set():
            cfg = self.cfg
            try:
                found = self.discovery.scan(cfg) if cfg.discover else {}
                if found != self.discovered:
                    with self._apply_lock:
                        if self._stop_discovery.is_set():
                            return  # stopping: start no worker
                        self.discovered = found
                        self._sync(self.cfg)
            except Exception:  # a scan must never end the daemon
                self.log.exception("searching the node for engines failed")
            self._stop_discovery.wait(cfg.discover_interval)

    def _own_metrics(self) -> Families:
        """Discovery's series and the canaries'."""
        out = self.canaries.families()
        if self.cfg.discover:
            for name, lines in self.discovery.families().lines.items():
                out.lines.setdefault(name, []).extend(lines)
        return out

    def _apply(self, cfg: Config) -> None:
        """Start, keep or replace workers so they match ``cfg`` and what discovery found."""
        with self._apply_lock:
            if not cfg.discover:
                self.discovered = {}
            self._sync(cfg)
            self.canaries.sync(cfg)

    def _sync(self, cfg: Config) -> None:
        fp = _fingerprint(cfg)
        wanted = {(s.collector, s.name): s for s in build_sources(merged(cfg, self.discovered))}
        for key in list(self.workers):
            worker, old_fp = self.workers[key]
            new = wanted.get(key)
            if new is None or old_fp != fp or new.target != worker.source.target:
                worker.stop()
                worker.join(0)
                del self.workers[key]
                self.store.remove(key)
        for key, source in wanted.items():
            if key in self.workers:
                source.close()
                continue
            worker = PollWorker(source, cfg, self.store)
            self.workers[key] = (worker, fp)
            worker.start()
        self.cfg = cfg

    def reload(self) -> None:
        """Re-read the configuration; a bad one is logged (one line) and the old one stays.

        Nothing raised here may end the daemon: any failure keeps the running configuration.
        """
        old = self.cfg
        try:
            new, web = self.loader()
        except Exception as exc:  # ConfigError, or anything the loader did not foresee
            error = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            self.log.error("reload rejected; keeping the running configuration",
                           error=str(ConfigError(error)))
            return
        try:
            if new.listen_address != old.listen_address:
                self.log.warning("the listen address changes only on restart",
                                 running=old.listen_address, configured=new.listen_address)
            if new.log_level != old.log_level or new.log_format != old.log_format:
                logs.configure(new.log_level, new.log_format)
            self.web.configure(web)
            self._apply(new)
            self.web_config = web
        except Exception as exc:
            self.log.error("reload failed; keeping the running configuration",
                           error=f"{type(exc).__name__}: {exc}")
            self._restore(old, self.web_config)
            return
        self.log.info("configuration reloaded", config=new.source,
                      sources=[f"{c}/{s}" for c, s in self.workers])

    def _restore(self, old: Config, web: WebConfig | None) -> None:
        """Put back ``old`` after a reload that failed halfway."""
        try:
            logs.configure(old.log_level, old.log_format)
            self.web.configure(web)
            self._apply(old)
        except Exception as exc:
            self.log.error("restoring the running configuration failed", error=str(exc))

    def stalled(self) -> list[str]:
        """The sources whose poll loop has fallen behind its schedule (a poll that hangs)."""
        return [f"{c}/{s}" for (c, s), (w, _) in list(self.workers.items()) if not w.alive]

    def health(self) -> Health:
        stuck = self.stalled()
        states = self.store.current()
        found = {(kind, e.name) for kind, es in self.discovered.items() for e in es}
        sources = tuple(
            (c, s, w.source.target + (" (found running on this node)"
                                      if (c, s) in found else ""),
             bool(states.get((c, s)) and states[(c, s)].up))
            for (c, s), (w, _) in list(self.workers.items())
        )
        canaries = self.canaries.summary()
        if not self.workers:
            return Health(False, "no source is being polled", sources, canaries)
        if stuck:
            return Health(False, "polling stalled for " + ", ".join(stuck), sources, canaries)
        return Health(True, f"{len(self.workers)} sources polled on schedule", sources,
                      canaries)

    def request_stop(self, *_: object) -> None:
        """Ask :meth:`run` to stop; safe in a signal handler (no lock taken)."""
        self._stopping = True
        if (wake := self._wake) is not None:
            wake.set()

    def request_reload(self, *_: object) -> None:
        """Ask :meth:`run` to reload; safe in a signal handler (no lock taken)."""
        self._reload = True
        if (wake := self._wake) is not None:
            wake.set()

    def run(self) -> int:
        """Start, then serve until SIGTERM or SIGINT; returns the exit code."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if signum == signal.SIGHUP:
                self.request_reload()
            else:
                self.request_stop()

        wake = self._wake = Wakeup()
        wake.wake_on_signals()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)
        self.start()
        self._notify("ready", self.notifier.ready(self._status()))
        ping_every = self.notifier.watchdog_interval
        next_ping = time.monotonic()
        while True:
            wake.wait(None if ping_every is None else max(0.0, next_ping - time.monotonic()))
            if self._stopping:
                break
            if self._reload:
                self._reload = False
                self._notify("reloading", self.notifier.reloading())
                self.reload()
                self._notify("ready", self.notifier.ready(self._status()))
            if ping_every is not None and time.monotonic() >= next_ping:
                self._watchdog()
                next_ping = time.monotonic() + ping_every
        self._notify("stopping", self.notifier.stopping())
        self.stop()
        return 0

    def _status(self) -> str:
        """The one line ``systemctl status`` shows."""
        n = len(self.workers)
        return (f"polling {n} source{'' if n == 1 else 's'} every"
                f" {format_duration(self.cfg.poll_interval)}; serving on port {self.web.port}")

    def _watchdog(self) -> None:
        """Ping systemd's watchdog, but only while every poll loop keeps its schedule.

        A loop stuck in a poll stops the pings, so that systemd restarts the daemon once
        ``WatchdogSec`` has passed; the pings resume if the loop recovers before that.
        """
        stalled = self.stalled()
        if stalled:
            if not self._watchdog_withheld:
                self._watchdog_withheld = True
                self.log.error("polling stalled; watchdog pings withheld", stalled=stalled)
                self.notifier.status("polling stalled for " + ", ".join(stalled))
            return
        if self._watchdog_withheld:
            self._watchdog_withheld = False
            self.log.warning("polling on schedule again; watchdog pings resumed")
            self.notifier.status(self._status())
        self._notify("watchdog", self.notifier.watchdog())

    def _notify(self, what: str, sent: bool) -> None:
        """Log when notifications to systemd start failing (once), and when they work again."""
        if not self.notifier.enabled:
            return
        if not sent and not self._notify_failing:
            self._notify_failing = True
            self.log.warning("cannot notify the service manager", message=what,
                             socket=self.notifier.socket, error=str(self.notifier.last_error))
        elif sent and self._notify_failing:
            self._notify_failing = False
            self.log.info("notifying the service manager again", message=what)

    def stop(self) -> None:
        """Stop polling and serving, within :data:`_STOP_BUDGET` seconds plus the web stop."""
        started = time.monotonic()
        self._stop_discovery.set()
        with self._apply_lock:  # a scan that found something finishes applying it first
            workers = list(self.workers.values())
        for worker, _ in workers:
            worker.stop()
        self.canaries.stop()
        self.web.stop()
        for worker, _ in workers:
            worker.join(max(0.0, _STOP_BUDGET - (time.monotonic() - started)))
        self.log.info("stopped", seconds=round(time.monotonic() - started, 3))
