"""The platform's fingerprint: what the engines run on, joined from the host, the GPUs and the
engines' processes. Pure functions: no I/O.

- The environment: a container (which runtime) or not, on bare metal or a virtual machine
  (which hypervisor), and the strongest GPU sharing on the node.
- Per GPU, how it is shared (:func:`gpu_mode`), its compute processes that belong to no known
  engine (the GPU noisy neighbour) and the NUMA node it hangs off.
- Per engine and GPU, whether the engine's processes on that GPU may run only on CPUs of the
  GPU's NUMA node.
"""

from __future__ import annotations

from collections.abc import Sequence

from exporter.derive.join import EngineFacts, GpuFacts, HostFacts
from exporter.exposition.family import Spec
from exporter.exposition.lines import Families, labelstr

__all__ = ["ENGINE_NUMA_ALIGNED", "ENVIRONMENT_INFO", "FOREIGN_PROCESSES", "GPU_NUMA",
           "GPU_VIRTUALIZATION", "MODES", "fingerprint", "gpu_mode", "normalise_bus_id"]

_GPU = ("gpu", "uuid")
ENVIRONMENT_INFO = Spec(
    "inference_node_environment_info", "gauge",
    "The platform under the engines: environment (container, virtual_machine, bare_metal),"
    " the machine's virtualization (virtual_machine, bare_metal) and hypervisor, the"
    " container runtime (kubernetes, podman, docker, lxc, crio, containerd, other, none)"
    " and the strongest GPU sharing on the node (mig, vgpu, time_sliced, passthrough, none,"
    " unknown); always 1.",
    ("environment", "virtualization", "hypervisor", "container", "gpu_virtualization"))
GPU_VIRTUALIZATION = Spec(
    "inference_node_gpu_virtualization_info", "gauge",
    "How the GPU is shared: mig (MIG mode on), vgpu, time_sliced (compute processes of two"
    " or more tenants: engines or foreign processes), passthrough, none, or unknown"
    " (NVML does not say); always 1.",
    (*_GPU, "mode"))
FOREIGN_PROCESSES = Spec(
    "inference_node_gpu_foreign_processes", "gauge",
    "Compute processes on the GPU that belong to no known engine; absent when NVML does not"
    " list the GPU's processes, or while some are unclaimed and an engine endpoint is down"
    " or has processes the daemon cannot find.",
    _GPU)
GPU_NUMA = Spec(
    "inference_node_gpu_numa_info", "gauge",
    "The NUMA node the GPU's PCI device hangs off (sysfs numa_node); absent where the"
    " platform does not say; always 1.",
    (*_GPU, "numa_node"))
ENGINE_NUMA_ALIGNED = Spec(
    "inference_node_engine_numa_aligned", "gauge",
    "1 when the engine's processes on this GPU may run only on CPUs of the GPU's NUMA node"
    " (Cpus_allowed_list), else 0; absent when the node or the processes' CPUs are unknown.",
    (*_GPU, "engine", "endpoint"))

MODES = ("unknown", "none", "passthrough", "time_sliced", "vgpu", "mig")
"""GPU sharing modes, weakest first: the node reports the strongest of its GPUs'."""
_VGPU = frozenset({"vgpu", "host_vgpu", "host_vsga"})


def normalise_bus_id(bus_id: str) -> str:
    """NVML's PCI bus id (``00000000:18:00.0``) as sysfs names it (``0000:18:00.0``); empty
    when it is not one."""
    domain, sep, rest = bus_id.strip().lower().partition(":")
    try:
        return f"{int(domain, 16):04x}:{rest}" if sep and rest else ""
    except ValueError:
        return ""


def gpu_mode(gpu: GpuFacts, engines: int, foreign: int | None) -> str:
    """How a GPU is shared, given the known engines on it and its foreign processes.

    MIG wins (hardware partitions), then a vGPU (the hypervisor time-slices it among guests),
    then time-slicing seen from here: two or more tenants, where a tenant is one engine (all
    its processes together) or one foreign process. Then NVML's own mode.
    """
    if gpu.mig:
        return "mig"
    if gpu.virtualization in _VGPU:
        return "vgpu"
    if engines + (foreign or 0) >= 2:
        return "time_sliced"
    return gpu.virtualization if gpu.virtualization in ("none", "passthrough") else "unknown"


def fingerprint(host: HostFacts | None, gpus: Sequence[GpuFacts] | None,
                engines: Sequence[EngineFacts], engines_up: bool, out: Families) -> None:
    """Add the fingerprint's series. ``gpus`` is None while the GPU collector is not up;
    ``engines_up`` says whether every engine endpoint answered its last poll (a down one's
    processes cannot be told from foreign ones, nor can those of an endpoint whose
    processes were not found)."""
    local = [e for e in engines if e.pids]
    owned = frozenset().union(*(e.pids for e in local))
    # An endpoint whose processes were not found (not on this host as the daemon sees it,
    # or behind a port mapping) may own any unclaimed process: then none is called foreign.
    known = engines_up and len(local) == len(engines)
    modes = []
    for gpu in gpus or ():
        mine = [e for e in local if e.pids & gpu.pids]
        unclaimed = gpu.pids - owned
        foreign = len(unclaimed) if gpu.processes_listed and (known or not unclaimed) \
            else None
        if foreign is not None:
            out.add(FOREIGN_PROCESSES.name, gpu.labels, float(foreign))
        mode = gpu_mode(gpu, len(mine), foreign)
        modes.append(mode)
        out.add(GPU_VIRTUALIZATION.name, f"{gpu.labels},{labelstr(mode=mode)}", 1.0)
        if host is not None:
            _numa(host, gpu, mine, out)
    if host is None:
        return
    strongest = max(modes, key=MODES.index) if modes else \
        ("none" if gpus is not None else "unknown")
    out.add(ENVIRONMENT_INFO.name, labelstr(
        environment="container" if host.container != "none" else host.virtualization,
        virtualization=host.virtualization, hypervisor=host.hypervisor,
        container=host.container, gpu_virtualization=strongest), 1.0)


def _numa(host: HostFacts, gpu: GpuFacts, mine: list[EngineFacts], out: Families) -> None:
    """The GPU's NUMA node, and whether each engine's processes on it stay on that node."""
    bus = normalise_bus_id(gpu.pci_bus_id)
    node = host.pci_numa.get(bus) if bus else None
    if node is None:
        return
    out.add(GPU_NUMA.name, f"{gpu.labels},{labelstr(numa_node=str(node))}", 1.0)
    cpus = host.numa_cpus.get(node)
    if not cpus:
        return
    for e in mine:
        allowed = [e.cpus_allowed[p] for p in sorted(e.pids & gpu.pids) if p in e.cpus_allowed]
        if allowed:
            out.add(ENGINE_NUMA_ALIGNED.name,
                    f"{gpu.labels},{labelstr(engine=e.engine, endpoint=e.endpoint)}",
                    1.0 if all(a <= cpus for a in allowed) else 0.0)
