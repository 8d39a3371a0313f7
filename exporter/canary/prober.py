"""One thread per probed endpoint: a fixed streaming request on a fixed cadence, one in
flight, a hard deadline, no retry inside an interval; each probe's outcome and timings go to
the endpoint's :class:`~exporter.canary.record.Record`.

The probe runs beside the endpoint's poll worker and shares nothing with it but the engine:
whatever the probe meets (an engine down, a stalled or cut stream, a wrong model) changes
only the canary's own series.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter import logs
from exporter.canary.api import ProbeApi, ProbeError, prompt_text, read_chunk
from exporter.canary.record import Probe, Record
from exporter.canary.stream import Client
from exporter.fetch import redact
from exporter.logs import printable
from exporter.worker import next_due

__all__ = ["Prober", "Settings", "Target"]


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint to probe."""

    engine: str
    """The engine kind (the ``engine`` label)."""
    endpoint: str
    """The polled endpoint's name (the ``endpoint`` label)."""
    api_url: str
    """The engine's API base URL (``http://host:port``)."""
    api: ProbeApi
    model: str | None = None
    """The model to ask for; None: the first the engine lists."""
    api_key: str | None = field(default=None, repr=False)
    """Sent as a bearer token."""


SPECIAL_TOKENS = 16
"""Prompt tokens an engine may add to the prompt's own (begin-of-sequence and the like);
the prompt's own are at most one a byte."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The probe's request and cadence, the same for every endpoint."""

    interval: float = 10.0
    timeout: float = 8.0
    prompt_tokens: int = 32
    max_tokens: int = 16


@dataclass(slots=True)
class _Stream:
    """What one probe's stream delivered so far."""

    tokens: int = 0
    first: float | None = None
    last: float | None = None
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    done: bool = False


class Prober:
    """Probes one target until stopped; never lets an exception end the thread."""

    def __init__(self, target: Target, settings: Settings, record: Record,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.settings = settings
        self.record = record
        self._clock = clock
        self._client = Client(target.api_url, target.api_key)
        self._prompt = prompt_text(settings.prompt_tokens)
        self._most_prompt_tokens = len(self._prompt.encode()) + SPECIAL_TOKENS
        self._model = target.model
        self._failing: str | None = None
        self.last_outcome = "not probed yet"
        """The last probe's outcome, for the landing page."""
        self.log = logs.get("canary").bind(engine=target.engine, endpoint=target.endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"canary-{target.engine}-{target.endpoint}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; a probe in flight ends by its deadline at the latest."""
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            try:
                self.probe_once()
            except Exception:  # a bug must not end probing
                self.log.exception("canary probe failed unexpectedly")
            now = time.monotonic()
            due = next_due(due + self.settings.interval, now, self.settings.interval)
            self._stop.wait(due - now)

    def probe_once(self) -> str:
        """Send one probe now, record it and return its outcome."""
        got = _Stream()
        s = self.settings
        deadline = self._clock() + s.timeout
        model = self._model
        try:
            if model is None:
                model = self._discover_model(deadline)
            path, body = self.target.api.request(model, self._prompt, s.max_tokens)
            started = self._clock()
            gaps = self._read(path, body, deadline, got)
            ended = self._clock()
            self._check(got)
        except ProbeError as exc:
            return self._failed(exc, got)
        generated = got.completion_tokens if got.completion_tokens is not None else got.tokens
        self.record.count("success", generated, got.prompt_tokens)
        assert got.first is not None  # _check saw a token
        self.record.succeed(model, Probe(ended, got.first - started, ended - started, gaps),
                            time.time())
        self._model = self._model or model
        if self._failing is not None:
            self.log.info("canary probe succeeds again", model=model)
            self._failing = None
        self.last_outcome = "success"
        return "success"

    def _discover_model(self, deadline: float) -> str:
        method, path = self.target.api.models_path()
        model = self.target.api.model_from(self._client.fetch(method, path, deadline))
        if model is None:
            raise ProbeError("no_model", f"{path} names no model; set the canary's model")
        return model

    def _read(self, path: str, body: bytes, deadline: float, got: _Stream) -> array[float]:
        gaps = array("d")
        for arrived, data in self._client.stream(path, body, deadline):
            chunk = read_chunk(self.target.api, data)
            if chunk is None:
                got.done = True
                break
            self._believe(chunk.completion_tokens, chunk.prompt_tokens)
            if chunk.completion_tokens is not None:
                got.completion_tokens = chunk.completion_tokens
            if chunk.prompt_tokens is not None:
                got.prompt_tokens = chunk.prompt_tokens
            if chunk.token:
                got.tokens += 1
                if got.last is None:
                    got.first = arrived
                else:
                    gaps.append(arrived - got.last)
                got.last = arrived
        if self.target.api.kind == "triton":
            got.done = True  # its stream ends with the answer
        return gaps

    def _believe(self, completion: int | None, prompt: int | None) -> None:
        """Refuse a usage report no engine could make for this request, so that one lie
        cannot jump the token counters."""
        if completion is not None and completion > self.settings.max_tokens:
            raise ProbeError("bad_stream", f"the engine reports {completion} generated"
                             f" tokens for a probe of at most {self.settings.max_tokens}")
        if prompt is not None and prompt > self._most_prompt_tokens:
            raise ProbeError("bad_stream", f"the engine reports {prompt} prompt tokens for"
                             f" a prompt of {len(self._prompt.encode())} bytes")

    def _check(self, got: _Stream) -> None:
        if not got.done:
            raise ProbeError("stream_cut", f"the stream ended after {got.tokens} tokens,"
                             " before its [DONE]")
        if got.tokens == 0:
            raise ProbeError("short", "the stream held no token")
        generated = got.completion_tokens if got.completion_tokens is not None else got.tokens
        if self.target.api.ignore_eos and generated < self.settings.max_tokens:
            raise ProbeError("short", f"{generated} tokens of the {self.settings.max_tokens}"
                             " asked for, with ignore_eos")

    def _failed(self, exc: ProbeError, got: _Stream) -> str:
        generated = got.completion_tokens if got.completion_tokens is not None else got.tokens
        self.record.count(exc.reason, generated, got.prompt_tokens)
        if exc.reason == "model_not_found" and self.target.model is None:
            self._model = None  # the engine may serve another model now: ask it again
        if self._failing != exc.reason:
            self.log.warning("canary probe failing", reason=exc.reason,
                             error=printable(str(exc)), url=redact(self.target.api_url))
            self._failing = exc.reason
        self.last_outcome = exc.reason
        return exc.reason
