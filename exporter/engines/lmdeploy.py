"""LMDeploy: its ``lmdeploy:`` metric names mapped onto the engine-neutral reading.

LMDeploy's api_server labels every family with ``model_name`` and ``engine`` (the
data-parallel rank; with more than one rank each rank has an api_server of its own) and
prints no ``_created`` samples. Every series exists from the start, at 0, including one
``request_success_total`` series per member of its ``ResponseType`` enum, written as Python
prints the member (``finished_reason="ResponseType.FINISH"``). Tokens are counted as each
output reaches the server, not at request end. ``lmdeploy:iter_token_latency`` is the time
between two outputs of a request: the inter-token latency (an output may carry more than one
token). ``lmdeploy:time_per_output_token_seconds`` divides that time by the output's tokens
and is not read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from exporter.engines.adapter import Adapter, ProcessMatch
from exporter.engines.common import Readings, first
from exporter.engines.histograms import HistogramReader
from exporter.engines.reading import EngineKey, EngineReading
from exporter.expfmt import Exposition

__all__ = ["ADAPTER", "COUNTERS", "GAUGES", "HISTOGRAMS", "KEEP", "REASONS", "Normaliser",
           "reason"]

GAUGES: dict[str, tuple[str, ...]] = {
    "requests_waiting": ("lmdeploy:num_requests_waiting",),
    "requests_running": ("lmdeploy:num_requests_running",),
    "kv_cache_usage_ratio": ("lmdeploy:gpu_cache_usage_perc",),
}
COUNTERS: dict[str, tuple[str, ...]] = {
    "prompt_tokens": ("lmdeploy:prompt_tokens",),
    "generation_tokens": ("lmdeploy:generation_tokens",),
}
FINISHED = "lmdeploy:request_success"
HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "time_to_first_token": ("lmdeploy:time_to_first_token_seconds",),
    "inter_token_latency": ("lmdeploy:iter_token_latency",),
    "e2e_request_latency": ("lmdeploy:e2e_request_latency_seconds",),
    "request_queue_time": ("lmdeploy:request_queue_time_seconds",),
}

REASONS = {
    "SUCCESS": "success", "FINISH": "success",
    "CANCEL": "abort",
    "INPUT_LENGTH_ERROR": "invalid", "NOT_SUPPORTED": "invalid", "SESSION_REPEAT": "invalid",
    "PREFIX_CACHE_CONFLICT": "invalid",
    "ENGINE_STOP_ERROR": "error", "SESSION_NOT_EXIST": "error", "HANDLER_NOT_EXIST": "error",
    "NO_QUEUE": "error", "INTERNAL_ENGINE_ERROR": "error", "OUT_OF_MEMORY": "error",
}
"""The 13 ``ResponseType`` members in our words, grouped as the api_server answers them:
finished normally (stop and length are not told apart), cancelled, refused for the request
itself (context too long, unsupported feature, session conflict), or failed in the engine
(stopped, unavailable, internal error, out of memory). Any other value is ``other``."""

KEEP: frozenset[str] = frozenset(
    [n for names in GAUGES.values() for n in names]
    + [n + "_total" for names in COUNTERS.values() for n in names]
    + [FINISHED + "_total"]
    + [n + s for names in HISTOGRAMS.values() for n in names
       for s in ("", "_bucket", "_sum", "_count")]
)
"""The samples the parser should read at all; the rest are skipped unparsed."""


def _key(labels: Mapping[str, str]) -> EngineKey | None:
    """(model, data-parallel rank); None for a tensor/pipeline shard other than rank 0."""
    if "model_name" not in labels:
        return None
    if labels.get("tp_rank", "0") != "0" or labels.get("pp_rank", "0") != "0":
        return None
    return labels["model_name"], labels.get("engine", "0")


def reason(text: str) -> str:
    """Our word for a ``finished_reason`` value: ``ResponseType.FINISH`` (or ``FINISH``)."""
    return REASONS.get(text.rpartition(".")[2], "other")


class Normaliser:
    """Turns a parsed LMDeploy exposition into one reading per (model, rank), capped."""

    def __init__(self, max_engines: int) -> None:
        self.max_engines = max_engines
        self.histograms = HistogramReader(_key)

    def normalise(self, exp: Exposition, model: str = "") -> tuple[list[EngineReading], int]:
        """Readings found, and how many label sets were dropped by the cap (LMDeploy labels
        its samples with the model: ``model`` is not needed)."""
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
        for _, labels, value, _ts in exp.get(FINISHED + "_total"):
            word = reason(labels.get("finished_reason", ""))
            if (r := get(labels)) is not None and math.isfinite(value):
                r.finished[word] = r.finished.get(word, 0.0) + value
        readings.histograms(self.histograms, exp, HISTOGRAMS)
        return readings.result()

ADAPTER = Adapter(
    kind="lmdeploy",
    title="LMDeploy",
    default_port=23333,
    metrics_path="/metrics",
    names={**GAUGES, **COUNTERS, "requests_finished": (FINISHED,), **HISTOGRAMS},
    keep=KEEP,
    normaliser=Normaliser,
    processes=ProcessMatch(words=("lmdeploy",), default_port_words=("api_server",),
                           port_flags=("--server-port",)),
    filters_by_name=True,
)
