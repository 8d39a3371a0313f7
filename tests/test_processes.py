"""An engine's processes (exporter/processes.py), found and read among real processes.

Every process here is real: ``python -m http.server`` and a toy engine (``ENGINE`` below, a
server whose workers hold known memory and CPU time), started by the test and stopped by
their PIDs. Reuse of a PID is made real in a PID namespace of the test's own, where
``ns_last_pid`` chooses the next PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from exporter.engines.adapter import ProcessMatch
from exporter.processes import EngineProcesses, ProcessReading, is_local, read_stat
from tests.support.harness import ROOT, free_port, terminate, wait_for

TICK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20

ENGINE = textwrap.dedent('''
    """A toy engine: a server (listening or not) with workers, each holding memory and CPU."""
    import argparse, json, os, signal, socket, subprocess, sys, time

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped as they exit
    children, forked = [], []

    def stop(*_):
        for child in children:
            child.terminate()
        for pid in forked:
            os.kill(pid, signal.SIGTERM)
        for child in children:
            child.wait()  # with SIGCHLD ignored: returns once the child has gone
        for pid in forked:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:  # the same: it has gone
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["server", "serve", "core", "worker"])
    p.add_argument("--port", type=int)
    p.add_argument("--no-listen", action="store_true")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--nested", action="store_true", help="workers under a core process")
    p.add_argument("--mib", type=int, default=0)
    p.add_argument("--cpu", type=float, default=0.0)
    p.add_argument("--name", help="the process' own name (comm)")
    p.add_argument("--fork", action="store_true",
                   help="a child forked without exec, so with the same command line")
    a = p.parse_args()
    if a.name:
        with open("/proc/self/comm", "w") as comm:
            comm.write(a.name)

    def spawn(*args):
        child = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                                 text=True)
        children.append(child)
        return json.loads(child.stdout.readline())  # the pids under it, once it is ready

    load = ["--mib", str(a.mib), "--cpu", str(a.cpu)]
    if a.role == "worker":
        block = b"\\x01" * (a.mib * 1024 * 1024)  # written, so resident
        while time.process_time() < a.cpu:
            pass
        below = []
    elif a.role == "core" or not a.nested:
        below = [pid for _ in range(a.workers) for pid in spawn("worker", *load)]
    else:
        below = spawn("core", "--workers", str(a.workers), *load)
    if a.role in ("server", "serve") and not a.no_listen:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", a.port))
        s.listen()
    if a.fork:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            while True:
                signal.pause()
        forked.append(pid)
        below.append(pid)
    print(json.dumps([os.getpid(), *below]), flush=True)
    for line in sys.stdin if a.role in ("server", "serve") else ():
        if line.strip() == "spawn":  # one more worker, after the server was found
            print(json.dumps(spawn("worker")), flush=True)
    while True:
        signal.pause()
''')


class Engine:
    """The toy engine in a session of its own, stopped through its SIGTERM handler."""

    def __init__(self, script: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(script), *args], cwd=script.parent,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.pid = self.proc.pid
        try:
            self.tree = set(self.line())
            """Its own pid and those of every process under it."""
        except BaseException:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait()
            raise

    def line(self, timeout: float = 20.0) -> Any:
        """The next JSON line it prints, within ``timeout``."""
        got: list[str] = []
        stdout = self.proc.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: got.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not got or not got[0]:
            raise AssertionError(f"toy engine {self.args} printed nothing"
                                 f" (exit code {self.proc.poll()})")
        return json.loads(got[0])

    @property
    def args(self) -> list[str]:
        return [str(a) for a in self.proc.args]  # type: ignore[union-attr]

    def spawn_worker(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write("spawn\n")
        self.proc.stdin.flush()
        (pid,) = self.line()
        return int(pid)

    def stop(self) -> None:
        terminate(self.proc)
        # Anything left of its session (nothing, unless its handler was too slow).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for pid in self.tree:
            wait_for(f"pid {pid} to go", lambda pid=pid: read_stat(pid) is None, timeout=10)


@pytest.fixture
def engine_script(tmp_path: Path) -> Path:
    path = tmp_path / "toy_engine.py"
    path.write_text(ENGINE)
    return path


@pytest.fixture
def start(engine_script: Path) -> Iterator[Callable[..., Engine]]:
    started: list[Engine] = []

    def run(*args: str) -> Engine:
        started.append(Engine(engine_script, *args))
        return started[-1]

    yield run
    for engine in started:
        engine.stop()


def match(script: Path, **kw: Any) -> ProcessMatch:
    return ProcessMatch(words=(str(script),), **kw)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def http_server(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1"], cwd=workdir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http.server {proc.pid} to listen on {port}", lambda: listening(port))
    except BaseException:
        terminate(proc)
        raise
    return proc


class Clock:
    """The monotonic clock EngineProcesses reads, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- is_local -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.1.2.3", "::1", "0.0.0.0",
                                  "::"])
def test_loopback_and_unspecified_addresses_are_local(host: str) -> None:
    assert is_local(host)


def test_the_hostname_and_every_address_of_an_interface_are_local() -> None:
    assert is_local(socket.gethostname())
    addresses = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values()
                 for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)}
    assert addresses, "no interface addresses"
    for address in addresses:
        assert is_local(address), address


@pytest.mark.parametrize("host", ["192.0.2.1", "2001:db8::1", "vllm-0.example.invalid", ""])
def test_other_addresses_and_names_are_not_local(host: str) -> None:
    # Documentation addresses (RFC 5737, RFC 3849): no interface here has them.
    local = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    assert host not in local
    assert not is_local(host)


# --- read_stat ----------------------------------------------------------------------------


def test_read_stat_agrees_with_the_kernel_for_a_process_with_a_hostile_name(
        start: Callable[..., Engine]) -> None:
    # A worker holding 64 MiB that has used 0.3 s of CPU, named so that its /proc/PID/stat
    # name field holds ") (" and spaces, which a split on whitespace would misread.
    worker = start("worker", "--mib", "64", "--cpu", "0.3", "--name", "a) (b c) d")
    assert psutil.Process(worker.pid).name() == "a) (b c) d"
    stat = read_stat(worker.pid)
    assert stat is not None
    cpu, rss, started = stat
    times = psutil.Process(worker.pid).cpu_times()
    assert cpu >= 0.3 - 1 / TICK
    assert cpu == pytest.approx(times.user + times.system, abs=1 / TICK)
    assert rss >= 64 * MIB
    assert rss == pytest.approx(psutil.Process(worker.pid).memory_info().rss, abs=MIB)
    assert psutil.boot_time() + started / TICK == pytest.approx(
        psutil.Process(worker.pid).create_time(), abs=1 / TICK)
    own = read_stat(os.getpid())
    assert own is not None and own[2] <= started  # the test process started first


def test_read_stat_of_the_test_process_follows_its_cpu_and_memory() -> None:
    before = read_stat(os.getpid())
    assert before is not None
    start_cpu = sum(os.times()[:2])
    while sum(os.times()[:2]) - start_cpu < 0.2:
        pass
    block = b"\x01" * (48 * MIB)  # above malloc's largest mmap threshold: new pages
    after = read_stat(os.getpid())
    assert after is not None
    assert after[0] - before[0] >= 0.2 - 2 / TICK
    assert after[0] == pytest.approx(sum(os.times()[:2]), abs=2 / TICK)
    assert after[1] - before[1] >= 46 * MIB
    assert after[2] == before[2]
    del block


def test_read_stat_of_a_gone_or_impossible_pid_is_none(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert proc.wait(20) == 0
    assert read_stat(proc.pid) is None
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert read_stat(pid_max + 1) is None
    assert read_stat(-1) is None


# --- EngineProcesses ----------------------------------------------------------------------


def test_the_listener_is_found_with_its_descendants_cpu_and_memory(
        start: Callable[..., Engine], engine_script: Path) -> None:
    port = free_port()
    # server -> core -> two workers, each holding 32 MiB after 0.2 s of CPU.
    engine = start("server", "--port", str(port), "--nested", "--workers", "2",
                   "--mib", "32", "--cpu", "0.2")
    assert len(engine.tree) == 4
    found = EngineProcesses(port, match(engine_script), default_port=8000).read()
    assert isinstance(found, ProcessReading)
    assert found.pids == engine.tree
    stats = [read_stat(pid) for pid in engine.tree]
    assert all(stats)
    assert found.cpu_seconds >= 2 * 0.2 - 2 / TICK
    assert found.cpu_seconds == pytest.approx(sum(s[0] for s in stats if s), abs=4 / TICK)
    assert found.resident_bytes >= 2 * 32 * MIB
    assert found.resident_bytes == pytest.approx(sum(s[1] for s in stats if s), abs=MIB)


def test_http_server_listener_is_found_and_found_again_after_a_restart(
        tmp_path: Path) -> None:
    port = free_port()
    clock = Clock()  # never moves: only the listener's going makes it look again
    processes = EngineProcesses(port, ProcessMatch(words=("http.server",)), default_port=1,
                                clock=clock)
    assert processes.read() is None  # nothing listens yet
    first = http_server(port, tmp_path)
    try:
        reading = processes.read()
        assert reading is not None and reading.pids == {first.pid}
        assert reading.resident_bytes > MIB
        own = read_stat(first.pid)
        assert own is not None and reading.cpu_seconds == pytest.approx(own[0], abs=1 / TICK)
    finally:
        terminate(first)
    assert processes.read() is None
    second = http_server(port, tmp_path)
    try:
        reading = processes.read()
        assert reading is not None and reading.pids == {second.pid}
    finally:
        terminate(second)
    assert processes.read() is None


def test_the_tree_is_looked_up_again_every_minute(start: Callable[..., Engine],
                                                  engine_script: Path) -> None:
    port = free_port()
    engine = start("server", "--port", str(port))
    clock = Clock()
    processes = EngineProcesses(port, match(engine_script), default_port=8000, clock=clock)
    first = processes.read()
    assert first is not None and first.pids == {engine.pid}
    late = engine.spawn_worker()
    engine.tree.add(late)
    clock.now += 59.9
    again = processes.read()
    assert again is not None and again.pids == {engine.pid}  # the known tree is read
    clock.now += 0.1
    refreshed = processes.read()
    assert refreshed is not None and refreshed.pids == {engine.pid, late}


def test_without_a_listener_the_command_line_names_the_port(start: Callable[..., Engine],
                                                            engine_script: Path) -> None:
    port = free_port()
    engine = start("server", "--port", str(port), "--no-listen", "--workers", "1")
    assert not listening(port)
    found = EngineProcesses(port, match(engine_script), default_port=8000).read()
    assert found is not None and found.pids == engine.tree  # the worker has no --port
    other = EngineProcesses(free_port(), match(engine_script), default_port=8000).read()
    assert other is None


def test_without_a_port_flag_a_serve_word_means_the_default_port(
        start: Callable[..., Engine], engine_script: Path) -> None:
    default = free_port()
    engine = start("serve", "--no-listen")
    serve = match(engine_script, default_port_words=("serve",))
    found = EngineProcesses(default, serve, default_port=default).read()
    assert found is not None and found.pids == {engine.pid}
    assert EngineProcesses(default, match(engine_script), default_port=default).read() is None
    assert EngineProcesses(free_port(), serve, default_port=default).read() is None


def test_a_forked_child_with_the_same_command_line_is_in_the_tree_not_a_root(
        start: Callable[..., Engine], engine_script: Path) -> None:
    port = free_port()
    engine = start("server", "--port", str(port), "--no-listen", "--fork")
    (forked,) = engine.tree - {engine.pid}
    assert psutil.Process(forked).cmdline() == psutil.Process(engine.pid).cmdline()
    clock = Clock()
    processes = EngineProcesses(port, match(engine_script), default_port=8000, clock=clock)
    found = processes.read()
    assert found is not None and found.pids == {engine.pid, forked}
    late = engine.spawn_worker()
    engine.tree.add(late)
    os.kill(forked, signal.SIGKILL)
    wait_for(f"pid {forked} to go", lambda: read_stat(forked) is None)
    # Its root lives: the known tree is read, with no search (which would find the worker).
    again = processes.read()
    assert again is not None and again.pids == {engine.pid}


REUSE = textwrap.dedent('''
    """Run as PID 1 of a new PID namespace: make PIDs of the engine's processes be reused."""
    import json, os, signal, subprocess, sys, time
    from exporter.engines.adapter import ProcessMatch
    from exporter.processes import EngineProcesses, read_stat

    script, port = sys.argv[1], int(sys.argv[2])
    TICK = os.sysconf("SC_CLK_TCK")

    def start(*args):
        p = subprocess.Popen([sys.executable, script, "server", "--port", str(port), *args],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return p, json.loads(p.stdout.readline())

    def until(what, check, timeout=20.0):
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                sys.exit(f"timed out waiting for {what}")
            time.sleep(0.005)

    def reuse(pid, started):
        """A process that is not the engine's, given ``pid`` once it is free, started at
        least two clock ticks after the process that had it."""
        until(f"pid {pid} to be gone", lambda: not os.path.exists(f"/proc/{pid}"))
        uptime = lambda: float(open("/proc/uptime").read().split()[0])
        until("two clock ticks", lambda: uptime() * TICK > started + 2)
        got = []

        def spawned_with_pid():
            # The number may come free a little after /proc/PID has gone: try again.
            while got:
                got.pop().kill()
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
            got.append(subprocess.Popen([sys.executable, "-c",
                                         "import time; time.sleep(600)"]))
            return got[0].pid == pid

        until(f"a new process to be given pid {pid}", spawned_with_pid)
        other = got[0]
        until("the new process to run", lambda: read_stat(other.pid) is not None)
        return other

    def pids(reading):
        return None if reading is None else sorted(reading.pids)

    out = {}
    processes = EngineProcesses(port, ProcessMatch(words=(script,)), 1, clock=lambda: 0.0)
    # 1. The listener goes and an unrelated process gets its pid.
    server, _ = start()
    out["server"], out["found"] = server.pid, pids(processes.read())
    started = read_stat(server.pid)[2]
    server.terminate()
    server.wait()
    other = reuse(server.pid, started)
    out["root_reused"] = [other.pid, started, read_stat(other.pid)[2]]
    out["after_root_reused"] = pids(processes.read())
    other.kill()
    other.wait()
    # 2. A worker goes and an unrelated process gets its pid while the listener lives.
    server, tree = start("--workers", "1")
    worker = tree[1]
    out["server2"], out["tree"] = server.pid, pids(processes.read())
    started = read_stat(worker)[2]
    os.kill(worker, signal.SIGKILL)  # the server reaps it
    other = reuse(worker, started)
    out["worker"] = worker
    out["child_reused"] = [other.pid, started, read_stat(other.pid)[2]]
    out["after_child_reused"] = pids(processes.read())
    other.kill()
    server.terminate()
    print(json.dumps(out), flush=True)
''')


def test_a_reused_pid_is_told_apart_by_its_start_time(engine_script: Path,
                                                      tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    assert unshare, "unshare not found: install Debian's 'util-linux' package"
    script = tmp_path / "reuse.py"
    script.write_text(REUSE)
    port = free_port()
    result = subprocess.run(
        [unshare, "--user", "--map-root-user", "--pid", "--fork", "--mount-proc",
         sys.executable, str(script), str(engine_script), str(port)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=120)
    assert result.returncode == 0, (
        "the PID namespace could not be used (unprivileged user namespaces off?):\n"
        + result.stderr)
    out = json.loads(result.stdout)
    assert out["found"] == [out["server"]]
    reused, was, now = out["root_reused"]
    assert reused == out["server"] and now > was  # the same pid, a later process
    assert out["after_root_reused"] is None  # not taken for the engine
    assert out["tree"] == sorted([out["server2"], out["worker"]])
    reused, was, now = out["child_reused"]
    assert reused == out["worker"] and now > was
    assert out["after_child_reused"] == [out["server2"]]
