"""What every settings reader shares: the error it raises, durations, values in messages.

A leaf module: the daemon's configuration (:mod:`exporter.config`) and the web configuration
(:mod:`exporter.webconfig`) both build on it and on nothing of each other.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["MAX_DURATION", "ConfigError", "as_list", "format_duration", "parse_duration", "show"]

MAX_DURATION = 365 * 86400.0
_DURATION_RE = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,12})?)(ms|s|m|h)")


class ConfigError(ValueError):
    """The configuration is invalid; the message (always one line) says what and where."""

    def __init__(self, message: str) -> None:
        super().__init__("".join(c if c.isprintable() else ascii(c)[1:-1] for c in message))


def show(value: object, limit: int = 80) -> str:
    """``repr(value)`` for a message: never raises, never longer than ``limit``."""
    try:
        text = repr(value)
    except Exception:  # a huge int (str conversion limit), a deep nesting...
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_duration(value: object, what: str, most: float = MAX_DURATION) -> float:
    """Seconds from ``"500ms"``, ``"5s"``, ``"1m30s"``, ``"1h"`` or a plain number, from 1ms
    to ``most`` (365 days unless told); else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{what}: expected a duration such as '5s', got {show(value)}")
    try:
        seconds = float(value.strip() if isinstance(value, str) else value)
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    except ValueError:
        assert isinstance(value, str)
        text, pos, seconds = value.strip(), 0, 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            n = float(m.group(1))
            seconds += n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise ConfigError(
                f"{what}: invalid duration {show(value)} (use e.g. '500ms', '5s', '1m30s')"
            ) from None
    if math.isnan(seconds) or seconds <= 0:
        raise ConfigError(f"{what}: must be a positive duration, got {show(value)}")
    if seconds < 0.001:
        raise ConfigError(f"{what}: must be at least 1ms, got {show(value)}")
    if seconds > most:
        raise ConfigError(f"{what}: must be at most {format_duration(most)}"
                          f"{' (365 days)' if most == MAX_DURATION else ''}, got {show(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest Prometheus-style spelling: 60 -> '1m', 90 -> '1m30s', 0.5 -> '500ms'."""
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    out = ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            out += f"{s // size}{unit}"
            s %= size
    return out or "0s"


def as_list(value: object, what: str) -> list[Any]:
    """A list setting: a TOML array, or a comma-separated string (environment, flags)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    raise ConfigError(f"{what}: expected a list, got {show(value)}")
