"""The recording rules: latency bucket rates and quantiles per node and per model, the load
per node and model, the objectives' bad-event shares over the burn-rate windows, and the
engine replicas serving each model."""

from __future__ import annotations

from typing import NamedTuple

from exporter.latency import LATENCIES, Latency, by_key

from .base import (
    GENERATION_RATE,
    PREEMPTION_RATE,
    PROMPT_RATE,
    QUANTILES,
    QUEUE_DEPTH,
    REPLICAS,
    REPLICAS_SHARE,
    SLO_OBJECTIVE,
    Ctx,
    Rule,
    bound,
    bucket_rate,
    match,
    quantile,
    slo_bad,
)

FINISHED_RATE = "model_reason:inference_node_engine_requests_finished:rate"
SLO_GOOD = "model:inference_node_slo_good:rate"
"""Per model and latency objective, the events within the bound per second."""
SLO_VALID = "model:inference_node_slo_valid:rate"
"""... and all events per second, of the nodes whose engine has a bucket at the bound."""
SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
"""Every window a burn-rate alert reads (the SRE workbook's pairs: 1h/5m, 6h/30m, 1d/2h,
3d/6h)."""


class Objective(NamedTuple):
    """One service-level objective: its ``slo`` label, its title, what it counts, the knob
    of its target share, and the latency and the knob of the bound a good event stays
    within (none for the error ratio)."""

    slo: str
    title: str
    events: str
    objective_knob: str
    latency: Latency | None = None
    seconds_knob: str | None = None


OBJECTIVES = (
    Objective("ttft", "TTFT", "requests", "ttft_slo_objective", by_key("ttft"),
              "ttft_slo_seconds"),
    Objective("itl", "ITL", "inter-token gaps", "itl_slo_objective", by_key("itl"),
              "itl_slo_seconds"),
    Objective("errors", "Error", "requests", "error_slo_objective"),
)


def recording(c: Ctx) -> list[Rule]:
    rules: list[Rule] = []
    for latency in LATENCIES:
        rules += _latency(c, latency)
    return rules + _load(c) + _slos(c) + _replicas(c)


def _latency(c: Ctx, latency: Latency) -> list[Rule]:
    """Bucket rates and quantiles of one latency, per node and model, then per model."""
    node_rate = bucket_rate("instance_model_le", latency)
    model_rate = bucket_rate("model_le", latency)
    return [
        {
            "record": node_rate,
            "expr": f"sum by ({c.by('job, instance, model, le')}) (rate({latency.family}_bucket"
                    f"{c.sel()}[{c.s['latency_rate_range']}]))",
        },
        *_quantiles(quantile("instance_model", latency), node_rate),
        {
            "record": model_rate,
            "expr": f"sum by ({c.by('job, model, le')}) ({node_rate})",
        },
        *_quantiles(quantile("model", latency), model_rate),
    ]


def _quantiles(record: str, rate: str) -> list[Rule]:
    return [{
        "record": record,
        "expr": f"histogram_quantile({q}, {rate})",
        "labels": {"quantile": q},
    } for q in QUANTILES]


def _load(c: Ctx) -> list[Rule]:
    """The queue depth and the token and preemption rates per node and model, and the
    finished requests per model and reason."""
    node = c.by("job, instance, model")
    rules: list[Rule] = [{
        "record": QUEUE_DEPTH,
        "expr": f"sum by ({node}) (inference_node_engine_requests_waiting{c.sel()})",
    }]
    for record, counter in ((GENERATION_RATE, "generation_tokens"),
                            (PROMPT_RATE, "prompt_tokens"),
                            (PREEMPTION_RATE, "preemptions")):
        rules.append({
            "record": record,
            "expr": f"sum by ({node}) (rate(inference_node_engine_{counter}"
                    f"_total{c.sel()}[{c.s['rate_range']}]))",
        })
    rules.append({
        "record": FINISHED_RATE,
        "expr": f"sum by ({c.by('job, model, reason')}) (rate("
                f"inference_node_engine_requests_finished_total{c.sel()}[{c.s['rate_range']}]))",
    })
    return rules


def _slos(c: Ctx) -> list[Rule]:
    """Each objective's target, its good and valid events per second per model, then its
    share of bad events per model over every window.

    The long windows sum the per-model rates recorded every evaluation rather than rate()
    the raw buckets of every node over days: the ratio of two sums over the same samples is
    the ratio of the increases, at a fraction of the cost."""
    rules: list[Rule] = [{
        "record": SLO_OBJECTIVE,
        "expr": f"vector({c.s[o.objective_knob]})",
        "labels": {"slo": o.slo},
    } for o in OBJECTIVES]
    model = c.by("job, model")
    node = c.by("job, instance, model")
    for o in OBJECTIVES:
        if o.latency is None or o.seconds_knob is None:
            continue
        # Only nodes whose engine has a bucket at the bound count: a node without one
        # would make all its requests look bad (InferenceModelSLOUnmeasurable says so).
        rate = bucket_rate("instance_model_le", o.latency)
        good = f"{rate}{{{bound(c.s[o.seconds_knob])}}}"
        rules += [
            {"record": SLO_GOOD, "expr": f"sum by ({model}) ({good})", "labels": {"slo": o.slo}},
            {"record": SLO_VALID,
             "expr": f"sum by ({model}) (\n    {rate}{{le=\"+Inf\"}}\n"
                     f"  and on ({node})\n    {good}\n)",
             "labels": {"slo": o.slo}},
        ]
    for window in SLO_WINDOWS:
        for o in OBJECTIVES:
            if o.latency is not None:
                sel = f'{{slo="{o.slo}"}}'
                expr = (f"1 - (\n    sum_over_time({SLO_GOOD}{sel}[{window}])\n  /\n"
                        f"    sum_over_time({SLO_VALID}{sel}[{window}])\n)")
            else:
                reasons = "|".join(c.s["error_reasons"].split(","))
                bad = f"{FINISHED_RATE}{{{match('reason', '=~', reasons)}}}"
                expr = (f"  sum by ({model}) (sum_over_time({bad}[{window}]))\n/\n"
                        f"  sum by ({model}) (sum_over_time({FINISHED_RATE}[{window}]))")
            rules.append({"record": slo_bad(window), "expr": expr, "labels": {"slo": o.slo}})
    return rules


def _replicas(c: Ctx) -> list[Rule]:
    """Engine replicas (data-parallel ranks included) that answer, per model, and their
    share of the most of the last ``capacity_range``; 0 when none is left."""
    r = c.s["capacity_range"]
    return [
        {
            "record": REPLICAS,
            "expr": f"count by ({c.by('job, model')}) (\n"
                    f"    inference_node_engine_requests_running{c.sel()}\n"
                    f"  and on ({c.by('job, instance, engine, endpoint')})\n"
                    f"    inference_node_engine_up{c.sel()} == 1\n)",
        },
        {
            "record": REPLICAS_SHARE,
            "expr": f"  {REPLICAS} / max_over_time({REPLICAS}[{r}])\nor\n"
                    f"  (max_over_time({REPLICAS}[{r}]) unless {REPLICAS}) * 0",
        },
    ]
