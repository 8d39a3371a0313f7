"""The report's statistics: correlation over aligned points, the P99/P50 spread by hour
of the day, and the share of time inside an objective. Pure functions over plain floats."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

__all__ = ["MIN_POINTS", "aligned", "by_hour", "inside_share", "median", "pearson",
           "spearman"]

MIN_POINTS = 24
"""Fewest common points a correlation is computed from."""


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's correlation of paired values; None with fewer than :data:`MIN_POINTS`
    pairs or when either side never changes."""
    if len(xs) != len(ys) or len(xs) < MIN_POINTS:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True))
    vx = sum((a - mx) ** 2 for a in xs)
    vy = sum((b - my) ** 2 for b in ys)
    if vx <= 0 or vy <= 0:
        return None
    return max(-1.0, min(1.0, cov / math.sqrt(vx * vy)))


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's of the ranks): robust to outliers, but
    diluted when the two move together only in rare episodes."""
    if len(xs) != len(ys) or len(xs) < MIN_POINTS:
        return None
    return pearson(_ranks(xs), _ranks(ys))


def aligned(a: Mapping[float, float], b: Mapping[float, float]) -> tuple[list[float],
                                                                        list[float]]:
    """The values of two series at the instants both have."""
    common = sorted(a.keys() & b.keys())
    return [a[t] for t in common], [b[t] for t in common]


def by_hour(p99: Mapping[float, float], p50: Mapping[float, float]) -> list[float | None]:
    """For each hour of the day (UTC), the median of P99 / P50 at the instants of that hour
    where both exist and P50 is above 0; None for an hour with none."""
    hours: list[list[float]] = [[] for _ in range(24)]
    for t in p99.keys() & p50.keys():
        if p50[t] > 0:
            hours[datetime.fromtimestamp(t, UTC).hour].append(p99[t] / p50[t])
    return [median(h) if h else None for h in hours]


def inside_share(values: Sequence[float], objective: float) -> float | None:
    """The share of values at or under ``objective``; None without values."""
    return sum(1 for v in values if v <= objective) / len(values) if values else None
