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
    if n < 2 or not math.isinf(bounds[-1]) or n != len(counts):
        return [None] * len(qs)
    fixed = list(itertools.accumulate(counts, max))
    total = fixed[-1]
    out: list[float | None] = []
    for q in qs:
        if q < 0:
            out.append(-math.inf)
            continue
        if q > 1:
            out.append(math.inf)
            continue
        if total <= 0:
            out.append(None)
            continue
        rank = q * total
        b = bisect.bisect_left(fixed, rank, 0, n - 1)
        if b == n - 1:
            out.append(bounds[-2])
        elif b == 0 and bounds[0] <= 0:
            out.append(bounds[0])
        else:
            start = 0.0 if b == 0 else bounds[b - 1]
            below = 0.0 if b == 0 else fixed[b - 1]
            in_bucket = fixed[b] - below
            end = bounds[b]
            out.append(end if in_bucket <= 0 else
                       start + (end - start) * ((rank - below) / in_bucket))
    return out


def bucket_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """One quantile; see :func:`bucket_quantiles`."""
    return bucket_quantiles((q,), bounds, counts)[0]
