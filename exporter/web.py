"""The HTTP endpoints: ``/metrics``, ``/healthz`` and a landing page at ``/``; with a web
config file, TLS (client certificates too), basic auth, a per-client rate limit and extra
headers on all of them. The connections themselves are :mod:`exporter.http_server`'s.

A reloaded web config applies to the connections accepted after it (its TLS settings) and
to every request after it (auth, rate limit, headers). The event loop never runs bcrypt: a
check runs in a one-thread executor on a daemon thread (it never holds up the end of the
process). Rendering joins pre-rendered strings and runs on the loop: a hop to another thread
would cost a scrape an extra wait for the interpreter while a poll is parsing.
"""

from __future__ import annotations

import asyncio
import gzip
import html
from collections.abc import Callable
from dataclasses import dataclass

from exporter import __version__
from exporter.exposition.render import CONTENT_TYPE
from exporter.http_server import Request, Response, Server, Tls
from exporter.threads import DaemonExecutor
from exporter.webconfig import WebConfig

__all__ = ["Health", "WebServer", "accepts_gzip"]

_CHALLENGE = 'Basic realm="inference-node-exporter", charset="UTF-8"'
_BCRYPT_QUEUE = 32
"""Most requests waiting for a bcrypt check; more are answered 429 at once."""


@dataclass(frozen=True, slots=True)
class Health:
    """The daemon's answer to ``/healthz`` and the landing page."""

    healthy: bool
    detail: str
    sources: tuple[tuple[str, str, str, bool], ...]
    """(collector, source, target, up) for each source."""
    canaries: tuple[tuple[str, str, str, str], ...] = ()
    """(engine, endpoint, API URL, last probe's outcome) for each canary."""


class WebServer:
    """Serves the endpoints from a background thread (an asyncio event loop)."""

    def __init__(self, address: tuple[str, int], render: Callable[[], bytes],
                 health: Callable[[], Health], web: WebConfig | None = None) -> None:
        self._render = render
        self._health = health
        self.web = web
        """The web config in force; replaced whole on reload."""
        self._server = Server(address, self._handle, self._tls)
        self.log = self._server.log
        self._bcrypt = DaemonExecutor("http-bcrypt")
        self._bcrypt_waiting = 0

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> None:
        self._announce("web config in force", self.web)
        self.log.info("http server started", port=self.port, max_connections=self._server.cap)
        self._server.start()

    def configure(self, web: WebConfig | None) -> None:
        """Apply a web config (re-read on reload) to the connections accepted from now on.

        Dropping the web config altogether would fall back to plain HTTP with no
        authentication: a reload never does that; a restart without it does.
        """
        old = self.web
        if old is not None and web is None:
            self.log.warning("the web config file is no longer set; TLS and"
                             " authentication stay in force until a restart", file=old.path)
            return
        self.web = web
        self._announce("web config reloaded", web)

    def _announce(self, event: str, web: WebConfig | None) -> None:
        if web is None:
            return
        self.log.info(event, file=web.path, tls=web.tls,
                      client_auth=web.client_auth_type if web.tls else None,
                      basic_auth_users=web.auth.users if web.auth else 0,
                      headers=[name for name, _ in web.headers])
        for note in web.notes:
            self.log.warning("web config warning", note=note, file=web.path)

    def stop(self) -> None:
        self._server.stop()
        self._bcrypt.shutdown(wait=False, cancel_futures=True)

    def _tls(self) -> Tls | None:
        web = self.web
        if web is None or web.ssl_context is None:
            return None
        return Tls(web.ssl_context, web.peer_allowed)

    async def _handle(self, request: Request) -> Response:
        web = self.web
        refused = await self._admit(request, web) if web is not None else None
        response = refused if refused is not None else self._endpoint(request)
        if web is not None:
            response.headers.extend(web.headers)
        return response

    async def _admit(self, request: Request, web: WebConfig) -> Response | None:
        """The rate limit (per client, before authentication) and basic auth; the refusal.

        The 401 is the same whether the user is unknown or the password wrong.
        """
        if web.rate_limit is not None and not web.rate_limit.allow(request.client):
            return Response(429, b"Too Many Requests\n")
        if web.auth is None:
            return None
        header = request.headers.get("authorization")
        ok = web.auth.quick(header)
        if ok is None:
            if self._bcrypt_waiting >= _BCRYPT_QUEUE:
                return Response(429, b"Too Many Requests\n")
            self._bcrypt_waiting += 1
            try:
                ok = await asyncio.get_running_loop().run_in_executor(
                    self._bcrypt, web.auth.check, header)
            finally:
                self._bcrypt_waiting -= 1
        if not ok:
            return Response(401, b"Unauthorized\n", headers=[("WWW-Authenticate", _CHALLENGE)])
        return None

    def _endpoint(self, request: Request) -> Response:
        """The answer of an admitted request; a HEAD gets the GET's headers."""
        if request.path == "/metrics":
            return self._metrics(request)
        if request.path == "/healthz":
            health = self._health()
            body = ("ok" if health.healthy else "unhealthy") + ": " + health.detail + "\n"
            return Response(200 if health.healthy else 503, body.encode())
        if request.path == "/":
            return Response(200, _landing(self._health()).encode(), "text/html; charset=utf-8")
        return Response(404, b"not found; try /metrics\n")

    def _metrics(self, request: Request) -> Response:
        try:
            body = self._render()
        except Exception:  # the collector guards itself; this is the last line of defence
            self.log.exception("rendering /metrics failed")
            return Response(500, b"internal error while rendering metrics\n")
        if accepts_gzip(request.headers.get("accept-encoding")):
            return Response(200, gzip.compress(body, compresslevel=1), CONTENT_TYPE,
                            [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")])
        return Response(200, body, CONTENT_TYPE, [("Vary", "Accept-Encoding")])


def accepts_gzip(header: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value accepts gzip: listed with q > 0, or ``*`` with
    q > 0 and gzip not listed (RFC 9110 12.5.3)."""
    weights: dict[str, float] = {}
    for item in (header or "").split(","):
        coding, *params = item.split(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        weights["gzip" if coding == "x-gzip" else coding] = q
    if "gzip" in weights:
        return weights["gzip"] > 0
    return weights.get("*", 0.0) > 0


def _landing(health: Health) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{html.escape(s)}</td><td>{html.escape(t)}</td>"
        f"<td>{'up' if up else 'down'}</td></tr>"
        for c, s, t, up in health.sources
    )
    probes = "".join(
        f"<tr><td>{html.escape(e)}</td><td>{html.escape(n)}</td><td>{html.escape(u)}</td>"
        f"<td>{html.escape(o)}</td></tr>"
        for e, n, u, o in health.canaries
    )
    canaries = "" if not probes else f"""<h2>Canary probes</h2>
<table border="1" cellpadding="4">
<tr><th>engine</th><th>endpoint</th><th>API</th><th>last probe</th></tr>
{probes}
</table>
"""
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
{canaries}</body></html>
"""
