"""Tickets about a node's GPUs: lost or missing, silent telemetry, XIDs and ECC errors,
memory repairs, a degraded PCIe link, slowdowns and heat."""

from __future__ import annotations

from .base import GPU, Ctx, Rule, match

_GPU_COLLECTOR_DOWN = "inference_node_exporter_collector_up{sel} == 0"


def gpu(c: Ctx) -> list[Rule]:
    return [*_gpu_presence(c), *_gpu_errors(c), *_gpu_memory_repair(c), _pcie(c),
            *_gpu_slowdown(c)]


def _gpu_presence(c: Ctx) -> list[Rule]:
    """GPUs lost from the bus or missing from NVML's list."""
    return [
        c.alert(
            "InferenceNodeGPULost",
            # While NVML does not answer, the GPU series go stale and vanish: a lost GPU
            # stays lost until the collector reads again.
            f"""
inference_node_gpu_lost{c.sel()} == 1
or
(
    last_over_time(inference_node_gpu_lost{c.sel()}[{c.s['gpu_lost_hold']}]) == 1
  and on ({c.by('job, instance')})
    {_GPU_COLLECTOR_DOWN.format(sel=c.sel(match('collector', '=', 'gpu')))}
)
""",
            "gpu_lost_for", "warning",
            "A GPU has fallen off the bus.",
            f"NVML reports {GPU} lost: the GPU is gone until the node is reset or"
            f" rebooted, and the engines using it have failed."),
        c.alert(
            "InferenceNodeGPUsMissing",
            f"inference_node_gpus_expected{c.sel()} - inference_node_gpus{c.sel()}"
            f"\n  > 0",
            "gpus_missing_for", "warning",
            "An inference node has fewer GPUs than it should.",
            "{{ $value | humanize }} GPU(s) of {{ $labels.instance }} are missing: NVML"
            " lists fewer GPUs than --gpu.expected-count."),
        c.alert(
            "InferenceNodeGPUTelemetryLost",
            _GPU_COLLECTOR_DOWN.format(sel=c.sel(match("collector", "=", "gpu"))),
            "gpu_telemetry_lost_for", "warning",
            "NVML does not answer the exporter: the node's GPU alerts cannot fire.",
            "The GPU collector (source {{ $labels.source }}) of {{ $labels.instance }} has"
            f" failed for {c.s['gpu_telemetry_lost_for']}: NVML hangs or errors, the GPU"
            " series are gone and no GPU alert of this node can fire; a GPU lost before"
            " stays reported lost."),
    ]


def _gpu_errors(c: Ctx) -> list[Rule]:
    """Critical XID errors and uncorrectable ECC errors."""
    s = c.s
    xids = "|".join(s["xid_codes"].split(","))
    xid = f"inference_node_gpu_xid_errors_total{c.sel(match('xid', '=~', xids))}"
    return [
        # The daemon creates an XID's series at its first occurrence, already at 1,
        # which increase() cannot see: a series newer than the range counts too, but
        # only if no sample of it lies in the history before the range (a scrape gap
        # longer than the lookback must not make its lifetime count page again).
        c.alert(
            "InferenceNodeGPUXidError",
            f"""
increase({xid}[{s['xid_range']}])
  > 0
or
(
    {xid}
  unless
    last_over_time({xid}[{s['xid_history']}] offset {s['xid_range']})
)
""",
            "xid_for", "warning",
            "A GPU reported a critical XID error.",
            f"{GPU} reported XID {{{{ $labels.xid }}}}"
            f" ({{{{ $value | humanize }}}} in the last {s['xid_range']}), an error that"
            f" needs the GPU reset, drained or replaced."),
        c.alert(
            "InferenceNodeGPUUncorrectableECC",
            f"increase(inference_node_gpu_ecc_errors_total"
            f"{c.sel(match('type', '=', 'uncorrected'))}"
            f"[{s['ecc_range']}])\n  > 0",
            "ecc_for", "warning",
            "A GPU had uncorrectable ECC memory errors.",
            f"{GPU} had {{{{ $value | humanize }}}} uncorrectable ECC error(s) in the last"
            f" {s['ecc_range']}: data in GPU memory was lost; the engines on it may"
            f" have crashed or returned corrupt results."),
    ]


def _gpu_memory_repair(c: Ctx) -> list[Rule]:
    """Faulty memory rows the GPU could not remap, or whose repair waits for a reset."""
    return [
        c.alert(
            "InferenceNodeGPURowRemapFailed",
            f"inference_node_gpu_remapped_rows_failed{c.sel()} == 1",
            "row_remap_failed_for", "warning",
            "A GPU failed to remap a faulty memory row.",
            f"{GPU} failed to remap a faulty HBM row: the GPU has run out of spare rows"
            f" and must be replaced."),
        c.alert(
            "InferenceNodeGPUResetPending",
            f"""
inference_node_gpu_remapped_rows_pending{c.sel()} == 1
or
inference_node_gpu_retired_pages_pending{c.sel()} == 1
""",
            "reset_pending_for", "warning",
            "A GPU waits for a reset to retire faulty memory.",
            f"{GPU} has a row remapping or page retirement pending for"
            f" {c.s['reset_pending_for']}: it takes effect at the next GPU reset; until"
            f" then the faulty memory is still in use."),
    ]


def _pcie(c: Ctx) -> Rule:
    s = c.s
    gpu = c.by("job, instance, gpu, uuid")
    return c.alert(
        "InferenceNodeGPUPCIeLinkDegraded",
        f"""
inference_node_gpu_pcie_link_width{c.sel()}
  < on ({gpu})
inference_node_gpu_pcie_link_max_width{c.sel()}
and on ({gpu})
inference_node_gpu_utilization_ratio{c.sel()}
  > {s['pcie_busy_utilization']}
""",
        "pcie_degraded_for", "warning",
        "A busy GPU's PCIe link runs with fewer lanes than it supports.",
        f"The PCIe link of {GPU} runs x{{{{ $value }}}}, fewer lanes than the GPU and its"
        f" slot support, for {s['pcie_degraded_for']} while the GPU is busy: host-to-device"
        f" copies (model loads, KV offload, sampling on the CPU) slow down. A badly seated"
        f" card or riser, or the slot's bifurcation setting.")


def _gpu_slowdown(c: Ctx) -> list[Rule]:
    """Clocks held down for a thermal or power reason, and high temperatures."""
    s = c.s
    reasons = "|".join(s["throttle_reasons"].split(","))
    return [
        c.alert(
            "InferenceNodeGPUThrottled",
            f"max_over_time(inference_node_gpu_throttle_reason"
            f"{c.sel(match('reason', '=~', reasons))}[{s['throttle_range']}]) == 1",
            "throttle_for", "warning",
            "A GPU's clocks are held down by a thermal or power slowdown.",
            f"{GPU} has been slowed down for {s['throttle_for']}, reason"
            f" {{{{ $labels.reason }}}}: tokens per second drop and latency rises."),
        c.alert(
            "InferenceNodeGPUTemperatureHigh",
            f"inference_node_gpu_temperature_celsius{c.sel()}\n"
            f"  > {s['gpu_temperature_celsius']}",
            "gpu_temperature_for", "warning",
            "A GPU runs hot.",
            f"{GPU} is at {{{{ $value | humanize }}}}°C, above"
            f" {s['gpu_temperature_celsius']}°C for {s['gpu_temperature_for']}: it is"
            f" close to its slowdown temperature."),
    ]
