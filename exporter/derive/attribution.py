"""Engines joined to the GPUs they run on: tokens per GPU and per joule, memory pressure.

An engine runs on a GPU when one of its processes (the endpoint's listener and descendants)
is among NVML's running compute processes of that GPU. Pure function: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from exporter.derive.join import EngineFacts, GpuFacts
from exporter.exposition.family import Spec
from exporter.exposition.lines import Families, labelstr

__all__ = ["ENGINE_INFO", "MEMORY_PRESSURE", "PREEMPTION_SATURATION", "TOKENS_PER_JOULE",
           "TOKENS_PER_SECOND", "attribute", "pressure"]

_GPU = ("gpu", "uuid")
ENGINE_INFO = Spec(
    "inference_node_gpu_engine_info", "gauge",
    "An engine endpoint with a process among the GPU's compute processes; always 1.",
    (*_GPU, "engine", "endpoint"))
TOKENS_PER_SECOND = Spec(
    "inference_node_gpu_generation_tokens_per_second", "gauge",
    "Generated tokens per second of the engines on this GPU, each engine's rate split"
    " evenly over the GPUs it runs on (tensor parallel), over the first window.",
    (*_GPU, "window"))
TOKENS_PER_JOULE = Spec(
    "inference_node_gpu_generation_tokens_per_joule", "gauge",
    "Generated tokens per joule: the GPU's tokens per second over its power draw.",
    (*_GPU, "window"))
MEMORY_PRESSURE = Spec(
    "inference_node_gpu_memory_pressure_ratio", "gauge",
    "Memory pressure 0..1: the largest of the KV-cache usage of the engines on the GPU"
    " and their preemption rate per second (1/s reads 1); VRAM used over total when no"
    " engine is known on the GPU.", _GPU)

PREEMPTION_SATURATION = 1.0
"""Preemptions per second at which memory pressure reads 1 (one a second is thrashing)."""


def pressure(kv: float | None, preemptions: float | None) -> float | None:
    """Memory pressure of the engines on a GPU from their KV-cache use and preemption rate."""
    if kv is None and preemptions is None:
        return None
    from_preemptions = min(1.0, (preemptions or 0.0) / PREEMPTION_SATURATION)
    return max(kv or 0.0, from_preemptions)


def attribute(engines: Iterable[EngineFacts], gpus: Iterable[GpuFacts], window: str,
              out: Families) -> None:
    """Add the joined series of ``gpus`` and the ``engines`` on them; rates are taken over
    ``window``. Engines not on this host (no process ids) join no GPU."""
    local = [e for e in engines if e.pids]
    gpus = list(gpus)
    on = {gpu.labels: [e for e in local if e.pids & gpu.pids] for gpu in gpus}
    spread = {id(e): sum(1 for g in gpus if e.pids & g.pids) for e in local}
    for gpu in gpus:
        mine = on[gpu.labels]
        for e in mine:
            out.add(ENGINE_INFO.name,
                    f"{gpu.labels},{labelstr(engine=e.engine, endpoint=e.endpoint)}", 1.0)
        value = _tokens(gpu, mine, spread, window, out) if mine else gpu.memory_used_ratio
        if value is not None:
            out.add(MEMORY_PRESSURE.name, gpu.labels, value)


def _tokens(gpu: GpuFacts, mine: list[EngineFacts], spread: dict[int, int], window: str,
            out: Families) -> float | None:
    """Add the GPU's token rates from the engines on it; return its memory pressure."""
    rates = [e.generation_tokens_per_second.get(window) for e in mine]
    if all(r is not None for r in rates):
        tokens = sum(r / spread[id(e)] for r, e in zip(rates, mine, strict=True)
                     if r is not None)
        out.add(TOKENS_PER_SECOND.name, f'{gpu.labels},window="{window}"', tokens)
        if gpu.power_watts:
            out.add(TOKENS_PER_JOULE.name, f'{gpu.labels},window="{window}"',
                    tokens / gpu.power_watts)
    kv = [e.kv_cache_usage_ratio for e in mine if e.kv_cache_usage_ratio is not None]
    pre = [p for e in mine if (p := e.preemptions_per_second.get(window)) is not None]
    return pressure(max(kv) if kv else None, sum(pre) if pre else None)
