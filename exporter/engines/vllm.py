"""vLLM's metric names, current and older, mapped onto the stable schema."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from exporter.engines.reading import EngineKey, EngineReading, HistogramReading
from exporter.expfmt import Exposition, Sample

__all__ = ["COUNTERS", "GAUGES", "HISTOGRAMS", "KEEP", "Normaliser"]

_Get = Callable[[Mapping[str, str]], EngineReading | None]

# Our name -> vLLM names, preferred first. Older vLLM releases use the later names.
GAUGES: dict[str, tuple[str, ...]] = {
    "requests_waiting": ("vllm:num_requests_waiting",),
    "requests_running": ("vllm:num_requests_running",),
    "requests_swapped": ("vllm:num_requests_swapped",),
    "kv_cache_usage_ratio": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
}
COUNTERS: dict[str, tuple[str, ...]] = {
    "prompt_tokens": ("vllm:prompt_tokens",),
    "generation_tokens": ("vllm:generation_tokens",),
    "preemptions": ("vllm:num_preemptions",),
}
FINISHED = "vllm:request_success"
CACHE_INFO = "vllm:cache_config_info"
HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "time_to_first_token": ("vllm:time_to_first_token_seconds",),
    # The older name was observed per output token too, so it is the same measure.
    "inter_token_latency": ("vllm:inter_token_latency_seconds",
                            "vllm:time_per_output_token_seconds"),
    "e2e_request_latency": ("vllm:e2e_request_latency_seconds",),
    "request_queue_time": ("vllm:request_queue_time_seconds",),
}

_WANTED: frozenset[str] = frozenset(
    [n for names in GAUGES.values() for n in names]
    + [n + s for names in COUNTERS.values() for n in names for s in ("_total", "_created")]
    + [FINISHED + "_total", FINISHED + "_created", CACHE_INFO]
    + [n + s for names in HISTOGRAMS.values() for n in names
       for s in ("", "_bucket", "_sum", "_count")]
)


KEEP = _WANTED
"""The families the parser should read at all; the rest are skipped unparsed."""


_bound_cache: dict[str, float] = {}


def _bound(le: str) -> float:
    b = _bound_cache.get(le)
    if b is None:
        b = float(le)
        if math.isnan(b):
            raise ValueError(f"le={le!r}")
        if len(_bound_cache) < 10_000:
            _bound_cache[le] = b
    return b


def _key(labels: Mapping[str, str]) -> EngineKey:
    return labels.get("model_name", ""), labels.get("engine", "0")


def _first(exp: Exposition, names: Iterable[str], suffix: str = "") -> list[Sample]:
    for name in names:
        samples = exp.get(name + suffix)
        if samples:
            return samples
    return []


class Normaliser:
    """Turns a parsed vLLM exposition into one reading per (model, rank), capped in number."""

    def __init__(self, max_engines: int) -> None:
        self.max_engines = max_engines
        self._memo: dict[int, tuple[Mapping[str, str], EngineKey, float | None]] = {}
        self._plans: dict[tuple[str, tuple[str, ...], tuple[int, ...]],
                          tuple[tuple[Mapping[str, str], ...], _Plan | None]] = {}

    def normalise(self, exp: Exposition) -> tuple[list[EngineReading], int]:
        """Readings found, and how many label sets were dropped by the cap."""
        readings: dict[EngineKey, EngineReading] = {}
        dropped: set[EngineKey] = set()

        def get(labels: Mapping[str, str]) -> EngineReading | None:
            if "model_name" not in labels:
                return None
            return get_key(_key(labels))

        def get_key(key: EngineKey) -> EngineReading | None:
            reading = readings.get(key)
            if reading is None:
                if len(readings) >= self.max_engines:
                    dropped.add(key)
                    return None
                reading = readings[key] = EngineReading(*key)
            return reading

        for ours, names in GAUGES.items():
            for _, labels, value, _ts in _first(exp, names):
                if (r := get(labels)) is not None and math.isfinite(value):
                    r.gauges[ours] = value
        for ours, names in COUNTERS.items():
            for _, labels, value, _ts in _first(exp, names, "_total"):
                if (r := get(labels)) is not None and math.isfinite(value):
                    r.counters[ours] = r.counters.get(ours, 0.0) + value
            for _, labels, value, _ts in _first(exp, names, "_created"):
                if (r := get(labels)) is not None:
                    r.created[ours] = value
        for _, labels, value, _ts in exp.get(FINISHED + "_total"):
            reason = labels.get("finished_reason", "unknown")
            if (r := get(labels)) is not None and math.isfinite(value):
                r.finished[reason] = r.finished.get(reason, 0.0) + value
        for ours, names in HISTOGRAMS.items():
            for name in names:
                if exp.get(name + "_bucket"):
                    self._histograms(exp, name, ours, get, get_key)
                    break
        # The cache info has no model label: it applies to every model of that engine core.
        for _, labels, _value, _ts in exp.get(CACHE_INFO):
            try:
                tokens = float(labels["num_gpu_blocks"]) * float(labels["block_size"])
            except (KeyError, ValueError):
                continue
            rank = labels.get("engine", "0")
            for r in readings.values():
                if r.dp_rank == rank and math.isfinite(tokens):
                    r.gauges["kv_cache_capacity_tokens"] = tokens
        return list(readings.values()), len(dropped)

    def _histograms(self, exp: Exposition, name: str, ours: str, get: _Get,
                    get_key: Callable[[EngineKey], EngineReading | None]) -> None:
        family = exp.by_family.get(name)
        if family is not None and family.type == "histogram" and family.samples:
            # The parser hands out the same label objects from poll to poll, so a family laid
            # out as before is read by the positions worked out the first time.
            sample_names, label_sets, values, _ = zip(*family.samples, strict=True)
            layout = (name, sample_names, tuple(map(id, label_sets)))
            cached = self._plans.get(layout)
            if cached is None:
                if len(self._plans) > 1000:
                    self._plans.clear()
                plan = _plan(name, sample_names, label_sets)
                cached = self._plans[layout] = (label_sets, plan)
            if cached[1] is not None:
                for engine, bounds, take, total in cached[1]:
                    reading = get_key(engine)
                    if reading is not None:
                        counts = take(values)
                        reading.histograms[ours] = HistogramReading(
                            bounds, counts, 0.0 if total is None else values[total], counts[-1])
                return
        samples = family.samples if family is not None and family.type == "histogram" else \
            exp.get(name + "_bucket") + exp.get(name + "_sum")
        bucket_name, sum_name = name + "_bucket", name + "_sum"
        memo = self._memo
        buckets: dict[EngineKey, dict[float, float]] = {}
        sums: dict[EngineKey, float] = {}
        for sample_name, labels, value, _ts in samples:
            if sample_name == bucket_name:
                # Label sets repeat from poll to poll (the parser hands out the same objects),
                # so what they mean is worked out once per object.
                seen = memo.get(id(labels))
                if seen is None or seen[0] is not labels:
                    seen = (labels, _key(labels), _bucket_bound(labels))
                    if len(memo) > 100_000:
                        memo.clear()
                    memo[id(labels)] = seen
                bound = seen[2]
                if bound is None:
                    continue
                per = buckets.get(seen[1])
                if per is None:
                    per = buckets[seen[1]] = {}
                per[bound] = per.get(bound, 0.0) + value
            elif sample_name == sum_name:
                k = _key(labels)
                sums[k] = sums.get(k, 0.0) + value
        for key, per in buckets.items():
            if math.inf not in per or len(per) < 2:
                continue
            reading = get({"model_name": key[0], "engine": key[1]})
            if reading is None:
                continue
            bounds = tuple(sorted(per))
            counts = tuple(per[b] for b in bounds)
            reading.histograms[ours] = HistogramReading(
                bounds, counts, sums.get(key, 0.0), counts[-1]
            )


_Plan = list[tuple[EngineKey, tuple[float, ...], Callable[[Sequence[float]], Any], int | None]]


def _plan(name: str, names: Sequence[str], labels: Sequence[Mapping[str, str]]) -> _Plan | None:
    """Where each engine's buckets and sum sit in a histogram family's samples.

    None when the layout is irregular (a bound twice for one engine: extra labels to sum).
    """
    bucket_name, sum_name = name + "_bucket", name + "_sum"
    positions: dict[EngineKey, dict[float, int]] = {}
    sums: dict[EngineKey, int] = {}
    for i, (sample_name, lab) in enumerate(zip(names, labels, strict=True)):
        if "model_name" not in lab:
            continue
        if sample_name == bucket_name:
            bound = _bucket_bound(lab)
            if bound is None:
                continue
            per = positions.setdefault(_key(lab), {})
            if bound in per:
                return None
            per[bound] = i
        elif sample_name == sum_name:
            if _key(lab) in sums:
                return None
            sums[_key(lab)] = i
    plan: _Plan = []
    for engine, per in positions.items():
        if math.inf not in per or len(per) < 2:
            continue
        bounds = tuple(sorted(per))
        plan.append((engine, bounds, operator.itemgetter(*(per[b] for b in bounds)),
                     sums.get(engine)))
    return plan


def _bucket_bound(labels: Mapping[str, str]) -> float | None:
    le = labels.get("le")
    if le is None:
        return None
    try:
        return _bound(le)
    except ValueError:
        return None
