"""What every source provides to the daemon, and the builder its metrics are made with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from exporter.schema import spec

__all__ = ["Families", "PollOutput", "Source", "SourceError"]


class SourceError(Exception):
    """A poll that reached its source but could not use the answer."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Families:
    """Samples by family name (names from :mod:`exporter.schema`), ready to render."""

    __slots__ = ("samples",)

    def __init__(self) -> None:
        self.samples: dict[str, list[Sample]] = {}

    def add(self, name: str, labels: dict[str, str], value: float) -> None:
        """One gauge or counter sample (counter names carry their ``_total``)."""
        self.samples.setdefault(name, []).append(Sample(name, labels, value))

    def histogram(self, name: str, labels: dict[str, str], bounds: Sequence[float],
                  counts: Sequence[float], total: float) -> None:
        """A cumulative histogram: upper bounds (last +Inf), cumulative counts and sum."""
        out = self.samples.setdefault(name, [])
        bucket = name + "_bucket"
        for bound, count in zip(bounds, counts, strict=True):
            out.append(Sample(bucket, {**labels, "le": _le(bound)}, count))
        out.append(Sample(name + "_count", labels, counts[-1]))
        out.append(Sample(name + "_sum", labels, total))


_le_cache: dict[float, str] = {}


def _le(bound: float) -> str:
    text = _le_cache.get(bound)
    if text is None:
        text = str(floatToGoString(bound))  # type: ignore[no-untyped-call]
        if len(_le_cache) < 10_000:
            _le_cache[bound] = text
    return text


@dataclass(frozen=True, slots=True)
class PollOutput:
    """What a successful poll produced."""

    families: Families
    malformed_lines: int = 0
    dropped_series: int = 0
    response_bytes: int = 0
    notes: tuple[str, ...] = field(default=())
    """Short messages worth a debug log (first malformed lines...)."""


class Source(Protocol):
    """One thing polled by one worker: an engine endpoint, NVML, the host..."""

    collector: str
    name: str
    target: str
    """What is polled, for logs and the landing page (a URL without its password...)."""

    def poll(self) -> PollOutput:
        """Read the source once; raise on failure (FetchError, SourceError or anything)."""
        ...

    def health(self, up: bool, last_success: float | None, families: Families) -> None:
        """Add the source's own up/last-success series (rendered even while it is down)."""
        ...

    def close(self) -> None:
        """Release connections or handles."""
        ...


def check_names(families: Families) -> None:
    """Every family name must be in the schema (used by tests)."""
    for name in families.samples:
        spec(name)
