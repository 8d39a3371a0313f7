"""The poll loop's schedule: a fixed cadence that keeps its phase, backoff only for what is
expensive, and rates never computed over a sliver of an interval."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace

import pytest

from exporter.collectors.base import PollOutput, SourceError
from exporter.config import Config
from exporter.derive.engine_state import EngineState, Figures
from exporter.engines.reading import EngineReading
from exporter.exposition.lines import Families
from exporter.fetch import FetchError
from exporter.snapshot import SnapshotStore
from exporter.worker import PollWorker, next_due


def test_a_late_poll_skips_the_missed_ticks_and_keeps_the_phase() -> None:
    assert next_due(10.0, 9.0, 5.0) == 10.0  # on time: the tick as planned
    assert next_due(10.0, 10.0, 5.0) == 15.0  # due right now: the next tick, not at once
    assert next_due(10.0, 23.2, 5.0) == 25.0  # a 13 s stall: ticks 15 and 20 are skipped
    assert next_due(10.0, 10.001, 5.0) == 15.0


class Scripted:
    """A source whose polls fail with the scripted reasons, then succeed."""

    collector = "test"
    name = "scripted"
    target = "scripted"

    def __init__(self, reasons: list[str], stall: float = 0.0) -> None:
        self.reasons = reasons
        self.stall = stall
        self.starts: list[float] = []

    def poll(self) -> PollOutput:
        self.starts.append(time.monotonic())
        if len(self.starts) == 2 and self.stall:
            time.sleep(self.stall)  # the stall under test
        if self.reasons:
            reason = self.reasons.pop(0)
            raise FetchError(reason, reason) if reason != "no_engine_metrics" else \
                SourceError(reason, reason)
        return PollOutput(Families())

    def health(self, up: bool, last_success: float | None, families: Families) -> None:
        pass

    def close(self) -> None:
        pass


def worker(source: Scripted, **settings: float) -> PollWorker:
    cfg = replace(Config(), poll_interval=1.0, max_backoff=8.0, **settings)
    return PollWorker(source, cfg, SnapshotStore())


@pytest.mark.parametrize("reason", ["refused", "connection", "http_status", "truncated",
                                    "not_text", "no_engine_metrics"])
def test_cheap_failures_are_retried_every_interval(reason: str) -> None:
    w = worker(Scripted([reason] * 5))
    delays = []
    for _ in range(5):
        w.poll_once()
        delays.append(w.next_delay())
    assert delays == [1.0] * 5


def test_expensive_failures_back_off_up_to_the_limit_and_a_cheap_one_ends_it() -> None:
    w = worker(Scripted(["timeout"] * 6 + ["refused"]))
    delays = []
    for _ in range(7):
        w.poll_once()
        delays.append(w.next_delay())
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 1.0]
    w2 = worker(Scripted(["too_large"] * 2000))
    for _ in range(2000):  # no overflow however long it fails
        w2.poll_once()
    assert w2.next_delay() == 8.0


def test_after_a_stall_the_loop_does_not_poll_twice_in_a_row() -> None:
    source = Scripted([], stall=0.5)
    cfg = replace(Config(), poll_interval=0.2, poll_timeout=0.2, max_backoff=1.0)
    w = PollWorker(source, cfg, SnapshotStore())
    w.start()
    done = threading.Event()
    deadline = time.monotonic() + 10
    while len(source.starts) < 6 and time.monotonic() < deadline:
        done.wait(0.05)
    w.stop()
    w.join(2)
    starts = source.starts
    assert len(starts) >= 6
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # The second poll stalled 0.5 s (2.5 intervals): the next starts on the cadence, at the
    # third tick after it, never a few milliseconds after the stalled one returned.
    assert min(gaps) > 0.1, gaps
    phases = [(t - starts[0]) / 0.2 for t in starts]
    assert all(abs(p - round(p)) < 0.25 for p in phases), phases


def reading(tokens: float) -> EngineReading:
    return EngineReading("m", "0", counters={"generation_tokens": tokens})


def rates(state: EngineState, figures: Figures) -> dict[str, float]:
    out = Families()
    state.render(out, 'engine="vllm"', figures)
    found = {}
    for line in out.lines.get("inference_node_engine_generation_tokens_per_second", []):
        window = line.split('window="')[1].split('"')[0]
        found[window] = float(line.rsplit(" ", 1)[1])
    return found


def test_no_rate_over_less_than_half_an_interval() -> None:
    state = EngineState((10.0,), (0.5,), interval=1.0)
    f = state.update(0.0, reading(0))
    f = state.update(1.0, reading(100))
    assert rates(state, f) == {"poll": 100.0, "10s": 100.0}
    f = state.update(1.005, reading(101))  # two polls 5 ms apart: no "poll" rate over them
    assert "poll" not in rates(state, f)
    f = state.update(3.0, reading(300.5))  # one tick missed: over the 2 s since the last poll
    assert rates(state, f)["poll"] == pytest.approx(100.0)
    f = state.update(3.004, reading(301))  # and never over 4 ms
    assert "poll" not in rates(state, f)


def test_a_window_never_covers_more_than_its_label_after_a_gap() -> None:
    state = EngineState((10.0,), (0.5,), interval=1.0)
    for t in range(6):
        f = state.update(float(t), reading(100.0 * t))
    f = state.update(30.0, reading(1500))  # back after a 25 s gap, at 50 tokens/s in between
    f = state.update(31.0, reading(1600))
    out = Families()
    state.render(out, 'engine="vllm"', f)
    spans = {line.split('window="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
             for line in out.lines["inference_node_engine_window_span_seconds"]}
    # The 10 s window reaches back to 30 s only: it covers 1 s, and says so.
    assert spans == {"poll": 1.0, "10s": 1.0}
    assert rates(state, f) == {"poll": 100.0, "10s": 100.0}
