"""What a down source still serves: its last state for ``stale_after``, never a rate or a
percentile, which would describe a present it can no longer vouch for."""

from __future__ import annotations

import time

from exporter.exposition.render import Renderer
from exporter.schema import LIVE
from exporter.snapshot import SnapshotStore, SourceState

E = "inference_node_engine_"
DATA = {
    E + "requests_waiting": E + 'requests_waiting{endpoint="a"} 3.0\n',
    E + "generation_tokens_total": E + 'generation_tokens_total{endpoint="a"} 900.0\n',
    E + "generation_tokens_per_second": E + 'generation_tokens_per_second{endpoint="a",'
                                            'window="1m"} 138.8\n',
    E + "latency_seconds": E + 'latency_seconds{endpoint="a",latency="ttft",window="1m",'
                               'percentile="99"} 0.25\n',
    E + "window_span_seconds": E + 'window_span_seconds{endpoint="a",window="1m"} 60.0\n',
}


def render(up: bool, down_for: float) -> str:
    store = SnapshotStore()
    store.publish(SourceState("vllm", "a", up=up, data=DATA, health={},
                              last_success_mono=time.monotonic() - down_for))
    return Renderer(store, lambda: 60.0, process_metrics=False).render().decode()


def test_an_up_source_serves_everything() -> None:
    text = render(up=True, down_for=0.0)
    assert all(line in text for line in DATA.values())


def test_a_down_source_serves_its_last_state_but_no_rate_or_percentile() -> None:
    text = render(up=False, down_for=5.0)
    assert DATA[E + "requests_waiting"] in text
    assert DATA[E + "generation_tokens_total"] in text
    for name in (E + "generation_tokens_per_second", E + "latency_seconds",
                 E + "window_span_seconds"):
        assert name in LIVE
        assert name not in text


def test_a_source_down_longer_than_stale_after_serves_none_of_it() -> None:
    text = render(up=False, down_for=61.0)
    assert E + "requests_waiting" not in text
    assert E + "generation_tokens_total" not in text
