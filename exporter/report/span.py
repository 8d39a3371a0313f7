"""The report's range (``--since 7d``, or ``--start`` and ``--end``) and its step, chosen
from the range so that no query returns more than :data:`MAX_POINTS` points a series."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from exporter.report.promapi import ReportError
from exporter.settings import format_duration

__all__ = ["MAX_POINTS", "Span", "parse_since", "parse_time", "span"]

MAX_POINTS = 1000
"""Most points a range query returns per series (Prometheus allows 11,000)."""
STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
"""Steps a range is cut into: whole minutes and hours, so that points line up with hours."""
MAX_RANGE = 400 * 86400.0
_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_SINCE = re.compile(r"(?:[0-9]{1,6}[wdhms])+")


@dataclass(frozen=True, slots=True)
class Span:
    """A range and the step its range queries use."""

    start: float
    end: float
    step: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def promql(self) -> str:
        """The range as a PromQL duration (``[168h]``'s inside)."""
        return format_duration(self.seconds)

    @property
    def window(self) -> str:
        """The rate window of a range query's points: one step, at least 5 minutes."""
        return format_duration(max(self.step, 300.0))


def parse_since(text: str) -> float:
    """Seconds from ``7d``, ``36h``, ``1w2d``..."""
    value = text.strip().lower()
    if not _SINCE.fullmatch(value):
        raise ReportError(f"--since {text!r}: expected a duration such as 7d, 36h or 1w")
    return float(sum(int(n) * _UNITS[u] for n, u in re.findall(r"([0-9]+)([wdhms])", value)))


def parse_time(text: str, what: str) -> float:
    """Unix seconds from a number or an RFC 3339 time (``2026-11-23T00:00:00Z``)."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"{what} {text!r}: expected unix seconds or an RFC 3339 time such"
                          " as 2026-11-23T00:00:00Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def span(since: str | None, start: str | None, end: str | None,
         now: float | None = None) -> Span:
    """The range the options name; its step keeps each series under :data:`MAX_POINTS`."""
    if since is not None and start is not None:
        raise ReportError("give --since or --start, not both")
    stop = parse_time(end, "--end") if end is not None else (
        time.time() if now is None else now)
    begin = parse_time(start, "--start") if start is not None else \
        stop - parse_since(since or "7d")
    length = stop - begin
    if length < 600:
        raise ReportError("the range must span at least 10 minutes")
    if length > MAX_RANGE:
        raise ReportError(f"the range spans {length / 86400:.0f} days; at most 400")
    step = next((s for s in STEPS if length / s <= MAX_POINTS), STEPS[-1])
    # Whole steps from a whole step: the points fall on the same instants in every query.
    stop = math.floor(stop / step) * step
    begin = stop - math.ceil(length / step) * step
    return Span(begin, stop, float(step))
