"""Every series a PromQL query of the project may select, with its label names: the daemon's
(``exporter/schema.py``), the recording rules' (``alerts/generate.py``) and Prometheus' own.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from types import ModuleType

from exporter.schema import SCHEMA

GENERATOR = Path(__file__).parents[2] / "alerts" / "generate.py"
TARGET_LABELS = frozenset({"job", "instance"})
"""What Prometheus adds to every series it scrapes."""


@cache
def alerts_generator() -> ModuleType:
    """``alerts/generate.py``, the rules' single source, loaded by path (not a package)."""
    spec = importlib.util.spec_from_file_location("_alerts_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rule_labels(rule: dict[str, object]) -> frozenset[str]:
    """The labels of a recording rule's series: job always, then its level's labels
    (instance, model, le, slo...) and the labels the rule sets (quantile, slo)."""
    name = str(rule["record"])
    level, _, rest = name.partition(":")
    assert rest, f"{name} is not a level:metric:operation name"
    static = rule.get("labels") or {}
    assert isinstance(static, dict)
    return frozenset({"job", *level.split("_"), *static})


@cache
def known_series() -> dict[str, frozenset[str] | None]:
    """Series name -> its label names (None: any label, as for ``ALERTS``)."""
    out: dict[str, frozenset[str] | None] = {}
    for s in SCHEMA:
        labels = frozenset(s.labels) | TARGET_LABELS
        if s.type == "histogram":
            out[f"{s.name}_bucket"] = labels | {"le"}
            out[f"{s.name}_sum"] = labels
            out[f"{s.name}_count"] = labels
        else:
            out[s.name] = labels
    generator = alerts_generator()
    for group in generator.build()["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                out[rule["record"]] = out.get(rule["record"], frozenset()) | rule_labels(rule)
    for name in generator.user_series():
        out[name] = frozenset({"model"})
    out["up"] = TARGET_LABELS
    out["ALERTS"] = None  # an alert carries its rule's labels
    return out
