"""The GPU collector: per-GPU readings through NVML (the ``nvidia-ml-py`` bindings).

NVML is initialised and the device handles are taken once, not per poll; so are the readings
that cannot change while the driver is loaded (the PCIe link maxima). A field a GPU does
not support is absent, never NaN or a made-up 0. A GPU that falls off the bus is reported lost
and the others go on. Every poll runs in a thread of its own and is waited for only until the
poll timeout: a stalled driver call marks the source down but never holds the worker, a
scrape or a stop. XID errors are counted from NVML's event API in a separate thread.

The per-GPU readings are data tables, :data:`~exporter.collectors.gpu_readings.READINGS`
(each poll) and :data:`~exporter.collectors.gpu_readings.STATIC` (once), beside the
:class:`Spec` constant of every family this collector emits.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any

from exporter import logs
from exporter.collectors.base import PollOutput, SourceError
from exporter.collectors.gpu_readings import (
    GPUS,
    GPUS_EXPECTED,
    HOURLY_COST,
    INFO,
    LOST,
    MEMORY_TOTAL,
    MEMORY_USED,
    NVML_CALLS,
    NVML_ERRORS,
    POWER,
    READINGS,
    STATIC,
    VIRTUALIZATION,
    XID_ERRORS,
    Row,
    resolve,
)
from exporter.cost import Pricing
from exporter.derive.join import Facts, GpuFacts
from exporter.exposition.family import Spec
from exporter.exposition.lines import Families, labelstr
from exporter.threads import DaemonExecutor

__all__ = ["NvmlSource"]

_XID_EVENT = 0x8  # nvmlEventTypeXidCriticalError
_EVENT_WAIT_MS = 500

# -- the families -------------------------------------------------------------------------------

class _GpuLostError(Exception):
    """The GPU answered NVML_ERROR_GPU_IS_LOST (or vanished)."""


@dataclass(slots=True)
class _Gpu:
    index: int
    handle: Any
    uuid: str
    labels: str
    info: str
    lost: bool = False
    unsupported: set[str] = field(default_factory=set)
    """Readings this GPU answered "not supported" (not asked again)."""
    mig: list[tuple[str, Any]] = field(default_factory=list)
    """(labels, handle) of each MIG device."""
    static: dict[Row, float] = field(default_factory=dict)
    """The value of each row of :data:`STATIC` this GPU has answered."""
    cost: tuple[str, float] | None = None
    """The labels and value of its hourly cost series; None when no price applies."""
    facts: GpuFacts = field(default_factory=lambda: GpuFacts(""))
    """What the join reads of it that does not change (bus id, MIG and virtualisation)."""


class Nvml:
    """The thin seam over pynvml: counts calls, maps error codes to outcomes."""

    def __init__(self) -> None:
        import pynvml

        self.lib = pynvml
        self.calls = 0
        self.errors: dict[str, int] = {}
        self._lock = threading.Lock()
        self.unsupported = {pynvml.NVML_ERROR_NOT_SUPPORTED,
                            pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
                            pynvml.NVML_ERROR_NOT_FOUND}
        self.lost = {pynvml.NVML_ERROR_GPU_IS_LOST}

    def call(self, name: str, *args: Any, count: bool = True) -> Any:
        """Call ``pynvml.<name>``; NVMLError propagates. ``count`` says whether it is one of
        the poll's calls (the XID watcher's waits are not)."""
        if count:
            with self._lock:
                self.calls += 1
        return getattr(self.lib, name)(*args)

    def read(self, name: str, *args: Any, skip: set[str] | None = None) -> Any:
        """A device reading: None when not supported; _GpuLostError when the GPU is gone.

        With ``skip`` (a GPU's set of readings it does not support), a reading that once
        answered "not supported" is not asked for again: that answer does not change.
        """
        key = f"{name}{args[1:]!r}"  # the function and its arguments but the handle
        if skip is not None and key in skip:
            return None
        try:
            return self.call(name, *args)
        except self.lib.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code in self.unsupported:
                if skip is not None and code != self.lib.NVML_ERROR_NOT_FOUND:
                    skip.add(key)
                return None
            if code in self.lost:
                raise _GpuLostError(str(exc)) from None
            key = type(exc).__name__.removeprefix("NVMLError_")
            with self._lock:
                self.errors[key] = self.errors.get(key, 0) + 1
            return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlSource:
    """All GPUs of the node, through NVML."""

    collector = "gpu"
    name = "nvml"
    target = "libnvidia-ml.so.1"

    def __init__(self, timeout: float, expected: int | None = None,
                 nvml: Callable[[], Nvml] = Nvml, pricing: Pricing | None = None) -> None:
        self.timeout = timeout
        self.expected = expected
        self.pricing = pricing or Pricing()
        self._factory = nvml
        self._nvml: Nvml | None = None
        self._gpus: list[_Gpu] = []
        self._xids: dict[tuple[str, str], int] = {}
        self._xid_lock = threading.Lock()
        self._stop = threading.Event()
        self._events: threading.Thread | None = None
        # A daemon thread: a call stuck in the driver never keeps a stopped daemon alive.
        self._pool = DaemonExecutor("nvml")
        self._pending: Future[PollOutput] | None = None
        self.log = logs.get("gpu")

    # -- the poll, bounded in time ------------------------------------------------------------

    def poll(self) -> PollOutput:
        if self._pending is not None and not self._pending.done():
            raise SourceError("timeout", "an earlier NVML call has still not returned")
        self._pending = self._pool.submit(self._poll)
        try:
            return self._pending.result(timeout=self.timeout)
        except FutureTimeout:
            raise SourceError("timeout", f"NVML did not answer within {self.timeout:g}s") \
                from None

    def _poll(self) -> PollOutput:
        if self._nvml is None:
            self._init()
        nvml = self._nvml
        assert nvml is not None
        out = Families()
        facts: list[GpuFacts] = []
        for gpu in self._gpus:
            if not gpu.lost:
                try:
                    facts.append(self._read(nvml, gpu, out))
                except _GpuLostError as exc:
                    gpu.lost = True
                    self.log.error("GPU lost", gpu=gpu.index, uuid=gpu.uuid, error=str(exc))
            out.add(INFO.name, gpu.info, 1.0)
            out.add(LOST.name, gpu.labels, 1.0 if gpu.lost else 0.0)
            if gpu.cost is not None:  # a lost GPU is still paid for
                out.add(HOURLY_COST.name, *gpu.cost)
        out.add(GPUS.name, "", float(sum(not g.lost for g in self._gpus)))
        if self.expected is not None:
            out.add(GPUS_EXPECTED.name, "", float(self.expected))
        with self._xid_lock:
            for (gpu_labels, xid), count in sorted(self._xids.items()):
                out.add(XID_ERRORS.name, f'{gpu_labels},xid="{xid}"', float(count))
        out.add(NVML_CALLS.name, "", float(nvml.calls))
        for code, count in sorted(nvml.errors.items()):
            out.add(NVML_ERRORS.name, labelstr(error=code), float(count))
        return PollOutput(out, facts=Facts(gpus=tuple(facts)))

    def _init(self) -> None:
        try:
            nvml = self._factory()
            nvml.call("nvmlInit")
        except Exception as exc:  # missing library, driver not loaded, bad driver...
            raise SourceError("nvml_init", f"NVML is not available: {exc}") from None
        lib = nvml.lib
        driver = _text(nvml.read("nvmlSystemGetDriverVersion") or "")
        cuda_raw = nvml.read("nvmlSystemGetCudaDriverVersion")
        cuda = f"{cuda_raw // 1000}.{cuda_raw % 1000 // 10}" if cuda_raw else ""
        gpus = []
        for index in range(nvml.call("nvmlDeviceGetCount")):
            handle = nvml.call("nvmlDeviceGetHandleByIndex", index)
            uuid = _text(nvml.read("nvmlDeviceGetUUID", handle) or "")
            name = _text(nvml.read("nvmlDeviceGetName", handle) or "")
            pci = nvml.read("nvmlDeviceGetPciInfo", handle)
            bus = _text(pci.busId) if pci is not None else ""
            mig = nvml.read("nvmlDeviceGetMigMode", handle)
            mig_on = bool(mig and mig[0] == lib.NVML_DEVICE_MIG_ENABLE)
            virt = nvml.read("nvmlDeviceGetVirtualizationMode", handle)
            virt_mode = VIRTUALIZATION.get(virt, "unknown") if virt is not None else ""
            labels = labelstr(gpu=str(index), uuid=uuid)
            info = labels + "," + labelstr(
                name=name, driver_version=driver, cuda_version=cuda, pci_bus_id=bus,
                mig_mode="enabled" if mig_on else ("disabled" if mig is not None else ""),
                virtualization_mode=virt_mode)
            gpu = _Gpu(index, handle, uuid, labels, info)
            gpu.facts = GpuFacts(labels, pci_bus_id=bus, mig=mig_on, virtualization=virt_mode)
            hourly = self.pricing.of(name)
            if hourly is not None:
                gpu.cost = (f"{labels},{labelstr(currency=self.pricing.currency)}", hourly)
            with contextlib.suppress(_GpuLostError):  # the first poll reports it lost
                self._static(nvml, gpu)
            if mig_on:
                gpu.mig = self._mig_devices(nvml, gpu)
            gpus.append(gpu)
        self._nvml, self._gpus = nvml, gpus
        self.log.info("NVML initialised", gpus=len(gpus), driver=driver, cuda=cuda)
        self._stop.clear()
        self._events = threading.Thread(target=self._watch_xids, name="nvml-events",
                                        daemon=True)
        self._events.start()

    @staticmethod
    def _mig_devices(nvml: Nvml, gpu: _Gpu) -> list[tuple[str, Any]]:
        found = []
        for i in range(nvml.read("nvmlDeviceGetMaxMigDeviceCount", gpu.handle) or 0):
            handle = nvml.read("nvmlDeviceGetMigDeviceHandleByIndex", gpu.handle, i)
            if handle is None:
                continue
            instance = nvml.read("nvmlDeviceGetGpuInstanceId", handle)
            found.append((f'{gpu.labels},gpu_instance="{instance}"', handle))
        return found

    # -- one GPU --------------------------------------------------------------------------------

    def _read(self, nvml: Nvml, gpu: _Gpu, out: Families) -> GpuFacts:
        """Add one GPU's series; return what the engine attribution needs of it."""
        values = self._readings(nvml, gpu, out)
        self._static(nvml, gpu)
        for row, value in gpu.static.items():
            out.add(row.family.name, f"{gpu.labels},{row.label}" if row.label else gpu.labels,
                    value)
        self._mig_memory(nvml, gpu, out)
        procs = nvml.read("nvmlDeviceGetComputeRunningProcesses", gpu.handle,
                          skip=gpu.unsupported)
        used, total = values.get(MEMORY_USED), values.get(MEMORY_TOTAL)
        return replace(
            gpu.facts,
            pids=frozenset(p.pid for p in procs) if procs is not None else frozenset(),
            processes_listed=procs is not None,
            power_watts=values.get(POWER),
            memory_used_ratio=used / total if used is not None and total else None)

    @staticmethod
    def _readings(nvml: Nvml, gpu: _Gpu, out: Families) -> dict[Spec, float]:
        """Walk :data:`READINGS` for one GPU; return the value of each family exported
        without a label of its own (power, memory...)."""
        answers: dict[str, Any] = {}  # by call and arguments: rows sharing a call share it
        values: dict[Spec, float] = {}
        for row in READINGS:
            args = resolve(nvml.lib, row.args)
            key = f"{row.call}{args!r}"
            if key in answers:
                answer = answers[key]
            else:
                answer = nvml.read(row.call, gpu.handle, *args, skip=gpu.unsupported)
                if answer is None and row.fallback:
                    answer = nvml.read(row.fallback, gpu.handle, *args, skip=gpu.unsupported)
                answers[key] = answer
            value = row.convert(answer) if answer is not None else None
            if value is None:
                continue
            out.add(row.family.name, f"{gpu.labels},{row.label}" if row.label else gpu.labels,
                    value)
            if not row.label:
                values[row.family] = value
        return values

    @staticmethod
    def _static(nvml: Nvml, gpu: _Gpu) -> None:
        """Ask the rows of :data:`STATIC` the GPU has not answered yet: all of them when NVML
        is initialised, later only one that failed with an error (one not supported is in
        ``gpu.unsupported``, so not asked again)."""
        for row in STATIC:
            if row in gpu.static:
                continue
            answer = nvml.read(row.call, gpu.handle, *resolve(nvml.lib, row.args),
                               skip=gpu.unsupported)
            value = row.convert(answer) if answer is not None else None
            if value is not None:
                gpu.static[row] = value

    @staticmethod
    def _mig_memory(nvml: Nvml, gpu: _Gpu, out: Families) -> None:
        """Each MIG device's memory, with its gpu_instance label."""
        for mig_labels, mig_handle in gpu.mig:
            mem = nvml.read("nvmlDeviceGetMemoryInfo", mig_handle)
            if mem is not None:
                out.add(MEMORY_USED.name, mig_labels, float(mem.used))
                out.add(MEMORY_TOTAL.name, mig_labels, float(mem.total))

    # -- XID events -------------------------------------------------------------------------

    def _watch_xids(self) -> None:
        nvml = self._nvml
        assert nvml is not None
        try:
            events = nvml.call("nvmlEventSetCreate", count=False)
        except Exception as exc:
            self.log.warning("XID events unavailable", error=str(exc))
            return
        registered = 0  # GPUs whose XID events the set receives
        for gpu in self._gpus:
            try:
                nvml.call("nvmlDeviceRegisterEvents", gpu.handle, _XID_EVENT, events,
                          count=False)
                registered += 1
            except Exception as exc:
                self.log.info("XID events not supported", gpu=gpu.index, error=str(exc))
        timeout_code = nvml.lib.NVML_ERROR_TIMEOUT
        while not self._stop.is_set() and registered:
            try:
                data = nvml.call("nvmlEventSetWait_v2", events, _EVENT_WAIT_MS, count=False)
            except nvml.lib.NVMLError as exc:
                if getattr(exc, "value", None) != timeout_code:
                    self.log.warning("waiting for XID events failed", error=str(exc))
                    self._stop.wait(1.0)
                continue
            source = self._gpu_of(nvml, data.device)
            if source is None:
                continue
            key = (source.labels, str(data.eventData))
            with self._xid_lock:
                self._xids[key] = self._xids.get(key, 0) + 1
            self.log.warning("XID error", gpu=source.index, uuid=source.uuid, xid=data.eventData)
        with contextlib.suppress(Exception):  # shutting down anyway
            nvml.call("nvmlEventSetFree", events, count=False)

    def _gpu_of(self, nvml: Nvml, handle: Any) -> _Gpu | None:
        """The GPU an event came from (handles are compared by the UUID they report)."""
        try:
            uuid = _text(nvml.call("nvmlDeviceGetUUID", handle, count=False))
        except nvml.lib.NVMLError:
            return None
        return next((g for g in self._gpus if g.uuid == uuid), None)

    # -- source protocol -----------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._nvml is not None and (self._pending is None or self._pending.done()):
            with contextlib.suppress(Exception):  # the driver may be gone already
                self._nvml.call("nvmlShutdown")
