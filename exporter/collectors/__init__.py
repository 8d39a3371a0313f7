"""Collectors by name; each turns the configuration into the sources its workers poll.

Every registered engine adapter is a collector of its own kind (one source per configured
endpoint); the node's own collectors (:data:`exporter.kinds.PLATFORM`) follow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from exporter import engines
from exporter.collectors.base import Source
from exporter.collectors.dcgm import DcgmSource
from exporter.collectors.engine import EngineSource
from exporter.collectors.gpu import NvmlSource
from exporter.collectors.host import HostSource
from exporter.config import Config, collector_names
from exporter.kinds import PLATFORM

__all__ = ["PLATFORM_FACTORIES", "build_sources"]

PLATFORM_FACTORIES: dict[str, Callable[[Config], list[Source]]] = {
    "gpu": lambda cfg: [NvmlSource(cfg.poll_timeout, cfg.gpu_expected_count,
                                   pricing=cfg.pricing)],
    "dcgm": lambda cfg: [DcgmSource(cfg.dcgm_url, cfg)] if cfg.dcgm_url else [],
    "host": lambda cfg: [HostSource(Path(cfg.procfs), Path(cfg.sysfs))],
}
assert set(PLATFORM_FACTORIES) == set(PLATFORM)


def _sources(name: str, cfg: Config) -> list[Source]:
    factory = PLATFORM_FACTORIES.get(name)
    if factory is not None:
        return factory(cfg)
    adapter = engines.adapter(name)
    return [EngineSource(adapter, e, cfg) for e in cfg.engine(name).endpoints]


def build_sources(cfg: Config) -> list[Source]:
    """The sources of every enabled collector, in a stable order."""
    return [s for name in collector_names() if name in cfg.collectors
            for s in _sources(name, cfg)]
