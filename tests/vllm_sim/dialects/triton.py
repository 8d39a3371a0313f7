"""Triton Inference Server's exposition (``nv_``) of the simulated state, as prometheus-cpp
writes it (captures/triton-*.txt): core metrics alone, or beside the TensorRT-LLM backend's.

One model per model name of the scenario (its first engine's state), version "1", read as
``(model, "0")``. Labels are sorted, except that ``le`` and ``quantile`` come last; values
print shortest (``11``, ``0.35``) and empty summaries ``Nan``; histograms write ``_count``
and ``_sum`` before their buckets.

Core Triton counts the stop and length endings as successes, aborts as ``CANCELED`` and
errors as ``BACKEND`` failures. Its cumulative durations are whole microseconds: the
requests' end-to-end and queue latencies, of every request (the simulator cannot tell which
one failed; Triton itself counts successes only), so the windowed means are the durations'
increase over the successes' increase. With the opt-in summaries (the core dialect, as in
the captures), quantiles are exact over the observations since the start.

The TensorRT-LLM dialect is a newer Triton run with ``histogram_latencies=true``: it adds
the time-to-first-response histogram (milliseconds, the documented example's bounds; the
daemon reads it in seconds) and the backend's gauges (requests, KV-cache blocks, batcher,
memory) and token-length histograms, whose ``_sum`` are the prompt and generated tokens.
Per-request output lengths are not simulated: those observations all sit in +Inf.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction

from ..expected import HistogramTotals, Totals
from ..exposition import EngineSnapshot
from . import Dialect, Lines, exact_sum, rebucket

__all__ = ["DIALECTS", "FIRST_RESPONSE_MS", "MAX_BLOCKS", "TOKEN_BOUNDS"]

FAILURES = ("OTHER", "BACKEND", "CANCELED", "REJECTED")
QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
COMPUTE_US = {"input": 25, "output": 5}
"""Microseconds each execution spends gathering inputs and sending outputs."""
MAX_BLOCKS, TOKENS_PER_BLOCK, MAX_REQUESTS = 10_000, 32, 256
TOKEN_BOUNDS = (10.0, 50.0, 100.0, 500.0, 1000.0)
FIRST_RESPONSE_MS = (100.0, 500.0, 2000.0, 5000.0)
FIRST_RESPONSE_S = tuple(b / 1000 for b in FIRST_RESPONSE_MS)
"""The first-response bounds as the daemon reads them (seconds)."""
CONTENT_TYPE = "text/plain; charset=utf-8"
"""What Triton's metrics server answers with (read from its code, not seen)."""
GPU = "GPU-7c2a1f7e-3b7d-4c55-9a4e-5b1c0d2e8f31"


def _num(value: float) -> str:
    """A value as prometheus-cpp writes it: shortest, ``Nan``, ``+Inf``."""
    if math.isnan(value):
        return "Nan"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _put(out: Lines, name: str, labels: Mapping[str, str], value: float) -> None:
    """One sample, its labels sorted but for ``le`` and ``quantile``, which come last."""
    order = sorted(labels, key=lambda k: (k in ("le", "quantile"), k))
    text = ",".join(f'{k}="{labels[k]}"' for k in order)
    out.raw(f"{name}{{{text}}} {_num(value)}" if text else f"{name} {_num(value)}")


def _us(h: HistogramTotals) -> int:
    """The observations' sum in whole microseconds, from their decimal values."""
    return round(sum((Fraction(repr(v)) * c for v, c in h.values), Fraction(0)) * 1_000_000)


def _ms(h: HistogramTotals) -> float:
    """The observations' sum in milliseconds, chosen so that a thousandth of it is their sum
    in seconds (as the adapter converts it)."""
    target, ms = exact_sum(h), float(sum((Fraction(v) * c for v, c in h.values),
                                         Fraction(0)) * 1000)
    for _ in range(8):
        if ms / 1000 == target:
            break
        ms = math.nextafter(ms, math.inf if ms / 1000 < target else -math.inf)
    return ms


def _first_response(out: Lines, served: Sequence[EngineSnapshot]) -> None:
    """The opt-in TTFT histogram, in milliseconds."""
    name = "nv_inference_first_response_histogram_ms"
    out.family(name, "histogram", "Duration from request to first response in milliseconds")
    for s in served:
        h = s.totals.histograms["ttft"]
        _put(out, name + "_count", _ids(s), h.count)
        _put(out, name + "_sum", _ids(s), _ms(h))
        for ms, (_, count) in zip((*FIRST_RESPONSE_MS, math.inf),
                                  rebucket(h, FIRST_RESPONSE_S), strict=True):
            _put(out, name + "_bucket", {**_ids(s), "le": _num(ms)}, count)


def _success(t: Totals) -> int:
    return t.finished_reason["stop"] + t.finished_reason["length"]


def _failures(t: Totals) -> dict[str, int]:
    return {"OTHER": 0, "BACKEND": t.finished_reason["error"],
            "CANCELED": t.finished_reason["abort"], "REJECTED": 0}


def _quantile(h: HistogramTotals, q: float) -> float:
    """The nearest-rank quantile of the observations, in microseconds; NaN for none."""
    rank, seen = math.ceil(q * h.count), 0
    for value, count in h.values:
        seen += count
        if seen >= rank:
            return float(round(Fraction(repr(value)) * 1_000_000))
    return math.nan


def _served(snapshots: Sequence[EngineSnapshot]) -> list[EngineSnapshot]:
    """The first snapshot of each model name."""
    seen: dict[str, EngineSnapshot] = {}
    for s in snapshots:
        seen.setdefault(s.engine.model, s)
    return list(seen.values())


def _ids(s: EngineSnapshot) -> dict[str, str]:
    return {"model": s.engine.model, "version": "1"}


def _core(out: Lines, served: Sequence[EngineSnapshot], trtllm: bool) -> None:
    """The per-model counters and gauge, host figures, and (core dialect) summaries."""
    def family(name: str, kind: str, doc: str, values: Sequence[float]) -> None:
        out.family(name, kind, doc)
        for s, value in zip(served, values, strict=True):
            _put(out, name, _ids(s), value)

    durations = {"request": [_us(s.totals.histograms["e2e"]) for s in served],
                 "queue": [_us(s.totals.histograms["queue"]) for s in served]}
    successes = [_success(s.totals) for s in served]
    for part in ("input", "output"):
        durations[part] = [COMPUTE_US[part] * n for n in successes]
    durations["infer"] = [max(0, r - q - i - o) for r, q, i, o in zip(
        durations["request"], durations["queue"], durations["input"], durations["output"],
        strict=True)]
    family("nv_inference_request_success", "counter",
           "Number of successful inference requests, all batch sizes", successes)
    out.family("nv_inference_request_failure", "counter",
               "Number of failed inference requests, all batch sizes")
    for s in served:
        for reason, n in _failures(s.totals).items():
            _put(out, "nv_inference_request_failure",
                 {"model": s.engine.model, "reason": reason, "version": "1"}, n)
    family("nv_inference_count", "counter",
           "Number of inferences performed (does not include cached requests)", successes)
    family("nv_inference_exec_count", "counter",
           "Number of model executions performed (does not include cached requests)", successes)
    family("nv_inference_request_duration_us", "counter", "Cumulative inference request "
           "duration in microseconds (includes cached requests)", durations["request"])
    family("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing "
           "duration in microseconds (includes cached requests)", durations["queue"])
    for part, doc in (("input", "compute input"), ("infer", "compute inference"),
                      ("output", "inference compute output")):
        family(f"nv_inference_compute_{part}_duration_us", "counter", f"Cumulative {doc} "
               "duration in microseconds (does not include cached requests)", durations[part])
    family("nv_inference_pending_request_count", "gauge", "Instantaneous number of pending "
           "requests awaiting execution per-model.",
           [0.0 if trtllm else s.gauges.waiting for s in served])
    if trtllm:
        _first_response(out, served)
    for name, doc, value in (
            ("nv_pinned_memory_pool_total_bytes", "Pinned memory pool total memory size, in "
             "bytes", 268435456),
            ("nv_pinned_memory_pool_used_bytes", "Pinned memory pool used memory size, in "
             "bytes", 0),
            ("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", 0.25),
            ("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", 25276502016),
            ("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", 1484582912)):
        out.family(name, "gauge", doc)
        _put(out, name, {}, value)
    if trtllm:
        for name, doc, value in (
                ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", 0.5),
                ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", 85899345920),
                ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", 77309411328)):
            out.family(name, "gauge", doc)
            _put(out, name, {"gpu_uuid": GPU}, value)
        return
    for part, doc, kept in (
            ("request", "Summary of inference request duration in microseconds (includes "
             "cached requests)", "e2e"),
            ("queue", "Summary of inference queuing duration in microseconds (includes "
             "cached requests)", "queue"),
            ("compute_input", "Cumulative compute input duration in microseconds (does not "
             "include cached requests)", "input"),
            ("compute_infer", "Cumulative compute inference duration in microseconds (does "
             "not include cached requests)", "infer"),
            ("compute_output", "Cumulative inference compute output duration in microseconds "
             "(does not include cached requests)", "output")):
        name = f"nv_inference_{part}_summary_us"
        out.family(name, "summary", doc)
        for i, s in enumerate(served):
            total = durations[part.removeprefix("compute_")][i]
            _put(out, name + "_count", _ids(s), successes[i])
            _put(out, name + "_sum", _ids(s), total)
            for q in QUANTILES:
                if kept in ("e2e", "queue"):
                    value = _quantile(s.totals.histograms[kept], q)
                else:  # every execution alike: its mean
                    value = float(round(total / successes[i])) if successes[i] else math.nan
                _put(out, name, {**_ids(s), "quantile": repr(q)}, value)


def _backend(out: Lines, served: Sequence[EngineSnapshot]) -> None:
    """The TensorRT-LLM backend's families, each group's sub-labels last to first."""
    def group(name: str, doc: str, sub: str, values: Sequence[Sequence[tuple[str, float]]]
              ) -> None:
        out.family(name, "gauge", doc)
        for s, pairs in zip(served, values, strict=True):
            for kind, value in reversed(pairs):
                _put(out, name, {"model": s.engine.model, sub: kind, "version": "1"}, value)

    requests, blocks, batcher, general = [], [], [], []
    for s in served:
        g, t = s.gauges, s.totals
        active, context = g.running + g.waiting, min(g.running, 1.0)
        requests.append((("active", active), ("max", MAX_REQUESTS), ("scheduled", g.running),
                         ("context", context), ("waiting", active - g.running)))
        used = float(round(g.kv_cache_usage * MAX_BLOCKS))
        blocks.append((("max", MAX_BLOCKS), ("free", MAX_BLOCKS - used), ("used", used),
                       ("tokens_per", TOKENS_PER_BLOCK), ("reused", math.floor(used / 4)),
                       ("fraction", round(used / MAX_BLOCKS, 6))))
        batcher.append((("total_context_tokens", 0.0), ("generation_requests", g.running - context),
                        ("micro_batch_id", 0.0), ("paused_requests", 0.0)))
        general.append((("timestamp", int(s.created) * 1_000_000),
                        ("iteration_counter", t.histograms["iteration_tokens"].count)))
    group("nv_trt_llm_request_metrics", "TRT LLM request metrics", "request_type", requests)
    group("nv_trt_llm_runtime_memory_metrics", "TRT LLM runtime memory metrics", "memory_type",
          [(("cpu", 0.0), ("gpu", 1610236.0), ("pinned", 0.0)) for _ in served])
    group("nv_trt_llm_kv_cache_block_metrics", "TRT LLM KV cache block metrics",
          "kv_cache_block_type", blocks)
    group("nv_trt_llm_inflight_batcher_metrics", "TRT LLM inflight_batcher-specific metrics",
          "inflight_batcher_specific_metric", batcher)
    group("nv_trt_llm_general_metrics", "General TRT LLM metrics", "general_type", general)
    for name, kind, key in (("nv_llm_output_token_len", "total_output_tokens", "generation"),
                            ("nv_llm_input_token_len", "total_input_tokens", "prompt")):
        out.family(name, "histogram", "TRT LLM response metrics")
        for s in served:
            t = s.totals
            labels = {"model": s.engine.model, "response_metric_type": kind, "version": "1"}
            lengths = t.histograms["request_prompt_tokens"]
            _put(out, name + "_count", labels, lengths.count)
            _put(out, name + "_sum", labels,
                 t.prompt_tokens if key == "prompt" else t.generation_tokens)
            for bound, count in rebucket(lengths, TOKEN_BOUNDS):
                if key == "generation":
                    count = count if bound == math.inf else 0
                _put(out, name + "_bucket", {**labels, "le": _num(bound)}, count)


def _render(snapshots: Sequence[EngineSnapshot], trtllm: bool) -> bytes:
    out = Lines()
    served = _served(snapshots)
    if trtllm:
        _backend(out, served)
    _core(out, served, trtllm)
    return out.bytes()


def _means(delta: Totals) -> Mapping[str, float]:
    """Durations' increase over the successes' increase, in seconds, as the adapter reads."""
    n = _success(delta)
    if n <= 0:
        return {}
    return {"e2e": _us(delta.histograms["e2e"]) / 1e6 / n,
            "queue": _us(delta.histograms["queue"]) / 1e6 / n}


def _finished(t: Totals) -> Mapping[str, float]:
    """Successes, and failures under the adapter's reasons."""
    failed = _failures(t)
    return {"success": float(_success(t)), "error": float(failed["BACKEND"] + failed["OTHER"]),
            "abort": float(failed["CANCELED"]), "rejected": float(failed["REJECTED"])}


DIALECTS: tuple[Dialect, ...] = (
    Dialect(name="triton", kind="triton", render=lambda s, start: _render(s, False),
            histograms={}, means=_means, gauges=frozenset({"waiting"}),
            counters=frozenset(), finished=_finished, content_type=CONTENT_TYPE),
    Dialect(name="triton-trtllm", kind="triton", render=lambda s, start: _render(s, True),
            histograms={"ttft": FIRST_RESPONSE_S}, means=_means,
            gauges=frozenset({"running", "waiting", "kv_cache_usage"}),
            counters=frozenset({"prompt_tokens", "generation_tokens"}), finished=_finished,
            content_type=CONTENT_TYPE),
)
