"""The HTTP endpoints: ``/metrics``, ``/healthz`` and a landing page at ``/``."""

from __future__ import annotations

import gzip
import html
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from exporter import __version__, logs
from exporter.exposition import CONTENT_TYPE

__all__ = ["Health", "WebServer"]


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
    protocol_version = "HTTP/1.1"
    server_version = f"inference-node-exporter/{__version__}"

    def do_GET(self) -> None:
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
        self._send(200 if self.path.split("?", 1)[0] in ("/", "/metrics", "/healthz") else 404,
                   b"", "text/plain; charset=utf-8")

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
                 health: Callable[[], Health]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.render = render
        self.health = health
        self.log = logs.get("http")
        super().__init__(address, _Handler)


class WebServer:
    """Serves the endpoints from a background thread."""

    def __init__(self, address: tuple[str, int], render: Callable[[], bytes],
                 health: Callable[[], Health]) -> None:
        self._server = _Server(address, render, health)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2}, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


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
