"""Caches bounded by an estimate of the memory they hold rather than by how many entries.

A count of entries bounds nothing when an upstream controls how large each entry is (label
values, HELP texts); bytes do. Callers estimate each entry's size (:func:`strsize` helps)
and charge it to a :class:`Budget` shared by one owner's caches; once the total passes the
budget, every cache sharing it is emptied and refills from what comes next. Emptying rather
than evicting keeps lookups at plain ``dict`` speed, and costs a well-behaved owner nothing
as long as its working set fits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

__all__ = ["BoundedDict", "Budget", "strsize"]

K = TypeVar("K")
V = TypeVar("V")

ENTRY = 64
"""Bytes a ``dict`` slot costs, on average, beyond its key and value objects."""


strsize: Callable[[str], int] = sys.getsizeof
"""The bytes a ``str`` object takes (by its widest character)."""


class Budget:
    """A byte budget shared by some caches: over it, all of them are emptied."""

    __slots__ = ("caches", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        """Bytes charged since the caches were last emptied (an estimate)."""
        self.caches: list[dict[object, object]] = []

    def charge(self, nbytes: int) -> None:
        """Account for an entry about to be added; empty every cache first when it would not
        fit. An entry that replaces another is counted again: an over-estimate, which only
        makes the next emptying come sooner."""
        used = self.used + nbytes + ENTRY
        if used > self.limit:
            self.clear()
            used = nbytes + ENTRY
        self.used = used

    def clear(self) -> None:
        """Empty every cache sharing this budget."""
        for cache in self.caches:
            cache.clear()
        self.used = 0


class BoundedDict(dict[K, V]):
    """A ``dict`` whose additions are charged to a :class:`Budget` (use :meth:`put`, or
    :meth:`Budget.charge` then plain assignment); lookups are those of a ``dict``."""

    __slots__ = ("budget",)

    def __init__(self, budget: Budget) -> None:
        super().__init__()
        self.budget = budget
        budget.caches.append(self)  # type: ignore[arg-type]

    def put(self, key: K, value: V, nbytes: int) -> V:
        """Add ``key`` with an estimated ``nbytes`` for key and value; return ``value``."""
        self.budget.charge(nbytes)
        self[key] = value
        return value
