"""trtllm-serve: its metric names, in all three spellings, mapped onto the engine-neutral reading.

trtllm-serve serves Prometheus text at ``/prometheus/metrics`` (only with
``return_perf_metrics: true``; the gauges also need ``enable_iter_perf_stats: true``); its
``/metrics`` is JSON iteration statistics, which holds no sample and so reads as "no
trtllm-serve metrics". The same families have had three spellings: unprefixed (the first
release, finish reason label ``finish_reason``), ``trtllm:`` (added by Dynamo) and ``trtllm_``
(set by TensorRT-LLM itself, label ``finished_reason``); the newest present wins.

Labels are the dict the server passes, ``model_name`` and ``engine_type``, which releases
before the fix of 2026 set to ``"undefined"``: then the model comes from ``/v1/models``.
There is no data-parallel rank. The server runs prometheus_client in multiprocess mode, so
gauges carry a ``pid`` label, which is ignored. Requests are counted, and their tokens and
latencies observed, when they finish; ``time_per_output_token_seconds`` is each request's
mean time per output token, not an inter-token latency, and is not read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from exporter.engines.adapter import Adapter, ModelInfo, ProcessMatch
from exporter.engines.common import Readings, first, listed_model
from exporter.engines.histograms import HistogramReader
from exporter.engines.reading import EngineKey, EngineReading
from exporter.expfmt import Exposition

__all__ = ["ADAPTER", "COUNTERS", "GAUGES", "HISTOGRAMS", "KEEP", "REASONS", "Normaliser"]

PREFIXES = ("trtllm_", "trtllm:", "")
"""The spellings of every family, newest first."""


def _spellings(stem: str) -> tuple[str, ...]:
    return tuple(prefix + stem for prefix in PREFIXES)


GAUGES: dict[str, tuple[str, ...]] = {
    "requests_waiting": _spellings("num_requests_waiting"),
    "requests_running": _spellings("num_requests_running"),
    "kv_cache_usage_ratio": _spellings("kv_cache_utilization"),
}
MAX_BLOCKS = _spellings("kv_cache_max_blocks")
TOKENS_PER_BLOCK = _spellings("kv_cache_tokens_per_block")
COUNTERS: dict[str, tuple[str, ...]] = {
    "prompt_tokens": _spellings("prompt_tokens"),
    "generation_tokens": _spellings("generation_tokens"),
}
FINISHED = _spellings("request_success")
REASON_LABELS = ("finished_reason", "finish_reason")
MODEL_CONFIG = _spellings("model_config_info")
"""Set once at start-up: an idle server of the newest releases is recognised by it."""
HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "time_to_first_token": _spellings("time_to_first_token_seconds"),
    "e2e_request_latency": _spellings("e2e_request_latency_seconds"),
    "request_queue_time": _spellings("request_queue_time_seconds"),
}

REASONS = {"stop": "stop", "end_id": "stop", "stop_words": "stop", "length": "length",
           "cancelled": "abort", "timeout": "timeout", "timed_out": "timeout"}
"""trtllm-serve's finish reasons (``CompletionOutput.finish_reason``, and the executor's names
for them) in our words; any other value is ``other``. Requests that fail are not counted."""
UNDEFINED = ("", "undefined")
"""``model_name`` values that name no model."""

KEEP: frozenset[str] = frozenset(
    [n for names in (*GAUGES.values(), MAX_BLOCKS, TOKENS_PER_BLOCK, MODEL_CONFIG)
     for n in names]
    + [n + "_total" for names in (*COUNTERS.values(), FINISHED) for n in names]
    + [n + s for names in HISTOGRAMS.values() for n in names
       for s in ("", "_bucket", "_sum", "_count")]
)
"""The samples the parser should read at all; the rest are skipped unparsed."""


def _key(labels: Mapping[str, str]) -> EngineKey | None:
    """(model as labelled, "0"); None for a tensor/pipeline shard other than rank 0."""
    if labels.get("tp_rank", "0") != "0" or labels.get("pp_rank", "0") != "0":
        return None
    return labels.get("model_name", ""), "0"


class _Named(Readings):
    """Readings whose samples name no model (``undefined``) take the served model's name."""

    def __init__(self, limit: int, served: str) -> None:
        super().__init__(limit)
        self.served = served

    def get(self, key: EngineKey | None) -> EngineReading | None:
        if key is not None and key[0] in UNDEFINED:
            key = (self.served, key[1])
        return super().get(key)


class Normaliser:
    """Turns a parsed trtllm-serve exposition into one reading per model, capped in number."""

    def __init__(self, max_engines: int) -> None:
        self.max_engines = max_engines
        self.histograms = HistogramReader(_key)

    def normalise(self, exp: Exposition, model: str) -> tuple[list[EngineReading], int]:
        """Readings found, and how many label sets were dropped by the cap; ``model`` (from
        ``/v1/models``) names the samples whose ``model_name`` is missing or "undefined"."""
        readings = _Named(self.max_engines, model or "unknown")

        def get(labels: Mapping[str, str]) -> EngineReading | None:
            return readings.get(_key(labels))

        for _, labels, _value, _ts in first(exp, MODEL_CONFIG):
            get(labels)
        for ours, names in GAUGES.items():
            for _, labels, value, _ts in first(exp, names):
                if (r := get(labels)) is not None and math.isfinite(value):
                    r.gauges[ours] = value
        for ours, names in COUNTERS.items():
            for _, labels, value, _ts in first(exp, names, "_total"):
                if (r := get(labels)) is not None and math.isfinite(value):
                    r.counters[ours] = r.counters.get(ours, 0.0) + value
        for _, labels, value, _ts in first(exp, FINISHED, "_total"):
            raw = next((labels[k] for k in REASON_LABELS if k in labels), "")
            reason = REASONS.get(raw, "other")
            if (r := get(labels)) is not None and math.isfinite(value):
                r.finished[reason] = r.finished.get(reason, 0.0) + value
        readings.histograms(self.histograms, exp, HISTOGRAMS)
        _capacity(exp, get)
        return readings.result()


def _capacity(exp: Exposition,
              get: Callable[[Mapping[str, str]], EngineReading | None]) -> None:
    """The KV-cache capacity in tokens: its blocks times the tokens of one block."""
    per_block = {_key(labels): value for _, labels, value, _ts in first(exp, TOKENS_PER_BLOCK)}
    for _, labels, blocks, _ts in first(exp, MAX_BLOCKS):
        capacity = blocks * per_block.get(_key(labels), math.nan)
        if math.isfinite(capacity) and capacity > 0 and (r := get(labels)) is not None:
            r.gauges["kv_cache_capacity_tokens"] = capacity


ADAPTER = Adapter(
    kind="trtllm",
    title="trtllm-serve",
    default_port=8000,
    metrics_path="/prometheus/metrics",
    names={**GAUGES, "kv_cache_capacity_tokens": MAX_BLOCKS + TOKENS_PER_BLOCK, **COUNTERS,
           "requests_finished": FINISHED, **HISTOGRAMS},
    keep=KEEP,
    normaliser=Normaliser,
    processes=ProcessMatch(words=("trtllm-serve",), default_port_words=("serve", "trtllm-serve"),
                           port_flags=("--port",)),
    counted_at_request_end=frozenset({"prompt_tokens", "generation_tokens"}),
    model_info=ModelInfo("/v1/models", listed_model),
)
