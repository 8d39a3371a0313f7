"""A real Prometheus holding a generated week of two nodes' series (``week_series.py``): the
``week_prometheus`` fixture, for the variance report's tests.

The week is written as OpenMetrics text, one file per node, and backfilled with the real
``promtool tsdb create-blocks-from openmetrics`` (node A's promtool runs while node B's file
is written); then a real Prometheus with no scrape targets serves the blocks. A module uses
the fixture by naming it, ``week_prometheus = week.week_prometheus`` (importing the name
would trip ruff: F401, F811); however many modules do, one Prometheus serves the session.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.promtool import promtool
from tests.support.stack import Prometheus, write_yaml
from tests.support.week_series import (
    END,
    FAMILIES,
    HOUR,
    Node,
    Spike,
    Week,
    generate,
)

__all__ = ["END", "Node", "Spike", "Week", "WeekPrometheus", "WeekServer", "backfill",
           "generate", "serve_week", "week_prometheus", "write_openmetrics"]


def write_openmetrics(week: Week, path: Path, nodes: Sequence[Node] | None = None,
                      samples: int | None = None) -> int:
    """Write ``nodes``' (by default every node's) series to ``path`` as OpenMetrics text,
    timestamps in seconds, only the first ``samples`` of each if given; the number of series
    written. A series' samples follow each other in time, but a histogram's (one per node)
    go a point at a time: a point's buckets, ``_sum`` and ``_count`` together."""
    nodes = week.nodes if nodes is None else nodes
    stamps = [f" {t}\n" for t in week.stamps[:samples]]
    n = len(stamps)
    written = 0
    with path.open("w", encoding="ascii", newline="\n") as out:
        for family in FAMILIES:
            out.write(f"# TYPE {family.name} {family.kind}\n")
            for node in nodes:
                group = family.series(week, node)
                columns = [s.values[:n] for s in group]
                heads = [s.name + "{" + ",".join(f'{k}="{v}"' for k, v in s.labels.items())
                         + "} " for s in group]
                written += len(group)
                if family.kind != "histogram":
                    for head, values in zip(heads, columns, strict=True):
                        out.write("".join([f"{head}{v}{t}"
                                           for v, t in zip(values, stamps, strict=True)]))
                    continue
                points = zip(*columns, strict=True)
                out.write("".join([f"{head}{v}{t}" for values, t in zip(points, stamps,
                                                                        strict=True)
                                   for head, v in zip(heads, values, strict=True)]))
        out.write("# EOF\n")
    return written


def block_duration(week: Week) -> str:
    """The smallest of promtool's block ranges (2 h times a power of 3) that spans the week:
    promtool reads its input once per block, so one block (or two) and not 84."""
    hours = 2
    while hours * HOUR < week.end - week.start:
        hours *= 3
    return f"{hours}h"


def backfill(week: Week, workdir: Path, data: Path) -> int:
    """Write the week one file per node and backfill each into blocks with promtool, in
    parallel with writing the next; move the blocks into ``data`` and delete the files
    (about 0.5 GB each). The number of series."""
    data.mkdir(parents=True, exist_ok=True)
    started: list[tuple[subprocess.Popen[bytes], Path, Path, Path]] = []
    written = 0
    try:
        for node in week.nodes:
            text = workdir / f"week-{node.key}.om"
            blocks = workdir / f"blocks-{node.key}"
            log = workdir / f"promtool-{node.key}.log"
            written += write_openmetrics(week, text, (node,))
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [promtool(), "tsdb", "create-blocks-from", "openmetrics",
                     f"--max-block-duration={block_duration(week)}", str(text), str(blocks)],
                    stdout=out, stderr=subprocess.STDOUT)
            started.append((proc, text, blocks, log))
        for proc, text, blocks, log in started:
            code = proc.wait(timeout=300)
            assert code == 0, f"promtool exited with {code} on {text}:\n{log.read_text()}"
            text.unlink()
            for block in blocks.iterdir():
                block.rename(data / block.name)
            blocks.rmdir()
    finally:
        for proc, *_ in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return written


class WeekServer(Prometheus):
    """A Prometheus on ``workdir/data`` with no scrape targets, keeping data 10 years old."""

    def __init__(self, workdir: Path) -> None:
        config = write_yaml(workdir / "prometheus.yml", {
            "global": {"scrape_interval": "1m", "evaluation_interval": "1m"},
            "scrape_configs": []})
        super().__init__(workdir, config)
        self.args[-1:-1] = ["--storage.tsdb.retention.time=10y"]

    def query_range(self, expr: str, start: float, end: float, step: float
                    ) -> list[dict[str, Any]]:
        """Range query; the result matrix."""
        params: dict[str, str | float] = {"query": expr, "start": start, "end": end,
                                          "step": step}
        resp = requests.get(self.url + "/api/v1/query_range", params=params, timeout=60)
        body = resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"query failed: {expr}: {body.get('error', resp.text)}")
        return list(body["data"]["result"])


@dataclass(frozen=True)
class WeekPrometheus:
    """What ``week_prometheus`` gives: the server and the week's ground truth."""

    url: str
    """The Prometheus' base URL, ``http://127.0.0.1:<port>``."""
    prometheus: WeekServer
    """Its client: ``query(expr, at)``, ``query_range(expr, start, end, step)``."""
    week: Week
    """Start, end, step, and the nodes with their labels and spikes."""
    series: int
    """How many series it holds."""
    seconds: dict[str, float] = field(default_factory=dict)
    """How long each part took: ``backfill`` (writing and promtool), ``start``."""


@contextmanager
def serve_week(workdir: Path, week: Week | None = None) -> Iterator[WeekPrometheus]:
    """Backfill ``week`` (by default :func:`generate`'s) into ``workdir`` and serve it until
    the block ends, once it is ready and counts every node's samples over the whole week."""
    week = generate() if week is None else week
    clock = time.monotonic()
    series = backfill(week, workdir, workdir / "data")
    seconds = {"backfill": time.monotonic() - clock}
    server = WeekServer(workdir)
    server.start()
    try:
        server.wait_ready(timeout=60)
        counted = server.query("count_over_time(inference_node_host_cpu_steal_ratio[7d])",
                               at=week.end)
        assert {r["metric"]["instance"]: int(r["value"][1]) for r in counted} == {
            n.instance: week.samples for n in week.nodes}, f"not the whole week: {counted}"
        seconds["start"] = time.monotonic() - clock - seconds["backfill"]
        yield WeekPrometheus(server.url, server, week, series, seconds)
    finally:
        server.stop()


_SERVED = pytest.StashKey[WeekPrometheus]()


@pytest.fixture(scope="session")
def week_prometheus(request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory) -> WeekPrometheus:
    """A real Prometheus serving the generated week (:func:`serve_week`), started once per
    session whichever module asks first, stopped at the session's end."""
    stash = request.config.stash
    if _SERVED not in stash:
        stack = ExitStack()
        request.config.add_cleanup(stack.close)
        stash[_SERVED] = stack.enter_context(serve_week(tmp_path_factory.mktemp("week")))
    return stash[_SERVED]

