"""The dcgm collector: profiling fields NVML lacks, read from a local dcgm-exporter.

Where a node already runs dcgm-exporter, its endpoint gives DCGM's profiling counters: DRAM
active (memory-bandwidth use, the bottleneck of LLM decoding), SM active, tensor-pipe active
and graphics-engine active. They are exported per GPU under this daemon's names and labels
(``gpu``, ``uuid``; MIG instances add ``gpu_instance``).
"""

from __future__ import annotations

import time

from exporter.collectors.base import PollOutput, SourceError
from exporter.config import Config
from exporter.expfmt import Parser
from exporter.expfmt_body import parse_body
from exporter.exposition.family import Spec
from exporter.exposition.lines import Families, labelstr
from exporter.fetch import Fetcher, redact

__all__ = ["FIELDS", "DcgmSource"]

_GPUM = ("gpu", "uuid", "gpu_instance")
DRAM_ACTIVE = Spec(
    "inference_node_gpu_dram_active_ratio", "gauge",
    'Share of cycles the device-memory interface was busy (DCGM_FI_PROF_DRAM_ACTIVE): '
    'memory-bandwidth use, the bottleneck of LLM decoding. Needs --dcgm.url.',
    _GPUM, live=True)

SM_ACTIVE = Spec(
    "inference_node_gpu_sm_active_ratio", "gauge",
    'Share of cycles an SM had at least one warp (DCGM_FI_PROF_SM_ACTIVE). Needs --dcgm.url.',
    _GPUM, live=True)

TENSOR_ACTIVE = Spec(
    "inference_node_gpu_tensor_active_ratio", "gauge",
    'Share of cycles the tensor pipes were busy (DCGM_FI_PROF_PIPE_TENSOR_ACTIVE). Needs '
    '--dcgm.url.',
    _GPUM, live=True)

GRAPHICS_ACTIVE = Spec(
    "inference_node_gpu_graphics_engine_active_ratio", "gauge",
    'Share of time the graphics/compute engine was busy (DCGM_FI_PROF_GR_ENGINE_ACTIVE). '
    'Needs --dcgm.url.',
    _GPUM, live=True)

FIELDS = {
    "DCGM_FI_PROF_DRAM_ACTIVE": DRAM_ACTIVE,
    "DCGM_FI_PROF_SM_ACTIVE": SM_ACTIVE,
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": TENSOR_ACTIVE,
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": GRAPHICS_ACTIVE,
}
_KEEP = frozenset(FIELDS)


class DcgmSource:
    """One dcgm-exporter endpoint."""

    collector = "dcgm"
    name = "dcgm-exporter"

    def __init__(self, url: str, cfg: Config) -> None:
        self.target = redact(url)
        self.fetcher = Fetcher(url, cfg.poll_timeout, cfg.max_response_bytes)
        self.parser = Parser()

    def poll(self) -> PollOutput:
        start, wall = time.monotonic(), time.time()
        body = self.fetcher.get()
        taken_at = wall + (time.monotonic() - start) / 2
        exp = parse_body(self.parser, body, _KEEP)
        out = Families()
        found = 0
        for field, ours in FIELDS.items():
            for _, labels, value, _ts in exp.get(field):
                gpu, uuid = labels.get("gpu"), labels.get("UUID") or labels.get("uuid")
                if gpu is None or uuid is None or not 0 <= value <= 1:
                    continue
                mine = {"gpu": gpu, "uuid": uuid}
                if labels.get("GPU_I_ID"):
                    mine["gpu_instance"] = labels["GPU_I_ID"]
                out.add(ours.name, labelstr(**mine), value)
                found += 1
        if not found:
            raise SourceError("no_profiling_fields",
                              "the response holds none of DCGM's profiling fields"
                              f" ({', '.join(FIELDS)}); is profiling enabled in dcgm-exporter?")
        return PollOutput(out, exp.errors, 0, len(body), taken_at, tuple(exp.first_errors),
                          cache_bytes=self.parser.cache_bytes())


    def close(self) -> None:
        self.fetcher.close()
