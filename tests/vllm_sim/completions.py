"""The engines' streaming requests, as the canary probe (``exporter/canary``) sends them.

OpenAI-compatible engines (vLLM, SGLang, llama.cpp, TGI, LMDeploy, trtllm-serve): ``GET
/v1/models`` and ``POST /v1/completions``; Triton: ``POST /v2/repository/index`` and ``POST
/v2/models/<model>[/versions/<v>]/generate_stream``. A stream is server-sent events in HTTP/1.1
chunked framing (as uvicorn, axum, cpp-httplib and Triton send them), one ``data:`` event per
token, paced by ``SimServer.first_token_delay`` and ``SimServer.token_delay``; a completions
stream then has the usage chunk (``stream_options.include_usage``) and ``data: [DONE]``, a
Triton stream just ends. The stream faults are :data:`.faults.STREAM_FAULT_MODES`.

An unknown model is answered in each engine's way (:mod:`.streaming`). The tokens served
are added to the engine's counters (:mod:`.ledger`).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .faults import GARBAGE_EVENT, StreamFault, parse_stream_fault
from .streaming import StreamRequest

if TYPE_CHECKING:
    from .server import SimServer

__all__ = ["TOKENS", "handle_post", "route"]

JSON = "application/json"
TOKENS = (" The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")
"""The generated text, one entry per token, over and over."""
DEFAULT_MAX_TOKENS = 16
"""vLLM's default for a completion's ``max_tokens``."""
_GENERATE = re.compile(r"/v2/models/([^/]+)(?:/versions/[^/]+)?/generate_stream")


def route(sim: SimServer, path: str) -> tuple[str, bytes] | None:
    """(content type, body) of a GET the server answers beside its metrics, or None:
    the dialect's routes, and ``/v1/models`` for every OpenAI-compatible one."""
    flavour, fault = sim.flavour, sim.stream_fault
    if flavour.api != "openai" or path != "/v1/models":
        return sim.routes.get(path)
    names = sim.served_models(fault)
    if sim.dialect is not None:
        routes = sim.routes if fault.mode != "wrong_model" else sim.dialect.routes(
            tuple(replace(e, model=names[0]) for e in sim.scenario.engines))
        if "/v1/models" in routes:
            return routes["/v1/models"]
    created = int(time.time())
    cards: list[dict[str, Any]] = [
        {"id": m, "object": "model", "created": created, "owned_by": flavour.owned_by,
         "root": m, "parent": None, "max_model_len": 8192, "permission": []} for m in names]
    return JSON, json.dumps({"object": "list", "data": cards}).encode()


def handle_post(handler: BaseHTTPRequestHandler, sim: SimServer, path: str,
                raw: bytes) -> bool:
    """Answer a POST of the streaming API or of its controls (``/_sim/stream_fault``,
    ``/_sim/pace``); False when `path` is none of them."""
    if path in ("/_sim/stream_fault", "/_sim/pace"):
        _control(handler, sim, path, raw)
        return True
    if sim.flavour.api == "openai" and path == "/v1/completions":
        _serve(handler, sim, path, raw, None)
        return True
    if sim.flavour.api == "triton":
        if path == "/v2/repository/index":
            index = [{"name": m, "version": "1", "state": "READY"}
                     for m in sim.served_models()]
            _reply(handler, 200, json.dumps(index).encode())
            return True
        match = _GENERATE.fullmatch(path)
        if match is not None:
            _serve(handler, sim, path, raw, unquote(match[1]))
            return True
    return False


def _control(handler: BaseHTTPRequestHandler, sim: SimServer, path: str, raw: bytes) -> None:
    try:
        data = json.loads(raw or b"{}")
        if path == "/_sim/stream_fault":
            fault = parse_stream_fault(data)
            sim.set_stream_fault(fault.mode, seconds=fault.seconds, tokens=fault.tokens,
                                 model=fault.model, count=fault.count)
            answer: dict[str, Any] = asdict(fault)
        else:
            sim.set_pace(**_pace(data))
            answer = {"first_token_delay": sim.first_token_delay,
                      "token_delay": sim.token_delay}
    except (ValueError, UnicodeDecodeError) as exc:
        _reply(handler, 400, json.dumps({"error": str(exc)}).encode())
        return
    _reply(handler, 200, json.dumps(answer).encode())


def _pace(data: object) -> dict[str, float]:
    if not isinstance(data, dict) or not set(data) <= {"first_token_delay", "token_delay"}:
        raise ValueError("pace: a JSON object with first_token_delay and/or token_delay")
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"pace.{key}: must be a number >= 0")
    return {k: float(v) for k, v in data.items()}


@dataclass(frozen=True)
class _Request:
    model: str | None
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool


def _parse(body: Any, triton: bool) -> _Request:
    """The request's fields, or ValueError naming what is wrong."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    prompt = body.get("text_input" if triton else "prompt")
    if isinstance(prompt, str):
        prompt_tokens = len(prompt.split())
    elif not triton and isinstance(prompt, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt_tokens = len(prompt)
    else:
        raise ValueError("text_input: must be a string" if triton else
                         "prompt: must be a string or a list of token ids")
    max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens!r}")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ValueError("model: must be a string")
    options = body.get("stream_options")
    usage = isinstance(options, dict) and options.get("include_usage") is True
    return _Request(model, prompt_tokens, max_tokens, triton or body.get("stream") is True,
                    usage)


def _serve(handler: BaseHTTPRequestHandler, sim: SimServer, path: str, raw: bytes,
           triton_model: str | None) -> None:
    """One completions or generate_stream request, under the stream fault in effect."""
    fault, flavour = sim.take_stream_fault(), sim.flavour
    try:
        body: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        body = None

    def log(status: int, tokens: int, outcome: str) -> None:
        sim.stream_requests.append(StreamRequest(path, body, status, tokens, outcome))

    if fault.mode == "close":
        log(0, 0, "closed")
        _close(handler)
        return
    if fault.mode == "status500":
        log(500, 0, "error")
        _reply(handler, 500, flavour.error(500, "simulated internal server error"))
        return
    try:
        request = _parse(body, triton_model is not None)
    except ValueError as exc:
        log(400, 0, "error")
        _reply(handler, 400, flavour.error(400, str(exc)))
        return
    served = sim.served_models(fault)
    model = triton_model or request.model or served[0]
    if model not in served and (triton_model is not None or sim.model_check):
        log(flavour.not_found, 0, "error")
        _reply(handler, flavour.not_found, flavour.error(flavour.not_found,
                                                         flavour.message(model)))
        return
    engine = next((i for i, e in enumerate(sim.scenario.engines) if e.model == model), 0)
    if not request.stream:
        _whole(handler, sim, engine, model, request, fault, log)
        return
    job = _Job(sim, engine, model, request, fault, triton_model is not None,
               f"cmpl-{uuid.uuid4().hex}", int(time.time()))
    out = _Sse(handler)
    sent, outcome = _tokens(out, job)
    # Counted and logged before the answer ends, so that a client that has read it all
    # finds the request in the counters and the log.
    sim.add_tokens(engine, finished="abort" if outcome != "done" else
                   "stop" if sent < request.max_tokens else "length")
    log(200, sent, outcome)
    if outcome != "done":
        _close(handler)
        return
    with contextlib.suppress(OSError):
        _tail(out, job, sent)


def _plan(sim: SimServer, request: _Request, fault: StreamFault) -> tuple[int, float, float]:
    """Tokens to generate, and the delays before the first and each later one."""
    count = min(request.max_tokens, fault.tokens) if fault.mode == "short" \
        else request.max_tokens
    if fault.mode == "slow":
        return count, fault.seconds, fault.seconds
    return count, sim.first_token_delay, sim.token_delay


@dataclass(frozen=True)
class _Job:
    """One stream being answered."""

    sim: SimServer
    engine: int
    model: str
    request: _Request
    fault: StreamFault
    triton: bool
    ident: str
    created: int


def _tokens(out: _Sse, job: _Job) -> tuple[int, str]:
    """Send the headers and the token events, each counted before it is sent; the tokens
    sent and the outcome (``done``: all of them, ``cut``, ``stopped`` or ``gone``)."""
    sim, request, fault = job.sim, job.request, job.fault
    count, first, later = _plan(sim, request, fault)
    i = 0
    try:
        out.start()
        for i in range(count):
            if fault.mode == "cut" and i == fault.tokens:
                return i, "cut"
            if sim.stopping.wait(first if i == 0 else later):
                return i, "stopped"
            if fault.mode == "garbage" and i == fault.tokens:
                out.raw(GARBAGE_EVENT)
            text = TOKENS[i % len(TOKENS)]
            if job.triton:
                event: dict[str, Any] = {"model_name": job.model, "model_version": "1",
                                         "text_output": text}
            else:
                finish = None if i < count - 1 else \
                    "stop" if count < request.max_tokens else "length"
                event = {"id": job.ident, "object": "text_completion", "created": job.created,
                         "model": job.model,
                         "choices": [{"index": 0, "text": text, "logprobs": None,
                                      "finish_reason": finish, "stop_reason": None}]}
                if request.include_usage:
                    event["usage"] = None
            sim.add_tokens(job.engine, prompt=request.prompt_tokens if i == 0 else 0,
                           generation=1)
            out.event(json.dumps(event).encode())
    except OSError:
        return i, "gone"
    return count, "cut" if fault.mode == "cut" else "done"


def _tail(out: _Sse, job: _Job, count: int) -> None:
    """A finished stream's end: the usage chunk and ``[DONE]`` of a completion, then the
    chunked framing's end."""
    request = job.request
    if job.fault.mode == "garbage" and job.fault.tokens >= count:
        out.raw(GARBAGE_EVENT)
    if not job.triton:
        if request.include_usage:
            prompt = request.prompt_tokens
            if job.fault.mode == "lying_usage":
                prompt = count = job.fault.tokens
            usage = {"prompt_tokens": prompt, "completion_tokens": count,
                     "total_tokens": prompt + count}
            out.event(json.dumps({"id": job.ident, "object": "text_completion",
                                  "created": job.created, "model": job.model, "choices": [],
                                  "usage": usage}).encode())
        out.event(b"[DONE]")
    out.end()


def _whole(handler: BaseHTTPRequestHandler, sim: SimServer, engine: int, model: str,
           request: _Request, fault: StreamFault, log: Callable[[int, int, str], None]) -> None:
    """A completion without ``stream``: one JSON answer once every token is made."""
    count, first, later = _plan(sim, request, fault)
    if sim.stopping.wait(first + later * (count - 1)):
        log(0, 0, "stopped")
        _close(handler)
        return
    sim.add_tokens(engine, prompt=request.prompt_tokens, generation=count,
                   finished="stop" if count < request.max_tokens else "length")
    text = "".join(TOKENS[i % len(TOKENS)] for i in range(count))
    answer = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
              "created": int(time.time()), "model": model,
              "choices": [{"index": 0, "text": text, "logprobs": None,
                           "finish_reason": "stop" if count < request.max_tokens else "length",
                           "stop_reason": None}],
              "usage": {"prompt_tokens": request.prompt_tokens, "completion_tokens": count,
                        "total_tokens": request.prompt_tokens + count}}
    log(200, count, "done")
    _reply(handler, 200, json.dumps(answer).encode())


class _Sse:
    """A server-sent-events answer in HTTP/1.1 chunked framing, one chunk per write."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self.handler = handler

    def start(self) -> None:
        h = self.handler
        h.protocol_version = "HTTP/1.1"
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream; charset=utf-8")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Connection", "close")
        h.end_headers()

    def raw(self, data: bytes) -> None:
        self.handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.handler.wfile.flush()

    def event(self, data: bytes) -> None:
        self.raw(b"data: " + data + b"\n\n")

    def end(self) -> None:
        self.handler.wfile.write(b"0\r\n\r\n")
        self.handler.wfile.flush()


def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    handler.protocol_version = "HTTP/1.1"
    handler.send_response(status)
    handler.send_header("Content-Type", JSON)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(body)


def _close(handler: BaseHTTPRequestHandler) -> None:
    """Close the connection now, without the answer's end."""
    handler.close_connection = True
    with contextlib.suppress(OSError):
        handler.connection.shutdown(socket.SHUT_RDWR)
