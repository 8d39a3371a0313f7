"""The HTTP endpoints: ``/metrics``, ``/healthz`` and a landing page at ``/``; with a web
config file, TLS (client certificates too), basic auth and extra headers on all of them.

The TLS handshake runs in the connection's own thread, after the accept loop has moved on, so
a slow or broken client holds only itself. Plain HTTP sent to the TLS port is answered 400.
A reloaded web config applies to the connections accepted after it (and its auth and headers
to every request after it).
"""

from __future__ import annotations

import contextlib
import gzip
import html
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from exporter import __version__, logs
from exporter.exposition import CONTENT_TYPE
from exporter.webconfig import WebConfig

__all__ = ["Health", "WebServer"]

_HANDSHAKE_TIMEOUT = 10.0
"""Seconds a client has to complete the TLS handshake."""
_TEXT = "text/plain; charset=utf-8"
_CHALLENGE = 'Basic realm="inference-node-exporter", charset="UTF-8"'
_NOT_TLS = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")


@dataclass(frozen=True, slots=True)
class Health:
    """The daemon's answer to ``/healthz`` and the landing page."""

    healthy: bool
    detail: str
    sources: tuple[tuple[str, str, str, bool], ...]
    """(collector, source, target, up) for each source."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30  # a client that stalls mid-request releases its thread
    disable_nagle_algorithm = True  # headers, then body: neither waits for an ACK
    protocol_version = "HTTP/1.1"
    server_version = f"inference-node-exporter/{__version__}"

    def do_GET(self) -> None:
        if not self._admit():
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._metrics()
        elif path == "/healthz":
            health = self.server.health()
            body = (("ok" if health.healthy else "unhealthy") + ": " + health.detail + "\n")
            self._send(200 if health.healthy else 503, body.encode(), "text/plain; charset=utf-8")
        elif path == "/":
            self._send(200, _landing(self.server.health()).encode(), "text/html; charset=utf-8")
        else:
            self._send(404, b"not found; try /metrics\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        if not self._admit():
            return
        self._send(200 if self.path.split("?", 1)[0] in ("/", "/metrics", "/healthz") else 404,
                   b"", "text/plain; charset=utf-8")

    def _admit(self) -> bool:
        """Rate limit and basic auth of the web config in force; answers 429 or 401 itself.

        The 401 is the same whether the user is unknown or the password wrong.
        """
        web = self.server.web
        if web is None:
            return True
        if web.rate_limit is not None and not web.rate_limit.allow():
            self._send(429, b"Too Many Requests\n", _TEXT)
            return False
        if web.auth is not None and not web.auth.check(self.headers.get("Authorization")):
            self._send(401, b"Unauthorized\n", _TEXT, {"WWW-Authenticate": _CHALLENGE})
            return False
        return True

    def _metrics(self) -> None:
        try:
            body = self.server.render()
        except Exception:  # the collector guards itself; this is the last line of defence
            self.server.log.exception("rendering /metrics failed")
            self._send(500, b"internal error while rendering metrics\n",
                       "text/plain; charset=utf-8")
            return
        headers = {}
        if "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        self._send(200, body, CONTENT_TYPE, headers)

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        web = self.server.web
        for key, value in web.headers if web is not None else ():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        self.server.log.debug("http request", client=self.client_address[0],
                              request=format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], render: Callable[[], bytes],
                 health: Callable[[], Health], web: WebConfig | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.render = render
        self.health = health
        self.web = web
        """The web config in force; replaced whole on reload."""
        self.log = logs.get("http")
        super().__init__(address, _Handler)

    def finish_request(self, request: socket.socket | tuple[bytes, socket.socket],
                       client_address: Any) -> None:
        web = self.web
        if web is None or web.ssl_context is None:
            super().finish_request(request, client_address)
            return
        assert isinstance(request, socket.socket)
        conn = self._handshake(request, str(client_address[0]), web, web.ssl_context)
        if conn is None:
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)
            conn.close()

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket],
                     client_address: Any) -> None:
        """A client that goes away mid-request (or breaks TLS) is logged at debug, not printed."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            self.log.debug("connection ended during a request", client=str(client_address[0]),
                           error=_reason(exc))
        else:
            self.log.exception("request failed", client=str(client_address[0]))

    def _handshake(self, request: socket.socket, client: str, web: WebConfig,
                   context: ssl.SSLContext) -> ssl.SSLSocket | None:
        """The TLS connection, or None (logged at debug) when it cannot be had."""
        request.settimeout(_HANDSHAKE_TIMEOUT)
        try:
            first = request.recv(1, socket.MSG_PEEK)
            if first != b"\x16":  # not a TLS handshake record
                if first:
                    self.log.debug("plain HTTP on the TLS port; answered 400", client=client)
                    request.recv(65536)  # read the request so that closing does not reset
                    request.sendall(_NOT_TLS)
                return None
            conn = context.wrap_socket(request, server_side=True)
        except OSError as exc:  # ssl.SSLError included; the server goes on
            self.log.debug("TLS handshake failed", client=client, error=_reason(exc))
            return None
        if not web.peer_allowed(conn.getpeercert()):
            self.log.debug("client certificate has no allowed SAN", client=client)
            conn.close()
            return None
        return conn


class WebServer:
    """Serves the endpoints from a background thread."""

    def __init__(self, address: tuple[str, int], render: Callable[[], bytes],
                 health: Callable[[], Health], web: WebConfig | None = None) -> None:
        self._server = _Server(address, render, health, web)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2}, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._announce("web config in force", self._server.web)
        self._thread.start()

    def configure(self, web: WebConfig | None) -> None:
        """Apply a web config (re-read on reload) to the connections accepted from now on.

        Dropping the web config altogether would fall back to plain HTTP with no
        authentication: a reload never does that; a restart without it does.
        """
        old = self._server.web
        if old is not None and web is None:
            self._server.log.warning("the web config file is no longer set; TLS and"
                                     " authentication stay in force until a restart",
                                     file=old.path)
            return
        self._server.web = web
        self._announce("web config reloaded", web)

    def _announce(self, event: str, web: WebConfig | None) -> None:
        if web is None:
            return
        log = self._server.log
        log.info(event, file=web.path, tls=web.tls,
                 client_auth=web.client_auth_type if web.tls else None,
                 basic_auth_users=web.auth.users if web.auth else 0,
                 headers=[name for name, _ in web.headers])
        for note in web.notes:
            log.warning("web config setting not applied as written", note=note, file=web.path)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(getattr(exc, "verify_message", None) or exc.reason or exc)
    return str(exc.strerror or exc)


def _landing(health: Health) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{html.escape(s)}</td><td>{html.escape(t)}</td>"
        f"<td>{'up' if up else 'down'}</td></tr>"
        for c, s, t, up in health.sources
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>inference-node-exporter</title></head>
<body>
<h1>inference-node-exporter {html.escape(__version__)}</h1>
<p>Polling: {'healthy' if health.healthy else 'unhealthy'} ({html.escape(health.detail)})</p>
<p><a href="/metrics">/metrics</a> &middot; <a href="/healthz">/healthz</a></p>
<table border="1" cellpadding="4">
<tr><th>collector</th><th>source</th><th>target</th><th>state</th></tr>
{rows}
</table>
</body></html>
"""
