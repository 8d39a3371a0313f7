"""Renders the latest snapshot for a scrape: merge every source's series, add self-metrics.

A source whose series cannot be rendered is left out of that scrape and counted; the scrape
itself always succeeds.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator
from threading import Lock

from prometheus_client import ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from exporter import __version__, logs
from exporter.schema import SCHEMA, Spec
from exporter.snapshot import SnapshotStore, SourceState

__all__ = ["SnapshotCollector", "make_registry"]

X = "inference_node_exporter_"


def _family(spec: Spec, samples: list[Sample]) -> Metric:
    name = spec.name[:-6] if spec.type == "counter" else spec.name
    metric = Metric(name, spec.help, spec.type)
    metric.samples = samples
    return metric


class SnapshotCollector(Collector):
    """A prometheus_client collector over a :class:`SnapshotStore`."""

    def __init__(self, store: SnapshotStore, stale_after: Callable[[], float]) -> None:
        self.store = store
        self.stale_after = stale_after
        self.log = logs.get("exposition")
        self._render_errors: dict[str, int] = {}
        self._lock = Lock()

    def collect(self) -> Iterator[Metric]:
        states = self.store.current()
        merged: dict[str, list[Sample]] = {}
        now = time.monotonic()
        stale_after = self.stale_after()
        for state in states.values():
            try:
                self._source(state, merged, now, stale_after)
            except Exception:
                with self._lock:
                    self._render_errors[state.collector] = (
                        self._render_errors.get(state.collector, 0) + 1)
                self.log.exception("rendering a source failed", collector=state.collector,
                                   source=state.source)
        self._self_metrics(states.values(), merged)
        for spec in SCHEMA:
            samples = merged.get(spec.name)
            if samples:
                yield _family(spec, samples)

    @staticmethod
    def _source(state: SourceState, merged: dict[str, list[Sample]], now: float,
                stale_after: float) -> None:
        families = [state.health.samples]
        fresh = (state.last_success_mono is not None
                 and now - state.last_success_mono <= stale_after)
        if state.up or fresh:
            families.append(state.data.samples)
        for samples in families:
            for name, items in samples.items():
                merged.setdefault(name, []).extend(items)

    def _self_metrics(self, states: Iterable[SourceState], merged: dict[str, list[Sample]]) -> None:
        def add(name: str, labels: dict[str, str], value: float) -> None:
            merged.setdefault(name, []).append(Sample(name, labels, value))

        add(X + "build_info", {"version": __version__,
                               "python_version": platform.python_version()}, 1.0)
        for s in states:
            labels = {"collector": s.collector, "source": s.source}
            add(X + "collector_up", labels, 1.0 if s.up else 0.0)
            add(X + "collector_poll_duration_seconds", labels, s.duration)
            if s.last_success is not None:
                add(X + "collector_last_success_timestamp_seconds", labels, s.last_success)
            add(X + "collector_polls_total", labels, float(s.polls))
            for reason, count in sorted(s.errors.items()):
                add(X + "collector_errors_total", {**labels, "reason": reason}, float(count))
            add(X + "collector_malformed_lines_total", labels, float(s.malformed_lines))
            add(X + "collector_dropped_series_total", labels, float(s.dropped_series))
            if s.response_bytes is not None:
                add(X + "collector_response_bytes", labels, float(s.response_bytes))
        with self._lock:
            for collector, count in sorted(self._render_errors.items()):
                add(X + "render_errors_total", {"collector": collector}, float(count))


def make_registry(collector: SnapshotCollector, process: bool = True) -> CollectorRegistry:
    """A registry with the snapshot collector and, by default, the process collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if process:
        ProcessCollector(registry=registry)
    return registry
