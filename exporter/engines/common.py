"""What every adapter's normaliser does alike: take the newest of a family's names, and
gather readings per (model, rank) under the cap on their number."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from exporter.engines.histograms import HistogramReader
from exporter.engines.reading import EngineKey, EngineReading
from exporter.expfmt import Exposition, Sample

__all__ = ["Readings", "first", "listed_model"]


def first(exp: Exposition, names: Iterable[str], suffix: str = "") -> list[Sample]:
    """The samples of the first of ``names`` (preferred first) the exposition has."""
    for name in names:
        samples = exp.get(name + suffix)
        if samples:
            return samples
    return []


class Readings:
    """The readings one exposition gives, at most ``limit`` (model, rank) of them; the
    others are counted as dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.found: dict[EngineKey, EngineReading] = {}
        self.dropped: set[EngineKey] = set()

    def get(self, key: EngineKey | None) -> EngineReading | None:
        """The reading of ``key``, made on first use; None for no key or past the cap."""
        if key is None:
            return None
        reading = self.found.get(key)
        if reading is None:
            if len(self.found) >= self.limit:
                self.dropped.add(key)
                return None
            reading = self.found[key] = EngineReading(*key)
        return reading

    def histograms(self, reader: HistogramReader, exp: Exposition,
                   table: Mapping[str, tuple[str, ...]]) -> None:
        """Each histogram of ``table`` (our key -> its names, preferred first), from the
        first name the exposition has."""
        for ours, names in table.items():
            for name in names:
                found = reader.read(exp, name)
                if found is not None:
                    for key, histogram in found:
                        if (r := self.get(key)) is not None:
                            r.histograms[ours] = histogram
                    break

    def result(self) -> tuple[list[EngineReading], int]:
        """The readings, and how many label sets the cap dropped."""
        return list(self.found.values()), len(self.dropped)


def listed_model(body: bytes) -> str | None:
    """The served model's name from an OpenAI-style ``/v1/models`` answer (``data[0].id``);
    None when the answer does not say."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past reason
        return None
    data = answer.get("data") if isinstance(answer, dict) else None
    listed = data[0] if isinstance(data, list) and data else None
    name = listed.get("id") if isinstance(listed, dict) else None
    if not isinstance(name, str) or not name.strip():
        return None
    return name.strip()
