"""TLS for :mod:`exporter.http_server`: a non-blocking handshake on the accepted socket, and an
asyncio transport over the resulting ``ssl.SSLSocket``.

asyncio's own TLS (``connect_accepted_socket(ssl=...)``) drops the alert a failed handshake
leaves to send (Python 3.11's sslproto aborts the connection without flushing it), so a client
refused for its certificate would see a bare close or reset instead of, say, "certificate
required". Here OpenSSL writes to the socket itself, alerts included, as the threading server
did.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

__all__ = ["TlsTransport", "handshake", "readable"]

_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError)


async def readable(loop: asyncio.AbstractEventLoop, sock: socket.socket, *,
                   write: bool = False) -> None:
    """Wait until ``sock`` is readable (or writable)."""
    ready = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else \
        (loop.add_reader, loop.remove_reader)
    add(sock.fileno(), _resolve, ready)
    try:
        await ready
    finally:
        remove(sock.fileno())


async def handshake(loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket) -> None:
    """Complete the server side of the handshake; ssl.SSLError or OSError if it fails (any
    alert already sent)."""
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            await readable(loop, sock)
        except ssl.SSLWantWriteError:
            await readable(loop, sock, write=True)


class TlsTransport(asyncio.Transport):
    """An asyncio transport over a non-blocking, handshaken ``ssl.SSLSocket``.

    Writes are buffered and the protocol paused until the buffer is empty, so a
    ``StreamWriter.drain()`` returns once all of it is in the kernel.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket,
                 protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol: Any = protocol
        self._buffer = bytearray()
        self._closing = self._done = self._paused = self._writing = False
        self._reading = True
        protocol.connection_made(self)
        loop.add_reader(self._fd, self._on_readable)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peercert":
            return self._sock.getpeercert()
        if name == "socket":
            return self._sock
        return default

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        if self._reading and not self._done:
            self._loop.remove_reader(self._fd)
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._loop.add_reader(self._fd, self._on_readable)
        self._reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """The limits are always 0: see the class."""

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def can_write_eof(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._buffer += data
        self._flush()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._reading:
            self._loop.remove_reader(self._fd)
        if not self._buffer:
            self._loop.call_soon(self._finish, None)

    def abort(self) -> None:
        self._closing = True
        self._buffer.clear()
        self._finish(None)

    def _on_readable(self) -> None:
        while self._reading and not self._closing:
            try:
                data = self._sock.recv(65536)
            except _WANT:
                return
            except OSError as exc:  # ssl.SSLError included
                self._fatal(exc)
                return
            if not data:
                self.pause_reading()
                self._protocol.eof_received()
                return
            self._protocol.data_received(data)

    def _flush(self) -> None:
        while self._buffer:
            try:
                sent = self._sock.send(self._buffer[:65536])
            except _WANT:
                break
            except OSError as exc:
                self._fatal(exc)
                return
            del self._buffer[:sent]
        if self._buffer:
            if not self._writing:
                self._loop.add_writer(self._fd, self._flush)
                self._writing = True
            if not self._paused:
                self._paused = True
                self._protocol.pause_writing()
            return
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        if self._paused:
            self._paused = False
            self._protocol.resume_writing()
        if self._closing:
            self._finish(None)

    def _fatal(self, exc: OSError) -> None:
        self._closing = True
        self._buffer.clear()
        self._finish(exc)

    def _finish(self, exc: OSError | None) -> None:
        if self._done:
            return
        self._done = True
        if self._reading:
            self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
