"""What defines an exported family: its name, type, help, label names, and whether it is a
figure about *now* (see :attr:`Spec.live`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Spec"]


@dataclass(frozen=True, slots=True)
class Spec:
    """One exported family."""

    name: str
    type: str  # gauge | counter | histogram
    help: str
    labels: tuple[str, ...]
    live: bool = False
    """A rate, a ratio over the last interval or a windowed percentile: served only while its
    source is up. A down source's other values are still served for ``stale_after``."""
