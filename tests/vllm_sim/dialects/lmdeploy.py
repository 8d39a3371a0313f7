"""LMDeploy 0.18's api_server ``/metrics`` (``lmdeploy:`` prefix).

prometheus_client's default registry with ``disable_created_metrics()``: labels sorted, no
``_created``, the process and Python collectors beside. Every family is labelled
``model_name`` and ``engine`` (the data-parallel rank) and exists from the start, at 0,
including one ``request_success_total`` series per ``ResponseType`` member, written as
Python prints it (``ResponseType.FINISH``). A real api_server serves one rank; each
snapshot is rendered here, one label set per engine. Requests that stop or hit their length
both finish as ``FINISH``, cancelled ones as ``CANCEL``, failed ones as
``INTERNAL_ENGINE_ERROR``. ``lmdeploy:iter_token_latency`` is the inter-token latency;
``time_per_output_token_seconds`` (the same time over the output's one token) is rendered
beside it and not read. The per-request token histograms take the phase's prompt length
and :data:`~.trtllm.TOKENS_PER_REQUEST` generated tokens (the latter's ``_sum`` is the
generation counter); the adapter reads the ``*_tokens_total`` counters. No preemption counter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..expected import (
    ITERATION_TOKEN_BUCKETS,
    REQUEST_LATENCY_BUCKETS,
    TTFT_BUCKETS,
    Totals,
)
from ..exposition import EngineSnapshot
from . import Dialect
from .trtllm import TOKENS_PER_REQUEST, Prom, constant, series

__all__ = ["DIALECTS", "ITL_BUCKETS", "RESPONSE_TYPES"]

MAX_MODEL_LEN = 4096
"""The session length, up to which the token histograms' 1-2-5 bounds go."""
ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
               5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
RESPONSE_TYPES = ("SUCCESS", "FINISH", "ENGINE_STOP_ERROR", "SESSION_REPEAT",
                  "SESSION_NOT_EXIST", "HANDLER_NOT_EXIST", "INPUT_LENGTH_ERROR",
                  "INTERNAL_ENGINE_ERROR", "CANCEL", "PREFIX_CACHE_CONFLICT", "NO_QUEUE",
                  "NOT_SUPPORTED", "OUT_OF_MEMORY")
"""``lmdeploy.messages.ResponseType``, in its order."""
STATUS = {"stop": "FINISH", "length": "FINISH", "abort": "CANCEL",
          "error": "INTERNAL_ENGINE_ERROR"}
"""The member a simulated request finishes with."""


def _one_two_five(top: int) -> tuple[float, ...]:
    bounds: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * 10**exponent > top:
                return tuple(bounds)
            bounds.append(float(mantissa * 10**exponent))
        exponent += 1


TOKEN_BUCKETS = _one_two_five(MAX_MODEL_LEN)


def _runtime(out: Prom, process_start: float) -> None:
    """The default registry's gc, platform and process collectors (a few of their samples)."""
    out.counter("python_gc_objects_collected", "Objects collected during gc",
                [({"generation": str(g)}, n) for g, n in enumerate((1203.0, 311.0, 12.0))])
    out.gauge("python_info", "Python platform information",
              [({"implementation": "CPython", "major": "3", "minor": "11", "patchlevel": "9",
                 "version": "3.11.9"}, 1.0)])
    out.gauge("process_start_time_seconds",
              "Start time of the process since unix epoch in seconds.",
              [({}, round(process_start, 2))])


def render(snapshots: Sequence[EngineSnapshot], process_start: float) -> bytes:
    """Every engine's families, one ``(model_name, engine)`` label set each."""
    out = Prom(multiprocess=False)
    _runtime(out, process_start)
    out.gauge("lmdeploy:backend_config_info", "information of backend_config", [({}, 1.0)])
    engines = [({"model_name": s.engine.model, "engine": s.engine.dp_rank}, s)
               for s in snapshots]

    def gauge(name: str, doc: str, value: Callable[[EngineSnapshot], float]) -> None:
        out.gauge("lmdeploy:" + name, doc, [(labels, float(value(s))) for labels, s in engines])

    def reasons(s: EngineSnapshot, *which: str) -> float:
        return float(sum(s.totals.finished_reason[r] for r in which))

    gauge("num_requests_succeeded", "Number of current succeeded requests.",
          lambda s: reasons(s, "stop", "length"))
    gauge("num_requests_failed", "Number of current failed requests.",
          lambda s: reasons(s, "abort", "error"))
    gauge("num_api_requests_routed", "Number of requests routed to request handles.",
          lambda s: s.gauges.running + s.gauges.waiting)
    gauge("num_api_requests_waiting", "Number of requests waiting for free request handles.",
          lambda s: 0.0)
    gauge("num_requests_running", "Number of requests in model execution batches.",
          lambda s: s.gauges.running)
    gauge("num_requests_waiting", "Number of requests waiting to be processed.",
          lambda s: s.gauges.waiting)
    gauge("gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.",
          lambda s: s.gauges.kv_cache_usage)
    gauge("prefix_cache_hit_rate",
          "Prefix-cache hit rate. 1 means 100 percent of queried prefix tokens hit.",
          lambda s: 0.0)
    out.counter("lmdeploy:prompt_tokens", "Number of prefill tokens processed.",
                [(labels, s.totals.prompt_tokens) for labels, s in engines])
    out.counter("lmdeploy:generation_tokens", "Number of generation tokens processed.",
                [(labels, s.totals.generation_tokens) for labels, s in engines])
    out.counter("lmdeploy:request_success", "Count of successfully processed requests.",
                [({**labels, "finished_reason": "ResponseType." + member},
                  reasons(s, *(ours for ours, theirs in STATUS.items() if theirs == member)))
                 for labels, s in engines for member in RESPONSE_TYPES])
    out.histogram("lmdeploy:request_prompt_tokens", "Number of prefill tokens processed.",
                  TOKEN_BUCKETS,
                  [series(labels, s.totals.histograms["request_prompt_tokens"])
                   for labels, s in engines])
    out.histogram("lmdeploy:request_generation_tokens", "Number of generation tokens processed.",
                  TOKEN_BUCKETS,
                  [(labels, constant(TOKENS_PER_REQUEST, s.totals.requests),
                    s.totals.generation_tokens) for labels, s in engines])
    out.counter("lmdeploy:cached_tokens", "Total prefix-cached input tokens served.",
                [(labels, 0.0) for labels, _ in engines])
    for name, doc, key, bounds in (
            ("iteration_tokens_total", "Histogram of number of tokens per engine_step.",
             "iteration_tokens", ITERATION_TOKEN_BUCKETS),
            ("time_to_first_token_seconds", "Histogram of time to first token in seconds.",
             "ttft", TTFT_BUCKETS),
            ("time_per_output_token_seconds", "Histogram of time per output token in seconds.",
             "itl", ITL_BUCKETS),
            ("iter_token_latency", "Histogram of inter-token latency", "itl", ITL_BUCKETS),
            ("e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
             "e2e", REQUEST_LATENCY_BUCKETS),
            ("request_queue_time_seconds",
             "Histogram of time spent in WAITING phase for request.", "queue",
             REQUEST_LATENCY_BUCKETS)):
        out.histogram("lmdeploy:" + name, doc, bounds,
                      [series(labels, s.totals.histograms[key]) for labels, s in engines])
    return out.lines.bytes()


def finished(totals: Totals) -> Mapping[str, float]:
    """The adapter's words over all 13 series: ``success`` (SUCCESS, FINISH), ``abort``
    (CANCEL), ``error`` (the engine's failures) and ``invalid`` (refusals, always 0 here)."""
    reasons = totals.finished_reason
    return {"success": float(reasons["stop"] + reasons["length"]),
            "abort": float(reasons["abort"]), "error": float(reasons["error"]),
            "invalid": 0.0}


DIALECTS: tuple[Dialect, ...] = (
    Dialect(name="lmdeploy-0.18", kind="lmdeploy", render=render,
            histograms={"ttft": TTFT_BUCKETS, "itl": ITL_BUCKETS, "e2e": REQUEST_LATENCY_BUCKETS,
                        "queue": REQUEST_LATENCY_BUCKETS},
            means=lambda totals: {},
            gauges=frozenset({"running", "waiting", "kv_cache_usage"}),
            counters=frozenset({"prompt_tokens", "generation_tokens"}), finished=finished),
)
