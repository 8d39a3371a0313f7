"""The PromQL the dashboards share: selectors, template variables, and query helpers.

Every name is one of ``exporter/schema.py`` or a recording rule of ``alerts/``; the
canary's (``inference_node_canary_*``, opt-in per endpoint) are those of exporter/canary/.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as model

from exporter.latency import LATENCIES, Latency, by_key
from exporter.slowdown import SLOWDOWN_REASONS

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")

WINDOWS = ("1m", "5m")
"""The daemon's sliding windows with the default --derive.windows (60 s and 300 s), the
values of the ``window`` variable; the first is its default."""
WINDOW = "$window"
TOPK = ("5", "10", "20", "50")
"""The values of the ``topk`` variable: how many nodes a worst-first panel shows."""
DEFAULT_TOPK = "10"
K = "$topk"

J = 'job=~"$job"'
N = f'{J}, instance=~"$node"'
EN = f'{N}, engine=~"$engine"'
"""The selected nodes' engine series that have no model label (up, process figures)."""
E = f'{EN}, model=~"$model"'
"""The selected nodes' engine series of the selected engines and models."""
R = f'{N}, model=~"$model"'
"""The per-node recording rules (instance and model, no engine: they sum over engines)."""
G = f'{N}, gpu=~"$gpu"'
M = f'{J}, model=~"$model"'
"""Per-model series (no instance label): the model-level recording rules."""
# The throttle reasons the alert counts (exporter.slowdown): not the ordinary power cap.
SLOWDOWN = f'reason=~"{"|".join(SLOWDOWN_REASONS)}"'
FIRING = 'alertstate="firing", alertname=~"Inference(Node|Model).*"'
MODEL_JOIN = "cluster, job, model"
"""The labels a per-node rule shares with its model's fleet-wide rule: the rules keep the
target label ``cluster`` (alerts/ knob ``target_labels``) besides job."""

# The SLO recording rules of alerts/ (labels cluster, job, model and slo: ttft, itl, errors).
SLO_BAD_1H = "model:inference_node_slo_bad:ratio_rate1h"
"""Share of bad events per model and SLO over the last hour."""
SLO_BAD_6H = "model:inference_node_slo_bad:ratio_rate6h"
"""Share of bad events per model and SLO over the last six hours."""
SLO_OBJECTIVE = "slo:inference_node_slo_objective:ratio"
"""Each SLO's objective (label slo), e.g. 0.99."""
REPLICAS_SERVING = "model:inference_node_engine_replicas_serving:count"
"""Engine replicas serving each model that answer."""
REPLICAS_SERVING_SHARE = "model:inference_node_engine_replicas_serving:ratio"
"""Those replicas over their peak of the last day."""

TTFT = by_key("ttft")
ITL = by_key("itl")
CANARY_LATENCIES: tuple[Latency, ...] = (TTFT, ITL)
"""The canary latencies the dashboards show beside the engines' (the canary has e2e too)."""
CANARY_RATE_RANGE = "5m"
"""Range of rate() over the canary's histogram buckets: the default ``latency_rate_range``
of the rules in alerts/, so that a canary quantile from the histograms covers what the
engines' quantile rules beside it cover."""
CANARY_PROBES = "inference_node_canary_probes_total"
"""The canary's probes by ``outcome`` (success or why one failed); labels engine, endpoint."""
CANARY_TOKENS = "inference_node_canary_generated_tokens_total"
"""Tokens the canary's probes made the engine generate; labels engine, endpoint."""
REQUEST_LATENCIES: tuple[Latency, ...] = tuple(row for row in LATENCIES if row.key != "queue")
"""Every latency but queue time (which time to first token includes): those with a spread
panel and a slowest-nodes panel."""


def canary_family(latency: Latency) -> str:
    """The canary's histogram of ``latency`` (fine buckets of the daemon's own, labels
    engine, endpoint and model): the engine's family with ``canary`` for ``engine``."""
    return f"inference_node_canary_{latency.reading}_seconds"


def quantile_rule(level: str, latency: Latency) -> str:
    """A quantile recording rule of alerts/: level ``instance_model`` or ``model``."""
    return f"{level}:{latency.family}:quantile"


def windowed(latency: str, selector: str = E, **labels: str) -> str:
    """The daemon's windowed latency gauge for one kind of latency, in the chosen window."""
    extra = "".join(f', {k}="{v}"' for k, v in labels.items())
    return (f'inference_node_engine_latency_seconds{{{selector}, latency="{latency}",'
            f' window="{WINDOW}"{extra}}}')


def canary_windowed(latency: Latency, selector: str = E, percentiles: str = "50|99") -> str:
    """The canary's windowed latency gauge (exact percentiles of its own probes) for one
    kind of latency and the ``percentiles`` alternatives, in the chosen window: what
    :func:`windowed` is for the engines' traffic."""
    return (f'inference_node_canary_latency_seconds{{{selector}, latency="{latency.key}",'
            f' window="{WINDOW}", percentile=~"{percentiles}"}}')


def canary_quantile(quantile: str, latency: Latency, by: str, selector: str = E) -> str:
    """A quantile of the canary's histogram of ``latency`` per ``by``, over
    ``CANARY_RATE_RANGE``: what the engines' quantile rules are for their traffic."""
    return (f"histogram_quantile({quantile}, sum by ({by}, le)"
            f" (rate({canary_family(latency)}_bucket{{{selector}}}[{CANARY_RATE_RANGE}])))")


def windowed_mean(*keys: str) -> str:
    """The daemon's windowed mean of the latencies ``keys``, in the chosen window: what an
    engine without a histogram of a latency exports instead of its percentiles."""
    match = f'="{keys[0]}"' if len(keys) == 1 else f'=~"{"|".join(keys)}"'
    return (f"inference_node_engine_latency_mean_seconds{{{E}, latency{match},"
            f' window="{WINDOW}"}}')


def p99_over_fleet(latency: Latency) -> str:
    """Each node's P99 over its model's fleet-wide P99, from the histograms' rules."""
    return (f'{quantile_rule("instance_model", latency)}{{{R}, quantile="0.99"}}'
            f" / on ({MODEL_JOIN}) group_left ()"
            f' {quantile_rule("model", latency)}{{{M}, quantile="0.99"}}')


def burn_rate(bad: str) -> str:
    """An SLO bad-event share over its error budget (1 - objective), per model and SLO."""
    return f"{bad}{{{M}}} / on (slo) group_left () (1 - {SLO_OBJECTIVE})"


def memory_bandwidth(by: str) -> str:
    """DCGM's DRAM active per whole GPU, or NVML's memory-controller utilisation where DCGM
    is not read (the ``or`` keeps DRAM active wherever both exist)."""
    return (f'max by ({by}) (inference_node_gpu_dram_active_ratio{{{G}, gpu_instance=""}})'
            f" or on ({by}) max by ({by}) (inference_node_gpu_memory_utilization_ratio{{{G}}})")


def worst(expr: str) -> str:
    """The ``$topk`` largest series of expr, largest first."""
    return f"sort_desc(topk({K}, {expr}))"
