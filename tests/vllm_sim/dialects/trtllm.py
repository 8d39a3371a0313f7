"""trtllm-serve's Prometheus exposition in the three spellings the adapter reads.

- ``trtllm-serve-1.0``: the first release (PR #5785): unprefixed names, a ``finish_reason``
  label, ``model_name`` and ``engine_type`` both ``"undefined"`` (the model comes from
  ``/v1/models``), and only ``request_success`` and the four per-request histograms.
- ``trtllm-dynamo-1.1``: the same five families as Dynamo re-exports them on its worker's
  ``/metrics`` with a ``trtllm:`` prefix, labelled with the model and ``finished_reason``;
  a plain registry, so with ``_created`` gauges.
- ``trtllm-serve-1.3``: the ``trtllm_`` prefix TensorRT-LLM sets itself, the model named,
  token counters and (``enable_iter_perf_stats``) the iteration gauges and KV-cache blocks.

trtllm-serve runs prometheus_client in multiprocess mode: labels sorted, a histogram's
``_sum`` before its buckets, gauges with a ``pid`` label, no ``_created``. Requests that
finish count by reason (``stop``, ``length``, ``cancelled``); failed ones are not counted
(1.3 counts them in ``request_error_total{http_code}``). There is no inter-token histogram
(``time_per_output_token_seconds`` is each request's mean, rendered as its end-to-end time
over :data:`TOKENS_PER_REQUEST`, and not read), no preemption and no forward-pass counter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..expected import INF, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS, HistogramTotals, Totals
from ..exposition import BLOCK_SIZE, NUM_GPU_BLOCKS, EngineSnapshot
from ..scenario import Engine
from . import Dialect, Lines, Route, exact_sum, rebucket

__all__ = ["DIALECTS", "TOKENS_PER_REQUEST", "TPOT_BUCKETS", "Prom", "constant", "go", "scaled",
           "series"]

TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)
TOKENS_PER_REQUEST = 100
"""Output tokens each request is taken to have in per-request histograms (its mean time per
token, its generated tokens), so that their buckets only ever grow; the token counters
themselves are the scenario's."""
Labels = Mapping[str, str]
Series = tuple[Labels, HistogramTotals, float]
"""(labels, observations, the ``_sum`` to write) of one histogram series."""


def go(value: float) -> str:
    """A value as prometheus_client writes it (Go's ``%g``-like ``1.234567e+06`` from 10^6)."""
    value = float(value)
    if value != value:
        return "NaN"
    if value in (INF, -INF):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def scaled(h: HistogramTotals, factor: float) -> HistogramTotals:
    """The same observations, each multiplied by ``factor`` (monotone in time like ``h``)."""
    values = tuple((v * factor, c) for v, c in h.values)
    return HistogramTotals(values, (), h.count, 0.0)


def constant(value: float, n: int) -> HistogramTotals:
    """``n`` observations of ``value``."""
    return HistogramTotals(((value, n),) if n else (), (), n, 0.0)


def series(labels: Labels, h: HistogramTotals) -> Series:
    """A histogram series whose ``_sum`` is the exact sum of its observations."""
    return labels, h, exact_sum(h)


class Prom:
    """Text as prometheus_client 0.2x writes it: labels sorted, values as :func:`go`,
    counters' HELP/TYPE with ``_total``; in multiprocess mode ``_sum`` first and gauges with
    ``pid``, otherwise ``_created`` gauges when ``created`` is given."""

    def __init__(self, multiprocess: bool, created: float | None = None, pid: str = "") -> None:
        self.lines = Lines()
        self.multiprocess = multiprocess
        self.created = created
        self.pid = pid

    def sample(self, name: str, labels: Labels, value: float) -> None:
        text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        self.lines.raw(f"{name}{{{text}}} {go(value)}" if text else f"{name} {go(value)}")

    def _created(self, name: str, doc: str, label_sets: Sequence[Labels]) -> None:
        if self.created is not None and not self.multiprocess:
            self.lines.family(name + "_created", "gauge", doc)
            for labels in label_sets:
                self.sample(name + "_created", labels, self.created)

    def counter(self, name: str, doc: str, values: Sequence[tuple[Labels, float]]) -> None:
        """A counter family ``name`` (without ``_total``)."""
        self.lines.family(name + "_total", "counter", doc)
        for labels, value in values:
            self.sample(name + "_total", labels, value)
        self._created(name, doc, [labels for labels, _ in values])

    def gauge(self, name: str, doc: str, values: Sequence[tuple[Labels, float]]) -> None:
        self.lines.family(name, "gauge", doc)
        for labels, value in values:
            self.sample(name, {**labels, "pid": self.pid} if self.multiprocess else labels, value)

    def histogram(self, name: str, doc: str, bounds: Sequence[float],
                  values: Sequence[Series]) -> None:
        self.lines.family(name, "histogram", doc)
        for labels, h, total in values:
            if self.multiprocess:
                self.sample(name + "_sum", labels, total)
            for bound, count in rebucket(h, bounds):
                self.sample(name + "_bucket", {**labels, "le": go(bound)}, count)
            self.sample(name + "_count", labels, h.count)
            if not self.multiprocess:
                self.sample(name + "_sum", labels, total)
        self._created(name, doc, [labels for labels, _, _ in values])


REASONS = {"stop": ("stop", "stop"), "length": ("length", "length"),
           "abort": ("cancelled", "abort")}
"""Simulated reason -> (trtllm-serve's ``finish_reason``, the adapter's word); errors are
not counted as finished."""


def finished(totals: Totals) -> Mapping[str, float]:
    """The adapter's reasons for the ``request_success`` series written (those above 0)."""
    return {word: float(totals.finished_reason[ours])
            for ours, (_, word) in REASONS.items() if totals.finished_reason[ours] > 0}


def models(engines: Sequence[Engine]) -> Mapping[str, Route]:
    """trtllm-serve's ``/v1/models``: the one model it serves."""
    card = {"id": engines[0].model if engines else "", "object": "model", "created": 0,
            "owned_by": "tensorrt_llm"}
    return {"/v1/models": ("application/json",
                           json.dumps({"object": "list", "data": [card]}).encode())}


@dataclass(frozen=True)
class Release:
    """One spelling generation of the families."""

    prefix: str
    reason_label: str
    named: bool
    """Whether ``model_name`` is the model (else ``"undefined"``)."""
    multiprocess: bool
    full: bool
    """Whether it has the token counters, iteration gauges and config info (1.3)."""

    def render(self, snapshots: Sequence[EngineSnapshot], process_start: float) -> bytes:
        """The first engine's exposition (one model per server, no data-parallel rank)."""
        out = Prom(self.multiprocess, None if not snapshots else snapshots[0].created,
                   str(1000 + int(process_start) % 30000))
        if not snapshots:
            return out.lines.bytes()
        s, p = snapshots[0], self.prefix
        labels = {"model_name": s.engine.model if self.named else "undefined",
                  "engine_type": "trtllm" if self.named else "undefined"}
        t, h = s.totals, s.totals.histograms
        out.counter(p + "request_success", "Count of successfully processed requests.",
                    [({**labels, self.reason_label: theirs}, float(t.finished_reason[ours]))
                     for ours, (theirs, _) in REASONS.items() if t.finished_reason[ours] > 0])
        request_bounds = REQUEST_LATENCY_BUCKETS
        out.histogram(p + "e2e_request_latency_seconds",
                      "Histogram of end to end request latency in seconds.", request_bounds,
                      [series(labels, h["e2e"])])
        out.histogram(p + "time_to_first_token_seconds",
                      "Histogram of time to first token in seconds.", TTFT_BUCKETS,
                      [series(labels, h["ttft"])])
        out.histogram(p + "time_per_output_token_seconds",
                      "Histogram of time per output token in seconds.", TPOT_BUCKETS,
                      [series(labels, scaled(h["e2e"], 1 / TOKENS_PER_REQUEST))])
        out.histogram(p + "request_queue_time_seconds",
                      "Histogram of time spent in WAITING phase for request.", request_bounds,
                      [series(labels, h["queue"])])
        if self.full:
            self._full(out, s, labels)
        return out.lines.bytes()

    def _full(self, out: Prom, s: EngineSnapshot, labels: Labels) -> None:
        """1.3's token counters, error counter, iteration gauges and config info."""
        p, t, g = self.prefix, s.totals, s.gauges
        out.counter(p + "prompt_tokens", "Cumulative number of prompt (input) tokens processed.",
                    [(labels, t.prompt_tokens)])
        out.counter(p + "generation_tokens",
                    "Cumulative number of generation (output) tokens produced.",
                    [(labels, t.generation_tokens)])
        out.counter(p + "num_requests_completed",
                    "Total number of completed requests across iterations",
                    [(labels, float(t.requests))])
        errors = t.finished_reason["error"]
        out.counter(p + "request_error", "Total request errors, labeled by HTTP status code.",
                    [({**labels, "http_code": "500"}, float(errors))] if errors else [])
        used = round(g.kv_cache_usage * NUM_GPU_BLOCKS)
        for name, doc, value in (
                ("num_requests_running", "Number of active requests", g.running),
                ("num_requests_waiting", "Number of queued requests", g.waiting),
                ("kv_cache_hit_rate", "KV cache hit rate", 0.0),
                ("kv_cache_utilization", "KV cache utilization", g.kv_cache_usage),
                ("kv_cache_max_blocks", "Maximum number of KV cache blocks", NUM_GPU_BLOCKS),
                ("kv_cache_free_blocks", "Number of free KV cache blocks", NUM_GPU_BLOCKS - used),
                ("kv_cache_used_blocks", "Number of used KV cache blocks", used),
                ("kv_cache_tokens_per_block", "Number of tokens per KV cache block",
                 BLOCK_SIZE)):
            out.gauge(p + name, doc, [(labels, float(value))])
        out.gauge(p + "model_config_info", "Model configuration info",
                  [({**labels, "model": s.engine.model, "dtype": "bfloat16",
                     "quantization": "none"}, 1.0)])


def _dialect(name: str, release: Release, path: str, gauges: frozenset[str],
             counters: frozenset[str]) -> Dialect:
    return Dialect(
        name=name, kind="trtllm", render=release.render,
        histograms={"ttft": TTFT_BUCKETS, "e2e": REQUEST_LATENCY_BUCKETS,
                    "queue": REQUEST_LATENCY_BUCKETS},
        means=lambda totals: {}, gauges=gauges, counters=counters, finished=finished,
        metrics_path=path, routes=models if path == "/prometheus/metrics" else lambda e: {})


NONE: frozenset[str] = frozenset()
DIALECTS: tuple[Dialect, ...] = (
    _dialect("trtllm-serve-1.0", Release("", "finish_reason", False, True, False),
             "/prometheus/metrics", NONE, NONE),
    _dialect("trtllm-dynamo-1.1", Release("trtllm:", "finished_reason", True, False, False),
             "/metrics", NONE, NONE),
    _dialect("trtllm-serve-1.3", Release("trtllm_", "finished_reason", True, True, True),
             "/prometheus/metrics", frozenset({"running", "waiting", "kv_cache_usage"}),
             frozenset({"prompt_tokens", "generation_tokens"})),
)
