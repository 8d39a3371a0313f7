"""Every engine's adapter under time-varying load: the simulator serves one scenario in each
engine's own exposition (``tests/vllm_sim/dialects``) and the daemon's figures must be the
scenario's, as far as that engine can tell them.

The scenario changes load, queue, KV use and latency from phase to phase. On the tick clock
each poll is one tick, so what the daemon saw is known exactly: its counters must equal the
engine's last ones, its gauges must follow the phases in order, and its widest window (which
holds every poll) must give rates, percentiles (engines with histograms, at their own bucket
bounds) and means (engines with cumulative durations only) equal to those computed from the
scenario. What an engine lacks must be absent. A second scenario restarts the engine.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from exporter.latency import LATENCIES
from tests.support.harness import Series, in_process_daemon, pick, scrape, wait_for
from tests.vllm_sim import (
    Gauges,
    Scenario,
    SimServer,
    Totals,
    gauges_at,
    histogram_quantile,
    parse_scenario,
)
from tests.vllm_sim import totals_after_tick as after_tick
from tests.vllm_sim.dialects import DIALECTS, Dialect, rebucket

E = "inference_node_engine_"
WINDOW = "2m"
"""Longer than a run: the window holds every poll."""
MODEL = "sim-model"
GAUGES = {"running": "requests_running", "waiting": "requests_waiting",
          "kv_cache_usage": "kv_cache_usage_ratio"}
RATES = {"prompt_tokens": "prompt_tokens_per_second",
         "generation_tokens": "generation_tokens_per_second"}


def phase(duration: int, scale: int, waiting: float, running: float, kv: float,
          slow: bool) -> dict[str, Any]:
    """A phase of ``scale`` times a base load; ``slow`` moves the latencies up."""
    late = 3.0 if slow else 1.0
    return {
        "duration": duration, "requests_per_s": 2 * scale, "prompt_tokens_per_s": 200 * scale,
        "generation_tokens_per_s": 400 * scale, "itl_observations_per_s": 400 * scale,
        "preemptions_per_s": 1 if slow else 0,
        "waiting": waiting, "running": running, "kv_cache_usage": kv,
        "ttft": {str(0.05 * late): 6, str(0.3 * late): 3, str(2.0 * late): 1},
        "itl": {str(0.012 * late): 7, str(0.03 * late): 2, str(0.15 * late): 1},
        "e2e": {str(1.5 * late): 6, str(3.0 * late): 3, str(9.0 * late): 1},
        "queue": {"0.004": 5, str(0.08 * late): 4, str(0.7 * late): 1},
        "finished_reason": {"length": 3, "stop": 1},
    }


PHASES = [phase(6, 1, 0, 3, 0.2, False), phase(6, 4, 12, 16, 0.93, True),
          phase(6, 2, 2, 8, 0.5, False)]


def scenario(restarts: tuple[int, ...] = ()) -> Scenario:
    return parse_scenario({"naming": "v1", "clock": "tick",
                           "engines": [{"model": MODEL, "dp_rank": "0"}],
                           "phases": PHASES, "restarts": list(restarts)})


def labels(dialect: Dialect) -> dict[str, str]:
    return {"engine": dialect.kind, "endpoint": "sim", "model": MODEL, "dp_rank": "0"}


def run(dialect: Dialect, sc: Scenario) -> tuple[Series, list[float], int]:
    """The scenario served in ``dialect`` and polled to its end: the daemon's last series,
    the queue depths it showed along the way, and the last tick."""
    last = int(sc.total_duration) + 1  # the state holds after the last phase
    want = labels(dialect)
    waiting: list[float] = []
    with SimServer(sc, dialect=dialect.name) as sim, in_process_daemon(
            "--poll.interval", "100ms", "--poll.timeout", "100ms",
            f"--{dialect.kind}.endpoint", f"sim={sim.metrics_url}",
            windows=f"1m,{WINDOW}") as metrics:

        def ended() -> Series | None:
            s = scrape(metrics)
            waiting.extend(pick(s, E + "requests_waiting", **want))
            return s if sim.tick >= last and pick(s, E + "up", engine=dialect.kind) == [
                1.0] and caught_up(s, dialect, after_tick(sc, sim.tick)) else None

        s = wait_for("the scenario's end", ended, timeout=60, every=0.05)
        # The state holds from the last phase on: later polls change no figure checked.
        return s, waiting, sim.tick


def caught_up(s: Series, dialect: Dialect, totals: Totals) -> bool:
    """Whether the daemon shows the engine's counters as they are in ``totals``."""
    return all(pick(s, E + name + "_total", **labels(dialect)) == [getattr(totals, name)]
               for name in dialect.counters)


def phase_gauges(sc: Scenario) -> list[Gauges]:
    """Each phase's gauges."""
    return [gauges_at(sc, start + 1) for start, _ in sc.phase_bounds()]


def dedupe(values: list[float]) -> list[float]:
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def cumulative(t: Totals, key: str, bounds: tuple[float, ...]) -> list[float]:
    return [float(c) for _, c in rebucket(t.histograms[key], bounds)]


def window_counts(first: Totals, final: Totals, key: str, bounds: tuple[float, ...]
                  ) -> list[tuple[float, float]]:
    """The window's cumulative bucket counts at the engine's bounds, and +Inf."""
    end, start = cumulative(final, key, bounds), cumulative(first, key, bounds)
    return list(zip((*sorted(bounds), math.inf), (a - b for a, b in zip(end, start, strict=True)),
                    strict=True))


@pytest.mark.parametrize("name", sorted(DIALECTS))
def test_every_engine_follows_a_time_varying_load(name: str) -> None:
    dialect = DIALECTS[name]
    want = labels(dialect)
    sc = scenario()
    s, waiting, tick = run(dialect, sc)
    first, final = after_tick(sc, 1), after_tick(sc, tick)
    assert s, name

    # Counters: the engine's last values.
    for counter in sorted(dialect.counters):
        assert pick(s, E + counter + "_total", **want) == [getattr(final, counter)], counter
    # Gauges: the last phase's; the queue followed the phases in order.
    for gauge in sorted(dialect.gauges):
        assert pick(s, E + GAUGES[gauge], **want) == [getattr(gauges_at(sc, tick), gauge)]
    if "waiting" in dialect.gauges:
        assert dedupe(waiting) == dedupe([g.waiting for g in phase_gauges(sc)]), waiting
    for gauge in set(GAUGES) - dialect.gauges:
        assert not pick(s, E + GAUGES[gauge], **want), gauge
    for reason, value in dialect.finished(final).items():
        assert pick(s, E + "requests_finished_total", **want, reason=reason) == [value], reason

    # The window holds every poll from tick 1 on: rates times its span are the increase.
    (span,) = pick(s, E + "window_span_seconds", **want, window=WINDOW)
    assert span > 0
    for counter, rate in RATES.items():
        got = pick(s, E + rate, **want, window=WINDOW)
        if counter not in dialect.counters:
            assert not got, rate
            continue
        increase = getattr(final, counter) - getattr(first, counter)
        assert [g * span for g in got] == [pytest.approx(increase, rel=1e-9)], rate

    # Percentiles where the engine has histograms, at its bounds; means where it has
    # cumulative durations only; nothing else.
    for row in LATENCIES:
        key = row.key
        got = {pct: pick(s, E + "latency_seconds", **want, latency=key, window=WINDOW,
                         percentile=pct) for pct in ("50", "95", "99")}
        mean = pick(s, E + "latency_mean_seconds", **want, latency=key, window=WINDOW)
        if key in dialect.histograms:
            counts = window_counts(first, final, key, dialect.histograms[key])
            assert pick(s, E + "latency_window_observations", **want, latency=key,
                        window=WINDOW) == [counts[-1][1]], key
            for pct, value in got.items():
                assert value == [pytest.approx(histogram_quantile(int(pct) / 100, counts),
                                               rel=1e-9)], (key, pct)
        else:
            assert not any(got.values()), key
        expected_means = dialect.means(final.minus(first))
        if key in expected_means:
            assert mean == [pytest.approx(expected_means[key], rel=1e-9)], key
        else:
            assert mean == [], key


@pytest.mark.parametrize("name", sorted(DIALECTS))
def test_every_engine_restart_is_counted_and_read_afresh(name: str) -> None:
    dialect = DIALECTS[name]
    want = labels(dialect)
    sc = scenario(restarts=(9,))
    s, _, tick = run(dialect, sc)
    final = after_tick(sc, tick)
    assert pick(s, E + "restarts_total", **want) == [1.0]
    for counter in sorted(dialect.counters):
        assert pick(s, E + counter + "_total", **want) == [getattr(final, counter)], counter
    for rate in RATES.values():
        assert all(v >= 0 for v in pick(s, E + rate, **want)), rate

