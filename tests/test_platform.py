"""The platform's fingerprint: the pure join (exporter.derive.platform), then the real daemon
with the real nvidia-ml-py against the simulated NVML and a fixture procfs/sysfs tree."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from exporter.derive.join import EngineFacts, GpuFacts, HostFacts
from exporter.derive.platform import fingerprint, normalise_bus_id
from exporter.exposition.lines import Families
from tests.nvml_sim import MigDevice, Process, Scenario, build, env, h100
from tests.support.harness import Daemon, Series, SimProcess, parse_series, pick, wait_for

HOST = Path(__file__).parent / "fixtures" / "host"
SCENARIOS = Path(__file__).parent / "scenarios"
G = "inference_node_gpu_"
NODE0 = frozenset(range(4))
HOSTF = HostFacts("virtual_machine", "kvm", "docker", {0: NODE0, 1: frozenset(range(4, 8))},
                  {"0000:18:00.0": 0, "0000:19:00.0": 1})


def gpu(index: int, pids: set[int], **changes: object) -> GpuFacts:
    facts = GpuFacts(f'gpu="{index}",uuid="GPU-{index}"', frozenset(pids),
                     pci_bus_id=f"00000000:{0x18 + index:02X}:00.0", virtualization="none")
    return replace(facts, **changes)  # type: ignore[arg-type]


def engine(name: str, pids: dict[int, frozenset[int] | None]) -> EngineFacts:
    return EngineFacts("vllm", name, frozenset(pids),
                       cpus_allowed={p: c for p, c in pids.items() if c is not None})


def run(gpus: list[GpuFacts] | None, engines: list[EngineFacts], up: bool = True,
        host: HostFacts | None = HOSTF) -> Series:
    out = Families()
    fingerprint(host, gpus, engines, up, out)
    return parse_series("".join(out.joined().values()))


def test_foreign_processes_and_how_each_gpu_is_shared() -> None:
    chat = engine("chat", {10: NODE0, 11: NODE0})
    s = run([gpu(0, {10, 11}), gpu(1, {10, 99}), gpu(2, {98, 97}), gpu(3, set()),
             gpu(4, {96}, mig=True), gpu(5, {95}, virtualization="vgpu"),
             gpu(6, {10}, virtualization=""), gpu(7, {10}, virtualization="passthrough")],
            [chat])
    assert pick(s, G + "foreign_processes") == [0, 1, 2, 0, 1, 1, 0, 0]
    modes = {dict(k[1])["gpu"]: dict(k[1])["mode"] for k in s
             if k[0] == G + "virtualization_info"}
    # One engine with two processes is one tenant; an engine and a foreign process, or two
    # foreign processes, share the GPU by time-slicing. MIG and vGPU win over it.
    assert modes == {"0": "none", "1": "time_sliced", "2": "time_sliced", "3": "none",
                     "4": "mig", "5": "vgpu", "6": "unknown", "7": "passthrough"}
    info = [dict(k[1]) for k in s if k[0] == "inference_node_environment_info"]
    assert info == [{"environment": "container", "virtualization": "virtual_machine",
                     "hypervisor": "kvm", "container": "docker", "gpu_virtualization": "mig"}]


def test_two_engines_on_one_gpu_are_time_sliced() -> None:
    s = run([gpu(0, {10, 20})], [engine("a", {10: None}), engine("b", {20: None})])
    assert pick(s, G + "virtualization_info", mode="time_sliced") == [1.0]
    assert pick(s, G + "foreign_processes") == [0.0]


def test_while_an_engine_is_down_unclaimed_processes_are_not_called_foreign() -> None:
    chat = engine("chat", {10: None})
    s = run([gpu(0, {10}), gpu(1, {99})], [chat], up=False)
    assert pick(s, G + "foreign_processes", gpu="0") == [0.0]  # every process claimed
    assert pick(s, G + "foreign_processes", gpu="1") == []
    assert pick(s, G + "virtualization_info", gpu="1", mode="none") == [1.0]
    s = run([gpu(0, set(), processes_listed=False)], [])
    assert pick(s, G + "foreign_processes") == []


def test_an_endpoint_whose_processes_are_unknown_may_own_any_unclaimed_one() -> None:
    # A remote URL, or an engine behind a port mapping: its GPU process is not foreign.
    chat, mapped = engine("chat", {10: None}), engine("mapped", {})
    s = run([gpu(0, {10}), gpu(1, {99})], [chat, mapped])
    assert pick(s, G + "foreign_processes", gpu="0") == [0.0]
    assert pick(s, G + "foreign_processes", gpu="1") == []
    s = run([gpu(1, {99})], [chat])
    assert pick(s, G + "foreign_processes", gpu="1") == [1.0]


def test_environment_without_gpus_or_without_a_host() -> None:
    bare = HostFacts("bare_metal", "none", "none")
    s = run(None, [], host=bare)
    assert pick(s, "inference_node_environment_info", environment="bare_metal",
                gpu_virtualization="unknown") == [1.0]
    assert pick(run([], [], host=bare), "inference_node_environment_info",
                gpu_virtualization="none") == [1.0]
    s = run([gpu(0, {99})], [], host=None)
    assert pick(s, "inference_node_environment_info") == []
    assert pick(s, G + "numa_info") == []
    assert pick(s, G + "foreign_processes") == [1.0]


def test_numa_alignment_per_engine_and_gpu() -> None:
    pinned = engine("pinned", {10: NODE0, 11: frozenset({4, 5})})
    loose = engine("loose", {20: frozenset(range(8))})
    unknown = engine("unknown", {30: None})
    s = run([gpu(0, {10, 20, 30}), gpu(1, {11}), gpu(2, {10})], [pinned, loose, unknown])
    assert pick(s, G + "numa_info", gpu="0", numa_node="0") == [1.0]
    assert pick(s, G + "numa_info", gpu="1", numa_node="1") == [1.0]
    assert pick(s, G + "numa_info", gpu="2") == []  # no numa_node for its bus id
    aligned = "inference_node_engine_numa_aligned"
    # Each GPU's own processes of the engine count: 10 on node 0, 11 on node 1.
    assert pick(s, aligned, gpu="0", endpoint="pinned") == [1.0]
    assert pick(s, aligned, gpu="1", endpoint="pinned") == [1.0]
    assert pick(s, aligned, gpu="0", endpoint="loose") == [0.0]  # may run on node 1 too
    assert pick(s, aligned, endpoint="unknown") == []
    assert pick(s, aligned, gpu="2") == []


@pytest.mark.parametrize(("nvml", "sysfs"), [
    ("00000000:18:00.0", "0000:18:00.0"), ("0000:AB:00.0", "0000:ab:00.0"),
    ("00000001:1A:00.0", "0001:1a:00.0"), ("", ""), ("zz:18:00.0", ""), ("0000", "")])
def test_bus_ids_are_named_as_sysfs_names_them(nvml: str, sysfs: str) -> None:
    assert normalise_bus_id(nvml) == sysfs


# -- the real daemon --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("nvml-sim"))


def test_the_fingerprint_through_nvml_and_a_fixture_host(tmp_path: Path, lib_dir: Path) -> None:
    """A bare-metal node with two NUMA nodes: an engine pinned to node 0 on GPU 0 with a
    foreign process beside it, one foreign process alone on GPU 1 (node 0 too), GPU 2 in MIG
    mode with a process on an instance (node 1), and GPU 3 whose numa_node reads -1."""
    root = shutil.copytree(HOST / "bare-metal-numa", tmp_path / "host")
    with SimProcess(SCENARIOS / "steady_v1.json") as sim:
        status = (root / "proc/4242/status").read_text()
        (root / "proc" / str(sim.pid)).mkdir()
        (root / "proc" / str(sim.pid) / "status").write_text(status)
        gpus = [h100(0, processes=[Process(sim.pid), Process(4000)]),
                h100(1, pci="00000000:2A:00.0", processes=[Process(4001)]),
                h100(2, pci="00000000:9A:00.0", mig=True,
                     mig_devices=[MigDevice(1, processes=[Process(4002)])]),
                h100(3, pci="00000000:AB:00.0", virt=1)]
        nvml = Scenario(gpus=gpus).write(tmp_path / "gpus.txt")
        args = ["--poll.interval", "200ms", "--poll.timeout", "200ms",
                "--path.procfs", str(root / "proc"), "--path.sysfs", str(root / "sys"),
                "--vllm.endpoint", f"chat={sim.metrics_url}", "--no-engines.discover"]
        with Daemon(tmp_path, args, env=env(lib_dir, nvml)) as d:
            s = wait_for("the engine joined to GPU 0", lambda: (
                lambda got: got if pick(got, G + "engine_info", gpu="0") else None)(
                    d.series()))
    assert pick(s, G + "foreign_processes", gpu="0") == [1.0]
    assert pick(s, G + "foreign_processes", gpu="1") == [1.0]
    assert pick(s, G + "foreign_processes", gpu="2") == [1.0]
    assert pick(s, G + "foreign_processes", gpu="3") == [0.0]
    assert pick(s, G + "virtualization_info", gpu="0", mode="time_sliced") == [1.0]
    assert pick(s, G + "virtualization_info", gpu="1", mode="none") == [1.0]
    assert pick(s, G + "virtualization_info", gpu="2", mode="mig") == [1.0]
    assert pick(s, G + "virtualization_info", gpu="3", mode="passthrough") == [1.0]
    assert pick(s, G + "numa_info", gpu="0", numa_node="0") == [1.0]
    assert pick(s, G + "numa_info", gpu="2", numa_node="1") == [1.0]
    assert pick(s, G + "numa_info", gpu="3") == []
    assert pick(s, "inference_node_engine_numa_aligned", gpu="0", engine="vllm",
                endpoint="chat") == [1.0]
    assert pick(s, "inference_node_environment_info", environment="bare_metal",
                virtualization="bare_metal", hypervisor="none", container="none",
                gpu_virtualization="mig") == [1.0]
    assert pick(s, "inference_node_host_balloon_info", driver="none") == [1.0]
