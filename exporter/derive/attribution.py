"""Engines joined to the GPUs they run on: tokens per GPU and per joule, memory pressure.

An engine runs on a GPU when one of its processes (the endpoint's listener and descendants)
is among NVML's running compute processes of that GPU. Pure function: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from exporter.collectors.base import Families, labelstr

__all__ = ["PREEMPTION_SATURATION", "attribute"]

G = "inference_node_gpu_"
PREEMPTION_SATURATION = 1.0
"""Preemptions per second at which memory pressure reads 1 (one a second is thrashing)."""


def pressure(kv: float | None, preemptions: float | None) -> float | None:
    """Memory pressure of the engines on a GPU from their KV-cache use and preemption rate."""
    if kv is None and preemptions is None:
        return None
    from_preemptions = min(1.0, (preemptions or 0.0) / PREEMPTION_SATURATION)
    return max(kv or 0.0, from_preemptions)


def attribute(engines: Iterable[Mapping[str, Any]], gpus: Iterable[Mapping[str, Any]],
              window: str, out: Families) -> None:
    """Add the joined series for ``gpus`` (facts of the gpu collector) and ``engines``
    (facts of each engine endpoint); rates are taken over ``window``."""
    engines = [e for e in engines if e.get("pids")]
    gpus = list(gpus)
    on: dict[str, list[Mapping[str, Any]]] = {}
    for gpu in gpus:
        on[gpu["labels"]] = [e for e in engines if e["pids"] & gpu["pids"]]
    spread = {e["endpoint"]: sum(1 for g in gpus if e in on[g["labels"]]) for e in engines}
    for gpu in gpus:
        labels = gpu["labels"]
        mine = on[labels]
        for e in mine:
            out.add(G + "engine_info",
                    f"{labels},{labelstr(engine='vllm', endpoint=e['endpoint'])}", 1.0)
        if mine:
            rates = [e["generation_tokens_per_second"].get(window) for e in mine]
            if all(r is not None for r in rates):
                tokens = sum(r / spread[e["endpoint"]] for r, e in zip(rates, mine, strict=True))
                out.add(G + "generation_tokens_per_second", f'{labels},window="{window}"',
                        tokens)
                watts = gpu.get("power_watts")
                if watts:
                    out.add(G + "generation_tokens_per_joule", f'{labels},window="{window}"',
                            tokens / watts)
            kv = [e["kv_cache_usage_ratio"] for e in mine
                  if e["kv_cache_usage_ratio"] is not None]
            pre = [p for e in mine if (p := e["preemptions_per_second"].get(window)) is not None]
            value = pressure(max(kv) if kv else None, sum(pre) if pre else None)
        else:
            value = gpu.get("memory_used_ratio")
        if value is not None:
            out.add(G + "memory_pressure_ratio", labels, value)
