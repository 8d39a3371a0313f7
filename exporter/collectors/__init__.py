"""Collectors by name; each turns the configuration into the sources its workers poll."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from exporter.collectors.base import Source
from exporter.collectors.dcgm import DcgmSource
from exporter.collectors.gpu import NvmlSource
from exporter.collectors.host import HostSource
from exporter.collectors.vllm import VllmSource
from exporter.config import COLLECTORS, Config

__all__ = ["FACTORIES", "build_sources"]

FACTORIES: dict[str, Callable[[Config], list[Source]]] = {
    "vllm": lambda cfg: [VllmSource(e, cfg) for e in cfg.vllm_endpoints],
    "gpu": lambda cfg: [NvmlSource(cfg.poll_timeout, cfg.gpu_expected_count)],
    "dcgm": lambda cfg: [DcgmSource(cfg.dcgm_url, cfg)] if cfg.dcgm_url else [],
    "host": lambda cfg: [HostSource(Path(cfg.procfs), Path(cfg.sysfs))],
}
assert set(FACTORIES) == set(COLLECTORS)


def build_sources(cfg: Config) -> list[Source]:
    """The sources of every enabled collector, in a stable order."""
    return [s for name in COLLECTORS if name in cfg.collectors for s in FACTORIES[name](cfg)]
