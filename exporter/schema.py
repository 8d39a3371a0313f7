"""Every metric family the daemon can export, in the order ``/metrics`` lists them.

Each family is defined once, as a named constant in the module that emits it; this table
gathers them for rendering, for the README's metric table and for the name-convention test.
Names never change with the upstream engine's version.
"""

from __future__ import annotations

from exporter import discovery
from exporter.canary import record as canary
from exporter.collectors import dcgm, engine, environment, gpu_readings, host
from exporter.derive import attribution, platform
from exporter.derive import engine_state as state
from exporter.exposition import selfmetrics
from exporter.exposition.family import Spec

__all__ = ["ENGINE", "GPU", "HOST", "LIVE", "SCHEMA", "SELF", "Spec"]


_SRC = ("collector", "source")

ENGINE: tuple[Spec, ...] = (
    engine.UP,
    engine.LAST_SUCCESS,
    state.REQUESTS_WAITING,
    state.REQUESTS_RUNNING,
    state.REQUESTS_SWAPPED,
    state.KV_CACHE_USAGE,
    state.KV_CACHE_CAPACITY,
    state.PROMPT_TOKENS,
    state.GENERATION_TOKENS,
    state.PREEMPTIONS,
    state.ITERATIONS,
    state.REQUESTS_FINISHED,
    state.RESTARTS,
    state.PROMPT_TOKENS_RATE,
    state.GENERATION_TOKENS_RATE,
    state.PREEMPTIONS_RATE,
    *state.HISTOGRAMS.values(),
    state.LATENCY_PERCENTILE,
    engine.PROCESS_CPU,
    engine.PROCESS_MEMORY,
    engine.PROCESSES,
    platform.ENGINE_NUMA_ALIGNED,
    state.LATENCY_OBSERVATIONS,
    state.LATENCY_MEAN,
    state.WINDOW_SPAN,
)


GPU: tuple[Spec, ...] = (
    gpu_readings.GPUS,
    gpu_readings.GPUS_EXPECTED,
    gpu_readings.INFO,
    gpu_readings.LOST,
    gpu_readings.MEMORY_USED,
    gpu_readings.MEMORY_TOTAL,
    gpu_readings.UTILIZATION,
    gpu_readings.MEMORY_UTILIZATION,
    gpu_readings.POWER,
    gpu_readings.ENERGY,
    gpu_readings.TEMPERATURE,
    gpu_readings.SM_CLOCK,
    gpu_readings.MEMORY_CLOCK,
    gpu_readings.THROTTLE_REASON,
    gpu_readings.ECC_ERRORS,
    gpu_readings.REMAPPED_ROWS,
    gpu_readings.REMAPPED_ROWS_PENDING,
    gpu_readings.REMAPPED_ROWS_FAILED,
    gpu_readings.RETIRED_PAGES,
    gpu_readings.RETIRED_PAGES_PENDING,
    gpu_readings.PCIE_THROUGHPUT,
    gpu_readings.PCIE_LINK_GENERATION,
    gpu_readings.PCIE_LINK_WIDTH,
    gpu_readings.PCIE_LINK_MAX_GENERATION,
    gpu_readings.PCIE_LINK_MAX_WIDTH,
    gpu_readings.NVLINK_BYTES,
    gpu_readings.HOURLY_COST,
    attribution.ENGINE_INFO,
    attribution.TOKENS_PER_SECOND,
    attribution.TOKENS_PER_JOULE,
    attribution.MEMORY_PRESSURE,
    platform.GPU_VIRTUALIZATION,
    platform.FOREIGN_PROCESSES,
    platform.GPU_NUMA,
    dcgm.DRAM_ACTIVE,
    dcgm.SM_ACTIVE,
    dcgm.TENSOR_ACTIVE,
    dcgm.GRAPHICS_ACTIVE,
    gpu_readings.XID_ERRORS,
)

HOST: tuple[Spec, ...] = (
    host.INFO,
    host.CPUS,
    host.CPU_BUSY,
    host.CPU_STEAL,
    host.CPU_IOWAIT,
    host.MEMORY_TOTAL,
    host.MEMORY_AVAILABLE,
    host.SWAP_USED,
    host.PRESSURE_STALLED,
    host.PRESSURE_STALL,
    environment.BALLOON_INFO,
    environment.BALLOON_INFLATED,
    environment.BALLOON_DEFLATED,
    environment.BALLOON_MIGRATED,
    platform.ENVIRONMENT_INFO,
)

SELF: tuple[Spec, ...] = (
    selfmetrics.BUILD_INFO,
    selfmetrics.COLLECTOR_UP,
    selfmetrics.POLL_DURATION,
    selfmetrics.LAST_SUCCESS,
    selfmetrics.POLLS,
    selfmetrics.ERRORS,
    selfmetrics.MALFORMED_LINES,
    selfmetrics.DROPPED_SERIES,
    selfmetrics.RESPONSE_BYTES,
    selfmetrics.PARSER_CACHE,
    gpu_readings.NVML_CALLS,
    gpu_readings.NVML_ERRORS,
    selfmetrics.RENDER_ERRORS,
    discovery.DISCOVERED,
    discovery.LEFT_OUT,
)

CANARY: tuple[Spec, ...] = canary.SPECS

SCHEMA: tuple[Spec, ...] = ENGINE + CANARY + GPU + HOST + SELF
LIVE = frozenset(s.name for s in SCHEMA if s.live)
"""The families served only while their source is up (see :attr:`Spec.live`)."""

