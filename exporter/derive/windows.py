"""Sliding windows over cumulative readings (counters, histogram buckets) that survive resets."""

from __future__ import annotations

import bisect
import operator
from array import array
from collections import deque
from collections.abc import Sequence

__all__ = ["CumulativeWindow", "Delta"]

Delta = tuple[float, tuple[float, ...]]
"""(seconds covered, increase of each component over them)."""


class CumulativeWindow:
    """Successive readings of a cumulative vector, kept reset-free for ``horizon`` seconds.

    A vector is a counter (one component) or a histogram (bucket counts, then sum and count).
    When any component goes down, or the caller says the source restarted, the reading is
    taken as counted from zero since the previous one, as Prometheus' ``rate()`` does: the
    increase is never negative and a restart causes no spike. A change in the number of
    components (new bucket layout) starts the history afresh.
    """

    __slots__ = ("_horizon", "_last_raw", "_times", "_values")

    def __init__(self, horizon: float) -> None:
        if horizon <= 0:
            raise ValueError("horizon must be positive")
        self._horizon = horizon
        self._times: deque[float] = deque()
        # Compact arrays: a window holds tens of readings of tens of buckets each.
        self._values: deque[array[float]] = deque()
        self._last_raw: array[float] | None = None

    def __len__(self) -> int:
        return len(self._times)

    def add(self, t: float, raw: Sequence[float], restarted: bool = False) -> bool:
        """Record a reading taken at monotonic time ``t``; returns True if it was a reset."""
        raw = array("d", raw)
        last = self._last_raw
        reset = False
        if last is None or len(last) != len(raw):
            self._times.clear()
            self._values.clear()
            adjusted = raw
        else:
            if self._times and t <= self._times[-1]:
                return False
            prev = self._values[-1]
            reset = restarted or any(map(operator.lt, raw, last))
            if reset:
                adjusted = array("d", map(operator.add, prev, raw))
            else:
                adjusted = array("d", map(operator.add, prev, map(operator.sub, raw, last)))
        self._last_raw = raw
        self._times.append(t)
        self._values.append(adjusted)
        # Keep one point at or before (newest - horizon) so a full window stays answerable.
        cutoff = t - self._horizon
        while len(self._times) > 2 and self._times[1] <= cutoff:
            self._times.popleft()
            self._values.popleft()
        return reset

    def reshape(self, sources: Sequence[int | None], raw: Sequence[float]) -> None:
        """Lay the history out anew before ``raw``, a reading with other components, is
        added: component k keeps the history of old component ``sources[k]``, and one
        without a source (a series seen for the first time) starts from ``raw[k]``, as if
        it had held that value all along (no increase before it was seen, as Prometheus'
        ``rate()`` counts a new series)."""
        last = self._last_raw
        if last is None:
            return

        def pick(old: Sequence[float]) -> array[float]:
            return array("d", (raw[k] if s is None else old[s] for k, s in enumerate(sources)))

        self._values = deque(pick(v) for v in self._values)
        self._last_raw = pick(last)

    def delta(self, window: float, slack: float | None = None) -> Delta | None:
        """Increase over the last ``window`` seconds.

        Without ``slack``, the start is the newest reading at least ``window`` seconds old,
        else the oldest one. With it, the start is the oldest reading at most ``window +
        slack`` seconds old, so the span never exceeds the window by more than ``slack``
        (after a gap in the readings, or at start-up, it is shorter). None until there are
        two readings, or when no earlier reading lies within reach.
        """
        n = len(self._times)
        if n < 2:
            return None
        now = self._times[-1]
        if slack is not None:
            i = bisect.bisect_left(self._times, now - window - slack)
            return self._between(i, n - 1) if i < n - 1 else None
        i = bisect.bisect_right(self._times, now - window) - 1
        i = max(i, 0)
        if i >= n - 1:
            i = n - 2
        return self._between(i, n - 1)

    def last_delta(self) -> Delta | None:
        """Increase between the two newest readings (one poll interval)."""
        if len(self._times) < 2:
            return None
        return self._between(len(self._times) - 2, len(self._times) - 1)

    def _between(self, i: int, j: int) -> Delta:
        start, end = self._values[i], self._values[j]
        increase = tuple(map(operator.sub, end, start))
        return self._times[j] - self._times[i], increase
