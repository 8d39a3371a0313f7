"""What one poll of an inference engine yields, in engine-neutral terms."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.latency import LATENCIES

__all__ = ["COUNTERS", "FINISHED", "GAUGES", "HISTOGRAMS", "SIGNALS", "EngineKey",
           "EngineReading", "HistogramReading"]

EngineKey = tuple[str, str]
"""(model, data-parallel rank)."""

GAUGES = ("requests_waiting", "requests_running", "requests_swapped", "kv_cache_usage_ratio",
          "kv_cache_capacity_tokens")
"""Keys of :attr:`EngineReading.gauges`."""
COUNTERS = ("prompt_tokens", "generation_tokens", "preemptions", "iterations")
"""Keys of :attr:`EngineReading.counters`."""
FINISHED = "requests_finished"
"""The signal of :attr:`EngineReading.finished`."""
HISTOGRAMS = tuple(row.reading for row in LATENCIES)
"""Keys of :attr:`EngineReading.histograms`."""
SIGNALS: tuple[str, ...] = (*GAUGES, *COUNTERS, FINISHED, *HISTOGRAMS)
"""Everything an adapter may map, in the order the support table lists them."""


@dataclass(slots=True)
class HistogramReading:
    """A cumulative histogram as the engine exposed it."""

    bounds: tuple[float, ...]
    """Upper bounds, increasing, the last one +Inf."""
    counts: tuple[float, ...]
    """Cumulative count of each bucket."""
    sum: float
    count: float


@dataclass(slots=True)
class EngineReading:
    """One model served by one engine core (one data-parallel rank) at one poll."""

    model: str
    dp_rank: str
    gauges: dict[str, float] = field(default_factory=dict)
    """By :data:`GAUGES` key: whichever the engine exposes."""
    counters: dict[str, float] = field(default_factory=dict)
    """By :data:`COUNTERS` key."""
    created: dict[str, float] = field(default_factory=dict)
    """Creation timestamp of each counter, where the engine exposes one."""
    finished: dict[str, float] = field(default_factory=dict)
    """Finished requests by reason."""
    histograms: dict[str, HistogramReading] = field(default_factory=dict)
    """By :data:`HISTOGRAMS` key."""
    at_request_end: frozenset[str] | None = None
    """The counters of this reading the engine moves only when a request ends, where that
    depends on which of its names the reading came from; None: the adapter's
    :attr:`~exporter.engines.adapter.Adapter.counted_at_request_end`."""
    durations: dict[str, tuple[float, float]] = field(default_factory=dict)
    """By :data:`HISTOGRAMS` key, for engines without that histogram: cumulative seconds
    spent and the cumulative count they were spent on (requests, tokens), whose deltas give
    a windowed mean and nothing more."""

    @property
    def key(self) -> EngineKey:
        return self.model, self.dp_rank
