"""The host side of the platform's fingerprint, from the fixture trees of tests/fixtures/host:
the container runtime, the memory balloon and the NUMA topology."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from exporter.collectors.environment import (
    detect_container,
    parse_cpulist,
    read_cpus_allowed,
    read_topology,
    read_vmstat_balloon,
)
from exporter.collectors.host import DRIVERS_EVERY, HostSource
from exporter.derive.join import HostFacts
from tests.support.harness import Series, parse_series

HOST = Path(__file__).parent / "fixtures" / "host"
B = "inference_node_host_balloon_"


def poll(root: Path) -> tuple[Series, HostFacts]:
    source = HostSource(root / "proc", root / "sys")
    out = source.poll()
    assert out.facts.host is not None
    return parse_series("".join(out.families.joined().values())), out.facts.host


@pytest.mark.parametrize(("tree", "virtualization", "hypervisor", "container", "driver"), [
    ("bare-metal-numa", "bare_metal", "none", "none", "none"),
    ("kvm-balloon", "virtual_machine", "kvm", "none", "virtio_balloon"),
    ("xen-pv", "virtual_machine", "xen", "none", "xen_balloon"),
    # An unbound virtio_balloon driver is no balloon; docker on a KVM guest says both.
    ("docker-on-kvm", "virtual_machine", "kvm", "docker", "none"),
    # cgroup v2 with its own namespace says nothing: the bind mounts and environment do.
    ("kubernetes-pod", "bare_metal", "none", "kubernetes", "none"),
])
def test_each_tree_is_told_apart(tree: str, virtualization: str, hypervisor: str,
                                 container: str, driver: str) -> None:
    series, facts = poll(HOST / tree)
    assert (facts.virtualization, facts.hypervisor, facts.container) == \
        (virtualization, hypervisor, container)
    assert {dict(labels)["driver"] for (name, labels) in series if name == B + "info"} == \
        {driver}


def test_the_host_mounting_a_containers_shm_is_not_a_container(tmp_path: Path) -> None:
    # bare-metal-numa's mountinfo lists /var/lib/docker/containers/.../shm: the host's view.
    assert detect_container(HOST / "bare-metal-numa" / "proc") == "none"
    root = shutil.copytree(HOST / "bare-metal-numa", tmp_path / "t")
    (root / "proc/self/cgroup").write_text("0::/system.slice/docker-3f1c9a.scope\n")
    assert detect_container(root / "proc") == "docker"
    (root / "proc/self/environ").write_bytes(b"container=podman\0")
    assert detect_container(root / "proc") == "podman"  # named by itself, stronger
    (root / "proc/self/environ").write_bytes(b"container=something-new\0")
    (root / "proc/self/cgroup").write_text("0::/\n")
    assert detect_container(root / "proc") == "other"


def test_balloon_counters_move_in_bytes(tmp_path: Path) -> None:
    root = shutil.copytree(HOST / "kvm-balloon", tmp_path / "kvm")
    source = HostSource(root / "proc", root / "sys")
    first = parse_series("".join(source.poll().families.joined().values()))
    assert first[(B + "inflated_bytes_total", ())] == 262144 * 4096
    assert first[(B + "deflated_bytes_total", ())] == 65536 * 4096
    assert first[(B + "migrated_bytes_total", ())] == 12 * 4096
    vmstat = root / "proc/vmstat"
    vmstat.write_text(vmstat.read_text().replace("balloon_inflate 262144",
                                                 "balloon_inflate 524288"))
    second = parse_series("".join(source.poll().families.joined().values()))
    assert second[(B + "inflated_bytes_total", ())] == 524288 * 4096
    assert second[(B + "deflated_bytes_total", ())] == 65536 * 4096


def test_balloon_lines_are_read_exactly_and_drivers_looked_up_once_a_minute(
        tmp_path: Path) -> None:
    root = shutil.copytree(HOST / "kvm-balloon", tmp_path / "kvm")
    (root / "proc/vmstat").write_text(
        "nr_balloon_pages 99\nballoon_inflate\t8 \nballoon_inflate_x 5\n"
        "balloon_deflate 3\nxballoon_migrate 4\nballoon_migrate -1\n")
    assert read_vmstat_balloon(root / "proc") == {"balloon_inflate": 8, "balloon_deflate": 3}
    now = [1000.0]
    source = HostSource(root / "proc", root / "sys", clock=lambda: now[0])

    def drivers() -> set[str]:
        series = parse_series("".join(source.poll().families.joined().values()))
        return {dict(labels)["driver"] for (name, labels) in series if name == B + "info"}

    assert drivers() == {"virtio_balloon"}
    bound = [p for p in (root / "sys/bus/virtio/drivers/virtio_balloon").iterdir()
             if p.name.startswith("virtio")]
    assert bound
    for device in bound:  # the device is unbound: seen at the next look, not before
        shutil.rmtree(device)
    now[0] += DRIVERS_EVERY - 1
    assert drivers() == {"virtio_balloon"}
    now[0] += 1
    assert drivers() == {"none"}


@pytest.mark.parametrize("tree", ["docker-on-kvm", "xen-pv", "kvm-steal"])
def test_no_balloon_counters_in_the_kernel_means_none_exported(tree: str) -> None:
    series, _ = poll(HOST / tree)
    assert [n for n, _ in series if n.startswith(B) and n.endswith("_total")] == []


def test_an_unknown_page_size_or_garbage_leaves_the_counters_out(tmp_path: Path) -> None:
    root = shutil.copytree(HOST / "kvm-balloon", tmp_path / "kvm")
    (root / "proc/self/smaps").write_text("00400000-00401000 r--p 0 0:0 0 /x\nSize: 4 kB\n")
    series, _ = poll(root)
    assert (B + "inflated_bytes_total", ()) not in series
    assert series[(B + "info", (("driver", "virtio_balloon"),))] == 1.0
    root = shutil.copytree(HOST / "kvm-balloon", tmp_path / "garbage")
    (root / "proc/vmstat").write_bytes(b"balloon_inflate lots\nballoon_deflate \xff\xfe\n"
                                       b"balloon_migrate 7\n")
    series, _ = poll(root)
    assert [n for n, _ in series if n.endswith("_total")] == [B + "migrated_bytes_total"]


def test_numa_topology_of_the_gpus() -> None:
    topology = read_topology(HOST / "bare-metal-numa" / "sys")
    # 0000:ab:00.0 reads -1 (the platform does not say); the Intel NIC is no GPU.
    assert topology.pci_numa == {"0000:18:00.0": 0, "0000:2a:00.0": 0, "0000:9a:00.0": 1}
    assert topology.numa_cpus[0] == frozenset(range(48)) | frozenset(range(96, 144))
    assert topology.numa_cpus[1] == frozenset(range(48, 96)) | frozenset(range(144, 192))
    assert topology.bad == ()
    proc = HOST / "bare-metal-numa" / "proc"
    assert read_cpus_allowed(proc, 4243) == frozenset(range(48, 96))
    assert read_cpus_allowed(proc, 4244) == frozenset(range(192))
    assert read_cpus_allowed(proc, 999999) is None


def test_garbage_topology_is_left_out_and_named(tmp_path: Path) -> None:
    root = shutil.copytree(HOST / "bare-metal-numa", tmp_path / "t")
    (root / "sys/devices/system/node/node1/cpulist").write_text("48-zz\n")
    (root / "sys/bus/pci/devices/0000:9a:00.0/numa_node").write_text("one\n")
    (root / "proc/4242/status").write_text("Cpus_allowed_list:\t0-99999999\n")
    topology = read_topology(root / "sys")
    assert set(topology.numa_cpus) == {0}
    assert set(topology.pci_numa) == {"0000:18:00.0", "0000:2a:00.0"}
    assert len(topology.bad) == 2
    assert read_cpus_allowed(root / "proc", 4242) is None
    series, facts = poll(root)  # and the poll goes on
    assert facts.pci_numa == topology.pci_numa
    assert series[("inference_node_host_cpus", ())] == 1.0


@pytest.mark.parametrize(("text", "cpus"), [
    ("0-3,8,10-11\n", {0, 1, 2, 3, 8, 10, 11}), ("5", {5}), ("", set()), ("0-0", {0})])
def test_cpu_lists(text: str, cpus: set[int]) -> None:
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("text", ["3-1", "a", "-1", "0-70000", "1,,x"])
def test_bad_cpu_lists_raise(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpulist(text)
