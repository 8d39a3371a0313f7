"""What every source provides to the daemon: its protocol, its poll's output, its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from exporter.derive.join import NO_FACTS, Facts
from exporter.exposition.lines import Families

__all__ = ["Health", "PollOutput", "Source", "SourceError"]


class SourceError(Exception):
    """A poll that reached its source but could not use the answer."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PollOutput:
    """What a successful poll produced."""

    families: Families
    malformed_lines: int = 0
    dropped_series: int = 0
    response_bytes: int | None = None
    """Size of the upstream answer, for sources that fetch one."""
    taken_at: float | None = None
    """Unix time the reading reflects (mid-request), when the source knows it."""
    notes: tuple[str, ...] = field(default=())
    """Short messages worth a log line (first malformed lines...)."""
    facts: Facts = NO_FACTS
    """What the GPU <-> engine join reads of this poll."""
    cache_bytes: int | None = None
    """Bytes (estimated) the source's parser caches hold, for sources that parse."""


class Source(Protocol):
    """One thing polled by one worker: an engine endpoint, NVML, the host..."""

    collector: str
    name: str
    target: str
    """What is polled, for logs and the landing page (a URL without its password...)."""

    def poll(self) -> PollOutput:
        """Read the source once; raise on failure (FetchError, SourceError or anything)."""
        ...

    def close(self) -> None:
        """Release connections or handles."""
        ...


@runtime_checkable
class Health(Protocol):
    """A source that renders its own up/last-success series (engine endpoints do)."""

    def health(self, up: bool, last_success: float | None, families: Families) -> None:
        """Add the source's own series, rendered even while it is down."""
        ...
