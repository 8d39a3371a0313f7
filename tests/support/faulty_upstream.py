"""A vLLM ``/metrics`` upstream that misbehaves on command, for the fault matrix and the bench.

It runs in a process of its own (``python -m tests.support.faulty_upstream``), so that its CPU
is not counted as the daemon's, and prints ``listening on DATA_PORT CONTROL_PORT``. The data port
answers any path under ``/metrics`` (``/metrics/`` with ``name[]`` too, unfiltered: the same
series, as the daemon's filter check wants) with a recorded real vLLM 0.32.0 exposition whose
counters and histograms grow linearly in time, so rates are known exactly (``/state``).

The control port, which never misbehaves, takes::

    GET /fault?mode=NAME        every answer from now on misbehaves as NAME (``ok``: none)
    GET /fault?mode=A,B,C       answers take the modes in turn (not ``down``)
    GET /restart                counters drop to small values and ``_created`` moves on,
                                as when vLLM restarts
    GET /state                  JSON: mode, requests by mode, true rates per second

Everything is bounded: loopback only, at most :data:`MAX_CONNECTIONS` at once, every loop
ends within :data:`SLOW_MAX` seconds or when the client goes, and the process exits when its
parent does, on SIGTERM, or after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import signal
import socket
import string
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

ROOT = Path(__file__).parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "vllm" / "v0.32.0-cpu-after-load.txt"
HOST = "127.0.0.1"

MODES = ("ok", "down", "status_503", "hang", "header_trickle", "body_trickle", "reset",
         "truncated", "junk", "binary", "huge", "huge_declared", "huge_line",
         "malformed_flood", "label_flood", "redirect", "bad_chunk_size", "chunked_early_end")
"""Every misbehaviour; ``huge`` streams without a Content-Length, ``huge_declared`` says it."""

GROWTH = 0.05
"""Per second, how much every counter grows, as a fraction of its recorded value."""
HEADER_TRICKLE = 0.2
"""Seconds between header bytes in ``header_trickle``."""
BODY_TRICKLE = 0.05
"""Seconds between body bytes in ``body_trickle``."""
SLOW_MAX = 30.0
"""The longest any one answer (hang, trickle, huge) is drawn out."""
IDLE_MAX = 30.0
"""How long a kept-alive connection may wait for its next request."""
MAX_CONNECTIONS = 32
HUGE_LINE_BYTES = 10_000_000
MALFORMED_TYPE_LINES = 40_000
FLOOD_LABEL_SETS = 30_000
FLOOD_FAMILIES = 2_000
JUNK_BYTES = 8192
FLOOD_RUNNING = "vllm:num_requests_running"
"""The kept family the floods land in (after its real sample)."""


class Payload:
    """The recorded exposition, re-rendered for every answer with its numbers grown.

    Every ``vllm:`` counter, bucket, sum and count is its recorded value times
    ``1 + GROWTH * t`` (t: seconds since start), so each grows at a constant, known rate and
    buckets stay cumulative; after :meth:`restart` the factor starts again from 0 and every
    ``_created`` stamp is the restart's time.
    """

    def __init__(self, fixture: Path = FIXTURE) -> None:
        self.parts: list[str] = []
        self.growing: list[tuple[int, float]] = []  # (index in parts, recorded value)
        self.created: list[int] = []
        self.gauges: list[tuple[int, float]] = []  # (index, scale)
        self.bases: dict[str, float] = {}
        self.anchor = 0
        """Index of the part after the last sample of :data:`FLOOD_RUNNING`."""
        self.help_running = 0
        for line in fixture.read_text().splitlines():
            if line.startswith("#") or not line.startswith("vllm:"):
                if line.startswith(f"# HELP {FLOOD_RUNNING} "):
                    self.help_running = len(self.parts)
                self.parts.append(line + "\n")
                continue
            head, _, value = line.rpartition(" ")
            name = head.split("{", 1)[0]
            self.parts.append(head + " ")
            index = len(self.parts)
            if name.endswith("_created"):
                self.created.append(index)
            elif name.endswith(("_total", "_bucket", "_count", "_sum")):
                self.growing.append((index, float(value)))
                if 'model_name="tiny-llama"' in head and name.endswith("_total"):
                    self.bases[name] = self.bases.get(name, 0.0) + float(value)
            elif name.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
                self.gauges.append((index, 1.0))
            elif name.startswith("vllm:kv_cache_usage"):
                self.gauges.append((index, 0.1))
            self.parts.append(value + "\n")
            if name == FLOOD_RUNNING:
                self.anchor = len(self.parts)
        assert self.anchor and self.help_running, "the fixture lacks " + FLOOD_RUNNING
        self.started = time.monotonic()
        self.restarted_at: float | None = None
        self.created_at = time.time()
        self.answers = 0
        self.lock = threading.Lock()

    def restart(self) -> None:
        with self.lock:
            self.restarted_at = time.monotonic()
            self.created_at = time.time()

    def rates(self) -> dict[str, float]:
        """The true rate per second of the counters the daemon turns into rates."""
        return {ours: self.bases.get(f"vllm:{name}_total", 0.0) * GROWTH
                for ours, name in (("prompt_tokens", "prompt_tokens"),
                                   ("generation_tokens", "generation_tokens"),
                                   ("preemptions", "num_preemptions"))}

    def render(self, insert: str = "", help_note: str = "") -> bytes:
        """One answer; ``insert`` goes in after the real samples of :data:`FLOOD_RUNNING`,
        ``help_note`` at the end of that family's HELP text."""
        with self.lock:
            self.answers += 1
            k = self.answers
            now = time.monotonic()
            if self.restarted_at is None:
                factor = 1.0 + GROWTH * (now - self.started)
            else:
                factor = GROWTH * (now - self.restarted_at)
            parts = list(self.parts)
            for i, base in self.growing:
                parts[i] = f"{base * factor!r}\n"
            created = f"{self.created_at!r}\n"
            for i in self.created:
                parts[i] = created
            for j, (i, scale) in enumerate(self.gauges):
                parts[i] = f"{(k + j) % 5 * scale!r}\n"
        if help_note:
            parts[self.help_running] = parts[self.help_running].rstrip("\n") + help_note + "\n"
        if insert:
            parts.insert(self.anchor, insert)
        return "".join(parts).encode()


def _malformed_types() -> str:
    kinds = ("# TYPE flood_type_{i} bogus\n", "# TYPE 9flood_{i} counter\n",
             "# TYPE flood_untyped_{i}\n", "# TYPE flood:{i}{{bad}} gauge\n")
    return "".join(kinds[i % 4].format(i=i) for i in range(MALFORMED_TYPE_LINES))


def _label_flood_template(label_sets: int = FLOOD_LABEL_SETS) -> str:
    """A flood in which ``@N@`` is replaced by the answer's number: every answer brings
    ``label_sets`` new (model, rank) label sets in a family the daemon reads and
    :data:`FLOOD_FAMILIES` families with new names and HELP texts."""
    samples = "".join(f'{FLOOD_RUNNING}{{engine="{i % 7}",model_name="flood-@N@-{i}"}} 1.0\n'
                      for i in range(label_sets))
    families = "".join(f"# HELP flood_@N@_{i} Unique help text @N@ number {i}\n"
                       f"# TYPE flood_@N@_{i} gauge\n"
                       f'flood_@N@_{i}{{id="@N@-{i}",shard="{i % 13}"}} {i}.0\n'
                       for i in range(FLOOD_FAMILIES))
    return samples + families


class Upstream:
    """The data server: a listening socket and one thread per connection."""

    def __init__(self, port: int = 0, huge_bytes: int = 32 * 1024 * 1024,
                 flood_label_sets: int = FLOOD_LABEL_SETS) -> None:
        self.payload = Payload()
        self.huge_bytes = huge_bytes
        self.modes: tuple[str, ...] = ("ok",)
        self.requests: Counter[str] = Counter()
        self.restarts = 0
        self._turn = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listen_wanted = True
        self._listening = threading.Event()
        self._closed = threading.Event()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = self._bind(port)
        self.port = int(self._listener.getsockname()[1])
        self._listening.set()
        self._rng = random.Random(7)
        self._malformed = _malformed_types()
        self._flood = _label_flood_template(flood_label_sets)
        self._huge_line = ("vllm:num_requests_running" + "x" * (
            HUGE_LINE_BYTES - len("vllm:num_requests_running"))) + "\n"
        block = "vllm:filler_total{model_name=\"tiny-llama\"} 1.0\n" * 1400
        self._huge_block = block.encode()
        self._thread = threading.Thread(target=self._accept_loop, name="accept", daemon=True)

    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        sock.listen(64)
        sock.settimeout(0.1)
        return sock

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._drop_connections()
        self._thread.join(2)

    # -- control -----------------------------------------------------------------------

    def set_modes(self, modes: tuple[str, ...]) -> None:
        """Misbehave as ``modes`` in turn from the next request on; ``down`` closes the
        listening socket and every open connection before this returns."""
        unknown = [m for m in modes if m not in MODES]
        if not modes or unknown or ("down" in modes and len(modes) > 1):
            raise ValueError(f"modes must be one of {', '.join(MODES)}, 'down' alone;"
                             f" got {','.join(modes)!r}")
        down = modes == ("down",)
        with self._lock:
            self.modes = modes
            self._turn = 0
            self._listen_wanted = not down
        if down:
            self._listening.clear()
            self._closed.wait(2)
            self._drop_connections()
        else:
            self._closed.clear()
            if not self._listening.wait(2):
                raise RuntimeError(f"cannot listen on port {self.port} again")

    def restart(self) -> None:
        self.payload.restart()
        self.restarts += 1

    def state(self) -> dict[str, Any]:
        return {"modes": list(self.modes), "port": self.port, "requests": dict(self.requests),
                "answers": self.payload.answers, "restarts": self.restarts,
                "rates": self.payload.rates()}

    def _next_mode(self) -> str:
        with self._lock:
            mode = self.modes[self._turn % len(self.modes)]
            self._turn += 1
            self.requests[mode] += 1
            return mode

    def _drop_connections(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # -- serving -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            if not self._listen_wanted:
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
                self._closed.set()
                self._stop.wait(0.02)
                continue
            if self._listener is None:
                try:
                    self._listener = self._bind(self.port)
                except OSError:
                    self._stop.wait(0.1)
                    continue
                self._listening.set()
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                full = len(self._conns) >= MAX_CONNECTIONS
                if not full:
                    self._conns.add(conn)
            if full:
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
        if self._listener is not None:
            self._listener.close()

    def _serve(self, conn: socket.socket) -> None:
        """Answer requests on one connection until it closes or a mode ends it."""
        conn.settimeout(IDLE_MAX)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        try:
            while not self._stop.is_set():
                head, buf = _read_head(conn, buf)
                if head is None:
                    return
                path = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 \
                    else "/"
                if not path.startswith("/metrics"):
                    _send(conn, 404, b"not found\n")
                    continue
                if not self._answer(conn, self._next_mode()):
                    return
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _answer(self, conn: socket.socket, mode: str) -> bool:
        """Answer one request as ``mode``; whether the connection may serve another."""
        p = self.payload
        if mode == "ok":
            return _send(conn, 200, p.render())
        if mode == "status_503":
            return _send(conn, 503, b"engine overloaded\n")
        if mode == "redirect":
            where = f"http://{HOST}:{self.port}/metrics" if self._turn % 2 else \
                f"http://{HOST}:9/elsewhere/metrics"
            return _send(conn, 302, b"", [("Location", where)])
        if mode == "junk":
            alphabet = string.ascii_letters + string.digits + string.punctuation + "  \n"
            return _send(conn, 200, "".join(self._rng.choices(alphabet, k=JUNK_BYTES)).encode())
        if mode == "binary":
            noise = bytearray(os.urandom(JUNK_BYTES))
            noise[self._rng.randrange(JUNK_BYTES)] = 0
            return _send(conn, 200, bytes(noise))
        if mode == "huge_line":
            return _send(conn, 200, p.render(self._huge_line))
        if mode == "malformed_flood":
            return _send(conn, 200, p.render(self._malformed))
        if mode == "label_flood":
            n = str(p.answers + 1)
            return _send(conn, 200, p.render(self._flood.replace("@N@", n),
                                             f" (answer {n})"))
        if mode == "hang":
            self._hang(conn)
            return False
        body = p.render()
        if mode == "header_trickle":
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            self._trickle(conn, _headers(len(body))[len(b"HTTP/1.1 200 OK\r\n"):] + body,
                          HEADER_TRICKLE)
            return False
        if mode == "body_trickle":
            conn.sendall(_headers(len(body)))
            self._trickle(conn, body, BODY_TRICKLE)
            return False
        half = body[:len(body) // 2]
        if mode == "reset":
            conn.sendall(_headers(len(body)) + half)
            self._stop.wait(0.05)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if mode == "truncated":
            conn.sendall(_headers(len(body)) + half)
            conn.shutdown(socket.SHUT_WR)
            return False
        if mode in ("bad_chunk_size", "chunked_early_end"):
            chunked = _headers(None, [("Transfer-Encoding", "chunked")])
            chunked += b"%x\r\n%s\r\n" % (len(half), half)
            if mode == "bad_chunk_size":
                chunked += b"zz9\r\n" + body[len(half):] + b"\r\n0\r\n\r\n"
            conn.sendall(chunked)
            conn.shutdown(socket.SHUT_WR)
            return False
        if mode in ("huge", "huge_declared"):
            length = self.huge_bytes if mode == "huge_declared" else None
            conn.sendall(_headers(length, [] if length else [("Connection", "close")]))
            deadline = time.monotonic() + SLOW_MAX
            sent = 0
            while sent < self.huge_bytes and time.monotonic() < deadline \
                    and not self._stop.is_set():
                block = self._huge_block[:self.huge_bytes - sent]
                conn.sendall(block)
                sent += len(block)
            conn.shutdown(socket.SHUT_WR)
            return False
        raise AssertionError(f"mode {mode!r} has no answer")

    def _hang(self, conn: socket.socket) -> None:
        """Never answer; return when the client closes, at :data:`SLOW_MAX` or on stop."""
        deadline = time.monotonic() + SLOW_MAX
        while time.monotonic() < deadline and not self._stop.is_set():
            readable, _, _ = select.select([conn], [], [], 0.2)
            if readable and not conn.recv(4096):
                return

    def _trickle(self, conn: socket.socket, data: bytes, every: float) -> None:
        """Send ``data`` a byte at a time, ``every`` seconds apart, until the client goes."""
        deadline = time.monotonic() + SLOW_MAX
        for i in range(len(data)):
            if time.monotonic() > deadline or self._stop.wait(every):
                return
            conn.sendall(data[i:i + 1])


def _read_head(conn: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
    """The next request's head (up to the blank line) and what follows; None at EOF."""
    while b"\r\n\r\n" not in buf:
        if len(buf) > 65536:
            return None, b""
        try:
            data = conn.recv(65536)
        except TimeoutError:
            return None, b""
        if not data:
            return None, b""
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


_REASONS = {200: "OK", 302: "Found", 404: "Not Found", 503: "Service Unavailable"}


def _headers(length: int | None, extra: list[tuple[str, str]] | None = None,
             status: int = 200) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}",
             "Content-Type: text/plain; version=0.0.4; charset=utf-8"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in extra or ()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _send(conn: socket.socket, status: int, body: bytes,
          extra: list[tuple[str, str]] | None = None) -> bool:
    conn.sendall(_headers(len(body), extra, status) + body)
    return True


class _Control(BaseHTTPRequestHandler):
    upstream: Upstream

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        try:
            if url.path == "/fault":
                modes = parse_qs(url.query).get("mode", ["ok"])[0]
                self.upstream.set_modes(tuple(modes.split(",")))
            elif url.path == "/restart":
                self.upstream.restart()
            elif url.path != "/state":
                raise ValueError(f"unknown path {url.path}")
        except (ValueError, RuntimeError) as exc:
            self._reply(400, {"error": str(exc)})
            return
        self._reply(200, self.upstream.state())

    def _reply(self, status: int, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.faulty_upstream",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--huge-bytes", type=int, default=32 * 1024 * 1024,
                        help="size of the huge answers (default 32 MiB)")
    parser.add_argument("--flood-label-sets", type=int, default=FLOOD_LABEL_SETS,
                        help="new label sets in each label_flood answer (default"
                        f" {FLOOD_LABEL_SETS})")
    parser.add_argument("--lifetime", type=float, default=900.0,
                        help="seconds after which the process exits regardless (default 900)")
    args = parser.parse_args(argv)
    upstream = Upstream(huge_bytes=args.huge_bytes, flood_label_sets=args.flood_label_sets)
    control = ThreadingHTTPServer((HOST, 0), type("Control", (_Control,),
                                                  {"upstream": upstream}))
    control.daemon_threads = True
    done = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    upstream.start()
    threading.Thread(target=control.serve_forever, args=(0.1,), daemon=True).start()
    print(f"listening on {upstream.port} {control.server_address[1]}", flush=True)
    parent, deadline = os.getppid(), time.monotonic() + args.lifetime
    while not done.wait(0.5):
        if os.getppid() != parent or time.monotonic() > deadline:
            break
    control.shutdown()
    upstream.stop()
    return 0


class FaultyUpstream:
    """The faulty upstream in a process of its own, and its control."""

    def __init__(self, huge_bytes: int = 32 * 1024 * 1024,
                 flood_label_sets: int = FLOOD_LABEL_SETS, lifetime: float = 900.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.faulty_upstream", "--huge-bytes", str(huge_bytes),
             "--flood-label-sets", str(flood_label_sets), "--lifetime", str(lifetime)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the faulty upstream did not start: {line!r}")
        data, control = line.split()[-2:]
        self.port = int(data)
        self.metrics_url = f"http://{HOST}:{data}/metrics"
        self._control = f"http://{HOST}:{control}"
        self.pid = self.proc.pid

    def _get(self, path: str, **params: str) -> dict[str, Any]:
        resp = requests.get(self._control + path, params=params, timeout=10)
        if resp.status_code != 200:
            raise RuntimeError(f"faulty upstream {path}: {resp.text}")
        data: dict[str, Any] = resp.json()
        return data

    def set(self, *modes: str) -> dict[str, Any]:
        """Misbehave as ``modes`` (in turn) from the next request; ``set("ok")`` heals."""
        return self._get("/fault", mode=",".join(modes))

    def restart(self) -> dict[str, Any]:
        return self._get("/restart")

    def state(self) -> dict[str, Any]:
        return self._get("/state")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> FaultyUpstream:
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None,
                 _tb: TracebackType | None) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
