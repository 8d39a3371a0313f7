"""Finding an engine's processes from its endpoint, and reading their CPU and memory.

An engine endpoint on this host is served by the process listening on its port; its engine
cores and GPU workers are that process' descendants. The listener is found through the
socket table when the daemon may see other processes' sockets (same user, or root), else by
the engine's command line as its adapter describes it (:class:`ProcessMatch`: a port flag, or
the engine's default port). Process ids are looked up again every minute, and at once when
the known tree has gone.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

from exporter.engines.adapter import ProcessMatch

__all__ = ["EngineProcesses", "ProcessReading", "is_local", "read_stat"]

_REFRESH = 60.0


def is_local(host: str) -> bool:
    """Whether ``host`` names this machine (loopback, a local address or the hostname)."""
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.is_loopback or address.is_unspecified:
        return True
    local = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    return str(address) in local


@dataclass(frozen=True, slots=True)
class ProcessReading:
    """The engine's process tree at one poll."""

    pids: frozenset[int]
    cpu_seconds: float
    resident_bytes: int


def _listening(port: int) -> set[int]:
    pids = set()
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port \
                    and conn.pid is not None:
                pids.add(conn.pid)
    except (psutil.AccessDenied, OSError):
        pass
    return pids


def _by_command_line(port: int, match: ProcessMatch, default_port: int) -> set[int]:
    pids = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if not match.matches(cmd):
            continue
        given = match.port(cmd)
        if given == port or (given is None and port == default_port
                             and match.implies_default_port(cmd)):
            pids.add(proc.info["pid"])
    # A parent and its own child both match when the command line is inherited: keep roots.
    return {p for p in pids if _parent(p) not in pids}


def _parent(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


class EngineProcesses:
    """The processes behind one local engine endpoint."""

    def __init__(self, port: int, match: ProcessMatch, default_port: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.port = port
        self.match = match
        self.default_port = default_port
        self.clock = clock
        self._roots: list[psutil.Process] = []
        self._tree: list[psutil.Process] = []
        self._started: dict[int, int] = {}
        """Each process' start time, as read when the tree was found."""
        self._found_at = -_REFRESH

    def _discover(self) -> None:
        pids = _listening(self.port) or _by_command_line(self.port, self.match,
                                                         self.default_port)
        roots = []
        for pid in sorted(pids):
            try:
                roots.append(psutil.Process(pid))
            except psutil.Error:
                continue
        tree: list[psutil.Process] = []
        for root in roots:
            tree.append(root)
            try:
                tree.extend(root.children(recursive=True))
            except psutil.Error:
                continue
        self._roots, self._tree = roots, _unique(tree)
        self._started = {}
        for proc in self._tree:
            stat = read_stat(proc.pid)
            if stat is not None:
                self._started[proc.pid] = stat[2]
        self._found_at = self.clock()

    def read(self) -> ProcessReading | None:
        """The tree's CPU time and resident memory; None when no process was found."""
        fresh = self.clock() - self._found_at >= _REFRESH or not self._roots
        if fresh:
            self._discover()
        reading = self._read_tree()
        if not fresh and (reading is None or
                          not all(r.pid in reading.pids for r in self._roots)):
            self._discover()  # a root has gone (or its pid is another process now)
            reading = self._read_tree()
        return reading

    def _read_tree(self) -> ProcessReading | None:
        cpu, rss, alive = 0.0, 0, []
        for proc in self._tree:
            stat = read_stat(proc.pid)
            # The start time tells a process from a later one given the same pid.
            if stat is None or stat[2] != self._started.get(proc.pid):
                continue
            cpu += stat[0]
            rss += stat[1]
            alive.append(proc.pid)
        if not alive:
            return None
        return ProcessReading(frozenset(alive), cpu, rss)


_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def read_stat(pid: int) -> tuple[float, int, int] | None:
    """(CPU seconds, resident bytes, start time in ticks) of one process from its
    ``/proc/PID/stat``, one read; None when it has gone or may not be read."""
    try:
        with open(f"{psutil.PROCFS_PATH}/{pid}/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
        return ((int(fields[11]) + int(fields[12])) / _TICK, int(fields[21]) * _PAGE,
                int(fields[19]))
    except (OSError, ValueError, IndexError):
        return None


def _unique(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    seen: dict[int, psutil.Process] = {}
    for p in procs:
        seen.setdefault(p.pid, p)
    return list(seen.values())
