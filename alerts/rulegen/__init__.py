"""The rules of ``alerts/generate.py``, one module per concern: the knobs and their values,
the shared pieces, the recording rules, the per-model pages, the per-node tickets and the
canary's."""

from __future__ import annotations

from collections.abc import Mapping

from . import canary, cost, gpu, node, pipeline, platform_env, slo
from .base import Ctx, Rule
from .knobs import Knob, KnobError, knobs
from .recording import recording
from .values import settings

RECORDING_GROUP = "inference-node.rules"

__all__ = ["RECORDING_GROUP", "Knob", "KnobError", "build", "knobs", "settings"]


def build(overrides: Mapping[str, str] | None = None) -> dict[str, list[Rule]]:
    """The rule-file document ({"groups": [...]}) for the knobs; KnobError on a bad one."""
    c = Ctx(settings(overrides))
    return {"groups": [
        c.group(RECORDING_GROUP, recording(c) + cost.recording(c) + canary.recording(c)),
        c.group("inference-node.slo", slo.alerts(c)),
        c.group("inference-node.latency", node.latency(c)),
        c.group("inference-node.queue", node.queue(c)),
        c.group("inference-node.memory", node.memory(c)),
        c.group("inference-node.gpu", gpu.gpu(c)),
        c.group("inference-node.platform", node.platform(c)),
        c.group("inference-node.environment", platform_env.alerts(c)),
        c.group("inference-node.canary", canary.alerts(c)),
        c.group("inference-node.exporter", pipeline.exporter(c) + pipeline.watchdog(c)),
    ]}
