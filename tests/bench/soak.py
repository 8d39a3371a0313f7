"""Resident memory of the daemon's poll path over 10,000 poll cycles of 4 endpoints.

Runs the daemon's own pieces (sources, workers, store, renderer) in a process of its own,
with simulated time advancing one poll interval per cycle, and a scrape every third cycle
as Prometheus at 15 s would do against the default 5 s interval.
"""

from __future__ import annotations

import sys
import time

from exporter import logs
from exporter.collectors.engine import EngineSource
from exporter.config import Config, endpoint
from exporter.engines.vllm import ADAPTER
from exporter.exposition.render import Renderer
from exporter.snapshot import SnapshotStore
from exporter.worker import PollWorker

CYCLES = 10_000


def rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main(ports: list[int]) -> None:
    logs.configure("warning")
    cfg = Config().with_engine("vllm", endpoints=tuple(
        endpoint(f"http://127.0.0.1:{p}/metrics", f"vllm-{i}") for i, p in enumerate(ports)))
    store = SnapshotStore()
    clock = [time.monotonic()]
    workers = []
    for e in cfg.engines["vllm"].endpoints:
        source = EngineSource(ADAPTER, e, cfg, clock=lambda: clock[0])
        workers.append(PollWorker(source, cfg, store))
    renderer = Renderer(store, lambda: cfg.stale_after)
    marks: dict[int, int] = {}
    started = time.monotonic()
    for i in range(1, CYCLES + 1):
        clock[0] += cfg.poll_interval
        for w in workers:
            assert w.poll_once().up
        if i % 3 == 0:
            renderer.render()
        if i in (1000, 2500, 5000, 7500, 10_000):
            marks[i] = rss()
    took = time.monotonic() - started
    mib = {k: v / 2**20 for k, v in marks.items()}
    print(f"memory, {CYCLES} poll cycles x 4 endpoints ({took:.0f} s wall):"
          f" RSS {', '.join(f'{mib[k]:.1f} MiB at {k}' for k in sorted(mib))}")
    print(f"memory, growth over the last half (5000 -> 10000): {mib[10_000] - mib[5000]:+.2f} MiB")


if __name__ == "__main__":
    main([int(p) for p in sys.argv[1:]])
