"""One real server process for the integration tests: started with a log file, waited for
until its health URL answers 200, stopped with SIGTERM (SIGKILL for its whole process group
after a grace period), always reaped, and the log's tail shown when anything goes wrong.

Importable from the project's own test virtualenv: it needs only the standard library and
``requests``. The servers themselves (``tests/llamacpp_real``, ``tests/vllm_real``,
``tests/triton_real``) run from cached virtualenvs under ``cache_root()``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

import requests

STOP_GRACE_S = 15.0
"""How long a server has to exit after SIGTERM before its process group is killed."""
GROUP_POLL_S = 0.1
NICENESS = 10
"""How much lower than the tests' own the servers' CPU priority is: an engine busy on every
core must not starve the daemon and the test that watch it (seen on a two-core CI machine: a
vLLM burst left the test's sampler one scrape in four seconds). Idle cores still go to it."""


def cache_root() -> Path:
    """The cache folder shared with the ``ensure_venv.sh`` scripts."""
    explicit = os.environ.get("INE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "inference-node-exporter"


def built_venv(script: Path) -> Path:
    """Run an ``ensure_venv.sh`` (which builds its virtualenv once, then reuses it) and
    return the path it prints last."""
    proc = subprocess.run(["bash", str(script)], check=True, stdout=subprocess.PIPE, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"{script} printed no path")
    venv = Path(lines[-1].strip())
    if not (venv / "bin" / "python").exists():
        raise RuntimeError(f"{script} printed {venv}, which holds no bin/python")
    return venv


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of ``path``, or ``(no log)``."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running (zombies do not count)."""
    proc_root = Path("/proc")
    if not proc_root.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the ")" closing the command name: state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _lower_priority() -> None:
    """In the child, after ``setsid`` and before exec: lower its CPU priority by
    ``NICENESS``, its own and its session's.

    With the kernel's autogroup scheduling (``kernel.sched_autogroup_enabled``, on by default
    on many distributions), a new session is a scheduling group of its own, and a niced
    process only yields to the processes of its own group: the server's group would still
    take half the machine from the tests' group. Its group's nice (``/proc/self/autogroup``)
    is what yields across groups (measured here: a nice-0 process beside four niced busy
    loops got 41% of a core with only ``os.nice``, 98% with the group's nice set as well).
    """
    os.nice(NICENESS)
    try:
        with open("/proc/self/autogroup", "w") as group:
            group.write(str(NICENESS))
    except OSError:  # no autogroup in this kernel, or not allowed: the process nice stands
        pass


class ServerProcess:
    """A server program in a session (and process group) of its own, its output in a log.

    ``name`` is how messages call it ("llama.cpp"). ``health_url`` is polled every
    ``poll_period_s`` until it answers 200. With ``term_group``, SIGTERM goes to the whole
    process group and the rest of the grace period is given to the group's other processes
    (an engine's workers) to follow their leader; without it, to the leader only (which
    stops its own children). Either way whatever is left after ``stop_grace_s`` is killed.
    """

    def __init__(self, name: str, log_path: Path, health_url: str, *,
                 poll_period_s: float = 0.05, stop_grace_s: float = STOP_GRACE_S,
                 log_tail_lines: int = 40, term_group: bool = False) -> None:
        self.name = name
        self.log_path = Path(log_path)
        self.health_url = health_url
        self.poll_period_s = poll_period_s
        self.stop_grace_s = stop_grace_s
        self.log_tail_lines = log_tail_lines
        self.term_group = term_group
        self.ready_after_s: float | None = None
        """Seconds from launch to the first 200 from ``health_url``."""
        self.exit_code: int | None = None
        """The exit status once stopped (negative: killed by that signal)."""
        self.killed = False
        """Whether the last ``stop()`` had to SIGKILL the group."""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None

    def log_tail(self) -> str:
        return f"log tail ({self.log_path}):\n{tail(self.log_path, self.log_tail_lines)}"

    def start(self, command: Sequence[str], *, cwd: Path, env: Mapping[str, str],
              timeout: float) -> None:
        """Launch ``command`` and wait until ``health_url`` answers 200; on any failure stop
        it (quietly: the failure is the one to report) and raise, with the log's tail."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(list(command), cwd=cwd, env=dict(env),
                                          stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=_lower_priority)
        try:
            self._wait_healthy(started + timeout)
        except BaseException:
            self.stop()
            raise
        self.ready_after_s = time.monotonic() - started

    def wait_answers(self, url: str, timeout: float) -> None:
        """Wait until ``url`` answers 200 too (a server whose ports open one after another);
        on a failure stop the server and raise, with the log's tail."""
        try:
            self._wait_healthy(time.monotonic() + timeout, url)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, deadline: float, url: str | None = None) -> None:
        assert self._proc is not None
        url = url or self.health_url
        with requests.Session() as session:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise RuntimeError(f"{self.name} exited with code {code} before becoming"
                                       f" healthy; {self.log_tail()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.name} not healthy on {url} in time;"
                                       f" {self.log_tail()}")
                # 503 (or no answer) while the model loads, 200 once it serves. No
                # connection is left open: Triton waits for open ones when it stops.
                with contextlib.suppress(requests.RequestException), session.get(
                        url, headers={"Connection": "close"},
                        timeout=min(2.0, max(remaining, 0.1))) as answer:
                    if answer.status_code == 200:
                        return
                # Waiting on the process is the poll period and notices an exit at once.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=min(self.poll_period_s, max(remaining, 0.01)))

    def stop(self) -> int | None:
        """SIGTERM the server, wait up to ``stop_grace_s``, then SIGKILL its process group;
        always reap it. Returns its exit code (None if it was never started); ``killed``
        says whether it had to be killed."""
        proc = self._proc
        if proc is None:
            return self.exit_code
        pgid = proc.pid  # start_new_session made it its group's leader
        self.killed = False
        try:
            with contextlib.suppress(ProcessLookupError):
                if self.term_group:
                    os.killpg(pgid, signal.SIGTERM)
                else:
                    os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_grace_s
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.stop_grace_s)
            if self.term_group:
                # Give the group's other processes the rest of the grace period.
                while group_alive(pgid) and time.monotonic() < deadline:
                    time.sleep(GROUP_POLL_S)
            if proc.poll() is None or (self.term_group and group_alive(pgid)):
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        finally:
            self.exit_code = proc.wait()
            self._proc = None
        return self.exit_code

    def check_stopped(self) -> None:
        """Raise, with the log's tail, if the last ``stop()`` had to kill the server or it
        exited non-zero."""
        if self.killed:
            raise RuntimeError(f"{self.name} did not exit within {self.stop_grace_s:g} s of"
                               f" SIGTERM and was killed; {self.log_tail()}")
        if self.exit_code not in (0, None):
            raise RuntimeError(f"{self.name} exited with code {self.exit_code} on SIGTERM;"
                               f" {self.log_tail()}")


class OnServerProcess:
    """What a real server's class shows of its :class:`ServerProcess` (``self._process``),
    and its stop and context-manager protocol; the class defines ``start()``."""

    _process: ServerProcess
    exit_code_checked: ClassVar[bool] = True
    """Whether ``stop(check=True)`` raises on a non-zero exit, not only on a kill."""

    def start(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove what the server needed only while it ran (called by ``stop()``)."""

    def stop(self, check: bool = True) -> int | None:
        """SIGTERM the server, SIGKILL its process group past the grace period, reap it;
        its exit code (None if it never started). With ``check``, raise, with the log's
        tail, if it had to be killed (or exited non-zero, where that code is checked)."""
        if not self._process.running:
            return self.exit_code
        try:
            code = self._process.stop()
        finally:
            self.cleanup()
        if check and (self.exit_code_checked or self._process.killed):
            self._process.check_stopped()
        return code

    def log_tail(self) -> str:
        return self._process.log_tail()

    def __enter__(self) -> Self:
        if not self._process.running:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # A failure already on its way out is the one to report.
        self.stop(check=exc is None)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def ready_after_s(self) -> float | None:
        return self._process.ready_after_s

    @property
    def exit_code(self) -> int | None:
        return self._process.exit_code
