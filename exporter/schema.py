"""Every metric family the daemon can export, in the order ``/metrics`` lists them.

Each family is defined once, as a named constant in the module that emits it; this table
gathers them for rendering, for the README's metric table and for the name-convention test.
Names never change with the upstream engine's version.
"""

from __future__ import annotations

from exporter.collectors import dcgm, engine, gpu, host
from exporter.derive import attribution
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
    state.LATENCY_OBSERVATIONS,
    state.WINDOW_SPAN,
)


GPU: tuple[Spec, ...] = (
    gpu.GPUS,
    gpu.GPUS_EXPECTED,
    gpu.INFO,
    gpu.LOST,
    gpu.MEMORY_USED,
    gpu.MEMORY_TOTAL,
    gpu.UTILIZATION,
    gpu.MEMORY_UTILIZATION,
    gpu.POWER,
    gpu.ENERGY,
    gpu.TEMPERATURE,
    gpu.SM_CLOCK,
    gpu.MEMORY_CLOCK,
    gpu.THROTTLE_REASON,
    gpu.ECC_ERRORS,
    gpu.REMAPPED_ROWS,
    gpu.REMAPPED_ROWS_PENDING,
    gpu.REMAPPED_ROWS_FAILED,
    gpu.RETIRED_PAGES,
    gpu.RETIRED_PAGES_PENDING,
    gpu.PCIE_THROUGHPUT,
    gpu.PCIE_LINK_GENERATION,
    gpu.PCIE_LINK_WIDTH,
    gpu.NVLINK_BYTES,
    attribution.ENGINE_INFO,
    attribution.TOKENS_PER_SECOND,
    attribution.TOKENS_PER_JOULE,
    attribution.MEMORY_PRESSURE,
    dcgm.DRAM_ACTIVE,
    dcgm.SM_ACTIVE,
    dcgm.TENSOR_ACTIVE,
    dcgm.GRAPHICS_ACTIVE,
    gpu.XID_ERRORS,
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
    gpu.NVML_CALLS,
    gpu.NVML_ERRORS,
    selfmetrics.RENDER_ERRORS,
)

SCHEMA: tuple[Spec, ...] = ENGINE + GPU + HOST + SELF
LIVE = frozenset(s.name for s in SCHEMA if s.live)
"""The families served only while their source is up (see :attr:`Spec.live`)."""

