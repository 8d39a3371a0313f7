"""Quantiles from cumulative histogram buckets, with Prometheus' ``histogram_quantile`` rules."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

__all__ = ["bucket_quantile", "bucket_quantiles"]


def bucket_quantiles(qs: Sequence[float], bounds: Sequence[float],
                     counts: Sequence[float]) -> list[float | None]:
    """The ``qs`` quantiles of one histogram, as PromQL's ``histogram_quantile`` computes them.

    ``bounds`` are the upper bounds in increasing order, the last being ``+Inf``; ``counts``
    the cumulative counts of each bucket. None stands where Prometheus returns NaN (no
    observations, or no ``+Inf`` bucket). Inside the bucket the rank falls in the value is
    interpolated linearly; the first bucket's lower bound is 0 when its upper bound is
    positive; a rank in the ``+Inf`` bucket gives the highest finite bound. Counts that go
    down from one bucket to the next (read at slightly different moments) are evened out
    upwards first, as Prometheus does.
    """
    n = len(bounds)
    if n < 2 or bounds[-1] != math.inf or n != len(counts):
        return [None] * len(qs)
    fixed = list(counts)
    if math.isnan(sum(fixed)) or fixed != sorted(fixed):  # a NaN, or counts going down
        fixed = list(itertools.accumulate(fixed, max))
    total = fixed[-1]
    out: list[float | None] = []
    last = n - 1
    for q in qs:
        if not 0 <= q <= 1:
            out.append(-math.inf if q < 0 else math.inf if q > 1 else None)  # NaN: None
            continue
        if total <= 0:
            out.append(None)
            continue
        rank = q * total
        b = bisect.bisect_left(fixed, rank, 0, last)
        if b == last:
            out.append(bounds[-2])
            continue
        if b:
            start, below = bounds[b - 1], fixed[b - 1]
        elif bounds[0] <= 0:
            out.append(bounds[0])
            continue
        else:
            start = below = 0.0
        in_bucket = fixed[b] - below
        end = bounds[b]
        out.append(end if in_bucket <= 0 else start + (end - start) * ((rank - below) / in_bucket))
    return out


def bucket_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """One quantile; see :func:`bucket_quantiles`."""
    return bucket_quantiles((q,), bounds, counts)[0]
