"""Scenario model for the vLLM simulator: dataclasses plus a validating JSON loader."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, cast

from exporter.latency import LATENCIES

Naming = Literal["v1", "legacy"]
Clock = Literal["tick", "realtime"]

NAMINGS: tuple[Naming, ...] = ("v1", "legacy")
CLOCKS: tuple[Clock, ...] = ("tick", "realtime")
FINISHED_REASONS: tuple[str, ...] = ("stop", "length", "abort", "error")
LATENCY_HISTOGRAMS: tuple[str, ...] = tuple(row.key for row in LATENCIES)
RATE_FIELDS: tuple[str, ...] = (
    "prompt_tokens_per_s",
    "generation_tokens_per_s",
    "requests_per_s",
    "itl_observations_per_s",
    "preemptions_per_s",
)
GAUGE_FIELDS: tuple[str, ...] = ("waiting", "running", "swapped", "kv_cache_usage")
MAX_WEIGHT_TOTAL = 10**6
"""Upper bound on the integer-scaled sum of one distribution's weights."""

_PHASE_KEYS = frozenset(
    ("duration", "finished_reason", *RATE_FIELDS, *GAUGE_FIELDS, *LATENCY_HISTOGRAMS)
)
_TOP_KEYS = frozenset(("naming", "clock", "engines", "phases", "restarts", "description"))
_ENGINE_KEYS = frozenset(("model", "dp_rank"))

Weighted = tuple[tuple[Fraction, Fraction], ...]
"""(observed value, relative weight) pairs, sorted by value."""


@dataclass(frozen=True)
class Engine:
    """One engine core: served model name and data-parallel rank (the `engine` label)."""

    model: str
    dp_rank: str


@dataclass(frozen=True)
class Phase:
    """A stretch of constant rates, gauges and latency distributions (rates are per engine)."""

    duration: Fraction
    prompt_tokens_per_s: Fraction = Fraction(0)
    generation_tokens_per_s: Fraction = Fraction(0)
    requests_per_s: Fraction = Fraction(0)
    itl_observations_per_s: Fraction = Fraction(0)
    preemptions_per_s: Fraction = Fraction(0)
    waiting: float = 0.0
    running: float = 0.0
    swapped: float = 0.0
    kv_cache_usage: float = 0.0
    ttft: Weighted = ()
    itl: Weighted = ()
    e2e: Weighted = ()
    queue: Weighted = ()
    finished_reason: tuple[tuple[str, Fraction], ...] = (("stop", Fraction(1)),)

    def rate(self, field: str) -> Fraction:
        """Return the rate named by one of RATE_FIELDS."""
        if field not in RATE_FIELDS:
            raise KeyError(field)
        return cast(Fraction, getattr(self, field))

    def distribution(self, name: str) -> Weighted:
        """Return the latency distribution named by one of LATENCY_HISTOGRAMS."""
        if name not in LATENCY_HISTOGRAMS:
            raise KeyError(name)
        return cast(Weighted, getattr(self, name))


@dataclass(frozen=True)
class Scenario:
    """A complete simulator scenario."""

    naming: Naming
    clock: Clock
    engines: tuple[Engine, ...]
    phases: tuple[Phase, ...]
    restarts: tuple[Fraction, ...] = ()
    description: str = ""

    @property
    def total_duration(self) -> Fraction:
        """Ticks or seconds until the state freezes."""
        return sum((p.duration for p in self.phases), Fraction(0))

    def phase_bounds(self) -> list[tuple[Fraction, Fraction]]:
        """(start, end) of each phase, in ticks or seconds."""
        bounds: list[tuple[Fraction, Fraction]] = []
        start = Fraction(0)
        for phase in self.phases:
            bounds.append((start, start + phase.duration))
            start += phase.duration
        return bounds


def scale_weights(weights: list[Fraction] | tuple[Fraction, ...]) -> tuple[int, ...]:
    """Smallest integers proportional to the given positive weights."""
    scale = math.lcm(*(w.denominator for w in weights))
    ints = [int(w * scale) for w in weights]
    divisor = math.gcd(*ints)
    return tuple(i // divisor for i in ints)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    try:
        return parse_scenario(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def parse_scenario(data: object) -> Scenario:
    """Validate decoded JSON and build a Scenario; raise ValueError naming the problem."""
    top = _mapping(data, "scenario")
    _no_unknown(top, _TOP_KEYS, "scenario")
    naming = top.get("naming", "v1")
    if naming not in NAMINGS:
        raise ValueError(f"naming: must be one of {list(NAMINGS)}, got {naming!r}")
    clock = top.get("clock", "tick")
    if clock not in CLOCKS:
        raise ValueError(f"clock: must be one of {list(CLOCKS)}, got {clock!r}")
    description = top.get("description", "")
    if not isinstance(description, str):
        raise ValueError("description: must be a string")

    engines = tuple(_engine(e, f"engines[{i}]") for i, e in enumerate(_list(top, "engines")))
    if not engines:
        raise ValueError("engines: at least one engine is required")
    keys = [(e.model, e.dp_rank if naming == "v1" else "") for e in engines]
    if len(set(keys)) != len(keys):
        what = "(model, dp_rank)" if naming == "v1" else "model (legacy naming has no engine label)"
        raise ValueError(f"engines: duplicate {what}")

    phases = tuple(_phase(p, f"phases[{i}]") for i, p in enumerate(_list(top, "phases")))
    if not phases:
        raise ValueError("phases: at least one phase is required")

    raw_restarts = top.get("restarts", [])
    if not isinstance(raw_restarts, list):
        raise ValueError("restarts: must be a list of numbers")
    restarts = tuple(
        sorted(_number(r, f"restarts[{i}]", minimum=0) for i, r in enumerate(raw_restarts))
    )
    return Scenario(
        naming=cast(Naming, naming),
        clock=cast(Clock, clock),
        engines=engines,
        phases=phases,
        restarts=restarts,
        description=description,
    )


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: must be a JSON object, got {type(value).__name__}")
    return cast(dict[str, Any], value)


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    if key not in obj:
        raise ValueError(f"{key}: missing")
    value = obj[key]
    if not isinstance(value, list):
        raise ValueError(f"{key}: must be a list")
    return value


def _no_unknown(obj: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _number(value: object, where: str, *, minimum: float | None = None) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: must be finite, got {value!r}")
    number = Fraction(value) if isinstance(value, int) else Fraction(repr(value))
    if minimum is not None and number < minimum:
        raise ValueError(f"{where}: must be >= {minimum}, got {value!r}")
    return number


def _engine(value: object, where: str) -> Engine:
    obj = _mapping(value, where)
    _no_unknown(obj, _ENGINE_KEYS, where)
    model = obj.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError(f"{where}.model: must be a non-empty string")
    dp_rank = obj.get("dp_rank", "0")
    if not isinstance(dp_rank, str) or not dp_rank.isdigit():
        raise ValueError(
            f'{where}.dp_rank: must be a string of digits such as "0", got {dp_rank!r}'
        )
    return Engine(model=model, dp_rank=dp_rank)


def _weights(value: object, where: str) -> list[tuple[str, Fraction]]:
    obj = _mapping(value, where)
    if not obj:
        raise ValueError(f"{where}: needs at least one value")
    pairs = [(k, _number(w, f"{where}[{k!r}]")) for k, w in obj.items()]
    for key, weight in pairs:
        if weight <= 0:
            raise ValueError(f"{where}[{key!r}]: weight must be > 0")
    total = sum(scale_weights([w for _, w in pairs]))
    if total > MAX_WEIGHT_TOTAL:
        raise ValueError(
            f"{where}: weights too fine-grained (integer total {total} > {MAX_WEIGHT_TOTAL})"
        )
    return pairs


def _latency(value: object, where: str) -> Weighted:
    result: list[tuple[Fraction, Fraction]] = []
    for key, weight in _weights(value, where):
        try:
            latency = Fraction(key.strip())
        except ValueError:
            raise ValueError(f"{where}: key {key!r} is not a number of seconds") from None
        if latency < 0:
            raise ValueError(f"{where}: key {key!r} must be >= 0")
        result.append((latency, weight))
    values = [v for v, _ in result]
    if len(set(values)) != len(values):
        raise ValueError(f"{where}: two keys name the same value")
    return tuple(sorted(result))


def _phase(value: object, where: str) -> Phase:
    obj = _mapping(value, where)
    _no_unknown(obj, _PHASE_KEYS, where)
    if "duration" not in obj:
        raise ValueError(f"{where}.duration: missing")
    duration = _number(obj["duration"], f"{where}.duration")
    if duration <= 0:
        raise ValueError(f"{where}.duration: must be > 0")
    kwargs: dict[str, Any] = {"duration": duration}
    for field in RATE_FIELDS:
        if field in obj:
            kwargs[field] = _number(obj[field], f"{where}.{field}", minimum=0)
    for field in GAUGE_FIELDS:
        if field in obj:
            kwargs[field] = float(_number(obj[field], f"{where}.{field}", minimum=0))
    if kwargs.get("kv_cache_usage", 0.0) > 1:
        raise ValueError(f"{where}.kv_cache_usage: must be a fraction in [0, 1]")
    for name in LATENCY_HISTOGRAMS:
        if name in obj:
            kwargs[name] = _latency(obj[name], f"{where}.{name}")
    if "finished_reason" in obj:
        reasons = _weights(obj["finished_reason"], f"{where}.finished_reason")
        for reason, _ in reasons:
            if reason not in FINISHED_REASONS:
                raise ValueError(
                    f"{where}.finished_reason: unknown reason {reason!r}; "
                    f"allowed: {list(FINISHED_REASONS)}"
                )
        kwargs["finished_reason"] = tuple(reasons)
    phase = Phase(**kwargs)
    needs = {"ttft": "requests_per_s", "e2e": "requests_per_s", "queue": "requests_per_s"}
    needs["itl"] = "itl_observations_per_s"
    for name, rate in needs.items():
        if phase.rate(rate) > 0 and not phase.distribution(name):
            raise ValueError(f"{where}.{name}: required when {rate} > 0")
    return phase
