"""The latest state of every source, swapped atomically so scrapes never wait on a poll."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from exporter.derive.join import NO_FACTS, Facts

__all__ = ["SnapshotStore", "SourceState"]

SourceKey = tuple[str, str]
"""(collector, source name)."""


@dataclass(frozen=True, slots=True)
class SourceState:
    """One source as of its last poll. Immutable: a new one is published per poll."""

    collector: str
    source: str
    up: bool
    data: Mapping[str, str]
    """Rendered lines by family from the last successful poll (kept while down, until
    stale)."""
    health: Mapping[str, str]
    """The source's own up/last-success series, rendered."""
    last_success: float | None = None
    """Unix time of the last successful poll."""
    last_success_mono: float | None = None
    duration: float = 0.0
    polls: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    malformed_lines: int = 0
    dropped_series: int = 0
    response_bytes: int | None = None
    cache_bytes: int | None = None
    facts: Facts = NO_FACTS
    """The last successful poll's facts (see PollOutput.facts)."""

    @property
    def key(self) -> SourceKey:
        return self.collector, self.source

    def serves_data(self, now: float, stale_after: float) -> bool:
        """Whether its last values are still served: up, or down for at most ``stale_after``."""
        return self.up or (self.last_success_mono is not None
                           and now - self.last_success_mono <= stale_after)


class SnapshotStore:
    """Holds an immutable mapping of source states; publishing replaces the mapping."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: Mapping[SourceKey, SourceState] = {}

    def publish(self, state: SourceState) -> None:
        with self._lock:
            states = dict(self._states)
            states[state.key] = state
            self._states = states

    def remove(self, key: SourceKey) -> None:
        with self._lock:
            states = dict(self._states)
            states.pop(key, None)
            self._states = states

    def current(self) -> Mapping[SourceKey, SourceState]:
        """The latest states; the mapping returned is never modified afterwards."""
        return self._states
