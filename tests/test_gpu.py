"""The gpu collector: the real daemon and the real nvidia-ml-py bindings against the simulated
NVML library built from NVIDIA's nvml.h (tests/nvml_sim)."""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from tests.nvml_sim import MigDevice, Scenario, build, env, h100
from tests.support.harness import Daemon, Series, pick, wait_for
from tests.support.served import Served

G = "inference_node_gpu_"
FAST = ["--poll.interval", "200ms", "--poll.timeout", "200ms", "--poll.max-backoff", "400ms",
        "--no-collector.vllm", "--no-collector.host"]


@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("nvml-sim"))


def start(tmp_path: Path, lib_dir: Path, scenario: Scenario, *args: str) -> Daemon:
    path = scenario.write(tmp_path / "scenario.txt")
    return Daemon(tmp_path, [*FAST, *args], env=env(lib_dir, path)).start()


def gpu_up(daemon: Daemon) -> Series | None:
    s = daemon.series()
    return s if pick(s, "inference_node_exporter_collector_up", collector="gpu") == [1.0] \
        else None


def test_eight_h100s_are_read_through_nvml(tmp_path: Path, lib_dir: Path) -> None:
    gpus = [h100(i) for i in range(8)]
    gpus[3] = replace(gpus[3], clocks_event=0x4 | 0x40, ecc_uncorrected=2, remapped_unc=1,
                      remap_pending=True)
    gpus[4] = replace(gpus[4], pcie_gen=4, pcie_width=8)  # trained below gen 5 x16: degraded
    gpus[5] = replace(gpus[5], unsupported=("power", "energy", "ecc", "nvlink", "retired",
                                            "pcie_link"))
    gpus[6] = replace(gpus[6], retired_sbe=3, retired_dbe=1, retired_pending=True)
    with start(tmp_path, lib_dir, Scenario(gpus=gpus), "--gpu.expected-count", "8") as d:
        s = wait_for("the gpu collector up", lambda: gpu_up(d))
    assert pick(s, "inference_node_gpus") == [8.0]
    assert pick(s, "inference_node_gpus_expected") == [8.0]
    g0 = {"gpu": "0", "uuid": "GPU-4f1c2a7e-0000-4000-8000-000000000000"}
    assert pick(s, G + "memory_used_bytes", **g0) == [79_000_000_000.0]
    assert pick(s, G + "memory_total_bytes", **g0) == [85_520_809_984.0]
    assert pick(s, G + "utilization_ratio", **g0) == [0.80]
    assert pick(s, G + "memory_utilization_ratio", **g0) == [0.60]
    assert pick(s, G + "power_watts", **g0) == [600.0]
    assert pick(s, G + "energy_joules_total", **g0) == [10_000.0]
    assert pick(s, G + "temperature_celsius", **g0) == [60.0]
    assert pick(s, G + "sm_clock_hertz", **g0) == [1.98e9]
    assert pick(s, G + "memory_clock_hertz", **g0) == [2.619e9]
    assert pick(s, G + "pcie_throughput_bytes_per_second", direction="rx", **g0) == [2000 * 1024.0]
    assert pick(s, G + "pcie_link_generation", **g0) == [5.0]
    assert pick(s, G + "pcie_link_width", **g0) == [16.0]
    assert pick(s, G + "pcie_link_max_generation", **g0) == [5.0]
    assert pick(s, G + "pcie_link_max_width", **g0) == [16.0]
    # A degraded link: the current link below the maximum the GPU and its slot support.
    assert pick(s, G + "pcie_link_generation", gpu="4") == [4.0]
    assert pick(s, G + "pcie_link_width", gpu="4") == [8.0]
    assert pick(s, G + "pcie_link_max_generation", gpu="4") == [5.0]
    assert pick(s, G + "pcie_link_max_width", gpu="4") == [16.0]
    assert pick(s, G + "nvlink_bytes_total", direction="tx", **g0) == [4096 * 1024.0]
    assert pick(s, G + "info", gpu="0", name="NVIDIA H100 80GB HBM3", driver_version="550.54.15",
                cuda_version="12.4", pci_bus_id="00000000:18:00.0", mig_mode="disabled",
                virtualization_mode="none") == [1.0]
    # Throttle reasons: one 0/1 series per reason.
    assert pick(s, G + "throttle_reason", gpu="3", reason="sw_power_cap") == [1.0]
    assert pick(s, G + "throttle_reason", gpu="3", reason="hw_thermal_slowdown") == [1.0]
    assert pick(s, G + "throttle_reason", gpu="3", reason="hw_slowdown") == [0.0]
    assert pick(s, G + "ecc_errors_total", gpu="3", type="uncorrected") == [2.0]
    assert pick(s, G + "remapped_rows_total", gpu="3", type="uncorrected") == [1.0]
    assert pick(s, G + "remapped_rows_pending", gpu="3") == [1.0]
    assert pick(s, G + "retired_pages", gpu="6", cause="single_bit_ecc") == [3.0]
    assert pick(s, G + "retired_pages", gpu="6", cause="double_bit_ecc") == [1.0]
    assert pick(s, G + "retired_pages_pending", gpu="6") == [1.0]
    assert pick(s, G + "retired_pages_pending", gpu="0") == [0.0]
    # Not supported: absent, never NaN or 0.
    for name in ("power_watts", "energy_joules_total", "ecc_errors_total", "nvlink_bytes_total",
                 "retired_pages", "retired_pages_pending", "pcie_link_generation",
                 "pcie_link_width", "pcie_link_max_generation", "pcie_link_max_width"):
        assert pick(s, G + name, gpu="5") == []
    assert pick(s, G + "temperature_celsius", gpu="5") == [65.0]
    assert all(v == v for v in s.values()), "NaN exported"


def test_a_gpu_lost_mid_run_is_reported_and_the_others_go_on(tmp_path: Path,
                                                               lib_dir: Path) -> None:
    scenario = Scenario(gpus=[h100(i) for i in range(4)])
    with start(tmp_path, lib_dir, scenario, "--gpu.expected-count", "4") as d:
        wait_for("the gpu collector up", lambda: gpu_up(d))
        lost = list(scenario.gpus)
        lost[2] = replace(lost[2], lost=True)
        replace(scenario, gpus=lost).write(tmp_path / "scenario.txt")
        s = wait_for("GPU 2 reported lost", lambda: (x := d.series()) and pick(
            x, G + "lost", gpu="2") == [1.0] and x)
        assert pick(s, "inference_node_gpus") == [3.0]
        assert pick(s, "inference_node_gpus_expected") == [4.0]
        assert pick(s, G + "lost", gpu="1") == [0.0]
        assert pick(s, G + "power_watts", gpu="2") == []
        assert pick(s, G + "power_watts", gpu="3") == [603.0]
        assert pick(s, "inference_node_exporter_collector_up", collector="gpu") == [1.0]
        # Logged once: a lost GPU is not asked again.
        assert [(e["gpu"], e["uuid"]) for e in d.logs() if e["event"] == "GPU lost"] == [
            (2, "GPU-4f1c2a7e-0000-4000-8000-000000000002")]


def test_xid_events_are_counted_by_code(tmp_path: Path, lib_dir: Path) -> None:
    gpus = [h100(i) for i in range(3)]
    gpus[2] = replace(gpus[2], xids=(79, 79, 48))
    with start(tmp_path, lib_dir, Scenario(gpus=gpus)) as d:
        # The simulator delivers the three events one by one: wait for the last of them.
        s = wait_for("XID 48 counted", lambda: (x := d.series()) and pick(
            x, G + "xid_errors_total", gpu="2", xid="48") == [1.0] and x)
        assert pick(s, G + "xid_errors_total", gpu="2", xid="79") == [2.0]
        assert pick(s, G + "xid_errors_total", gpu="0") == []


def test_mig_instances_appear_with_their_parent_labels(tmp_path: Path, lib_dir: Path) -> None:
    gpu = replace(h100(0), mig=True, mig_devices=[
        MigDevice(slot=0, gi=1, mem_total=40_000_000_000, mem_used=30_000_000_000),
        MigDevice(slot=1, gi=2, mem_total=40_000_000_000, mem_used=10_000_000_000)])
    with start(tmp_path, lib_dir, Scenario(gpus=[gpu])) as d:
        s = wait_for("the gpu collector up", lambda: gpu_up(d))
    assert pick(s, G + "info", gpu="0", mig_mode="enabled") == [1.0]
    assert pick(s, G + "memory_used_bytes", gpu="0", gpu_instance="1") == [30e9]
    assert pick(s, G + "memory_used_bytes", gpu="0", gpu_instance="2") == [10e9]
    whole = [v for (n, lab), v in s.items() if n == G + "memory_used_bytes"
             and "gpu_instance" not in dict(lab)]
    assert whole == [79e9]


def test_nvml_failing_to_initialise_is_down_retried_and_recovers(tmp_path: Path,
                                                                 lib_dir: Path) -> None:
    scenario = Scenario(gpus=[h100(0)], init_error=9)  # NVML_ERROR_DRIVER_NOT_LOADED
    with start(tmp_path, lib_dir, scenario) as d:
        wait_for("down with reason nvml_init", lambda: pick(
            d.series(), "inference_node_exporter_collector_errors_total", collector="gpu",
            reason="nvml_init"))
        replace(scenario, init_error=0).write(tmp_path / "scenario.txt")
        s = wait_for("recovery after the driver loaded", lambda: gpu_up(d))
        assert pick(s, "inference_node_gpus") == [1.0]
    events = [e["event"] for e in d.logs() if e.get("collector") == "gpu"]
    assert events.count("source down") == 1


def test_a_stalled_nvml_call_marks_down_without_holding_scrapes(tmp_path: Path,
                                                                lib_dir: Path) -> None:
    scenario = Scenario(gpus=[h100(0), h100(1)])
    with start(tmp_path, lib_dir, scenario, "--poll.timeout", "300ms", "--poll.interval",
               "300ms") as d:
        wait_for("the gpu collector up", lambda: gpu_up(d))
        stalled = list(scenario.gpus)
        stalled[1] = replace(stalled[1], stalls={"memory": 4000})
        replace(scenario, gpus=stalled).write(tmp_path / "scenario.txt")
        wait_for("down with reason timeout", lambda: pick(
            d.series(), "inference_node_exporter_collector_errors_total", collector="gpu",
            reason="timeout"), timeout=10)
        started = time.monotonic()
        assert requests.get(d.url + "/metrics", timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
        replace(scenario, gpus=scenario.gpus).write(tmp_path / "scenario.txt")
        wait_for("back up once the call returned", lambda: gpu_up(d), timeout=15)


def test_without_nvml_the_rest_of_the_daemon_works(tmp_path: Path) -> None:
    with Daemon(tmp_path, ["--poll.interval", "200ms", "--poll.timeout", "200ms",
                           "--no-collector.vllm"]) as d:
        s = wait_for("gpu down, host up", lambda: (x := d.series()) and pick(
            x, "inference_node_exporter_collector_up", collector="host") == [1.0] and pick(
            x, "inference_node_exporter_collector_up", collector="gpu") == [0.0] and x)
    # Every poll failed, and all for that reason.
    polls = pick(s, "inference_node_exporter_collector_polls_total", collector="gpu")
    assert polls and polls[0] >= 1.0
    assert pick(s, "inference_node_exporter_collector_errors_total", collector="gpu") == polls
    assert pick(s, "inference_node_exporter_collector_errors_total", collector="gpu",
                reason="nvml_init") == polls
    assert [k for k in s if k[0].startswith(G)] == []


def calls_per_poll(d: Daemon, polls: int = 4) -> set[float]:
    """NVML calls between successive successful gpu polls, as the daemon counts them."""
    seen: dict[float, float] = {}

    def record() -> bool:
        s = d.series()
        done = pick(s, "inference_node_exporter_collector_polls_total", collector="gpu")
        calls = pick(s, "inference_node_exporter_nvml_calls_total")
        if done and calls and pick(s, "inference_node_exporter_collector_up",
                                   collector="gpu") == [1.0]:
            seen[done[0]] = calls[0]
        return len(seen) >= polls

    wait_for("several polls", record)
    order = sorted(seen)
    return {(seen[b] - seen[a]) / (b - a) for a, b in itertools.pairwise(order)}


def test_nvml_is_initialised_once_and_a_poll_makes_a_fixed_number_of_calls(
        tmp_path: Path, lib_dir: Path) -> None:
    with start(tmp_path, lib_dir, Scenario(gpus=[h100(i) for i in range(8)])) as d:
        per_poll = calls_per_poll(d)
    # 20 readings per GPU (memory, utilisation, power, energy, temperature, 2 clocks, clock
    # event reasons, 2 ECC counts, remapped rows, 2 retired-page counts and their pending
    # state, 2 PCIe throughputs, link generation and width, NVLink field values, running
    # processes) and nothing else: no re-initialisation, no new handles, and the link's
    # maximum generation and width, read when NVML was initialised, are not asked again.
    assert per_poll == {20 * 8}


def test_a_reading_not_supported_is_not_asked_for_again(tmp_path: Path, lib_dir: Path) -> None:
    gpus = [replace(h100(i), unsupported=("power", "energy", "retired")) for i in range(2)]
    with start(tmp_path, lib_dir, Scenario(gpus=gpus)) as d:
        per_poll = calls_per_poll(d, polls=3)
    # 20 readings less power, energy, 2 retired-page counts and their pending state.
    assert per_poll == {(20 - 5) * 2}


def test_dcgm_profiling_fields_from_a_dcgm_exporter(tmp_path: Path) -> None:
    body = (Path(__file__).parent / "fixtures" / "dcgm" / "dcgm-exporter-h100x8.txt").read_bytes()
    with Served(lambda path: body if path == "/metrics" else b"# nothing here\n") as page:
        url = page.url
        with Daemon(tmp_path, [*FAST, "--no-collector.gpu", "--dcgm.url", url + "/metrics"]) as d:
            s = wait_for("DCGM fields", lambda: (x := d.series()) and pick(
                x, G + "dram_active_ratio", gpu="0") and x)
        with Daemon(tmp_path, [*FAST, "--no-collector.gpu", "--dcgm.url", url + "/other"]) as d2:
            wrong = wait_for("an error", lambda: (x := d2.series()) and pick(
                x, "inference_node_exporter_collector_errors_total",
                collector="dcgm", reason="no_profiling_fields") and x)
    uuid0 = "GPU-4f1c2a7e-0000-4000-8000-000000000000"
    assert pick(s, G + "dram_active_ratio", gpu="0", uuid=uuid0) == [0.71]
    assert pick(s, G + "sm_active_ratio", gpu="2") == [0.84]
    assert pick(s, G + "tensor_active_ratio", gpu="4") == [0.12]
    assert pick(s, G + "graphics_engine_active_ratio", gpu="3") == [0.92]
    assert pick(s, G + "dram_active_ratio", gpu="7", gpu_instance="1") == [0.25]
    assert len(pick(s, G + "dram_active_ratio")) == 9
    # dcgm-exporter's own names and its Hostname label are not passed through.
    assert [k for k in s if k[0].startswith("DCGM_") or "Hostname" in dict(k[1])] == []
    # A page without DCGM's profiling fields: down, every poll an error of that reason, and
    # no DCGM family served.
    polls = pick(wrong, "inference_node_exporter_collector_polls_total", collector="dcgm")
    assert polls and polls[0] >= 1.0
    assert pick(wrong, "inference_node_exporter_collector_errors_total",
                collector="dcgm", reason="no_profiling_fields") == polls
    assert pick(wrong, "inference_node_exporter_collector_errors_total",
                collector="dcgm") == polls
    assert pick(wrong, "inference_node_exporter_collector_up", collector="dcgm") == [0.0]
    assert [k for k in wrong if k[0].startswith(G)] == []


def test_sigterm_ends_the_process_within_two_seconds_while_an_nvml_call_stalls(
        tmp_path: Path, lib_dir: Path) -> None:
    scenario = Scenario(gpus=[replace(h100(0), stalls={"memory": 30000}), h100(1)])
    d = start(tmp_path, lib_dir, scenario)
    assert d.proc is not None
    try:
        wait_for("the stalled call to time the poll out", lambda: pick(
            d.series(), "inference_node_exporter_collector_errors_total", collector="gpu",
            reason="timeout"), timeout=10)
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        try:
            code: int | None = d.proc.wait(10)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - started
    finally:
        d.stop()
    assert code == 0, f"still running {took:.1f} s after SIGTERM"
    assert took < 2.0, f"the process ended {took:.2f} s after SIGTERM"
    assert any(e["event"] == "stopped" for e in d.logs())
