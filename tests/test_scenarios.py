"""The daemon's tokens/s and latency percentiles against what a scenario put in."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.latency import LATENCIES
from tests.support.harness import Daemon, Series, pick, wait_for
from tests.vllm_sim import (
    SimServer,
    histogram_quantile,
    load_scenario,
    parse_scenario,
    totals_after_tick,
)

SCENARIOS = Path(__file__).parent / "scenarios"
GEN = "inference_node_engine_generation_tokens_per_second"


def test_windowed_percentiles_equal_the_scenario_histograms(tmp_path: Path) -> None:
    sc = load_scenario(SCENARIOS / "steady_v1.json")
    last = int(sc.total_duration)
    final = totals_after_tick(sc, last)
    with SimServer(sc) as sim, Daemon(tmp_path, [
            "--poll.interval", "200ms", "--poll.timeout", "200ms",
            "--vllm.endpoint", f"sim={sim.metrics_url}"]) as daemon:

        def done() -> Series | None:
            s = daemon.series()
            tokens = pick(s, "inference_node_engine_generation_tokens_total", dp_rank="0")
            return s if tokens == [final.generation_tokens] else None

        series = wait_for("the scenario's end", done, timeout=60)
    # The daemon's first poll saw tick 1; both windows reach back to it (the run is < 1 min).
    window = final.minus(totals_after_tick(sc, 1))
    checked = 0
    for latency in (row.key for row in LATENCIES):
        delta = window.histograms[latency]
        for win in ("1m", "5m"):
            labels = {"dp_rank": "1", "latency": latency, "window": win}
            assert pick(series, "inference_node_engine_latency_window_observations",
                        **labels) == [delta.count]
            for pct, q in (("50", 0.5), ("95", 0.95), ("99", 0.99)):
                got = pick(series, "inference_node_engine_latency_seconds", percentile=pct,
                           **labels)
                assert got == [pytest.approx(histogram_quantile(q, delta.buckets), rel=1e-9)]
                checked += 1
    assert checked == 24
    # The spike phase put 5% of TTFT at 3 s: the P99 lands in the (2.5, 5] bucket.
    p99 = pick(series, "inference_node_engine_latency_seconds", latency="ttft", window="5m",
               percentile="99", dp_rank="0")[0]
    assert 2.5 < p99 <= 5.0


def test_tokens_per_second_follow_the_load_through_a_restart(tmp_path: Path) -> None:
    sc = parse_scenario({
        "naming": "v1", "clock": "realtime",
        "engines": [{"model": "m", "dp_rank": "0"}],
        "phases": [
            {"duration": 4, "generation_tokens_per_s": 1000, "prompt_tokens_per_s": 250},
            {"duration": 4, "generation_tokens_per_s": 3000, "prompt_tokens_per_s": 750},
        ],
        "restarts": [6],
    })
    samples: list[tuple[float, float, float]] = []
    with SimServer(sc) as sim, Daemon(tmp_path, [
            # 500 ms polls: a reading is stamped at the middle of its request, and a request
            # held up by a busy machine moves that stamp; over 500 ms, 12 ms of it is 2.5%.
            "--poll.interval", "500ms", "--poll.timeout", "500ms", "--derive.windows", "1m",
            "--vllm.endpoint", f"sim={sim.metrics_url}"]) as daemon:

        def record() -> bool:
            s = daemon.series()
            rate = pick(s, GEN, window="poll")
            prompt = pick(s, "inference_node_engine_prompt_tokens_per_second", window="poll")
            if rate and prompt:
                samples.append((sim.elapsed(), rate[0], prompt[0]))
            return sim.elapsed() > 8.5

        wait_for("the scenario to run", record, timeout=30, every=0.1)
        series = daemon.series()

    assert len(samples) > 30
    for elapsed, gen, prompt in samples:
        assert 0 <= gen <= 3000 * 1.05, f"rate {gen} at {elapsed:.2f}s: negative or a spike"
        assert 0 <= prompt <= 750 * 1.05
    # Away from phase changes and the restart, the rate over one poll interval is the load:
    # the rate read at e covers at most the second before it (a poll, and one more while the
    # next is due).
    steady = [(e, g, p) for e, g, p in samples
              if 1.2 < e < 3.8 or 5.1 < e < 5.8 or 7.1 < e < 7.8]
    assert len(steady) > 10
    for elapsed, gen, prompt in steady:
        want = 1000 if elapsed < 4 else 3000
        assert gen == pytest.approx(want, rel=0.05), f"at {elapsed:.2f}s"
        assert prompt == pytest.approx(want / 4, rel=0.05), f"at {elapsed:.2f}s"
    assert pick(series, "inference_node_engine_restarts_total") == [1.0]
    # Over the whole run (about 8 s of 1000 then 3000 tokens/s) the windowed rate lies between.
    (window_rate,) = pick(series, GEN, window="1m")
    assert 1000 < window_rate < 3000
