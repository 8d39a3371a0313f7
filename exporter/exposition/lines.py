"""The exposition's line builder: sample lines rendered once per poll, joined per scrape."""

from __future__ import annotations

import math
from collections.abc import Sequence

from exporter.bounded import BoundedDict, Budget, strsize

__all__ = ["Families", "escape", "fmt", "fmt_all", "labelstr"]


def escape(value: str) -> str:
    """A label value escaped for the text exposition format."""
    if "\\" in value or "\n" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def labelstr(**labels: str) -> str:
    """``k="v",...`` with values escaped, in the order given."""
    return ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())


def fmt(value: float) -> str:
    """A sample value as Prometheus writes it."""
    if value - value == 0:  # finite
        return repr(value)
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def fmt_all(values: Sequence[float]) -> list[str]:
    """:func:`fmt` of each value; one ``repr`` each when all are finite (the usual case)."""
    total = sum(values)
    if total - total == 0:  # no infinity and no NaN among them
        return list(map(repr, values))
    return list(map(fmt, values))


class Families:
    """Rendered sample lines by family name (names from :mod:`exporter.schema`).

    Sources render their lines when they poll, so that a scrape only joins strings. An item
    may hold several lines (a whole histogram), joined by newlines like the items are.
    """

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = {}

    def add(self, name: str, labels: str, value: float) -> None:
        """One gauge or counter sample; ``labels`` as made by :func:`labelstr`."""
        v = repr(value) if value - value == 0 else fmt(value)
        self.lines.setdefault(name, []).append(
            f"{name}{{{labels}}} {v}" if labels else f"{name} {v}")

    def histogram(self, name: str, labels: str, bounds: Sequence[float],
                  counts: Sequence[float], total: float) -> None:
        """A cumulative histogram: upper bounds (last +Inf), cumulative counts and sum."""
        key = (name, labels, tuple(bounds))
        template = _templates.get(key)
        if template is None:
            sep = "," if labels else ""
            lines = [f'{name}_bucket{{{labels}{sep}le="{fmt(b)}"}} ' for b in bounds]
            lines += [f"{name}_count{{{labels}}} ", f"{name}_sum{{{labels}}} "]
            template = "\n".join(line.replace("%", "%%") + "%s" for line in lines)
            _templates.put(key, template,
                           strsize(template) + strsize(labels) + 32 * len(bounds) + 150)
        # One string for the whole histogram: its lines are joined like any others.
        self.lines.setdefault(name, []).append(
            template % tuple(fmt_all([*counts, counts[-1], total])))

    def joined(self) -> dict[str, str]:
        """Each family's lines as one newline-terminated string."""
        return {name: "\n".join(lines) + "\n" for name, lines in self.lines.items()}


TEMPLATE_BUDGET = 2 * 1024 * 1024
"""Bytes (estimated) the histogram templates may hold before they are all dropped: label
values come from upstreams, so a count of templates would bound nothing."""
_templates: BoundedDict[tuple[str, str, tuple[float, ...]], str] = BoundedDict(
    Budget(TEMPLATE_BUDGET))
"""Each histogram's lines with ``%s`` for the values, reused from poll to poll."""
