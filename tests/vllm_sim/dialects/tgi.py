"""TGI's router ``/metrics``, as the Rust ``metrics-exporter-prometheus`` crate writes it.

One router serves one model: only the first snapshot is rendered, and no family has a model
label (``/info`` names the model). Counters are integers without ``_total``; HELP lines only
for the families the router describes; values and bounds as Rust prints an ``f64`` (``2``,
``0.00015000000000000001``); a blank line after each family. The router writes a family
once it is first set; here every family the fields name is written from the first scrape,
as after warm-up traffic, and ``tgi_request_failure{err}`` once its count is above 0.

There is no time-to-first-token and no inter-token histogram: the batch forward passes'
durations (``tgi_batch_forward_duration{method}``, from the simulated first-token and
inter-token values) and each request's mean time per token (its end-to-end time over
:data:`~.trtllm.TOKENS_PER_REQUEST`) are rendered and must not be read as either. Token
counts are the ``_sum`` of ``tgi_request_input_length`` and ``tgi_request_generated_tokens``,
written as the scenario's counters; their buckets hold one observation per request (the
simulated prompt length of its phase, and :data:`~.trtllm.TOKENS_PER_REQUEST` generated
tokens), values that never change once observed, so no bucket ever goes down.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal

from ..expected import HistogramTotals, Totals
from ..exposition import BLOCK_SIZE, NUM_GPU_BLOCKS, EngineSnapshot
from ..scenario import Engine
from . import Dialect, Lines, Route, exact_sum, rebucket
from .trtllm import TOKENS_PER_REQUEST, constant, scaled

__all__ = ["DIALECTS", "DURATION_BUCKETS", "iterations", "rust"]

MAX_INPUT_TOKENS = 4095
MAX_TOTAL_TOKENS = 4096
MAX_BATCH_TOTAL_TOKENS = BLOCK_SIZE * NUM_GPU_BLOCKS
"""What warm-up found room for (``tgi_batch_max_total_tokens``): the simulated KV cache."""
VALIDATION_SECONDS = 0.0004


def _geometric() -> tuple[float, ...]:
    """The router's bounds for every ``*duration`` family: 35 of ``0.0001 * 1.5**k``,
    multiplied up one at a time as the router does."""
    value, bounds = 0.0001, []
    for _ in range(35):
        value *= 1.5
        bounds.append(value)
    return tuple(bounds)


DURATION_BUCKETS = _geometric()
INPUT_LENGTH_BUCKETS = tuple((MAX_INPUT_TOKENS / 100.0) * (x + 1) for x in range(100))
GENERATED_TOKENS_BUCKETS = tuple((MAX_TOTAL_TOKENS / 100.0) * (x + 1) for x in range(100))


def rust(value: float) -> str:
    """An ``f64`` as Rust's ``Display`` writes it: shortest round trip, never an exponent."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def iterations(totals: Totals) -> float:
    """What ``tgi_batch_inference_count`` gives, summed over ``method`` (the adapter's
    ``iterations``, which the fields cannot say): a prefill per request, a decode per step."""
    return float(totals.requests + totals.histograms["iteration_tokens"].count)


class _Router:
    """The crate's text: ``# HELP`` where described, ``# TYPE``, samples, a blank line."""

    def __init__(self) -> None:
        self.lines = Lines()

    def family(self, name: str, kind: str, doc: str | None,
               samples: Sequence[tuple[str, Mapping[str, str], str]]) -> None:
        if not samples:
            return
        if doc:
            self.lines.family(name, kind, doc)
        else:
            self.lines.raw(f"# TYPE {name} {kind}")
        for sample, labels, value in samples:
            text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            self.lines.raw(f"{sample}{{{text}}} {value}" if text else f"{sample} {value}")
        self.lines.raw("")

    def counter(self, name: str, doc: str | None,
                values: Sequence[tuple[Mapping[str, str], int]]) -> None:
        self.family(name, "counter", doc, [(name, labels, str(v)) for labels, v in values])

    def gauge(self, name: str, doc: str | None, value: float) -> None:
        self.family(name, "gauge", doc, [(name, {}, rust(value))])

    def histogram(self, name: str, doc: str, bounds: Sequence[float],
                  values: Sequence[tuple[Mapping[str, str], HistogramTotals, float]]) -> None:
        samples: list[tuple[str, Mapping[str, str], str]] = []
        for labels, h, total in values:
            for bound, count in rebucket(h, bounds):
                le = "+Inf" if bound == float("inf") else rust(bound)
                samples.append((name + "_bucket", {**labels, "le": le}, str(count)))
            samples.append((name + "_sum", labels, rust(total)))
            samples.append((name + "_count", labels, str(h.count)))
        self.family(name, "histogram", doc, samples)


def _same(h: HistogramTotals) -> tuple[Mapping[str, str], HistogramTotals, float]:
    return {}, h, exact_sum(h)


def render(snapshots: Sequence[EngineSnapshot], process_start: float) -> bytes:
    """The router's exposition of the first engine (``process_start`` is not exposed)."""
    out = _Router()
    if not snapshots:
        return out.lines.bytes()
    s = snapshots[0]
    t, h, g = s.totals, s.totals.histograms, s.gauges
    steps = h["iteration_tokens"].count
    reasons = t.finished_reason
    out.counter("tgi_request_count", "Total number of requests", [({}, t.requests)])
    out.counter("tgi_request_success", "Number of successful requests",
                [({}, reasons["stop"] + reasons["length"])])
    out.counter("tgi_request_failure", None,
                [({"err": err}, reasons[ours])
                 for ours, err in (("abort", "dropped"), ("error", "generation"))
                 if reasons[ours] > 0])
    methods = (({"method": "prefill"}, t.requests), ({"method": "decode"}, steps))
    out.counter("tgi_batch_inference_count", "Inference calls per method (prefill or decode)",
                methods)
    out.counter("tgi_batch_inference_success",
                "Number of successful inference calls per method (prefill or decode)", methods)
    out.gauge("tgi_batch_current_max_tokens", "Maximum tokens for the current batch",
              min(MAX_BATCH_TOTAL_TOKENS, g.running * MAX_TOTAL_TOKENS))
    out.gauge("tgi_batch_current_size", "Current batch size", g.running)
    out.gauge("tgi_batch_max_total_tokens", None, MAX_BATCH_TOTAL_TOKENS)
    out.gauge("tgi_queue_size", "Current queue size", g.waiting)
    out.histogram("tgi_batch_forward_duration",
                  "Batch forward duration per method (prefill or decode)", DURATION_BUCKETS,
                  [({"method": "prefill"}, h["ttft"], exact_sum(h["ttft"])),
                   ({"method": "decode"}, h["itl"], exact_sum(h["itl"]))])
    out.histogram("tgi_request_duration", "Request duration", DURATION_BUCKETS,
                  [_same(h["e2e"])])
    out.histogram("tgi_request_generated_tokens", "Generated tokens per request",
                  GENERATED_TOKENS_BUCKETS,
                  [({}, constant(TOKENS_PER_REQUEST, t.requests), t.generation_tokens)])
    out.histogram("tgi_request_input_length", "Input token length per request",
                  INPUT_LENGTH_BUCKETS,
                  [({}, h["request_prompt_tokens"], t.prompt_tokens)])
    out.histogram("tgi_request_mean_time_per_token_duration", "Mean time per token per request",
                  DURATION_BUCKETS, [_same(scaled(h["e2e"], 1 / TOKENS_PER_REQUEST))])
    out.histogram("tgi_request_queue_duration", "Request queue duration", DURATION_BUCKETS,
                  [_same(h["queue"])])
    out.histogram("tgi_request_validation_duration", "Request validation duration",
                  DURATION_BUCKETS, [_same(constant(VALIDATION_SECONDS, t.requests))])
    return out.lines.bytes()


def routes(engines: Sequence[Engine]) -> Mapping[str, Route]:
    """``/info`` (whose ``model_id`` the adapter reads), ``/health`` and ``/v1/models``."""
    model = engines[0].model if engines else ""
    info = {"model_id": model, "model_sha": None, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128, "max_best_of": 2, "max_stop_sequences": 4,
            "max_input_tokens": MAX_INPUT_TOKENS, "max_total_tokens": MAX_TOTAL_TOKENS,
            "validation_workers": 2, "max_client_batch_size": 4,
            "router": "text-generation-router", "version": "3.3.6", "sha": None,
            "docker_label": None}
    listed = {"object": "list", "data": [{"id": model, "object": "model", "created": 0,
                                          "owned_by": model}]}
    return {"/info": ("application/json", json.dumps(info).encode()),
            "/health": ("text/plain; charset=utf-8", b""),
            "/v1/models": ("application/json", json.dumps(listed).encode())}


def finished(totals: Totals) -> Mapping[str, float]:
    """``success`` (stop and length alike), and ``abort`` (``dropped``) and ``error``
    (``generation``) once their series exist."""
    reasons = totals.finished_reason
    out = {"success": float(reasons["stop"] + reasons["length"])}
    out.update({word: float(reasons[ours]) for ours, word in (("abort", "abort"),
                                                              ("error", "error"))
                if reasons[ours] > 0})
    return out


DIALECTS: tuple[Dialect, ...] = (
    Dialect(name="tgi", kind="tgi", render=render,
            histograms={"e2e": DURATION_BUCKETS, "queue": DURATION_BUCKETS},
            means=lambda totals: {}, gauges=frozenset({"running", "waiting"}),
            counters=frozenset({"prompt_tokens", "generation_tokens"}), finished=finished,
            content_type="text/plain; charset=utf-8", routes=routes),
)
