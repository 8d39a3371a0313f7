"""The canary's HTTP: one JSON request, or one streamed (server-sent events) answer read
event by event, each event timed as it arrives, all of it bounded by one deadline and a size
limit. A fresh connection per probe, so that no probe inherits another's state.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

from exporter.canary.api import ProbeError
from exporter.fetch import connection

__all__ = ["MAX_BYTES", "MAX_LINE", "Client"]

MAX_BYTES = 1 << 20
"""Most bytes one answer may hold: a probe's stream is a few kilobytes."""
MAX_LINE = 1 << 16
_HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity",
            "User-Agent": "inference-node-exporter-canary"}


def _model_error(status: int, body: bytes) -> bool:
    """Whether an error answer says the model is unknown (vLLM: 404; others: 400 or 404
    with a message naming the model)."""
    if status == 404:
        return True
    try:
        text = json.dumps(json.loads(body)).lower()
    except (ValueError, RecursionError):
        text = body.decode("utf-8", "replace").lower()
    return status == 400 and "model" in text and any(
        w in text for w in ("not exist", "not found", "unknown", "not served", "does not"))


class Client:
    """Requests to one engine's API base URL (``http://host:port``)."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        parts = urlsplit(base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._deadline = 0.0
        self._headers = dict(_HEADERS)
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key}"
        elif parts.username is not None:
            creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(
                creds.encode()).decode()

    def _open(self, method: str, path: str, body: bytes | None,
              deadline: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        self._deadline = deadline
        conn = connection(self._https, self._host, self._port, lambda: self._deadline)
        try:
            conn.request(method, self._prefix + path, body=body, headers=self._headers)
            resp = conn.getresponse()
        except BaseException as exc:
            conn.close()
            raise _error(exc) from None
        if resp.status != 200:
            try:
                text = resp.read(4096)
            except (OSError, http.client.HTTPException):
                text = b""
            conn.close()
            reason = "model_not_found" if _model_error(resp.status, text) else "http_status"
            raise ProbeError(reason, f"HTTP {resp.status} {resp.reason}:"
                             f" {text[:200].decode('utf-8', 'replace')}")
        return conn, resp

    def fetch(self, method: str, path: str, deadline: float) -> bytes:
        """A small JSON answer's body."""
        conn, resp = self._open(method, path, b"" if method == "POST" else None, deadline)
        try:
            body = resp.read(MAX_BYTES + 1)
        except BaseException as exc:
            raise _error(exc) from None
        finally:
            conn.close()
        if len(body) > MAX_BYTES:
            raise ProbeError("bad_stream", f"{path}: answer larger than {MAX_BYTES} bytes")
        return body

    def stream(self, path: str, body: bytes, deadline: float) -> Iterator[tuple[float, bytes]]:
        """POST ``body`` and yield each event's ``data`` with the monotonic time its last line
        arrived; ends when the server ends the answer. Raises :class:`ProbeError`."""
        conn, resp = self._open("POST", path, body, deadline)
        data: list[bytes] = []
        try:
            for arrived, line in _lines(resp):
                if not line.strip(b"\r\n"):
                    if data:
                        yield arrived, b"\n".join(data)
                        data = []
                    continue
                field, _, value = line.rstrip(b"\r\n").partition(b":")
                if field == b"data":
                    data.append(value[1:] if value.startswith(b" ") else value)
            if data:
                yield time.monotonic(), b"\n".join(data)
        finally:
            conn.close()


def _lines(resp: http.client.HTTPResponse) -> Iterator[tuple[float, bytes]]:
    """The answer's lines with the time each arrived, read as the bytes come. ``read1``
    (not ``readline``, which takes broken chunked framing for the end) raises on an answer
    cut short; so does a body that ends before its ``Content-Length``."""
    pending = b""
    total = 0
    while True:
        try:
            got = resp.read1(MAX_LINE)
        except BaseException as exc:
            raise _error(exc) from None
        arrived = time.monotonic()
        if not got:
            if resp.length:  # announced, not all of it came
                raise ProbeError("stream_cut", "the answer ended before its Content-Length")
            if pending:
                yield arrived, pending
            return
        total += len(got)
        if total > MAX_BYTES:
            raise ProbeError("bad_stream", f"the stream exceeds {MAX_BYTES} bytes")
        pending += got
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield arrived, line
        if len(pending) > MAX_LINE:
            raise ProbeError("bad_stream", f"a line of the stream exceeds {MAX_LINE} bytes")


def _error(exc: BaseException) -> ProbeError:
    """A transport failure as a probe outcome."""
    if isinstance(exc, ProbeError):
        return exc
    if isinstance(exc, TimeoutError):
        return ProbeError("timeout", "no complete answer before the probe's deadline")
    if isinstance(exc, ConnectionRefusedError):
        return ProbeError("refused", "connection refused")
    if isinstance(exc, http.client.IncompleteRead):
        return ProbeError("stream_cut", "the stream's chunked framing broke off")
    if isinstance(exc, (OSError, http.client.HTTPException)):
        return ProbeError("connection", f"{type(exc).__name__}: {exc}")
    raise exc
