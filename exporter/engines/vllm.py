"""vLLM: its metric names, current and older, mapped onto the engine-neutral reading.

vLLM labels every family with ``model_name`` and, from V1 on, ``engine`` (the data-parallel
rank). Finished requests carry ``finished_reason``. The KV-cache capacity is not a family of
its own but the labels of ``vllm:cache_config_info`` (blocks times block size), which has no
model label and applies to every model of that engine core.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from exporter.engines.adapter import Adapter, ProcessMatch
from exporter.engines.common import Readings, first
from exporter.engines.histograms import HistogramReader
from exporter.engines.reading import EngineKey, EngineReading
from exporter.expfmt import Exposition

__all__ = ["ADAPTER", "COUNTERS", "GAUGES", "HISTOGRAMS", "KEEP", "Normaliser"]


# Our signal -> vLLM names, preferred first. Older vLLM releases use the later names.
GAUGES: dict[str, tuple[str, ...]] = {
    "requests_waiting": ("vllm:num_requests_waiting",),
    "requests_running": ("vllm:num_requests_running",),
    "requests_swapped": ("vllm:num_requests_swapped",),
    "kv_cache_usage_ratio": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
}
COUNTERS: dict[str, tuple[str, ...]] = {
    "prompt_tokens": ("vllm:prompt_tokens",),
    "generation_tokens": ("vllm:generation_tokens",),
    "preemptions": ("vllm:num_preemptions",),
}
FINISHED = "vllm:request_success"
CACHE_INFO = "vllm:cache_config_info"
HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "time_to_first_token": ("vllm:time_to_first_token_seconds",),
    # The older name was observed per output token too, so it is the same measure.
    "inter_token_latency": ("vllm:inter_token_latency_seconds",
                            "vllm:time_per_output_token_seconds"),
    "e2e_request_latency": ("vllm:e2e_request_latency_seconds",),
    "request_queue_time": ("vllm:request_queue_time_seconds",),
}

KEEP: frozenset[str] = frozenset(
    [n for names in GAUGES.values() for n in names]
    + [n + s for names in COUNTERS.values() for n in names for s in ("_total", "_created")]
    + [FINISHED + "_total", FINISHED + "_created", CACHE_INFO]
    + [n + s for names in HISTOGRAMS.values() for n in names
       for s in ("", "_bucket", "_sum", "_count")]
)
"""The samples the parser should read at all; the rest are skipped unparsed."""


def _key(labels: Mapping[str, str]) -> EngineKey | None:
    if "model_name" not in labels:
        return None
    return labels["model_name"], labels.get("engine", "0")


class Normaliser:
    """Turns a parsed vLLM exposition into one reading per (model, rank), capped in number."""

    def __init__(self, max_engines: int) -> None:
        self.max_engines = max_engines
        self.histograms = HistogramReader(_key)

    def normalise(self, exp: Exposition, model: str = "") -> tuple[list[EngineReading], int]:
        """Readings found, and how many label sets were dropped by the cap (vLLM labels its
        samples with the model: ``model`` is not needed)."""
        readings = Readings(self.max_engines)

        def get(labels: Mapping[str, str]) -> EngineReading | None:
            return readings.get(_key(labels))

        for ours, names in GAUGES.items():
            for _, labels, value, _ts in first(exp, names):
                if (r := get(labels)) is not None and math.isfinite(value):
                    r.gauges[ours] = value
        for ours, names in COUNTERS.items():
            for _, labels, value, _ts in first(exp, names, "_total"):
                if (r := get(labels)) is not None and math.isfinite(value):
                    r.counters[ours] = r.counters.get(ours, 0.0) + value
            for _, labels, value, _ts in first(exp, names, "_created"):
                if (r := get(labels)) is not None:
                    r.created[ours] = value
        for _, labels, value, _ts in exp.get(FINISHED + "_total"):
            reason = labels.get("finished_reason", "unknown")
            if (r := get(labels)) is not None and math.isfinite(value):
                r.finished[reason] = r.finished.get(reason, 0.0) + value
        readings.histograms(self.histograms, exp, HISTOGRAMS)
        _capacity(exp, readings.found.values())
        return readings.result()


def _capacity(exp: Exposition, readings: Iterable[EngineReading]) -> None:
    """The KV-cache capacity in tokens, from the cache info of each engine core."""
    readings = list(readings)
    for _, labels, _value, _ts in exp.get(CACHE_INFO):
        try:
            tokens = float(labels["num_gpu_blocks"]) * float(labels["block_size"])
        except (KeyError, ValueError):
            continue
        rank = labels.get("engine", "0")
        for r in readings:
            if r.dp_rank == rank and math.isfinite(tokens):
                r.gauges["kv_cache_capacity_tokens"] = tokens


ADAPTER = Adapter(
    kind="vllm",
    title="vLLM",
    default_port=8000,
    metrics_path="/metrics",
    names={**GAUGES, "kv_cache_capacity_tokens": (CACHE_INFO,), **COUNTERS,
           "requests_finished": (FINISHED,), **HISTOGRAMS},
    keep=KEEP,
    normaliser=Normaliser,
    processes=ProcessMatch(words=("vllm",),
                           default_port_words=("serve", "vllm.entrypoints.openai.api_server")),
    polled_by_default=True,
    filters_by_name=True,
)
