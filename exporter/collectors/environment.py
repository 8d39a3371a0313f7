"""What the host collector reads of the platform beside CPU and memory: the container runtime
the daemon runs under, the memory balloon, and the NUMA topology of the GPUs.

Everything is read under the configured procfs and sysfs roots; files at the root of the
filesystem (``/.dockerenv``) are read under the parent of the procfs root, so a fixture tree
``<dir>/proc``, ``<dir>/sys`` stands in for a whole machine. Each reader returns what it could
read; garbage or an unreadable file leaves that part unknown, never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from exporter.exposition.family import Spec

__all__ = ["BALLOON_DEFLATED", "BALLOON_INFLATED", "BALLOON_INFO", "BALLOON_MIGRATED",
           "BALLOON_VMSTAT", "Topology", "balloon_drivers", "detect_container", "page_size",
           "parse_cpulist", "read_cpus_allowed", "read_topology", "read_vmstat_balloon"]

BALLOON_INFO = Spec(
    "inference_node_host_balloon_info", "gauge",
    "A memory balloon driver bound to a device (virtio_balloon, xen_balloon, vmw_balloon,"
    " hv_balloon), or driver=\"none\"; always 1.",
    ("driver",))
BALLOON_INFLATED = Spec(
    "inference_node_host_balloon_inflated_bytes_total", "counter",
    "Memory the balloon took from the guest since boot (/proc/vmstat balloon_inflate, pages"
    " times the page size); absent where the kernel has no balloon counters.",
    ())
BALLOON_DEFLATED = Spec(
    "inference_node_host_balloon_deflated_bytes_total", "counter",
    "Memory the balloon gave back to the guest since boot (/proc/vmstat balloon_deflate).",
    ())
BALLOON_MIGRATED = Spec(
    "inference_node_host_balloon_migrated_bytes_total", "counter",
    "Balloon memory moved by compaction since boot (/proc/vmstat balloon_migrate).",
    ())
BALLOON_VMSTAT: tuple[tuple[str, Spec], ...] = (
    ("balloon_inflate", BALLOON_INFLATED), ("balloon_deflate", BALLOON_DEFLATED),
    ("balloon_migrate", BALLOON_MIGRATED))
"""The /proc/vmstat counters of the balloon (in pages) and the family each feeds."""

_LIMIT = 1 << 20  # bytes read of any one file
_MAX_CPU = 1 << 16  # no kernel has more CPUs (NR_CPUS is at most 8192)
_NVIDIA = "0x10de"

# Container runtimes, strongest first: Kubernetes runs its pods on one of the others.
CONTAINERS = ("kubernetes", "podman", "docker", "lxc", "crio", "containerd", "other")
# Fragments of the daemon's own cgroup path, to the runtime they reveal.
_CGROUP = (("kubepods", "kubernetes"), ("libpod", "podman"), ("/docker/", "docker"),
           ("/docker-", "docker"), ("/lxc/", "lxc"), ("lxc.payload", "lxc"),
           ("crio-", "crio"), ("containerd", "containerd"))
# Fragments of the source of /etc/hosts, /etc/hostname or /etc/resolv.conf when a runtime
# bind-mounts them into the container (the host never mounts them).
_BIND_SOURCE = (("/kubelet/pods/", "kubernetes"), ("/docker/containers/", "docker"),
                ("/containers/storage/", "podman"), ("containerd", "containerd"))
_BIND_TARGETS = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")
# systemd's convention: the runtime names itself in the environment variable `container`.
_ENV = {"podman": "podman", "docker": "docker", "lxc": "lxc", "lxc-libvirt": "lxc",
        "oci": "other", "systemd-nspawn": "other"}
# Balloon drivers: (label, driver directory of the bus, module name without a device).
_BALLOONS = (("virtio_balloon", "bus/virtio/drivers/virtio_balloon"),
             ("hv_balloon", "bus/vmbus/drivers/hv_balloon"))
_DRIVER_FILES = frozenset({"bind", "unbind", "uevent", "new_id", "remove_id", "module"})


def _read(path: Path) -> str | None:
    """The start of a text file, None when unreadable."""
    try:
        with path.open("rb") as fh:
            return fh.read(_LIMIT).decode(errors="replace")
    except OSError:
        return None


def detect_container(procfs: Path) -> str:
    """The container runtime the daemon runs under (one of :data:`CONTAINERS`), or none."""
    root = procfs.parent
    found: set[str] = set()
    if (root / ".dockerenv").exists():
        found.add("docker")
    if (root / "run/.containerenv").exists():
        found.add("podman")
    cgroup = _read(procfs / "self/cgroup") or ""
    found.update(name for key, name in _CGROUP if key in cgroup)
    for line in (_read(procfs / "self/mountinfo") or "").splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] in _BIND_TARGETS:
            found.add(next((n for key, n in _BIND_SOURCE if key in fields[3]), "other"))
    for item in (_read(procfs / "self/environ") or "").split("\0"):
        key, _, value = item.partition("=")
        if key == "KUBERNETES_SERVICE_HOST":
            found.add("kubernetes")
        elif key == "container" and value:
            found.add(_ENV.get(value, "other"))
    return next((name for name in CONTAINERS if name in found), "none")


def _bound(driver: Path) -> bool:
    """Whether a bus driver's directory lists a device bound to it."""
    try:
        return any(entry.name not in _DRIVER_FILES for entry in driver.iterdir())
    except OSError:
        return False


def balloon_drivers(sysfs: Path) -> tuple[str, ...]:
    """The balloon drivers at work on this guest, in a stable order."""
    found = [name for name, path in _BALLOONS if _bound(sysfs / path)]
    if (sysfs / "devices/system/xen_memory/xen_memory0").is_dir():
        found.append("xen_balloon")
    if (sysfs / "module/vmw_balloon").is_dir():  # loads only under VMware; has no device
        found.append("vmw_balloon")
    return tuple(sorted(found))


def read_vmstat_balloon(procfs: Path) -> dict[str, int] | None:
    """The balloon counters of /proc/vmstat, in pages; None when vmstat is unreadable."""
    text = _read(procfs / "vmstat")
    if text is None:
        return None
    wanted = {key for key, _ in BALLOON_VMSTAT}
    # One scan in C for the few balloon lines, not a split of the file's ~170 lines a poll.
    return {key: int(value) for key, value in _BALLOON_LINE.findall(text) if key in wanted}


_BALLOON_LINE = re.compile(r"^(balloon_[a-z_]+)[ \t]+([0-9]+)[ \t]*$", re.M | re.A)


def page_size(procfs: Path) -> int | None:
    """The kernel's base page size, from the first mapping of the daemon's own smaps."""
    try:
        with (procfs / "self/smaps").open(errors="replace") as fh:
            for line in fh:
                if line.startswith("KernelPageSize:"):
                    parts = line.split()
                    if len(parts) == 3 and parts[1].isdigit() and parts[2] == "kB":
                        return int(parts[1]) * 1024
                    return None
    except OSError:
        pass
    return None


def parse_cpulist(text: str) -> frozenset[int]:
    """A kernel CPU list (``0-3,8,10-11``); ValueError on anything else."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        lo, hi = int(first), int(last or first)
        if not 0 <= lo <= hi < _MAX_CPU:
            raise ValueError(f"bad CPU range {part!r}")
        cpus.update(range(lo, hi + 1))
    return frozenset(cpus)


def read_cpus_allowed(procfs: Path, pid: int) -> frozenset[int] | None:
    """The CPUs a process may run on (``Cpus_allowed_list``); None when unreadable."""
    text = _read(procfs / str(pid) / "status")
    for line in (text or "").splitlines():
        if line.startswith("Cpus_allowed_list:"):
            try:
                return parse_cpulist(line.partition(":")[2]) or None
            except ValueError:
                return None
    return None


@dataclass(frozen=True, slots=True)
class Topology:
    """The NUMA nodes' CPUs and the node each NVIDIA PCI device hangs off."""

    numa_cpus: dict[int, frozenset[int]]
    pci_numa: dict[str, int]
    bad: tuple[str, ...]
    """Files that held garbage, for one log line."""


def read_topology(sysfs: Path) -> Topology:
    """NUMA nodes from ``devices/system/node`` and NVIDIA devices from ``bus/pci/devices``."""
    bad: list[str] = []
    nodes: dict[int, frozenset[int]] = {}
    for path in _children(sysfs / "devices/system/node"):
        number = path.name.removeprefix("node")
        text = _read(path / "cpulist") if path.name.startswith("node") else None
        if text is None or not number.isdigit():
            continue
        try:
            nodes[int(number)] = parse_cpulist(text)
        except ValueError:
            bad.append(str(path / "cpulist"))
    devices: dict[str, int] = {}
    for path in _children(sysfs / "bus/pci/devices"):
        if (_read(path / "vendor") or "").strip() != _NVIDIA:
            continue
        text = (_read(path / "numa_node") or "").strip()
        try:
            node = int(text)
        except ValueError:
            bad.append(str(path / "numa_node"))
            continue
        if node >= 0:  # -1: the platform does not say
            devices[path.name.lower()] = node
    return Topology(nodes, devices, tuple(bad))


def _children(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError:
        return []

