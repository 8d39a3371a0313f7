"""The engine adapters, one module each; the registry every part of the daemon reads them from.

The registry drives the collector list, the ``--<kind>.endpoint`` flags and their environment
twins, the config file's ``[<kind>]`` sections, the process finder and the README's support
table. Adding an engine is one adapter module, registered here, with its fixtures and tests.
"""

from __future__ import annotations

from exporter.engines import llamacpp, lmdeploy, sglang, tgi, triton, trtllm, vllm
from exporter.engines.adapter import Adapter
from exporter.kinds import PLATFORM

__all__ = ["Adapter", "adapter", "adapters", "kinds", "register", "unregister"]

_REGISTRY: dict[str, Adapter] = {}


def register(a: Adapter) -> Adapter:
    """Add an adapter; its kind must be new and must not clash with a platform collector."""
    if a.kind in _REGISTRY or a.kind in PLATFORM:
        raise ValueError(f"engine kind {a.kind!r} is taken")
    if not a.kind.isidentifier() or a.kind != a.kind.lower():
        raise ValueError(f"engine kind {a.kind!r}: lower-case letters, digits and _ only")
    _REGISTRY[a.kind] = a
    return a


def unregister(kind: str) -> None:
    """Remove an adapter (tests that add one of their own)."""
    _REGISTRY.pop(kind, None)


def adapters() -> tuple[Adapter, ...]:
    """Every registered adapter, in registration order."""
    return tuple(_REGISTRY.values())


def kinds() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def adapter(kind: str) -> Adapter:
    """The adapter of ``kind``; KeyError when none is registered."""
    return _REGISTRY[kind]


register(vllm.ADAPTER)
register(sglang.ADAPTER)
register(llamacpp.ADAPTER)
register(triton.ADAPTER)
register(trtllm.ADAPTER)
register(tgi.ADAPTER)
register(lmdeploy.ADAPTER)
