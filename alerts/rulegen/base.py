"""What every rule is built with: the knob values, the labels every aggregation keeps, the
job selector, the alert and group shapes, and the names of the recording rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exporter.latency import Latency

from .values import num

QUANTILES = ("0.5", "0.95", "0.99")

QUEUE_DEPTH = "instance_model:inference_node_engine_requests_waiting:sum"
GENERATION_RATE = "instance_model:inference_node_engine_generation_tokens:rate"
PROMPT_RATE = "instance_model:inference_node_engine_prompt_tokens:rate"
PREEMPTION_RATE = "instance_model:inference_node_engine_preemptions:rate"
REPLICAS = "model:inference_node_engine_replicas_serving:count"
REPLICAS_SHARE = "model:inference_node_engine_replicas_serving:ratio"
SLO_OBJECTIVE = "slo:inference_node_slo_objective:ratio"

GPU = "GPU {{ $labels.gpu }} ({{ $labels.uuid }}) on {{ $labels.instance }}"
"""A GPU in the words of the GPU alerts' descriptions."""

Rule = dict[str, Any]


def bucket_rate(level: str, latency: Latency) -> str:
    """Name of a bucket-rate recording rule; level ``instance_model_le`` or ``model_le``."""
    return f"{level}:{latency.family}_bucket:rate"


def quantile(level: str, latency: Latency) -> str:
    """Name of a quantile recording rule; level ``instance_model`` or ``model``."""
    return f"{level}:{latency.family}:quantile"


def slo_bad(window: str) -> str:
    """Name of the recording rule of an objective's bad-event share over ``window``."""
    return f"model:inference_node_slo_bad:ratio_rate{window}"


def match(label: str, op: str, value: str) -> str:
    """One label matcher: label, operator and the value quoted."""
    return f'{label}{op}"{value}"'


def percent(ratio: str) -> str:
    return f"{num(round(float(ratio) * 100, 6))}%"


def bound(seconds: str) -> str:
    """A matcher for the ``le`` label of a bucket bound, in either spelling engines write
    (``2.5``; ``1`` or ``1.0``)."""
    value = float(seconds)
    text = num(value)
    spellings = [text, f"{text}.0"] if value.is_integer() else [text]
    return match("le", "=~", "|".join(s.replace(".", "\\\\.") for s in spellings))


class Ctx:
    """The knob values of one build and the pieces every rule is made of."""

    def __init__(self, s: Mapping[str, str]) -> None:
        self.s = s
        self.keep = tuple(label for label in s["target_labels"].split(",") if label)

    def by(self, labels: str) -> str:
        """``labels`` (``job, instance...``) after the target labels every rule keeps."""
        return ", ".join((*self.keep, labels))

    def sel(self, *matchers: str) -> str:
        """A selector: the job selector and ``matchers``."""
        return "{" + ", ".join((self.s["job_selector"], *matchers)) + "}"

    def compare(self, lhs: str, knob: str, op: str = ">") -> str:
        """``lhs`` compared with its threshold: a user's per-model recording rule
        ``inference_node:threshold:<knob>{model="..."}`` where there is one, else the knob.
        Only a model label joins them: a threshold belongs to the model wherever it runs."""
        return (f"{lhs}\n  {op} on (model) group_left ()\n(\n"
                f"    max by (model) (inference_node:threshold:{knob})\n  or on (model)\n"
                f"    count by (model) ({lhs}) * 0 + {self.s[knob]}\n)")

    def alert(self, name: str, expr: str, for_knob: str, severity: str, summary: str,
              description: str, **labels: str) -> Rule:
        return {
            "alert": name,
            "expr": expr.strip("\n"),
            "for": self.s[for_knob],
            "labels": {"severity": severity, **labels},
            "annotations": {
                "summary": summary,
                "description": description,
                "runbook_url": f"{self.s['runbook_url_base']}#{name.lower()}",
            },
        }

    def group(self, name: str, rules: list[Rule]) -> Rule:
        group: Rule = {"name": name}
        if self.s["rule_interval"]:
            group["interval"] = self.s["rule_interval"]
        group["rules"] = rules
        return group
