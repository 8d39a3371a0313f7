"""Render simulated engine state as a vLLM-style exposition using prometheus_client."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from .expected import HISTOGRAMS, Gauges, Totals, format_le
from .scenario import FINISHED_REASONS, Engine, Naming, Scenario

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BLOCK_SIZE = 16
NUM_GPU_BLOCKS = 2048


@dataclass(frozen=True)
class EngineSnapshot:
    """What one engine exposes at one moment."""

    engine: Engine
    totals: Totals
    gauges: Gauges
    created: float
    """Unix time of the engine's last (re)start, exposed as `_created`."""


class SimCollector(Collector):
    """Collector yielding the vLLM families for a list of engine snapshots."""

    def __init__(
        self, naming: Naming, snapshots: Sequence[EngineSnapshot], process_start: float
    ) -> None:
        self.naming = naming
        self.snapshots = tuple(snapshots)
        self.process_start = process_start

    def _labels(self, engine: Engine) -> tuple[list[str], list[str]]:
        if self.naming == "v1":
            return ["model_name", "engine"], [engine.model, engine.dp_rank]
        return ["model_name"], [engine.model]

    def collect(self) -> Iterator[Metric]:
        """Yield families in the order vLLM registers them."""
        yield from self._runtime()
        if not self.snapshots:
            return
        names, _ = self._labels(self.snapshots[0].engine)
        legacy = self.naming == "legacy"

        def gauge(name: str, doc: str, attr: str) -> GaugeMetricFamily:
            fam = GaugeMetricFamily(name, doc, labels=names)
            for s in self.snapshots:
                fam.add_metric(self._labels(s.engine)[1], float(getattr(s.gauges, attr)))
            return fam

        yield gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", "running"
        )
        yield gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", "waiting"
        )
        if legacy:
            yield gauge(
                "vllm:num_requests_swapped", "Number of requests swapped to CPU.", "swapped"
            )
            yield gauge(
                "vllm:gpu_cache_usage_perc",
                "GPU KV-cache usage. 1 means 100 percent usage.",
                "kv_cache_usage",
            )
        else:
            yield gauge(
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
                "kv_cache_usage",
            )

        def counter(name: str, doc: str, attr: str) -> CounterMetricFamily:
            fam = CounterMetricFamily(name, doc, labels=names)
            for s in self.snapshots:
                fam.add_metric(
                    self._labels(s.engine)[1], float(getattr(s.totals, attr)), created=s.created
                )
            return fam

        yield counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            "preemptions",
        )
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", "prompt_tokens")
        yield counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", "generation_tokens"
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*names, "finished_reason"],
        )
        for s in self.snapshots:
            for reason in FINISHED_REASONS:
                success.add_metric(
                    [*self._labels(s.engine)[1], reason],
                    float(s.totals.finished_reason[reason]),
                    created=s.created,
                )
        yield success

        for spec in HISTOGRAMS:
            fam = HistogramMetricFamily(spec.name(self.naming), spec.documentation, labels=names)
            for s in self.snapshots:
                h = s.totals.histograms[spec.key]
                values = self._labels(s.engine)[1]
                fam.add_metric(values, [(format_le(b), float(c)) for b, c in h.buckets], h.sum)
                fam.samples.append(
                    Sample(
                        fam.name + "_created",
                        dict(zip(names, values, strict=True)),
                        s.created,
                        None,
                        None,
                    )
                )
            yield fam

        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=self._cache_labels(),
        )
        for s in self.snapshots:
            info.add_metric(self._cache_values(s.engine), 1.0)
        yield info

    def _cache_labels(self) -> list[str]:
        base = [
            "block_size",
            "cache_dtype",
            "enable_prefix_caching",
            "gpu_memory_utilization",
            "num_gpu_blocks",
        ]
        return [*base, "engine"] if self.naming == "v1" else base

    def _cache_values(self, engine: Engine) -> list[str]:
        base = [str(BLOCK_SIZE), "auto", "True", "0.9", str(NUM_GPU_BLOCKS)]
        return [*base, engine.dp_rank] if self.naming == "v1" else base

    def _runtime(self) -> Iterator[Metric]:
        gc = CounterMetricFamily(
            "python_gc_objects_collected", "Objects collected during gc", labels=["generation"]
        )
        for gen, n in enumerate((412.0, 87.0, 3.0)):
            gc.add_metric([str(gen)], n)
        yield gc
        info = GaugeMetricFamily(
            "python_info",
            "Python platform information",
            labels=["implementation", "major", "minor", "patchlevel", "version"],
        )
        info.add_metric(["CPython", "3", "12", "3", "3.12.3"], 1.0)
        yield info
        start = GaugeMetricFamily(
            "process_start_time_seconds", "Start time of the process since unix epoch in seconds."
        )
        start.add_metric([], round(self.process_start, 2))
        yield start


def render(naming: Naming, snapshots: Sequence[EngineSnapshot], process_start: float,
           names: Sequence[str] | None = None) -> bytes:
    """Exposition bytes for the snapshots, written by prometheus_client's generate_latest;
    with ``names``, only those samples, as its ``name[]`` parameter gives them."""
    registry = CollectorRegistry(auto_describe=names is not None)
    registry.register(SimCollector(naming, snapshots, process_start))
    return generate_latest(registry if names is None else registry.restricted_registry(names))


def engine_state(scenario: Scenario, snap: EngineSnapshot) -> dict[str, Any]:
    """JSON-ready view of one engine's snapshot (``/_sim/state``'s ``engines``)."""
    t = snap.totals
    histograms: dict[str, Any] = {}
    for spec in HISTOGRAMS:
        h = t.histograms[spec.key]
        histograms[spec.key] = {
            "name": spec.name(scenario.naming),
            "buckets": {format_le(b): c for b, c in h.buckets},
            "sum": h.sum,
            "count": h.count,
        }
    g = snap.gauges
    return {
        "model": snap.engine.model,
        "dp_rank": snap.engine.dp_rank,
        "created": snap.created,
        "gauges": {
            "running": g.running,
            "waiting": g.waiting,
            "swapped": g.swapped,
            "kv_cache_usage": g.kv_cache_usage,
        },
        "counters": {
            "prompt_tokens": t.prompt_tokens,
            "generation_tokens": t.generation_tokens,
            "num_preemptions": t.preemptions,
            "request_success": {r: t.finished_reason[r] for r in FINISHED_REASONS},
        },
        "histograms": histograms,
    }
