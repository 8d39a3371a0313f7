"""The host collector on fixture trees (a KVM guest with steal, bare metal without PSI, Xen)
and once on this machine's own /proc."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from exporter.collectors.host import HostSource, detect_hypervisor
from tests.support.harness import parse_series, pick

FIXTURES = Path(__file__).parent / "fixtures" / "host"
H = "inference_node_host_"


def render(source: HostSource) -> dict:  # type: ignore[type-arg]
    lines = source.poll().families.joined()
    return parse_series("".join(lines.values()))


def tree(tmp_path: Path, name: str) -> tuple[Path, Path]:
    shutil.copytree(FIXTURES / name, tmp_path / name)
    return tmp_path / name / "proc", tmp_path / name / "sys"


def test_steal_busy_iowait_ratios_and_psi_over_the_poll_interval(tmp_path: Path) -> None:
    procfs, sysfs = tree(tmp_path, "kvm-steal")
    clock = [100.0]
    source = HostSource(procfs, sysfs, clock=lambda: clock[0])
    first = render(source)
    assert pick(first, H + "cpu_steal_ratio") == []  # no interval yet
    assert pick(first, H + "cpus") == [4.0]
    assert pick(first, H + "memory_available_bytes") == [8192000 * 1024]
    assert pick(first, H + "swap_used_bytes") == [(4194304 - 3145728) * 1024]
    assert pick(first, H + "pressure_stalled_seconds_total", resource="cpu", kind="some") == [4.0]

    # 5 s later: 1000 more jiffies, of which 300 stolen, 500 busy (400 user + 100 system),
    # 50 iowait, 150 idle; 2 s more of CPU pressure.
    (procfs / "stat").write_text((procfs / "stat").read_text().replace(
        "cpu  1000 0 200 8000 100 0 50 650 0 0", "cpu  1400 0 300 8150 150 0 50 950 0 0"))
    (procfs / "pressure" / "cpu").write_text(
        "some avg10=40.00 avg60=2.00 avg300=2.50 total=6000000\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    clock[0] += 5.0
    second = render(source)
    assert pick(second, H + "cpu_steal_ratio") == [pytest.approx(300 / 1000)]
    assert pick(second, H + "cpu_busy_ratio") == [pytest.approx(500 / 1000)]
    assert pick(second, H + "cpu_iowait_ratio") == [pytest.approx(50 / 1000)]
    assert pick(second, H + "pressure_stall_ratio", resource="cpu", kind="some") == [
        pytest.approx(2.0 / 5.0)]
    assert pick(second, H + "pressure_stall_ratio", resource="io", kind="full") == [0.0]
    assert pick(second, H + "info", virtualization="virtual_machine", hypervisor="kvm",
                dmi_vendor="QEMU") == [1.0]


def test_bare_metal_without_psi_has_no_pressure_series(tmp_path: Path) -> None:
    procfs, sysfs = tree(tmp_path, "bare-metal-no-psi")
    source = HostSource(procfs, sysfs)
    render(source)
    s = render(source)
    assert not [k for k in s if k[0].startswith(H + "pressure")]
    assert pick(s, H + "swap_used_bytes") == [0.0]
    assert pick(s, H + "info", virtualization="bare_metal", hypervisor="none",
                dmi_vendor="Dell Inc.", dmi_product="PowerEdge XE9680") == [1.0]
    # /proc/stat did not move: no interval to compute a ratio over.
    assert pick(s, H + "cpu_steal_ratio") == []


def test_xen_is_named_by_sysfs_even_without_dmi() -> None:
    labels = detect_hypervisor(FIXTURES / "xen-pv" / "proc", FIXTURES / "xen-pv" / "sys")
    assert labels == {"virtualization": "virtual_machine", "hypervisor": "xen",
                      "dmi_vendor": "", "dmi_product": ""}


def test_unreadable_proc_is_a_poll_error_not_a_crash(tmp_path: Path) -> None:
    from exporter.collectors.base import SourceError

    source = HostSource(tmp_path, tmp_path)
    with pytest.raises(SourceError) as info:
        source.poll()
    assert info.value.reason == "read"


def test_this_machine() -> None:
    source = HostSource(Path("/proc"), Path("/sys"))
    render(source)
    s = render(source)
    assert pick(s, H + "cpus")[0] >= 1
    assert 0 < pick(s, H + "memory_available_bytes")[0] <= pick(s, H + "memory_total_bytes")[0]
    assert len(pick(s, H + "info")) == 1
