"""sd_notify: READY once serving, watchdog pings only while polling keeps its schedule,
RELOADING/READY around SIGHUP, STOPPING on SIGTERM; the real daemon against a socket of ours."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from exporter.sdnotify import Notifier
from tests.support.harness import Daemon, wait_for

HOST = Path(__file__).parent / "fixtures" / "host" / "bare-metal-no-psi"
WATCHDOG_USEC = 200_000
"""systemd would expect a ping every 0.2 s; the daemon pings every 0.1 s."""

Message = dict[str, str]


class NotifySocket:
    """A Unix datagram socket standing in for systemd's notification socket."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.received: list[Message] = []

    def receive(self, timeout: float) -> Message | None:
        """The next message, or None when none comes within ``timeout`` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.received.append(message)
        return message

    def wait_for(self, what: str, match: Callable[[Message], bool],
                 timeout: float = 20.0) -> Message:
        """Read messages until one matches; fail with ``what`` at the deadline."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and match(message):
                return message
        raise AssertionError(f"timed out waiting for {what}; last messages:"
                             f" {self.received[-5:]}")

    def pings(self, count: int, timeout: float = 20.0) -> None:
        for i in range(count):
            self.wait_for(f"watchdog ping {i + 1} of {count}", is_ping, timeout)

    def during(self, seconds: float) -> list[Message]:
        """Every message that arrives within the next ``seconds``."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None:
                out.append(message)
        return out

    def close(self) -> None:
        self.sock.close()


def is_ping(message: Message) -> bool:
    return message == {"WATCHDOG": "1"}


@pytest.fixture
def notify_path() -> Iterator[NotifySocket]:
    """A socket at a short file-system path (sun_path holds 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sdnotify-") as directory:
        sock = NotifySocket(os.path.join(directory, "notify"))
        try:
            yield sock
        finally:
            sock.close()


@pytest.fixture
def notify_abstract() -> Iterator[tuple[NotifySocket, str]]:
    """A socket in the abstract namespace, and its name as systemd writes it (``@...``)."""
    name = f"inference-node-exporter-test-{uuid.uuid4().hex}"
    sock = NotifySocket(b"\0" + name.encode())
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def host_args(root: Path) -> list[str]:
    """Only the host collector, reading a fixture tree the test may tamper with."""
    shutil.copytree(HOST, root)
    return ["--no-collector.vllm", "--no-collector.gpu", "--no-collector.dcgm",
            "--path.procfs", str(root / "proc"), "--path.sysfs", str(root / "sys"),
            "--poll.interval", "200ms", "--poll.timeout", "200ms"]


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_ready_pings_reload_and_stop(tmp_path: Path, notify_path: NotifySocket) -> None:
    daemon = Daemon(tmp_path, host_args(tmp_path / "host"),
                    env={"NOTIFY_SOCKET": notify_path.sock.getsockname(),
                         "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    daemon.start(ready=False)
    try:
        ready = notify_path.wait_for("READY=1", lambda m: m.get("READY") == "1", timeout=30)
        assert ready["STATUS"] == (f"polling 1 source every 200ms;"
                                   f" serving on port {daemon.port}")
        # READY comes once the server listens: no waiting needed from here.
        assert requests.get(daemon.url + "/metrics", timeout=5).status_code == 200
        notify_path.pings(5)

        before = monotonic_usec()
        daemon.signal(signal.SIGHUP)
        reloading = notify_path.wait_for("RELOADING=1", lambda m: "RELOADING" in m)
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
        after = notify_path.wait_for("READY=1 after the reload", lambda m: "READY" in m)
        assert after["STATUS"].startswith("polling 1 source")
        notify_path.pings(3)

        daemon.signal(signal.SIGTERM)
        stopping = notify_path.wait_for("STOPPING=1", lambda m: "STOPPING" in m)
        assert stopping == {"STOPPING": "1", "STATUS": "stopping"}
        assert daemon.proc is not None
        assert daemon.proc.wait(5) == 0
        assert not [m for m in notify_path.during(0.3) if is_ping(m)], \
            "no watchdog ping after STOPPING=1"
    finally:
        daemon.stop()


def test_watchdog_pings_stop_while_a_poll_loop_stalls(
        tmp_path: Path, notify_abstract: tuple[NotifySocket, str]) -> None:
    sock, name = notify_abstract
    root = tmp_path / "host"
    daemon = Daemon(tmp_path, host_args(root),
                    env={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    daemon.start(ready=False)
    stat = root / "proc" / "stat"
    writer: int | None = None
    try:
        sock.wait_for("READY=1", lambda m: m.get("READY") == "1", timeout=30)
        sock.pings(3)

        # The host poll opens proc/stat; a FIFO nobody writes to blocks that open() for good,
        # as a wedged read of a real procfs file would. Nothing else wakes the poll loop.
        content = stat.read_bytes()
        fifo = root / "proc" / "stat.fifo"
        os.mkfifo(fifo)
        os.replace(fifo, stat)

        def stalled() -> bool:
            r = requests.get(daemon.url + "/healthz", timeout=5)
            return r.status_code == 503 and "polling stalled for host/host" in r.text

        wait_for("/healthz to report the stall", stalled, timeout=20)
        sock.wait_for("the stall in STATUS",
                      lambda m: m.get("STATUS") == "polling stalled for host/host")
        # From here systemd, expecting a ping every 0.2 s, would have restarted the daemon.
        quiet = sock.during(1.0)
        assert not [m for m in quiet if is_ping(m)], f"pinged while stalled: {quiet}"

        # Release the poll: give it the file back and end the FIFO's read.
        writer = os.open(stat, os.O_WRONLY | os.O_NONBLOCK)
        regular = root / "proc" / "stat.regular"
        regular.write_bytes(content)
        os.replace(regular, stat)
        os.write(writer, content)
        os.close(writer)
        writer = None
        sock.wait_for("the STATUS back to normal",
                      lambda m: m.get("STATUS", "").startswith("polling 1 source"))
        sock.pings(3)
        assert requests.get(daemon.url + "/healthz", timeout=5).status_code == 200
        events = [e["event"] for e in daemon.logs()]
        assert "polling stalled; watchdog pings withheld" in events
        assert "polling on schedule again; watchdog pings resumed" in events
        assert daemon.stop() == 0
    finally:
        if writer is not None:
            os.close(writer)
        daemon.stop()


def test_notifier_does_nothing_outside_systemd() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready("x") and not notifier.watchdog() and not notifier.stopping()


def test_notifier_abstract_socket_and_watchdog_interval(
        notify_abstract: tuple[NotifySocket, str]) -> None:
    sock, name = notify_abstract
    notifier = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "30000000"})
    assert notifier.enabled and notifier.watchdog_interval == 15.0
    assert notifier.ready("two\nlines")
    assert sock.receive(5) == {"READY": "1", "STATUS": "two lines"}
    assert notifier.watchdog()
    assert sock.receive(5) == {"WATCHDOG": "1"}


@pytest.mark.parametrize(("environ", "interval"), [
    ({"WATCHDOG_USEC": "1000000"}, 0.5),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_the_timeout_for_this_process(
        environ: dict[str, str], interval: float | None) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", **environ})
    assert notifier.watchdog_interval == interval


def test_an_unreachable_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.enabled
    assert not notifier.ready("x")
    assert isinstance(notifier.last_error, OSError)
    assert notifier.last_error.errno in (errno.ENOENT, errno.ECONNREFUSED)
