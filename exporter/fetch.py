"""HTTP GET of an upstream metrics endpoint, bounded in time and size.

``http.client`` is used directly rather than a higher-level client because its reads can be
routed through a reader of our own: every socket read, from the status line and headers to
the last byte of the body, is given only the time left before the poll's one deadline, so a
server that answers one byte at a time cannot hold a poll longer than its timeout. A body
that ends short of its ``Content-Length`` (or a chunked body whose framing breaks) is a
failed poll, never data, and one that sends more than the size limit is cut off without
buffering the rest.
"""

from __future__ import annotations

import base64
import http.client
import io
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from exporter.logs import printable

__all__ = ["FetchError", "Fetcher", "connection", "redact"]

ACCEPT = "text/plain; version=0.0.4"


class FetchError(Exception):
    """A failed fetch; ``reason`` is a short, bounded label value."""

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        super().__init__(printable(message))
        self.reason = reason
        self.status = status
        """The HTTP status, for ``http_status``."""


def redact(url: str) -> str:
    """The URL without any password, for logs and the landing page."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each given only the time left before the current deadline.

    It reads through the socket's own raw file object, which keeps the descriptor open
    while a response is read after its connection was handed over (``Connection: close``).
    """

    def __init__(self, sock: socket.socket, deadline: Callable[[], float]) -> None:
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline() - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(left)
        got: int | None = self._raw.readinto(buffer)
        return 0 if got is None else got

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """What ``HTTPResponse`` takes as its socket: only ``makefile`` is ever called."""

    def __init__(self, sock: socket.socket, deadline: Callable[[], float]) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, _mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


def connection(https: bool, host: str, port: int | None,
               deadline: Callable[[], float]) -> http.client.HTTPConnection:
    """A connection whose every read, status line to last byte, is given only the time left
    before ``deadline()`` (a monotonic time, read afresh at each read)."""
    left = max(0.001, deadline() - time.monotonic())
    conn = (http.client.HTTPSConnection(host, port, timeout=left,
                                        context=ssl.create_default_context())
            if https else http.client.HTTPConnection(host, port, timeout=left))

    class Response(http.client.HTTPResponse):
        def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
            super().__init__(_DeadlineSocket(sock, deadline),  # type: ignore[arg-type]
                             *args, **kwargs)

    conn.response_class = Response
    return conn


class Fetcher:
    """Fetches one URL repeatedly, reusing its connection while the server keeps it open."""

    def __init__(self, url: str, timeout: float, max_bytes: int) -> None:
        parts = urlsplit(url)
        self.url = url
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Accept": ACCEPT, "Accept-Encoding": "identity",
                         "User-Agent": "inference-node-exporter"}
        if parts.username is not None:
            creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
        self._conn: http.client.HTTPConnection | None = None
        self._deadline = 0.0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        left = max(0.001, self._deadline - time.monotonic())
        conn = self._conn
        if conn is None:
            conn = self._conn = connection(self._https, self._host, self._port,
                                           self._current_deadline)
        else:
            conn.timeout = left  # for a reconnect inside request()
            if conn.sock is not None:
                conn.sock.settimeout(left)
        return conn

    def _current_deadline(self) -> float:
        return self._deadline

    def get(self) -> bytes:
        """The response body; raises :class:`FetchError` on any failure."""
        self._deadline = time.monotonic() + self.timeout
        try:
            body = self._get()
        except FetchError:
            self.close()
            raise
        except TimeoutError:
            self.close()
            raise FetchError("timeout", f"no complete answer within {self.timeout:g}s") from None
        except ConnectionRefusedError:
            self.close()
            raise FetchError("refused", "connection refused") from None
        except http.client.IncompleteRead as exc:
            self.close()
            raise FetchError("truncated", f"the body ended early or its chunked framing broke"
                             f" after {len(exc.partial)} bytes of a chunk") from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise FetchError("connection", f"{type(exc).__name__}: {exc}") from None
        if b"\x00" in body:
            raise FetchError("not_text", f"the {len(body)}-byte answer holds NUL bytes: binary,"
                             " not the text exposition format")
        return body

    def _get(self) -> bytes:
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request("GET", self._path, headers=self._headers)
                resp = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server had closed: retry once on a fresh one.
                self.close()
                if attempt:
                    raise
        if resp.status != 200:
            if not resp.will_close and resp.length is not None and resp.length <= 65536:
                resp.read()  # keeps the connection usable
            else:
                self.close()
            raise FetchError("http_status", f"HTTP {resp.status} {resp.reason}", resp.status)
        announced = resp.length
        if announced is not None and announced > self.max_bytes:
            raise FetchError("too_large", f"response of {announced} bytes exceeds the"
                             f" {self.max_bytes}-byte limit")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = resp.read1(65536)
            if not chunk:
                break
            total += len(chunk)
            if total > self.max_bytes:
                raise FetchError("too_large", f"response exceeds the {self.max_bytes}-byte limit")
            chunks.append(chunk)
            if resp.length == 0:  # the whole Content-Length has arrived
                break
        if resp.length:  # the server closed the connection before the announced length
            raise FetchError("truncated", f"the body ended after {total} of the {announced}"
                             " bytes its Content-Length announced")
        resp.close()  # frees the connection for the next request
        if resp.will_close:
            self.close()
        return b"".join(chunks)
