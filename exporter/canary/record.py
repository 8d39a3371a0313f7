"""What the canary measured of one endpoint: fine-bucket histograms, exact windowed
percentiles, outcomes and tokens, rendered as the ``inference_node_canary_*`` families.

Only successful probes feed the latencies: a failed one did not run the fixed request to its
end, and its outcome says what happened instead.
"""

from __future__ import annotations

import bisect
import math
import threading
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.exposition.family import Spec
from exporter.exposition.lines import Families, labelstr
from exporter.settings import format_duration

__all__ = ["BUCKETS", "OUTCOMES", "SPECS", "Probe", "Record", "percentile"]

_E = ("engine", "endpoint")
_M = (*_E, "model")
BUCKETS: tuple[float, ...] = (
    *(round(b * 10.0 ** e, 6) for e in range(-3, 2)
      for b in (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)), 100.0, math.inf)
"""Upper bounds from 1 ms to 100 s, at most 33% apart: a P99 read from them is off by at
most a third of the bucket it falls in, where an engine's own buckets are often 2-5x apart."""
OUTCOMES = ("success", "refused", "timeout", "connection", "http_status", "model_not_found",
            "no_model", "stream_cut", "bad_stream", "short")
HISTOGRAMS = {
    "ttft": Spec("inference_node_canary_time_to_first_token_seconds", "histogram",
                 "Time from sending the canary request to its first streamed token, in fine"
                 " buckets of the daemon's own.", _M),
    "itl": Spec("inference_node_canary_inter_token_latency_seconds", "histogram",
                "Time between the canary's successive streamed tokens, in fine buckets of"
                " the daemon's own.", _M),
    "e2e": Spec("inference_node_canary_e2e_request_latency_seconds", "histogram",
                "Time from sending the canary request to the end of its answer, in fine"
                " buckets of the daemon's own.", _M),
}
PERCENTILE = Spec(
    "inference_node_canary_latency_seconds", "gauge",
    "Canary latency percentile (ttft, itl, e2e) over a sliding window, exact from the"
    " window's own observations (linear between ranks); absent while the window holds none.",
    (*_M, "latency", "window", "percentile"), live=True)
OBSERVATIONS = Spec(
    "inference_node_canary_latency_window_observations", "gauge",
    "Observations the canary's windowed percentiles rest on.", (*_M, "latency", "window"),
    live=True)
PROBES = Spec(
    "inference_node_canary_probes_total", "counter",
    "Canary probes by outcome: success, or why one failed (refused, timeout, connection,"
    " http_status, model_not_found, no_model, stream_cut, bad_stream, short).",
    (*_E, "outcome"))
GENERATED = Spec(
    "inference_node_canary_generated_tokens_total", "counter",
    "Tokens the canary made the engine generate (the engine's count where it reports usage,"
    " else the streamed tokens), to subtract from the engine's own counters.", _E)
PROMPTED = Spec(
    "inference_node_canary_prompt_tokens_total", "counter",
    "Prompt tokens of the canary's probes, where the engine reports usage.", _E)
LAST_SUCCESS = Spec(
    "inference_node_canary_last_success_timestamp_seconds", "gauge",
    "Unix time the last successful canary probe ended.", _E)
INTERVAL = Spec(
    "inference_node_canary_interval_seconds", "gauge",
    "Seconds between the starts of two canary probes of the endpoint.", _E)
MAX_KEPT = 4096
"""Most successful probes the windows hold: 11 hours at the default cadence; a longer
window rests on the latest ones only, as its observation count shows."""
SPECS: tuple[Spec, ...] = (*HISTOGRAMS.values(), PERCENTILE, OBSERVATIONS, PROBES,
                           GENERATED, PROMPTED, LAST_SUCCESS, INTERVAL)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted values, linear between the closest ranks."""
    pos = q * (len(sorted_values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


@dataclass(frozen=True, slots=True)
class Probe:
    """One successful probe's timings, in seconds."""

    ended: float
    """Monotonic time it ended."""
    ttft: float
    e2e: float
    itl: array[float]


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value

    def cumulative(self) -> list[float]:
        out, running = [], 0
        for c in self.counts:
            running += c
            out.append(float(running))
        return out


class Record:
    """One endpoint's canary figures; written by its prober, read by scrapes."""

    def __init__(self, engine: str, endpoint: str, interval: float,
                 windows: tuple[float, ...], quantiles: tuple[float, ...]) -> None:
        self._labels = labelstr(engine=engine, endpoint=endpoint)
        self._interval = interval
        self._windows = tuple((w, format_duration(w)) for w in windows)
        self._quantiles = tuple((q, f"{q * 100:g}") for q in quantiles)
        self._lock = threading.Lock()
        self._outcomes = dict.fromkeys(OUTCOMES, 0)
        self._probed = False
        self._generated = 0
        self._prompted: int | None = None
        self._last_success: float | None = None
        self._model = ""
        self._hist = {key: _Histogram() for key in HISTOGRAMS}
        self._recent: deque[Probe] = deque(maxlen=MAX_KEPT)
        self._keep = max(windows) if windows else 0.0

    def count(self, outcome: str, generated: int, prompted: int | None) -> None:
        """A probe ended with ``outcome``, having made the engine generate ``generated``
        tokens from ``prompted`` prompt tokens (None: not reported)."""
        with self._lock:
            self._probed = True
            self._outcomes[outcome] += 1
            self._generated += generated
            if prompted is not None:
                self._prompted = (self._prompted or 0) + prompted

    def succeed(self, model: str, probe: Probe, unix_time: float) -> None:
        """Add a successful probe's latencies (after :meth:`count`)."""
        with self._lock:
            if model != self._model:  # another model: its figures start afresh
                self._model = model
                self._hist = {key: _Histogram() for key in HISTOGRAMS}
                self._recent.clear()
            self._hist["ttft"].observe(probe.ttft)
            self._hist["e2e"].observe(probe.e2e)
            for gap in probe.itl:
                self._hist["itl"].observe(gap)
            self._recent.append(probe)
            self._last_success = unix_time

    def render(self, now: float, out: Families) -> None:
        """Add the endpoint's series; ``now`` is the monotonic time windows end at."""
        with self._lock:
            if not self._probed:
                return
            labels = self._labels
            out.add(INTERVAL.name, labels, self._interval)
            for outcome, n in self._outcomes.items():
                out.add(PROBES.name, f'{labels},outcome="{outcome}"', float(n))
            out.add(GENERATED.name, labels, float(self._generated))
            if self._prompted is not None:
                out.add(PROMPTED.name, labels, float(self._prompted))
            if self._last_success is not None:
                out.add(LAST_SUCCESS.name, labels, self._last_success)
            while self._recent and self._recent[0].ended < now - self._keep:
                self._recent.popleft()
            if not self._model:
                return
            mlabels = f"{labels},{labelstr(model=self._model)}"
            for key, spec in HISTOGRAMS.items():
                h = self._hist[key]
                out.histogram(spec.name, mlabels, BUCKETS, h.cumulative(), h.total)
            recent = list(self._recent)
        self._windowed(recent, now, mlabels, out)

    def _windowed(self, recent: list[Probe], now: float, labels: str, out: Families) -> None:
        for w, wl in self._windows:
            inside = [p for p in recent if p.ended >= now - w]
            for key, values in (("ttft", [p.ttft for p in inside]),
                                ("itl", [g for p in inside for g in p.itl]),
                                ("e2e", [p.e2e for p in inside])):
                wlabels = f'{labels},latency="{key}",window="{wl}"'
                out.add(OBSERVATIONS.name, wlabels, float(len(values)))
                if not values:
                    continue
                values.sort()
                for q, ql in self._quantiles:
                    out.add(PERCENTILE.name, f'{wlabels},percentile="{ql}"',
                            percentile(values, q))
