"""The GPU <-> engine join as a pure function: typed facts in, joined series out."""

from __future__ import annotations

import pytest

from exporter.derive.attribution import (
    ENGINE_INFO,
    MEMORY_PRESSURE,
    TOKENS_PER_JOULE,
    TOKENS_PER_SECOND,
    attribute,
)
from exporter.derive.join import EngineFacts, GpuFacts
from exporter.exposition.lines import Families


def gpu(index: int, pids: set[int], watts: float | None = 500.0,
        used: float | None = 0.5) -> GpuFacts:
    return GpuFacts(f'gpu="{index}",uuid="GPU-{index}"', frozenset(pids), watts, used)


def values(out: Families, name: str) -> dict[str, float]:
    """Each line of family ``name`` by its labels."""
    found = {}
    for line in out.lines.get(name, []):
        labels, _, value = line.rpartition(" ")
        found[labels.removeprefix(name)] = float(value)
    return found


def test_a_tensor_parallel_engine_splits_its_rate_evenly_over_its_gpus() -> None:
    tp = EngineFacts("toy", "tp", frozenset({10, 11}), {"1m": 900.0}, {"1m": 0.0}, 0.4)
    single = EngineFacts("other", "one", frozenset({20}), {"1m": 100.0}, {"1m": 0.25}, 0.8)
    out = Families()
    attribute([tp, single], [gpu(0, {10}), gpu(1, {11}), gpu(2, {11}), gpu(3, {20})], "1m", out)
    tokens = values(out, TOKENS_PER_SECOND.name)
    assert tokens == {f'{{gpu="{i}",uuid="GPU-{i}",window="1m"}}': v
                      for i, v in ((0, 300.0), (1, 300.0), (2, 300.0), (3, 100.0))}
    assert values(out, TOKENS_PER_JOULE.name)['{gpu="3",uuid="GPU-3",window="1m"}'] == 0.2
    # The engine label is the adapter's kind, whatever the engine.
    info = values(out, ENGINE_INFO.name)
    assert '{gpu="0",uuid="GPU-0",engine="toy",endpoint="tp"}' in info
    assert '{gpu="3",uuid="GPU-3",engine="other",endpoint="one"}' in info
    assert len(info) == 4
    pressure = values(out, MEMORY_PRESSURE.name)
    assert pressure['{gpu="0",uuid="GPU-0"}'] == 0.4  # KV use, no preemption
    assert pressure['{gpu="3",uuid="GPU-3"}'] == 0.8  # the larger of KV use and preemptions


def test_two_engines_on_one_gpu_add_up_and_the_highest_pressure_wins() -> None:
    a = EngineFacts("toy", "a", frozenset({1}), {"5m": 10.0}, {"5m": 0.9}, 0.2)
    b = EngineFacts("toy", "b", frozenset({2}), {"5m": 30.0}, {"5m": 0.3}, None)
    out = Families()
    attribute([a, b], [gpu(0, {1, 2})], "5m", out)
    assert values(out, TOKENS_PER_SECOND.name) == {'{gpu="0",uuid="GPU-0",window="5m"}': 40.0}
    # Preemptions add up over the engines: 1.2/s saturates at 1.
    assert values(out, MEMORY_PRESSURE.name) == {'{gpu="0",uuid="GPU-0"}': 1.0}


def test_no_rate_over_the_window_means_no_gpu_rate_not_zero() -> None:
    warming = EngineFacts("toy", "a", frozenset({1}), {}, {}, 0.3)
    out = Families()
    attribute([warming], [gpu(0, {1})], "1m", out)
    assert TOKENS_PER_SECOND.name not in out.lines
    assert TOKENS_PER_JOULE.name not in out.lines
    assert values(out, MEMORY_PRESSURE.name) == {'{gpu="0",uuid="GPU-0"}': 0.3}


@pytest.mark.parametrize("watts", [None, 0.0])
def test_no_power_reading_means_no_tokens_per_joule(watts: float | None) -> None:
    e = EngineFacts("toy", "a", frozenset({1}), {"1m": 50.0}, {}, None)
    out = Families()
    attribute([e], [gpu(0, {1}, watts=watts)], "1m", out)
    assert values(out, TOKENS_PER_SECOND.name) == {'{gpu="0",uuid="GPU-0",window="1m"}': 50.0}
    assert TOKENS_PER_JOULE.name not in out.lines


def test_a_gpu_without_a_known_engine_reads_its_vram_use_and_remote_engines_join_nothing() -> None:
    remote = EngineFacts("toy", "far", frozenset(), {"1m": 99.0}, {}, 0.9)
    out = Families()
    attribute([remote], [gpu(0, {1}, used=0.75), gpu(1, set(), used=None)], "1m", out)
    assert ENGINE_INFO.name not in out.lines and TOKENS_PER_SECOND.name not in out.lines
    # GPU 1 has no memory reading: no made-up pressure.
    assert values(out, MEMORY_PRESSURE.name) == {'{gpu="0",uuid="GPU-0"}': 0.75}
