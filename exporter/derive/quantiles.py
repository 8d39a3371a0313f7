"""Quantiles from cumulative histogram buckets, with Prometheus' ``histogram_quantile`` rules."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["bucket_quantile"]


def bucket_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The ``q`` quantile of a histogram, as PromQL's ``histogram_quantile`` computes it.

    ``bounds`` are the upper bounds in increasing order, the last being ``+Inf``; ``counts``
    the cumulative counts of each bucket. Returns None where Prometheus would return NaN
    (no observations, or no ``+Inf`` bucket). The value is interpolated linearly inside the
    bucket the rank falls in; the first bucket's lower bound is 0 when its upper bound is
    positive; a rank in the ``+Inf`` bucket gives the highest finite bound.
    """
    if len(bounds) < 2 or not math.isinf(bounds[-1]) or len(bounds) != len(counts):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    # Cumulative counts can be non-monotonic when buckets are read at slightly different
    # moments; Prometheus evens that out the same way.
    fixed: list[float] = []
    top = 0.0
    for c in counts:
        top = max(top, c)
        fixed.append(top)
    total = fixed[-1]
    if total <= 0:
        return None
    rank = q * total
    b = 0
    while b < len(fixed) - 1 and fixed[b] < rank:
        b += 1
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start = 0.0 if b == 0 else bounds[b - 1]
    end = bounds[b]
    below = 0.0 if b == 0 else fixed[b - 1]
    in_bucket = fixed[b] - below
    if in_bucket <= 0:
        return end
    return start + (end - start) * ((rank - below) / in_bucket)
