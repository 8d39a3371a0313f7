"""The host collector: what on the machine itself explains inference latency.

CPU busy, steal and iowait ratios over the poll interval (steal is the noisy-neighbour signal
on shared machines), memory available and swap used, pressure-stall information where the
kernel has it, whether the host runs under a hypervisor or in a container, its memory balloon
(:mod:`.environment`) and the NUMA topology the platform fingerprint joins with the GPUs.
node_exporter covers the rest.
Everything is read from procfs and sysfs under configurable roots, so tests use fixture trees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exporter import logs
from exporter.collectors.base import PollOutput, SourceError
from exporter.collectors.environment import (
    BALLOON_INFO,
    BALLOON_VMSTAT,
    balloon_drivers,
    detect_container,
    page_size,
    read_topology,
    read_vmstat_balloon,
)
from exporter.derive.join import Facts, HostFacts
from exporter.exposition.family import Spec
from exporter.exposition.lines import Families, labelstr

__all__ = ["HostSource", "detect_hypervisor"]

DRIVERS_EVERY = 60.0
"""Seconds between looks at which balloon drivers are bound (a directory walk of sysfs each;
a driver comes with the guest's boot or a module load, not from one poll to the next)."""

INFO = Spec(
    "inference_node_host_info", "gauge",
    'Whether the host is a virtual machine, the hypervisor (kvm, xen, vmware, hyperv, '
    'virtualbox, unknown, none) and the DMI vendor and product; always 1.',
    ("virtualization", "hypervisor", "dmi_vendor", "dmi_product"))

CPUS = Spec(
    "inference_node_host_cpus", "gauge",
    'Logical CPUs the kernel reports.',
    ())

CPU_BUSY = Spec(
    "inference_node_host_cpu_busy_ratio", "gauge",
    'Share of CPU time spent working (user, nice, system, irq, softirq) over the last poll '
    'interval, all CPUs together.',
    (), live=True)

CPU_STEAL = Spec(
    "inference_node_host_cpu_steal_ratio", "gauge",
    'Share of CPU time the hypervisor gave to others over the last poll interval: the '
    'noisy-neighbour signal.',
    (), live=True)

CPU_IOWAIT = Spec(
    "inference_node_host_cpu_iowait_ratio", "gauge",
    'Share of CPU time idle while waiting for I/O over the last poll interval.',
    (), live=True)

MEMORY_TOTAL = Spec(
    "inference_node_host_memory_total_bytes", "gauge",
    'Physical memory the kernel manages (MemTotal).',
    ())

MEMORY_AVAILABLE = Spec(
    "inference_node_host_memory_available_bytes", "gauge",
    'Memory available for new work without swapping (MemAvailable).',
    ())

SWAP_USED = Spec(
    "inference_node_host_swap_used_bytes", "gauge",
    'Swap space in use (SwapTotal - SwapFree).',
    ())

PRESSURE_STALLED = Spec(
    "inference_node_host_pressure_stalled_seconds_total", "counter",
    'Time tasks stalled on a resource (pressure-stall information; absent where the kernel '
    'has none).',
    ("resource", "kind"))

PRESSURE_STALL = Spec(
    "inference_node_host_pressure_stall_ratio", "gauge",
    'Share of the last poll interval tasks stalled on a resource (some: at least one task, '
    'full: all non-idle tasks).',
    ("resource", "kind"), live=True)
_PSI_RESOURCES = ("cpu", "memory", "io")
# DMI vendor or product fragments, lower case, to the hypervisor they reveal.
_DMI = (("qemu", "kvm"), ("kvm", "kvm"), ("amazon ec2", "kvm"), ("google", "kvm"),
        ("vmware", "vmware"), ("microsoft corporation", "hyperv"), ("xen", "xen"),
        ("innotek", "virtualbox"), ("virtualbox", "virtualbox"), ("parallels", "parallels"),
        ("openstack", "kvm"), ("alibaba", "kvm"))


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Aggregate CPU time in jiffies from the first line of /proc/stat."""

    busy: int
    """user + nice + system + irq + softirq (guest time is included in user)."""
    iowait: int
    steal: int
    total: int


def read_cpu(procfs: Path) -> tuple[CpuTimes, int]:
    """Aggregate CPU times and the number of CPUs."""
    lines = (procfs / "stat").read_text().splitlines()
    fields = lines[0].split()
    if fields[0] != "cpu" or len(fields) < 8:
        raise SourceError("parse", f"unexpected first line in {procfs / 'stat'}")
    v = [int(x) for x in fields[1:11]] + [0] * (11 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    busy = user + nice + system + irq + softirq
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return CpuTimes(busy, iowait, steal, busy + idle + iowait + steal), cpus


def read_meminfo(procfs: Path) -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out = {}
    for line in (procfs / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def read_psi(procfs: Path) -> dict[tuple[str, str], float] | None:
    """Stalled seconds by (resource, some|full); None where the kernel has no PSI."""
    base = procfs / "pressure"
    if not base.is_dir():
        return None
    out: dict[tuple[str, str], float] = {}
    for resource in _PSI_RESOURCES:
        try:
            text = (base / resource).read_text()
        except OSError:  # PSI compiled in but disabled (psi=0) reads as an error
            continue
        for line in text.splitlines():
            kind, _, rest = line.partition(" ")
            for item in rest.split():
                key, _, value = item.partition("=")
                if key == "total" and value.isdigit():
                    out[(resource, kind)] = int(value) / 1e6
    return out or None


def detect_hypervisor(procfs: Path, sysfs: Path) -> dict[str, str]:
    """Labels of ``inference_node_host_info``: virtualisation, hypervisor and DMI names."""

    def read(path: Path) -> str:
        try:
            return path.read_text().strip()
        except OSError:
            return ""

    vendor = read(sysfs / "class/dmi/id/sys_vendor")
    product = read(sysfs / "class/dmi/id/product_name")
    flag = False
    try:
        with (procfs / "cpuinfo").open() as fh:
            for line in fh:
                if line.startswith("flags"):
                    flag = "hypervisor" in line.split()
                    break
    except OSError:
        pass
    hypervisor = read(sysfs / "hypervisor/type").lower()
    if not hypervisor:
        text = f"{vendor} {product}".lower()
        hypervisor = next((name for key, name in _DMI if key in text), "")
    if not hypervisor:
        hypervisor = "unknown" if flag else "none"
    virtual = flag or hypervisor != "none"
    return {"virtualization": "virtual_machine" if virtual else "bare_metal",
            "hypervisor": hypervisor, "dmi_vendor": vendor, "dmi_product": product}


class HostSource:
    """Reads procfs and sysfs once per poll; ratios come from the change since the last."""

    collector = "host"
    name = "host"

    def __init__(self, procfs: Path, sysfs: Path,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.procfs = procfs
        self.sysfs = sysfs
        self.target = f"{procfs} {sysfs}"
        self.clock = clock
        self.log = logs.get("host")
        hypervisor = detect_hypervisor(procfs, sysfs)
        self._info = labelstr(**hypervisor)
        topology = read_topology(sysfs)
        if topology.bad:
            self.log.warning("NUMA topology files hold garbage; those nodes or GPUs are left"
                             " out", files=list(topology.bad[:3]))
        self._facts = Facts(host=HostFacts(
            hypervisor["virtualization"], hypervisor["hypervisor"], detect_container(procfs),
            topology.numa_cpus, topology.pci_numa))
        self._page = page_size(procfs)
        self._logged: set[str] = set()
        self._last: tuple[float, CpuTimes, dict[tuple[str, str], float] | None] | None = None
        self._drivers: tuple[float, tuple[str, ...]] | None = None
        """When the balloon drivers were looked up, and what was found."""

    def poll(self) -> PollOutput:
        try:
            now = self.clock()
            cpu, cpus = read_cpu(self.procfs)
            mem = read_meminfo(self.procfs)
            psi = read_psi(self.procfs)
        except (OSError, ValueError, IndexError) as exc:
            raise SourceError("read", f"{type(exc).__name__}: {exc}") from None
        out = Families()
        out.add(INFO.name, self._info, 1.0)
        out.add(CPUS.name, "", float(cpus))
        last = self._last
        if last is not None and cpu.total > last[1].total:
            span = cpu.total - last[1].total
            out.add(CPU_BUSY.name, "", (cpu.busy - last[1].busy) / span)
            out.add(CPU_STEAL.name, "", (cpu.steal - last[1].steal) / span)
            out.add(CPU_IOWAIT.name, "", (cpu.iowait - last[1].iowait) / span)
        for key, family in (("MemTotal", MEMORY_TOTAL), ("MemAvailable", MEMORY_AVAILABLE)):
            if key in mem:
                out.add(family.name, "", float(mem[key]))
        if "SwapTotal" in mem and "SwapFree" in mem:
            out.add(SWAP_USED.name, "", float(mem["SwapTotal"] - mem["SwapFree"]))
        if psi is not None:
            before, elapsed = (last[2], now - last[0]) if last is not None else (None, 0.0)
            for (resource, kind), seconds in sorted(psi.items()):
                labels = labelstr(resource=resource, kind=kind)
                out.add(PRESSURE_STALLED.name, labels, seconds)
                if before is not None and (resource, kind) in before and elapsed > 0:
                    ratio = (seconds - before[(resource, kind)]) / elapsed
                    out.add(PRESSURE_STALL.name, labels, min(1.0, max(0.0, ratio)))
        self._balloon(out, now)
        self._last = (now, cpu, psi)
        return PollOutput(out, facts=self._facts)

    def _balloon(self, out: Families, now: float) -> None:
        """The balloon drivers at work (looked up again every :data:`DRIVERS_EVERY`) and the
        balloon's counters, in bytes."""
        if self._drivers is None or now - self._drivers[0] >= DRIVERS_EVERY:
            self._drivers = (now, balloon_drivers(self.sysfs))
        for driver in self._drivers[1] or ("none",):
            out.add(BALLOON_INFO.name, labelstr(driver=driver), 1.0)
        pages = read_vmstat_balloon(self.procfs)
        if pages is None:
            self._once(f"{self.procfs / 'vmstat'} is unreadable: no balloon counters")
        elif pages and self._page is None:
            self._once("the page size is unknown (no KernelPageSize in"
                       f" {self.procfs / 'self/smaps'}): no balloon counters")
        elif self._page is not None:
            for key, family in BALLOON_VMSTAT:
                if key in pages:
                    out.add(family.name, "", float(pages[key] * self._page))

    def _once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            self.log.warning(message)

    def close(self) -> None:
        pass
