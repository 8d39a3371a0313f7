"""SGLang 0.5's exposition (``sglang:``) of the simulated state, as its multiprocess
``prometheus_client`` registry writes it (captures/sglang-*.txt).

The scenario's first engine only (one server serves one model; no DP attention: the
reading is ``(model, "0")``), on two TP ranks run with
``--enable-metrics-for-all-schedulers``: every scheduler series (queues, KV pool, live token
counters, queue time) on ``tp_rank`` "0" and again, same values, on "1".
The tokenizer's series (request counters, TTFT, ITL, end-to-end latency) carry no rank and,
on most families, ``is_streaming``: a third of each count (rounded down) streams. Labels are
sorted, ``le`` among them; a histogram writes every ``_sum`` first; no ``_created``. As in
SGLang, the tokenizer's series appear at their first observation, the retraction counter at
the first retraction and the abort counter at the first abort.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

from ..expected import HistogramTotals, Totals
from ..exposition import EngineSnapshot
from ..scenario import Engine
from . import Dialect, Lines, Route, exact_sum, rebucket

__all__ = ["DIALECTS", "E2E_BOUNDS", "ITL_BOUNDS", "QUEUE_BOUNDS", "TTFT_BOUNDS"]

# fmt: off
TTFT_BOUNDS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0,
               100.0, 200.0, 400.0)
ITL_BOUNDS = (0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06,
              0.08, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0)
E2E_BOUNDS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0,
              100.0, 200.0, 400.0, 600.0, 1200.0, 1800.0, 2400.0)
QUEUE_BOUNDS = (0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0,
                15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 200.0, 300.0,
                400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 1200.0, 1400.0, 1600.0,
                1800.0, 2000.0, 2500.0, 3000.0)
# fmt: on
MAX_TOTAL_NUM_TOKENS = 4096
TP_RANKS = ("0", "1")
PIDS = {"0": "12345", "1": "12346"}
"""Each TP rank's scheduler process, on the two gauges declared without a multiprocess mode."""
ROUTING_BOUNDS = (("0", "1"), ("1", "2"), ("2", "3"), ("3", "5"), ("5", "7"), ("7", "10"),
                  ("10", "20"), ("20", "50"), ("50", "100"), ("100", "200"), ("200", "+Inf"))
STREAMING = ("false", "true")


def _go(value: float) -> str:
    """A value as prometheus_client writes it (``8.0``, ``1.234567e+06``, ``NaN``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _put(out: Lines, name: str, labels: Mapping[str, str], value: float) -> None:
    text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    out.raw(f"{name}{{{text}}} {_go(value)}")


def _third(count: float) -> tuple[float, float]:
    """(not streaming, streaming) shares of a count: a third, rounded down, streams. Both are
    exact, and add up to the count exactly."""
    streaming = float(math.floor(count) // 3)
    return count - streaming, streaming


def _split(h: HistogramTotals) -> tuple[HistogramTotals, HistogramTotals]:
    """(not streaming, streaming) observations: a third of each value's, rounded down."""
    def part(values: tuple[tuple[float, int], ...]) -> HistogramTotals:
        kept = tuple((v, c) for v, c in values if c)
        return HistogramTotals(kept, (), sum(c for _, c in kept),
                               exact_sum(HistogramTotals(kept, (), 0, 0.0)))
    return (part(tuple((v, c - c // 3) for v, c in h.values)),
            part(tuple((v, c // 3) for v, c in h.values)))


def _sums(whole: HistogramTotals, parts: Sequence[HistogramTotals]) -> list[float]:
    """The parts' ``_sum`` values, nudged by ulps so that they add up (in floating point, as
    a reader summing the series does) to the whole's exact sum."""
    sums = [p.sum for p in parts]
    if len(sums) != 2:
        return sums
    target = exact_sum(whole)
    for second in _near(sums[1]):
        for first in _near(target - second):
            if first + second == target:
                return [first, second]
    return sums


def _near(value: float, steps: int = 4) -> list[float]:
    """``value`` and the floats up to ``steps`` ulps either side of it, nearest first."""
    out, up, down = [value], value, value
    for _ in range(steps):
        up, down = math.nextafter(up, math.inf), math.nextafter(down, -math.inf)
        out += [up, down]
    return out


def _histogram(out: Lines, name: str, doc: str, series: Sequence[tuple[dict[str, str],
               HistogramTotals]], bounds: Sequence[float], whole: HistogramTotals) -> None:
    """One histogram family as the multiprocess collector writes it: every ``_sum``, then
    each series' buckets and ``_count``; series with no observation are not there yet."""
    present = [(labels, h) for labels, h in series if h.count]
    if not present:
        return
    out.family(name, "histogram", doc)
    for (labels, _), total in zip(present, _sums(whole, [h for _, h in present]), strict=True):
        _put(out, name + "_sum", labels, total)
    for labels, h in present:
        for bound, count in rebucket(h, bounds):
            _put(out, name + "_bucket", {**labels, "le": _go(bound)}, float(count))
        _put(out, name + "_count", labels, float(h.count))


def _scheduler(out: Lines, s: EngineSnapshot) -> None:
    """The scheduler families, each on every TP rank."""
    t, g = s.totals, s.gauges
    ranks = [{"engine_type": "unified", "model_name": s.engine.model, "moe_ep_rank": "0",
              "pp_rank": "0", "tp_rank": tp} for tp in TP_RANKS]
    cached = float(math.floor(t.prompt_tokens) // 4)

    def each(name: str, kind: str, doc: str, value: float) -> None:
        out.family(name, kind, doc)
        for labels in ranks:
            _put(out, name, labels, value)

    out.family("sglang:realtime_tokens_total", "counter", "Total number of tokens processed "
               "(updated on each log interval). mode: prefill_compute, prefill_cache, decode.")
    for labels in ranks:
        for mode, value in (("prefill_compute", t.prompt_tokens - cached),
                            # Each request's first token comes from its prefill.
                            ("decode", t.generation_tokens - t.histograms["ttft"].count),
                            ("prefill_cache", cached)):
            _put(out, "sglang:realtime_tokens_total", {**labels, "mode": mode}, value)
    each("sglang:max_total_num_tokens", "gauge",
         "Maximum total number of tokens in the KV cache pool.", MAX_TOTAL_NUM_TOKENS)
    each("sglang:num_running_reqs", "gauge", "The number of running requests.", g.running)
    each("sglang:num_queue_reqs", "gauge", "The number of requests in the waiting queue.",
         g.waiting)
    each("sglang:cache_hit_rate", "gauge", "The prefix cache hit rate.",
         cached / t.prompt_tokens if t.prompt_tokens else 0.0)
    each("sglang:token_usage", "gauge", "The token usage.", round(g.kv_cache_usage, 2))
    each("sglang:full_token_usage", "gauge", "The token usage for full attention layers.",
         g.kv_cache_usage)
    each("sglang:swa_token_usage", "gauge", "The token usage for SWA layers.", 0.0)
    each("sglang:num_used_tokens", "gauge", "The number of used tokens.",
         float(round(g.kv_cache_usage * MAX_TOTAL_NUM_TOKENS)))
    name = "sglang:routing_key_running_req_count"  # a gauge with ``le`` labels
    out.family(name, "gauge", "Distribution of routing keys by running request count "
               "(gt < count <= le).")
    for labels in ranks:
        for gt, le in ROUTING_BOUNDS:
            _put(out, name, {**labels, "gt": gt, "le": le}, 0.0)


def _tokenizer(out: Lines, s: EngineSnapshot) -> None:
    """The tokenizer families, split by ``is_streaming`` where SGLang splits them."""
    t = s.totals
    base = {"engine_type": "unified", "model_name": s.engine.model}
    for name, doc, total in (
            ("sglang:prompt_tokens_total", "Number of prefill tokens processed.",
             t.prompt_tokens),
            ("sglang:generation_tokens_total", "Number of generation tokens processed.",
             t.generation_tokens),
            ("sglang:num_requests_total", "Number of requests processed.", float(t.requests))):
        shares = [(flag, v) for flag, v in zip(STREAMING, _third(total), strict=True) if v > 0]
        if shares:
            out.family(name, "counter", doc)
        for flag, value in shares:
            _put(out, name, {**base, "is_streaming": flag}, value)
    cached = float(math.floor(t.prompt_tokens) // 4)
    if cached > 0:
        out.family("sglang:cached_tokens_total", "counter",
                   "Number of cached prompt tokens by source (device/host/storage).")
        _put(out, "sglang:cached_tokens_total", {**base, "cache_source": "device"}, cached)
    if t.finished_reason["abort"] > 0:
        out.family("sglang:num_aborted_requests_total", "counter", "Number of requests aborted.")
        _put(out, "sglang:num_aborted_requests_total", base, float(t.finished_reason["abort"]))
    for key, name, doc, bounds in (
            ("ttft", "sglang:time_to_first_token_seconds",
             "Histogram of time to first token in seconds.", TTFT_BOUNDS),
            ("itl", "sglang:inter_token_latency_seconds",
             "Histogram of inter-token latency in seconds.", ITL_BOUNDS),
            ("e2e", "sglang:e2e_request_latency_seconds",
             "Histogram of End-to-end request latency in seconds", E2E_BOUNDS)):
        h = t.histograms[key]
        if key == "itl":  # no ``is_streaming`` here
            series = [(dict(base), h)]
        else:
            series = [({**base, "is_streaming": flag}, part)
                      for flag, part in zip(STREAMING, _split(h), strict=True)]
        _histogram(out, name, doc, series, bounds, h)


def _last(out: Lines, s: EngineSnapshot) -> None:
    """The pid-labelled gauges, the retraction counter and the queue time, per TP rank."""
    t = s.totals
    ranks = [{"engine_type": "unified", "model_name": s.engine.model, "moe_ep_rank": "0",
              "pp_rank": "0", "tp_rank": tp} for tp in TP_RANKS]
    for name, doc in (("sglang:num_retracted_reqs", "The number of retracted requests."),
                      ("sglang:num_paused_reqs",
                       "The number of paused requests by async weight sync.")):
        out.family(name, "gauge", doc)
        for labels in ranks:
            _put(out, name, {**labels, "pid": PIDS[labels["tp_rank"]]}, 0.0)
    if t.preemptions > 0:
        name = "sglang:num_retracted_requests_total"
        out.family(name, "counter", "Total number of retracted requests.")
        for labels in ranks:
            _put(out, name, labels, t.preemptions)
    h = t.histograms["queue"]
    name = "sglang:queue_time_seconds"
    out.family(name, "histogram", "Histogram of queueing time in seconds.")
    for labels in ranks:
        _put(out, name + "_sum", labels, exact_sum(h))
    for labels in ranks:
        for bound, count in rebucket(h, QUEUE_BOUNDS):
            _put(out, name + "_bucket", {**labels, "le": _go(bound)}, float(count))
        _put(out, name + "_count", labels, float(h.count))


def render(snapshots: Sequence[EngineSnapshot], process_start: float) -> bytes:
    """The first engine's exposition: one SGLang server serves one model (its multiprocess
    registry writes no ``process_*`` series)."""
    out = Lines()
    for part in (_scheduler, _tokenizer, _last):
        for s in snapshots[:1]:
            part(out, s)
    return out.bytes()


def _finished(totals: Totals) -> Mapping[str, float]:
    abort = totals.finished_reason["abort"]
    return {"abort": float(abort)} if abort > 0 else {}


def _routes(engines: Sequence[Engine]) -> Mapping[str, Route]:
    model = engines[0].model if engines else "default"
    listed = {"object": "list", "data": [{"id": model, "object": "model", "created": 0,
                                          "owned_by": "sglang", "root": model}]}
    return {"/v1/models": ("application/json", json.dumps(listed).encode()),
            "/health": ("text/plain; charset=utf-8", b"")}


DIALECTS: tuple[Dialect, ...] = (Dialect(
    name="sglang",
    kind="sglang",
    render=render,
    histograms={"ttft": TTFT_BOUNDS, "itl": ITL_BOUNDS, "e2e": E2E_BOUNDS,
                "queue": QUEUE_BOUNDS},
    means=lambda totals: {},
    gauges=frozenset({"running", "waiting", "kv_cache_usage"}),
    counters=frozenset({"prompt_tokens", "generation_tokens", "preemptions"}),
    finished=_finished,
    routes=_routes,
),)
