"""What the GPU <-> engine join reads: typed records each source hands over with its poll."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["NO_FACTS", "EngineFacts", "Facts", "GpuFacts"]


@dataclass(frozen=True, slots=True)
class GpuFacts:
    """One GPU at one poll, as the join needs it."""

    labels: str
    """``gpu="0",uuid="..."``, rendered."""
    pids: frozenset[int] = frozenset()
    """NVML's running compute processes on the GPU."""
    power_watts: float | None = None
    memory_used_ratio: float | None = None
    """VRAM used over total; the memory pressure when no engine is known on the GPU."""


@dataclass(frozen=True, slots=True)
class EngineFacts:
    """One engine endpoint at one poll, summed over its models and ranks."""

    engine: str
    """The adapter's kind (the ``engine`` label)."""
    endpoint: str
    pids: frozenset[int] = frozenset()
    """The endpoint's listener and its descendants; empty when not on this host."""
    generation_tokens_per_second: Mapping[str, float] = field(default_factory=dict)
    """By window label."""
    preemptions_per_second: Mapping[str, float] = field(default_factory=dict)
    kv_cache_usage_ratio: float | None = None
    """The highest KV-cache usage among the endpoint's engines."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What one poll hands to the join: GPUs (the gpu collector) or one engine endpoint."""

    gpus: tuple[GpuFacts, ...] = ()
    engine: EngineFacts | None = None


NO_FACTS = Facts()
