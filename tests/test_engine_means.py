"""What the seam derives for engines without histograms or with lumpy counters: windowed
means from cumulative durations (never a percentile), and token rates of engines that count
at request end, left out where they would read zero while requests run."""

from __future__ import annotations

import pytest

from exporter.derive.engine_state import LATENCY_MEAN, EngineState
from exporter.engines.reading import EngineReading
from exporter.exposition.lines import Families

LABELS = 'engine="x",endpoint="e",model="m",dp_rank="0"'


def reading(*, seconds: float | None = None, requests: float | None = None,
            tokens: float | None = None, running: float = 0.0) -> EngineReading:
    r = EngineReading("m", "0")
    r.gauges["requests_running"] = running
    if seconds is not None and requests is not None:
        r.durations["e2e_request_latency"] = (seconds, requests)
    if tokens is not None:
        r.counters["generation_tokens"] = tokens
    return r


def render(state: EngineState, t: float, r: EngineReading) -> dict[str, float]:
    """The series of one update, by their labels' tail after the engine's."""
    out = Families()
    state.render(out, LABELS, state.update(t, r))
    found = {}
    for lines in out.lines.values():
        for line in lines:
            key, _, value = line.rpartition(" ")
            found[key.replace(LABELS, "").replace("{,", "{")] = float(value)
    return found


def test_the_mean_of_a_window_is_its_seconds_over_its_count() -> None:
    state = EngineState((10.0,), (0.5,), 1.0)
    assert not [k for k in render(state, 0.0, reading(seconds=0.0, requests=0.0))
                if k.startswith(LATENCY_MEAN.name)]
    # Four requests took 6 s together in the first 4 s, then two more took 1 s.
    series = {}
    for t, s, n in ((1.0, 2.0, 1.0), (2.0, 3.0, 2.0), (4.0, 6.0, 4.0), (6.0, 7.0, 6.0)):
        series = render(state, t, reading(seconds=s, requests=n))
    mean = f'{LATENCY_MEAN.name}{{latency="e2e",window="10s"}}'
    assert series[mean] == pytest.approx(7.0 / 6.0)
    # No percentile is made from a mean.
    assert not [k for k in series if k.startswith("inference_node_engine_latency_seconds")]


def test_a_window_without_an_observation_has_no_mean() -> None:
    state = EngineState((2.0,), (0.5,), 1.0)
    for t in (0.0, 1.0, 2.0, 3.0):
        series = render(state, t, reading(seconds=5.0, requests=3.0))
    assert not [k for k in series if k.startswith(LATENCY_MEAN.name)]


def test_durations_going_back_are_a_restart() -> None:
    state = EngineState((60.0,), (0.5,), 1.0)
    render(state, 0.0, reading(seconds=100.0, requests=50.0))
    render(state, 1.0, reading(seconds=101.0, requests=51.0))
    series = render(state, 2.0, reading(seconds=0.5, requests=1.0))
    assert series["inference_node_engine_restarts_total{}"] == 1.0
    # The restart's own first request counts, not a negative delta.
    assert series[f'{LATENCY_MEAN.name}{{latency="e2e",window="1m"}}'] == \
        pytest.approx((1.0 + 0.5) / 2.0)


def rates(state: EngineState, t: float, tokens: float, running: float) -> dict[str, float]:
    return state.update(t, reading(tokens=tokens, running=running)).rates["generation_tokens"]


def test_counters_moved_at_request_end_have_no_poll_rate() -> None:
    lumpy = EngineState((10.0,), (0.5,), 1.0, frozenset({"generation_tokens"}))
    steady = EngineState((10.0,), (0.5,), 1.0)
    for t, tokens in ((0.0, 0.0), (1.0, 400.0)):
        found_lumpy = rates(lumpy, t, tokens, running=2.0)
        found_steady = rates(steady, t, tokens, running=2.0)
    # 400 tokens of a request that ended say nothing of the last second's pace.
    assert "poll" not in found_lumpy and found_lumpy["10s"] == pytest.approx(400.0)
    assert found_steady["poll"] == pytest.approx(400.0)


def test_no_request_end_while_busy_is_not_zero_tokens_per_second() -> None:
    state = EngineState((3.0,), (0.5,), 1.0, frozenset({"generation_tokens"}))
    for t in (0.0, 1.0, 2.0, 3.0):
        found = rates(state, t, 400.0, running=4.0)
    assert found == {}
    # Idle with nothing finished: zero is the truth.
    found = rates(state, 4.0, 400.0, running=0.0)
    assert found == {"3s": 0.0}
    # A request ends: its tokens over the window.
    found = rates(state, 5.0, 800.0, running=3.0)
    assert found["3s"] == pytest.approx(400.0 / 3.0)


def test_a_reading_may_say_which_of_its_counters_move_at_request_end() -> None:
    """An engine version read through its live counter gets its poll rate back."""
    state = EngineState((10.0,), (0.5,), 1.0, frozenset({"generation_tokens"}))
    for t, tokens in ((0.0, 0.0), (1.0, 50.0)):
        r = reading(tokens=tokens, running=2.0)
        r.at_request_end = frozenset()
        found = state.update(t, r).rates["generation_tokens"]
    assert found["poll"] == pytest.approx(50.0)


def test_a_series_that_appears_leaves_the_others_windows_whole() -> None:
    # SGLang, TGI and prometheus_client create some series at their first event (the first
    # retraction, the first failure): the other series' windows must not start afresh.
    state = EngineState((60.0,), (0.5,), 1.0)
    for t in (0.0, 1.0, 2.0):
        render(state, t, reading(tokens=100.0 * t, seconds=t, requests=t))
    late = reading(tokens=300.0, seconds=3.0, requests=3.0)
    late.counters["preemptions"] = 2.0
    series = render(state, 3.0, late)
    assert series['inference_node_engine_window_span_seconds{window="1m"}'] == 3.0
    assert series['inference_node_engine_generation_tokens_per_second{window="1m"}'] == 100.0
    assert series[f'{LATENCY_MEAN.name}{{latency="e2e",window="1m"}}'] == 1.0
    # The new one starts from its first value: what it counted before it was seen is
    # unknown, not a burst over the window.
    assert series['inference_node_engine_preemptions_per_second{window="1m"}'] == 0.0
    later = reading(tokens=400.0, seconds=4.0, requests=4.0)
    later.counters["preemptions"] = 5.0
    series = render(state, 4.0, later)
    assert series['inference_node_engine_preemptions_per_second{window="1m"}'] == 3.0 / 4.0
    assert series['inference_node_engine_generation_tokens_per_second{window="1m"}'] == 100.0
