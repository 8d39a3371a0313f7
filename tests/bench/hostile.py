"""The daemon against a hostile upstream: scrape latency while one endpoint answers with the
worst payloads in turn, and the daemon's RSS after 1,000 such polls.

The upstream (``tests/support/faulty_upstream.py``) and the daemon run in processes of their own;
this process only scrapes, every 10 ms, and reads the daemon's ``/proc`` status.
"""

from __future__ import annotations

import http.client
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.faulty_upstream import FaultyUpstream
from tests.support.harness import free_port, terminate

ROOT = Path(__file__).parents[2]
HOST = "127.0.0.1"
INTERVAL = "150ms"
POLLS = 1000
TURN = ("label_flood", "binary", "huge_line", "junk", "malformed_flood", "truncated", "huge",
        "redirect")
"""The answers in turn: each costly one followed by a cheap failure, as a broken or hostile
engine might alternate."""
FLOOD = 30_000
"""New label sets per label-flood answer, as in the fault matrix."""
_POLLS = re.compile(rb'^inference_node_exporter_collector_polls_total\{collector="vllm",'
                    rb'[^}]*\} (\S+)$', re.M)


def _seconds(duration: str) -> float:
    """``150ms`` or ``5s`` in seconds."""
    return float(duration[:-2]) / 1000 if duration.endswith("ms") else float(duration[:-1])


def _rss(pid: int) -> float:
    """VmRSS of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class _Scraper:
    """Scrapes ``/metrics`` every 10 ms; keeps each latency and the latest poll count."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self.failures = 0
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> _Scraper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            start = time.perf_counter()
            conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
            try:
                conn.request("GET", "/metrics")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    self.failures += 1
                    continue
            except (OSError, http.client.HTTPException):
                self.failures += 1
                continue
            finally:
                conn.close()
            self.latencies.append(time.perf_counter() - start)
            m = _POLLS.search(body)
            if m is not None:
                self.polls = int(float(m[1]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def _wait_up(port: int, daemon: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until the daemon answers ``/metrics``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited with {daemon.returncode}")
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            if conn.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise SystemExit("the daemon did not come up")


def run(polls: int = POLLS, limit: float = 300.0, interval: str = INTERVAL) -> None:
    """Print the hostile-upstream figures: polling every ``interval``, ``polls`` polls."""
    port = free_port()
    with FaultyUpstream(huge_bytes=24 * 1024 * 1024, flood_label_sets=FLOOD) as upstream:
        upstream.set(*TURN)
        args = [sys.executable, "-m", "exporter", "--web.listen-address", f"{HOST}:{port}",
                "--vllm.endpoint", f"hostile={upstream.metrics_url}", "--no-collector.gpu",
                "--no-collector.dcgm", "--poll.interval", interval, "--poll.timeout",
                min(interval, "1s", key=_seconds), "--poll.max-backoff",
                f"{2 * _seconds(interval):g}s", "--log.level", "error"]
        daemon = subprocess.Popen(args, cwd=ROOT)
        try:
            _wait_up(port, daemon)
            scraper = _Scraper(port).start()
            started = time.monotonic()
            marks = {n: 0.0 for n in sorted({min(100, polls // 4), polls // 2})}
            while scraper.polls < polls and time.monotonic() - started < limit:
                if daemon.poll() is not None:
                    raise SystemExit(f"the daemon exited with {daemon.returncode}")
                for n in marks:
                    if not marks[n] and scraper.polls >= n:
                        marks[n] = _rss(daemon.pid)
                time.sleep(0.1)
            took = time.monotonic() - started
            rss = _rss(daemon.pid)
            scraper.stop()
        finally:
            terminate(daemon)
        answers = upstream.state()["requests"]
    lat = sorted(scraper.latencies)
    if len(lat) < 100:
        raise SystemExit(f"only {len(lat)} scrapes answered")
    p99 = lat[int(len(lat) * 0.99)]
    print(f"hostile upstream, {scraper.polls} polls at {interval} in {took:.0f} s"
          f" ({', '.join(f'{answers.get(m, 0)} {m}' for m in TURN)}):"
          f" scrape p50 {statistics.median(lat) * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms,"
          f" max {lat[-1] * 1e3:.0f} ms over {len(lat)} scrapes"
          f" ({scraper.failures} failed)")
    print("hostile upstream, daemon RSS: " + ", ".join(
        f"{mib:.1f} MiB after {n} polls" for n, mib in marks.items())
        + f", {rss:.1f} MiB after {scraper.polls}")


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else POLLS)
