"""Starting the real daemon as a process, reading its /metrics and logs, stopping it by PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import requests
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).parents[2]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 20.0,
             every: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (requests.RequestException, AssertionError, KeyError, IndexError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" +
                                 (f" (last error: {last_error})" if last_error else ""))
        time.sleep(every)


Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_series(text: str) -> Series:
    """Every sample as {(name, sorted labels): value}, read with prometheus_client's parser."""
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def scrape(url: str) -> Series:
    """One scrape of ``url``, which must answer 200, as series."""
    answer = requests.get(url, timeout=5)
    assert answer.status_code == 200, (answer.status_code, answer.text[:500])
    return parse_series(answer.text)


def pick(series: Series, metric: str, /, **labels: str) -> list[float]:
    """Values of ``metric`` whose labels include ``labels``."""
    want = set(labels.items())
    return [v for (n, lab), v in series.items() if n == metric and want <= set(lab)]


def terminate(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM a process this test started, SIGKILL it after ``timeout``; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


class Daemon:
    """The real ``inference-node-exporter`` in a process of its own."""

    def __init__(self, workdir: Path, args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.args = [sys.executable, "-m", "exporter", "--web.listen-address",
                     f"127.0.0.1:{self.port}", "--log.format", "json", *args]
        self.env = {**os.environ, **(env or {})}
        self.log_path = workdir / f"daemon-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, ready: bool = True) -> Daemon:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        if ready:
            wait_for("the daemon to answer /healthz", self._answers, timeout=30)
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_text()}")
        try:
            return requests.get(self.url + "/healthz", timeout=2).status_code in (200, 503)
        except requests.ConnectionError:
            return False

    def metrics(self) -> str:
        resp = requests.get(self.url + "/metrics", timeout=5)
        resp.raise_for_status()
        return resp.text

    def series(self) -> Series:
        return parse_series(self.metrics())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        return 0 if self.proc is None else terminate(self.proc, timeout)

    def __enter__(self) -> Daemon:
        return self if self.proc is not None else self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class SimProcess:
    """The vLLM simulator in a process of its own, so that its PID stands for an engine."""

    def __init__(self, scenario: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.vllm_sim", "--scenario", str(scenario), "--port", "0"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.port = int(line.split()[-1])
        self.pid = self.proc.pid
        self.metrics_url = f"http://127.0.0.1:{self.port}/metrics"

    def stop(self) -> None:
        terminate(self.proc)

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def in_process_daemon(*args: str, windows: str = "1m") -> Iterator[str]:
    """The daemon in this process polling every 200 ms, the node's own collectors and the
    default vLLM endpoint off; yields its ``/metrics`` URL."""
    from exporter.cli import load, parser
    from exporter.daemon import Daemon as InProcess

    port = free_port()
    argv = ["--web.listen-address", f"127.0.0.1:{port}", "--poll.interval", "200ms",
            "--poll.timeout", "200ms", "--derive.windows", windows, "--no-collector.vllm",
            "--no-collector.gpu", "--no-collector.host", *args]
    cfg, web = load(parser().parse_args(argv), {})
    d = InProcess(cfg, lambda: (cfg, web), web=web)
    d.start()
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        d.stop()
