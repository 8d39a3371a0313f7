"""Knob values checked and normalised: durations, numbers, ratios, codes, names, selectors."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from .knobs import Knob, KnobError, knobs

_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")
_MATCHER = r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\\n]|\\.)*"\s*'
_SELECTOR = re.compile(rf"^{_MATCHER}(?:,{_MATCHER})*$")
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
             "w": 604_800_000, "y": 31_536_000_000}


def milliseconds(duration: str) -> int:
    return sum(int(n) * _UNITS_MS[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)",
                                                              duration))


def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise KnobError("a number is expected") from None
    if not math.isfinite(number) or number < 0:
        raise KnobError("a finite number, 0 or more, is expected")
    return number


def _check(knob: Knob, value: str) -> str:
    """The value, normalised; KnobError when the knob does not accept it."""
    value = value.strip()
    kind = knob.kind
    if kind in ("duration", "range", "optional_duration"):
        if kind == "optional_duration" and value == "":
            return value
        if not _DURATION.match(value):
            raise KnobError("a Prometheus duration such as 30s, 5m or 1h30m is expected")
        if kind != "duration" and milliseconds(value) == 0:
            raise KnobError("a duration above zero is expected")
    elif kind == "number":
        return num(_number(value))
    elif kind == "optional_number":
        if value == "":
            return value
        if _number(value) == 0:
            raise KnobError("a number above 0, or empty for none, is expected")
        return num(_number(value))
    elif kind == "ratio":
        number = _number(value)
        if number > 1:
            raise KnobError("a ratio between 0 and 1 is expected")
        return num(number)
    elif kind == "objective":
        number = _number(value)
        if not 0 < number < 1:
            raise KnobError("a share between 0 and 1, both excluded, is expected (0.99)")
        return num(number)
    elif kind == "codes":
        codes = [c.strip() for c in value.split(",")]
        if not all(re.fullmatch(r"[0-9]+", c) for c in codes):
            raise KnobError("comma-separated XID codes (integers) are expected")
        return ",".join(str(c) for c in sorted({int(c) for c in codes}))
    elif kind == "names":
        names = [n.strip() for n in value.split(",")]
        if not all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names):
            raise KnobError("comma-separated label values (lower case, digits, _) are expected")
        return ",".join(names)
    elif kind == "labels":
        labels = [n.strip() for n in value.split(",") if n.strip()]
        if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n) for n in labels) \
                or set(labels) & {"job", "instance", "model", "le"}:
            raise KnobError("comma-separated label names (not job, instance, model or le)"
                            " are expected")
        return ",".join(dict.fromkeys(labels))
    elif kind == "selector":
        if not _SELECTOR.match(value):
            raise KnobError('label matchers such as job="inference-node" or'
                            ' job=~"gpu-.*", cluster="eu" are expected')
        return ", ".join(m.strip() for m in re.findall(_MATCHER, value))
    elif kind == "url":
        if not re.fullmatch(r"https?://[^\s#\"]+", value):
            raise KnobError("an http(s) URL without a #fragment is expected")
        return value
    return value


def num(number: float) -> str:
    """A number as PromQL and people write it: 2, 0.2, 1e-06."""
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)


def settings(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every knob's value: its default unless overridden. KnobError names a bad one."""
    table = knobs()
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(table))
    if unknown:
        raise KnobError(f"unknown knob {', '.join(unknown)} (see --list-knobs)")
    out: dict[str, str] = {}
    for name, knob in table.items():
        value = overrides.get(name, knob.default)
        try:
            out[name] = _check(knob, value)
        except KnobError as e:
            raise KnobError(f"knob {name}={value!r}: {e}") from None
    return out

