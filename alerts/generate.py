#!/usr/bin/env python3
"""Build the Prometheus recording and alerting rules for inference nodes from their knobs.

    python alerts/generate.py                      # (re)write the committed rule files
    python alerts/generate.py --set knob=value ... # the same with knobs changed
    python alerts/generate.py --out-dir DIR        # write both files into DIR instead
    python alerts/generate.py --check              # exit 1 when a committed file is stale
    python alerts/generate.py --list-knobs         # the knobs as a markdown table

This file is the single source of every rule. It writes ``alerts/inference-node.rules.yml``
(a plain Prometheus rule file) and ``deploy/kubernetes/prometheusrule.yaml`` (the same groups
in a prometheus-operator ``PrometheusRule``). Every threshold, ``for`` duration, rate range
and selector is a knob with a documented default; ``--set`` changes one. An unknown knob or
a bad value is an error (exit status 2). The output is deterministic, so the committed files
can be diffed against a fresh build in CI (``--check``).

Importable too: ``knobs()``, ``build(overrides)`` (the rule-file document) and
``recording_rule_names()``. The standard library, PyYAML and two tables of the ``exporter``
package are used: its latencies (:mod:`exporter.latency`) and the node's own collector kinds
(:mod:`exporter.kinds`).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from exporter.kinds import PLATFORM
from exporter.latency import LATENCIES, Latency, by_key
from exporter.slowdown import SLOWDOWN_REASONS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RULES_FILE = "inference-node.rules.yml"
OPERATOR_FILE = "prometheusrule.yaml"
RULES_PATH = HERE / RULES_FILE
OPERATOR_PATH = ROOT / "deploy" / "kubernetes" / OPERATOR_FILE
RECORDING_GROUP = "inference-node.rules"
NAME = "inference-node-exporter"

QUANTILES = ("0.5", "0.95", "0.99")


class KnobError(ValueError):
    """An unknown knob or a value a knob does not accept."""


class Knob(NamedTuple):
    """One setting of the rules: its name, default, kind of value and meaning."""

    name: str
    default: str
    kind: str
    help: str


# -- the knobs ----------------------------------------------------------------------------------

_KNOBS: tuple[Knob, ...] = (
    # Where the rules look and where they point.
    Knob("job_selector", 'job="inference-node"', "selector",
         "Label matchers selecting the exporter's scrape targets in every rule."),
    Knob("target_labels", "cluster", "labels",
         "Target labels every aggregation and join keeps besides job and instance"
         " (comma-separated; empty for none), so that same-named nodes of two clusters never"
         " merge and alerts carry them."),
    Knob("runbook_url_base",
         "https://github.com/inference-node-exporter/inference-node-exporter/blob/main/"
         "alerts/RUNBOOK.md", "url",
         "Runbook address; each alert links to `<base>#<alert name in lower case>`."),
    Knob("rule_interval", "", "optional_duration",
         "Evaluation interval of every group; empty: Prometheus' global evaluation_interval."),
    Knob("latency_rate_range", "5m", "range",
         "Range of rate() over the latency histogram buckets in the recording rules."),
    Knob("rate_range", "5m", "range",
         "Range of rate() over the other counters (tokens, preemptions)."),
    # Latency SLOs (chat serving).
    Knob("latency_min_rate", "0", "number",
         "Latency alerts need more than this many observations per second (the +Inf bucket's"
         " rate) on the node and model: an idle model never alerts."),
    Knob("ttft_p99_seconds", "2", "number",
         "InferenceNodeTTFTP99High: P99 time to first token above this many seconds."),
    Knob("ttft_p99_for", "5m", "duration", "InferenceNodeTTFTP99High: for this long."),
    Knob("itl_p99_seconds", "0.2", "number",
         "InferenceNodeITLP99High: P99 inter-token latency above this many seconds."),
    Knob("itl_p99_for", "10m", "duration", "InferenceNodeITLP99High: for this long."),
    Knob("e2e_p99_seconds", "60", "number",
         "InferenceNodeE2ELatencyP99High: P99 end-to-end request latency above this many"
         " seconds."),
    Knob("e2e_p99_for", "10m", "duration", "InferenceNodeE2ELatencyP99High: for this long."),
    # Queue.
    Knob("queue_depth", "20", "number",
         "InferenceNodeQueueDepthHigh: requests waiting on a node and model above this."),
    Knob("queue_depth_for", "5m", "duration", "InferenceNodeQueueDepthHigh: for this long."),
    Knob("queue_growth_range", "15m", "range",
         "InferenceNodeQueueDepthGrowing: the queue's trend is fitted over this range."),
    Knob("queue_growth_horizon", "30m", "range",
         "InferenceNodeQueueDepthGrowing: the trend reaches queue_depth within this time."),
    Knob("queue_growth_for", "10m", "duration",
         "InferenceNodeQueueDepthGrowing: for this long."),
    # Memory.
    Knob("kv_cache_usage", "0.95", "ratio",
         "InferenceNodeKVCacheExhausted: an engine's KV-cache usage above this (0..1),"
         " together with preemptions."),
    Knob("kv_cache_preemptions_per_second", "0", "number",
         "InferenceNodeKVCacheExhausted: the engine's preemptions per second above this."),
    Knob("kv_cache_for", "10m", "duration", "InferenceNodeKVCacheExhausted: for this long."),
    Knob("gpu_memory_pressure", "0.95", "ratio",
         "InferenceNodeGPUMemoryPressureHigh: inference_node_gpu_memory_pressure_ratio above"
         " this."),
    Knob("gpu_memory_pressure_for", "15m", "duration",
         "InferenceNodeGPUMemoryPressureHigh: for this long."),
    # GPU health.
    Knob("gpu_lost_for", "1m", "duration", "InferenceNodeGPULost: for this long."),
    Knob("gpus_missing_for", "5m", "duration", "InferenceNodeGPUsMissing: for this long."),
    Knob("xid_codes", "48,61,62,63,64,74,79,92,94,95,119,120,140", "codes",
         "InferenceNodeGPUXidError: the XID codes that alert (comma-separated)."),
    Knob("xid_range", "10m", "range",
         "InferenceNodeGPUXidError: an XID keeps the alert firing for this long."),
    Knob("xid_history", "1d", "range",
         "InferenceNodeGPUXidError: an XID series seen in this long before `xid_range` is not"
         " new, so a scrape gap does not make its lifetime count page again."),
    Knob("xid_for", "0s", "duration", "InferenceNodeGPUXidError: for this long."),
    Knob("ecc_range", "10m", "range",
         "InferenceNodeGPUUncorrectableECC: an uncorrected ECC error keeps the alert firing"
         " for this long."),
    Knob("ecc_for", "0s", "duration", "InferenceNodeGPUUncorrectableECC: for this long."),
    Knob("row_remap_failed_for", "1m", "duration",
         "InferenceNodeGPURowRemapFailed: for this long."),
    Knob("reset_pending_for", "15m", "duration",
         "InferenceNodeGPUResetPending: a row remapping or page retirement waits for a GPU"
         " reset this long."),
    Knob("throttle_reasons", ",".join(SLOWDOWN_REASONS), "names",
         "InferenceNodeGPUThrottled: the `reason` values that alert (comma-separated)."),
    Knob("throttle_range", "5m", "range",
         "InferenceNodeGPUThrottled: a slowdown at any sample in this range counts, so one"
         " that comes and goes still alerts."),
    Knob("throttle_for", "10m", "duration", "InferenceNodeGPUThrottled: for this long."),
    Knob("gpu_temperature_celsius", "85", "number",
         "InferenceNodeGPUTemperatureHigh: GPU core temperature above this."),
    Knob("gpu_temperature_for", "10m", "duration",
         "InferenceNodeGPUTemperatureHigh: for this long."),
    # Noisy neighbour.
    Knob("cpu_steal_ratio", "0.1", "ratio",
         "InferenceNodeNoisyNeighbour: CPU steal above this share (0..1), together with"
         " degraded latency on the node."),
    Knob("degraded_ttft_p99_seconds", "1", "number",
         "InferenceNodeNoisyNeighbour: latency is degraded with a P99 time to first token"
         " above this many seconds..."),
    Knob("degraded_itl_p99_seconds", "0.1", "number",
         "InferenceNodeNoisyNeighbour: ...or a P99 inter-token latency above this many"
         " seconds."),
    Knob("cpu_steal_range", "5m", "range",
         "InferenceNodeNoisyNeighbour: steal is averaged over this range, so bursts count."),
    Knob("noisy_neighbour_for", "10m", "duration",
         "InferenceNodeNoisyNeighbour: for this long."),
    # The monitoring pipeline.
    Knob("exporter_down_for", "5m", "duration", "InferenceNodeExporterDown: for this long."),
    Knob("exporter_absent_for", "10m", "duration",
         "InferenceNodeExporterAbsent: for this long."),
    Knob("node_missing_range", "1d", "range",
         "InferenceNodeMissing: a target seen in this range that is no longer scraped."),
    Knob("node_missing_for", "10m", "duration", "InferenceNodeMissing: for this long."),
    Knob("engine_down_for", "5m", "duration", "InferenceNodeEngineDown: for this long."),
    Knob("engine_stalled_range", "10m", "range",
         "InferenceNodeEngineStalled: requests in flight throughout this range and not one"
         " token generated in it."),
    Knob("engine_stalled_for", "5m", "duration", "InferenceNodeEngineStalled: for this long."),
    Knob("engine_restarts", "3", "number",
         "InferenceNodeEngineCrashLooping: at least this many restarts in"
         " `engine_restarts_range`."),
    Knob("engine_restarts_range", "30m", "range",
         "InferenceNodeEngineCrashLooping: the range restarts are counted over."),
    Knob("engine_restarts_for", "0s", "duration",
         "InferenceNodeEngineCrashLooping: for this long."),
    Knob("collector_down_for", "10m", "duration",
         "InferenceNodeCollectorDown: for this long."),
    Knob("stale_seconds", "120", "number",
         "InferenceNodeCollectorStale: a source that reads up but last succeeded more than"
         " this many seconds ago."),
    Knob("stale_for", "5m", "duration", "InferenceNodeCollectorStale: for this long."),
    Knob("watchdog_for", "0s", "duration",
         "InferenceNodeWatchdog: for this long."),
)


def knobs() -> dict[str, Knob]:
    """Every knob by name, in the order of the table."""
    return {k.name: k for k in _KNOBS}


# -- validation ---------------------------------------------------------------------------------

_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")
_MATCHER = r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\\n]|\\.)*"\s*'
_SELECTOR = re.compile(rf"^{_MATCHER}(?:,{_MATCHER})*$")
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
             "w": 604_800_000, "y": 31_536_000_000}


def _milliseconds(duration: str) -> int:
    return sum(int(n) * _UNITS_MS[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)",
                                                              duration))


def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise KnobError("a number is expected") from None
    if not math.isfinite(number) or number < 0:
        raise KnobError("a finite number, 0 or more, is expected")
    return number


def _check(knob: Knob, value: str) -> str:
    """The value, normalised; KnobError when the knob does not accept it."""
    value = value.strip()
    kind = knob.kind
    if kind in ("duration", "range", "optional_duration"):
        if kind == "optional_duration" and value == "":
            return value
        if not _DURATION.match(value):
            raise KnobError("a Prometheus duration such as 30s, 5m or 1h30m is expected")
        if kind != "duration" and _milliseconds(value) == 0:
            raise KnobError("a duration above zero is expected")
    elif kind == "number":
        return _num(_number(value))
    elif kind == "ratio":
        number = _number(value)
        if number > 1:
            raise KnobError("a ratio between 0 and 1 is expected")
        return _num(number)
    elif kind == "codes":
        codes = [c.strip() for c in value.split(",")]
        if not all(re.fullmatch(r"[0-9]+", c) for c in codes):
            raise KnobError("comma-separated XID codes (integers) are expected")
        return ",".join(str(c) for c in sorted({int(c) for c in codes}))
    elif kind == "names":
        names = [n.strip() for n in value.split(",")]
        if not all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names):
            raise KnobError("comma-separated label values (lower case, digits, _) are expected")
        return ",".join(names)
    elif kind == "labels":
        labels = [n.strip() for n in value.split(",") if n.strip()]
        if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n) for n in labels) \
                or set(labels) & {"job", "instance", "model", "le"}:
            raise KnobError("comma-separated label names (not job, instance, model or le)"
                            " are expected")
        return ",".join(dict.fromkeys(labels))
    elif kind == "selector":
        if not _SELECTOR.match(value):
            raise KnobError('label matchers such as job="inference-node" or'
                            ' job=~"gpu-.*", cluster="eu" are expected')
        return ", ".join(m.strip() for m in re.findall(_MATCHER, value))
    elif kind == "url":
        if not re.fullmatch(r"https?://[^\s#\"]+", value):
            raise KnobError("an http(s) URL without a #fragment is expected")
        return value
    return value


def _num(number: float) -> str:
    """A number as PromQL and people write it: 2, 0.2, 1e-06."""
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)


def settings(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every knob's value: its default unless overridden. KnobError names a bad one."""
    table = knobs()
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(table))
    if unknown:
        raise KnobError(f"unknown knob {', '.join(unknown)} (see --list-knobs)")
    out: dict[str, str] = {}
    for name, knob in table.items():
        value = overrides.get(name, knob.default)
        try:
            out[name] = _check(knob, value)
        except KnobError as e:
            raise KnobError(f"knob {name}={value!r}: {e}") from None
    return out


# -- the rules ----------------------------------------------------------------------------------


def bucket_rate(level: str, latency: Latency) -> str:
    """Name of a bucket-rate recording rule; level ``instance_model_le`` or ``model_le``."""
    return f"{level}:{latency.family}_bucket:rate"


def quantile(level: str, latency: Latency) -> str:
    """Name of a quantile recording rule; level ``instance_model`` or ``model``."""
    return f"{level}:{latency.family}:quantile"


class _LatencyAlert(NamedTuple):
    """A P99 objective: the alert, the latency it watches, its threshold and ``for`` knobs,
    its severity and what users suffer (the end of its description)."""

    name: str
    latency: Latency
    seconds_knob: str
    for_knob: str
    severity: str
    consequence: str


_LATENCY_ALERTS: tuple[_LatencyAlert, ...] = (
    _LatencyAlert("InferenceNodeTTFTP99High", by_key("ttft"), "ttft_p99_seconds",
                  "ttft_p99_for", "critical",
                  ": users wait for the first token of their answers."),
    _LatencyAlert("InferenceNodeITLP99High", by_key("itl"), "itl_p99_seconds", "itl_p99_for",
                  "critical", ": streamed answers stutter."),
    _LatencyAlert("InferenceNodeE2ELatencyP99High", by_key("e2e"), "e2e_p99_seconds",
                  "e2e_p99_for", "warning", "."),
)


QUEUE_DEPTH = "instance_model:inference_node_engine_requests_waiting:sum"
GENERATION_RATE = "instance_model:inference_node_engine_generation_tokens:rate"
PROMPT_RATE = "instance_model:inference_node_engine_prompt_tokens:rate"
PREEMPTION_RATE = "instance_model:inference_node_engine_preemptions:rate"


class _Rules:
    """The groups for one set of knob values."""

    def __init__(self, s: Mapping[str, str]) -> None:
        self.s = s
        self.keep = tuple(label for label in s["target_labels"].split(",") if label)

    def by(self, labels: str) -> str:
        """``labels`` (``job, instance...``) after the target labels every rule keeps."""
        return ", ".join((*self.keep, labels))

    def sel(self, *matchers: str) -> str:
        """A selector: the job selector and ``matchers``."""
        return "{" + ", ".join((self.s["job_selector"], *matchers)) + "}"

    def alert(self, name: str, expr: str, for_knob: str, severity: str, summary: str,
              description: str) -> dict[str, Any]:
        return {
            "alert": name,
            "expr": expr.strip("\n"),
            "for": self.s[for_knob],
            "labels": {"severity": severity},
            "annotations": {
                "summary": summary,
                "description": description,
                "runbook_url": f"{self.s['runbook_url_base']}#{name.lower()}",
            },
        }

    def group(self, name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        group: dict[str, Any] = {"name": name}
        if self.s["rule_interval"]:
            group["interval"] = self.s["rule_interval"]
        group["rules"] = rules
        return group

    # -- recording rules ------------------------------------------------------------------------

    def recording(self) -> list[dict[str, Any]]:
        rules: list[dict[str, Any]] = []
        for latency in LATENCIES:
            rules += self._latency_recording(latency)
        return rules + self._load_recording()

    def _latency_recording(self, latency: Latency) -> list[dict[str, Any]]:
        """Bucket rates and quantiles of one latency, per node and model, then per model."""
        node_rate = bucket_rate("instance_model_le", latency)
        model_rate = bucket_rate("model_le", latency)
        by_le = self.by("job, instance, model, le")
        return [
            {
                "record": node_rate,
                "expr": f"sum by ({by_le}) (rate({latency.family}_bucket"
                        f"{self.sel()}[{self.s['latency_rate_range']}]))",
            },
            *self._quantiles(quantile("instance_model", latency), node_rate),
            {
                "record": model_rate,
                "expr": f"sum by ({self.by('job, model, le')}) ({node_rate})",
            },
            *self._quantiles(quantile("model", latency), model_rate),
        ]

    @staticmethod
    def _quantiles(record: str, rate: str) -> list[dict[str, Any]]:
        return [{
            "record": record,
            "expr": f"histogram_quantile({q}, {rate})",
            "labels": {"quantile": q},
        } for q in QUANTILES]

    def _load_recording(self) -> list[dict[str, Any]]:
        """The queue depth and the token and preemption rates per node and model."""
        s = self.s
        node = self.by("job, instance, model")
        rules: list[dict[str, Any]] = [{
            "record": QUEUE_DEPTH,
            "expr": f"sum by ({node}) (inference_node_engine_requests_waiting{self.sel()})",
        }]
        for record, counter in ((GENERATION_RATE, "generation_tokens"),
                                (PROMPT_RATE, "prompt_tokens"),
                                (PREEMPTION_RATE, "preemptions")):
            rules.append({
                "record": record,
                "expr": f"sum by ({node}) (rate(inference_node_engine_{counter}"
                        f"_total{self.sel()}[{s['rate_range']}]))",
            })
        return rules

    # -- alerts ---------------------------------------------------------------------------------

    def _p99_above(self, latency: Latency, seconds: str) -> str:
        """P99 of a histogram per job, instance and model above ``seconds``, with traffic."""
        node = self.by("job, instance, model")
        return f"""
max by ({node}) ({quantile('instance_model', latency)}{{quantile="0.99"}})
  > {seconds}
and on ({node})
sum by ({node}) ({bucket_rate('instance_model_le', latency)}{{le="+Inf"}})
  > {self.s['latency_min_rate']}
"""

    def latency(self) -> list[dict[str, Any]]:
        return [self._latency_alert(a) for a in _LATENCY_ALERTS]

    def _latency_alert(self, a: _LatencyAlert) -> dict[str, Any]:
        seconds, words = self.s[a.seconds_knob], a.latency.words
        return self.alert(
            a.name,
            self._p99_above(a.latency, seconds),
            a.for_knob, a.severity,
            f"P99 {words} is above its objective.",
            f"P99 {words} of {{{{ $labels.model }}}} on {{{{ $labels.instance }}}} is"
            f" {{{{ $value | humanizeDuration }}}}, above {seconds}s for"
            f" {self.s[a.for_knob]}{a.consequence}")

    def queue(self) -> list[dict[str, Any]]:
        s = self.s
        horizon = _milliseconds(s["queue_growth_horizon"]) / 1000
        return [
            self.alert(
                "InferenceNodeQueueDepthHigh",
                f"sum by ({self.by('job, instance, model')})"
                f" (inference_node_engine_requests_waiting{self.sel()})\n  > {s['queue_depth']}",
                "queue_depth_for", "warning",
                "Requests are queueing on an inference node.",
                f"{{{{ $value | humanize }}}} requests of {{{{ $labels.model }}}} wait to be"
                f" scheduled on {{{{ $labels.instance }}}}, more than {s['queue_depth']} for"
                f" {s['queue_depth_for']}: the engine is saturated."),
            self.alert(
                "InferenceNodeQueueDepthGrowing",
                f"""
predict_linear({QUEUE_DEPTH}[{s['queue_growth_range']}], {_num(horizon)})
  > {s['queue_depth']}
and
{QUEUE_DEPTH} <= {s['queue_depth']}
""",
                "queue_growth_for", "warning",
                "The request queue of an inference node grows steadily.",
                f"The queue of {{{{ $labels.model }}}} on {{{{ $labels.instance }}}} has"
                f" grown steadily over {s['queue_growth_range']}; at this pace it passes"
                f" {s['queue_depth']} waiting requests within {s['queue_growth_horizon']}"
                f" (forecast for then: {{{{ $value | humanize }}}})."),
        ]

    def memory(self) -> list[dict[str, Any]]:
        s = self.s
        return [
            self.alert(
                "InferenceNodeKVCacheExhausted",
                f"""
inference_node_engine_kv_cache_usage_ratio{self.sel()}
  > {s['kv_cache_usage']}
and
rate(inference_node_engine_preemptions_total{self.sel()}[{s['rate_range']}])
  > {s['kv_cache_preemptions_per_second']}
""",
                "kv_cache_for", "warning",
                "The KV cache of an engine is full and it preempts requests.",
                "The KV cache of {{ $labels.model }} (endpoint {{ $labels.endpoint }},"
                " rank {{ $labels.dp_rank }}) on {{ $labels.instance }} is"
                " {{ $value | humanizePercentage }} full and the scheduler preempts"
                " requests: they are recomputed, throughput drops and latency rises."),
            self.alert(
                "InferenceNodeGPUMemoryPressureHigh",
                f"inference_node_gpu_memory_pressure_ratio{self.sel()}\n"
                f"  > {s['gpu_memory_pressure']}",
                "gpu_memory_pressure_for", "warning",
                "A GPU runs out of memory for inference.",
                f"Memory pressure of GPU {{{{ $labels.gpu }}}} on {{{{ $labels.instance }}}} is"
                f" {{{{ $value | humanizePercentage }}}}, above"
                f" {_percent(s['gpu_memory_pressure'])} for {s['gpu_memory_pressure_for']}:"
                f" the KV cache of its engines is (nearly) full or they preempt requests."),
        ]

    def gpu(self) -> list[dict[str, Any]]:
        return [*self._gpu_presence(), *self._gpu_errors(), *self._gpu_memory_repair(),
                *self._gpu_slowdown()]

    def _gpu_presence(self) -> list[dict[str, Any]]:
        """GPUs lost from the bus or missing from NVML's list."""
        return [
            self.alert(
                "InferenceNodeGPULost",
                f"inference_node_gpu_lost{self.sel()} == 1",
                "gpu_lost_for", "critical",
                "A GPU has fallen off the bus.",
                f"NVML reports {_GPU} lost: the GPU is gone until the node is reset or"
                f" rebooted, and the engines using it have failed."),
            self.alert(
                "InferenceNodeGPUsMissing",
                f"inference_node_gpus_expected{self.sel()} - inference_node_gpus{self.sel()}"
                f"\n  > 0",
                "gpus_missing_for", "critical",
                "An inference node has fewer GPUs than it should.",
                "{{ $value | humanize }} GPU(s) of {{ $labels.instance }} are missing: NVML"
                " lists fewer GPUs than --gpu.expected-count."),
        ]

    def _gpu_errors(self) -> list[dict[str, Any]]:
        """Critical XID errors and uncorrectable ECC errors."""
        s = self.s
        xids = "|".join(s["xid_codes"].split(","))
        xid = f"inference_node_gpu_xid_errors_total{self.sel(_match('xid', '=~', xids))}"
        return [
            # The daemon creates an XID's series at its first occurrence, already at 1,
            # which increase() cannot see: a series newer than the range counts too, but
            # only if no sample of it lies in the history before the range (a scrape gap
            # longer than the lookback must not make its lifetime count page again).
            self.alert(
                "InferenceNodeGPUXidError",
                f"""
increase({xid}[{s['xid_range']}])
  > 0
or
(
    {xid}
  unless
    last_over_time({xid}[{s['xid_history']}] offset {s['xid_range']})
)
""",
                "xid_for", "critical",
                "A GPU reported a critical XID error.",
                f"{_GPU} reported XID {{{{ $labels.xid }}}}"
                f" ({{{{ $value | humanize }}}} in the last {s['xid_range']}), an error that"
                f" needs the GPU reset, drained or replaced."),
            self.alert(
                "InferenceNodeGPUUncorrectableECC",
                f"increase(inference_node_gpu_ecc_errors_total"
                f"{self.sel(_match('type', '=', 'uncorrected'))}"
                f"[{s['ecc_range']}])\n  > 0",
                "ecc_for", "critical",
                "A GPU had uncorrectable ECC memory errors.",
                f"{_GPU} had {{{{ $value | humanize }}}} uncorrectable ECC error(s) in the last"
                f" {s['ecc_range']}: data in GPU memory was lost; the engines on it may"
                f" have crashed or returned corrupt results."),
        ]

    def _gpu_memory_repair(self) -> list[dict[str, Any]]:
        """Faulty memory rows the GPU could not remap, or whose repair waits for a reset."""
        return [
            self.alert(
                "InferenceNodeGPURowRemapFailed",
                f"inference_node_gpu_remapped_rows_failed{self.sel()} == 1",
                "row_remap_failed_for", "critical",
                "A GPU failed to remap a faulty memory row.",
                f"{_GPU} failed to remap a faulty HBM row: the GPU has run out of spare rows"
                f" and must be replaced."),
            self.alert(
                "InferenceNodeGPUResetPending",
                f"""
inference_node_gpu_remapped_rows_pending{self.sel()} == 1
or
inference_node_gpu_retired_pages_pending{self.sel()} == 1
""",
                "reset_pending_for", "warning",
                "A GPU waits for a reset to retire faulty memory.",
                f"{_GPU} has a row remapping or page retirement pending for"
                f" {self.s['reset_pending_for']}: it takes effect at the next GPU reset; until"
                f" then the faulty memory is still in use."),
        ]

    def _gpu_slowdown(self) -> list[dict[str, Any]]:
        """Clocks held down for a thermal or power reason, and high temperatures."""
        s = self.s
        reasons = "|".join(s["throttle_reasons"].split(","))
        return [
            self.alert(
                "InferenceNodeGPUThrottled",
                f"max_over_time(inference_node_gpu_throttle_reason"
                f"{self.sel(_match('reason', '=~', reasons))}[{s['throttle_range']}]) == 1",
                "throttle_for", "warning",
                "A GPU's clocks are held down by a thermal or power slowdown.",
                f"{_GPU} has been slowed down for {s['throttle_for']}, reason"
                f" {{{{ $labels.reason }}}}: tokens per second drop and latency rises."),
            self.alert(
                "InferenceNodeGPUTemperatureHigh",
                f"inference_node_gpu_temperature_celsius{self.sel()}\n"
                f"  > {s['gpu_temperature_celsius']}",
                "gpu_temperature_for", "warning",
                "A GPU runs hot.",
                f"{_GPU} is at {{{{ $value | humanize }}}}°C, above"
                f" {s['gpu_temperature_celsius']}°C for {s['gpu_temperature_for']}: it is"
                f" close to its slowdown temperature."),
        ]

    def platform(self) -> list[dict[str, Any]]:
        s = self.s
        ttft = quantile("instance_model", by_key("ttft"))
        itl = quantile("instance_model", by_key("itl"))
        return [
            self.alert(
                "InferenceNodeNoisyNeighbour",
                f"""
avg_over_time(inference_node_host_cpu_steal_ratio{self.sel()}[{s['cpu_steal_range']}])
  > {s['cpu_steal_ratio']}
and on ({self.by('job, instance')})
(
    max by ({self.by('job, instance')}) ({ttft}{{quantile="0.99"}})
      > {s['degraded_ttft_p99_seconds']}
  or
    max by ({self.by('job, instance')}) ({itl}{{quantile="0.99"}})
      > {s['degraded_itl_p99_seconds']}
)
""",
                "noisy_neighbour_for", "warning",
                "Latency degrades on a node whose hypervisor steals CPU time.",
                f"The hypervisor of {{{{ $labels.instance }}}} gives"
                f" {{{{ $value | humanizePercentage }}}} of its CPU time to other guests while"
                f" its P99 time to first token is above {s['degraded_ttft_p99_seconds']}s or"
                f" its P99 inter-token latency above {s['degraded_itl_p99_seconds']}s: the"
                f" latency variance likely comes from the platform (a noisy neighbour), not"
                f" from the model or the load."),
        ]

    def exporter(self) -> list[dict[str, Any]]:
        s = self.s
        source = ("source {{ $labels.source }} of collector {{ $labels.collector }} on"
                  " {{ $labels.instance }}")
        return [
            self.alert(
                "InferenceNodeExporterDown",
                f"up{self.sel()} == 0",
                "exporter_down_for", "critical",
                "Prometheus cannot scrape an inference node's exporter.",
                f"Prometheus has not scraped inference-node-exporter on {{{{ $labels.instance }}}}"
                f" (job {{{{ $labels.job }}}}) for {s['exporter_down_for']}: the node, its"
                f" network or the exporter is down, and its other alerts cannot fire."),
            self.alert(
                "InferenceNodeExporterAbsent",
                f"absent(up{self.sel()})",
                "exporter_absent_for", "critical",
                "Prometheus has no inference-node-exporter target.",
                f"No target matching {s['job_selector']} has been scraped for"
                f" {s['exporter_absent_for']}: service discovery or the scrape configuration"
                f" lost the inference nodes, and none of their alerts can fire."),
            self.alert(
                "InferenceNodeMissing",
                f"present_over_time(up{self.sel()}[{s['node_missing_range']}])\n"
                f"unless on ({self.by('job, instance')})\nup{self.sel()}",
                "node_missing_for", "warning",
                "An inference node is no longer a scrape target.",
                f"{{{{ $labels.instance }}}} (job {{{{ $labels.job }}}}) was scraped in the"
                f" last {s['node_missing_range']} but is no longer a target, for"
                f" {s['node_missing_for']}: service discovery lost it, or it was removed. Its"
                f" alerts cannot fire. Removed on purpose: silence this alert for"
                f" {s['node_missing_range']}."),
            self.alert(
                "InferenceNodeEngineDown",
                f"inference_node_engine_up{self.sel()} == 0",
                "engine_down_for", "critical",
                "An inference engine does not answer.",
                f"The metrics endpoint of {{{{ $labels.engine }}}} engine"
                f" {{{{ $labels.endpoint }}}} on {{{{ $labels.instance }}}} has not answered"
                f" for {s['engine_down_for']}: the engine is down, restarting or hung."),
            *self._engine_health(),
            self.alert(
                "InferenceNodeCollectorDown",
                # The node's own collectors only: every engine endpoint is a source of its
                # engine's collector too, and InferenceNodeEngineDown covers it.
                f"inference_node_exporter_collector_up"
                f"{self.sel(_match('collector', '=~', '|'.join(PLATFORM)))} == 0",
                "collector_down_for", "warning",
                "A collector of inference-node-exporter fails.",
                f"The {source} has failed for {s['collector_down_for']}: its metrics are"
                f" missing and the alerts built on them cannot fire."),
            self.alert(
                "InferenceNodeCollectorStale",
                f"""
(
  time() - inference_node_exporter_collector_last_success_timestamp_seconds{self.sel()}
    > {s['stale_seconds']}
)
unless on ({self.by('job, instance, collector, source')})
(inference_node_exporter_collector_up{self.sel()} == 0)
""",
                "stale_for", "warning",
                "A collector of inference-node-exporter has stopped polling.",
                f"The {source} last succeeded {{{{ $value | humanizeDuration }}}} ago although"
                f" it reads up: its worker has stalled (or the exporter's clock is off), and"
                f" its metrics are old."),
        ]

    def _engine_health(self) -> list[dict[str, Any]]:
        """An engine that answers but serves nothing, and one that keeps restarting."""
        s = self.s
        r = s["engine_stalled_range"]
        engine = ("{{ $labels.engine }} engine {{ $labels.endpoint }} (model"
                  " {{ $labels.model }}, rank {{ $labels.dp_rank }}) on {{ $labels.instance }}")
        return [
            self.alert(
                "InferenceNodeEngineStalled",
                # Latency histograms record finished requests only: a wedged engine looks
                # like no traffic to them. Work held throughout with no token out is the sign.
                f"""
(
    min_over_time(inference_node_engine_requests_running{self.sel()}[{r}])
  + min_over_time(inference_node_engine_requests_waiting{self.sel()}[{r}])
) > 0
and
increase(inference_node_engine_generation_tokens_total{self.sel()}[{r}]) == 0
""",
                "engine_stalled_for", "critical",
                "An inference engine holds requests but generates no token.",
                f"The {engine} has held at least {{{{ $value | humanize }}}} request(s),"
                f" running or waiting, throughout the last {r} without generating a single"
                f" token: it answers its metrics endpoint but is wedged, and its users wait."),
            self.alert(
                "InferenceNodeEngineCrashLooping",
                f"increase(inference_node_engine_restarts_total{self.sel()}"
                f"[{s['engine_restarts_range']}])\n  >= {s['engine_restarts']}",
                "engine_restarts_for", "critical",
                "An inference engine keeps restarting.",
                f"The {engine} restarted {{{{ $value | printf \"%.0f\" }}}} times in the last"
                f" {s['engine_restarts_range']}: it crashes and comes back, serving in bursts"
                f" between the crashes, which InferenceNodeEngineDown can miss."),
        ]

    def watchdog(self) -> list[dict[str, Any]]:
        return [{
            "alert": "InferenceNodeWatchdog",
            "expr": "vector(1)",
            "for": self.s["watchdog_for"],
            "labels": {"severity": "none"},
            "annotations": {
                "summary": "Always firing: the alerting pipeline works.",
                "description": "Always firing while Prometheus evaluates the inference-node"
                               " rules and Alertmanager delivers them; route it to a"
                               " dead-man's switch, which pages when it stops"
                               " ({{ $value }} means alive).",
                "runbook_url": f"{self.s['runbook_url_base']}#inferencenodewatchdog",
            },
        }]

    def groups(self) -> list[dict[str, Any]]:
        return [
            self.group(RECORDING_GROUP, self.recording()),
            self.group("inference-node.latency", self.latency()),
            self.group("inference-node.queue", self.queue()),
            self.group("inference-node.memory", self.memory()),
            self.group("inference-node.gpu", self.gpu()),
            self.group("inference-node.platform", self.platform()),
            self.group("inference-node.exporter", self.exporter() + self.watchdog()),
        ]


_GPU = "GPU {{ $labels.gpu }} ({{ $labels.uuid }}) on {{ $labels.instance }}"
"""A GPU in the words of the GPU alerts' descriptions."""


def _match(label: str, op: str, value: str) -> str:
    """One label matcher: label, operator and the value quoted."""
    return f'{label}{op}"{value}"'


def _percent(ratio: str) -> str:
    return f"{_num(round(float(ratio) * 100, 6))}%"


def build(overrides: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The rule-file document ({"groups": [...]}) for the knobs; KnobError on a bad one."""
    return {"groups": _Rules(settings(overrides)).groups()}


def recording_rule_names() -> list[str]:
    """The names of the recording rules, each once, in file order."""
    names: dict[str, None] = {}
    for group in build()["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                names[rule["record"]] = None
    return list(names)


def alert_names() -> list[str]:
    """The names of the alerts, in file order."""
    return [rule["alert"] for group in build()["groups"] for rule in group["rules"]
            if "alert" in rule]


# -- output -------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block scalars for multi-line strings (the longer expressions), keys in given order."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _yaml(document: Mapping[str, Any]) -> str:
    return yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     width=10_000, default_flow_style=False)


def _header(overrides: Mapping[str, str]) -> str:
    lines = ["# Generated by alerts/generate.py: do not edit; change the knobs and regenerate:",
             "#   python alerts/generate.py [--set knob=value ...]"]
    if overrides:
        lines.append("# Knobs set: " + ", ".join(f"{k}={v}" for k, v in overrides.items()))
    else:
        lines.append("# Every knob at its default (python alerts/generate.py --list-knobs).")
    return "\n".join(lines) + "\n"


def render(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The text of both files by file name: the rule file and the PrometheusRule."""
    overrides = dict(overrides or {})
    document = build(overrides)
    header = _header(overrides)
    operator = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": NAME,
            "labels": {
                "app.kubernetes.io/name": NAME,
                "app.kubernetes.io/component": "alert-rules",
                "prometheus": "k8s",
                "role": "alert-rules",
            },
        },
        "spec": document,
    }
    return {RULES_FILE: header + _yaml(document), OPERATOR_FILE: header + _yaml(operator)}


def knob_table() -> str:
    """The knobs as a markdown table."""
    lines = ["| Knob | Default | Meaning |", "|---|---|---|"]
    for k in _KNOBS:
        default = f"`{k.default}`" if k.default else "(unset)"
        lines.append(f"| `{k.name}` | {default} | {k.help} |")
    return "\n".join(lines) + "\n"


def _parse_sets(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise KnobError(f"--set {item!r}: knob=value is expected")
        out[name.strip()] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                        help="change a knob (repeatable); see --list-knobs")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"write {RULES_FILE} and {OPERATOR_FILE} into this directory"
                             " (default: alerts/ and deploy/kubernetes/)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a file differs from a fresh build")
    parser.add_argument("--list-knobs", action="store_true",
                        help="print the knobs, their defaults and meanings (markdown)")
    args = parser.parse_args(argv)

    def err(message: str) -> None:
        print(f"{parser.prog}: error: {message}", file=sys.stderr)

    if args.list_knobs:
        sys.stdout.write(knob_table())
        return 0
    try:
        overrides = _parse_sets(args.set)
        files = render(overrides)
    except KnobError as e:
        err(str(e))
        return 2
    if args.out_dir is None:
        paths = {RULES_FILE: RULES_PATH, OPERATOR_FILE: OPERATOR_PATH}
    else:
        paths = {name: args.out_dir / name for name in files}
    if args.check:
        stale = [str(paths[name]) for name, text in files.items()
                 if not paths[name].is_file() or paths[name].read_text() != text]
        if stale:
            err(f"stale or missing: {', '.join(stale)}; regenerate them with"
                f" python alerts/generate.py")
            return 1
        return 0
    for name, text in files.items():
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        paths[name].write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
