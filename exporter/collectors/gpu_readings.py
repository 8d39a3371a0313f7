"""The GPU collector's data: every family it emits, and the tables of per-GPU readings.

Each row of :data:`READINGS` names the NVML call, its arguments after the handle (strings name
pynvml constants), the family it feeds, how NVML's answer converts and the label the row
adds, as dcgm-exporter keeps its counters in one list. Rows that share a call and arguments
share one call per GPU per poll. :data:`STATIC` holds the readings that do not change while
the driver is loaded: they are asked once, with the GPU's other static facts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exporter.exposition.family import Spec

_GPU = ("gpu", "uuid")
_GPUM = ("gpu", "uuid", "gpu_instance")

GPUS = Spec("inference_node_gpus", "gauge",
            "GPUs NVML reports on this node, lost ones left out.", ())
GPUS_EXPECTED = Spec(
    "inference_node_gpus_expected", "gauge",
    "GPUs this node should have (--gpu.expected-count); absent when not configured.", ())
INFO = Spec("inference_node_gpu_info", "gauge",
            "GPU model, driver and CUDA versions, PCI bus id, MIG mode and NVML's"
            " virtualisation mode (none = bare metal, passthrough, vgpu = guest, host_vgpu);"
            " always 1.",
            (*_GPU, "name", "driver_version", "cuda_version", "pci_bus_id", "mig_mode",
             "virtualization_mode"))
LOST = Spec("inference_node_gpu_lost", "gauge",
            "1 once NVML reports the GPU lost (fallen off the bus), else 0.", _GPU)
MEMORY_USED = Spec("inference_node_gpu_memory_used_bytes", "gauge",
                   "GPU memory in use; MIG devices carry gpu_instance.", _GPUM)
MEMORY_TOTAL = Spec("inference_node_gpu_memory_total_bytes", "gauge",
                    "GPU memory in all; MIG devices carry gpu_instance.", _GPUM)
UTILIZATION = Spec("inference_node_gpu_utilization_ratio", "gauge",
                   "Share of the last sample period a kernel ran on the GPU, 0..1.", _GPU,
                   live=True)
MEMORY_UTILIZATION = Spec(
    "inference_node_gpu_memory_utilization_ratio", "gauge",
    "Share of the last sample period device memory was read or written, 0..1.", _GPU,
    live=True)
POWER = Spec("inference_node_gpu_power_watts", "gauge", "Power draw of the GPU board.", _GPU)
ENERGY = Spec("inference_node_gpu_energy_joules_total", "counter",
              "Energy the GPU used since the driver loaded.", _GPU)
TEMPERATURE = Spec("inference_node_gpu_temperature_celsius", "gauge",
                   "GPU core temperature.", _GPU)
SM_CLOCK = Spec("inference_node_gpu_sm_clock_hertz", "gauge",
                "Current clock of the streaming multiprocessors.", _GPU)
MEMORY_CLOCK = Spec("inference_node_gpu_memory_clock_hertz", "gauge",
                    "Current clock of the device memory.", _GPU)
THROTTLE_REASON = Spec(
    "inference_node_gpu_throttle_reason", "gauge",
    "1 while the clocks are held down for that reason (sw_power_cap,"
    " hw_thermal_slowdown, hw_slowdown, sync_boost...), else 0.", (*_GPU, "reason"))
ECC_ERRORS = Spec("inference_node_gpu_ecc_errors_total", "counter",
                  "ECC memory errors since the driver loaded, corrected or uncorrected.",
                  (*_GPU, "type"))
REMAPPED_ROWS = Spec("inference_node_gpu_remapped_rows_total", "counter",
                     "HBM rows remapped after corrected or uncorrected errors.",
                     (*_GPU, "type"))
REMAPPED_ROWS_PENDING = Spec("inference_node_gpu_remapped_rows_pending", "gauge",
                             "1 while a row remapping waits for a GPU reset.", _GPU)
REMAPPED_ROWS_FAILED = Spec("inference_node_gpu_remapped_rows_failed", "gauge",
                            "1 once a row remapping has failed.", _GPU)
RETIRED_PAGES = Spec(
    "inference_node_gpu_retired_pages", "gauge",
    "Memory pages retired after ECC errors, by cause (single_bit_ecc, double_bit_ecc);"
    " GPUs before Ampere (later ones remap rows instead).", (*_GPU, "cause"))
RETIRED_PAGES_PENDING = Spec("inference_node_gpu_retired_pages_pending", "gauge",
                             "1 while a page retirement waits for a GPU reset.", _GPU)
PCIE_THROUGHPUT = Spec(
    "inference_node_gpu_pcie_throughput_bytes_per_second", "gauge",
    "PCIe traffic over NVML's last 20 ms sample, by direction (tx, rx).",
    (*_GPU, "direction"), live=True)
PCIE_LINK_GENERATION = Spec("inference_node_gpu_pcie_link_generation", "gauge",
                            "Current PCIe link generation.", _GPU)
PCIE_LINK_WIDTH = Spec("inference_node_gpu_pcie_link_width", "gauge",
                       "Current PCIe link width (lanes).", _GPU)
PCIE_LINK_MAX_GENERATION = Spec(
    "inference_node_gpu_pcie_link_max_generation", "gauge",
    "Maximum PCIe link generation this GPU and system support.", _GPU)
PCIE_LINK_MAX_WIDTH = Spec(
    "inference_node_gpu_pcie_link_max_width", "gauge",
    "Maximum PCIe link width (lanes) this GPU and system support.", _GPU)
NVLINK_BYTES = Spec("inference_node_gpu_nvlink_bytes_total", "counter",
                    "NVLink data bytes over all links, by direction (tx, rx).",
                    (*_GPU, "direction"))
XID_ERRORS = Spec("inference_node_gpu_xid_errors_total", "counter",
                  "XID errors NVML's event API reported since the daemon started, by XID"
                  " code.", (*_GPU, "xid"))
HOURLY_COST = Spec(
    "inference_node_gpu_hourly_cost", "gauge",
    "Price of one hour of the GPU, in currency units per hour ([cost] settings: the entry"
    " for its NVML name, else gpu_hourly_price); a MIG-enabled GPU is priced whole. Absent"
    " when no price applies.", (*_GPU, "currency"))
NVML_CALLS = Spec("inference_node_exporter_nvml_calls_total", "counter",
                  "NVML calls the daemon made.", ())
NVML_ERRORS = Spec(
    "inference_node_exporter_nvml_errors_total", "counter",
    "NVML calls that failed with an error other than not-supported or GPU-lost.", ("error",))

# -- the per-GPU readings ---------------------------------------------------------------------

THROTTLE_REASONS = (
    (0x1, "gpu_idle"), (0x2, "applications_clocks_setting"), (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"), (0x10, "sync_boost"), (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"), (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
VIRTUALIZATION = {0: "none", 1: "passthrough", 2: "vgpu", 3: "host_vgpu", 4: "host_vsga"}
_FEATURE_ENABLED = 1  # NVML_FEATURE_ENABLED
_SUCCESS = 0  # NVML_SUCCESS
_ALL_LINKS = 0xFFFFFFFF  # a field value's scopeId: every NVLink together

Convert = Callable[[Any], float | None]
"""NVML's answer to the exported value; None leaves the series out."""


@dataclass(frozen=True, slots=True)
class Row:
    """One series a GPU reading yields: ``family{gpu,uuid[,label]} convert(answer)``.

    Rows with the same call and arguments share one call per GPU and poll.
    """

    call: str
    """The pynvml function, called with the GPU's handle, then ``args``."""
    args: tuple[Any, ...]
    """The arguments after the handle; a string names a pynvml constant (nested in tuples
    too), resolved when called."""
    family: Spec
    convert: Convert
    label: str = ""
    """The label the row adds after gpu and uuid, rendered (``type="corrected"``)."""
    fallback: str = ""
    """The call asked instead when ``call`` is not supported."""


def _per_mille(value: Any) -> float:  # mW -> W, mJ -> J
    return float(value / 1000)


def _percent(value: Any) -> float:
    return float(value / 100)


def _mhz(value: Any) -> float:
    return float(value * 1e6)


def _kib(value: Any) -> float:  # KiB (or KB/s, as NVML counts PCIe) -> bytes
    return float(value * 1024.0)


def _flag(value: Any) -> float:
    return float(bool(value))


def _enabled(value: Any) -> float:
    return 1.0 if value == _FEATURE_ENABLED else 0.0


def _count(pages: Any) -> float:
    """Retired pages: NVML lists their addresses."""
    return float(len(pages))


def _attr(name: str, convert: Convert = float) -> Convert:
    """A field of an NVML struct (memory info, utilisation rates)."""
    return lambda value: convert(getattr(value, name))


def _item(index: int, convert: Convert = float) -> Convert:
    """An item of a tuple NVML answers (remapped rows: corrected, uncorrected, pending,
    failed)."""
    return lambda value: convert(value[index])


def _bit(bit: int) -> Convert:
    """One bit of the clock event (throttle) reasons, 0 or 1."""
    return lambda reasons: 1.0 if reasons & bit else 0.0


def _field(index: int) -> Convert:
    """One of the NVLink field values, in KiB, when NVML answered it."""
    def convert(values: Any) -> float | None:
        if index >= len(values) or values[index].nvmlReturn != _SUCCESS:
            return None
        return _kib(values[index].value.ullVal)
    return convert


_REASONS = "nvmlDeviceGetCurrentClocksEventReasons"
_NVLINK_FIELDS = (("NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX", _ALL_LINKS),
                  ("NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX", _ALL_LINKS))
_SBE = "NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS"
_DBE = "NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR"

READINGS: tuple[Row, ...] = (
    Row("nvmlDeviceGetMemoryInfo", (), MEMORY_USED, _attr("used")),
    Row("nvmlDeviceGetMemoryInfo", (), MEMORY_TOTAL, _attr("total")),
    Row("nvmlDeviceGetUtilizationRates", (), UTILIZATION, _attr("gpu", _percent)),
    Row("nvmlDeviceGetUtilizationRates", (), MEMORY_UTILIZATION, _attr("memory", _percent)),
    Row("nvmlDeviceGetPowerUsage", (), POWER, _per_mille),
    Row("nvmlDeviceGetTotalEnergyConsumption", (), ENERGY, _per_mille),
    Row("nvmlDeviceGetTemperature", ("NVML_TEMPERATURE_GPU",), TEMPERATURE, float),
    Row("nvmlDeviceGetClockInfo", ("NVML_CLOCK_SM",), SM_CLOCK, _mhz),
    Row("nvmlDeviceGetClockInfo", ("NVML_CLOCK_MEM",), MEMORY_CLOCK, _mhz),
    # Drivers before 535 name the clock event reasons "throttle reasons".
    *(Row(_REASONS, (), THROTTLE_REASON, _bit(bit), f'reason="{reason}"',
          fallback="nvmlDeviceGetCurrentClocksThrottleReasons")
      for bit, reason in THROTTLE_REASONS),
    Row("nvmlDeviceGetTotalEccErrors", ("NVML_MEMORY_ERROR_TYPE_CORRECTED", "NVML_VOLATILE_ECC"),
        ECC_ERRORS, float, 'type="corrected"'),
    Row("nvmlDeviceGetTotalEccErrors",
        ("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", "NVML_VOLATILE_ECC"),
        ECC_ERRORS, float, 'type="uncorrected"'),
    Row("nvmlDeviceGetRemappedRows", (), REMAPPED_ROWS, _item(0), 'type="corrected"'),
    Row("nvmlDeviceGetRemappedRows", (), REMAPPED_ROWS, _item(1), 'type="uncorrected"'),
    Row("nvmlDeviceGetRemappedRows", (), REMAPPED_ROWS_PENDING, _item(2, _flag)),
    Row("nvmlDeviceGetRemappedRows", (), REMAPPED_ROWS_FAILED, _item(3, _flag)),
    Row("nvmlDeviceGetPcieThroughput", ("NVML_PCIE_UTIL_TX_BYTES",), PCIE_THROUGHPUT, _kib,
        'direction="tx"'),
    Row("nvmlDeviceGetPcieThroughput", ("NVML_PCIE_UTIL_RX_BYTES",), PCIE_THROUGHPUT, _kib,
        'direction="rx"'),
    Row("nvmlDeviceGetCurrPcieLinkGeneration", (), PCIE_LINK_GENERATION, float),
    Row("nvmlDeviceGetCurrPcieLinkWidth", (), PCIE_LINK_WIDTH, float),
    Row("nvmlDeviceGetRetiredPages", (_SBE,), RETIRED_PAGES, _count, 'cause="single_bit_ecc"'),
    Row("nvmlDeviceGetRetiredPages", (_DBE,), RETIRED_PAGES, _count, 'cause="double_bit_ecc"'),
    Row("nvmlDeviceGetRetiredPagesPendingStatus", (), RETIRED_PAGES_PENDING, _enabled),
    Row("nvmlDeviceGetFieldValues", (_NVLINK_FIELDS,), NVLINK_BYTES, _field(0),
        'direction="tx"'),
    Row("nvmlDeviceGetFieldValues", (_NVLINK_FIELDS,), NVLINK_BYTES, _field(1),
        'direction="rx"'),
)
"""Every per-GPU reading asked each poll, in the order they are asked. After them come the MIG
devices' memory (:meth:`NvmlSource._mig_memory`) and the running compute processes (for the
join)."""

STATIC: tuple[Row, ...] = (
    # What the GPU and the slot it sits in allow; a link trained below it (fewer lanes, an
    # older generation) is degraded.
    Row("nvmlDeviceGetMaxPcieLinkGeneration", (), PCIE_LINK_MAX_GENERATION, float),
    Row("nvmlDeviceGetMaxPcieLinkWidth", (), PCIE_LINK_MAX_WIDTH, float),
)
"""Per-GPU readings that do not change while the driver is loaded: asked when NVML is
initialised, their answers exported by every poll. A reading that failed with an error is
asked again at the next poll until it answers; one not supported is not asked again."""

FAMILIES: tuple[Spec, ...] = (
    GPUS, GPUS_EXPECTED, INFO, LOST, *dict.fromkeys(r.family for r in (*READINGS, *STATIC)),
    XID_ERRORS, HOURLY_COST, NVML_CALLS, NVML_ERRORS,
)
"""Every family this module emits."""


def resolve(lib: Any, arg: Any) -> Any:
    """A row argument with each string replaced by the pynvml constant it names."""
    if isinstance(arg, str):
        return getattr(lib, arg)
    if isinstance(arg, tuple):
        return tuple(resolve(lib, a) for a in arg)
    return arg
