"""The GPU collector: per-GPU readings through NVML (the ``nvidia-ml-py`` bindings).

NVML is initialised and the device handles are taken once, not per poll. A field a GPU does
not support is absent, never NaN or a made-up 0. A GPU that falls off the bus is reported lost
and the others go on. Every poll runs in a thread of its own and is waited for only until the
poll timeout: a stalled driver call marks the source down but never holds the worker, a
scrape or a stop. XID errors are counted from NVML's event API in a separate thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from exporter import logs
from exporter.collectors.base import Families, PollOutput, SourceError, labelstr
from exporter.threads import DaemonExecutor

__all__ = ["NvmlSource"]

G = "inference_node_gpu_"
THROTTLE_REASONS = (
    (0x1, "gpu_idle"), (0x2, "applications_clocks_setting"), (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"), (0x10, "sync_boost"), (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"), (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
VIRTUALIZATION = {0: "none", 1: "passthrough", 2: "vgpu", 3: "host_vgpu", 4: "host_vsga"}
_XID_EVENT = 0x8  # nvmlEventTypeXidCriticalError
_EVENT_WAIT_MS = 500


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
                 nvml: Callable[[], Nvml] = Nvml) -> None:
        self.timeout = timeout
        self.expected = expected
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
        facts: list[dict[str, Any]] = []
        for gpu in self._gpus:
            if not gpu.lost:
                try:
                    facts.append(self._read(nvml, gpu, out))
                except _GpuLostError as exc:
                    gpu.lost = True
                    self.log.error("GPU lost", gpu=gpu.index, uuid=gpu.uuid, error=str(exc))
            out.add(G + "info", gpu.info, 1.0)
            out.add(G + "lost", gpu.labels, 1.0 if gpu.lost else 0.0)
        out.add("inference_node_gpus", "", float(sum(not g.lost for g in self._gpus)))
        if self.expected is not None:
            out.add("inference_node_gpus_expected", "", float(self.expected))
        with self._xid_lock:
            for (gpu_labels, xid), count in sorted(self._xids.items()):
                out.add(G + "xid_errors_total", f'{gpu_labels},xid="{xid}"', float(count))
        out.add("inference_node_exporter_nvml_calls_total", "", float(nvml.calls))
        for code, count in sorted(nvml.errors.items()):
            out.add("inference_node_exporter_nvml_errors_total", labelstr(error=code),
                    float(count))
        return PollOutput(out, facts={"gpus": facts})

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
            labels = labelstr(gpu=str(index), uuid=uuid)
            info = labels + "," + labelstr(
                name=name, driver_version=driver, cuda_version=cuda, pci_bus_id=bus,
                mig_mode="enabled" if mig_on else ("disabled" if mig is not None else ""),
                virtualization_mode=VIRTUALIZATION.get(virt, "unknown") if virt is not None
                else "")
            gpu = _Gpu(index, handle, uuid, labels, info)
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

    def _read(self, nvml: Nvml, gpu: _Gpu, out: Families) -> dict[str, Any]:
        """Add one GPU's series; return what the engine attribution needs of it."""
        h, labels, lib = gpu.handle, gpu.labels, nvml.lib
        skip = gpu.unsupported

        def read(name: str, *args: Any) -> Any:
            return nvml.read(name, *args, skip=skip)

        facts: dict[str, Any] = {"labels": labels, "pids": frozenset()}
        mem = read("nvmlDeviceGetMemoryInfo", h)
        if mem is not None:
            out.add(G + "memory_used_bytes", labels, float(mem.used))
            out.add(G + "memory_total_bytes", labels, float(mem.total))
            facts["memory_used_ratio"] = mem.used / mem.total if mem.total else None
        util = read("nvmlDeviceGetUtilizationRates", h)
        if util is not None:
            out.add(G + "utilization_ratio", labels, util.gpu / 100)
            out.add(G + "memory_utilization_ratio", labels, util.memory / 100)
        power = read("nvmlDeviceGetPowerUsage", h)
        if power is not None:
            out.add(G + "power_watts", labels, power / 1000)
            facts["power_watts"] = power / 1000
        energy = read("nvmlDeviceGetTotalEnergyConsumption", h)
        if energy is not None:
            out.add(G + "energy_joules_total", labels, energy / 1000)
        temp = read("nvmlDeviceGetTemperature", h, lib.NVML_TEMPERATURE_GPU)
        if temp is not None:
            out.add(G + "temperature_celsius", labels, float(temp))
        for clock, name in ((lib.NVML_CLOCK_SM, "sm_clock_hertz"),
                            (lib.NVML_CLOCK_MEM, "memory_clock_hertz")):
            mhz = read("nvmlDeviceGetClockInfo", h, clock)
            if mhz is not None:
                out.add(G + name, labels, mhz * 1e6)
        reasons = read("nvmlDeviceGetCurrentClocksEventReasons", h)
        if reasons is None:  # drivers before 535 name it "throttle reasons"
            reasons = read("nvmlDeviceGetCurrentClocksThrottleReasons", h)
        if reasons is not None:
            for bit, reason in THROTTLE_REASONS:
                out.add(G + "throttle_reason", f'{labels},reason="{reason}"',
                        1.0 if reasons & bit else 0.0)
        for kind, error_type in (("corrected", lib.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                                 ("uncorrected", lib.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)):
            count = read("nvmlDeviceGetTotalEccErrors", h, error_type, lib.NVML_VOLATILE_ECC)
            if count is not None:
                out.add(G + "ecc_errors_total", f'{labels},type="{kind}"', float(count))
        rows = read("nvmlDeviceGetRemappedRows", h)
        if rows is not None:
            corrected, uncorrected, pending, failed = rows
            out.add(G + "remapped_rows_total", f'{labels},type="corrected"', float(corrected))
            out.add(G + "remapped_rows_total", f'{labels},type="uncorrected"', float(uncorrected))
            out.add(G + "remapped_rows_pending", labels, float(bool(pending)))
            out.add(G + "remapped_rows_failed", labels, float(bool(failed)))
        for counter, direction in ((lib.NVML_PCIE_UTIL_TX_BYTES, "tx"),
                                   (lib.NVML_PCIE_UTIL_RX_BYTES, "rx")):
            kbps = read("nvmlDeviceGetPcieThroughput", h, counter)
            if kbps is not None:
                out.add(G + "pcie_throughput_bytes_per_second",
                        f'{labels},direction="{direction}"', kbps * 1024.0)
        gen = read("nvmlDeviceGetCurrPcieLinkGeneration", h)
        if gen is not None:
            out.add(G + "pcie_link_generation", labels, float(gen))
        width = read("nvmlDeviceGetCurrPcieLinkWidth", h)
        if width is not None:
            out.add(G + "pcie_link_width", labels, float(width))
        for cause, reason in ((lib.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
                               "single_bit_ecc"),
                              (lib.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR,
                               "double_bit_ecc")):
            pages = read("nvmlDeviceGetRetiredPages", h, cause)
            if pages is not None:
                out.add(G + "retired_pages", f'{labels},cause="{reason}"', float(len(pages)))
        pending = read("nvmlDeviceGetRetiredPagesPendingStatus", h)
        if pending is not None:
            out.add(G + "retired_pages_pending", labels,
                    1.0 if pending == lib.NVML_FEATURE_ENABLED else 0.0)
        self._nvlink(nvml, h, labels, out, skip)
        for mig_labels, mig_handle in gpu.mig:
            mem = nvml.read("nvmlDeviceGetMemoryInfo", mig_handle)
            if mem is not None:
                out.add(G + "memory_used_bytes", mig_labels, float(mem.used))
                out.add(G + "memory_total_bytes", mig_labels, float(mem.total))
        procs = read("nvmlDeviceGetComputeRunningProcesses", h)
        if procs is not None:
            facts["pids"] = frozenset(p.pid for p in procs)
        return facts

    @staticmethod
    def _nvlink(nvml: Nvml, handle: Any, labels: str, out: Families, skip: set[str]) -> None:
        lib = nvml.lib
        fields = [(lib.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, 0xFFFFFFFF),
                  (lib.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, 0xFFFFFFFF)]
        values = nvml.read("nvmlDeviceGetFieldValues", handle, fields, skip=skip)
        if values is None:
            return
        for value, direction in zip(values, ("tx", "rx"), strict=False):
            if value.nvmlReturn == lib.NVML_SUCCESS:
                kib = value.value.ullVal
                out.add(G + "nvlink_bytes_total", f'{labels},direction="{direction}"',
                        kib * 1024.0)

    # -- XID events -------------------------------------------------------------------------

    def _watch_xids(self) -> None:
        nvml = self._nvml
        assert nvml is not None
        try:
            events = nvml.call("nvmlEventSetCreate", count=False)
        except Exception as exc:
            self.log.warning("XID events unavailable", error=str(exc))
            return
        by_handle = {}
        for gpu in self._gpus:
            try:
                nvml.call("nvmlDeviceRegisterEvents", gpu.handle, _XID_EVENT, events,
                          count=False)
                by_handle[id(gpu.handle)] = gpu
            except Exception as exc:
                self.log.info("XID events not supported", gpu=gpu.index, error=str(exc))
        timeout_code = nvml.lib.NVML_ERROR_TIMEOUT
        while not self._stop.is_set() and by_handle:
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

    def health(self, up: bool, last_success: float | None, families: Families) -> None:
        pass

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._nvml is not None and (self._pending is None or self._pending.done()):
            with contextlib.suppress(Exception):  # the driver may be gone already
                self._nvml.call("nvmlShutdown")
