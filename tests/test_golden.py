"""Golden end-to-end test: the real daemon against simulated vLLM servers of both naming
generations, one recorded exposition of each other engine served by a process of its own,
and a fixture procfs/sysfs tree; ``/metrics`` is diffed against a committed file and checked
by promtool.

Run with ``UPDATE_GOLDEN=1`` to rewrite the golden file after an intended change.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from tests.nvml_sim import Process, Scenario, build, h100
from tests.nvml_sim import env as nvml_env
from tests.support.harness import Daemon, SimProcess, pick, wait_for
from tests.support.promtool import promtool
from tests.vllm_sim import load_scenario, totals_after_tick

HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "metrics.txt"
SCENARIOS = HERE / "scenarios"
FIXTURES = HERE / "fixtures"
FAKE = HERE / "support" / "fake_engine.py"
# One recorded exposition of each engine beside vLLM: (kind, metrics file, extra arguments).
RECORDED = (
    ("sglang", "sglang/v0.5.23-after-load.txt", ()),
    ("llamacpp", "llamacpp/llamacpp-after-load.txt", ("--model", "tiny-llama")),
    ("triton", "triton/triton-after-load.txt", ()),
    ("trtllm", "trtllm/trtllm-after-load.txt",
     ("--route", f"/prometheus/metrics={FIXTURES / 'trtllm' / 'trtllm-after-load.txt'}")),
    ("tgi", "tgi/tgi-after-load.txt", ("--route", f"/info={FIXTURES / 'tgi' / 'info.json'}")),
    ("lmdeploy", "lmdeploy/lmdeploy-after-load.txt", ()),
)


@contextlib.contextmanager
def recorded_engines() -> Iterator[list[str]]:
    """Serve each recorded exposition from a process of its own; the daemon's flags."""
    procs, args = [], []
    try:
        for kind, body, extra in RECORDED:
            proc = subprocess.Popen([sys.executable, str(FAKE), "--port", "0", "--body",
                                     str(FIXTURES / body), *extra], stdout=subprocess.PIPE)
            procs.append(proc)
            assert proc.stdout is not None
            port = proc.stdout.readline().split()[-1].decode()
            path = "/prometheus/metrics" if kind == "trtllm" else "/metrics"
            args += [f"--{kind}.endpoint", f"{kind}=http://127.0.0.1:{port}{path}"]
        yield args
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)

# Families whose values depend on wall-clock time or timing; their lines stay, values go.
MASKED = re.compile(
    r"^(inference_node_engine_\w+_per_second|\w+_timestamp_seconds"
    r"|inference_node_engine_window_span_seconds"
    r"|inference_node_exporter_collector_(poll_duration_seconds|polls_total|response_bytes"
    r"|parser_cache_bytes)"
    r"|inference_node_exporter_nvml_calls_total"
    r"|inference_node_engine_process_(cpu_seconds_total|resident_memory_bytes)"
    r"|inference_node_gpu_(generation_tokens_per_(second|joule)|memory_pressure_ratio))\b")


def _name(line: str) -> str:
    """The metric name a line is about (its sample name, or the name in HELP/TYPE)."""
    parts = line.split(" ", 3)
    return parts[2] if line.startswith("# ") and len(parts) > 2 else parts[0].split("{")[0]


def normalise(text: str) -> str:
    """Drop the process collector's lines and mask what changes from run to run."""
    out = []
    for line in text.splitlines():
        if _name(line).startswith("process_"):
            continue
        if MASKED.match(line):
            line = line.rsplit(" ", 1)[0] + " <masked>"
        line = re.sub(r'python_version="[^"]*"', 'python_version="<masked>"', line)
        out.append(line)
    return "\n".join(out) + "\n"


def test_golden_metrics(tmp_path: Path) -> None:
    steady = load_scenario(SCENARIOS / "steady_v1.json")
    legacy = load_scenario(SCENARIOS / "legacy_restart.json")
    # The simulators run in processes of their own: the GPUs list those as engine processes.
    with SimProcess(SCENARIOS / "steady_v1.json") as v1, \
            SimProcess(SCENARIOS / "legacy_restart.json") as old, \
            recorded_engines() as recorded:
        host = HERE / "fixtures" / "host" / "kvm-steal"
        args = ["--poll.interval", "500ms", "--poll.timeout", "500ms",
                "--path.procfs", str(host / "proc"), "--path.sysfs", str(host / "sys"),
                "--gpu.expected-count", "8",
                "--vllm.endpoint", f"current={v1.metrics_url}",
                "--vllm.endpoint", f"legacy={old.metrics_url}", *recorded]
        lib_dir = build(tmp_path / "nvml")
        # An 8-GPU H100 node: the current-naming engine tensor-parallel over GPUs 0-3, the
        # older one on GPU 4, GPUs 5-7 idle.
        gpus = [replace(h100(i), processes=[Process(pid=v1.pid if i < 4 else old.pid)])
                if i < 5 else h100(i) for i in range(8)]
        node = Scenario(gpus=gpus).write(tmp_path / "gpus.txt")
        with Daemon(tmp_path, args, env=nvml_env(lib_dir, node)) as daemon:
            final_v1 = totals_after_tick(steady, int(steady.total_duration))
            final_old = totals_after_tick(legacy, int(legacy.total_duration), legacy.restarts)

            def finished() -> bool:
                s = daemon.series()
                v1_done = pick(s, "inference_node_engine_generation_tokens_total",
                               endpoint="current") == [final_v1.generation_tokens] * 2
                old_done = pick(s, "inference_node_engine_generation_tokens_total",
                                endpoint="legacy") == [final_old.generation_tokens]
                gpus_done = pick(s, "inference_node_gpus") == [8.0]
                others_done = all(
                    pick(s, "inference_node_engine_up", endpoint=kind) == [1.0]
                    and pick(s, "inference_node_engine_restarts_total", endpoint=kind)
                    for kind, _, _ in RECORDED)
                return v1_done and old_done and gpus_done and others_done

            wait_for("both scenarios to be played to the end", finished, timeout=60)
            text = daemon.metrics()

    check = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), \
        check.stdout + check.stderr

    got = normalise(text)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(got)
    assert GOLDEN.exists(), "no golden file yet: run with UPDATE_GOLDEN=1"
    assert got == GOLDEN.read_text(), "metrics differ from tests/golden/metrics.txt"
