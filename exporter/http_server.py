"""A small HTTP/1.1 server on asyncio, built to keep answering Prometheus under abuse.

One event-loop thread holds every connection (a coroutine each), so thousands of slow
clients cost memory, not threads. The number of connections is capped below the file
descriptor limit, leaving :data:`RESERVE` descriptors to the sources; when the cap is
reached, the connection that has waited longest without delivering a complete request (or
idle between keep-alive requests) is closed to admit the new one, so slow clients can never
lock Prometheus out. Request heads have a deadline and a size limit, writes a deadline.

Only GET and HEAD, without a body, are served (parsing: :mod:`exporter.http_proto`). With
TLS, the first byte is peeked: plain HTTP gets a 400 that says so; the handshake
(:mod:`exporter.http_tls`) has the header deadline, and a failed one is logged at debug and
affects only its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import resource
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from exporter import logs
from exporter.http_proto import (
    MAX_LINE,
    RefusedError,
    Request,
    Response,
    head,
    linger,
    read_request,
)
from exporter.http_tls import TlsTransport, handshake, readable

__all__ = ["Handler", "Request", "Response", "Server", "Tls"]

Handler = Callable[[Request], Awaitable[Response]]

BACKLOG = 1024
"""Listen backlog (the kernel caps it at net.core.somaxconn)."""
RESERVE = 128
"""File descriptors kept free for the sources (engine polls, NVML, /proc) and the daemon."""
MAX_CONNECTIONS = 10_000
HEAD_TIMEOUT = 10.0
"""Seconds from accept (TLS handshake included) or from a keep-alive request's first byte
to the end of its head."""
IDLE_TIMEOUT = 120.0
"""Seconds a keep-alive connection may wait for its next request."""
WRITE_TIMEOUT = 30.0
"""Seconds a client has to read a response."""
_ACCEPT_BATCH = 32
_ACCEPT_RETRY = 0.5
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_WARN_EVERY = 60.0
_NOT_TLS = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")


@dataclass(frozen=True, slots=True)
class Tls:
    """The TLS settings for the next connections."""

    context: ssl.SSLContext
    peer_allowed: Callable[[Mapping[str, Any] | None], bool]


class _Conn:
    __slots__ = ("client", "sock", "task", "transport")

    def __init__(self, sock: socket.socket, client: str) -> None:
        self.sock: socket.socket | None = sock
        """The socket while this code owns it, before a transport takes it over."""
        self.client = client
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.BaseTransport | None = None


def connection_cap(log: Any) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; the connection cap that leaves
    :data:`RESERVE` descriptors below it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:  # e.g. a seccomp filter without setrlimit
            log.debug("cannot raise the file descriptor limit", soft=soft, hard=hard,
                      error=str(exc))
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft - RESERVE if soft > 2 * RESERVE else soft // 2))


class Server:
    """Serves ``handler`` from an event loop in a thread of its own."""

    def __init__(self, address: tuple[str, int], handler: Handler,
                 tls: Callable[[], Tls | None]) -> None:
        self.log = logs.get("http")
        self.cap = connection_cap(self.log)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(address)
            self._sock.listen(BACKLOG)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self.port = int(self._sock.getsockname()[1])
        self._handler = handler
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_error)
        self._conns: set[_Conn] = set()
        self._waiting: OrderedDict[_Conn, None] = OrderedDict()
        """Connections that may be closed for a new one, the longest waiting first."""
        self._accepting = False
        self._retry: asyncio.TimerHandle | None = None
        self._warned: dict[str, float] = {}
        self._thread = threading.Thread(target=self._loop.run_forever, name="http", daemon=True)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def start(self) -> None:
        self._loop.call_soon_threadsafe(self._accept_on)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop accepting, close every connection, end the loop's thread (within ``timeout``)."""
        if not self._thread.is_alive():
            self._sock.close()
            return
        done = asyncio.run_coroutine_threadsafe(self._close_all(), self._loop)
        with contextlib.suppress(Exception):
            done.result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    async def _close_all(self) -> None:
        self._accept_off()
        if self._retry is not None:
            self._retry.cancel()
        self._sock.close()
        tasks = [c.task for c in self._conns if c.task is not None]
        for conn in list(self._conns):
            self._drop(conn)
        if tasks:
            await asyncio.wait(tasks, timeout=0.5)

    # --- accepting -------------------------------------------------------------------

    def _accept_on(self) -> None:
        if not self._accepting and self._sock.fileno() >= 0:
            self._loop.add_reader(self._sock.fileno(), self._accept)
            self._accepting = True

    def _accept_off(self) -> None:
        if self._accepting:
            self._loop.remove_reader(self._sock.fileno())
            self._accepting = False

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    # Out of descriptors: wait, rather than spin on a ready listening socket.
                    self._warn("cannot accept connections; retrying shortly", error=str(exc))
                    self._accept_off()
                    self._retry = self._loop.call_later(_ACCEPT_RETRY, self._retry_accept)
                    return
                continue  # e.g. ECONNABORTED: that client is gone
            if len(self._conns) >= self.cap and not self._evict():
                sock.close()  # every connection is mid-request: wait for one to end
                self._warn("connection limit reached; every connection is busy", cap=self.cap)
                self._accept_off()
                return
            self._admit(sock, str(address[0]))

    def _retry_accept(self) -> None:
        self._retry = None
        self._accept_on()

    def _evict(self) -> bool:
        """Close the connection that has waited longest without a request; False if none."""
        if not self._waiting:
            return False
        conn, _ = self._waiting.popitem(last=False)
        self._warn("connection limit reached; closing the longest-waiting connections",
                   cap=self.cap)
        self._drop(conn)
        return True

    def _admit(self, sock: socket.socket, client: str) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, client)
        self._conns.add(conn)
        self._waiting[conn] = None
        conn.task = self._loop.create_task(self._serve(conn))
        conn.task.add_done_callback(lambda _: self._forget(conn))

    def _drop(self, conn: _Conn) -> None:
        """Close a connection, whatever it is doing; its task closes the socket."""
        if conn.task is not None:
            conn.task.cancel()
        if isinstance(conn.transport, asyncio.WriteTransport):
            conn.transport.abort()
        self._waiting.pop(conn, None)
        self._conns.discard(conn)

    def _forget(self, conn: _Conn) -> None:
        """The connection's task has ended."""
        if conn.transport is not None:
            conn.transport.close()
        if conn.sock is not None:
            conn.sock.close()
            conn.sock = None
        self._waiting.pop(conn, None)
        if conn in self._conns:
            self._conns.discard(conn)
            if not self._accepting and self._retry is None and self._sock.fileno() >= 0:
                self._accept_on()

    # --- one connection --------------------------------------------------------------

    async def _serve(self, conn: _Conn) -> None:
        deadline = self._loop.time() + HEAD_TIMEOUT
        try:
            streams = await self._open(conn, deadline)
            if streams is not None:
                await self._requests(conn, *streams, deadline)
        except TimeoutError:
            pass
        except OSError as exc:
            self.log.debug("connection ended during a request", client=conn.client,
                           error=_reason(exc))

    async def _open(self, conn: _Conn, deadline: float
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The connection's streams, after the TLS handshake where there is TLS."""
        sock = conn.sock
        assert sock is not None
        tls = self._tls()
        reader = asyncio.StreamReader(limit=MAX_LINE, loop=self._loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self._loop)
        transport: asyncio.BaseTransport
        if tls is None:
            conn.sock = None  # the transport owns it from here
            transport, _ = await self._loop.connect_accepted_socket(lambda: protocol, sock)
        else:
            async with asyncio.timeout_at(deadline):
                await readable(self._loop, sock)
            first = sock.recv(1, socket.MSG_PEEK)
            if first != b"\x16":  # not a TLS handshake record
                if first:
                    self.log.debug("plain HTTP on the TLS port; answered 400", client=conn.client)
                    with contextlib.suppress(OSError):
                        sock.recv(65536)  # read the request so that closing does not reset
                        sock.send(_NOT_TLS)
                        sock.shutdown(socket.SHUT_WR)
                return None
            try:
                conn.sock = tls.context.wrap_socket(sock, server_side=True,
                                                    do_handshake_on_connect=False)
                async with asyncio.timeout_at(deadline):
                    await handshake(self._loop, conn.sock)
            except OSError as exc:  # ssl.SSLError and the time-out included
                self.log.debug("TLS handshake failed", client=conn.client, error=_reason(exc))
                return None
            if not tls.peer_allowed(conn.sock.getpeercert()):
                self.log.debug("client certificate has no allowed SAN", client=conn.client)
                return None
            transport = TlsTransport(self._loop, conn.sock, protocol)
            conn.sock = None
        conn.transport = transport
        assert isinstance(transport, asyncio.WriteTransport)
        transport.set_write_buffer_limits(0)  # drain() waits until the kernel has it all
        return reader, asyncio.StreamWriter(transport, protocol, reader, self._loop)

    async def _requests(self, conn: _Conn, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, deadline: float) -> None:
        """Serve requests until the client closes, asks to, times out or errs."""
        prefix = b""
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    request, keep = await read_request(reader, prefix, conn.client)
            except RefusedError as refused:
                self.log.debug("request refused", client=conn.client, status=refused.status,
                               reason=str(refused))
                await self._write(writer, Response(refused.status, f"{refused}\n".encode()),
                                  "GET", keep=False)
                await linger(reader, writer)
                return
            except asyncio.IncompleteReadError:
                return  # the client closed the connection
            self._waiting.pop(conn, None)
            try:
                response = await self._handler(request)
            except Exception:
                self.log.exception("request failed", client=conn.client, path=request.path)
                response = Response(500, b"internal error\n")
            self.log.debug("http request", client=conn.client, method=request.method,
                           path=request.path, status=response.status)
            await self._write(writer, response, request.method, keep)
            if not keep:
                return
            self._waiting[conn] = None
            async with asyncio.timeout(IDLE_TIMEOUT):
                prefix = await reader.read(1)
            if not prefix:
                return
            deadline = self._loop.time() + HEAD_TIMEOUT

    async def _write(self, writer: asyncio.StreamWriter, response: Response, method: str,
                     keep: bool) -> None:
        data = head(response, keep)
        writer.write(data if method == "HEAD" else data + response.body)
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except TimeoutError:
            writer.transport.abort()  # a client that does not read: drop what is unsent
            raise

    # --- logging ---------------------------------------------------------------------

    def _warn(self, event: str, **fields: object) -> None:
        """A warning at most once a minute per event."""
        now = time.monotonic()
        if now - self._warned.get(event, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned[event] = now
            self.log.warning(event, **fields)

    def _loop_error(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        log = self.log.debug if isinstance(exc, OSError | None) else self.log.warning
        log("event loop error", message=context.get("message"),
            error=_reason(exc) if isinstance(exc, OSError) else repr(exc))


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(getattr(exc, "verify_message", None) or exc.reason or exc)
    return str(exc.strerror or exc)
