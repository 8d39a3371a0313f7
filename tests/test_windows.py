"""Sliding windows over counters and histograms: resets, restarts, window starts."""

from __future__ import annotations

import pytest

from exporter.derive.windows import CumulativeWindow


def test_rate_over_the_last_interval_and_a_window() -> None:
    w = CumulativeWindow(horizon=60)
    for t, v in [(0, 100), (5, 150), (10, 250), (15, 300)]:
        w.add(t, (v,))
    assert w.last_delta() == (5, (50.0,))
    assert w.delta(10) == (10, (150.0,))
    # A window longer than the history covers what there is.
    assert w.delta(60) == (15, (200.0,))


def test_counter_reset_counts_from_zero_never_negative() -> None:
    w = CumulativeWindow(horizon=60)
    assert not w.add(0, (1000,))
    assert not w.add(5, (1100,))
    assert w.add(10, (30,))  # engine restarted and counted 30 since
    assert w.last_delta() == (5, (30.0,))
    assert w.delta(60) == (10, (130.0,))
    w.add(15, (90,))
    assert w.last_delta() == (5, (60.0,))


def test_restart_flag_counts_the_new_value_even_when_it_is_higher() -> None:
    w = CumulativeWindow(horizon=60)
    w.add(0, (100,))
    assert w.add(5, (400,), restarted=True)
    assert w.last_delta() == (5, (400.0,))


def test_histogram_vectors_and_layout_change() -> None:
    w = CumulativeWindow(horizon=60)
    w.add(0, (1, 2, 3))
    w.add(5, (2, 4, 9))
    assert w.last_delta() == (5, (1.0, 2.0, 6.0))
    w.add(10, (1, 1))  # a new bucket layout starts afresh
    assert len(w) == 1
    assert w.last_delta() is None and w.delta(60) is None
    assert not w.add(15, (3, 4))  # counted from the new layout's first reading, not a reset
    # Nothing of the old layout is left: the window reaches back to t=10 only.
    assert w.last_delta() == (5, (2.0, 3.0))
    assert w.delta(60) == (5, (2.0, 3.0))


def test_window_start_is_the_newest_reading_at_least_that_old() -> None:
    w = CumulativeWindow(horizon=100)
    for t in range(0, 50, 5):
        w.add(t, (t * 2,))
    span, (inc,) = w.delta(12)  # type: ignore[misc]
    assert span == 15 and inc == 30  # from t=30 (15 s old), not t=35 (10 s old)


def test_history_is_trimmed_to_the_horizon() -> None:
    w = CumulativeWindow(horizon=10)
    for t in range(100):
        w.add(t, (t,))
    assert len(w) == 11  # t = 89..99: the newest 10 s plus the reading at 89
    assert w.delta(10) == (10, (10.0,))
    # Nothing older than t=89 is held: any longer window starts there.
    assert w.delta(11) == (10, (10.0,))
    assert w.delta(1000) == (10, (10.0,))
    assert w.delta(9) == (9, (9.0,))


def test_out_of_order_readings_are_ignored() -> None:
    w = CumulativeWindow(horizon=10)
    w.add(5, (10,))
    assert not w.add(5, (20,))
    assert not w.add(4, (30,))
    assert len(w) == 1
    # The held reading is still the first one: the next delta counts from 10, not 20 or 30.
    assert not w.add(6, (40,))
    assert w.last_delta() == (1, (30.0,))
    assert w.delta(10) == (1, (30.0,))


def test_horizon_must_be_positive() -> None:
    for horizon in (0, -1):
        with pytest.raises(ValueError, match="horizon must be positive"):
            CumulativeWindow(horizon)


def test_with_slack_a_window_never_reaches_across_a_gap() -> None:
    w = CumulativeWindow(horizon=100)
    for t in (0, 5, 10, 15, 20):
        w.add(t, (t * 10,))
    # An outage from 20 s to 52 s: the next reading comes at 52 s.
    w.add(52, (520,))
    assert w.delta(30) == (32, (320.0,))  # the old rule reaches back to 20 s: 32 s, not 30
    span, (inc,) = w.delta(30, slack=2.5)  # type: ignore[misc]
    assert span <= 32.5 and (span, inc) == (32, 320.0)
    w.add(57, (570,))
    # Now 30 s back is 27 s: nothing between 24.5 s and 52 s, so the window starts at 52 s.
    assert w.delta(30, slack=2.5) == (5, (50.0,))
    # Regular readings: the one at the window's start is taken, a little late or early.
    w2 = CumulativeWindow(horizon=100)
    for t in (0.0, 5.01, 9.99, 15.0, 20.0):
        w2.add(t, (t,))
    assert w2.delta(10, slack=2.5) == (10.01, (pytest.approx(10.01),))
    assert w2.delta(20, slack=2.5) == (20.0, (20.0,))
    assert w2.delta(30, slack=2.5) == (20.0, (20.0,))  # start-up: shorter than the window


def test_with_slack_there_is_no_delta_without_an_earlier_reading_in_reach() -> None:
    w = CumulativeWindow(horizon=100)
    w.add(0, (1,))
    w.add(50, (2,))
    assert w.delta(10, slack=2.5) is None


def test_reshape_keeps_the_kept_components_history_and_starts_new_ones_flat() -> None:
    w = CumulativeWindow(horizon=60)
    w.add(0, (10, 100))
    w.add(5, (20, 150))
    # A series appears between the two (index 1 of the new layout) and the first one goes.
    w.reshape([1, None, 0], (170, 3, 25))
    assert not w.add(10, (170, 3, 25))
    assert w.delta(60) == (10, (70.0, 0.0, 15.0))
    w.add(15, (180, 7, 30))
    assert w.delta(60) == (15, (80.0, 4.0, 20.0))
    assert w.last_delta() == (5, (10.0, 4.0, 5.0))
