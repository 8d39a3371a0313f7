"""The HTTP side under abuse: slow clients beyond the connection cap and in the thousands,
hundreds of concurrent scrapers, oversized heads, floods of bad credentials from one address,
accept() failing with EMFILE. Prometheus's scrape must still answer, quickly, and the
sources must keep polling.

Every client here is on loopback (the whole of 127/8 is loopback on Linux: 127.0.0.2 stands
for a second host).
"""

from __future__ import annotations

import base64
import errno
import gzip
import os
import resource
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from exporter import http_server
from exporter.web import Health, WebServer, accepts_gzip
from tests.support.harness import ROOT, Daemon, pick, wait_for
from tests.vllm_sim import SimServer, load_scenario

SCENARIO = Path(__file__).parent / "scenarios" / "steady_v1.json"
LIGHT = ["--no-collector.gpu", "--no-collector.host", "--no-collector.dcgm",
         "--poll.interval", "300ms", "--poll.timeout", "300ms"]
POLLS = "inference_node_exporter_collector_polls_total"


def raise_nofile(at_least: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < at_least:
        if hard != resource.RLIM_INFINITY and hard < at_least:
            try:  # root may raise the hard limit too
                resource.setrlimit(resource.RLIMIT_NOFILE, (at_least, at_least))
                return
            except (ValueError, OSError):
                pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {at_least}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (at_least, hard))


class LimitedDaemon(Daemon):
    """The daemon started under ``RLIMIT_NOFILE`` = ``nofile`` (soft and hard), if given."""

    def __init__(self, workdir: Path, args: list[str], nofile: int | None = None) -> None:
        super().__init__(workdir, args)
        self.nofile = nofile

    def start(self, ready: bool = True) -> Daemon:
        limit = self.nofile

        def limited() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=limited)
        if ready:
            wait_for("the daemon to answer /healthz", self._answers, timeout=30)
        return self

    def open_fds(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(load_scenario(SCENARIO)) as server:
        yield server


def request(port: int, raw: bytes, source: str = "127.0.0.1", timeout: float = 5.0
            ) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` on a new connection; (status, headers, body) of the answer."""
    with socket.socket() as s:
        s.settimeout(timeout)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        want = int(headers.get("content-length", "0"))
        if not raw.startswith(b"HEAD"):
            while len(body) < want:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
        return int(lines[0].split()[1]), headers, body


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def get(path: str = "/metrics", *extra: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: x", *extra, "Connection: close"])
            + "\r\n\r\n").encode()


class SlowClients:
    """``n`` connections that send nothing (even ones) or one header byte at a time."""

    HEAD = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000

    def __init__(self, port: int, n: int) -> None:
        self.socks: list[socket.socket] = []
        self.sent = [0] * n
        self._stop = threading.Event()
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            assert s.connect_ex(("127.0.0.1", port)) in (0, errno.EINPROGRESS)
            self.socks.append(s)
        self._thread = threading.Thread(target=self._drip, daemon=True)
        self._thread.start()

    def _drip(self) -> None:
        while not self._stop.wait(0.2):  # pacing, one byte per connection per round
            for i, s in enumerate(self.socks):
                if i % 2 and self.sent[i] < len(self.HEAD):
                    try:
                        s.send(self.HEAD[self.sent[i]:self.sent[i] + 1])
                        self.sent[i] += 1
                    except OSError:
                        self.sent[i] = len(self.HEAD)  # closed by the daemon

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.socks:
            s.close()


def timed_scrape(port: int) -> float:
    started = time.monotonic()
    status, _, body = request(port, get(), timeout=3)
    took = time.monotonic() - started
    assert status == 200 and b"inference_node_exporter_build_info" in body
    return took


def polls(daemon: Daemon) -> float:
    return sum(pick(daemon.series(), POLLS, collector="vllm"))


def test_slow_clients_beyond_the_cap_never_lock_out_a_scrape_or_starve_the_sources(
        tmp_path: Path, sim: SimServer) -> None:
    # 256 descriptors: a cap of 128 connections, 128 kept for the sources.
    daemon = LimitedDaemon(tmp_path, [*LIGHT, "--vllm.endpoint", sim.metrics_url], nofile=256)
    with daemon:
        wait_for("the engine to be up", lambda: pick(
            daemon.series(), "inference_node_exporter_collector_up", collector="vllm") == [1.0])
        slow = SlowClients(daemon.port, 600)
        try:
            wait_for("the cap to be reached", lambda: any(
                e["event"].startswith("connection limit reached") for e in daemon.logs()))
            took = [timed_scrape(daemon.port) for _ in range(5)]
            assert max(took) < 1.0
            # At the cap the daemon idles: no spinning accept loop; its source still polls.
            cpu, started = daemon.cpu_seconds(), time.monotonic()
            before = polls(daemon)
            wait_for("three more polls", lambda: polls(daemon) >= before + 3, timeout=10)
            busy = (daemon.cpu_seconds() - cpu) / (time.monotonic() - started)
            print(f"\n600 slow connections, cap 128: scrape max {max(took) * 1000:.1f} ms,"
                  f" daemon CPU {busy:.1%}")
            assert busy < 0.3, f"the daemon used {busy:.0%} of a CPU at the cap"
            assert pick(daemon.series(), "inference_node_exporter_collector_up",
                        collector="vllm") == [1.0]
        finally:
            slow.close()
    assert "Too many open files" not in daemon.log_text()


def test_two_thousand_slow_clients_and_a_scrape_within_a_second(
        tmp_path: Path, sim: SimServer) -> None:
    raise_nofile(4096)
    daemon = LimitedDaemon(tmp_path, [*LIGHT, "--vllm.endpoint", sim.metrics_url])
    with daemon:
        slow = SlowClients(daemon.port, 2000)
        try:
            wait_for("2,000 connections held", lambda: daemon.open_fds() >= 2000, timeout=10)
            took = [timed_scrape(daemon.port) for _ in range(5)]
            print(f"\nscrape with 2,000 slow connections: max {max(took) * 1000:.1f} ms")
            assert max(took) < 1.0
            started = time.monotonic()  # and SIGTERM still ends it promptly
            assert daemon.stop() == 0 and time.monotonic() - started < 2.0
        finally:
            slow.close()
    assert "Too many open files" not in daemon.log_text()


def test_two_hundred_concurrent_scrapers_are_all_answered(
        tmp_path: Path, sim: SimServer) -> None:
    daemon = LimitedDaemon(tmp_path, [*LIGHT, "--vllm.endpoint", sim.metrics_url])
    with daemon:
        n = 200
        barrier = threading.Barrier(n)
        results: list[tuple[int, float] | Exception] = []

        def scrape() -> None:
            barrier.wait(10)
            started = time.monotonic()
            try:
                status, _, _ = request(daemon.port, get(), timeout=5)
                results.append((status, time.monotonic() - started))
            except Exception as exc:  # a time-out or a reset: counted below
                results.append(exc)

        threads = [threading.Thread(target=scrape) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        failures = [r for r in results if isinstance(r, Exception)]
        assert not failures, failures[:3]
        answered = [r for r in results if not isinstance(r, Exception)]
        assert len(answered) == n and all(status == 200 for status, _ in answered)
        latencies = sorted(t for _, t in answered)
        p99 = statistics.quantiles(latencies, n=100)[98]
        print(f"\n200 concurrent scrapers: p50 {latencies[n // 2] * 1000:.0f} ms,"
              f" p99 {p99 * 1000:.0f} ms")
        assert p99 < 5.0


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(20))
     + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", 405),
    (b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
])
def test_malformed_and_oversized_requests_are_refused(
        daemon_light: LimitedDaemon, raw: bytes, status: int) -> None:
    got, headers, _ = request(daemon_light.port, raw)
    assert got == status
    assert headers["connection"] == "close"
    assert timed_scrape(daemon_light.port) < 1.0  # and the daemon serves on


@pytest.fixture(scope="module")
def daemon_light(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LimitedDaemon]:
    daemon = LimitedDaemon(tmp_path_factory.mktemp("light"),
                           [*LIGHT, "--vllm.endpoint", "http://127.0.0.1:1/metrics"])
    with daemon:
        yield daemon


def test_head_gives_the_length_of_the_get_and_q0_refuses_gzip(
        daemon_light: LimitedDaemon) -> None:
    port = daemon_light.port

    def same_length() -> bool:
        first = request(port, get())[2]
        status, headers, body = request(port, get().replace(b"GET", b"HEAD", 1))
        second = request(port, get())[2]
        assert status == 200 and body == b""
        return len(first) == len(second) == int(headers["content-length"]) > 0

    wait_for("HEAD's Content-Length to equal the GET's body length", same_length, timeout=10)
    for value, gzipped in (("gzip", True), ("gzip;q=0", False), ("identity", False),
                           ("*;q=0.5", True), ("*, gzip;q=0", False), ("br, gzip;q=0.1", True)):
        _, headers, body = request(port, get("/metrics", f"Accept-Encoding: {value}"))
        assert (headers.get("content-encoding") == "gzip") is gzipped, value
        text = gzip.decompress(body) if gzipped else body
        assert b"inference_node_exporter_collector_up" in text


@pytest.mark.parametrize(("header", "accepted"), [
    (None, False), ("", False), ("gzip", True), ("GZIP ; Q=1", True), ("gzip;q=0", False),
    ("gzip;q=0.000", False), ("deflate, gzip;q=0.5", True), ("*", True), ("*;q=0", False),
    ("*;q=1, gzip;q=0", False), ("x-gzip", True), ("gzip;q=nonsense", False),
])
def test_accept_encoding_is_parsed_with_q_values(header: str | None, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


def test_the_rate_limit_is_per_client_and_comes_before_authentication(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(4)).decode()
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  prometheus: {hashed}\n"
                      "rate_limit:\n  interval: 30s\n  burst: 3\n")
    daemon = LimitedDaemon(tmp_path, [*LIGHT, "--vllm.endpoint", "http://127.0.0.1:1/metrics",
                                      "--web.config.file", str(config)])
    bad = "Authorization: Basic " + base64.b64encode(b"prometheus:wrong").decode()
    good = "Authorization: Basic " + base64.b64encode(b"prometheus:right").decode()
    with daemon.start(ready=False):
        wait_for("the daemon to listen", lambda: listening(daemon.port))
        flood = [request(daemon.port, get("/metrics", bad), source="127.0.0.2")[0]
                 for _ in range(20)]
        # The burst is spent on 401s, then the flood is refused before any bcrypt run.
        assert flood == [401] * 3 + [429] * 17
        # 127.0.0.1 has a bucket of its own.
        assert [request(daemon.port, get("/metrics", good))[0] for _ in range(4)] == \
            [200] * 3 + [429]


# --- the server in this process --------------------------------------------------------


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebServer]:
    monkeypatch.setattr(http_server, "HEAD_TIMEOUT", 0.5)
    monkeypatch.setattr(http_server, "IDLE_TIMEOUT", 0.5)
    web = WebServer(("127.0.0.1", 0), lambda: b"metric 1\n", lambda: Health(True, "ok", ()))
    web.start()
    try:
        yield web
    finally:
        web.stop()


def closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_head_and_idle_deadlines_close_connections(server: WebServer) -> None:
    silent = socket.create_connection(("127.0.0.1", server.port))
    slow = socket.create_connection(("127.0.0.1", server.port))
    idle = socket.create_connection(("127.0.0.1", server.port))
    with silent, slow, idle:
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost")
        idle.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in (silent, slow, idle):
            s.settimeout(3)
        assert idle.recv(65536).startswith(b"HTTP/1.1 200 OK")
        started = time.monotonic()
        assert closed_by_server(silent) and closed_by_server(slow) and closed_by_server(idle)
        assert time.monotonic() - started < 2.5


def test_at_the_cap_the_longest_waiting_connection_makes_room(server: WebServer) -> None:
    server._server.cap = 4
    waiting = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
    try:
        wait_for("4 connections held", lambda: len(server._server._conns) == 4)
        status, _, body = request(server.port, get())
        assert status == 200 and body == b"metric 1\n"
        waiting[0].settimeout(2)
        assert closed_by_server(waiting[0])  # the oldest went
        for s in waiting[1:]:
            s.settimeout(0.05)
            assert not closed_by_server(s)
    finally:
        for s in waiting:
            s.close()


class _FailingListener:
    """The listening socket, but accept() fails with EMFILE while ``failing`` is set."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.failing = True
        self.calls = 0

    def accept(self) -> tuple[socket.socket, Any]:
        self.calls += 1
        if self.failing:
            raise OSError(errno.EMFILE, "Too many open files")
        return self.sock.accept()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return getattr(self.sock, name)


def test_accept_backs_off_on_emfile_and_recovers() -> None:
    web = WebServer(("127.0.0.1", 0), lambda: b"metric 1\n", lambda: Health(True, "ok", ()))
    inner = web._server
    listener = _FailingListener(inner._sock)
    inner._sock = listener
    web.start()
    try:
        pending = socket.create_connection(("127.0.0.1", web.port))  # keeps it readable
        wait_for("accept to be tried", lambda: listener.calls >= 1)
        started, calls = time.monotonic(), listener.calls
        wait_for("a retry", lambda: listener.calls > calls, timeout=5)
        wait_for("another retry", lambda: listener.calls > calls + 1, timeout=5)
        rate = (listener.calls - calls) / (time.monotonic() - started)
        assert rate < 10, f"accept() called {rate:.0f} times a second while failing"
        listener.failing = False
        with pending:
            pending.sendall(get())
            pending.settimeout(5)
            assert pending.recv(65536).startswith(b"HTTP/1.1 200 OK")
    finally:
        web.stop()
