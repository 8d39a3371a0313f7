"""HTTP GET of an upstream metrics endpoint, bounded in time and size.

``http.client`` is used directly rather than a higher-level client because it lets every
socket read be given the time left before the poll's deadline: a server that answers one
byte at a time cannot hold a poll longer than its timeout, and one that sends more than the
size limit is cut off without buffering the rest.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import time
from urllib.parse import unquote, urlsplit

__all__ = ["FetchError", "Fetcher", "redact"]

ACCEPT = "text/plain; version=0.0.4"


class FetchError(Exception):
    """A failed fetch; ``reason`` is a short, bounded label value."""

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
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

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.timeout,
                    context=ssl.create_default_context())
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port,
                                                        timeout=self.timeout)
        return self._conn

    def get(self) -> bytes:
        """The response body; raises :class:`FetchError` on any failure."""
        deadline = time.monotonic() + self.timeout
        try:
            return self._get(deadline)
        except FetchError:
            self.close()
            raise
        except TimeoutError:
            self.close()
            raise FetchError("timeout", f"no complete answer within {self.timeout:g}s") from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise FetchError("connection", f"{type(exc).__name__}: {exc}") from None

    def _get(self, deadline: float) -> bytes:
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
            resp.read(min(self.max_bytes, 65536))
            raise FetchError("http_status", f"HTTP {resp.status} {resp.reason}", resp.status)
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise FetchError("too_large", f"response of {length} bytes exceeds the"
                             f" {self.max_bytes}-byte limit")
        chunks: list[bytes] = []
        total = 0
        sock = conn.sock
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FetchError("timeout", f"body not complete within {self.timeout:g}s")
            if sock is not None:
                sock.settimeout(left)
            chunk = resp.read1(65536)
            if not chunk:
                break
            total += len(chunk)
            if total > self.max_bytes:
                raise FetchError("too_large", f"response exceeds the {self.max_bytes}-byte limit")
            chunks.append(chunk)
            if resp.length == 0:  # the whole Content-Length has arrived
                break
        resp.close()  # frees the connection for the next request
        if resp.will_close:
            self.close()
        return b"".join(chunks)
