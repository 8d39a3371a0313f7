"""One engine endpoint, for every adapter: fetch, parse, normalise, derive, render.

The adapter (see :mod:`exporter.engines`) says what to read and how to normalise it; this
source does the rest the same way for every engine: readings stamped at the middle of their
request, one :class:`~exporter.derive.engine_state.EngineState` per (model, rank), the
endpoint's processes when it is on this host, and the facts the GPU join reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from exporter import logs
from exporter.collectors.base import PollOutput, SourceError
from exporter.collectors.environment import read_cpus_allowed
from exporter.collectors.filtering import FilteredReader
from exporter.config import Config, Endpoint
from exporter.derive.engine_state import EngineState, Figures
from exporter.derive.join import EngineFacts, Facts
from exporter.engines.adapter import Adapter
from exporter.engines.reading import EngineKey
from exporter.expfmt import Exposition, Parser
from exporter.expfmt_body import parse_body, release
from exporter.exposition.family import Spec
from exporter.exposition.lines import Families, labelstr
from exporter.fetch import Fetcher, FetchError, redact
from exporter.processes import EngineProcesses, is_local

__all__ = ["EngineSource"]

_EP = ("engine", "endpoint")
UP = Spec("inference_node_engine_up", "gauge",
          "1 if the engine's metrics endpoint answered the last poll, else 0.", _EP)
LAST_SUCCESS = Spec("inference_node_engine_last_success_timestamp_seconds", "gauge",
                    "Unix time of the last successful poll of the engine's metrics endpoint.",
                    _EP)
PROCESS_CPU = Spec(
    "inference_node_engine_process_cpu_seconds_total", "counter",
    "CPU time of the engine's processes (the endpoint's listener and its descendants).", _EP)
PROCESS_MEMORY = Spec("inference_node_engine_process_resident_memory_bytes", "gauge",
                      "Resident memory of the engine's processes.", _EP)
PROCESSES = Spec("inference_node_engine_processes", "gauge",
                 "Processes found behind the engine endpoint; absent when it is not on this"
                 " host.", _EP)


class EngineSource:
    """One endpoint of one engine, read through its adapter."""

    def __init__(self, adapter: Adapter, endpoint: Endpoint, cfg: Config,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.adapter = adapter
        self.collector = adapter.kind
        self.clock = clock
        """Monotonic seconds the readings are stamped with (a seam for simulated time)."""
        self.endpoint = endpoint
        self.name = endpoint.name
        self.target = redact(endpoint.url)
        self.log = logs.get(adapter.kind).bind(source=endpoint.name)
        self.fetcher = Fetcher(endpoint.url, cfg.poll_timeout, cfg.max_response_bytes)
        self.filtered = FilteredReader(endpoint.url, adapter.keep, cfg, self.log) \
            if adapter.filters_by_name else None
        """Asks for the wanted samples only, where the endpoint does so faithfully."""
        self._stamp = (0.0, 0.0)
        """(monotonic, Unix) time of the middle of the last answer's request."""
        self.parser = Parser()
        self.normaliser = adapter.normaliser(cfg.engine(adapter.kind).max_engines_per_endpoint)
        self.windows = cfg.windows
        self.quantiles = cfg.quantiles
        self.interval = cfg.poll_interval
        self.engines: dict[EngineKey, EngineState] = {}
        self._labels = labelstr(engine=adapter.kind, endpoint=endpoint.name)
        parts = urlsplit(endpoint.url)
        info = adapter.model_info
        self.model_fetcher = None if info is None else Fetcher(
            urlunsplit((parts.scheme, parts.netloc, info.path, "", "")), cfg.poll_timeout,
            cfg.max_response_bytes)
        """Asks the engine which model it serves, where its samples do not say."""
        self.model = ""
        self._asked = False
        """Whether :attr:`model` was asked since the last failed poll (a restart may have
        brought another model)."""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.processes = EngineProcesses(port, adapter.processes, adapter.default_port) \
            if is_local(parts.hostname or "") else None
        self.procfs = Path(cfg.procfs)
        """Where the processes' allowed CPUs are read (``<pid>/status``)."""
        self._cpus: dict[int, frozenset[int] | None] = {}
        """Each engine process's allowed CPUs, read once per process, not every poll."""

    @property
    def filtering(self) -> bool:
        """Whether polls ask for the wanted samples only (see :mod:`.filtering`)."""
        return self.filtered is not None and self.filtered.filtering

    def read(self, fetcher: Fetcher) -> tuple[int, Exposition]:
        """Fetch and parse one answer, stamping the reading at the middle of its request: the
        parse after it (slow for a large or broken answer) is no part of the engine's timing."""
        start, wall = self.clock(), time.time()
        body = fetcher.get()
        half = (self.clock() - start) / 2
        self._stamp = (start + half, wall + half)
        return len(body), parse_body(self.parser, body, self.adapter.keep)

    def _served_model(self) -> str:
        """The model the engine serves, asked once after each failed poll; ``unknown`` when
        the engine does not say (the samples are still read)."""
        info, fetcher = self.adapter.model_info, self.model_fetcher
        if info is None or fetcher is None:
            return ""
        if not self._asked:
            self._asked = True
            try:
                name = info.parse(fetcher.get())
            except (FetchError, ValueError) as e:
                name = None
                self.log.warning("the engine does not say which model it serves; its series"
                                 " are labelled model=\"unknown\"", reason=str(e))
            self.model = name or "unknown"
        return self.model

    def poll(self) -> PollOutput:
        try:
            return self._poll()
        except BaseException:
            self._asked = False
            raise

    def _poll(self) -> PollOutput:
        if self.filtered is not None:
            size, exp = self.filtered.read(self.read, self.fetcher)
        else:
            size, exp = self.read(self.fetcher)
        t, taken_at = self._stamp
        readings, dropped = self.normaliser.normalise(exp, self._served_model())
        errors, first_errors = exp.errors, tuple(exp.first_errors)
        release(exp)
        if not readings:
            detail = f"; {errors} malformed lines, first: {first_errors[0]}" \
                if errors else ""
            raise SourceError("no_engine_metrics", f"the response holds no"
                              f" {self.adapter.title} metrics ({size} bytes{detail})")
        out = Families()
        seen: dict[EngineKey, EngineState] = {}
        figures: list[tuple[EngineState, Figures]] = []
        for r in readings:
            state = self.engines.get(r.key)
            if state is None:
                state = EngineState(self.windows, self.quantiles, self.interval,
                                    self.adapter.counted_at_request_end)
            f = state.update(t, r)
            figures.append((state, f))
            seen[r.key] = state
            state.render(out, f"{self._labels},{labelstr(model=r.model, dp_rank=r.dp_rank)}", f)
        # Engines no longer exposed are forgotten, so their series disappear.
        self.engines = seen
        return PollOutput(out, errors, dropped, size, taken_at, first_errors,
                          Facts(engine=self._facts(figures, self._processes(out))),
                          self.parser.cache_bytes())

    def _processes(self, out: Families) -> frozenset[int]:
        """Add the endpoint's process series; their pids (empty when not on this host)."""
        if self.processes is None:
            return frozenset()
        tree = self.processes.read()
        if tree is None:
            return frozenset()
        out.add(PROCESS_CPU.name, self._labels, tree.cpu_seconds)
        out.add(PROCESS_MEMORY.name, self._labels, float(tree.resident_bytes))
        out.add(PROCESSES.name, self._labels, float(len(tree.pids)))
        return tree.pids

    def _facts(self, figures: Iterable[tuple[EngineState, Figures]],
               pids: frozenset[int]) -> EngineFacts:
        """What the GPU join needs from this endpoint, summed over its engines."""
        generation: dict[str, float] = {}
        preemptions: dict[str, float] = {}
        kv = None
        for state, f in figures:
            for wl, rate in f.rates.get("generation_tokens", {}).items():
                generation[wl] = generation.get(wl, 0.0) + rate
            for wl, rate in f.rates.get("preemptions", {}).items():
                preemptions[wl] = preemptions.get(wl, 0.0) + rate
            usage = state.last.gauges.get("kv_cache_usage_ratio") if state.last else None
            if usage is not None:
                kv = usage if kv is None else max(kv, usage)
        known = self._cpus
        self._cpus = {pid: known[pid] if pid in known else read_cpus_allowed(self.procfs, pid)
                      for pid in pids}
        cpus = {pid: c for pid, c in sorted(self._cpus.items()) if c is not None}
        return EngineFacts(self.adapter.kind, self.name, pids, generation, preemptions, kv,
                           cpus)

    def health(self, up: bool, last_success: float | None, families: Families) -> None:
        families.add(UP.name, self._labels, 1.0 if up else 0.0)
        if last_success is not None:
            families.add(LAST_SUCCESS.name, self._labels, last_success)

    def close(self) -> None:
        self.fetcher.close()
        if self.model_fetcher is not None:
            self.model_fetcher.close()
        if self.filtered is not None:
            self.filtered.close()
