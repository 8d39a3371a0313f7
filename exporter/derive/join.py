"""What the GPU <-> engine join reads: typed records each source hands over with its poll."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["NO_FACTS", "EngineFacts", "Facts", "GpuFacts", "HostFacts"]


@dataclass(frozen=True, slots=True)
class GpuFacts:
    """One GPU at one poll, as the join needs it."""

    labels: str
    """``gpu="0",uuid="..."``, rendered."""
    pids: frozenset[int] = frozenset()
    """NVML's running compute processes on the GPU."""
    power_watts: float | None = None
    memory_used_ratio: float | None = None
    """VRAM used over total; the memory pressure when no engine is known on the GPU."""
    processes_listed: bool = True
    """Whether NVML listed the compute processes (``pids`` is then the whole list)."""
    pci_bus_id: str = ""
    """NVML's PCI bus id (``00000000:18:00.0``); empty when unknown."""
    mig: bool = False
    """MIG mode enabled."""
    virtualization: str = ""
    """NVML's virtualisation mode (none, passthrough, vgpu, host_vgpu...); empty when
    unknown."""


@dataclass(frozen=True, slots=True)
class EngineFacts:
    """One engine endpoint at one poll, summed over its models and ranks."""

    engine: str
    """The adapter's kind (the ``engine`` label)."""
    endpoint: str
    pids: frozenset[int] = frozenset()
    """The endpoint's listener and its descendants; empty when not on this host."""
    generation_tokens_per_second: Mapping[str, float] = field(default_factory=dict)
    """By window label."""
    preemptions_per_second: Mapping[str, float] = field(default_factory=dict)
    kv_cache_usage_ratio: float | None = None
    """The highest KV-cache usage among the endpoint's engines."""
    cpus_allowed: Mapping[int, frozenset[int]] = field(default_factory=dict)
    """The CPUs each of ``pids`` may run on (``Cpus_allowed_list``), where readable."""


@dataclass(frozen=True, slots=True)
class HostFacts:
    """The host under the engines, as the platform fingerprint needs it."""

    virtualization: str
    """bare_metal or virtual_machine."""
    hypervisor: str
    container: str
    """The container runtime the daemon runs under, or none."""
    numa_cpus: Mapping[int, frozenset[int]] = field(default_factory=dict)
    """Each NUMA node's CPUs; empty without NUMA information."""
    pci_numa: Mapping[str, int] = field(default_factory=dict)
    """The NUMA node of each NVIDIA PCI device, by normalised bus id (``0000:18:00.0``);
    devices whose node is unknown (-1) are left out."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What one poll hands to the join: GPUs (the gpu collector), one engine endpoint or the
    host."""

    gpus: tuple[GpuFacts, ...] = ()
    engine: EngineFacts | None = None
    host: HostFacts | None = None


NO_FACTS = Facts()
