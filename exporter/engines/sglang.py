"""SGLang: its metric names, current (0.5) and older (0.4), mapped onto the engine-neutral reading.

SGLang serves two kinds of series from one ``prometheus_client`` multiprocess registry: the
scheduler's (queues, KV pool, live token counters, queue time), labelled ``model_name``,
``engine_type``, ``tp_rank``, ``pp_rank``, ``moe_ep_rank`` (0.5) and, where set, ``dp_rank``
and ``priority``; and the tokenizer's (request counters, TTFT, ITL and end-to-end latency),
labelled ``model_name``, ``engine_type`` and, from 0.5, ``is_streaming`` on some families.

One reading per (``model_name``, ``dp_rank`` or "0"). Of the scheduler series of one reading,
only those of its lowest (``pp_rank``, ``tp_rank``, ``moe_ep_rank``) are read: other shards
repeat its figures (``--enable-metrics-for-all-schedulers``; the retraction counters and
start-up constants on every rank). That shard is rank 0, except with DP attention, where each
``dp_rank``'s scheduler is the first of its own attention group (``tp_rank`` d x attention
TP size). Splits by ``is_streaming``, ``priority`` or custom labels are summed, except in the
request gauges: there SGLang writes the total under ``priority=""`` and a per-priority
breakdown beside it, so only the total is read. The ``pid`` of two gauges is never read, nor
are series without ``model_name`` (evictions).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

from exporter.engines.adapter import Adapter, ProcessMatch
from exporter.engines.common import Readings, first
from exporter.engines.histograms import HistogramReader
from exporter.engines.reading import EngineKey, EngineReading
from exporter.expfmt import Exposition, Sample

__all__ = ["ADAPTER", "COUNTERS", "GAUGES", "HISTOGRAMS", "KEEP", "Normaliser"]

# Our signal -> SGLang names, preferred first.
GAUGES: dict[str, tuple[str, ...]] = {
    "requests_waiting": ("sglang:num_queue_reqs",),
    "requests_running": ("sglang:num_running_reqs",),
    "kv_cache_capacity_tokens": ("sglang:max_total_num_tokens",),
}
FULL_USAGE, SWA_USAGE, TOKEN_USAGE = (
    "sglang:full_token_usage", "sglang:swa_token_usage", "sglang:token_usage")
KV_USAGE = (FULL_USAGE, SWA_USAGE, TOKEN_USAGE)
"""The KV pools' usage, unrounded (0.5: the larger of the full and the sliding-window pool,
as SGLang's own KV token usage), else ``token_usage`` (rounded to two decimals)."""
REALTIME, GENERATED = "sglang:realtime_tokens_total", "sglang:generation_tokens_total"
FIRST_TOKENS = "sglang:time_to_first_token_seconds_count"
"""Requests that had their first token (from prefill, which the live counter leaves out)."""
COUNTERS: dict[str, tuple[str, ...]] = {
    # The tokenizer's count of the finished requests' prompts (cached tokens included);
    # not the scheduler's prefill counters, which also count /health probes and re-prefills.
    "prompt_tokens": ("sglang:prompt_tokens_total",),
    # Live decode tokens where the scheduler counts them ({mode="decode"}) plus each
    # request's first token; else the tokenizer's count at request end.
    "generation_tokens": (REALTIME, FIRST_TOKENS, GENERATED),
    # Created at the first retraction: absent before it.
    "preemptions": ("sglang:num_retracted_requests_total",),
}
ABORTED = "sglang:num_aborted_requests_total"
"""Aborts the tokenizer sent the scheduler (client gone, ``/abort_request``): ``abort``."""
HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "time_to_first_token": ("sglang:time_to_first_token_seconds",),
    # Observed per output step, weighted by the step's tokens. Not the per-request mean
    # (sglang:request_time_per_output_token_seconds, older sglang:time_per_output_token).
    "inter_token_latency": ("sglang:inter_token_latency_seconds",),
    "e2e_request_latency": ("sglang:e2e_request_latency_seconds",),
    # Scheduler side: /health probes queue too.
    "request_queue_time": ("sglang:queue_time_seconds",),
}
SHARDS = ("pp_rank", "tp_rank", "moe_ep_rank")
"""The labels of a scheduler's shard, in the order a reading's lowest shard is chosen by."""

KEEP: frozenset[str] = frozenset(
    [n for names in GAUGES.values() for n in names] + list(KV_USAGE)
    + [n for names in COUNTERS.values() for n in names] + [ABORTED]
    + [n + s for names in HISTOGRAMS.values() for n in names
       for s in ("", "_bucket", "_sum", "_count")]
)
"""The samples the parser should read at all; the rest are skipped unparsed."""

Sums = dict[EngineKey, float]
KeyOf = Callable[[Mapping[str, str]], "EngineKey | None"]
Shard = tuple[int, ...]
LEADS = (*GAUGES.values(), KV_USAGE, *COUNTERS.values(),
         *((n + "_sum",) for names in HISTOGRAMS.values() for n in names))
"""The samples whose shard labels say which shard of each reading is read."""


def _reading(labels: Mapping[str, str]) -> EngineKey | None:
    model = labels.get("model_name")
    return None if model is None else (model, labels.get("dp_rank", "0"))


def _shard(labels: Mapping[str, str]) -> Shard | None:
    """A scheduler series' (pp, tp, expert) ranks; None for a tokenizer series or a rank
    that is not a number."""
    if not any(s in labels for s in SHARDS):
        return None
    try:
        return tuple(int(labels.get(s, "0")) for s in SHARDS)
    except ValueError:
        return None


def _leads(exp: Exposition) -> dict[EngineKey, Shard]:
    """Each reading's lowest shard among its scheduler series."""
    leads: dict[EngineKey, Shard] = {}
    for names in LEADS:
        for _, labels, _v, _ts in first(exp, names):
            key, shard = _reading(labels), _shard(labels)
            if key is not None and shard is not None:
                lead = leads.get(key)
                if lead is None or shard < lead:
                    leads[key] = shard
    return leads


def _sums(samples: Iterable[Sample], key_of: KeyOf) -> Sums:
    """Each reading's finite values, summed over the label sets beside its key."""
    out: Sums = {}
    for _, labels, value, _ts in samples:
        key = key_of(labels)
        if key is not None and math.isfinite(value):
            out[key] = out.get(key, 0.0) + value
    return out


def _last(samples: Iterable[Sample], key_of: KeyOf) -> Sums:
    """Each reading's gauge: the last finite value of its total (``priority=""`` or none)."""
    out: Sums = {}
    for _, labels, value, _ts in samples:
        key = None if labels.get("priority", "") else key_of(labels)
        if key is not None and math.isfinite(value):
            out[key] = value
    return out


def _kv_usage(exp: Exposition, key_of: KeyOf) -> Sums:
    full = _last(exp.get(FULL_USAGE), key_of)
    if not full:
        return _last(exp.get(TOKEN_USAGE), key_of)
    swa = _last(exp.get(SWA_USAGE), key_of)
    return {key: max(value, swa.get(key, value)) for key, value in full.items()}


def _generation(exp: Exposition, key_of: KeyOf) -> Sums:
    """Generated tokens, live where the exposition has the live counter at all, else the
    tokenizer's count at request end; never one for some polls and the other for others.

    The live counter counts decode steps' tokens only: each request's first token comes
    from its prefill. That one is counted when the tokenizer observes the request's time to
    first token, so the two together are every generated token, as vLLM and the others
    count them (seen: 1592 decode + 8 first tokens = the tokenizer's 1600 for 8 requests)."""
    live = exp.get(REALTIME)
    if not live:
        return _sums(exp.get(GENERATED), key_of)
    decoded = _sums((s for s in live if s[1].get("mode") == "decode"), key_of)
    first = _sums(exp.get(FIRST_TOKENS), key_of)
    return {key: value + first.get(key, 0.0) for key, value in decoded.items()}


class Normaliser:
    """Turns a parsed SGLang exposition into one reading per (model, rank), capped in number."""

    def __init__(self, max_engines: int) -> None:
        self.max_engines = max_engines
        self.leads: dict[EngineKey, Shard] = {}
        """Each reading's shard whose series are read (see the module's docstring)."""
        self.histograms = HistogramReader(self.key)

    def key(self, labels: Mapping[str, str]) -> EngineKey | None:
        """The reading a sample belongs to; None for another shard's repeat or no model."""
        key = _reading(labels)
        if key is None or not any(s in labels for s in SHARDS):
            return key
        return key if _shard(labels) == self.leads.get(key) else None

    def normalise(self, exp: Exposition, model: str = "") -> tuple[list[EngineReading], int]:
        """Readings found, and how many label sets were dropped by the cap (SGLang labels its
        samples with the model: ``model`` is not needed)."""
        readings = Readings(self.max_engines)
        get = readings.get

        leads = _leads(exp)
        if leads != self.leads:  # the histograms' plans hold the shards' keys: new ones
            self.leads, self.histograms = leads, HistogramReader(self.key)
        key_of = self.key
        gauges = {ours: _last(first(exp, names), key_of) for ours, names in GAUGES.items()}
        gauges["kv_cache_usage_ratio"] = _kv_usage(exp, key_of)
        for ours, values in gauges.items():
            for key, value in values.items():
                if (r := get(key)) is not None:
                    r.gauges[ours] = value
        counters = {"prompt_tokens": _sums(first(exp, COUNTERS["prompt_tokens"]), key_of),
                    "generation_tokens": _generation(exp, key_of),
                    "preemptions": _sums(first(exp, COUNTERS["preemptions"]), key_of)}
        # The live decode counter moves while requests decode; the older request-end one,
        # and the prompt count always, only when a request ends.
        at_end = frozenset({"prompt_tokens"}) if exp.get(REALTIME) else None
        for ours, values in counters.items():
            for key, value in values.items():
                if (r := get(key)) is not None:
                    r.counters[ours] = value
                    r.at_request_end = at_end
        for key, value in _sums(exp.get(ABORTED), key_of).items():
            if (r := get(key)) is not None:
                r.finished["abort"] = value
        readings.histograms(self.histograms, exp, HISTOGRAMS)
        return readings.result()

ADAPTER = Adapter(
    kind="sglang",
    title="SGLang",
    default_port=30000,
    metrics_path="/metrics",
    names={**GAUGES, "kv_cache_usage_ratio": KV_USAGE, **COUNTERS,
           "requests_finished": (ABORTED,), **HISTOGRAMS},
    keep=KEEP,
    normaliser=Normaliser,
    processes=ProcessMatch(words=("sglang.launch_server", "sglang"),
                           default_port_words=("sglang.launch_server", "serve"),
                           port_flags=("--port",)),
    # Prompt tokens are counted when a request ends; so are generated tokens by releases
    # without the live decode counter (a reading read through the live one says so).
    counted_at_request_end=frozenset({"prompt_tokens", "generation_tokens"}),
)
