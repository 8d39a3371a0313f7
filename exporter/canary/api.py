"""How a canary request is written to an engine and its streamed answer read: the
OpenAI-compatible completions API most engines serve, or Triton's ``generate_stream``.

Pure functions over bytes and parsed JSON: no I/O (see :mod:`exporter.canary.stream`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

__all__ = ["OPENAI", "OPENAI_NO_IGNORE_EOS", "TRITON", "Chunk", "ProbeApi", "ProbeError",
           "model_from_index", "model_from_models", "prompt_text", "read_chunk"]

_WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs",
          "back", "home", "to", "its", "den")
"""The prompt's words: short, common and distinct, about one token each in any tokenizer."""


class ProbeError(Exception):
    """A failed probe; ``reason`` is the ``outcome`` label value."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProbeApi:
    """An engine's streaming request API."""

    kind: str
    """``openai`` (``/v1/completions``) or ``triton`` (``generate_stream``)."""
    ignore_eos: bool = True
    """Whether the engine takes ``ignore_eos``: then every probe generates exactly
    ``max_tokens`` tokens, and fewer is a failure (``short``)."""

    def models_path(self) -> tuple[str, str]:
        """Method and path that list the served models."""
        return ("GET", "/v1/models") if self.kind == "openai" else \
            ("POST", "/v2/repository/index")

    def model_from(self, body: bytes) -> str | None:
        """The served model's name from the listing's body; None when it names none."""
        return model_from_models(body) if self.kind == "openai" else model_from_index(body)

    def request(self, model: str, prompt: str, max_tokens: int) -> tuple[str, bytes]:
        """The probe's path and JSON body."""
        if self.kind == "triton":
            body: dict[str, Any] = {"text_input": prompt, "max_tokens": max_tokens,
                                    "stream": True, "temperature": 0}
            return f"/v2/models/{quote(model, safe='')}/generate_stream", _json(body)
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}
        if self.ignore_eos:
            body["ignore_eos"] = True
        return "/v1/completions", _json(body)


OPENAI = ProbeApi("openai")
OPENAI_NO_IGNORE_EOS = ProbeApi("openai", ignore_eos=False)
TRITON = ProbeApi("triton", ignore_eos=False)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One streamed event: a token (or several) or the closing usage report."""

    token: bool
    """Whether it carries generated output (an empty text counts: a partial character)."""
    completion_tokens: int | None = None
    """The engine's own count of generated tokens, from a usage report."""
    prompt_tokens: int | None = None


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def prompt_text(tokens: int) -> str:
    """The fixed prompt: ``tokens`` words, the same on every probe."""
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(tokens))


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def read_chunk(api: ProbeApi, data: bytes) -> Chunk | None:
    """One SSE ``data:`` payload as a chunk; None for the closing ``[DONE]``. Raises
    :class:`ProbeError` (``bad_stream``) for anything that is not the API's JSON, and
    (``http_status``) for an error reported inside the stream."""
    if data.strip() == b"[DONE]":
        return None
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        raise ProbeError("bad_stream", f"a streamed event is not JSON: {data[:80]!r}") from None
    if not isinstance(event, dict):
        raise ProbeError("bad_stream", f"a streamed event is not a JSON object: {data[:80]!r}")
    if "error" in event:
        raise ProbeError("http_status", f"the engine reported an error mid-stream:"
                         f" {str(event['error'])[:200]}")
    if api.kind == "triton":
        if not isinstance(event.get("text_output"), str):
            raise ProbeError("bad_stream", "a generate_stream event has no text_output")
        return Chunk(True)
    choices = event.get("choices")
    usage = event.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    if not isinstance(choices, list):
        raise ProbeError("bad_stream", "a completions chunk has no choices list")
    token = bool(choices) and isinstance(choices[0], dict) and "text" in choices[0]
    if choices and not token:
        raise ProbeError("bad_stream", "a completions chunk's choice has no text")
    return Chunk(token, _count(usage.get("completion_tokens")),
                 _count(usage.get("prompt_tokens")))


def model_from_models(body: bytes) -> str | None:
    """The first model of an OpenAI ``/v1/models`` listing."""
    try:
        data = json.loads(body).get("data")
        first = data[0].get("id") if isinstance(data, list) and data else None
    except (ValueError, RecursionError, AttributeError):
        return None
    return first if isinstance(first, str) and first and first.isprintable() else None


def model_from_index(body: bytes) -> str | None:
    """The first ready model of Triton's repository index."""
    try:
        models = json.loads(body)
    except (ValueError, RecursionError):
        return None
    for m in models if isinstance(models, list) else ():
        if isinstance(m, dict) and m.get("state", "READY") == "READY":
            name = m.get("name")
            if isinstance(name, str) and name and name.isprintable():
                return name
    return None
