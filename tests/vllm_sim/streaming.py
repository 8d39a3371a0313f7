"""What a simulated server knows about its streaming requests: each engine's flavour of the
API and its errors (:data:`FLAVOURS`), and the state a test sets (:class:`Streaming`: the
pace, the stream fault, whether model names are checked) and reads (the requests answered).

An unknown model is answered in each engine's way: vLLM, LMDeploy and trtllm-serve 404,
SGLang 400, with ``{"object": "error", ...}``; llama.cpp (its router's "model not found")
and TGI 400 with ``{"error": {...}}``; Triton 400 with ``{"error": ...}``. (TGI and a
single-model llama.cpp take any name: ``model_check = False`` does so.)
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from typing import Any

from .dialects import Dialect
from .faults import StreamFault, parse_stream_fault
from .scenario import Scenario

__all__ = ["FLAVOURS", "Flavour", "StreamRequest", "Streaming", "flavour_of"]


def _does_not_exist(model: str) -> str:
    return f"The model `{model}` does not exist."


@dataclass(frozen=True)
class Flavour:
    """How one engine's server speaks the streaming API and its errors."""

    name: str
    api: str
    """``openai`` (``/v1/completions``) or ``triton`` (``generate_stream``)."""
    not_found: int
    """HTTP status of the answer to an unknown model."""
    types: tuple[str, str, str]
    """The error ``type`` for an unknown model, a bad request and a server error."""
    nested: bool
    """Errors as ``{"error": {...}}`` (else vLLM's ``{"object": "error", ...}``)."""
    owned_by: str
    unknown: str = ""
    """The unknown-model message with ``{model}`` (empty: vLLM's "does not exist")."""

    def message(self, model: str) -> str:
        return self.unknown.format(model=model) if self.unknown else _does_not_exist(model)

    def error(self, status: int, message: str) -> bytes:
        """The engine's error body for `status` (its type chosen from the status)."""
        if self.api == "triton":
            return json.dumps({"error": message}).encode()
        kind = self.types[2] if status >= 500 else \
            self.types[0] if status in (404, self.not_found) and "model" in message else \
            self.types[1]
        if self.nested:
            return json.dumps({"error": {"code": status, "message": message,
                                         "type": kind}}).encode()
        return json.dumps({"object": "error", "message": message, "type": kind,
                           "param": None, "code": status}).encode()


_VLLM_TYPES = ("NotFoundError", "BadRequestError", "InternalServerError")
FLAVOURS: dict[str, Flavour] = {f.name: f for f in (
    Flavour("vllm", "openai", 404, _VLLM_TYPES, False, "vllm"),
    Flavour("sglang", "openai", 400, ("BadRequestError", "BadRequestError",
                                      "InternalServerError"), False, "sglang"),
    Flavour("lmdeploy", "openai", 404, ("invalid_request_error", "invalid_request_error",
                                        "internal_error"), False, "lmdeploy"),
    Flavour("trtllm", "openai", 404, _VLLM_TYPES, False, "tensorrt_llm"),
    Flavour("llamacpp", "openai", 400, ("invalid_request_error", "invalid_request_error",
                                        "server_error"), True, "llamacpp", "model not found"),
    Flavour("tgi", "openai", 400, ("invalid_request_error", "invalid_request_error",
                                   "server_error"), True, "tgi"),
    Flavour("triton", "triton", 400, ("", "", ""), False, "triton",
            "Request for unknown model: '{model}' is not found"),
)}
"""The engines' servers by adapter kind (``vllm`` for the simulator's own exposition)."""


def flavour_of(dialect: Dialect | None) -> Flavour:
    """The streaming API of the engine whose exposition `dialect` is (None: vLLM)."""
    return FLAVOURS["vllm" if dialect is None else dialect.kind]


@dataclass(frozen=True)
class StreamRequest:
    """One streaming request the simulator answered, as ``SimServer.stream_requests`` logs
    it."""

    path: str
    body: Any
    """The decoded JSON body (None when it was not JSON)."""
    status: int
    """The HTTP status answered; 0 when the connection was closed instead."""
    tokens: int
    """Token events sent."""
    outcome: str
    """``done``, ``cut``, ``stopped`` (the server stopped), ``gone`` (the client left),
    ``error`` (an error answer) or ``closed``."""


class Streaming:
    """The streaming half of a :class:`~tests.vllm_sim.SimServer` (a base class of it)."""

    scenario: Scenario
    _lock: threading.Lock

    def _init_streaming(self, dialect: Dialect | None, first_token_delay: float,
                        token_delay: float) -> None:
        self.flavour = flavour_of(dialect)
        """The streaming API and error bodies of the dialect's engine."""
        self.first_token_delay = first_token_delay
        """Seconds from a streaming request to its first token."""
        self.token_delay = token_delay
        """Seconds between a stream's later tokens."""
        self.model_check = True
        """Whether a completion naming a model the server does not serve is refused."""
        self.stream_requests: list[StreamRequest] = []
        """Every streaming request answered, in order."""
        self._stream_fault = StreamFault()

    def set_pace(self, first_token_delay: float | None = None,
                 token_delay: float | None = None) -> None:
        """Set the seconds to a stream's first token and between its later ones."""
        if first_token_delay is not None:
            self.first_token_delay = first_token_delay
        if token_delay is not None:
            self.token_delay = token_delay

    def set_stream_fault(self, mode: str, seconds: float = 10.0, tokens: int = 1,
                         model: str = "other-model", count: int | None = None) -> None:
        """Make the next `count` (default: all) streaming requests misbehave as `mode`
        (one of STREAM_FAULT_MODES; ``"none"`` switches it off)."""
        fault = parse_stream_fault({"mode": mode, "seconds": seconds, "tokens": tokens,
                                    "model": model, "count": count})
        with self._lock:
            self._stream_fault = fault

    @property
    def stream_fault(self) -> StreamFault:
        """The stream fault in effect."""
        return self._stream_fault

    def take_stream_fault(self) -> StreamFault:
        """The stream fault for one request, counting it against the fault's `count`."""
        with self._lock:
            fault = self._stream_fault
            if fault.count is not None:
                left = fault.count - 1
                self._stream_fault = replace(fault, count=left) if left else StreamFault()
            return fault

    def served_models(self, fault: StreamFault | None = None) -> list[str]:
        """The model names served under `fault` (default: the one in effect): the
        scenario's, or the ``wrong_model`` fault's."""
        fault = self._stream_fault if fault is None else fault
        if fault.mode == "wrong_model":
            return [fault.model]
        return list(dict.fromkeys(e.model for e in self.scenario.engines))
