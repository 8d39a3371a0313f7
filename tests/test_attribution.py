"""Engines joined to GPUs: the real daemon, two simulated vLLM servers in processes of their
own, and the simulated NVML listing those processes on the GPUs they use."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from exporter.derive.attribution import pressure
from tests.nvml_sim import Process, Scenario, build, env, h100
from tests.support.harness import Daemon, Series, SimProcess, pick, wait_for

G = "inference_node_gpu_"
E = "inference_node_engine_"


def engine_scenario(path: Path, tokens: int, kv: float, preemptions: float) -> Path:
    path.write_text(json.dumps({
        "naming": "v1", "clock": "realtime", "engines": [{"model": "m", "dp_rank": "0"}],
        "phases": [{"duration": 600, "generation_tokens_per_s": tokens,
                    "prompt_tokens_per_s": tokens // 4, "preemptions_per_s": preemptions,
                    "kv_cache_usage": kv, "running": 8}]}))
    return path


def test_tokens_per_gpu_per_joule_and_memory_pressure(tmp_path: Path) -> None:
    a_file = engine_scenario(tmp_path / "a.json", 2000, kv=0.35, preemptions=0.5)
    b_file = engine_scenario(tmp_path / "b.json", 600, kv=0.9, preemptions=0.0)
    with SimProcess(a_file) as a, SimProcess(b_file) as b:
        gpus = [h100(i) for i in range(8)]
        for i in range(4):  # engine a: tensor parallel over GPUs 0-3
            gpus[i] = replace(gpus[i], processes=[Process(pid=a.pid, used=70_000_000_000)])
        gpus[4] = replace(gpus[4], processes=[Process(pid=b.pid, used=70_000_000_000)])
        scenario = Scenario(gpus=gpus).write(tmp_path / "gpus.txt")
        lib_dir = build(tmp_path / "nvml")
        args = ["--poll.interval", "250ms", "--poll.timeout", "250ms", "--derive.windows", "2s",
                "--vllm.endpoint", f"a={a.metrics_url}", "--vllm.endpoint", f"b={b.metrics_url}"]
        with Daemon(tmp_path, args, env=env(lib_dir, scenario)) as d:

            def joined() -> Series | None:
                # Over the whole 2 s window (to within half an interval): a rate over the
                # first polls' sliver of it would carry their timing jitter several-fold.
                s = d.series()
                spans = pick(s, E + "window_span_seconds", window="2s")
                full = len(spans) == 2 and min(spans) >= 1.75
                return s if full and len(pick(s, G + "generation_tokens_per_second")) == 5 \
                    else None

            s = wait_for("tokens attributed to five GPUs over a full window", joined,
                         timeout=30)

    for i in range(4):
        assert pick(s, G + "engine_info", gpu=str(i), endpoint="a") == [1.0]
    assert pick(s, G + "engine_info", gpu="4", endpoint="b") == [1.0]
    assert pick(s, G + "engine_info", gpu="5") == []
    rate_a = pick(s, E + "generation_tokens_per_second", endpoint="a", window="2s")[0]
    rate_b = pick(s, E + "generation_tokens_per_second", endpoint="b", window="2s")[0]
    assert rate_a == pytest.approx(2000, rel=0.05)
    for i in range(4):
        per_gpu = pick(s, G + "generation_tokens_per_second", gpu=str(i), window="2s")
        assert per_gpu == [pytest.approx(rate_a / 4)]
        watts = pick(s, G + "power_watts", gpu=str(i))[0]
        assert pick(s, G + "generation_tokens_per_joule", gpu=str(i)) == [
            pytest.approx(rate_a / 4 / watts)]
    assert pick(s, G + "generation_tokens_per_second", gpu="4") == [pytest.approx(rate_b)]
    # Memory pressure: KV-cache use and preemptions of the engines on the GPU ...
    pre_a = pick(s, E + "preemptions_per_second", endpoint="a", window="2s")[0]
    assert pick(s, G + "memory_pressure_ratio", gpu="0") == [pytest.approx(
        pressure(0.35, pre_a))]
    assert pick(s, G + "memory_pressure_ratio", gpu="0")[0] >= 0.4  # preemptions dominate
    assert pick(s, G + "memory_pressure_ratio", gpu="4") == [pytest.approx(0.9)]
    # ... and VRAM use only where no engine is known.
    assert pick(s, G + "memory_pressure_ratio", gpu="6") == [
        pytest.approx((79_000_000_000 + 6) / 85_520_809_984)]
    # The engines' own processes, found from their endpoints.
    for name in ("a", "b"):
        assert pick(s, E + "processes", endpoint=name) == [1.0]
        assert pick(s, E + "process_resident_memory_bytes", endpoint=name)[0] > 10e6
        assert pick(s, E + "process_cpu_seconds_total", endpoint=name)[0] > 0


def test_memory_pressure_formula() -> None:
    assert pressure(0.3, 0.0) == 0.3
    assert pressure(0.3, 0.6) == 0.6
    assert pressure(0.95, 0.1) == 0.95
    assert pressure(None, 5.0) == 1.0
    assert pressure(None, None) is None
