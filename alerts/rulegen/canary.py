"""The canary: one fixed, small streaming request per engine endpoint at a fixed cadence
(``exporter/canary/``). Since the request never changes, its latency moves only with the
platform and the load, never with what users send: its own past is its baseline.

Recording rules: the canary's P50 and P99 time to first token and inter-token latency per
node, engine endpoint and model over ``latency_rate_range``, from its fine-bucket
histograms, and the median of each over the last 24h. Tickets: the canary's P99 well above
its 24h median (TTFT, ITL); its probes failing; and the canary degraded while a neighbour
(CPU steal, a foreign process on the endpoint's GPU) is present. None of them pages.

The baseline counts only where it rests on ``canary_baseline_min_history`` of the last day
(a fresh endpoint or a fresh rule file has no day to compare with) and never below a floor
per latency (a median of a few milliseconds would make jitter a multiple).
"""

from __future__ import annotations

from exporter.latency import Latency, by_key

from .base import Ctx, Rule, match, percent
from .values import milliseconds, num

LATENCIES = (by_key("ttft"), by_key("itl"))
"""The canary latencies with rules: the first token, and the gaps between tokens."""
QUANTILES = ("0.5", "0.99")
BASELINE_RANGE = "24h"
"""The baseline spans a day: the load's daily cycle is part of "usual"."""
PROBES = "inference_node_canary_probes_total"
FLOOR_KNOB = {"ttft": "canary_ttft_floor_seconds", "itl": "canary_itl_floor_seconds"}
SHORT = {"ttft": "TTFT", "itl": "ITL"}


def family(latency: Latency) -> str:
    """The canary's histogram of ``latency`` (``inference_node_canary_<reading>_seconds``)."""
    return f"inference_node_canary_{latency.reading}_seconds"


def quantile(latency: Latency) -> str:
    """Name of the recording rule of the canary's quantiles (label ``quantile``)."""
    return f"instance_endpoint_model:{family(latency)}:quantile"


def median(latency: Latency) -> str:
    """Name of the recording rule of the median over the last 24h of those quantiles."""
    return (f"instance_endpoint_model:{family(latency)}:"
            f"median_over_time{BASELINE_RANGE}_quantile")


def recording(c: Ctx) -> list[Rule]:
    """The quantiles of each canary latency, then their 24h medians (same group: each
    median reads the quantile evaluated just before it)."""
    labels = c.by("job, instance, engine, endpoint, model")
    buckets = c.by("job, instance, engine, endpoint, model, le")
    rate = c.s["latency_rate_range"]
    rules: list[Rule] = []
    for latency in LATENCIES:
        f = family(latency)
        # Only where the window holds observations: no successful probe is no figure, not
        # NaN (a NaN would sort first and drag the median down).
        rules += [{
            "record": quantile(latency),
            "expr": f"histogram_quantile({q}, sum by ({buckets}) (rate({f}_bucket{c.sel()}"
                    f"[{rate}])))\n"
                    f"and on ({labels})\n"
                    f"sum by ({labels}) (rate({f}_count{c.sel()}[{rate}])) > 0",
            "labels": {"quantile": q},
        } for q in QUANTILES]
        rules += [{
            "record": median(latency),
            "expr": f"quantile_over_time(0.5, {quantile(latency)}{{quantile=\"{q}\"}}"
                    f"[{BASELINE_RANGE}])",
            "labels": {"quantile": q},
        } for q in QUANTILES]
    return rules


# -- the pieces of the alerts ------------------------------------------------------------------


def _p99(latency: Latency) -> str:
    return f'{quantile(latency)}{{quantile="0.99"}}'


def _baseline(c: Ctx, latency: Latency) -> str:
    """The 24h median of the canary's P99, at least the latency's floor."""
    return (f'clamp_min({median(latency)}{{quantile="0.99"}},'
            f" {c.s[FLOOR_KNOB[latency.key]]})")


def _indent(text: str, spaces: int = 4) -> str:
    return "\n".join(" " * spaces + line for line in text.split("\n"))


def _history(c: Ctx, latency: Latency) -> str:
    """The P99 has been recorded for at least ``canary_baseline_min_history`` of the last
    24h: its samples there against as many hours as the last hour's (independent of the
    evaluation interval)."""
    hours = milliseconds(c.s["canary_baseline_min_history"]) / 3_600_000
    p99 = _p99(latency)
    return (f"(\n    count_over_time({p99}[{BASELINE_RANGE}])\n"
            f"  >= {num(hours)} * count_over_time({p99}[1h])\n)")


def _ratio(c: Ctx, latency: Latency) -> str:
    """The canary's P99 over its baseline, where the baseline has its history; labelled
    with the latency."""
    endpoint = c.by("job, instance, engine, endpoint, model")
    ratio = (f"  {_p99(latency)}\n/ on ({endpoint})\n  {_baseline(c, latency)}\n"
             f"and on ({endpoint})\n{_history(c, latency)}")
    return f'label_replace(\n{_indent(ratio)},\n    "latency", "{latency.key}", "", ""\n)'


def _degraded(c: Ctx) -> str:
    """Per endpoint, the worst of the canary's P99s over their baselines, above
    ``canary_degraded_factor``."""
    endpoint = c.by("job, instance, engine, endpoint, model")
    parts = "\nor\n".join(_ratio(c, latency) for latency in LATENCIES)
    return (f"max by ({endpoint}) (\n{_indent(parts)}\n)\n"
            f"  > {c.s['canary_degraded_factor']}")


def _query(c: Ctx, expr: str, labels: tuple[str, ...]) -> str:
    """A Go-template ``printf`` that makes ``expr`` select the alert's own series:
    ``expr`` holds ``MATCH`` wherever the matchers of ``labels`` (and of the target labels;
    ``index`` makes a label the alert lacks "", which matches its absence) go."""
    names = (*c.keep, *labels)
    matchers = ", ".join(f'{name}="%s"' for name in names)
    args = " ".join(f'(index $labels "{name}")' for name in names)
    return f"printf `{expr.replace('MATCH', matchers)}`" + f" {args}" * expr.count("MATCH")


# -- the alerts --------------------------------------------------------------------------------


def alerts(c: Ctx) -> list[Rule]:
    return [*(_latency(c, latency) for latency in LATENCIES), _failing(c),
            _noisy_neighbour(c)]


def _latency(c: Ctx, latency: Latency) -> Rule:
    """The canary's P99 above ``canary_latency_factor`` times its baseline."""
    s = c.s
    endpoint = c.by("job, instance, engine, endpoint, model")
    factor, floor = s["canary_latency_factor"], s[FLOOR_KNOB[latency.key]]
    expr = (f"  {_p99(latency)}\n> on ({endpoint})\n"
            f"  {factor} * {_baseline(c, latency)}\nand on ({endpoint})\n"
            f"{_history(c, latency)}")
    baseline = _query(c, f'{median(latency)}{{MATCH, quantile="0.99"}}',
                      ("job", "instance", "endpoint"))
    return c.alert(
        f"InferenceNodeCanary{SHORT[latency.key]}High", expr, "canary_latency_for", "warning",
        f"The canary's {latency.words} is far above its usual on a node.",
        f"P99 {latency.words} of the canary on endpoint {{{{ $labels.endpoint }}}}"
        f" ({{{{ $labels.model }}}}) of {{{{ $labels.instance }}}} is"
        f" {{{{ $value | humanizeDuration }}}}, more than {factor} times its median of the"
        f" last {BASELINE_RANGE} ({{{{ with {baseline} | query }}}}"
        f"{{{{ . | first | value | humanizeDuration }}}}{{{{ end }}}}, counted as {floor}s at"
        f" the least) for {s['canary_latency_for']}: the same small request takes longer than"
        f" it usually does, so the node (GPU, host, hypervisor) or its load changed, not what"
        f" users send.")


def _failing(c: Ctx) -> Rule:
    """More than ``canary_failure_ratio`` of the probes fail, while the engine's metrics
    answer (an engine down is InferenceNodeEngineDown's)."""
    s = c.s
    endpoint = c.by("job, instance, engine, endpoint")
    r = s["canary_failure_range"]
    failed = f"{PROBES}{c.sel(match('outcome', '!=', 'success'))}"
    expr = (f"  sum by ({endpoint}) (rate({failed}[{r}]))\n/\n"
            f"  sum by ({endpoint}) (rate({PROBES}{c.sel()}[{r}]))\n"
            f"> {s['canary_failure_ratio']}\n"
            f"unless on ({endpoint})\n  inference_node_engine_up{c.sel()} == 0")
    reasons = _query(
        c, f'sum by (outcome) (rate({PROBES}{{MATCH, outcome!="success"}}[{r}]))'
           f" / scalar(sum(rate({PROBES}{{MATCH}}[{r}]))) > 0",
        ("job", "instance", "endpoint"))
    return c.alert(
        "InferenceNodeCanaryFailing", expr, "canary_failing_for", "warning",
        "The canary's probes of an engine fail.",
        f"{{{{ $value | humanizePercentage }}}} of the canary's probes of endpoint"
        f" {{{{ $labels.endpoint }}}} on {{{{ $labels.instance }}}} failed over the last {r}"
        f" (more than {percent(s['canary_failure_ratio'])}) for {s['canary_failing_for']},"
        f" while its metrics answer: {{{{ range $i, $r := {reasons} | query"
        f' | sortByLabel "outcome" }}}}{{{{ if $i }}}}, {{{{ end }}}}{{{{ $r.Labels.outcome }}}}'
        f" {{{{ $r.Value | humanizePercentage }}}}{{{{ end }}}} of the probes. A small fixed"
        f" request is refused, times out, is cut or answered with an error: users' requests"
        f" likely are too.")


def _noisy_neighbour(c: Ctx) -> Rule:
    """The canary degraded against its baseline while the hypervisor steals CPU time
    (label ``neighbour="cpu"``) or a GPU the endpoint runs on has foreign compute
    processes (``neighbour="gpu"``)."""
    s = c.s
    node = c.by("job, instance")
    endpoint = c.by("job, instance, engine, endpoint")
    gpu = c.by("job, instance, gpu, uuid")
    steal = (f"avg_over_time(inference_node_host_cpu_steal_ratio{c.sel()}"
             f"[{s['cpu_steal_range']}])\n  > {s['cpu_steal_ratio']}")
    foreign = (f"inference_node_gpu_engine_info{c.sel()}\n  and on ({gpu})\n"
               f"    inference_node_gpu_foreign_processes{c.sel()}\n"
               f"      > {s['gpu_foreign_processes']}")
    degraded = _degraded(c)
    cpu = f"{degraded}\nand on ({node})\n  {steal}"
    gpu_side = f"{degraded}\nand on ({endpoint})\n(\n    {foreign}\n)"
    expr = "\nor\n".join(
        f'label_replace(\n{_indent(cause)},\n    "neighbour", "{name}", "", ""\n)'
        for name, cause in (("cpu", cpu), ("gpu", gpu_side)))
    return c.alert(
        "InferenceNodeCanaryNoisyNeighbour", expr, "noisy_neighbour_for", "warning",
        "The canary slows down on a node with a noisy neighbour.",
        f"The canary on endpoint {{{{ $labels.endpoint }}}} ({{{{ $labels.model }}}}) of"
        f" {{{{ $labels.instance }}}} is {{{{ $value | humanize }}}} times slower than its"
        f" median of the last {BASELINE_RANGE} (P99 time to first token or inter-token"
        f" latency, more than {s['canary_degraded_factor']} times) while"
        f' {{{{ if eq $labels.neighbour "cpu" }}}}the hypervisor gives more than'
        f" {percent(s['cpu_steal_ratio'])} of the node's CPU time to other guests"
        f"{{{{ else }}}}a GPU it runs on also runs compute processes of no known"
        f" engine{{{{ end }}}}, for {s['noisy_neighbour_for']}: the same small fixed request"
        f" got slower, so it is not what users send; the neighbour (the platform) is the"
        f" likely cause.")
