"""The pages: per model across the fleet, what users feel. Multi-window, multi-burn-rate
alerts on each objective (the SRE workbook's), an objective the engines cannot measure, and
serving capacity lost."""

from __future__ import annotations

from exporter.latency import by_key

from .base import REPLICAS_SHARE, Ctx, Rule, bound, bucket_rate, slo_bad
from .recording import FINISHED_RATE, OBJECTIVES, Objective
from .values import num

PAGE = ((("1h", "5m"), 14.4), (("6h", "30m"), 6.0))
"""Fast burn: 2% of a 30-day budget in an hour, or 5% in six hours; each long window
confirmed by a short one, so the page resolves soon after the cause goes."""
TICKET = ((("1d", "2h"), 3.0), (("3d", "6h"), 1.0))
"""Slow burn: 10% of the budget in a day or in three days."""


def requests(c: Ctx, level: str) -> str:
    """Requests per second of each node and model (``instance_model``) or model
    (``model``) above the traffic floor: finished requests where the engine counts them,
    else the end-to-end latency histogram's count."""
    node = level == "instance_model"
    labels = c.by("job, instance, model" if node else "job, model")
    finished = (f"rate(inference_node_engine_requests_finished_total{c.sel()}"
                f"[{c.s['rate_range']}])" if node else FINISHED_RATE)
    e2e = f'{bucket_rate(f"{level}_le", by_key("e2e"))}{{le="+Inf"}}'
    return (f"(\n    sum by ({labels}) ({finished})\n  or\n"
            f"    sum by ({labels}) ({e2e})\n)\n  > {c.s['latency_min_rate']}")


def alerts(c: Ctx) -> list[Rule]:
    rules: list[Rule] = []
    for o in OBJECTIVES:
        rules.append(_burn(c, o, PAGE, "critical", "slo_page_for"))
        rules.append(_burn(c, o, TICKET, "warning", "slo_ticket_for"))
    return rules + [_unmeasurable(c, o) for o in OBJECTIVES if o.latency] + [_capacity(c)]


def _what(c: Ctx, o: Objective) -> str:
    """The objective in words."""
    share = num(round(float(c.s[o.objective_knob]) * 100, 6))
    if o.latency is None:
        return f"{share}% of requests finish without error"
    what = ("requests get their first token" if o.slo == "ttft"
            else "inter-token gaps come")
    return f"{share}% of {what} within {c.s[o.seconds_knob or '']}s"


def _burn(c: Ctx, o: Objective, pairs: tuple[tuple[tuple[str, str], float], ...],
          severity: str, for_knob: str) -> Rule:
    budget = 1 - float(c.s[o.objective_knob])
    branches = []
    for (long, short), factor in pairs:
        limit = num(round(factor * budget, 12))
        branches.append(
            f"    {slo_bad(long)}{{slo=\"{o.slo}\"}} > {limit}\n  and\n"
            f"    {slo_bad(short)}{{slo=\"{o.slo}\"}} > {limit}")
    windows = " or ".join(f"{num(f)}x over {long} and {short}" for (long, short), f in pairs)
    expr = ("(\n  (\n" + "\n  )\nor\n  (\n".join(branches) + "\n  )\n)\n"
            f"and on ({c.by('job, model')})\n{requests(c, 'model')}")
    budget_name = "error budget" if o.latency is None else f"{o.title} error budget"
    kind, pace = ("Pages", "fast") if severity == "critical" else ("Tickets", "slowly")
    return c.alert(
        f"InferenceModel{o.title}BudgetBurn", expr, for_knob, severity,
        f"A model burns its {budget_name} {pace}.",
        f"{{{{ $value | humanizePercentage }}}} of the {o.events} of {{{{ $labels.model }}}}"
        f" missed"
        f" the {o.slo} objective ({_what(c, o)}, a budget of"
        f" {num(round(budget * 100, 10))}% over {c.s['slo_period']}) in the longer window of"
        f" a burn-rate pair: {windows}. {kind} while it lasts.")


def _unmeasurable(c: Ctx, o: Objective) -> Rule:
    assert o.latency is not None and o.seconds_knob is not None
    rate = bucket_rate("instance_model_le", o.latency)
    node = c.by("job, instance, model")
    seconds = c.s[o.seconds_knob]
    return c.alert(
        "InferenceModelSLOUnmeasurable",
        f"sum by ({node}) ({rate}{{le=\"+Inf\"}}) > 0\n"
        f"unless on ({node})\n{rate}{{{bound(seconds)}}}",
        "slo_unmeasurable_for", "warning",
        "An objective's latency bound is not a bucket bound of a model's engine.",
        f"{{{{ $labels.model }}}} on {{{{ $labels.instance }}}} serves traffic, but the"
        f" {o.latency.words} histogram of its engine there has no bucket bound at"
        f" {seconds}s, the {o.slo} objective's: that node's requests are left out of the"
        f" objective, and where no node has the bound its budget-burn alerts cannot fire."
        f" Set the objective to a bound the engines share (alerts/generate.py --set"
        f" {o.seconds_knob}=...).",
        slo=o.slo)


def _capacity(c: Ctx) -> Rule:
    s = c.s
    return c.alert(
        "InferenceModelCapacityLow",
        f"{REPLICAS_SHARE} < {s['capacity_share']}",
        "capacity_for", "critical",
        "A model lost a large share of its serving engines.",
        f"{{{{ $labels.model }}}} has {{{{ $value | humanizePercentage }}}} of the engine"
        f" replicas that served it at the most in the last {s['capacity_range']} answering"
        f" (below {num(round(float(s['capacity_share']) * 100, 6))}%): the rest of the fleet"
        f" carries its load. Scaled down or removed on purpose: silence it for"
        f" {s['capacity_range']}.")
