"""Pure functions giving the exact totals a scenario implies at a tick or an elapsed time.

Counters are the exact integral of the phase rates. Histogram observations (and finished
requests) number floor(integral); observation i belongs to the phase in which the integral
reaches i and is given a value by a house-monotone, quota-respecting apportionment of the
phase's observations over its weights, so cumulative bucket counts never decrease and each
value gets exactly weight/total of the observations whenever that product is whole.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from .scenario import (
    FINISHED_REASONS,
    MAX_WEIGHT_TOTAL,
    Naming,
    Phase,
    Scenario,
    Weighted,
    scale_weights,
)

INF = math.inf

# fmt: off
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
               2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                           40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
PROMPT_TOKEN_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
ITERATION_TOKEN_BUCKETS = (1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
                           4096.0, 8192.0, 16384.0)
# fmt: on


@dataclass(frozen=True)
class HistogramSpec:
    """A simulated histogram: names per naming, buckets, and the rate driving its count."""

    key: str
    v1_name: str
    legacy_name: str
    buckets: tuple[float, ...]
    driver: str
    documentation: str

    def name(self, naming: Naming) -> str:
        """Family name under the given naming generation."""
        return self.v1_name if naming == "v1" else self.legacy_name

    def distribution(self, phase: Phase) -> Weighted:
        """(value, weight) pairs observed during a phase."""
        if self.key == "request_prompt_tokens":
            return ((_mean_value(phase.prompt_tokens_per_s, phase.requests_per_s), Fraction(1)),)
        if self.key == "iteration_tokens":
            tokens = phase.prompt_tokens_per_s + phase.generation_tokens_per_s
            return ((_mean_value(tokens, phase.itl_observations_per_s), Fraction(1)),)
        return phase.distribution(self.key)


HISTOGRAMS: tuple[HistogramSpec, ...] = (
    HistogramSpec(
        "request_prompt_tokens",
        "vllm:request_prompt_tokens",
        "vllm:request_prompt_tokens",
        PROMPT_TOKEN_BUCKETS,
        "requests_per_s",
        "Number of prefill tokens processed.",
    ),
    HistogramSpec(
        "iteration_tokens",
        "vllm:iteration_tokens_total",
        "vllm:iteration_tokens_total",
        ITERATION_TOKEN_BUCKETS,
        "itl_observations_per_s",
        "Histogram of number of tokens per engine_step.",
    ),
    HistogramSpec(
        "ttft",
        "vllm:time_to_first_token_seconds",
        "vllm:time_to_first_token_seconds",
        TTFT_BUCKETS,
        "requests_per_s",
        "Histogram of time to first token in seconds.",
    ),
    HistogramSpec(
        "itl",
        "vllm:inter_token_latency_seconds",
        "vllm:time_per_output_token_seconds",
        ITL_BUCKETS,
        "itl_observations_per_s",
        "Histogram of inter-token latency in seconds.",
    ),
    HistogramSpec(
        "e2e",
        "vllm:e2e_request_latency_seconds",
        "vllm:e2e_request_latency_seconds",
        REQUEST_LATENCY_BUCKETS,
        "requests_per_s",
        "Histogram of e2e request latency in seconds.",
    ),
    HistogramSpec(
        "queue",
        "vllm:request_queue_time_seconds",
        "vllm:request_queue_time_seconds",
        REQUEST_LATENCY_BUCKETS,
        "requests_per_s",
        "Histogram of time spent in WAITING phase for request.",
    ),
)
HISTOGRAM_BY_KEY: dict[str, HistogramSpec] = {h.key: h for h in HISTOGRAMS}


def format_le(bound: float) -> str:
    """Bucket bound as prometheus_client writes it in `le` ("0.5", "10.0", "+Inf")."""
    return "+Inf" if bound == INF else repr(float(bound))


def _mean_value(numerator: Fraction, denominator: Fraction) -> Fraction:
    if denominator <= 0:
        return Fraction(1)
    return Fraction(max(1, round(numerator / denominator)))


@dataclass(frozen=True)
class HistogramTotals:
    """Cumulative state of one histogram series."""

    values: tuple[tuple[float, int], ...]
    """Observation count per observed value, ascending by value."""
    buckets: tuple[tuple[float, int], ...]
    """(upper bound, cumulative count), ending with (inf, count)."""
    count: int
    sum: float

    def bucket(self, le: float) -> int:
        """Cumulative count of the bucket with upper bound `le`."""
        for bound, count in self.buckets:
            if bound == le:
                return count
        raise KeyError(le)

    def minus(self, earlier: HistogramTotals) -> HistogramTotals:
        """Increase since `earlier` (same series, no restart in between)."""
        before = dict(earlier.values)
        values = tuple((v, c - before.get(v, 0)) for v, c in self.values if c != before.get(v))
        buckets = tuple(
            (b, c - e) for (b, c), (_, e) in zip(self.buckets, earlier.buckets, strict=True)
        )
        return HistogramTotals(values, buckets, self.count - earlier.count, self.sum - earlier.sum)


@dataclass(frozen=True)
class Totals:
    """Cumulative counters and histograms of one engine (all engines of a scenario are equal)."""

    prompt_tokens: float
    generation_tokens: float
    preemptions: float
    requests: int
    finished_reason: Mapping[str, int]
    histograms: Mapping[str, HistogramTotals]

    def minus(self, earlier: Totals) -> Totals:
        """Increase since `earlier` (no restart in between)."""
        return Totals(
            prompt_tokens=self.prompt_tokens - earlier.prompt_tokens,
            generation_tokens=self.generation_tokens - earlier.generation_tokens,
            preemptions=self.preemptions - earlier.preemptions,
            requests=self.requests - earlier.requests,
            finished_reason={
                r: n - earlier.finished_reason[r] for r, n in self.finished_reason.items()
            },
            histograms={k: h.minus(earlier.histograms[k]) for k, h in self.histograms.items()},
        )


@dataclass(frozen=True)
class Gauges:
    """Gauge values of one engine."""

    phase: int
    running: float
    waiting: float
    swapped: float
    kv_cache_usage: float


# --- apportionment -----------------------------------------------------------------------

_STRIDE = 256


class _Sequence:
    """Earliest-deadline-first seat sequence for integer weights; periodic in sum(weights)."""

    def __init__(self, weights: tuple[int, ...]) -> None:
        self.weights = weights
        self.total = sum(weights)
        self._choices = array("I")
        self._counts = [0] * len(weights)
        self._checkpoints: list[tuple[int, ...]] = [tuple(self._counts)]
        self._lock = threading.Lock()

    def _extend(self, length: int) -> None:
        w, total, counts = self.weights, self.total, self._counts
        while len(self._choices) < length:
            i = len(self._choices) + 1
            best = -1
            for v, wv in enumerate(w):
                # Eligible while the value is below its upper quota; earliest deadline wins.
                if i * wv > counts[v] * total and (
                    best < 0 or (counts[v] + 1) * w[best] < (counts[best] + 1) * wv
                ):
                    best = v
            counts[best] += 1
            self._choices.append(best)
            if len(self._choices) % _STRIDE == 0:
                self._checkpoints.append(tuple(counts))

    def counts(self, n: int) -> tuple[int, ...]:
        cycles, rest = divmod(n, self.total)
        with self._lock:
            self._extend(rest)
        base = rest // _STRIDE
        counts = list(self._checkpoints[base])
        for choice in self._choices[base * _STRIDE : rest]:
            counts[choice] += 1
        return tuple(cycles * w + c for w, c in zip(self.weights, counts, strict=True))


_sequences: dict[tuple[int, ...], _Sequence] = {}
_sequences_lock = threading.Lock()


def apportion(weights: Sequence[Fraction | int], n: int) -> tuple[int, ...]:
    """Split n observations over positive weights.

    Each share stays within one of n*w/sum(w) (exact when that is whole) and never
    decreases as n grows, so cumulative counts stay monotone.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    fractions = [Fraction(w) for w in weights]
    if not fractions or any(w <= 0 for w in fractions):
        raise ValueError("weights must be a non-empty list of positive numbers")
    scaled = scale_weights(fractions)
    if sum(scaled) > MAX_WEIGHT_TOTAL:
        raise ValueError(f"weights too fine-grained (integer total > {MAX_WEIGHT_TOTAL})")
    with _sequences_lock:
        seq = _sequences.get(scaled)
        if seq is None:
            seq = _sequences[scaled] = _Sequence(scaled)
    return seq.counts(n)


# --- totals ------------------------------------------------------------------------------


def integral(scenario: Scenario, field: str, position: Fraction | int) -> Fraction:
    """Exact integral of a per-engine rate from 0 to `position` (ticks or seconds)."""
    x = Fraction(position)
    total = Fraction(0)
    for phase, (start, end) in zip(scenario.phases, scenario.phase_bounds(), strict=True):
        if x <= start:
            break
        total += phase.rate(field) * (min(x, end) - start)
    return total


def _phase_observations(scenario: Scenario, field: str, position: Fraction) -> list[int]:
    """Observations per phase up to `position`, before any restart."""
    result: list[int] = []
    for start, end in scenario.phase_bounds():
        if position <= start:
            result.append(0)
            continue
        upto = math.floor(integral(scenario, field, min(position, end)))
        result.append(upto - math.floor(integral(scenario, field, start)))
    return result


@dataclass(frozen=True)
class _Raw:
    prompt: Fraction
    generation: Fraction
    preemptions: Fraction
    requests: int
    reasons: dict[str, int]
    values: dict[str, dict[Fraction, int]]


def _raw(scenario: Scenario, x: Fraction) -> _Raw:
    reasons = dict.fromkeys(FINISHED_REASONS, 0)
    requests = _phase_observations(scenario, "requests_per_s", x)
    for phase, n in zip(scenario.phases, requests, strict=True):
        names = [r for r, _ in phase.finished_reason]
        for reason, c in zip(
            names, apportion([w for _, w in phase.finished_reason], n), strict=True
        ):
            reasons[reason] += c
    values: dict[str, dict[Fraction, int]] = {}
    for spec in HISTOGRAMS:
        per_value: dict[Fraction, int] = {}
        counts = _phase_observations(scenario, spec.driver, x)
        for phase, n in zip(scenario.phases, counts, strict=True):
            if n == 0:
                continue
            dist = spec.distribution(phase)
            for (value, _), c in zip(dist, apportion([w for _, w in dist], n), strict=True):
                per_value[value] = per_value.get(value, 0) + c
        values[spec.key] = per_value
    return _Raw(
        prompt=integral(scenario, "prompt_tokens_per_s", x),
        generation=integral(scenario, "generation_tokens_per_s", x),
        preemptions=integral(scenario, "preemptions_per_s", x),
        requests=sum(requests),
        reasons=reasons,
        values=values,
    )


def _histogram(spec: HistogramSpec, per_value: dict[Fraction, int]) -> HistogramTotals:
    values = sorted((v, c) for v, c in per_value.items() if c)
    buckets: list[tuple[float, int]] = []
    for bound in (*spec.buckets, INF):
        limit = Fraction(repr(bound)) if bound != INF else None
        buckets.append((bound, sum(c for v, c in values if limit is None or v <= limit)))
    return HistogramTotals(
        values=tuple((float(v), c) for v, c in values),
        buckets=tuple(buckets),
        count=sum(c for _, c in values),
        sum=float(sum((v * c for v, c in values), Fraction(0))),
    )


def last_restart(
    restarts: Sequence[Fraction | int | float], position: Fraction | int
) -> Fraction | None:
    """The latest restart at or before `position`, if any."""
    x = Fraction(position)
    past = [Fraction(r) for r in restarts if Fraction(r) <= x]
    return max(past) if past else None


def totals_at(
    scenario: Scenario,
    position: Fraction | int,
    restarts: Sequence[Fraction | int | float] | None = None,
) -> Totals:
    """Totals at `position` (ticks or seconds), counting from the latest restart before it."""
    x = Fraction(position)
    if x < 0:
        raise ValueError("position must be >= 0")
    now = _raw(scenario, x)
    restart = last_restart(scenario.restarts if restarts is None else restarts, x)
    base = _raw(scenario, restart) if restart is not None else None

    def since(key: str, per_value: dict[Fraction, int]) -> dict[Fraction, int]:
        if base is None:
            return per_value
        old = base.values[key]
        return {v: c - old.get(v, 0) for v, c in per_value.items()}

    return Totals(
        prompt_tokens=float(now.prompt - (base.prompt if base else 0)),
        generation_tokens=float(now.generation - (base.generation if base else 0)),
        preemptions=float(now.preemptions - (base.preemptions if base else 0)),
        requests=now.requests - (base.requests if base else 0),
        finished_reason={r: n - (base.reasons[r] if base else 0) for r, n in now.reasons.items()},
        histograms={s.key: _histogram(s, since(s.key, now.values[s.key])) for s in HISTOGRAMS},
    )


def totals_after_tick(
    scenario: Scenario, tick: int, restarts: Sequence[Fraction | int | float] | None = None
) -> Totals:
    """Totals the tick-clock simulator serves on its `tick`-th GET /metrics."""
    if tick < 0:
        raise ValueError("tick must be >= 0")
    return totals_at(scenario, tick, restarts)


def totals_at_elapsed(
    scenario: Scenario, elapsed: float, restarts: Sequence[Fraction | int | float] | None = None
) -> Totals:
    """Totals the realtime simulator serves `elapsed` seconds after it started."""
    return totals_at(scenario, Fraction(elapsed), restarts)


def phase_index(scenario: Scenario, position: Fraction | int | float) -> int:
    """Index of the phase in effect at `position`; the last phase once the scenario ends."""
    x = Fraction(position)
    for i, (_, end) in enumerate(scenario.phase_bounds()):
        if x <= end:
            return i
    return len(scenario.phases) - 1


def gauges_at(scenario: Scenario, position: Fraction | int | float) -> Gauges:
    """Gauge values at `position`."""
    i = phase_index(scenario, position)
    p = scenario.phases[i]
    return Gauges(
        phase=i,
        running=p.running,
        waiting=p.waiting,
        swapped=p.swapped,
        kv_cache_usage=p.kv_cache_usage,
    )


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus-style quantile of cumulative (upper bound, count) buckets ending with +Inf."""
    if not buckets or buckets[-1][0] != INF:
        raise ValueError("buckets must end with +Inf")
    total = buckets[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for i, (bound, count) in enumerate(buckets):
        if count >= rank:
            if bound == INF:
                return buckets[-2][0] if i > 0 else math.nan
            if i == 0 and bound <= 0:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return math.nan
