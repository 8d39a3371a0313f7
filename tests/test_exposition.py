"""The /metrics body: sources merged by family in the schema's order, one header per family,
a source that cannot be rendered left out and counted, the join fed only by serving sources."""

from __future__ import annotations

import time

from exporter.derive.join import NO_FACTS, EngineFacts, Facts, GpuFacts
from exporter.exposition.render import Renderer
from exporter.schema import SCHEMA
from exporter.snapshot import SnapshotStore, SourceState

E = "inference_node_engine_"
WAITING = E + "requests_waiting"
TOKENS = E + "generation_tokens_total"


def state(name: str, data: dict[str, str], up: bool = True, down_for: float = 0.0,
          facts: Facts = NO_FACTS, collector: str = "toy") -> SourceState:
    return SourceState(collector, name, up=up, data=data, health={}, facts=facts,
                       last_success_mono=time.monotonic() - down_for)


def body(*states: SourceState) -> str:
    store = SnapshotStore()
    for s in states:
        store.publish(s)
    return Renderer(store, lambda: 60.0, process_metrics=False).render().decode()


def test_families_merge_across_sources_with_one_header_in_schema_order() -> None:
    a = state("a", {TOKENS: f'{TOKENS}{{endpoint="a"}} 5.0\n',
                    WAITING: f'{WAITING}{{endpoint="a"}} 1.0\n'})
    b = state("b", {WAITING: f'{WAITING}{{endpoint="b"}} 2.0\n'})
    text = body(b, a)
    assert text.count(f"# TYPE {WAITING} gauge\n") == 1
    assert text.count(f"# HELP {WAITING} ") == 1
    block = text.split(f"# TYPE {WAITING} gauge\n", 1)[1]
    # Sources in a stable order (by key), each family's samples under its one header.
    assert block.startswith(f'{WAITING}{{endpoint="a"}} 1.0\n{WAITING}{{endpoint="b"}} 2.0\n')
    order = [s.name for s in SCHEMA]
    typed = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert typed == sorted(typed, key=order.index)


def test_a_source_with_an_unknown_family_is_left_out_and_counted() -> None:
    bad = state("bad", {"not_in_the_schema": "not_in_the_schema 1\n",
                        WAITING: f'{WAITING}{{endpoint="bad"}} 9.0\n'}, collector="broken")
    good = state("good", {WAITING: f'{WAITING}{{endpoint="good"}} 1.0\n'})
    text = body(bad, good)
    assert f'{WAITING}{{endpoint="good"}} 1.0' in text
    assert 'endpoint="bad"' not in text and "not_in_the_schema" not in text
    assert 'inference_node_exporter_render_errors_total{collector="broken"} 1.0' in text
    # Its own poll statistics are still served: it is a render failure, not a poll failure.
    assert 'inference_node_exporter_collector_up{collector="broken",source="bad"} 1.0' in text


def test_the_join_reads_only_sources_that_still_serve_data() -> None:
    gpus = Facts(gpus=(GpuFacts('gpu="0",uuid="G0"', frozenset({7}), 100.0, 0.25),))
    engine = Facts(engine=EngineFacts("toy", "e", frozenset({7}), {"1m": 50.0}, {}, 0.5))
    served = body(state("nvml", {}, facts=gpus, collector="gpu"), state("e", {}, facts=engine))
    assert ('inference_node_gpu_generation_tokens_per_second{gpu="0",uuid="G0",window="1m"}'
            ' 50.0') in served
    assert 'inference_node_gpu_memory_pressure_ratio{gpu="0",uuid="G0"} 0.5' in served
    # The engine down for longer than stale_after: the GPU reads its own VRAM use again.
    stale = body(state("nvml", {}, facts=gpus, collector="gpu"),
                 state("e", {}, up=False, down_for=120.0, facts=engine))
    assert "inference_node_gpu_engine_info" not in stale
    assert "inference_node_gpu_generation_tokens_per_second" not in stale
    assert 'inference_node_gpu_memory_pressure_ratio{gpu="0",uuid="G0"} 0.25' in stale
