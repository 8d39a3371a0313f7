"""Collector kinds that are not engines: every engine adapter (see :mod:`exporter.engines`)
is a collector of its own kind beside these."""

from __future__ import annotations

__all__ = ["PLATFORM"]

PLATFORM: tuple[str, ...] = ("gpu", "dcgm", "host")
"""The node's own collectors, in the order their sources are built."""
