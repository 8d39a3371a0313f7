"""Triton Inference Server: its core metrics (``nv_inference_*``) and those of the TensorRT-LLM
backend (``nv_trt_llm_*``, ``nv_llm_*``), mapped onto the engine-neutral reading.

Every per-model family carries ``model`` and ``version``; core counters of models with GPU
instances add ``gpu_uuid`` (one series per GPU), model namespacing adds ``namespace`` and
model tags add ``_<tag>``. There is one reading per model name, on rank "0" (Triton has no
data-parallel rank): versions, GPUs and namespaces of one name are summed, so a model keeps
its series across a version rollout (the old version's counters leaving the sums reads as a
restart). An ensemble and each model it is made of are readings of their own, and a request
to the ensemble counts in each.

Core Triton has no running gauge, no token counters and, by default, no histogram: the
end-to-end and queue latencies are windowed means of its cumulative microsecond counters,
which count successful requests only. Its opt-in summaries are per-process sliding-window
quantiles that cannot be aggregated and are never read. The opt-in time-to-first-response
histogram (milliseconds) becomes the time-to-first-token histogram, in seconds.

The TensorRT-LLM backend's gauges are copied from the executor's latest iteration; its token
histograms are observed when a request ends. It fills each group of sub-labels by position
from the stats it finds, so a stat missing from them would shift the values onto the wrong
sub-labels: groups whose values contradict each other are left out.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping

from exporter.canary.api import TRITON
from exporter.engines.adapter import Adapter, ProcessMatch
from exporter.engines.common import Readings
from exporter.engines.histograms import HistogramReader
from exporter.engines.reading import EngineKey, EngineReading, HistogramReading
from exporter.expfmt import Exposition, Sample

__all__ = ["ADAPTER", "FAILURE_REASONS", "KEEP", "SUCCESS_REASON", "Normaliser"]

# Triton core (every backend).
PENDING = "nv_inference_pending_request_count"
SUCCESS = "nv_inference_request_success"
FAILURE = "nv_inference_request_failure"
REQUEST_US = "nv_inference_request_duration_us"
QUEUE_US = "nv_inference_queue_duration_us"
FIRST_RESPONSE_MS = "nv_inference_first_response_histogram_ms"
# The TensorRT-LLM backend (C++ inflight batcher, or its Python-backend twin).
TRT_REQUESTS = "nv_trt_llm_request_metrics"
TRT_KV = "nv_trt_llm_kv_cache_block_metrics"
INPUT_TOKENS = "nv_llm_input_token_len"
OUTPUT_TOKENS = "nv_llm_output_token_len"

SUCCESS_REASON = "success"
"""Triton counts a request that ended without error, not why its generation stopped."""
FAILURE_REASONS: dict[str, str] = {
    "REJECTED": "rejected",  # timed out in the scheduler's queue: shed, not a model error
    "CANCELED": "abort",
    "BACKEND": "error",
    "OTHER": "error",
}
"""Triton's failure reasons; any other, or none (before Triton 24.07), is ``error``."""

GAUGES: dict[str, tuple[str, ...]] = {
    "requests_waiting": (TRT_REQUESTS, PENDING),
    "requests_running": (TRT_REQUESTS,),
    "kv_cache_usage_ratio": (TRT_KV,),
    "kv_cache_capacity_tokens": (TRT_KV,),
}
COUNTERS: dict[str, tuple[str, ...]] = {
    "prompt_tokens": (INPUT_TOKENS,),
    "generation_tokens": (OUTPUT_TOKENS,),
}
"""Histogram families whose ``_sum`` is the counter (observed once per finished request)."""
HISTOGRAMS: dict[str, tuple[str, ...]] = {"time_to_first_token": (FIRST_RESPONSE_MS,)}
DURATIONS: dict[str, str] = {"e2e_request_latency": REQUEST_US,
                             "request_queue_time": QUEUE_US}
"""Latencies without a histogram: the cumulative microseconds spent on successful requests."""

KEEP: frozenset[str] = frozenset(
    [PENDING, SUCCESS, FAILURE, REQUEST_US, QUEUE_US, TRT_REQUESTS, TRT_KV]
    + [n + s for names in COUNTERS.values() for n in names for s in ("", "_sum")]
    + [n + s for names in HISTOGRAMS.values() for n in names
       for s in ("", "_bucket", "_sum", "_count")]
)
"""The samples the parser should read at all; the rest (summaries with ``Nan``, GPU and
CPU figures, the backend's other groups) are skipped unparsed."""

_Get = Callable[[EngineKey], "EngineReading | None"]
"""The normaliser's reading of a model, made on first use; None once the cap is reached."""
_FRACTION_SLACK = 1e-4
"""How far the backend's ``fraction`` (printed with 6 decimals) may lie from used / max."""


def _key(labels: Mapping[str, str]) -> EngineKey | None:
    model = labels.get("model")
    return (model, "0") if model else None


def _summed(samples: Iterable[Sample]) -> dict[EngineKey, float]:
    """Each model's finite values, summed over versions, GPUs and other labels."""
    out: dict[EngineKey, float] = {}
    for _, labels, value, _ts in samples:
        key = _key(labels)
        if key is not None and math.isfinite(value):
            out[key] = out.get(key, 0.0) + value
    return out


def _groups(samples: Iterable[Sample], sub: str) -> dict[EngineKey, list[dict[str, float]]]:
    """Per model, each label set's values by its ``sub`` label (one group per version)."""
    groups: dict[EngineKey, dict[frozenset[tuple[str, str]], dict[str, float]]] = {}
    for _, labels, value, _ts in samples:
        key, kind = _key(labels), labels.get(sub)
        if key is None or kind is None:
            continue
        rest = frozenset((k, v) for k, v in labels.items() if k != sub)
        groups.setdefault(key, {}).setdefault(rest, {})[kind] = value
    return {key: list(per.values()) for key, per in groups.items()}


def _requests(group: Mapping[str, float]) -> tuple[float, float] | None:
    """(waiting, running) of one request group; None when it is incomplete or shifted.

    The backend sets ``waiting`` to ``active - scheduled`` (older backends lack it: so it is
    derived), so ``active`` holds the waiting requests too: running is ``scheduled``."""
    active, scheduled = group.get("active"), group.get("scheduled")
    if active is None or scheduled is None:
        return None
    waiting = group.get("waiting", active - scheduled)
    if not all(math.isfinite(v) and v >= 0 for v in (active, scheduled, waiting)) \
            or waiting != active - scheduled:
        return None
    return waiting, scheduled


def _kv(group: Mapping[str, float]) -> tuple[float, float, float | None] | None:
    """(used, max, tokens per block) of one KV-cache group; None when it is incomplete,
    not reported yet (max 0: no iteration ran) or contradicts its ``fraction``."""
    used, total = group.get("used"), group.get("max")
    if used is None or total is None or not (math.isfinite(used) and math.isfinite(total)) \
            or not 0 <= used <= total or total <= 0:
        return None
    fraction = group.get("fraction")
    if fraction is not None and not abs(fraction - used / total) <= _FRACTION_SLACK:
        return None
    per = group.get("tokens_per")
    return used, total, per if per is not None and math.isfinite(per) and per > 0 else None


def _seconds(h: HistogramReading) -> HistogramReading | None:
    """A millisecond histogram in seconds; None when it is not a cumulative histogram."""
    counts = h.counts
    if not (math.isfinite(h.sum) and all(map(math.isfinite, counts))
            and all(a <= b for a, b in itertools.pairwise(counts))):
        return None
    return HistogramReading(tuple(b / 1000 for b in h.bounds), counts, h.sum / 1000, h.count)


class Normaliser:
    """Turns a parsed Triton exposition into one reading per model, capped in number."""

    def __init__(self, max_engines: int) -> None:
        self.max_engines = max_engines
        self.histograms = HistogramReader(_key)

    def normalise(self, exp: Exposition, model: str = "") -> tuple[list[EngineReading], int]:
        """Readings found, and how many models were dropped by the cap (Triton labels its
        samples with the model: ``model`` is not needed)."""
        readings = Readings(self.max_engines)
        get = readings.get

        success = _summed(exp.get(SUCCESS))
        for key, value in success.items():
            if (r := get(key)) is not None:
                r.finished[SUCCESS_REASON] = value
        for _, labels, value, _ts in exp.get(FAILURE):
            failed = _key(labels)
            if failed is None or not math.isfinite(value) or (r := get(failed)) is None:
                continue
            reason = FAILURE_REASONS.get(labels.get("reason", ""), "error")
            r.finished[reason] = r.finished.get(reason, 0.0) + value
        for ours, name in DURATIONS.items():
            for key, us in _summed(exp.get(name)).items():
                if key in success and (r := get(key)) is not None:
                    r.durations[ours] = (us / 1e6, success[key])
        for ours, names in COUNTERS.items():
            for key, value in _summed(exp.get(names[0] + "_sum")).items():
                if (r := get(key)) is not None:
                    r.counters[ours] = value
        for key, h in self.histograms.read(exp, FIRST_RESPONSE_MS) or []:
            if (seconds := _seconds(h)) is not None and (r := get(key)) is not None:
                r.histograms["time_to_first_token"] = seconds
        backend = self._backend(exp, get)
        for key, value in _summed(exp.get(PENDING)).items():
            if key not in backend and value >= 0 and (r := get(key)) is not None:
                r.gauges["requests_waiting"] = value
        return readings.result()

    @staticmethod
    def _backend(exp: Exposition, get: _Get) -> set[EngineKey]:
        """Fill the TensorRT-LLM backend's gauges; the models whose request group it has
        (their waiting requests are the backend's, not Triton's queue)."""
        requests = _groups(exp.get(TRT_REQUESTS), "request_type")
        for key, groups in requests.items():
            found = [_requests(g) for g in groups]
            if all(f is not None for f in found) and (r := get(key)) is not None:
                r.gauges["requests_waiting"] = sum(f[0] for f in found if f is not None)
                r.gauges["requests_running"] = sum(f[1] for f in found if f is not None)
        for key, groups in _groups(exp.get(TRT_KV), "kv_cache_block_type").items():
            kv = [_kv(g) for g in groups]
            if not all(k is not None for k in kv) or (r := get(key)) is None:
                continue
            parts = [k for k in kv if k is not None]
            r.gauges["kv_cache_usage_ratio"] = sum(k[0] for k in parts) / sum(k[1] for k in parts)
            if all(k[2] is not None for k in parts):
                r.gauges["kv_cache_capacity_tokens"] = sum(k[1] * (k[2] or 0.0) for k in parts)
        return set(requests)


ADAPTER = Adapter(
    canary=TRITON,
    kind="triton",
    title="Triton",
    default_port=8002,
    metrics_path="/metrics",
    names={**GAUGES, **COUNTERS, "requests_finished": (SUCCESS, FAILURE), **HISTOGRAMS},
    means={ours: (name, SUCCESS) for ours, name in DURATIONS.items()},
    counted_at_request_end=frozenset(COUNTERS),
    keep=KEEP,
    normaliser=Normaliser,
    processes=ProcessMatch(words=("tritonserver",), default_port_words=("tritonserver",),
                           port_flags=("--metrics-port",)),
)
