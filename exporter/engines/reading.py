"""What one poll of an inference engine yields, in engine-neutral terms."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["EngineKey", "EngineReading", "HistogramReading"]

EngineKey = tuple[str, str]
"""(model, data-parallel rank)."""


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
    """requests_waiting, requests_running, requests_swapped, kv_cache_usage_ratio,
    kv_cache_capacity_tokens: whichever the engine exposes."""
    counters: dict[str, float] = field(default_factory=dict)
    """prompt_tokens, generation_tokens, preemptions."""
    created: dict[str, float] = field(default_factory=dict)
    """Creation timestamp of each counter, where the engine exposes one."""
    finished: dict[str, float] = field(default_factory=dict)
    """Finished requests by reason."""
    histograms: dict[str, HistogramReading] = field(default_factory=dict)
    """time_to_first_token, inter_token_latency, e2e_request_latency, request_queue_time."""

    @property
    def key(self) -> EngineKey:
        return self.model, self.dp_rank
