"""vLLM's metric names, current and older, mapped onto the stable schema."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence

from exporter.engines.reading import EngineKey, EngineReading, HistogramReading
from exporter.expfmt import Exposition, Layout, Sample

__all__ = ["COUNTERS", "GAUGES", "HISTOGRAMS", "KEEP", "Normaliser"]


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


_VALUE = operator.itemgetter(2)
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
        self._plans: dict[tuple[str, tuple[str, ...], tuple[int, ...]],
                          tuple[tuple[Mapping[str, str], ...], _Plan]] = {}
        self._layouts: dict[str, tuple[Layout, _Plan]] = {}
        """Per histogram, the plan for the parser's layout of its lines last time."""

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
                if self._histograms(exp, name, ours, get_key):
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

    def _histograms(self, exp: Exposition, name: str, ours: str,
                    get_key: Callable[[EngineKey], EngineReading | None]) -> bool:
        """Read histogram ``name`` into the readings; False when the exposition lacks it."""
        family = exp.by_family.get(name)
        layout = None
        if family is not None and family.type == "histogram":
            samples, layout = family.samples, family.layout
        else:
            samples = exp.get(name + "_bucket") + exp.get(name + "_sum")
        if not samples:
            return False
        known = self._layouts.get(name)
        values: Sequence[float]
        if layout is not None and known is not None and known[0] is layout:
            # The same lines as last time (see expfmt.Layout): only the values are new.
            plan = known[1]
            values = list(map(_VALUE, samples))
        else:
            # The parser hands out the same label objects from poll to poll, so a family
            # laid out as before is read by the positions worked out the first time.
            sample_names, label_sets, values, _ = zip(*samples, strict=True)
            key = (name, sample_names, tuple(map(id, label_sets)))
            cached = self._plans.get(key)
            if cached is None:
                if len(self._plans) > 1000:
                    self._plans.clear()
                cached = self._plans[key] = (label_sets, _plan(name, sample_names, label_sets))
            plan = cached[1]
            if layout is not None:
                self._layouts[name] = (layout, plan)
        for engine, bounds, take, totals in plan:
            reading = get_key(engine)
            if reading is not None:
                counts = take(values)
                reading.histograms[ours] = HistogramReading(
                    bounds, counts, sum(values[i] for i in totals), counts[-1])
        return True


_Plan = list[tuple[EngineKey, tuple[float, ...], Callable[[Sequence[float]], tuple[float, ...]],
                   list[int]]]


def _plan(name: str, names: Sequence[str], labels: Sequence[Mapping[str, str]]) -> _Plan:
    """Where each engine's buckets and sum sit in a histogram family's samples.

    A bound seen more than once for an engine (extra labels beside model and rank) is summed.
    """
    bucket_name, sum_name = name + "_bucket", name + "_sum"
    positions: dict[EngineKey, dict[float, list[int]]] = {}
    sums: dict[EngineKey, list[int]] = {}
    for i, (sample_name, lab) in enumerate(zip(names, labels, strict=True)):
        if "model_name" not in lab:
            continue
        if sample_name == bucket_name:
            bound = _bucket_bound(lab)
            if bound is not None:
                positions.setdefault(_key(lab), {}).setdefault(bound, []).append(i)
        elif sample_name == sum_name:
            sums.setdefault(_key(lab), []).append(i)
    plan: _Plan = []
    for engine, per in positions.items():
        if math.inf not in per or len(per) < 2:
            continue
        bounds = tuple(sorted(per))
        where = [per[b] for b in bounds]
        take: Callable[[Sequence[float]], tuple[float, ...]]
        if all(len(w) == 1 for w in where):
            take = operator.itemgetter(*(w[0] for w in where))
        else:
            def take(values: Sequence[float], where: list[list[int]] = where
                     ) -> tuple[float, ...]:
                return tuple(sum(values[i] for i in w) for w in where)
        plan.append((engine, bounds, take, sums.get(engine, [])))
    return plan


def _bucket_bound(labels: Mapping[str, str]) -> float | None:
    le = labels.get("le")
    if le is None:
        return None
    try:
        return _bound(le)
    except ValueError:
        return None
