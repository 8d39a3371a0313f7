"""The vLLM collector: polls one vLLM ``/metrics`` endpoint and derives rates and quantiles."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from exporter import logs
from exporter.collectors.base import Families, PollOutput, SourceError, fmt, labelstr
from exporter.config import Config, Endpoint, format_duration
from exporter.derive.quantiles import bucket_quantiles
from exporter.derive.windows import CumulativeWindow, Delta
from exporter.engines.reading import EngineKey, EngineReading
from exporter.engines.vllm import KEEP, Normaliser
from exporter.expfmt import Exposition, Parser
from exporter.expfmt_body import parse_body, release
from exporter.fetch import Fetcher, FetchError, redact
from exporter.processes import EngineProcesses, is_local

__all__ = ["EngineState", "VllmSource", "filtered_url"]

ENGINE = "vllm"
P = "inference_node_engine_"
_RATES = ("prompt_tokens", "generation_tokens", "preemptions")
_HISTOGRAMS = {
    # reading key -> (exported histogram, ``latency`` label value)
    "time_to_first_token": (P + "time_to_first_token_seconds", "ttft"),
    "inter_token_latency": (P + "inter_token_latency_seconds", "itl"),
    "e2e_request_latency": (P + "e2e_request_latency_seconds", "e2e"),
    "request_queue_time": (P + "request_queue_time_seconds", "queue"),
}


_RECHECK = 600.0
"""Seconds between checks that the endpoint's filtered answer holds every wanted series."""

Series = frozenset[tuple[str, tuple[tuple[str, str], ...]]]


def filtered_url(url: str, names: Iterable[str]) -> str:
    """The endpoint's URL asking for the samples ``names`` only, by ``name[]`` parameters.

    vLLM serves its registry twice: ``/metrics`` ignores parameters, while the
    prometheus_client app mounted under ``/metrics/`` answers ``name[]`` with those samples
    alone. Asking for 40-odd sample names instead of the whole exposition saves the engine's
    API server most of the work of writing it, and the exporter most of reading it.
    """
    parts = urlsplit(url)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    query = [parts.query] if parts.query else []
    query += [f"name%5B%5D={quote(name, safe='')}" for name in sorted(names)]
    return urlunsplit(parts._replace(path=path, query="&".join(query)))


def _series(exp: Exposition) -> Series:
    """Every sample's name and labels, to compare two answers regardless of values."""
    return frozenset((name, tuple(sorted(labels.items())))
                     for family in exp.families for name, labels, _v, _t in family.samples)


class EngineState:
    """Windows over one engine's counters and histograms, across polls."""

    def __init__(self, windows: tuple[float, ...], quantiles: tuple[float, ...],
                 interval: float) -> None:
        self.windows = windows
        self.window_labels = tuple(format_duration(w) for w in windows)
        self.quantiles = quantiles
        self.percentile_labels = tuple(f"{q * 100:g}" for q in quantiles)
        self.interval = interval
        """The poll interval: a window's start may lie up to half of it beyond the window."""
        self.horizon = max(windows) + interval
        self.window: CumulativeWindow | None = None
        """One window over every counter and histogram bucket, laid out as ``layout``."""
        self.layout: tuple[tuple[str, ...], tuple[tuple[str, tuple[float, ...]], ...]] = ((), ())
        self.index: dict[str, int] = {}
        """Each counter's place in the window's vectors."""
        self.buckets: dict[str, slice] = {}
        """Each histogram's buckets in the window's vectors."""
        self.restarts = 0
        self.last: EngineReading | None = None
        self.rates: dict[str, dict[str, float]] = {}
        """Per counter, the rates last rendered, by window label."""
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
        return False

    def update(self, t: float, r: EngineReading) -> None:
        """Take a new reading made at monotonic time ``t``."""
        restarted = self._restarted(r)
        if restarted:
            self.restarts += 1
        layout = (tuple(r.counters), tuple((k, h.bounds) for k, h in r.histograms.items()))
        if self.window is None or layout != self.layout:
            # New series or bucket bounds: their history starts afresh.
            self.window = CumulativeWindow(self.horizon)
            self.layout = layout
            self.index = {name: i for i, name in enumerate(layout[0])}
            self.buckets = {}
            start = len(layout[0])
            for name, bounds in layout[1]:
                self.buckets[name] = slice(start, start + len(bounds))
                start += len(bounds)
        self.window.add(t, [*r.counters.values(), *itertools.chain.from_iterable(
            h.counts for h in r.histograms.values())], restarted)
        self.last = r

    def render(self, out: Families, labels: str) -> None:
        """Add this engine's series to ``out``; ``labels`` identify the engine."""
        r = self.last
        if r is None:
            return
        for name, value in r.gauges.items():
            out.add(P + name, labels, value)
        for name, value in r.counters.items():
            out.add(f"{P}{name}_total", labels, value)
        for reason, value in sorted(r.finished.items()):
            out.add(P + "requests_finished_total", f"{labels},{labelstr(reason=reason)}", value)
        out.add(P + "restarts_total", labels, float(self.restarts))
        window = self.window
        assert window is not None
        deltas = self._deltas(window)
        for wl, d in deltas:
            if d is not None:
                out.add(P + "window_span_seconds", f'{labels},window="{wl}"', d[0])
        for name in _RATES:
            i = self.index.get(name)
            if i is None:
                continue
            family = f"{P}{name}_per_second"
            rates = self.rates[name] = {wl: d[1][i] / d[0] for wl, d in deltas
                                        if d is not None and d[0] > 0}
            for wl, rate in rates.items():
                out.add(family, f'{labels},window="{wl}"', rate)
        observations: list[str] = []
        percentiles: list[str] = []
        prefixes = self._latency_prefixes(labels)
        quantiles = self.quantiles
        for name, h in r.histograms.items():
            out.histogram(_HISTOGRAMS[name][0], labels, h.bounds, h.counts, h.sum)
            bucket = self.buckets[name]
            for (_wl, d), (observed, percentile) in zip(deltas[1:], prefixes[name],
                                                        strict=True):
                if d is None:
                    continue
                counts = d[1][bucket]
                observations.append(observed + fmt(counts[-1]))
                values = bucket_quantiles(quantiles, h.bounds, counts)
                percentiles.extend([prefix + fmt(v) for prefix, v in
                                    zip(percentile, values, strict=True) if v is not None])
        if observations:
            out.lines.setdefault(P + "latency_window_observations", []).extend(observations)
        if percentiles:
            out.lines.setdefault(P + "latency_seconds", []).extend(percentiles)

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
        for name, (_family, latency) in _HISTOGRAMS.items():
            rows = table[name] = []
            for wl in self.window_labels:
                wlabels = f'{labels},latency="{latency}",window="{wl}"'
                rows.append((f"{P}latency_window_observations{{{wlabels}}} ", tuple(
                    f'{P}latency_seconds{{{wlabels},percentile="{pl}"}} '
                    for pl in self.percentile_labels)))
        self._prefixes = (labels, table)
        return table


class VllmSource:
    """One vLLM endpoint: fetch, parse, normalise, derive."""

    collector = ENGINE

    def __init__(self, endpoint: Endpoint, cfg: Config,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        """Monotonic seconds the readings are stamped with (a seam for simulated time)."""
        self.endpoint = endpoint
        self.name = endpoint.name
        self.target = redact(endpoint.url)
        self.fetcher = Fetcher(endpoint.url, cfg.poll_timeout, cfg.max_response_bytes)
        self.filtered = Fetcher(filtered_url(endpoint.url, KEEP), cfg.poll_timeout,
                                cfg.max_response_bytes)
        self.filtering = False
        """Whether polls ask for the wanted samples only (see :func:`filtered_url`)."""
        self._probe: Series | None = None
        """The series of the last whole answer, for the next filtered one to be checked by."""
        self._check_at = 0.0
        self._stamp = (0.0, 0.0)
        """(monotonic, Unix) time of the middle of the last answer's request."""
        self.log = logs.get("vllm").bind(source=endpoint.name)
        self.parser = Parser()
        self.normaliser = Normaliser(cfg.max_engines_per_endpoint)
        self.windows = cfg.windows
        self.quantiles = cfg.quantiles
        self.interval = cfg.poll_interval
        self.engines: dict[EngineKey, EngineState] = {}
        self._labels = labelstr(engine=ENGINE, endpoint=endpoint.name)
        parts = urlsplit(endpoint.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.processes = EngineProcesses(port) if is_local(parts.hostname or "") else None

    def _read(self, fetcher: Fetcher) -> tuple[int, Exposition]:
        start, wall = self.clock(), time.time()
        body = fetcher.get()
        # The reading is stamped at the middle of the request that fetched it: the parse
        # after it (slow for a large or broken answer) is no part of the engine's timing.
        half = (self.clock() - start) / 2
        self._stamp = (start + half, wall + half)
        return len(body), parse_body(self.parser, body, KEEP)

    def _read_filtered(self) -> tuple[int, Exposition] | None:
        """The filtered answer; None when the endpoint has no such route (a 3xx or 4xx) or
        answers it with no samples (prometheus_client's multiprocess mode)."""
        try:
            size, exp = self._read(self.filtered)
        except FetchError as exc:
            if exc.status is None or exc.status >= 500:
                raise  # down, slow or failing: the whole answer would fare no better
            return None
        return (size, exp) if any(f.samples for f in exp.families) else None

    def _set_filtering(self, on: bool) -> None:
        if on != self.filtering:
            self.log.info("reading the wanted samples only" if on else
                          "reading the whole exposition: the endpoint's name[] filter is"
                          " missing or incomplete", names=len(KEEP))
        self.filtering = on

    def _read_endpoint(self) -> tuple[int, Exposition]:
        """One answer from the endpoint, filtered when it was found to filter faithfully.

        A whole answer is read first and then every ``_RECHECK`` seconds; the poll after it
        asks for the filtered one and keeps filtering only if that holds exactly the same
        series. Each poll makes one request, two only when a filtered answer fails.
        """
        now = time.monotonic()
        probe, self._probe = self._probe, None
        if probe is not None or (self.filtering and now < self._check_at):
            got = self._read_filtered()
            if got is not None and (probe is None or _series(got[1]) == probe):
                self._set_filtering(True)
                return got
            self._set_filtering(False)
            self._check_at = now + _RECHECK
            return self._read(self.fetcher)
        size, exp = self._read(self.fetcher)
        if now >= self._check_at:
            self._check_at = now + _RECHECK
            series = _series(exp)
            self._probe = series if series else None
        return size, exp

    def poll(self) -> PollOutput:
        size, exp = self._read_endpoint()
        t, taken_at = self._stamp
        readings, dropped = self.normaliser.normalise(exp)
        errors, first_errors = exp.errors, tuple(exp.first_errors)
        release(exp)
        if not readings:
            detail = f"; {errors} malformed lines, first: {first_errors[0]}" \
                if errors else ""
            raise SourceError("no_engine_metrics",
                              f"the response holds no vLLM metrics ({size} bytes{detail})")
        out = Families()
        seen: dict[EngineKey, EngineState] = {}
        for r in readings:
            state = self.engines.get(r.key)
            if state is None:
                state = EngineState(self.windows, self.quantiles, self.interval)
            state.update(t, r)
            seen[r.key] = state
            state.render(out, f"{self._labels},{labelstr(model=r.model, dp_rank=r.dp_rank)}")
        # Engines no longer exposed are forgotten, so their series disappear.
        self.engines = seen
        facts = self._facts(seen.values())
        if self.processes is not None:
            tree = self.processes.read()
            if tree is not None:
                out.add(P + "process_cpu_seconds_total", self._labels, tree.cpu_seconds)
                out.add(P + "process_resident_memory_bytes", self._labels,
                        float(tree.resident_bytes))
                out.add(P + "processes", self._labels, float(len(tree.pids)))
                facts["pids"] = tree.pids
        return PollOutput(out, errors, dropped, size, taken_at, first_errors, facts,
                          self.parser.cache_bytes())

    def _facts(self, states: Iterable[EngineState]) -> dict[str, Any]:
        """What the GPU attribution needs from this endpoint, summed over its engines."""
        generation: dict[str, float] = {}
        preemptions: dict[str, float] = {}
        kv = None
        for state in states:
            for wl, rate in state.rates.get("generation_tokens", {}).items():
                generation[wl] = generation.get(wl, 0.0) + rate
            for wl, rate in state.rates.get("preemptions", {}).items():
                preemptions[wl] = preemptions.get(wl, 0.0) + rate
            usage = state.last.gauges.get("kv_cache_usage_ratio") if state.last else None
            if usage is not None:
                kv = usage if kv is None else max(kv, usage)
        return {"endpoint": self.name, "generation_tokens_per_second": generation,
                "preemptions_per_second": preemptions, "kv_cache_usage_ratio": kv}

    def health(self, up: bool, last_success: float | None, families: Families) -> None:
        families.add(P + "up", self._labels, 1.0 if up else 0.0)
        if last_success is not None:
            families.add(P + "last_success_timestamp_seconds", self._labels, last_success)

    def close(self) -> None:
        self.fetcher.close()
        self.filtered.close()
