"""TGI (Hugging Face text-generation-inference): its router's metrics on the neutral reading.

The router renders its metrics with the Rust ``metrics-exporter-prometheus`` crate: counters
carry no ``_total`` (``tgi_request_success``), no family has a label naming the model (one
router serves one model: ``/info`` says which), and a family appears only once it was first
set, so an idle router shows little more than ``tgi_batch_max_total_tokens``. There is no
time-to-first-token histogram and no inter-token one: ``tgi_request_mean_time_per_token_duration``
is each request's inference time over its generated tokens, prefill included, and is not read.
Token counts are the sums of two histograms: ``tgi_request_input_length`` is observed when a
request passes validation, ``tgi_request_generated_tokens`` when it succeeds (so tokens of
requests that fail or are dropped are never counted).
"""

from __future__ import annotations

import json
import math

from exporter.canary.api import OPENAI_NO_IGNORE_EOS
from exporter.engines.adapter import Adapter, ModelInfo, ProcessMatch
from exporter.engines.common import first
from exporter.engines.histograms import HistogramReader
from exporter.engines.reading import EngineKey, EngineReading
from exporter.expfmt import Exposition

__all__ = ["ADAPTER", "COUNTERS", "ERRORS", "GAUGES", "HISTOGRAMS", "KEEP", "Normaliser"]

GAUGES: dict[str, tuple[str, ...]] = {
    "requests_waiting": ("tgi_queue_size",),
    "requests_running": ("tgi_batch_current_size",),
    "kv_cache_capacity_tokens": ("tgi_batch_max_total_tokens",),
}
"""``tgi_batch_max_total_tokens`` is what warm-up found room for: the KV-cache blocks times
the block size for the flash-attention models TGI 3 serves."""
COUNTERS: dict[str, tuple[str, ...]] = {
    "prompt_tokens": ("tgi_request_input_length_sum",),
    "generation_tokens": ("tgi_request_generated_tokens_sum",),
    "iterations": ("tgi_batch_inference_count", "tgi_batch_inference_count_total"),
}
"""Histogram sums that are cumulative token counts, and the router's batch forward passes
(prefill and decode, summed over ``method``)."""
SUCCESS = ("tgi_request_success", "tgi_request_success_total")
FAILURE = ("tgi_request_failure", "tgi_request_failure_total")
"""Counters as the router writes them, then with the ``_total`` a newer exporter may add."""
HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "e2e_request_latency": ("tgi_request_duration",),
    "request_queue_time": ("tgi_request_queue_duration",),
}

ERRORS = {"validation": "invalid", "template": "invalid", "overloaded": "overloaded",
          "dropped": "abort", "generation": "error", "incomplete": "error"}
"""``tgi_request_failure``'s ``err`` values (router and backends) in our words: a request
refused as invalid (bad parameters, too long, a chat template that fails), refused because
the router's concurrent-request limit was reached, given up by its client, or failed in
generation or ended without its last token. Any other value is ``error``. Successes are
``success``: the router does not say whether they stopped or hit their length."""
SUCCESS_REASON = "success"

KEEP: frozenset[str] = frozenset(
    [n for names in (*GAUGES.values(), *COUNTERS.values(), SUCCESS, FAILURE) for n in names]
    + [n.removesuffix("_sum") for names in COUNTERS.values() for n in names]
    + [n + s for names in HISTOGRAMS.values() for n in names
       for s in ("", "_bucket", "_sum", "_count")]
)
"""The samples the parser should read at all; the rest are skipped unparsed."""

_KEY: EngineKey = ("", "0")


def model_id(body: bytes) -> str | None:
    """The ``model_id`` of the router's ``/info`` answer; None if it names none."""
    try:
        data = json.loads(body)
    except RecursionError:
        return None
    name = data.get("model_id") if isinstance(data, dict) else None
    return name if isinstance(name, str) and name else None


class Normaliser:
    """Turns a parsed TGI exposition into its one reading (a router serves one model)."""

    def __init__(self, max_engines: int) -> None:
        self.max_engines = max_engines
        self.histograms = HistogramReader(lambda labels: _KEY)

    def normalise(self, exp: Exposition, model: str) -> tuple[list[EngineReading], int]:
        """The reading, labelled with ``model`` (from ``/info``); none when the exposition
        holds no TGI sample. The cap never drops it (one label set), unless it is 0."""
        r = EngineReading(model or "unknown", "0")
        seen = False
        for ours, names in GAUGES.items():
            for _, _labels, value, _ts in first(exp, names):
                seen = True
                if math.isfinite(value):
                    r.gauges[ours] = value
        for ours, names in COUNTERS.items():
            for _, _labels, value, _ts in first(exp, names):
                seen = True
                if math.isfinite(value):
                    r.counters[ours] = r.counters.get(ours, 0.0) + value
        for _, _labels, value, _ts in first(exp, SUCCESS):
            seen = True
            if math.isfinite(value):
                r.finished[SUCCESS_REASON] = r.finished.get(SUCCESS_REASON, 0.0) + value
        for _, labels, value, _ts in first(exp, FAILURE):
            seen = True
            reason = ERRORS.get(labels.get("err", ""), "error")
            if math.isfinite(value):
                r.finished[reason] = r.finished.get(reason, 0.0) + value
        for ours, names in HISTOGRAMS.items():
            for name in names:
                found = self.histograms.read(exp, name)
                if found:
                    seen = True
                    r.histograms[ours] = found[0][1]
                    break
        if not seen:
            return [], 0
        if self.max_engines < 1:
            return [], 1
        return [r], 0


ADAPTER = Adapter(
    canary=OPENAI_NO_IGNORE_EOS,
    kind="tgi",
    title="TGI",
    default_port=3000,
    metrics_path="/metrics",
    names={**GAUGES, **COUNTERS, "requests_finished": SUCCESS[:1] + FAILURE[:1], **HISTOGRAMS},
    keep=KEEP,
    normaliser=Normaliser,
    processes=ProcessMatch(words=("text-generation-launcher", "text-generation-router"),
                           default_port_words=("text-generation-launcher",),
                           port_flags=("--port",)),
    counted_at_request_end=frozenset({"generation_tokens"}),
    model_info=ModelInfo("/info", model_id),
)
