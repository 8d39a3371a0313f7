"""Every metric family the daemon can export: name, type, help and label names.

This table is the single source for rendering, for the README's metric table test and for
the name-convention test. Names never change with the upstream engine's version.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ENGINE", "GPU", "HOST", "LIVE", "SCHEMA", "SELF", "Spec", "spec"]

PREFIX = "inference_node_"


@dataclass(frozen=True, slots=True)
class Spec:
    """One exported family."""

    name: str
    type: str  # gauge | counter | histogram
    help: str
    labels: tuple[str, ...]


_E = ("engine", "endpoint", "model", "dp_rank")
_SRC = ("collector", "source")

ENGINE: tuple[Spec, ...] = (
    Spec("inference_node_engine_up", "gauge",
         "1 if the engine's metrics endpoint answered the last poll, else 0.",
         ("engine", "endpoint")),
    Spec("inference_node_engine_last_success_timestamp_seconds", "gauge",
         "Unix time of the last successful poll of the engine's metrics endpoint.",
         ("engine", "endpoint")),
    Spec("inference_node_engine_requests_waiting", "gauge",
         "Requests waiting to be scheduled (queue depth).", _E),
    Spec("inference_node_engine_requests_running", "gauge",
         "Requests being processed.", _E),
    Spec("inference_node_engine_requests_swapped", "gauge",
         "Requests swapped out to CPU memory (older vLLM only).", _E),
    Spec("inference_node_engine_kv_cache_usage_ratio", "gauge",
         "Fraction of the KV-cache in use, 0..1.", _E),
    Spec("inference_node_engine_kv_cache_capacity_tokens", "gauge",
         "KV-cache capacity in tokens (blocks times block size).", _E),
    Spec("inference_node_engine_prompt_tokens_total", "counter",
         "Prompt (prefill) tokens processed, as the engine counts them.", _E),
    Spec("inference_node_engine_generation_tokens_total", "counter",
         "Generated (decode) tokens, as the engine counts them.", _E),
    Spec("inference_node_engine_preemptions_total", "counter",
         "Requests preempted by the scheduler, as the engine counts them.", _E),
    Spec("inference_node_engine_requests_finished_total", "counter",
         "Finished requests by finish reason (stop, length, abort, error, and repetition"
         " from vLLM 0.32); requests whose client disconnected are not counted by vLLM 0.32.",
         (*_E, "reason")),
    Spec("inference_node_engine_restarts_total", "counter",
         "Engine restarts seen by the daemon (counters went back or were re-created).", _E),
    Spec("inference_node_engine_prompt_tokens_per_second", "gauge",
         "Prompt tokens per second over the last poll interval or a sliding window.",
         (*_E, "window")),
    Spec("inference_node_engine_generation_tokens_per_second", "gauge",
         "Generated tokens per second over the last poll interval or a sliding window.",
         (*_E, "window")),
    Spec("inference_node_engine_preemptions_per_second", "gauge",
         "Preemptions per second over the last poll interval or a sliding window.",
         (*_E, "window")),
    Spec("inference_node_engine_time_to_first_token_seconds", "histogram",
         "Time to first token, with the engine's buckets.", _E),
    Spec("inference_node_engine_inter_token_latency_seconds", "histogram",
         "Time between successive output tokens, with the engine's buckets.", _E),
    Spec("inference_node_engine_e2e_request_latency_seconds", "histogram",
         "End-to-end request latency, with the engine's buckets.", _E),
    Spec("inference_node_engine_request_queue_time_seconds", "histogram",
         "Time requests spent waiting in the queue, with the engine's buckets.", _E),
    Spec("inference_node_engine_latency_seconds", "gauge",
         "Latency percentile (ttft, itl, e2e, queue) over a sliding window, from the deltas"
         " of the engine's histogram buckets; absent while the window holds no observation.",
         (*_E, "latency", "window", "percentile")),
    Spec("inference_node_engine_process_cpu_seconds_total", "counter",
         "CPU time of the engine's processes (the endpoint's listener and its descendants).",
         ("engine", "endpoint")),
    Spec("inference_node_engine_process_resident_memory_bytes", "gauge",
         "Resident memory of the engine's processes.", ("engine", "endpoint")),
    Spec("inference_node_engine_processes", "gauge",
         "Processes found behind the engine endpoint; absent when it is not on this host.",
         ("engine", "endpoint")),
    Spec("inference_node_engine_latency_window_observations", "gauge",
         "Observations the windowed latency quantiles rest on.",
         (*_E, "latency", "window")),
    Spec("inference_node_engine_window_span_seconds", "gauge",
         "Seconds the rates and percentiles of a window actually cover: the window's length"
         " (to within half a poll interval), less at start-up or after a gap in the polls.",
         (*_E, "window")),
)

_GPU = ("gpu", "uuid")
_GPUM = ("gpu", "uuid", "gpu_instance")

GPU: tuple[Spec, ...] = (
    Spec("inference_node_gpus", "gauge",
         "GPUs NVML reports on this node, lost ones left out.", ()),
    Spec("inference_node_gpus_expected", "gauge",
         "GPUs this node should have (--gpu.expected-count); absent when not configured.", ()),
    Spec("inference_node_gpu_info", "gauge",
         "GPU model, driver and CUDA versions, PCI bus id, MIG mode and NVML's"
         " virtualisation mode (none = bare metal, passthrough, vgpu = guest, host_vgpu);"
         " always 1.",
         (*_GPU, "name", "driver_version", "cuda_version", "pci_bus_id", "mig_mode",
          "virtualization_mode")),
    Spec("inference_node_gpu_lost", "gauge",
         "1 once NVML reports the GPU lost (fallen off the bus), else 0.", _GPU),
    Spec("inference_node_gpu_memory_used_bytes", "gauge",
         "GPU memory in use; MIG devices carry gpu_instance.", _GPUM),
    Spec("inference_node_gpu_memory_total_bytes", "gauge",
         "GPU memory in all; MIG devices carry gpu_instance.", _GPUM),
    Spec("inference_node_gpu_utilization_ratio", "gauge",
         "Share of the last sample period a kernel ran on the GPU, 0..1.", _GPU),
    Spec("inference_node_gpu_memory_utilization_ratio", "gauge",
         "Share of the last sample period device memory was read or written, 0..1.", _GPU),
    Spec("inference_node_gpu_power_watts", "gauge", "Power draw of the GPU board.", _GPU),
    Spec("inference_node_gpu_energy_joules_total", "counter",
         "Energy the GPU used since the driver loaded.", _GPU),
    Spec("inference_node_gpu_temperature_celsius", "gauge", "GPU core temperature.", _GPU),
    Spec("inference_node_gpu_sm_clock_hertz", "gauge",
         "Current clock of the streaming multiprocessors.", _GPU),
    Spec("inference_node_gpu_memory_clock_hertz", "gauge",
         "Current clock of the device memory.", _GPU),
    Spec("inference_node_gpu_throttle_reason", "gauge",
         "1 while the clocks are held down for that reason (sw_power_cap,"
         " hw_thermal_slowdown, hw_slowdown, sync_boost...), else 0.", (*_GPU, "reason")),
    Spec("inference_node_gpu_ecc_errors_total", "counter",
         "ECC memory errors since the driver loaded, corrected or uncorrected.",
         (*_GPU, "type")),
    Spec("inference_node_gpu_remapped_rows_total", "counter",
         "HBM rows remapped after corrected or uncorrected errors.", (*_GPU, "type")),
    Spec("inference_node_gpu_remapped_rows_pending", "gauge",
         "1 while a row remapping waits for a GPU reset.", _GPU),
    Spec("inference_node_gpu_remapped_rows_failed", "gauge",
         "1 once a row remapping has failed.", _GPU),
    Spec("inference_node_gpu_retired_pages", "gauge",
         "Memory pages retired after ECC errors, by cause (single_bit_ecc, double_bit_ecc);"
         " GPUs before Ampere (later ones remap rows instead).", (*_GPU, "cause")),
    Spec("inference_node_gpu_retired_pages_pending", "gauge",
         "1 while a page retirement waits for a GPU reset.", _GPU),
    Spec("inference_node_gpu_pcie_throughput_bytes_per_second", "gauge",
         "PCIe traffic over NVML's last 20 ms sample, by direction (tx, rx).",
         (*_GPU, "direction")),
    Spec("inference_node_gpu_pcie_link_generation", "gauge",
         "Current PCIe link generation.", _GPU),
    Spec("inference_node_gpu_pcie_link_width", "gauge", "Current PCIe link width (lanes).", _GPU),
    Spec("inference_node_gpu_nvlink_bytes_total", "counter",
         "NVLink data bytes over all links, by direction (tx, rx).", (*_GPU, "direction")),
    Spec("inference_node_gpu_engine_info", "gauge",
         "An engine endpoint with a process among the GPU's compute processes; always 1.",
         (*_GPU, "engine", "endpoint")),
    Spec("inference_node_gpu_generation_tokens_per_second", "gauge",
         "Generated tokens per second of the engines on this GPU, each engine's rate split"
         " evenly over the GPUs it runs on (tensor parallel), over the first window.",
         (*_GPU, "window")),
    Spec("inference_node_gpu_generation_tokens_per_joule", "gauge",
         "Generated tokens per joule: the GPU's tokens per second over its power draw.",
         (*_GPU, "window")),
    Spec("inference_node_gpu_memory_pressure_ratio", "gauge",
         "Memory pressure 0..1: the largest of the KV-cache usage of the engines on the GPU"
         " and their preemption rate per second (1/s reads 1); VRAM used over total when no"
         " engine is known on the GPU.", _GPU),
    Spec("inference_node_gpu_dram_active_ratio", "gauge",
         "Share of cycles the device-memory interface was busy (DCGM_FI_PROF_DRAM_ACTIVE):"
         " memory-bandwidth use, the bottleneck of LLM decoding. Needs --dcgm.url.", _GPUM),
    Spec("inference_node_gpu_sm_active_ratio", "gauge",
         "Share of cycles an SM had at least one warp (DCGM_FI_PROF_SM_ACTIVE). Needs"
         " --dcgm.url.", _GPUM),
    Spec("inference_node_gpu_tensor_active_ratio", "gauge",
         "Share of cycles the tensor pipes were busy (DCGM_FI_PROF_PIPE_TENSOR_ACTIVE). Needs"
         " --dcgm.url.", _GPUM),
    Spec("inference_node_gpu_graphics_engine_active_ratio", "gauge",
         "Share of time the graphics/compute engine was busy (DCGM_FI_PROF_GR_ENGINE_ACTIVE)."
         " Needs --dcgm.url.", _GPUM),
    Spec("inference_node_gpu_xid_errors_total", "counter",
         "XID errors NVML's event API reported since the daemon started, by XID code.",
         (*_GPU, "xid")),
)

HOST: tuple[Spec, ...] = (
    Spec("inference_node_host_info", "gauge",
         "Whether the host is a virtual machine, the hypervisor (kvm, xen, vmware, hyperv,"
         " virtualbox, unknown, none) and the DMI vendor and product; always 1.",
         ("virtualization", "hypervisor", "dmi_vendor", "dmi_product")),
    Spec("inference_node_host_cpus", "gauge", "Logical CPUs the kernel reports.", ()),
    Spec("inference_node_host_cpu_busy_ratio", "gauge",
         "Share of CPU time spent working (user, nice, system, irq, softirq) over the last"
         " poll interval, all CPUs together.", ()),
    Spec("inference_node_host_cpu_steal_ratio", "gauge",
         "Share of CPU time the hypervisor gave to others over the last poll interval: the"
         " noisy-neighbour signal.", ()),
    Spec("inference_node_host_cpu_iowait_ratio", "gauge",
         "Share of CPU time idle while waiting for I/O over the last poll interval.", ()),
    Spec("inference_node_host_memory_total_bytes", "gauge",
         "Physical memory the kernel manages (MemTotal).", ()),
    Spec("inference_node_host_memory_available_bytes", "gauge",
         "Memory available for new work without swapping (MemAvailable).", ()),
    Spec("inference_node_host_swap_used_bytes", "gauge",
         "Swap space in use (SwapTotal - SwapFree).", ()),
    Spec("inference_node_host_pressure_stalled_seconds_total", "counter",
         "Time tasks stalled on a resource (pressure-stall information; absent where the"
         " kernel has none).", ("resource", "kind")),
    Spec("inference_node_host_pressure_stall_ratio", "gauge",
         "Share of the last poll interval tasks stalled on a resource (some: at least one"
         " task, full: all non-idle tasks).", ("resource", "kind")),
)

SELF: tuple[Spec, ...] = (
    Spec("inference_node_exporter_build_info", "gauge",
         "Build information of the exporter; always 1.", ("version", "python_version")),
    Spec("inference_node_exporter_collector_up", "gauge",
         "1 if the source's last poll succeeded, else 0.", _SRC),
    Spec("inference_node_exporter_collector_poll_duration_seconds", "gauge",
         "Wall-clock duration of the source's last poll.", _SRC),
    Spec("inference_node_exporter_collector_last_success_timestamp_seconds", "gauge",
         "Unix time of the source's last successful poll.", _SRC),
    Spec("inference_node_exporter_collector_polls_total", "counter",
         "Polls of the source, successful or not.", _SRC),
    Spec("inference_node_exporter_collector_errors_total", "counter",
         "Failed polls of the source by reason.", (*_SRC, "reason")),
    Spec("inference_node_exporter_collector_malformed_lines_total", "counter",
         "Upstream lines that could not be parsed and were skipped.", _SRC),
    Spec("inference_node_exporter_collector_dropped_series_total", "counter",
         "Upstream label sets dropped because the source exceeded its series limit.", _SRC),
    Spec("inference_node_exporter_collector_response_bytes", "gauge",
         "Size of the source's last response body.", _SRC),
    Spec("inference_node_exporter_collector_parser_cache_bytes", "gauge",
         "Bytes (estimated) the source's parser caches hold; emptied past 4 MiB, so a hostile"
         " upstream cannot grow them.", _SRC),
    Spec("inference_node_exporter_nvml_calls_total", "counter",
         "NVML calls the daemon made.", ()),
    Spec("inference_node_exporter_nvml_errors_total", "counter",
         "NVML calls that failed with an error other than not-supported or GPU-lost.",
         ("error",)),
    Spec("inference_node_exporter_render_errors_total", "counter",
         "Failures while rendering a source's metrics for a scrape (the scrape still answers).",
         ("collector",)),
)

SCHEMA: tuple[Spec, ...] = ENGINE + GPU + HOST + SELF
_BY_NAME = {s.name: s for s in SCHEMA}


def spec(name: str) -> Spec:
    """The spec of an exported family by name."""
    return _BY_NAME[name]


LIVE = frozenset({
    "inference_node_engine_prompt_tokens_per_second",
    "inference_node_engine_generation_tokens_per_second",
    "inference_node_engine_preemptions_per_second",
    "inference_node_engine_latency_seconds",
    "inference_node_engine_latency_window_observations",
    "inference_node_engine_window_span_seconds",
    "inference_node_gpu_utilization_ratio",
    "inference_node_gpu_memory_utilization_ratio",
    "inference_node_gpu_pcie_throughput_bytes_per_second",
    "inference_node_gpu_dram_active_ratio",
    "inference_node_gpu_sm_active_ratio",
    "inference_node_gpu_tensor_active_ratio",
    "inference_node_gpu_graphics_engine_active_ratio",
    "inference_node_host_cpu_busy_ratio",
    "inference_node_host_cpu_steal_ratio",
    "inference_node_host_cpu_iowait_ratio",
    "inference_node_host_pressure_stall_ratio",
})
"""Rates, ratios over the last interval and windowed percentiles: figures about *now*, served
only while their source is up. A down source's other values (gauges, counters, histograms)
are still served for ``stale_after``, as its last known state."""
