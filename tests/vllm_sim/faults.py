"""The simulator's faults: what a GET /metrics answers instead of the exposition."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

FAULT_MODES: tuple[str, ...] = (
    "none",
    "status500",
    "hang",
    "garbage",
    "huge",
    "slow_drip",
    "partial_garbage",
    "close",
)
DRIP_INTERVAL = 0.5
MALFORMED_LINES: tuple[bytes, ...] = (
    b'vllm:num_requests_running{model_name="broken" 3.0\n',
    b"this line is not a metric sample\n",
    b'vllm:generation_tokens_total{model_name="broken"} twelve\n',
)


@dataclass(frozen=True)
class Fault:
    """An injected /metrics misbehaviour; `count` limits how many responses it affects."""

    mode: str = "none"
    seconds: float = 0.0
    count: int | None = None


def parse_fault(data: object) -> Fault:
    """Validate a /_sim/fault body; `seconds` (alias `megabytes`) is the size for `huge`."""
    if not isinstance(data, dict):
        raise ValueError("fault: body must be a JSON object")
    unknown = sorted(set(data) - {"mode", "seconds", "megabytes", "count"})
    if unknown:
        raise ValueError(f"fault: unknown key(s) {unknown}")
    mode = data.get("mode")
    if mode not in FAULT_MODES:
        raise ValueError(f"fault.mode: must be one of {list(FAULT_MODES)}, got {mode!r}")
    seconds = data.get("megabytes", data.get("seconds", 0))
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ValueError("fault.seconds: must be a number >= 0")
    count = data.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError("fault.count: must be an integer >= 1")
    return Fault(mode=mode, seconds=float(seconds), count=count)


def huge_body(head: bytes, model: str, megabytes: float) -> Iterator[bytes]:
    """The normal exposition followed by valid-looking padding samples up to `megabytes` MiB."""
    target = int(megabytes * 1024 * 1024)
    yield head
    sent = len(head)
    header = b"# HELP vllm:sim_padding Padding.\n# TYPE vllm:sim_padding gauge\n"
    yield header
    sent += len(header)
    i = 0
    while sent < target:
        lines = b"".join(
            f'vllm:sim_padding{{engine="0",idx="{n:09d}",model_name="{model}"}} 1.0\n'.encode()
            for n in range(i, i + 1000)
        )
        i += 1000
        yield lines
        sent += len(lines)


def mix_in_garbage(body: bytes) -> bytes:
    lines = body.splitlines(keepends=True)
    step = max(1, len(lines) // (len(MALFORMED_LINES) + 1))
    for k, bad in enumerate(MALFORMED_LINES):
        lines.insert(step * (k + 1) + k, bad)
    return b"".join(lines)


# --- streaming requests (the canary's /v1/completions and generate_stream) -----------------

STREAM_FAULT_MODES: tuple[str, ...] = (
    "none",
    "slow",
    "cut",
    "wrong_model",
    "garbage",
    "short",
    "status500",
    "close",
    "lying_usage",
)
"""What a streaming request meets: ``slow`` paces every token (the first included)
``seconds`` apart; ``cut`` closes the connection after ``tokens`` tokens, without the
chunked framing's end or ``[DONE]``; ``wrong_model`` serves ``model`` instead of the
scenario's (listings name it, requests for the scenario's model are not found);
``garbage`` writes a non-JSON ``data:`` line after ``tokens`` tokens, then the rest;
``short`` ends normally after ``tokens`` tokens (an end of sequence); ``status500``
answers HTTP 500; ``close`` closes the connection before any answer; ``lying_usage``
streams normally, then a usage report of ``tokens`` prompt and generated tokens."""
GARBAGE_EVENT = b"data: <html><body>502 Bad Gateway</body></html>\n\n"


@dataclass(frozen=True)
class StreamFault:
    """An injected streaming-request misbehaviour; `count` limits how many requests it
    affects (None: all until switched off)."""

    mode: str = "none"
    seconds: float = 10.0
    tokens: int = 1
    model: str = "other-model"
    count: int | None = None


def parse_stream_fault(data: object) -> StreamFault:
    """Validate a /_sim/stream_fault body (the fields of :class:`StreamFault`)."""
    if not isinstance(data, dict):
        raise ValueError("stream_fault: body must be a JSON object")
    unknown = sorted(set(data) - {"mode", "seconds", "tokens", "model", "count"})
    if unknown:
        raise ValueError(f"stream_fault: unknown key(s) {unknown}")
    default = StreamFault()
    mode = data.get("mode")
    if mode not in STREAM_FAULT_MODES:
        raise ValueError(
            f"stream_fault.mode: must be one of {list(STREAM_FAULT_MODES)}, got {mode!r}")
    seconds = data.get("seconds", default.seconds)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ValueError("stream_fault.seconds: must be a number >= 0")
    tokens = data.get("tokens", default.tokens)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError("stream_fault.tokens: must be an integer >= 0")
    model = data.get("model", default.model)
    if not isinstance(model, str) or not model:
        raise ValueError("stream_fault.model: must be a non-empty string")
    count = data.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError("stream_fault.count: must be an integer >= 1")
    return StreamFault(mode=mode, seconds=float(seconds), tokens=tokens, model=model,
                       count=count)
