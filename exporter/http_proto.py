"""HTTP/1.1 on the wire for :mod:`exporter.http_server`: reading a request head within size
limits (414, 431, 400 and close), and writing a response's head."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus

from exporter import __version__

__all__ = ["MAX_LINE", "RefusedError", "Request", "Response", "head", "linger", "read_request"]

MAX_LINE = 8192
"""Longest request line (else 414) and header line (else 431)."""
MAX_HEAD = 16384
"""Most bytes of header lines (else 431)."""
MAX_FIELDS = 100
SERVER = f"inference-node-exporter/{__version__}"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]
    """Lower-case names; repeated fields joined with ", "."""
    client: str


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


class RefusedError(Exception):
    """A request answered with ``status`` and closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


async def read_request(reader: asyncio.StreamReader, prefix: bytes, client: str
                       ) -> tuple[Request, bool]:
    """The next request and whether the connection stays open after it."""
    line = prefix
    for _ in range(4):  # blank lines before a request line are ignored (RFC 9112 2.2)
        line += await _line(reader, 414, "request line too long")
        if line.strip():
            break
        line = b""
    if len(line) > MAX_LINE:
        raise RefusedError(414, "request line too long")
    fields: dict[str, str] = {}
    size = count = 0
    while True:
        raw = await _line(reader, 431, "request header fields too large")
        size, count = size + len(raw), count + 1
        if size > MAX_HEAD or count > MAX_FIELDS:
            raise RefusedError(431, "request header fields too large")
        text = raw.decode("latin-1").rstrip("\r\n")
        if not text:
            break
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip() or " " in name:
            raise RefusedError(400, "malformed header field")
        key = name.lower()
        fields[key] = f"{fields[key]}, {value.strip()}" if key in fields else value.strip()
    parts = line.decode("latin-1").strip().split(" ")
    if len(parts) != 3 or not parts[1].isprintable():
        raise RefusedError(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/"):
            raise RefusedError(505, "only HTTP/1.0 and HTTP/1.1 are served")
        raise RefusedError(400, "malformed request line")
    if method not in ("GET", "HEAD"):
        raise RefusedError(405, "only GET and HEAD are served")
    if fields.get("content-length", "0") != "0" or "transfer-encoding" in fields:
        raise RefusedError(400, "request bodies are not accepted")
    if target.startswith(("http://", "https://")):  # absolute form
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    tokens = {t.strip().lower() for t in fields.get("connection", "").split(",")}
    keep = "close" not in tokens and (version == "HTTP/1.1" or "keep-alive" in tokens)
    return Request(method, target.split("?", 1)[0], fields, client), keep



def head(response: Response, keep: bool) -> bytes:
    """The status line and header fields of ``response``."""
    status = response.status
    lines = [f"HTTP/1.1 {status} {_phrase(status)}", f"Server: {SERVER}",
             f"Date: {formatdate(usegmt=True)}", f"Content-Type: {response.content_type}",
             f"Content-Length: {len(response.body)}"]
    lines += [f"{k}: {v}" for k, v in response.headers]
    if status == 405:
        lines.append("Allow: GET, HEAD")
    lines.append("Connection: keep-alive" if keep else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _line(reader: asyncio.StreamReader, status: int, reason: str) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise RefusedError(status, reason) from None


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After an error answer, read what the client still sends for a moment, so that closing
    with unread data does not reset the connection before the client reads the answer."""
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError, OSError, asyncio.LimitOverrunError):
        async with asyncio.timeout(1.0):
            for _ in range(16):
                if not await reader.read(65536):
                    break


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


