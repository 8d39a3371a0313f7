"""Reading histogram families out of a parsed exposition, for every adapter.

An engine's histogram family holds one set of ``_bucket`` and ``_sum`` samples per label set.
Working out which sample belongs to which engine and bound is costly; the layout rarely
changes from poll to poll, so the positions are worked out once and reused while the parser
reports the same layout (:class:`exporter.expfmt.Layout`, or the same label objects).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence

from exporter.bounded import BoundedDict, Budget
from exporter.engines.reading import EngineKey, HistogramReading
from exporter.expfmt import Exposition, Layout

__all__ = ["HistogramReader", "KeyOf"]

KeyOf = Callable[[Mapping[str, str]], "EngineKey | None"]
"""An adapter's reading of a sample's labels: its (model, rank), or None to skip it."""

PLAN_BUDGET = 1 << 20
"""Bytes (estimated) the plans may hold before they are all dropped and worked out again."""
_VALUE = operator.itemgetter(2)
_Take = Callable[[Sequence[float]], tuple[float, ...]]
_Plan = list[tuple[EngineKey, tuple[float, ...], _Take, list[int]]]


class HistogramReader:
    """Reads one adapter's histogram families, reusing each family's plan."""

    def __init__(self, key_of: KeyOf) -> None:
        self.key_of = key_of
        budget = Budget(PLAN_BUDGET)
        self._plans: BoundedDict[tuple[str, tuple[str, ...], tuple[int, ...]],
                                 tuple[tuple[Mapping[str, str], ...], _Plan]] = \
            BoundedDict(budget)
        """Plans by the family's sample names and label objects (held, so ids stay valid)."""
        self._layouts: BoundedDict[str, tuple[Layout, _Plan]] = BoundedDict(budget)
        """Per family, the plan for the parser's layout of its lines last time."""
        self._bounds: BoundedDict[str, float] = BoundedDict(budget)

    def read(self, exp: Exposition, name: str
             ) -> list[tuple[EngineKey, HistogramReading]] | None:
        """Each engine's histogram of family ``name``; None when the exposition lacks it."""
        family = exp.by_family.get(name)
        layout = None
        if family is not None and family.type == "histogram":
            samples, layout = family.samples, family.layout
        else:
            samples = exp.get(name + "_bucket") + exp.get(name + "_sum")
        if not samples:
            return None
        known = self._layouts.get(name)
        values: Sequence[float]
        if layout is not None and known is not None and known[0] is layout:
            plan = known[1]  # the same lines as last time: only the values are new
            values = list(map(_VALUE, samples))
        else:
            sample_names, label_sets, values, _ = zip(*samples, strict=True)
            key = (name, sample_names, tuple(map(id, label_sets)))
            cached = self._plans.get(key)
            if cached is None:
                cached = self._plans.put(key, (label_sets, self._plan(name, sample_names,
                                                                      label_sets)),
                                         96 * len(sample_names))
            plan = cached[1]
            if layout is not None:
                self._layouts.put(name, (layout, plan), 64 * len(plan) + 64)
        found = []
        for engine, bounds, take, totals in plan:
            counts = take(values)
            found.append((engine, HistogramReading(bounds, counts,
                                                   sum(values[i] for i in totals), counts[-1])))
        return found

    def _plan(self, name: str, names: Sequence[str],
              labels: Sequence[Mapping[str, str]]) -> _Plan:
        """Where each engine's buckets and sum sit in a family's samples. Label sets beside
        model and rank that map to one engine are summed, at the bounds they all have: a
        bound one of them lacks would make the sum undercount there."""
        bucket_name, sum_name = name + "_bucket", name + "_sum"
        positions: dict[EngineKey, dict[float, list[int]]] = {}
        sums: dict[EngineKey, list[int]] = {}
        for i, (sample_name, lab) in enumerate(zip(names, labels, strict=True)):
            engine = self.key_of(lab)
            if engine is None:
                continue
            if sample_name == bucket_name:
                bound = self._bound(lab.get("le"))
                if bound is not None:
                    positions.setdefault(engine, {}).setdefault(bound, []).append(i)
            elif sample_name == sum_name:
                sums.setdefault(engine, []).append(i)
        plan: _Plan = []
        for engine, per in positions.items():
            # Each label set has one +Inf bucket: a bound as often as +Inf is every one's.
            series = len(per.get(math.inf, ()))
            bounds = tuple(sorted(b for b, where in per.items() if len(where) == series))
            if not series or len(bounds) < 2:
                continue
            plan.append((engine, bounds, _taker([per[b] for b in bounds]), sums.get(engine, [])))
        return plan

    def _bound(self, le: str | None) -> float | None:
        """The bucket's upper bound; None for a missing or unreadable ``le``."""
        if le is None:
            return None
        bound = self._bounds.get(le)
        if bound is None:
            try:
                bound = float(le)
            except ValueError:
                return None
            if math.isnan(bound):
                return None
            self._bounds.put(le, bound, 2 * len(le) + 80)
        return bound


def _taker(where: list[list[int]]) -> _Take:
    """A function picking each bucket's count (summed where a bound repeats) from values."""
    if all(len(w) == 1 for w in where):
        pick = operator.itemgetter(*(w[0] for w in where))
        return pick

    def take(values: Sequence[float]) -> tuple[float, ...]:
        return tuple(sum(values[i] for i in w) for w in where)
    return take
