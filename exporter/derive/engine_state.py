"""One engine's derived figures across polls: windows over its counters and histogram
buckets, rates, windowed percentiles, restarts; and the families they are exported as."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from exporter.derive.quantiles import bucket_quantiles
from exporter.derive.windows import CumulativeWindow, Delta
from exporter.engines.reading import EngineReading
from exporter.exposition.family import Spec
from exporter.exposition.lines import Families, fmt, labelstr
from exporter.latency import LATENCIES
from exporter.settings import format_duration

__all__ = ["COUNTERS", "GAUGES", "HISTOGRAMS", "LATENCY_MEAN", "RATES", "EngineState",
           "Figures"]

E = ("engine", "endpoint", "model", "dp_rank")
"""The labels of every series of one engine (one model on one data-parallel rank)."""

REQUESTS_WAITING = Spec("inference_node_engine_requests_waiting", "gauge",
                        "Requests waiting to be scheduled (queue depth).", E)
REQUESTS_RUNNING = Spec("inference_node_engine_requests_running", "gauge",
                        "Requests being processed.", E)
REQUESTS_SWAPPED = Spec("inference_node_engine_requests_swapped", "gauge",
                        "Requests swapped out to CPU memory (older vLLM only).", E)
KV_CACHE_USAGE = Spec("inference_node_engine_kv_cache_usage_ratio", "gauge",
                      "Fraction of the KV-cache in use, 0..1.", E)
KV_CACHE_CAPACITY = Spec("inference_node_engine_kv_cache_capacity_tokens", "gauge",
                         "KV-cache capacity in tokens (blocks times block size).", E)
PROMPT_TOKENS = Spec("inference_node_engine_prompt_tokens_total", "counter",
                     "Prompt (prefill) tokens processed, as the engine counts them.", E)
GENERATION_TOKENS = Spec("inference_node_engine_generation_tokens_total", "counter",
                         "Generated (decode) tokens, as the engine counts them.", E)
PREEMPTIONS = Spec("inference_node_engine_preemptions_total", "counter",
                   "Requests preempted by the scheduler, as the engine counts them.", E)
ITERATIONS = Spec(
    "inference_node_engine_iterations_total", "counter",
    "Forward passes (scheduler iterations) the engine ran, where it counts them: progress"
    " that shows while tokens are counted only when a request ends.", E)
REQUESTS_FINISHED = Spec(
    "inference_node_engine_requests_finished_total", "counter",
    "Finished requests by finish reason, in the words of every engine: stop, length, abort,"
    " error, and where an engine says no more or something else success, rejected,"
    " invalid, overloaded, timeout, repetition, other (the README says what each engine"
    " counts).", (*E, "reason"))
RESTARTS = Spec("inference_node_engine_restarts_total", "counter",
                "Engine restarts seen by the daemon (counters went back or were re-created).", E)
PROMPT_TOKENS_RATE = Spec(
    "inference_node_engine_prompt_tokens_per_second", "gauge",
    "Prompt tokens per second over the last poll interval or a sliding window.",
    (*E, "window"), live=True)
GENERATION_TOKENS_RATE = Spec(
    "inference_node_engine_generation_tokens_per_second", "gauge",
    "Generated tokens per second over the last poll interval or a sliding window.",
    (*E, "window"), live=True)
PREEMPTIONS_RATE = Spec(
    "inference_node_engine_preemptions_per_second", "gauge",
    "Preemptions per second over the last poll interval or a sliding window.",
    (*E, "window"), live=True)
LATENCY_PERCENTILE = Spec(
    "inference_node_engine_latency_seconds", "gauge",
    "Latency percentile (ttft, itl, e2e, queue) over a sliding window, from the deltas"
    " of the engine's histogram buckets; absent while the window holds no observation.",
    (*E, "latency", "window", "percentile"), live=True)
LATENCY_MEAN = Spec(
    "inference_node_engine_latency_mean_seconds", "gauge",
    "Mean latency (ttft, itl, e2e, queue) over a sliding window, from the cumulative"
    " durations of an engine that has no histogram of it: a mean, never a percentile;"
    " absent while the window holds no observation.", (*E, "latency", "window"), live=True)
LATENCY_OBSERVATIONS = Spec(
    "inference_node_engine_latency_window_observations", "gauge",
    "Observations the windowed latency quantiles rest on.", (*E, "latency", "window"),
    live=True)
WINDOW_SPAN = Spec(
    "inference_node_engine_window_span_seconds", "gauge",
    "Seconds the rates and percentiles of a window actually cover: the window's length"
    " (to within half a poll interval), less at start-up or after a gap in the polls.",
    (*E, "window"), live=True)

GAUGES: dict[str, Spec] = {
    "requests_waiting": REQUESTS_WAITING, "requests_running": REQUESTS_RUNNING,
    "requests_swapped": REQUESTS_SWAPPED, "kv_cache_usage_ratio": KV_CACHE_USAGE,
    "kv_cache_capacity_tokens": KV_CACHE_CAPACITY,
}
"""Each gauge of a reading and its family."""
COUNTERS: dict[str, Spec] = {
    "prompt_tokens": PROMPT_TOKENS, "generation_tokens": GENERATION_TOKENS,
    "preemptions": PREEMPTIONS, "iterations": ITERATIONS,
}
RATES: dict[str, Spec] = {
    "prompt_tokens": PROMPT_TOKENS_RATE, "generation_tokens": GENERATION_TOKENS_RATE,
    "preemptions": PREEMPTIONS_RATE,
}
"""The counters whose rates are exported, and the rate's family."""
HISTOGRAMS: dict[str, Spec] = {
    row.reading: Spec(row.family, "histogram", row.help, E) for row in LATENCIES}
"""Each latency histogram of a reading and its family (see :mod:`exporter.latency`)."""

Layout = tuple[tuple[str, ...], tuple[tuple[str, tuple[float, ...]], ...], tuple[str, ...]]
"""Counters, histograms with their bounds, and durations: what the window's vectors hold."""
_MEAN_KEYS = {row.reading: row.key for row in LATENCIES}


def _components(layout: Layout) -> list[tuple[object, ...]]:
    """What each place of the window's vectors holds, in order, for a layout."""
    counters, histograms, durations = layout
    return [*(("counter", name) for name in counters),
            *(("bucket", name, bounds, i) for name, bounds in histograms
              for i in range(len(bounds))),
            *(("duration", name, part) for name in durations for part in (0, 1))]


@dataclass(frozen=True, slots=True)
class Figures:
    """What one update derives: per window label (``poll`` first) its increase, and the
    rates of each counter of :data:`RATES` by window label."""

    deltas: list[tuple[str, Delta | None]]
    rates: dict[str, dict[str, float]]


class EngineState:
    """Windows over one engine's counters and histograms, across polls."""

    def __init__(self, windows: tuple[float, ...], quantiles: tuple[float, ...],
                 interval: float, at_request_end: frozenset[str] = frozenset()) -> None:
        self.windows = windows
        self.at_request_end = at_request_end
        """Counters the engine moves only when a request ends (see :meth:`_rates`)."""
        self.window_labels = tuple(format_duration(w) for w in windows)
        self.quantiles = quantiles
        self.percentile_labels = tuple(f"{q * 100:g}" for q in quantiles)
        self.interval = interval
        """The poll interval: a window's start may lie up to half of it beyond the window."""
        self.horizon = max(windows) + interval
        self.window: CumulativeWindow | None = None
        """One window over every counter and histogram bucket, laid out as ``layout``."""
        self.layout: Layout = ((), (), ())
        self.index: dict[str, int] = {}
        """Each counter's place in the window's vectors."""
        self.buckets: dict[str, slice] = {}
        """Each histogram's buckets in the window's vectors."""
        self.durations: dict[str, int] = {}
        """Each duration's place in the window's vectors: its seconds, then its count."""
        self.restarts = 0
        self.last: EngineReading | None = None
        self._prefixes: tuple[str, dict[str, list[tuple[str, tuple[str, ...]]]]] | None = None

    def _restarted(self, r: EngineReading) -> bool:
        """Whether the engine restarted since the last reading."""
        last = self.last
        if last is None:
            return False
        if any(last.created.get(k, v) != v for k, v in r.created.items()):
            return True
        if any(v < last.counters.get(k, v) for k, v in r.counters.items()):
            return True
        for k, h in r.histograms.items():
            old = last.histograms.get(k)
            if old is not None and old.bounds == h.bounds and h.count < old.count:
                return True
        for k, (seconds, count) in r.durations.items():
            before = last.durations.get(k)
            if before is not None and (seconds < before[0] or count < before[1]):
                return True
        return False

    def update(self, t: float, r: EngineReading) -> Figures:
        """Take a new reading made at monotonic time ``t``; the figures it gives."""
        restarted = self._restarted(r)
        if restarted:
            self.restarts += 1
        layout = (tuple(r.counters), tuple((k, h.bounds) for k, h in r.histograms.items()),
                  tuple(r.durations))
        raw = [*r.counters.values(), *itertools.chain.from_iterable(
            h.counts for h in r.histograms.values()), *itertools.chain.from_iterable(
            r.durations.values())]
        if self.window is None or layout != self.layout:
            self._relayout(layout, raw, restarted)
        window = self.window
        assert window is not None
        window.add(t, raw, restarted)
        self.last = r
        deltas = self._deltas(window)
        return Figures(deltas, self._rates(r, deltas))

    def _rates(self, r: EngineReading, deltas: list[tuple[str, Delta | None]]
               ) -> dict[str, dict[str, float]]:
        """Per counter of :data:`RATES`, its rate over each window.

        A counter the engine moves at request end only says nothing over one poll interval
        (it jumps by whole requests), and nothing over a window in which no request ended
        while requests ran: both are left out rather than read as a rate, or as zero."""
        # Unknown when the engine does not say: then no request end is no proof of idleness.
        running = r.gauges.get("requests_running", 1.0) > 0
        at_end = self.at_request_end if r.at_request_end is None else r.at_request_end
        rates: dict[str, dict[str, float]] = {}
        for name in RATES:
            i = self.index.get(name)
            if i is None:
                continue
            lumpy = name in at_end
            rates[name] = {wl: d[1][i] / d[0] for wl, d in deltas
                           if d is not None and d[0] > 0
                           and not (lumpy and (wl == "poll" or (running and d[1][i] == 0)))}
        return rates

    def _relayout(self, layout: Layout, raw: list[float], restarted: bool) -> None:
        """Series came or went, or a histogram's bounds changed: the series kept keep their
        history, a new one (or one with new bounds) starts from its first value. After a
        restart the whole history starts afresh."""
        old = _components(self.layout)
        new = _components(layout)
        if self.window is None or restarted or not set(old) & set(new):
            self.window = CumulativeWindow(self.horizon)
        else:
            where = {c: i for i, c in enumerate(old)}
            self.window.reshape([where.get(c) for c in new], raw)
        self.layout = layout
        self.index = {name: i for i, name in enumerate(layout[0])}
        self.buckets = {}
        start = len(layout[0])
        for name, bounds in layout[1]:
            self.buckets[name] = slice(start, start + len(bounds))
            start += len(bounds)
        self.durations = {name: start + 2 * i for i, name in enumerate(layout[2])}

    def render(self, out: Families, labels: str, figures: Figures) -> None:
        """Add this engine's series to ``out``; ``labels`` identify the engine."""
        r = self.last
        if r is None:
            return
        for name, value in r.gauges.items():
            out.add(GAUGES[name].name, labels, value)
        for name, value in r.counters.items():
            out.add(COUNTERS[name].name, labels, value)
        for reason, value in sorted(r.finished.items()):
            out.add(REQUESTS_FINISHED.name, f"{labels},{labelstr(reason=reason)}", value)
        out.add(RESTARTS.name, labels, float(self.restarts))
        for wl, d in figures.deltas:
            if d is not None:
                out.add(WINDOW_SPAN.name, f'{labels},window="{wl}"', d[0])
        for name, rates in figures.rates.items():
            family = RATES[name].name
            for wl, rate in rates.items():
                out.add(family, f'{labels},window="{wl}"', rate)
        self._latencies(out, labels, r, figures.deltas[1:])
        self._means(out, labels, figures.deltas[1:])

    def _means(self, out: Families, labels: str,
               deltas: list[tuple[str, Delta | None]]) -> None:
        """Per duration and window, the mean of what the window's observations took."""
        for name, i in self.durations.items():
            key = _MEAN_KEYS[name]
            for wl, d in deltas:
                if d is not None and d[1][i + 1] > 0:
                    out.add(LATENCY_MEAN.name, f'{labels},latency="{key}",window="{wl}"',
                            d[1][i] / d[1][i + 1])

    def _latencies(self, out: Families, labels: str, r: EngineReading,
                   deltas: list[tuple[str, Delta | None]]) -> None:
        """The histograms, and per window the observations and percentiles of each."""
        observations: list[str] = []
        percentiles: list[str] = []
        prefixes = self._latency_prefixes(labels)
        quantiles = self.quantiles
        for name, h in r.histograms.items():
            out.histogram(HISTOGRAMS[name].name, labels, h.bounds, h.counts, h.sum)
            bucket = self.buckets[name]
            for (_wl, d), (observed, percentile) in zip(deltas, prefixes[name], strict=True):
                if d is None:
                    continue
                counts = d[1][bucket]
                observations.append(observed + fmt(counts[-1]))
                values = bucket_quantiles(quantiles, h.bounds, counts)
                percentiles.extend([prefix + fmt(v) for prefix, v in
                                    zip(percentile, values, strict=True) if v is not None])
        if observations:
            out.lines.setdefault(LATENCY_OBSERVATIONS.name, []).extend(observations)
        if percentiles:
            out.lines.setdefault(LATENCY_PERCENTILE.name, []).extend(percentiles)

    def _deltas(self, window: CumulativeWindow) -> list[tuple[str, Delta | None]]:
        """Per window label (``poll`` first), the increase the figures are computed from.

        ``poll`` is the time between the two newest readings, absent when they lie less than
        half an interval apart (two polls in a row); its span is exported with it, so a
        longer one (a failed poll, a starved daemon) is never silent.
        A window's start is the oldest reading at most half an interval beyond it: never
        more than the window, less at start-up or after a gap in the readings.
        """
        half = self.interval / 2
        last = window.last_delta()
        if last is not None and last[0] < half:
            last = None
        deltas: list[tuple[str, Delta | None]] = [("poll", last)]
        for w, wl in zip(self.windows, self.window_labels, strict=True):
            d = window.delta(w, half)
            deltas.append((wl, d if d is not None and d[0] >= half else None))
        return deltas

    def _latency_prefixes(self, labels: str) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
        """Per histogram and window, the start of its observations line and of each
        percentile's line, made once for the engine's labels."""
        cached = self._prefixes
        if cached is not None and cached[0] == labels:
            return cached[1]
        table: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        for row in LATENCIES:
            rows = table[row.reading] = []
            for wl in self.window_labels:
                wlabels = f'{labels},latency="{row.key}",window="{wl}"'
                rows.append((f"{LATENCY_OBSERVATIONS.name}{{{wlabels}}} ", tuple(
                    f'{LATENCY_PERCENTILE.name}{{{wlabels},percentile="{pl}"}} '
                    for pl in self.percentile_labels)))
        self._prefixes = (labels, table)
        return table
