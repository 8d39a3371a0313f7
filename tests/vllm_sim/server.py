"""HTTP server serving a scenario's time-varying vLLM /metrics, with fault injection, and the
engines' streaming requests (:mod:`.completions`) with their own faults and pace."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from .completions import handle_post, route
from .dialects import DIALECTS, Dialect
from .expected import gauges_at, last_restart, phase_index, totals_at
from .exposition import CONTENT_TYPE, EngineSnapshot, engine_state, render
from .faults import (
    DRIP_INTERVAL,
    FAULT_MODES,
    STREAM_FAULT_MODES,
    Fault,
    StreamFault,
    huge_body,
    mix_in_garbage,
    parse_fault,
)
from .ledger import Ledger, TokenEvent
from .scenario import Scenario, load_scenario
from .streaming import Streaming

__all__ = ["FAULT_MODES", "STREAM_FAULT_MODES", "Fault", "SimServer", "StreamFault"]

class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sim: SimServer) -> None:
        self.sim = sim
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    disable_nagle_algorithm = True  # as uvicorn: headers, then body, neither waiting for an ACK

    def version_string(self) -> str:
        """Answer as vLLM's server does."""
        return "uvicorn"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Stay quiet."""

    def do_GET(self) -> None:
        """Serve /metrics, /health and /_sim/state."""
        path, _, query = self.path.partition("?")
        sim = self.server.sim
        dialect = sim.dialect
        answer = route(sim, path)
        if answer is not None:
            self._reply(200, answer[1], answer[0])
        elif dialect is not None and path == dialect.metrics_path:
            self._metrics()
        elif dialect is not None and path.startswith("/metrics"):
            self._reply(404, b"Not Found\n", "text/plain")
        elif path == "/metrics":
            self._metrics()  # like vLLM's /metrics route, which ignores parameters
        elif path == "/metrics/" and sim.filtering:
            # like the prometheus_client app vLLM mounts under /metrics/: name[] filters
            names = parse_qs(query).get("name[]")
            self._metrics(names)
        elif path == "/health":
            self._reply(200, b"", "application/json")
        elif path == "/_sim/state":
            self._json(200, sim.state())
        else:
            self._reply(404, b"Not Found\n", "text/plain")

    def do_POST(self) -> None:
        """Handle /_sim/fault, /_sim/restart and the streaming API (:mod:`.completions`)."""
        path = self.path.split("?", 1)[0]
        sim = self.server.sim
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if handle_post(self, sim, path, raw):
            return
        if path == "/_sim/restart":
            self._json(200, {"restart_at": float(sim.restart())})
        elif path == "/_sim/fault":
            try:
                fault = parse_fault(json.loads(raw or b"{}"))
            except (ValueError, UnicodeDecodeError) as exc:
                self._json(400, {"error": str(exc)})
                return
            sim.set_fault(fault.mode, fault.seconds, fault.count)
            self._json(200, {"mode": fault.mode, "seconds": fault.seconds, "count": fault.count})
        else:
            self._reply(404, b"Not Found\n", "text/plain")

    def _metrics(self, names: list[str] | None = None) -> None:
        sim = self.server.sim
        fault, body = sim.prepare_metrics(self.headers.get("Accept"), names)
        mode = fault.mode
        content_type = CONTENT_TYPE if sim.dialect is None else sim.dialect.content_type
        if mode in ("none", "partial_garbage", "garbage"):
            self._reply(200, body, content_type)
        elif mode == "status500":
            self._reply(500, body, "text/plain; charset=utf-8")
        elif mode == "hang":
            if not sim.stopping.wait(fault.seconds):
                self._reply(200, body, content_type)
        elif mode == "huge":
            self._stream(huge_body(body, sim.scenario.engines[0].model, fault.seconds))
        elif mode == "slow_drip":
            self._stream(iter(body.splitlines(keepends=True)), DRIP_INTERVAL)
        else:  # close
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: object) -> None:
        self._reply(status, json.dumps(obj).encode(), "application/json")

    def _stream(self, chunks: Iterator[bytes], interval: float = 0.0) -> None:
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.end_headers()
        stopping = self.server.sim.stopping
        try:
            for chunk in chunks:
                if stopping.is_set():
                    break
                self.wfile.write(chunk)
                self.wfile.flush()
                if interval and stopping.wait(interval):
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


class SimServer(Streaming):
    """Simulated vLLM server for one scenario; `start()` serves it from a daemon thread."""

    def __init__(
        self, scenario: Scenario | str | Path, host: str = "127.0.0.1", port: int = 0,
        filtering: bool = True, dialect: str | None = None,
        first_token_delay: float = 0.0, token_delay: float = 0.0,
    ) -> None:
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.filtering = filtering
        """Whether ``/metrics/`` answers ``name[]`` as vLLM's does (else it is not found)."""
        self.dialect: Dialect | None = None if dialect is None else DIALECTS[dialect]
        """Another engine's exposition of the scenario (``tests/vllm_sim/dialects``), served
        at its metrics path, with its other routes; None: vLLM's."""
        self.routes = {} if self.dialect is None else self.dialect.routes(self.scenario.engines)
        self._init_streaming(self.dialect, first_token_delay, token_delay)
        self._ledger = Ledger()
        self._started = False
        self.host = host
        self._port = port
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tick = 0
        self._scrapes = 0
        self._served = 0
        self._last_accept: str | None = None
        self._restarts: list[Fraction] = list(self.scenario.restarts)
        self._fault = Fault()
        self._start_mono = time.monotonic()
        self._start_wall = time.time()
        self._last_position = Fraction(0)
        self._last: list[EngineSnapshot] = self._snapshots(Fraction(0))

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> SimServer:
        """Bind, start the clock (the first time) and serve in a daemon thread; after
        `stop()`, serve again on the same port, the clock and counters running on."""
        if self._httpd is not None:
            raise RuntimeError("already started")
        self.stopping.clear()
        self._httpd = _HTTPServer((self.host, self._port), self)
        self._port = self._httpd.server_address[1]
        if not self._started:  # a start after stop() is the same engine, up again
            self._start_mono = time.monotonic()
            self._start_wall = time.time()
        self._started = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="vllm-sim",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; pending sleeps and streams end early."""
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """Bound port (the requested one before `start()`)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        return f"http://{self.host}:{self._port}"

    @property
    def metrics_url(self) -> str:
        """URL of the metrics endpoint (the dialect's path)."""
        path = "/metrics" if self.dialect is None else self.dialect.metrics_path
        return f"{self.url}{path}"

    # --- control -------------------------------------------------------------------------

    @property
    def tick(self) -> int:
        """Ticks served so far (tick clock)."""
        return self._tick

    @property
    def scrapes(self) -> int:
        """GET /metrics requests received, faulty ones included."""
        return self._scrapes

    @property
    def last_accept(self) -> str | None:
        """Accept header of the latest GET /metrics."""
        return self._last_accept

    def elapsed(self) -> float:
        """Seconds since `start()`."""
        return time.monotonic() - self._start_mono

    def set_fault(self, mode: str, seconds: float = 0.0, count: int | None = None) -> None:
        """Make the next `count` (default: all) GET /metrics misbehave as `mode`."""
        fault = parse_fault({"mode": mode, "seconds": seconds, "count": count})
        with self._lock:
            self._fault = fault

    def restart(self) -> Fraction:
        """Restart every engine now; return the restart position (tick or seconds)."""
        with self._lock:
            position = self._position()
            self._restarts.append(position)
            self._ledger.clear()
            return position

    def add_tokens(self, engine: int, prompt: int = 0, generation: int = 0,
                   finished: str | None = None) -> None:
        """Count a served request's tokens (or its end) in engine `engine`'s counters, from
        the next GET /metrics on."""
        with self._lock:
            at = self._position()
            if self.scenario.clock == "tick":
                at += Fraction(1, 2)
            self._ledger.add(TokenEvent(at, engine, prompt, generation, finished))

    def state(self) -> dict[str, Any]:
        """JSON-ready view of the clock, request log and what the last /metrics showed."""
        realtime = self.scenario.clock == "realtime"
        with self._lock:
            engines = [engine_state(self.scenario, s) for s in self._last]
            return {
                "naming": self.scenario.naming,
                "clock": self.scenario.clock,
                "tick": None if realtime else self._tick,
                "elapsed": float(self._last_position) if realtime else None,
                "elapsed_now": self.elapsed(),
                "position": float(self._last_position),
                "phase": phase_index(self.scenario, self._last_position),
                "scrapes": self._scrapes,
                "served": self._served,
                "last_accept": self._last_accept,
                "fault": {
                    "mode": self._fault.mode,
                    "seconds": self._fault.seconds,
                    "count": self._fault.count,
                },
                "stream_fault": asdict(self._stream_fault),
                "pace": {"first_token_delay": self.first_token_delay,
                         "token_delay": self.token_delay},
                "stream_requests": len(self.stream_requests),
                "restarts": [float(r) for r in sorted(self._restarts)],
                "engines": engines,
            }

    def prepare_metrics(self, accept: str | None,
                        names: list[str] | None = None) -> tuple[Fault, bytes]:
        """Record a GET /metrics and return the fault in effect and the body to send.

        Only a fault-free response advances the tick and updates `state()`; faulty ones
        render the current state (hang, huge, slow_drip, partial_garbage) or none.
        """
        with self._lock:
            self._scrapes += 1
            self._last_accept = accept
            fault = self._take_fault()
            if fault.mode == "none":
                self._tick += 1
                position = self._position()
                self._last = self._snapshots(position)
                self._last_position = position
                self._served += 1
                return fault, self._render(self._last, names)
            current = self._render(self._snapshots(self._position()), names)
            seed = self._scrapes
        if fault.mode in ("hang", "slow_drip", "huge"):
            return fault, current
        if fault.mode == "partial_garbage":
            return fault, mix_in_garbage(current)
        if fault.mode == "garbage":
            return fault, b"\x89PNG\r\n\x1a\n" + random.Random(seed).randbytes(4096)
        if fault.mode == "status500":
            return fault, b"Internal Server Error\n"
        return fault, b""

    # --- internals -----------------------------------------------------------------------

    def _position(self) -> Fraction:
        if self.scenario.clock == "tick":
            return Fraction(self._tick)
        return Fraction(time.monotonic() - self._start_mono)

    def _snapshots(self, position: Fraction) -> list[EngineSnapshot]:
        totals = totals_at(self.scenario, position, self._restarts)
        gauges = gauges_at(self.scenario, position)
        restart = last_restart(self._restarts, position)
        created = self._start_wall + (float(restart) if restart is not None else 0.0)
        return [EngineSnapshot(e, self._ledger.apply(totals, i, position, restart), gauges,
                               created) for i, e in enumerate(self.scenario.engines)]

    def _render(self, snapshots: list[EngineSnapshot], names: list[str] | None = None) -> bytes:
        if self.dialect is not None:
            return self.dialect.render(snapshots, self._start_wall)
        return render(self.scenario.naming, snapshots, self._start_wall, names)

    def _take_fault(self) -> Fault:
        fault = self._fault
        if fault.count is not None:
            remaining = fault.count - 1
            self._fault = Fault(fault.mode, fault.seconds, remaining) if remaining else Fault()
        return fault

