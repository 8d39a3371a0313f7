"""The generated week (``tests/support/week_series.py``) and the real Prometheus that serves
it (``tests/support/week.py``'s ``week_prometheus``): the variance report's test data must be
what it claims. The generator's own checks run without Prometheus; the rest query it."""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.support import week as week_support
from tests.support.harness import ROOT
from tests.support.week import Week, WeekPrometheus
from tests.support.week_series import FAMILIES, STEP, Family, generate

week_prometheus = week_support.week_prometheus

TTFT = "inference_node_engine_time_to_first_token_seconds"
HISTOGRAMS = [f.name for f in FAMILIES if f.kind == "histogram"]
A, B = "node-a:19400", "node-b:19400"
WINDOW = 600
"""The rate window of the P99 queries, in seconds (10m)."""


def p99(family: str) -> str:
    return f"histogram_quantile(0.99, sum by (instance, le) (rate({family}_bucket[10m])))"


def family(name: str) -> Family:
    (found,) = (f for f in FAMILIES if f.name == name)
    return found


def by_instance(result: Sequence[dict[str, object]]) -> dict[str, dict[int, float]]:
    """A range query's matrix as {instance: {time: value}}."""
    out: dict[str, dict[int, float]] = {}
    for item in result:
        metric, values = item["metric"], item["values"]
        assert isinstance(metric, dict) and isinstance(values, list)
        out[metric["instance"]] = {int(t): float(v) for t, v in values}
    return out


def over_week(served: WeekPrometheus, expr: str, step: int = STEP,
              since: int = WINDOW) -> dict[str, dict[int, float]]:
    """``expr`` at every ``step`` from ``since`` after the week's start to its end."""
    w = served.week
    return by_instance(served.prometheus.query_range(expr, w.start + since, w.end, step))


def _digest(week: Week) -> str:
    """A digest of the ground truth and of every value of node B's TTFT and steal."""
    h = hashlib.sha256(repr(week).encode())
    for name in (TTFT, "inference_node_host_cpu_steal_ratio"):
        for s in family(name).series(week, week.node("b")):
            h.update(repr((s.name, s.labels, list(s.values))).encode())
    return h.hexdigest()


# --- the generator ------------------------------------------------------------------------


def test_the_week_is_a_fixed_whole_week_of_minutes() -> None:
    w = generate()
    assert w.end % 3600 == 0 and w.end - w.start == 7 * 86400 and w.step == 60
    assert w.stamps[0] == w.start + 60 and w.stamps[-1] == w.end and w.samples == 10080
    assert [n.instance for n in w.nodes] == [A, B]
    assert w.node("a").spikes == ()
    spikes = w.node("b").spikes
    assert len(spikes) == 12
    for s in spikes:
        assert 30 * 60 <= s.end - s.start <= 90 * 60 and s.start % 60 == 0
        assert 3 <= s.factor <= 5 and 0.2 <= s.steal <= 0.4
        assert w.start + 3600 < s.start and s.end < w.end - 3600
    assert all(a.end + 3600 < b.start for a, b in pairwise(spikes))
    # They start at twelve different even hours of the day: the daily pattern is sampled
    # evenly, so what follows it does not follow the spikes.
    assert sorted(s.start % 86400 // 7200 for s in spikes) == list(range(12))


def test_the_generator_is_deterministic() -> None:
    assert _digest(generate()) == _digest(generate())
    assert _digest(generate(seed=1)) != _digest(generate())


def test_the_histograms_are_valid_cumulative_counters() -> None:
    w = generate()
    node = w.node("b")
    for name in HISTOGRAMS:
        series = family(name).series(w, node)
        buckets = [s for s in series if s.name.endswith("_bucket")]
        (count,) = (s for s in series if s.name.endswith("_count"))
        (total,) = (s for s in series if s.name.endswith("_sum"))
        les = [float(s.labels["le"]) for s in buckets]
        assert les == sorted(les) and buckets[-1].labels["le"] == "+Inf", name
        for s in [*buckets, count, total]:
            assert all(x <= y for x, y in pairwise(s.values)), s.name
            assert s.values[0] >= 0
        for lower, upper in pairwise(buckets):
            assert all(x <= y for x, y in zip(lower.values, upper.values, strict=True)), name
        assert buckets[-1].values == count.values, name
        assert count.values[-1] > 0 and total.values[-1] > 0


def test_node_b_spikes_shift_its_latencies() -> None:
    """Inside a spike, the share of TTFT observations above 0.5 s is far above outside."""
    w = generate()
    series = family(TTFT).series(w, w.node("b"))
    (le1,) = (s for s in series if s.labels.get("le") == "0.5")
    count = series[-1]

    def slow_share(inside: bool) -> float:
        slow = total = 0.0
        for i, t in enumerate(w.stamps[1:], 1):
            if w.node("b").in_spike(t) == inside:
                n = count.values[i] - count.values[i - 1]
                slow += n - (le1.values[i] - le1.values[i - 1])
                total += n
        return slow / total
    assert slow_share(True) > 0.2 > 0.005 > slow_share(False)


# --- in the real Prometheus ---------------------------------------------------------------


def test_every_series_holds_the_whole_week(week_prometheus: WeekPrometheus) -> None:
    w, prom = week_prometheus.week, week_prometheus.prometheus
    steal = prom.query("count_over_time(inference_node_host_cpu_steal_ratio[7d])", at=w.end)
    assert {r["metric"]["instance"]: int(r["value"][1]) for r in steal} == {
        A: w.samples, B: w.samples}
    names = prom.get("/api/v1/label/__name__/values")["data"]
    assert names == sorted(
        n for f in FAMILIES for n in (
            [f"{f.name}_{s}" for s in ("bucket", "sum", "count")] if f.kind == "histogram"
            else [f.name + ("_total" if f.kind == "counter" else "")]))
    samples = [int(r["value"][1]) for name in names
               for r in prom.query(f"count_over_time({name}[7d])", at=w.end)]
    assert len(samples) == week_prometheus.series and set(samples) == {w.samples}
    per_node = prom.query('count by (instance, cluster) ({job="inference-node"})', at=w.end)
    half = str(week_prometheus.series // 2)
    assert {(r["metric"]["instance"], r["metric"]["cluster"], r["value"][1])
            for r in per_node} == {(A, "test", half), (B, "test", half)}
    # Nothing before the first sample, nothing after the last.
    assert prom.query("inference_node_host_cpu_steal_ratio", at=w.start) == []
    assert prom.query("count_over_time(inference_node_host_cpu_steal_ratio[1h])",
                      at=w.end + 3601) == []


def test_the_histograms_are_counters_without_resets(week_prometheus: WeekPrometheus) -> None:
    w, prom = week_prometheus.week, week_prometheus.prometheus
    for name in HISTOGRAMS:
        for suffix in ("bucket", "sum", "count"):
            assert prom.query(f"resets({name}_{suffix}[7d]) > 0", at=w.end) == [], name
        differ = prom.query(f'count_over_time(({name}_bucket{{le="+Inf"}} != ignoring (le)'
                            f' {name}_count)[7d:1m])', at=w.end)
        assert differ == [], name


@pytest.mark.parametrize("name", HISTOGRAMS)
def test_node_b_p99_is_several_times_higher_inside_its_spikes(
        week_prometheus: WeekPrometheus, name: str) -> None:
    """Where the whole 10-minute window lies inside a spike, node B's P99 is 3-5.5 times
    its median outside (15 minutes or more from any spike), and never under 2.2 times;
    node A's is flat, at node B's usual."""
    w = week_prometheus.week
    series = over_week(week_prometheus, p99(name))
    b, spikes = series[B], w.node("b").spikes
    outside = statistics.median(v for t, v in b.items() if all(
        t < s.start - 900 or t > s.end + 900 for s in spikes))
    for s in spikes:
        inside = [v for t, v in b.items() if s.start + WINDOW <= t <= s.end]
        assert len(inside) >= 20
        assert 3 <= statistics.median(inside) / outside <= 5.5, (s, outside, inside)
        assert min(inside) >= 2.2 * outside, (s, outside, inside)
    a = list(series[A].values())
    assert len(a) == w.samples - WINDOW // STEP + 1
    # The canary's 60 observations in 10 minutes make its P99 a step or two coarser.
    assert max(a) <= 1.6 * min(a) and statistics.pstdev(a) <= 0.1 * statistics.mean(a)
    assert 0.8 <= statistics.median(a) / outside <= 1.25


def test_node_b_steal_is_high_exactly_inside_its_spikes(
        week_prometheus: WeekPrometheus) -> None:
    w = week_prometheus.week
    steal = over_week(week_prometheus, "inference_node_host_cpu_steal_ratio", since=STEP)
    assert len(steal[B]) == len(steal[A]) == w.samples
    node = w.node("b")
    for t, v in steal[B].items():
        assert (v >= 0.12) if node.in_spike(t) else (v <= 0.03), (t, v)
    assert max(steal[A].values()) < 0.005


DRIVERS = {
    "steal": "max by (instance) (avg_over_time(inference_node_host_cpu_steal_ratio[10m]))",
    "throttling": "max by (instance) (avg_over_time(inference_node_gpu_throttle_reason[10m]))",
    "dram": "avg by (instance) (avg_over_time(inference_node_gpu_dram_active_ratio[10m]))",
    "memory pressure": "max by (instance) (max_over_time("
                       "inference_node_gpu_memory_pressure_ratio[10m]))",
    "memory stall": "max by (instance) (rate("
                    "inference_node_host_pressure_stalled_seconds_total[10m]))",
    "balloon": "sum by (instance) (rate(inference_node_host_balloon_inflated_bytes_total[10m]))",
    "foreign": "sum by (instance) (max_over_time(inference_node_gpu_foreign_processes[10m]))",
    "queue": "sum by (instance) (avg_over_time(inference_node_engine_requests_waiting[10m]))",
    "utilisation": "avg by (instance) (avg_over_time(inference_node_gpu_utilization_ratio[10m]))",
    "tokens": "sum by (instance) (rate(inference_node_engine_generation_tokens_total[10m]))",
}


@pytest.mark.parametrize("name", [TTFT, "inference_node_canary_time_to_first_token_seconds"])
def test_only_steal_tracks_the_p99(week_prometheus: WeekPrometheus, name: str) -> None:
    """Over 10-minute windows, node B's P99 correlates with its steal and with nothing else;
    node A's with nothing (its balloon never moves: no correlation at all)."""
    latency = over_week(week_prometheus, p99(name), step=WINDOW)
    for driver, expr in DRIVERS.items():
        values = over_week(week_prometheus, expr, step=WINDOW)
        for instance in (A, B):
            times = sorted(latency[instance].keys() & values[instance].keys())
            assert len(times) >= 1000
            xs = [values[instance][t] for t in times]
            if instance == A and driver == "balloon":
                assert set(xs) == {0.0}
                continue
            r = statistics.correlation([latency[instance][t] for t in times], xs)
            tracks = instance == B and driver == "steal"
            assert (r > 0.8) if tracks else (abs(r) < 0.3), (driver, instance, r)


def test_the_nodes_labels(week_prometheus: WeekPrometheus) -> None:
    w, prom = week_prometheus.week, week_prometheus.prometheus
    env = {r["metric"]["instance"]: r["metric"] for r in prom.query(
        "last_over_time(inference_node_environment_info[1h])", at=w.end)}
    for node in w.nodes:
        assert env[node.instance] == {"__name__": "inference_node_environment_info",
                                      **node.labels, **dict(node.environment)}
    cost = prom.query("sum by (instance, currency) (last_over_time("
                      "inference_node_gpu_hourly_cost[1h]))", at=w.end)
    assert {(r["metric"]["instance"], r["metric"]["currency"], float(r["value"][1]))
            for r in cost} == {(A, "USD", 4.0), (B, "USD", 2.4)}
    gpus = prom.query('count by (instance, virtualization_mode) (last_over_time('
                      'inference_node_gpu_info{name="NVIDIA H100 80GB HBM3"}[1h]))', at=w.end)
    assert {(r["metric"]["instance"], r["metric"]["virtualization_mode"], r["value"][1])
            for r in gpus} == {(A, "none", "2"), (B, "passthrough", "2")}
    probes = prom.query("sum by (instance) (increase(inference_node_canary_probes_total[1h]))",
                        at=w.end)
    assert {round(float(r["value"][1])) for r in probes} == {360}


def test_the_data_does_not_hang_on_the_process() -> None:
    """Another interpreter, with another hash seed, generates the same week."""
    code = ("import sys; from tests.test_week import _digest; from tests.support.week_series"
            " import generate; sys.stdout.write(_digest(generate()))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == _digest(generate())


def test_the_file_is_openmetrics(tmp_path: Path) -> None:
    """prometheus_client's strict OpenMetrics parser reads the first point of every series
    (it drops the later points of a histogram with many timestamps: a bug of its own)."""
    w = generate()
    path = tmp_path / "week.om"
    written = week_support.write_openmetrics(w, path, samples=1)
    text = path.read_text()
    assert text.endswith("\n# EOF\n")
    families = list(text_string_to_metric_families(text))  # type: ignore[no-untyped-call]
    assert [(f.name, f.type) for f in families] == [(f.name, f.kind) for f in FAMILIES]
    samples = [s for f in families for s in f.samples]
    assert len(samples) == written
    assert {s.timestamp.sec for s in samples} == {w.stamps[0]}
    assert {s.labels["instance"] for s in samples} == {A, B}
    assert all(s.labels["job"] == "inference-node" and s.labels["cluster"] == "test"
               for s in samples)
