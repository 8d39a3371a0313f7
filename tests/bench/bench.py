"""``make bench``: prints the performance figures the project promises. Not a test.

Figures are CPU time (``time.process_time``) unless said otherwise; upstream servers and the
daemon under measurement run in processes of their own so their CPU is not mixed up.
"""

from __future__ import annotations

import gc
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter import logs
from exporter.collectors.engine import EngineSource
from exporter.config import Config, endpoint
from exporter.engines.vllm import ADAPTER, KEEP
from exporter.expfmt import Parser, parse
from exporter.exposition.render import Renderer
from exporter.processes import read_stat
from exporter.snapshot import SnapshotStore
from exporter.worker import PollWorker
from tests.bench import hostile
from tests.bench.payload import four_engine_exposition
from tests.support.harness import free_port

ROOT = Path(__file__).parents[2]


def cpu_per_call(fn: Callable[[], object], min_seconds: float = 1.0) -> float:
    """Mean CPU seconds per call, over at least ``min_seconds`` of CPU."""
    fn()
    gc.collect()
    n, start = 0, time.process_time()
    while True:
        fn()
        n += 1
        spent = time.process_time() - start
        if spent >= min_seconds:
            return spent / n


def start_servers(count: int, filtering: bool = True) -> tuple[subprocess.Popen[str], list[int]]:
    """Live payload servers; with ``filtering``, ``/metrics/`` answers ``name[]`` as vLLM's
    does, else the daemon must read the whole exposition."""
    args = [sys.executable, "-m", "tests.bench.payload", str(count)]
    proc = subprocess.Popen(args if filtering else [*args, "--no-filter"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ports = [int(p) for p in proc.stdout.readline().split()]
    return proc, ports


def config(ports: list[int], **extra: object) -> Config:
    from dataclasses import replace

    return replace(Config(), **extra).with_engine("vllm", endpoints=tuple(
        endpoint(f"http://127.0.0.1:{p}/metrics", f"vllm-{i}") for i, p in enumerate(ports)))


def bench_parse(text: str) -> None:
    print(f"payload: {len(text.encode()) / 1024:.0f} KiB, {text.count(chr(10))} lines,"
          f" 4 (model, engine) label sets")
    ref = cpu_per_call(lambda: list(text_string_to_metric_families(text)))
    cold = cpu_per_call(lambda: parse(text))
    warm_parser = Parser()
    warm = cpu_per_call(lambda: warm_parser.parse(text))
    poll_parser = Parser()
    filtered = cpu_per_call(lambda: poll_parser.parse(text, KEEP))
    rows = [("prometheus_client.parser", ref), ("ours, fresh parser (no cache)", cold),
            ("ours, reused parser (label cache)", warm), ("ours, as polled (vLLM families)",
                                                         filtered)]
    for label, spent in rows:
        ratio = f"   {ref / spent:5.1f}x faster" if spent is not ref else ""
        print(f"parse, {label:<36} {spent * 1e3:8.2f} ms CPU{ratio}")


def bench_poll(ports: list[int], filtering: bool) -> SnapshotStore:
    """CPU per poll cycle over the endpoints at ``ports``; the store the polls filled."""
    cfg = config(ports)
    store = SnapshotStore()
    workers = [PollWorker(EngineSource(ADAPTER, e, cfg), cfg, store)
               for e in cfg.engines["vllm"].endpoints]
    clock = [time.monotonic()]

    # Simulated time: each cycle is one poll interval later, so windows fill as in service.
    for w in workers:
        assert isinstance(w.source, EngineSource)
        w.source.clock = lambda: clock[0]

    def cycle() -> None:
        clock[0] += cfg.poll_interval
        for w in workers:
            state = w.poll_once()
            assert state.up

    for _ in range(70):  # fill the 5m window
        cycle()
    assert all(getattr(w.source, "filtering", None) is filtering for w in workers)
    # This machine's speed drifts (shared cores): report the median of short batches.
    batches = sorted(cpu_per_call(cycle, 0.25) for _ in range(15))
    per_cycle = statistics.median(batches)
    what = "filtered, as vLLM answers" if filtering else "whole, no name[] filter"
    size = (next(iter(store.current().values())).response_bytes or 0) / 1024
    print(f"poll cycle, 4 endpoints ({what}, {size:3.0f} KiB each): {per_cycle * 1e3:6.2f} ms"
          f" CPU median of {len(batches)} batches (best {batches[0] * 1e3:.2f},"
          f" worst {batches[-1] * 1e3:.2f}); {per_cycle / cfg.poll_interval * 100:.2f}% of"
          f" a core at the default {cfg.poll_interval:g} s interval")
    return store


def bench_render(store: SnapshotStore) -> None:
    """CPU per render of what the polls left in ``store``, in process."""
    renderer = Renderer(store, lambda: Config().stale_after)
    body = renderer.render()
    render = cpu_per_call(renderer.render)
    print(f"scrape render, in process:                    {render * 1e3:6.2f} ms CPU"
          f" ({len(body) / 1024:.0f} KiB, {len(body.splitlines())} lines)")


def _cpu_of(pid: int) -> float:
    stat = read_stat(pid)
    assert stat is not None, f"process {pid} has gone"
    return stat[0]


def _rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_daemon_scrape(ports: list[int]) -> None:
    """CPU the real daemon spends per HTTP scrape, its polling CPU subtracted."""
    port = free_port()
    # Discovery's scans are their own figure (bench_discovery): not in the scrapes' CPU.
    args = [sys.executable, "-m", "exporter", "--web.listen-address", f"127.0.0.1:{port}",
            "--poll.interval", "20s", "--poll.timeout", "5s", "--log.level", "warning",
            "--no-engines.discover"]
    for p in ports:
        args += ["--vllm.endpoint", f"http://127.0.0.1:{p}/metrics"]
    daemon = subprocess.Popen(args, cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 30
        while True:
            try:
                if b"inference_node_engine_up{" in requests.get(url).content:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("daemon did not come up")
            time.sleep(0.1)
        session = requests.Session()
        size = len(session.get(url, headers={"Accept-Encoding": "identity"}).content)
        for encoding in ("identity", "gzip"):
            n, start = 300, _cpu_of(daemon.pid)
            for _ in range(n):
                session.get(url, headers={"Accept-Encoding": encoding}).raise_for_status()
            spent = _cpu_of(daemon.pid) - start
            print(f"scrape over HTTP, real daemon, {encoding:<8}:     {spent / n * 1e3:6.2f} ms CPU"
                  f" ({size / 1024:.0f} KiB body; polls every 20 s, so at most one poll in"
                  f" the {n} scrapes)")
        print(f"daemon RSS after the scrapes: {_rss_of(daemon.pid) / 2**20:.1f} MiB")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)


def bench_discovery() -> None:
    """CPU of one search of this machine for engines: every process' command line and the
    socket table (what the daemon does every --engines.discover-interval)."""
    import psutil

    from exporter.discovery import Discovery

    d, cfg = Discovery(), Config()
    per_scan = cpu_per_call(lambda: d.scan(cfg), min_seconds=0.5)
    procs = len(psutil.pids())
    print(f"discovery scan, {procs} processes:            {per_scan * 1e3:6.2f} ms CPU;"
          f" {per_scan / cfg.discover_interval * 100:.3f}% of a core at the default"
          f" {cfg.discover_interval:g} s interval")


def bench_memory(ports: list[int]) -> None:
    proc = subprocess.run([sys.executable, "-m", "tests.bench.soak", *map(str, ports)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    print(proc.stdout, end="")


def bench_gpu() -> None:
    import tempfile

    from tests.nvml_sim import Scenario, build, env, h100

    with tempfile.TemporaryDirectory() as tmp:
        lib_dir = build(Path(tmp))
        scenario = Scenario(gpus=[h100(i) for i in range(8)]).write(Path(tmp) / "gpus.txt")
        proc = subprocess.run([sys.executable, "-m", "tests.bench.gpu_cycle"], cwd=ROOT,
                              env=env(lib_dir, scenario), capture_output=True, text=True,
                              timeout=300)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    print(proc.stdout, end="")


def main() -> None:
    logs.configure("warning")
    text = four_engine_exposition()
    bench_parse(text)
    plain, plain_ports = start_servers(4, filtering=False)
    try:
        bench_poll(plain_ports, filtering=False)
    finally:
        plain.kill()
        plain.wait()
    servers, ports = start_servers(4)
    try:
        bench_render(bench_poll(ports, filtering=True))
        bench_daemon_scrape(ports)
        bench_discovery()
        bench_gpu()
        bench_memory(ports)
    finally:
        servers.kill()
        servers.wait()
    # At the default interval a hostile answer is parsed now and then; at 150 ms the poll
    # thread is never idle (the worst case), and 1,000 polls take a few minutes.
    hostile.run(polls=30, interval="5s", limit=200)
    hostile.run()


if __name__ == "__main__":
    main()
