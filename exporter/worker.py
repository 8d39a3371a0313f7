"""One thread per source: poll on a fixed cadence, back off while failing, publish states."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter

from exporter import logs
from exporter.collectors.base import Health, PollOutput, Source, SourceError
from exporter.config import Config
from exporter.derive.join import NO_FACTS
from exporter.exposition.lines import Families
from exporter.fetch import FetchError
from exporter.snapshot import SnapshotStore, SourceState

__all__ = ["BACK_OFF", "PollWorker", "next_due"]

BACK_OFF = frozenset({"timeout", "too_large", "nvml_init"})
"""Failure reasons that cost the source real work (a poll held to its deadline, a huge
answer read, a driver initialised): only these are retried with backoff."""

_GRACE = 2.0
"""Seconds a worker may overrun its schedule before /healthz calls polling dead."""


def next_due(due: float, now: float, interval: float) -> float:
    """When the next poll starts: ``due``, or, when that has passed (a stall, an overrun),
    the first tick after ``now`` on the same cadence: missed ticks are skipped, never made
    up by polling again at once."""
    if due > now:
        return due
    return due + math.floor((now - due) / interval + 1) * interval


class PollWorker:
    """Polls one source until stopped; never lets an exception end the thread."""

    def __init__(self, source: Source, cfg: Config, store: SnapshotStore) -> None:
        self.source = source
        self.cfg = cfg
        self.store = store
        self.log = logs.get("worker").bind(collector=source.collector, source=source.name)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"poll-{source.collector}-{source.name}", daemon=True
        )
        self.alive_until = time.monotonic() + cfg.poll_interval + cfg.poll_timeout + _GRACE
        self._polls = 0
        self._errors: Counter[str] = Counter()
        self._malformed = 0
        self._dropped = 0
        self._failures = 0
        self._last: PollOutput | None = None
        self._data: dict[str, str] = {}
        self._last_success: float | None = None
        self._last_success_mono: float | None = None
        self._was_up: bool | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; it finishes within one poll timeout."""
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the poll loop is running on schedule."""
        return self._thread.is_alive() and time.monotonic() <= self.alive_until

    def poll_once(self) -> SourceState:
        """Poll now, publish and return the new state (the loop calls this; tests may too)."""
        start = time.monotonic()
        up = False
        try:
            out = self.source.poll()
            up = True
        except (FetchError, SourceError) as exc:
            self._fail(exc.reason, str(exc))
        except Exception as exc:  # a bug must not end polling
            self._fail("internal", f"{type(exc).__name__}: {exc}", exc_info=True)
        duration = time.monotonic() - start
        self._polls += 1
        if up:
            self._succeed(out)
        health = Families()
        if isinstance(self.source, Health):
            self.source.health(up, self._last_success, health)
        state = SourceState(
            collector=self.source.collector,
            source=self.source.name,
            up=up,
            data=self._data,
            health=health.joined(),
            last_success=self._last_success,
            last_success_mono=self._last_success_mono,
            duration=duration,
            polls=self._polls,
            errors=dict(self._errors),
            malformed_lines=self._malformed,
            dropped_series=self._dropped,
            response_bytes=self._last.response_bytes if self._last is not None else None,
            cache_bytes=self._last.cache_bytes if self._last is not None else None,
            facts=self._last.facts if self._last is not None and up else NO_FACTS,
        )
        self.store.publish(state)
        return state

    def _succeed(self, out: PollOutput) -> None:
        if out.malformed_lines and not self._malformed:
            self.log.warning("malformed upstream lines skipped", count=out.malformed_lines,
                             first=list(out.notes[:3]))
        if out.dropped_series and not self._dropped:
            self.log.warning("series limit reached; label sets dropped",
                             dropped=out.dropped_series)
        self._malformed += out.malformed_lines
        self._dropped += out.dropped_series
        now = time.monotonic()
        if self._was_up is False and self._last_success_mono is not None:
            down_for = round(now - self._last_success_mono, 3)
            self.log.info("source up again", down_for_seconds=down_for)
        elif self._was_up is not True:
            self.log.info("source up", target=self.source.target)
        self._was_up = True
        self._failures = 0
        self._last = out
        self._data = out.families.joined()
        self._last_success = out.taken_at if out.taken_at is not None else time.time()
        self._last_success_mono = now

    def _fail(self, reason: str, message: str, exc_info: bool = False) -> None:
        self._errors[reason] += 1
        # Only what is expensive backs off: a refused connection costs nothing to retry, and
        # a source that comes back must be seen within one interval of answering.
        self._failures = self._failures + 1 if reason in BACK_OFF else 0
        if self._was_up is not False:
            self.log.warning("source down", reason=reason, error=message, exc_info=exc_info)
        else:
            self.log.debug("source still down", reason=reason, error=message)
        self._was_up = False

    def next_delay(self) -> float:
        """Seconds from one poll's start to the next: the interval, longer while failing in
        a way that is expensive (time-outs, oversized answers)."""
        interval = self.cfg.poll_interval
        if self._failures <= 1:
            return interval
        backoff: float = interval * 2.0 ** min(self._failures - 1, 30)
        return min(backoff, max(self.cfg.max_backoff, interval))

    def _run(self) -> None:
        due = time.monotonic()
        try:
            while not self._stop.is_set():
                self.poll_once()
                now = time.monotonic()
                due = next_due(due + self.next_delay(), now, self.cfg.poll_interval)
                self.alive_until = due + self.cfg.poll_timeout + _GRACE
                self._stop.wait(due - now)
        finally:
            self.source.close()
