"""The gpu collector through its ``nvml=`` seam: ``NvmlSource`` with the real nvidia-ml-py
bindings against the simulated NVML (tests/nvml_sim), and an ``Nvml`` subclass that turns
chosen answers into NVML errors.

pynvml binds to the first ``libnvidia-ml.so.1`` it loads and keeps it, so the polls run in a
child process (this module run with ``python -m``); the child prints what each poll
exported, counted and handed to the join, and the tests here read that.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from exporter.collectors import gpu_readings
from exporter.collectors.gpu import Nvml, NvmlSource
from exporter.collectors.gpu_readings import READINGS, STATIC
from exporter.cost import Pricing
from exporter.schema import SCHEMA
from tests.nvml_sim import Process, Scenario, build, env, h100
from tests.support.harness import Series, parse_series, pick

ROOT = Path(__file__).resolve().parents[1]
MARK = "GPU_SEAM_RESULT="
G = "inference_node_gpu_"
ERRORS = "inference_node_exporter_nvml_errors_total"
UUID = "GPU-4f1c2a7e-0000-4000-8000-00000000000{}"


# -- the fault-injecting seam (used in the child) -----------------------------------------------

@dataclass(frozen=True)
class Fault:
    """Answer ``call`` on GPU ``gpu`` with the NVML error ``code`` from poll ``from_poll`` on
    (1 is the first; NVML is initialised in it), up to poll ``until_poll`` if given.
    ``call="*"`` is every call on that GPU; ``args`` (the arguments after the handle, as
    pynvml values) narrows it to one reading."""

    call: str
    gpu: int
    code: str
    from_poll: int = 1
    args: tuple[Any, ...] | None = None
    until_poll: int | None = None


class FaultyNvml(Nvml):
    """The real seam; the call is made (and counted), then a fault may replace its answer."""

    def __init__(self, faults: Sequence[Fault]) -> None:
        super().__init__()
        self.faults = faults
        self.poll = 0
        self.gpu_of: dict[int | None, int] = {}
        self.sequence: list[tuple[str, int | None]] = []
        """The poll's counted calls: (function, GPU index or None)."""

    def call(self, name: str, *args: Any, count: bool = True) -> Any:
        answer = super().call(name, *args, count=count)
        if name == "nvmlDeviceGetHandleByIndex":
            self.gpu_of[ctypes.cast(answer, ctypes.c_void_p).value] = args[0]
        index = self.gpu_of.get(ctypes.cast(args[0], ctypes.c_void_p).value) \
            if args and name.startswith("nvmlDevice") and name != "nvmlDeviceGetHandleByIndex" \
            else None
        if count:
            self.sequence.append((name, index))
        for f in self.faults:
            if f.gpu == index and f.call in ("*", name) and self.poll >= f.from_poll and (
                    f.until_poll is None or self.poll <= f.until_poll) and (
                    f.args is None or tuple(f.args) == tuple(args[1:])):
                raise self.lib.NVMLError(getattr(self.lib, f.code))
        return answer


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Poll an NvmlSource ``spec["polls"]`` times; what each poll gave."""
    faults = [Fault(**{**f, "args": tuple(f["args"]) if f.get("args") else None})
              for f in spec.get("faults", ())]
    nvml = FaultyNvml(faults)
    source = NvmlSource(timeout=10.0, expected=spec.get("expected"), nvml=lambda: nvml,
                        pricing=Pricing(spec.get("price")))
    polls = []
    try:
        for i in range(1, spec["polls"] + 1):
            nvml.poll, nvml.sequence = i, []
            out = source.poll()
            deadline = time.monotonic() + 10
            while i == spec["polls"] and spec.get("until") and \
                    spec["until"] not in out.families.lines and time.monotonic() < deadline:
                time.sleep(0.05)  # the XID watcher counts events in a thread of its own
                nvml.sequence = []
                out = source.poll()
            polls.append({
                "lines": out.families.lines, "calls": nvml.calls, "errors": dict(nvml.errors),
                "sequence": nvml.sequence,
                "facts": [{**dataclasses.asdict(f), "pids": sorted(f.pids)}
                          for f in out.facts.gpus]})
    finally:
        source.close()
    return {"polls": polls}


# -- the parent's side --------------------------------------------------------------------------

@dataclass
class Poll:
    lines: dict[str, list[str]]
    calls: int
    errors: dict[str, int]
    sequence: list[tuple[str, int | None]]
    facts: list[dict[str, Any]]

    @property
    def series(self) -> Series:
        return parse_series("".join(line + "\n" for ls in self.lines.values() for line in ls))

    def on(self, index: int) -> list[str]:
        """The functions called on GPU ``index`` in this poll, in order."""
        return [name for name, i in self.sequence if i == index]


@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("nvml-sim"))


def run_polls(lib_dir: Path, tmp_path: Path, scenario: Scenario, polls: int = 2,
              faults: Sequence[Fault] = (), **spec: Any) -> list[Poll]:
    path = scenario.write(tmp_path / "scenario.txt")
    environ = env(lib_dir, path)
    environ["PYTHONPATH"] = str(ROOT)
    arg = json.dumps({"polls": polls, "faults": [dataclasses.asdict(f) for f in faults],
                      **spec})
    proc = subprocess.run([sys.executable, "-m", "tests.test_gpu_seam", arg], env=environ,
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    result = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    assert len(result) == 1, proc.stdout + proc.stderr
    return [Poll(p["lines"], p["calls"], p["errors"], [tuple(c) for c in p["sequence"]],
                 p["facts"])
            for p in json.loads(result[0][len(MARK):])["polls"]]


def g(index: int) -> dict[str, str]:
    return {"gpu": str(index), "uuid": UUID.format(index)}


# The calls of one poll on one GPU that supports everything, in the table's order.
ONE_GPU = [
    "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetTemperature",
    "nvmlDeviceGetClockInfo", "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetRemappedRows", "nvmlDeviceGetPcieThroughput", "nvmlDeviceGetPcieThroughput",
    "nvmlDeviceGetCurrPcieLinkGeneration", "nvmlDeviceGetCurrPcieLinkWidth",
    "nvmlDeviceGetRetiredPages", "nvmlDeviceGetRetiredPages",
    "nvmlDeviceGetRetiredPagesPendingStatus", "nvmlDeviceGetFieldValues",
    "nvmlDeviceGetComputeRunningProcesses",
]
# The readings asked once, when NVML is initialised.
MAXIMA = ["nvmlDeviceGetMaxPcieLinkGeneration", "nvmlDeviceGetMaxPcieLinkWidth"]


# -- faults through the seam ---------------------------------------------------------------------

def test_an_unexpected_error_on_one_reading_is_counted_and_the_rest_exported(
        tmp_path: Path, lib_dir: Path) -> None:
    faults = [Fault("nvmlDeviceGetTemperature", gpu=1, code="NVML_ERROR_UNKNOWN")]
    first, second = run_polls(lib_dir, tmp_path, Scenario(gpus=[h100(i) for i in range(3)]),
                              faults=faults)
    for poll, count in ((first, 1.0), (second, 2.0)):
        s = poll.series
        assert pick(s, G + "temperature_celsius", **g(1)) == []
        assert pick(s, G + "temperature_celsius", **g(0)) == [60.0]
        assert pick(s, G + "temperature_celsius", **g(2)) == [62.0]
        # Everything else of GPU 1 is there, with its own values.
        assert pick(s, G + "power_watts", **g(1)) == [601.0]
        assert pick(s, G + "memory_used_bytes", **g(1)) == [79_000_000_001.0]
        assert pick(s, G + "ecc_errors_total", type="corrected", **g(1)) == [1.0]
        assert pick(s, G + "nvlink_bytes_total", direction="rx", **g(1)) == [8192 * 1024.0]
        assert len(pick(s, G + "throttle_reason", **g(1))) == len(gpu_readings.THROTTLE_REASONS)
        assert pick(s, G + "lost") == [0.0, 0.0, 0.0]
        assert pick(s, "inference_node_gpus") == [3.0]
        # Counted by the error's name, once per poll: an error is not "not supported".
        assert poll.errors == {"Unknown": count}
        assert pick(s, ERRORS) == [count]
        assert pick(s, ERRORS, error="Unknown") == [count]
        assert [f["labels"] for f in poll.facts] == [
            f'gpu="{i}",uuid="{UUID.format(i)}"' for i in range(3)]
    # Asked again the next poll: 20 calls per GPU, the failed one included.
    assert second.on(1) == ONE_GPU
    assert second.calls - first.calls == 20 * 3


def test_a_gpu_lost_mid_run_is_reported_and_no_longer_asked(tmp_path: Path,
                                                           lib_dir: Path) -> None:
    faults = [Fault("*", gpu=2, code="NVML_ERROR_GPU_IS_LOST", from_poll=2)]
    before, lost, after = run_polls(lib_dir, tmp_path,
                                    Scenario(gpus=[h100(i) for i in range(3)]), polls=3,
                                    faults=faults, expected=3)
    assert pick(before.series, G + "lost", **g(2)) == [0.0]
    assert pick(before.series, G + "power_watts", **g(2)) == [602.0]
    assert len(before.facts) == 3
    for poll in (lost, after):
        s = poll.series
        assert pick(s, G + "lost", **g(2)) == [1.0]
        assert pick(s, G + "lost", **g(0)) == [0.0]
        assert pick(s, G + "lost", **g(1)) == [0.0]
        assert pick(s, "inference_node_gpus") == [2.0]
        assert pick(s, "inference_node_gpus_expected") == [3.0]
        assert pick(s, G + "info", **g(2)) == [1.0]
        # The lost GPU's readings are gone (its first call of the poll answered "lost"); the
        # others' are all there.
        assert [k for k in s if dict(k[1]).get("gpu") == "2"
                and k[0] not in (G + "info", G + "lost")] == []
        assert pick(s, G + "power_watts", **g(0)) == [600.0]
        assert pick(s, G + "power_watts", **g(1)) == [601.0]
        assert pick(s, G + "temperature_celsius", **g(1)) == [61.0]
        # Lost is not an error: nothing counted.
        assert poll.errors == {}
        assert pick(s, ERRORS) == []
        assert [f["labels"] for f in poll.facts] == [
            f'gpu="{i}",uuid="{UUID.format(i)}"' for i in range(2)]
    assert lost.on(2) == ["nvmlDeviceGetMemoryInfo"]
    assert lost.calls - before.calls == 20 * 2 + 1
    assert after.on(2) == []
    assert after.calls - lost.calls == 20 * 2


def test_not_supported_is_skipped_not_asked_again_and_the_old_call_name_is_tried(
        tmp_path: Path, lib_dir: Path) -> None:
    faults = [
        Fault("nvmlDeviceGetPcieThroughput", gpu=0, code="NVML_ERROR_NOT_SUPPORTED",
              args=(1,)),  # NVML_PCIE_UTIL_RX_BYTES
        # A driver before 535: only the "throttle reasons" name answers.
        Fault("nvmlDeviceGetCurrentClocksEventReasons", gpu=0,
              code="NVML_ERROR_FUNCTION_NOT_FOUND"),
    ]
    scenario = Scenario(gpus=[replace(h100(0), clocks_event=0x4 | 0x40)])
    first, second = run_polls(lib_dir, tmp_path, scenario, faults=faults)
    for poll in (first, second):
        s = poll.series
        assert pick(s, G + "pcie_throughput_bytes_per_second", direction="rx") == []
        assert pick(s, G + "pcie_throughput_bytes_per_second", direction="tx") == [1000 * 1024.0]
        assert pick(s, G + "throttle_reason", reason="sw_power_cap") == [1.0]
        assert pick(s, G + "throttle_reason", reason="hw_thermal_slowdown") == [1.0]
        assert pick(s, G + "throttle_reason", reason="hw_slowdown") == [0.0]
        assert poll.errors == {}
    # The first poll (after the init's calls) asks the new name, then the old one.
    throttle = ONE_GPU.index("nvmlDeviceGetCurrentClocksEventReasons")
    assert first.on(0)[-len(ONE_GPU) - 1:] == [
        *ONE_GPU[:throttle + 1], "nvmlDeviceGetCurrentClocksThrottleReasons",
        *ONE_GPU[throttle + 1:]]
    # The second poll asks neither the RX throughput nor the new name again.
    expected = list(ONE_GPU)
    expected[throttle] = "nvmlDeviceGetCurrentClocksThrottleReasons"
    expected.remove("nvmlDeviceGetPcieThroughput")
    assert second.on(0) == expected
    assert second.calls - first.calls == 19


# -- the readings asked once ------------------------------------------------------------------

def test_the_pcie_link_maxima_are_read_once_and_a_failed_one_again_until_it_answers(
        tmp_path: Path, lib_dir: Path) -> None:
    # GPU 1's link trained at x8 of its x16; its maximum width fails the first two polls.
    faults = [Fault("nvmlDeviceGetMaxPcieLinkWidth", gpu=1, code="NVML_ERROR_UNKNOWN",
                    until_poll=2)]
    scenario = Scenario(gpus=[h100(0), replace(h100(1), pcie_width=8)])
    first, second, third, fourth = run_polls(lib_dir, tmp_path, scenario, polls=4,
                                             faults=faults)
    # Asked when NVML is initialised, with the GPU's other static facts, not by the polls.
    assert first.on(0)[-len(ONE_GPU) - 2:] == [*MAXIMA, *ONE_GPU]
    for poll in (second, third, fourth):
        assert poll.on(0) == ONE_GPU
        assert pick(poll.series, G + "pcie_link_max_generation", **g(0)) == [5.0]
        assert pick(poll.series, G + "pcie_link_max_width", **g(0)) == [16.0]
    # The failed one: absent (never 0), counted, asked again each poll until it answers.
    retried = [*ONE_GPU[:-1], "nvmlDeviceGetMaxPcieLinkWidth", ONE_GPU[-1]]
    assert first.on(1)[-len(ONE_GPU) - 3:] == [*MAXIMA, *retried]
    assert second.on(1) == third.on(1) == retried
    for poll, errors in ((first, 2), (second, 3)):
        s = poll.series
        assert pick(s, G + "pcie_link_max_width", **g(1)) == []
        assert pick(s, G + "pcie_link_max_generation", **g(1)) == [5.0]
        assert pick(s, G + "pcie_link_width", **g(1)) == [8.0]
        assert poll.errors == {"Unknown": errors}
    # Once answered, exported by every poll and not asked again.
    for poll in (third, fourth):
        assert pick(poll.series, G + "pcie_link_max_width", **g(1)) == [16.0]
        assert pick(poll.series, G + "pcie_link_width", **g(1)) == [8.0]
        assert poll.errors == {"Unknown": 3}
    assert fourth.on(1) == ONE_GPU
    assert fourth.calls - third.calls == 20 * 2


@pytest.mark.parametrize("code", ["NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_FUNCTION_NOT_FOUND"])
def test_a_pcie_link_maximum_not_supported_is_absent_and_not_asked_again(
        tmp_path: Path, lib_dir: Path, code: str) -> None:
    faults = [Fault("nvmlDeviceGetMaxPcieLinkGeneration", gpu=0, code=code)]
    first, second = run_polls(lib_dir, tmp_path, Scenario(gpus=[h100(0)]), faults=faults)
    for poll in (first, second):
        s = poll.series
        assert pick(s, G + "pcie_link_max_generation") == []
        assert pick(s, G + "pcie_link_max_width", **g(0)) == [16.0]
        assert pick(s, G + "pcie_link_generation", **g(0)) == [5.0]
        assert poll.errors == {}
    assert first.on(0).count("nvmlDeviceGetMaxPcieLinkGeneration") == 1
    assert second.on(0) == ONE_GPU


# -- the table drives the output -----------------------------------------------------------------

def test_every_row_of_the_table_is_exported_in_its_order_for_a_gpu_supporting_everything(
        tmp_path: Path, lib_dir: Path) -> None:
    scenario = Scenario(gpus=[replace(h100(0), retired_sbe=3, retired_dbe=1,
                                      remapped_corr=2, processes=[Process(pid=4242)])])
    _, poll = run_polls(lib_dir, tmp_path, scenario)
    s = poll.series
    labels = g(0)
    for row in (*READINGS, *STATIC):
        extra = dict(re.findall(r'(\w+)="([^"]*)"', row.label))
        assert len(pick(s, row.family.name, **labels, **extra)) == 1, (row.family.name, extra)
    assert poll.on(0) == ONE_GPU
    assert pick(s, G + "memory_used_bytes", **labels) == [79_000_000_000.0]
    assert pick(s, G + "utilization_ratio", **labels) == [0.80]
    assert pick(s, G + "energy_joules_total", **labels) == [10_000.0]
    assert pick(s, G + "sm_clock_hertz", **labels) == [1.98e9]
    assert pick(s, G + "remapped_rows_total", type="corrected", **labels) == [2.0]
    assert pick(s, G + "remapped_rows_failed", **labels) == [0.0]
    assert pick(s, G + "retired_pages", cause="single_bit_ecc", **labels) == [3.0]
    assert pick(s, G + "retired_pages", cause="double_bit_ecc", **labels) == [1.0]
    assert pick(s, G + "nvlink_bytes_total", direction="tx", **labels) == [4096 * 1024.0]
    assert pick(s, G + "pcie_link_max_generation", **labels) == [5.0]
    assert pick(s, G + "pcie_link_max_width", **labels) == [16.0]
    # Every table series (those read once too) and nothing else but the per-GPU info and
    # lost, the GPU counts and the call counter.
    rows = (*READINGS, *STATIC)
    table = {(r.family.name, tuple(sorted({**labels, **dict(
        re.findall(r'(\w+)="([^"]*)"', r.label))}.items()))) for r in rows}
    assert len(table) == len(rows)
    assert {k[0] for k in s if k not in table} == {
        G + "info", G + "lost", "inference_node_gpus", "inference_node_exporter_nvml_calls_total"}
    # The typed facts of the join.
    assert poll.facts == [{"labels": f'gpu="0",uuid="{UUID.format(0)}"', "pids": [4242],
                           "power_watts": 600.0,
                           "memory_used_ratio": 79_000_000_000 / 85_520_809_984,
                           "processes_listed": True, "pci_bus_id": "00000000:18:00.0",
                           "mig": False, "virtualization": "none"}]


def test_every_family_the_gpu_collector_emits_is_a_constant_of_its_own_in_the_schema(
        tmp_path: Path, lib_dir: Path) -> None:
    specs = {v.name: v for v in vars(gpu_readings).values() if isinstance(v, gpu_readings.Spec)}
    assert set(specs) == {s.name for s in gpu_readings.FAMILIES}
    for spec in gpu_readings.FAMILIES:
        assert spec in SCHEMA
        assert any(s is spec for s in SCHEMA), f"{spec.name}: the schema holds a copy"
    # A poll that shows every family: an XID, an unexpected error, the expected count.
    gpus = [replace(h100(0), xids=(79,)), h100(1)]
    faults = [Fault("nvmlDeviceGetTemperature", gpu=1, code="NVML_ERROR_UNKNOWN")]
    *_, poll = run_polls(lib_dir, tmp_path, Scenario(gpus=gpus), faults=faults,
                         expected=2, price=2.5, until=gpu_readings.XID_ERRORS.name)
    assert set(poll.lines) == set(specs)
    assert pick(poll.series, gpu_readings.XID_ERRORS.name, xid="79", **g(0)) == [1.0]
    # Each line's label names, in order, are those of its family (MIG memory adds the last).
    for name, lines in poll.lines.items():
        for line in lines:
            names = tuple(re.findall(r'(\w+)="', line.partition("{")[2]))
            assert names == specs[name].labels[:len(names)], line
            assert len(names) == len(specs[name].labels) or name in (
                gpu_readings.MEMORY_USED.name, gpu_readings.MEMORY_TOTAL.name), line


def test_the_table_rows_are_distinct_series_and_name_real_pynvml_constants() -> None:
    import pynvml

    keys = [(r.family.name, r.label) for r in (*READINGS, *STATIC)]
    assert len(keys) == len(set(keys))
    for row in (*READINGS, *STATIC):
        assert callable(getattr(pynvml, row.call)), row.call
        assert not row.fallback or callable(getattr(pynvml, row.fallback))
        gpu_readings.resolve(pynvml, row.args)  # every constant it names exists
        assert row.label == "" or re.fullmatch(r'[a-z_]+="[a-z_]+"', row.label)
        extra = re.findall(r'(\w+)="', row.label)
        assert row.family.labels[:2 + len(extra)] == ("gpu", "uuid", *extra)
    # The converters' constants are pynvml's.
    assert pynvml.NVML_FEATURE_ENABLED == gpu_readings._FEATURE_ENABLED
    assert pynvml.NVML_SUCCESS == gpu_readings._SUCCESS


if __name__ == "__main__":
    # Logs to stderr: a line the XID thread logs must not split the result's line.
    from exporter import logs

    logs.configure("info", stream=sys.stderr)
    print(MARK + json.dumps(_child(json.loads(sys.argv[1]))), flush=True)
