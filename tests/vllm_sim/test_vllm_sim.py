"""Tests of the scenario-driven vLLM /metrics simulator."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import ROOT

from . import (
    CONTENT_TYPE,
    HISTOGRAMS,
    Scenario,
    SimServer,
    Totals,
    apportion,
    gauges_at,
    histogram_quantile,
    load_scenario,
    parse_scenario,
    totals_after_tick,
    totals_at_elapsed,
)

SCENARIOS = ROOT / "tests" / "scenarios"
STEADY = SCENARIOS / "steady_v1.json"
LEGACY = SCENARIOS / "legacy_restart.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

COMMON_FAMILIES = {
    "python_gc_objects_collected",
    "python_info",
    "process_start_time_seconds",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:cache_config_info",
    "vllm:num_preemptions",
    "vllm:num_preemptions_created",
    "vllm:prompt_tokens",
    "vllm:prompt_tokens_created",
    "vllm:generation_tokens",
    "vllm:generation_tokens_created",
    "vllm:request_success",
    "vllm:request_success_created",
    "vllm:request_prompt_tokens",
    "vllm:request_prompt_tokens_created",
    "vllm:iteration_tokens_total",
    "vllm:iteration_tokens_total_created",
    "vllm:time_to_first_token_seconds",
    "vllm:time_to_first_token_seconds_created",
    "vllm:e2e_request_latency_seconds",
    "vllm:e2e_request_latency_seconds_created",
    "vllm:request_queue_time_seconds",
    "vllm:request_queue_time_seconds_created",
}
V1_FAMILIES = COMMON_FAMILIES | {
    "vllm:kv_cache_usage_perc",
    "vllm:inter_token_latency_seconds",
    "vllm:inter_token_latency_seconds_created",
}
LEGACY_FAMILIES = COMMON_FAMILIES | {
    "vllm:gpu_cache_usage_perc",
    "vllm:num_requests_swapped",
    "vllm:time_per_output_token_seconds",
    "vllm:time_per_output_token_seconds_created",
}


def raw(data: dict[str, Any]) -> Scenario:
    """Scenario from a dict."""
    return parse_scenario(data)


def small(clock: str = "tick", naming: str = "v1") -> dict[str, Any]:
    """A minimal valid scenario as a dict."""
    return {
        "naming": naming,
        "clock": clock,
        "engines": [{"model": "m1", "dp_rank": "0"}],
        "phases": [
            {
                "duration": 5,
                "prompt_tokens_per_s": 100,
                "generation_tokens_per_s": 300,
                "requests_per_s": 4,
                "itl_observations_per_s": 300,
                "running": 4,
                "ttft": {"0.05": 3, "0.3": 1},
                "itl": {"0.02": 1},
                "e2e": {"1.0": 1},
                "queue": {"0.1": 1},
            }
        ],
    }


@pytest.fixture
def steady() -> Iterator[SimServer]:
    with SimServer(STEADY) as server:
        yield server


@pytest.fixture
def legacy() -> Iterator[SimServer]:
    with SimServer(LEGACY) as server:
        yield server


def get(server: SimServer, **kwargs: Any) -> requests.Response:
    return requests.get(server.metrics_url, timeout=kwargs.pop("timeout", 5), **kwargs)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def scrape(server: SimServer) -> Samples:
    response = get(server)
    response.raise_for_status()
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def sim_state(server: SimServer) -> dict[str, Any]:
    response = requests.get(f"{server.url}/_sim/state", timeout=5)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def post_fault(server: SimServer, **body: Any) -> requests.Response:
    return requests.post(f"{server.url}/_sim/fault", json=body, timeout=5)


def check_engine(samples: Samples, scenario: Scenario, labels: dict[str, str], t: Totals) -> None:
    """Every counter and histogram sample of one engine equals the expected totals."""
    assert value(samples, "vllm:prompt_tokens_total", **labels) == t.prompt_tokens
    assert value(samples, "vllm:generation_tokens_total", **labels) == t.generation_tokens
    assert value(samples, "vllm:num_preemptions_total", **labels) == t.preemptions
    for reason, n in t.finished_reason.items():
        assert value(samples, "vllm:request_success_total", finished_reason=reason, **labels) == n
    assert sum(t.finished_reason.values()) == t.requests
    for spec in HISTOGRAMS:
        h = t.histograms[spec.key]
        name = spec.name(scenario.naming)
        for bound, count in h.buckets:
            le = "+Inf" if bound == math.inf else repr(bound)
            assert value(samples, f"{name}_bucket", le=le, **labels) == count, (name, le)
        assert value(samples, f"{name}_count", **labels) == h.count
        assert value(samples, f"{name}_sum", **labels) == pytest.approx(h.sum, rel=1e-12)


def engine_labels(scenario: Scenario) -> list[dict[str, str]]:
    if scenario.naming == "v1":
        return [{"model_name": e.model, "engine": e.dp_rank} for e in scenario.engines]
    return [{"model_name": e.model} for e in scenario.engines]


# --- exposition format ---------------------------------------------------------------------


@pytest.mark.parametrize(("path", "families"), [(STEADY, V1_FAMILIES), (LEGACY, LEGACY_FAMILIES)])
def test_exposition_parses_with_expected_families(path: Path, families: set[str]) -> None:
    with SimServer(path) as server:
        response = get(server)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE
    names = {f.name for f in text_string_to_metric_families(response.text)}
    assert names == families


@pytest.mark.parametrize("path", [STEADY, LEGACY])
def test_every_vllm_series_carries_engine_labels(path: Path) -> None:
    scenario = load_scenario(path)
    with SimServer(scenario) as server:
        samples = scrape(server)
    extra = {"le", "finished_reason"}
    wanted = {"model_name", "engine"} if scenario.naming == "v1" else {"model_name"}
    for name, labels in samples:
        if not name.startswith("vllm:"):
            continue
        keys = {k for k, _ in labels}
        if name == "vllm:cache_config_info":
            assert {"block_size", "num_gpu_blocks"} <= keys
            assert ("engine" in keys) == (scenario.naming == "v1")
            continue
        assert keys - extra == wanted, name


def test_counters_have_total_and_created_lines(steady: SimServer) -> None:
    text = get(steady).text
    assert "# TYPE vllm:prompt_tokens_total counter" in text
    assert "# TYPE vllm:prompt_tokens_created gauge" in text
    assert 'vllm:generation_tokens_total{engine="1",model_name="llama-3-8b"} ' in text
    assert 'vllm:time_to_first_token_seconds_bucket{engine="0",le="2560.0",' in text
    assert "# TYPE vllm:time_to_first_token_seconds_created gauge" in text


def test_bucket_bounds_match_vllm(steady: SimServer) -> None:
    samples = scrape(steady)
    labels = {"model_name": "llama-3-8b", "engine": "0"}

    def bounds(name: str) -> list[str]:
        les = [dict(k)["le"] for n, k in samples if n == f"{name}_bucket" and labels.items() <= k]
        return sorted(les, key=float)

    ttft = "0.001 0.005 0.01 0.02 0.04 0.06 0.08 0.1 0.25 0.5 0.75 1 2.5 5 7.5 10 20 40 80 160 640"
    ttft += " 2560"
    itl = "0.01 0.025 0.05 0.075 0.1 0.15 0.2 0.3 0.4 0.5 0.75 1 2.5 5 7.5 10 20 40 80"
    req = "0.3 0.5 0.8 1 1.5 2 2.5 5 10 15 20 30 40 50 60 120 240 480 960 1920 7680"
    for name, want in [
        ("vllm:time_to_first_token_seconds", ttft),
        ("vllm:inter_token_latency_seconds", itl),
        ("vllm:e2e_request_latency_seconds", req),
        ("vllm:request_queue_time_seconds", req),
    ]:
        assert [float(b) for b in bounds(name)] == [float(b) for b in want.split()] + [math.inf]


# --- clock and exact totals ----------------------------------------------------------------


def test_tick_clock_advances_once_per_get(steady: SimServer) -> None:
    assert sim_state(steady)["tick"] == 0
    for k in range(1, 4):
        samples = scrape(steady)
        labels = {"model_name": "llama-3-8b", "engine": "0"}
        assert value(samples, "vllm:prompt_tokens_total", **labels) == 2000 * k
        state = sim_state(steady)
        assert state["tick"] == k
        assert state["scrapes"] == k
    assert state["engines"][1]["counters"]["generation_tokens"] == 12000


def test_counts_match_expected_every_tick(steady: SimServer) -> None:
    scenario = steady.scenario
    for k in range(1, 34):
        samples = scrape(steady)
        expected = totals_after_tick(scenario, k)
        gauges = gauges_at(scenario, k)
        for labels in engine_labels(scenario):
            check_engine(samples, scenario, labels, expected)
            assert value(samples, "vllm:num_requests_waiting", **labels) == gauges.waiting
            assert value(samples, "vllm:kv_cache_usage_perc", **labels) == gauges.kv_cache_usage
        state = sim_state(steady)["engines"][0]
        ttft = state["histograms"]["ttft"]
        assert ttft["count"] == expected.histograms["ttft"].count
        assert ttft["buckets"]["+Inf"] == expected.requests


def test_state_freezes_after_last_phase() -> None:
    scenario = load_scenario(STEADY)
    end = totals_after_tick(scenario, 30)
    assert totals_after_tick(scenario, 45) == end
    assert end.prompt_tokens == 10 * (2000 + 2000 + 1000)
    assert end.requests == 10 * (20 + 20 + 10)
    assert gauges_at(scenario, 99).running == 8


def test_spike_phase_has_exactly_five_percent_slow_ttft() -> None:
    scenario = load_scenario(STEADY)
    spike = totals_after_tick(scenario, 20).minus(totals_after_tick(scenario, 10))
    ttft = spike.histograms["ttft"]
    assert dict(ttft.values) == {0.05: 150, 0.3: 40, 3.0: 10}
    assert ttft.bucket(2.5) == 190
    assert ttft.bucket(5.0) == 200
    assert spike.preemptions == 5
    assert 2.5 < histogram_quantile(0.99, ttft.buckets) <= 5.0
    assert histogram_quantile(0.5, ttft.buckets) <= 0.06
    # Every single tick already carries whole weights: 20 requests over weights summing to 20.
    tick = totals_after_tick(scenario, 15).minus(totals_after_tick(scenario, 14))
    assert dict(tick.histograms["ttft"].values) == {0.05: 15, 0.3: 4, 3.0: 1}
    assert dict(tick.finished_reason) == {"stop": 5, "length": 15, "abort": 0, "error": 0}


def test_realtime_counters_are_the_integral_of_rates() -> None:
    data = small(clock="realtime")
    data["phases"][0]["duration"] = 60
    labels = {"model_name": "m1", "engine": "0"}
    with SimServer(raw(data)) as server:
        for _ in range(3):
            time.sleep(0.05)
            before = server.elapsed()
            samples = scrape(server)
            after = server.elapsed()
            got = value(samples, "vllm:generation_tokens_total", **labels)
            assert 300 * before <= got <= 300 * after
            low = totals_at_elapsed(server.scenario, before).histograms["ttft"].count
            high = totals_at_elapsed(server.scenario, after).histograms["ttft"].count
            count = value(samples, "vllm:time_to_first_token_seconds_count", **labels)
            assert low <= count <= high
            state = sim_state(server)
            assert state["tick"] is None
            assert before <= state["elapsed"] <= after
            exact = totals_at_elapsed(server.scenario, state["elapsed"])
            engine = state["engines"][0]
            assert engine["counters"]["generation_tokens"] == exact.generation_tokens
            assert engine["histograms"]["ttft"]["count"] == exact.histograms["ttft"].count


# --- apportionment -------------------------------------------------------------------------


def test_apportion_exact_on_whole_quotas() -> None:
    assert apportion([90, 9, 1], 100) == (90, 9, 1)
    assert apportion([90, 9, 1], 1000) == (900, 90, 10)
    assert apportion([Fraction("0.95"), Fraction("0.05")], 20) == (19, 1)
    assert apportion([3, 1], 0) == (0, 0)
    assert sum(apportion([5, 3, 2], 7)) == 7


def test_fractional_requests_carry_across_ticks() -> None:
    data = small()
    data["phases"][0].update(requests_per_s=0.3, ttft={"0.05": 2, "0.3": 1}, duration=20)
    scenario = raw(data)
    counts = [totals_after_tick(scenario, k).requests for k in range(21)]
    assert counts == [math.floor(0.3 * k + 1e-9) for k in range(21)]
    assert dict(totals_after_tick(scenario, 20).histograms["ttft"].values) == {0.05: 4, 0.3: 2}


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=6),
    n=st.integers(min_value=0, max_value=400),
)
def test_apportion_is_monotone_and_within_quota(weights: list[int], n: int) -> None:
    total = sum(weights)
    now = apportion(weights, n)
    nxt = apportion(weights, n + 1)
    assert sum(now) == n
    assert all(b >= a for a, b in zip(now, nxt, strict=True))
    for w, c in zip(weights, now, strict=True):
        assert abs(Fraction(c) - Fraction(n * w, total)) < 1


# --- restarts ------------------------------------------------------------------------------


def test_scheduled_restart_zeroes_counters(legacy: SimServer) -> None:
    scenario = legacy.scenario
    labels = {"model_name": "facebook/opt-125m"}
    seen = [scrape(legacy) for _ in range(14)]
    before, after = seen[11], seen[12]  # ticks 12 and 13, restart at 12.5
    assert value(before, "vllm:prompt_tokens_total", **labels) == 10 * 800 + 2 * 400
    assert value(after, "vllm:prompt_tokens_total", **labels) == 200  # half a tick since restart
    assert value(after, "vllm:time_to_first_token_seconds_count", **labels) == 1
    assert value(after, "vllm:num_preemptions_total", **labels) == 0
    assert value(after, "vllm:prompt_tokens_created", **labels) > value(
        before, "vllm:prompt_tokens_created", **labels
    )
    for k, samples in enumerate(seen, start=1):
        check_engine(samples, scenario, labels, totals_after_tick(scenario, k))
    assert value(seen[3], "vllm:num_requests_swapped", **labels) == 1
    assert value(seen[3], "vllm:gpu_cache_usage_perc", **labels) == 0.6


def test_restart_endpoint(steady: SimServer) -> None:
    for _ in range(5):
        scrape(steady)
    response = requests.post(f"{steady.url}/_sim/restart", timeout=5)
    assert response.json() == {"restart_at": 5.0}
    samples = scrape(steady)
    labels = {"model_name": "llama-3-8b", "engine": "1"}
    assert value(samples, "vllm:prompt_tokens_total", **labels) == 2000
    assert value(samples, "vllm:time_to_first_token_seconds_count", **labels) == 20
    expected = totals_after_tick(steady.scenario, 6, restarts=[5])
    check_engine(samples, steady.scenario, labels, expected)
    assert sim_state(steady)["restarts"] == [5.0]


# --- faults --------------------------------------------------------------------------------


def test_accept_header_is_recorded(steady: SimServer) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    get(steady, headers={"Accept": accept})
    assert sim_state(steady)["last_accept"] == accept
    assert steady.last_accept == accept


def test_fault_status500_does_not_advance(steady: SimServer) -> None:
    scrape(steady)
    assert post_fault(steady, mode="status500").status_code == 200
    assert get(steady).status_code == 500
    assert get(steady).status_code == 500
    post_fault(steady, mode="none")
    samples = scrape(steady)
    assert value(samples, "vllm:prompt_tokens_total", model_name="llama-3-8b", engine="0") == 4000
    state = sim_state(steady)
    assert (state["tick"], state["scrapes"], state["served"]) == (2, 4, 2)


def test_fault_count_limits_faulty_responses(steady: SimServer) -> None:
    post_fault(steady, mode="status500", count=1)
    assert get(steady).status_code == 500
    assert get(steady).status_code == 200
    assert sim_state(steady)["fault"]["mode"] == "none"


def test_fault_hang(steady: SimServer) -> None:
    post_fault(steady, mode="hang", seconds=0.6)
    with pytest.raises(requests.Timeout):
        get(steady, timeout=0.2)
    started = time.monotonic()
    assert get(steady, timeout=5).status_code == 200
    assert time.monotonic() - started >= 0.5
    assert sim_state(steady)["tick"] == 0


def test_fault_garbage(steady: SimServer) -> None:
    post_fault(steady, mode="garbage")
    body = get(steady).content
    assert body.startswith(b"\x89PNG")
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")


def test_fault_huge(steady: SimServer) -> None:
    post_fault(steady, mode="huge", seconds=2)
    response = get(steady, timeout=10)
    assert "Content-Length" not in response.headers
    assert len(response.content) >= 2 * 1024 * 1024
    lines = response.text.splitlines()
    assert all(re.match(r"^(# (HELP|TYPE) |[a-z0-9_:]+[{ ])", line) for line in lines)
    assert sum(1 for line in lines if line.startswith("vllm:sim_padding{")) > 10000


def test_fault_slow_drip(steady: SimServer) -> None:
    post_fault(steady, mode="slow_drip", count=1)
    started = time.monotonic()
    with requests.get(steady.metrics_url, stream=True, timeout=5) as response:
        lines = response.iter_lines(chunk_size=1)
        first = [next(lines) for _ in range(4)]
    assert time.monotonic() - started >= 1.4
    assert first[0].startswith(b"# HELP ")


def test_fault_partial_garbage(steady: SimServer) -> None:
    post_fault(steady, mode="partial_garbage")
    text = get(steady).text
    assert "this line is not a metric sample" in text
    assert 'vllm:prompt_tokens_total{engine="0",model_name="llama-3-8b"} 0.0' in text
    with pytest.raises(ValueError):
        list(text_string_to_metric_families(text))


def test_fault_close(steady: SimServer) -> None:
    post_fault(steady, mode="close")
    with pytest.raises(requests.ConnectionError):
        get(steady)
    post_fault(steady, mode="none")
    assert get(steady).status_code == 200
    assert sim_state(steady)["tick"] == 1


def test_bad_fault_request_is_rejected(steady: SimServer) -> None:
    response = post_fault(steady, mode="explode")
    assert response.status_code == 400
    assert "fault.mode" in response.json()["error"]


# --- scenario validation -------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: list[str | int], new: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = new

    return mutate


def _delete(path: list[str | int]) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set(["naming"], "v2"), "naming"),
        (_set(["clock"], "wall"), "clock"),
        (_set(["engines"], []), "engines"),
        (_delete(["phases"]), "phases: missing"),
        (_set(["phases"], []), "phases"),
        (_set(["engines", 0, "dp_rank"], 0), r"engines\[0\]\.dp_rank"),
        (_set(["engines", 0, "model"], ""), r"engines\[0\]\.model"),
        (_set(["phases", 0, "duration"], 0), r"phases\[0\]\.duration"),
        (_set(["phases", 0, "requests_per_s"], -1), r"phases\[0\]\.requests_per_s"),
        (_set(["phases", 0, "running"], "lots"), r"phases\[0\]\.running"),
        (_set(["phases", 0, "kv_cache_usage"], 1.5), r"phases\[0\]\.kv_cache_usage"),
        (_set(["phases", 0, "ttft"], {"fast": 1}), r"phases\[0\]\.ttft: key 'fast'"),
        (_set(["phases", 0, "ttft"], {"0.1": 0}), r"phases\[0\]\.ttft\['0\.1'\]"),
        (_delete(["phases", 0, "e2e"]), r"phases\[0\]\.e2e: required"),
        (_set(["phases", 0, "finished_reason"], {"timeout": 1}), "unknown reason 'timeout'"),
        (_set(["phases", 0, "ttfts"], {"0.1": 1}), r"unknown key\(s\) \['ttfts'\]"),
        (_set(["restarts"], [-1]), r"restarts\[0\]"),
        (_set(["engines"], [{"model": "a"}, {"model": "a", "dp_rank": "1"}]), "duplicate model"),
    ],
)
def test_bad_scenarios_raise(mutate: Mutation, message: str) -> None:
    data = copy.deepcopy(small(naming="legacy"))
    mutate(data)
    with pytest.raises(ValueError, match=message):
        parse_scenario(data)


def test_bad_scenario_file_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        load_scenario(broken)
    data = small()
    data["phases"][0]["duration"] = -3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad\.json: phases\[0\]\.duration"):
        SimServer(bad)


def test_example_scenarios_load() -> None:
    steady = load_scenario(STEADY)
    assert [e.dp_rank for e in steady.engines] == ["0", "1"]
    assert len(steady.phases) == 3
    legacy = load_scenario(LEGACY)
    assert legacy.naming == "legacy"
    assert 0 < legacy.restarts[0] < legacy.total_duration


# --- command line --------------------------------------------------------------------------


def test_command_line_serves_until_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.vllm_sim", "--scenario", str(STEADY), "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"listening on (\d+)\n", line)
        assert match, line
        response = requests.get(f"http://127.0.0.1:{match.group(1)}/metrics", timeout=5)
        assert "vllm:prompt_tokens_total" in response.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
