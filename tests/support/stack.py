"""A real Prometheus and Alertmanager around the real daemon, for the stack test.

Prometheus scrapes the daemon and evaluates the rules ``alerts/generate.py`` writes;
Alertmanager routes what fires to a webhook receiver in the test process. Their
configurations are the example files under ``deploy/``, with the addresses, the rule file and
the intervals substituted. Every process is started with a log file in the work directory
and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self, TypeVar

import requests
import yaml

from tests.support.harness import ROOT, free_port, terminate, wait_for

DEPLOY = ROOT / "deploy"
GENERATOR = ROOT / "alerts" / "generate.py"
RULES_FILE = "inference-node.rules.yml"
HOST_FIXTURE = ROOT / "tests" / "fixtures" / "host" / "kvm-steal"
T = TypeVar("T")

Labels = Mapping[str, str]


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} not found: install Debian's 'prometheus' and "
                             "'prometheus-alertmanager' packages")
    return path


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"({exc})"
    return "\n".join(text[-lines:])


# --- configuration ------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path}: not a YAML mapping"
    return data


def write_yaml(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
    return path


def prometheus_config(*, target: str, alertmanager: str, rule_file: Path,
                      interval: str = "1s") -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with this stack's target, rules, Alertmanager and
    intervals in place of the examples."""
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = [str(rule_file)]
    (manager,) = config["alerting"]["alertmanagers"]
    manager["static_configs"] = [{"targets": [alertmanager]}]
    (job,) = (j for j in config["scrape_configs"] if j["job_name"] == "inference-node")
    job.update(scrape_interval=interval, scrape_timeout=interval)
    job["static_configs"] = [{"targets": [target]}]
    return config


def alertmanager_config(*, webhook: str, wait: str = "1s",
                        repeat: str = "1h") -> dict[str, Any]:
    """deploy/alertmanager/alertmanager.yml with short timers, each webhook receiver posting
    to ``webhook``/<receiver name>."""
    config = load_yaml(DEPLOY / "alertmanager" / "alertmanager.yml")
    config["global"]["resolve_timeout"] = "5s"
    config["route"].update(group_wait=wait, group_interval=wait, repeat_interval=repeat)
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"{webhook}/{receiver['name']}"
    return config


def generate_rules(out_dir: Path, knobs: Mapping[str, str]) -> Path:
    """Run alerts/generate.py with ``knobs`` and return the rule file it wrote."""
    assert GENERATOR.exists(), f"{GENERATOR} is missing"
    args = [sys.executable, str(GENERATOR), "--out-dir", str(out_dir)]
    for knob, value in knobs.items():
        args += ["--set", f"{knob}={value}"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    rules = out_dir / RULES_FILE
    assert rules.exists(), f"{GENERATOR} did not write {rules}"
    return rules


def check(tool: str, *args: str) -> None:
    """Run promtool or amtool and fail with its output unless it succeeds."""
    done = subprocess.run([_binary(tool), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{tool} {' '.join(args)}:\n{done.stdout}{done.stderr}"


# --- processes ----------------------------------------------------------------------------


class Server:
    """A Prometheus-style server binary in a process of its own, ready at ``/-/ready``."""

    def __init__(self, name: str, workdir: Path, args: Sequence[str]) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        self.workdir = workdir
        self.args = [*args, f"--web.listen-address={self.address}"]
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.args, cwd=self.workdir, stdout=log,
                                         stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{_tail(self.log_path)}")
            try:
                return requests.get(self.url + "/-/ready", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        try:
            wait_for(f"{self.name} to be ready", ready, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_tail(self.log_path)}") from exc

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            terminate(self.proc, timeout)

    def get(self, path: str, params: Mapping[str, str | float] | None = None) -> Any:
        resp = requests.get(self.url + path, params=params, timeout=10)
        resp.raise_for_status()
        return resp.json()


class Prometheus(Server):
    def __init__(self, workdir: Path, config: Path) -> None:
        super().__init__("prometheus", workdir, [
            _binary("prometheus"), f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}", "--web.enable-lifecycle",
            "--log.level=info"])

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the result vector (or a scalar/string as one element)."""
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        resp = requests.get(self.url + "/api/v1/query", params=params, timeout=10)
        body = resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"query failed: {expr}: {body.get('error', resp.text)}")
        data = body["data"]
        if data["resultType"] in ("vector", "matrix"):
            return list(data["result"])
        return [{"metric": {}, "value": data["result"]}]

    def series(self, selector: str, start: float, end: float) -> list[dict[str, str]]:
        """Label sets of the series ``selector`` matches between ``start`` and ``end``."""
        params: dict[str, str | float] = {"match[]": selector, "start": start, "end": end}
        return list(self.get("/api/v1/series", params)["data"])

    def alerts(self) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts."""
        return list(self.get("/api/v1/alerts")["data"]["alerts"])


class Alertmanager(Server):
    def __init__(self, workdir: Path, config: Path) -> None:
        super().__init__("alertmanager", workdir, [
            _binary("prometheus-alertmanager"), f"--config.file={config}",
            f"--storage.path={workdir / 'data'}", "--cluster.listen-address=",
            "--log.level=info"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v2/alerts"))


class _QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


# --- webhook receiver ---------------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    """One webhook post from Alertmanager."""

    receiver: str
    """The last path segment of the URL it was posted to: the receiver's name."""
    body: dict[str, Any]
    received: float
    """time.time() at arrival."""

    @property
    def status(self) -> str:
        return str(self.body.get("status"))

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return list(self.body.get("alerts", []))


class InProcessServer:
    """An HTTP server on a free loopback port, in a thread of this process."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], path: str) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=type(self).__name__)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class Webhook(InProcessServer):
    """An HTTP server in this process collecting Alertmanager's webhook posts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Notification] = []
        hook = self

        class Handler(_QuietHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"unparsable": raw.decode(errors="replace")}
                with hook._lock:
                    hook._received.append(Notification(self.path.rstrip("/").rsplit("/", 1)[-1],
                                                       body, time.time()))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
        super().__init__(Handler, "/hooks")

    def notifications(self) -> list[Notification]:
        with self._lock:
            return list(self._received)

    def find(self, status: str, labels: Labels) -> list[tuple[Notification, dict[str, Any]]]:
        """(notification, alert) pairs whose alert has ``status`` and includes ``labels``."""
        want = set(labels.items())
        return [(n, a) for n in self.notifications() for a in n.alerts
                if a.get("status") == status and want <= set(a.get("labels", {}).items())]


# --- a static /metrics page --------------------------------------------------------------


class StaticPage(InProcessServer):
    """An HTTP server in this process answering every GET with one fixed body (a recorded
    exporter page, such as dcgm-exporter's)."""

    def __init__(self, body: bytes, content_type: str = "text/plain; version=0.0.4") -> None:
        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        super().__init__(Handler, "/metrics")


# --- host fixture that moves --------------------------------------------------------------


class MovingHost:
    """A copy of a procfs/sysfs fixture tree whose CPU and pressure counters advance, so the
    host collector's ratios (computed between two polls) exist."""

    # Per tick, in USER_HZ over all 4 CPUs: user nice system idle iowait irq softirq steal.
    STEP = (120, 0, 30, 220, 10, 0, 5, 15)
    NOISY_STEP = (120, 0, 30, 130, 10, 0, 5, 105)
    """A noisy neighbour: the hypervisor steals 105 of every 400 (26%), out of idle time."""

    def __init__(self, workdir: Path, fixture: Path = HOST_FIXTURE, every: float = 0.25) -> None:
        self.root = workdir / "host"
        shutil.copytree(fixture, self.root)
        self.procfs = self.root / "proc"
        self.sysfs = self.root / "sys"
        self.every = every
        self._ticks = 0
        self.step = self.STEP
        """What each tick adds to the CPU counters (set :attr:`NOISY_STEP` for steal)."""
        self._moved = [0] * len(self.STEP)
        self._stop = threading.Event()
        self._stat = (self.procfs / "stat").read_text()
        self._pressure = {p.name: p.read_text() for p in (self.procfs / "pressure").iterdir()}
        self._thread = threading.Thread(target=self._run, daemon=True, name="moving-host")

    def start(self) -> MovingHost:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._ticks += 1
            self._moved = [m + s for m, s in zip(self._moved, self.step, strict=True)]
            self._write(self.procfs / "stat", self._moved_stat())
            for name, text in self._pressure.items():
                self._write(self.procfs / "pressure" / name, self._moved_pressure(text))

    def _moved_stat(self) -> str:
        out = []
        for line in self._stat.splitlines():
            fields = line.split()
            if fields and fields[0].startswith("cpu"):
                share = 1 if fields[0] == "cpu" else 4
                values = [int(v) for v in fields[1:]]
                for i, moved in enumerate(self._moved):
                    values[i] += moved // share
                line = f"{fields[0]:<4} " + " ".join(map(str, values))
            out.append(line)
        return "\n".join(out) + "\n"

    def _moved_pressure(self, text: str) -> str:
        out = []
        for line in text.splitlines():
            head, total = line.rsplit("total=", 1)
            step = 2000 if line.startswith("some") else 500
            out.append(f"{head}total={int(total) + self._ticks * step}")
        return "\n".join(out) + "\n"

    @staticmethod
    def _write(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


# --- the stack ----------------------------------------------------------------------------


class Stack:
    """Processes and servers started for the test; ``stop()`` ends them all, latest first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._stops: list[Callable[[], object]] = []
        self.logs: dict[str, Path] = {}

    def started(self, stop: Callable[[], object], name: str | None = None,
                log: Path | None = None) -> None:
        """Register what ends a started part (and its log file, shown on failure)."""
        self._stops.append(stop)
        if name is not None and log is not None:
            self.logs[name] = log

    def stop(self) -> None:
        errors = []
        while self._stops:
            try:
                self._stops.pop()()
            except Exception as exc:  # stop the rest, then report
                errors.append(exc)
        if errors:
            raise errors[0]

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- {name} ({path}) ---\n{_tail(path, lines)}"
                         for name, path in self.logs.items())

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """Re-raise an AssertionError with the tails of every log appended."""
        try:
            yield
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n\n{self.log_tails()}") from exc

    def wait(self, what: str, check: Callable[[], T | None], timeout: float,
             every: float = 0.25) -> T:
        with self.explained():
            return wait_for(what, check, timeout=timeout, every=every)


def alert_labels(alert: Mapping[str, Any]) -> dict[str, str]:
    return dict(alert.get("labels", {}))


def matching(alerts: Sequence[Mapping[str, Any]], labels: Labels,
             state: str | None = None) -> list[Mapping[str, Any]]:
    """Alerts (Prometheus API shape) that include ``labels`` and, if given, are in ``state``."""
    want = set(labels.items())
    return [a for a in alerts if want <= set(alert_labels(a).items())
            and (state is None or a.get("state") == state)]
