"""An HTTP server in the test process standing in for an engine or an exporter's page: each
GET is answered with what a function of its path returns.

    with Served(lambda path: body if path == "/metrics" else None) as page:
        poll(page.url + "/metrics")
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

Body = bytes | str
"""What is sent; a string as UTF-8."""

Answer = Body | tuple[int, str | None, Body] | None
"""A body (status 200, the server's content type), ``(status, content type, body)`` (no
Content-Type header where it is None), or None: a 404."""


class Served:
    """An HTTP server on a free port of 127.0.0.1, in a thread of this process, answering each
    GET with ``answer(path)``: the request's path, with its query. ``answer`` may be replaced
    while it serves (a test moving its engine on); it is called from the server's threads, so
    what it counts it counts under a lock (see :func:`counted`)."""

    def __init__(self, answer: Callable[[str], Answer], content_type: str | None = None) -> None:
        self.answer = answer
        self._lock = threading.Lock()
        self._paths: list[str] = []
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with served._lock:
                    served._paths.append(self.path)
                found = served.answer(self.path)
                if found is None:
                    self.send_error(404)
                    return
                status, kind, body = found if isinstance(found, tuple) else (
                    200, content_type, found)
                data = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                if kind is not None:
                    self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        """No path: ``http://127.0.0.1:PORT``."""
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name="served")
        self._thread.start()

    @property
    def paths(self) -> list[str]:
        """The paths asked so far, in the order they came."""
        with self._lock:
            return list(self._paths)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def counted(make: Callable[[int], Answer]) -> Callable[[], Answer]:
    """A function whose n-th call (from 1) answers ``make(n)``, for an engine whose counters
    move on with every poll; thread-safe."""
    lock = threading.Lock()
    calls = itertools.count(1)

    def answer() -> Answer:
        with lock:
            n = next(calls)
        return make(n)

    return answer


def in_turn(bodies: Sequence[Answer], each: int = 1) -> Callable[[], Answer]:
    """A function answering ``bodies`` in turn, each for ``each`` calls, and the last one from
    then on; thread-safe."""
    return counted(lambda n: bodies[min((n - 1) // each, len(bodies) - 1)])
