"""Tickets about one node: its latency, queue and memory per model, and the host under it
(CPU steal, in-guest CPU contention, memory pressure)."""

from __future__ import annotations

from typing import NamedTuple

from exporter.latency import Latency, by_key

from .base import QUEUE_DEPTH, Ctx, Rule, match, percent, quantile
from .slo import requests
from .values import milliseconds, num


class _LatencyAlert(NamedTuple):
    """A P99 threshold: the alert, the latency it watches, its threshold and ``for`` knobs
    and what users suffer (the end of its description)."""

    name: str
    latency: Latency
    seconds_knob: str
    for_knob: str
    consequence: str


_LATENCY_ALERTS: tuple[_LatencyAlert, ...] = (
    _LatencyAlert("InferenceNodeTTFTP99High", by_key("ttft"), "ttft_p99_seconds",
                  "ttft_p99_for", ": users wait for the first token of their answers."),
    _LatencyAlert("InferenceNodeITLP99High", by_key("itl"), "itl_p99_seconds", "itl_p99_for",
                  ": streamed answers stutter."),
    _LatencyAlert("InferenceNodeE2ELatencyP99High", by_key("e2e"), "e2e_p99_seconds",
                  "e2e_p99_for", "."),
)


def latency(c: Ctx) -> list[Rule]:
    return [_latency_alert(c, a) for a in _LATENCY_ALERTS]


def _latency_alert(c: Ctx, a: _LatencyAlert) -> Rule:
    """P99 per node and model above its threshold (per model or the knob), with traffic."""
    node = c.by("job, instance, model")
    p99 = f"max by ({node}) ({quantile('instance_model', a.latency)}{{quantile=\"0.99\"}})"
    expr = f"{c.compare(p99, a.seconds_knob)}\nand on ({node})\n{requests(c, 'instance_model')}"
    seconds, words = c.s[a.seconds_knob], a.latency.words
    return c.alert(
        a.name, expr, a.for_knob, "warning",
        f"P99 {words} is above its threshold on a node.",
        f"P99 {words} of {{{{ $labels.model }}}} on {{{{ $labels.instance }}}} is"
        f" {{{{ $value | humanizeDuration }}}}, above its threshold ({seconds}s unless set"
        f" for the model) for {c.s[a.for_knob]}{a.consequence}")


def queue(c: Ctx) -> list[Rule]:
    s = c.s
    horizon = milliseconds(s["queue_growth_horizon"]) / 1000
    waiting = (f"sum by ({c.by('job, instance, model')})"
               f" (inference_node_engine_requests_waiting{c.sel()})")
    forecast = f"predict_linear({QUEUE_DEPTH}[{s['queue_growth_range']}], {num(horizon)})"
    return [
        c.alert(
            "InferenceNodeQueueDepthHigh",
            c.compare(waiting, "queue_depth"),
            "queue_depth_for", "warning",
            "Requests are queueing on an inference node.",
            f"{{{{ $value | humanize }}}} requests of {{{{ $labels.model }}}} wait to be"
            f" scheduled on {{{{ $labels.instance }}}}, more than its threshold"
            f" ({s['queue_depth']} unless set for the model) for {s['queue_depth_for']}:"
            f" the engine is saturated."),
        c.alert(
            "InferenceNodeQueueDepthGrowing",
            f"{c.compare(forecast, 'queue_depth')}\nand\n"
            f"{c.compare(QUEUE_DEPTH, 'queue_depth', '<=')}",
            "queue_growth_for", "warning",
            "The request queue of an inference node grows steadily.",
            f"The queue of {{{{ $labels.model }}}} on {{{{ $labels.instance }}}} has"
            f" grown steadily over {s['queue_growth_range']}; at this pace it passes its"
            f" threshold ({s['queue_depth']} waiting requests unless set for the model)"
            f" within {s['queue_growth_horizon']} (forecast for then:"
            f" {{{{ $value | humanize }}}})."),
    ]


def memory(c: Ctx) -> list[Rule]:
    s = c.s
    gpu = c.by("job, instance, gpu, uuid")
    engine = c.by("job, instance, engine, endpoint")
    preempting = (f"sum by ({engine}) (rate(inference_node_engine_preemptions_total{c.sel()}"
                  f"[{s['rate_range']}]))")
    return [
        c.alert(
            "InferenceNodeKVCacheExhausted",
            f"""
inference_node_engine_kv_cache_usage_ratio{c.sel()}
  > {s['kv_cache_usage']}
and
rate(inference_node_engine_preemptions_total{c.sel()}[{s['rate_range']}])
  > {s['kv_cache_preemptions_per_second']}
""",
            "kv_cache_for", "warning",
            "The KV cache of an engine is full and it preempts requests.",
            "The KV cache of {{ $labels.model }} (endpoint {{ $labels.endpoint }},"
            " rank {{ $labels.dp_rank }}) on {{ $labels.instance }} is"
            " {{ $value | humanizePercentage }} full and the scheduler preempts"
            " requests: they are recomputed, throughput drops and latency rises."),
        # A full KV cache alone is normal (engines allocate it up front): the pressure
        # counts when the GPU's engines preempt, or when no engine is known on the GPU and
        # the figure is its VRAM in use.
        c.alert(
            "InferenceNodeGPUMemoryPressureHigh",
            f"""
inference_node_gpu_memory_pressure_ratio{c.sel()}
  > {s['gpu_memory_pressure']}
and on ({gpu})
(
    max by ({gpu}) (
        inference_node_gpu_engine_info{c.sel()}
      * on ({engine}) group_left ()
        (
          {preempting}
            > 0
        )
    )
  or
    (
        inference_node_gpu_memory_pressure_ratio{c.sel()}
      unless on ({gpu})
        inference_node_gpu_engine_info{c.sel()}
    )
)
""",
            "gpu_memory_pressure_for", "warning",
            "A GPU runs out of memory for inference.",
            f"Memory pressure of GPU {{{{ $labels.gpu }}}} on {{{{ $labels.instance }}}} is"
            f" {{{{ $value | humanizePercentage }}}}, above"
            f" {percent(s['gpu_memory_pressure'])} for {s['gpu_memory_pressure_for']}:"
            f" its engines preempt requests for want of KV cache, or, with no engine known on"
            f" it, its memory is nearly all in use."),
    ]


def _degraded(c: Ctx) -> str:
    """The node's P99 TTFT or ITL above the degraded-latency knobs."""
    node = c.by("job, instance")
    ttft = quantile("instance_model", by_key("ttft"))
    itl = quantile("instance_model", by_key("itl"))
    return f"""(
    max by ({node}) ({ttft}{{quantile="0.99"}})
      > {c.s['degraded_ttft_p99_seconds']}
  or
    max by ({node}) ({itl}{{quantile="0.99"}})
      > {c.s['degraded_itl_p99_seconds']}
)"""


def _stalled(c: Ctx, resource: str, kind: str, range_knob: str) -> str:
    """The share of time tasks stalled on ``resource`` (pressure-stall information)."""
    return (f"rate(inference_node_host_pressure_stalled_seconds_total"
            f"{c.sel(match('resource', '=', resource), match('kind', '=', kind))}"
            f"[{c.s[range_knob]}])")


def platform(c: Ctx) -> list[Rule]:
    s = c.s
    node = c.by("job, instance")
    degraded = (f"its P99 time to first token is above {s['degraded_ttft_p99_seconds']}s or"
                f" its P99 inter-token latency above {s['degraded_itl_p99_seconds']}s")
    return [
        c.alert(
            "InferenceNodeNoisyNeighbour",
            f"avg_over_time(inference_node_host_cpu_steal_ratio{c.sel()}"
            f"[{s['cpu_steal_range']}])\n  > {s['cpu_steal_ratio']}\n"
            f"and on ({node})\n{_degraded(c)}",
            "noisy_neighbour_for", "warning",
            "Latency degrades on a node whose hypervisor steals CPU time.",
            f"The hypervisor of {{{{ $labels.instance }}}} gives"
            f" {{{{ $value | humanizePercentage }}}} of its CPU time to other guests while"
            f" {degraded}: the latency variance likely comes from the platform (a noisy"
            f" neighbour), not from the model or the load."),
        c.alert(
            "InferenceNodeCPUContention",
            f"{_stalled(c, 'cpu', 'some', 'pressure_range')}\n  > {s['cpu_stall_ratio']}\n"
            f"and on ({node})\n{_degraded(c)}",
            "cpu_contention_for", "warning",
            "Latency degrades on a node whose own processes compete for CPU.",
            f"Runnable tasks of {{{{ $labels.instance }}}} waited for a CPU"
            f" {{{{ $value | humanizePercentage }}}} of the time while {degraded}: the"
            f" contention is inside the node (tokenisers, other workloads, CPU limits), not"
            f" the hypervisor's steal."),
        c.alert(
            "InferenceNodeHostMemoryPressure",
            f"""
(
    inference_node_host_memory_available_bytes{c.sel()}
  / on ({node})
    inference_node_host_memory_total_bytes{c.sel()}
) < {s['host_memory_available_ratio']}
or
{_stalled(c, 'memory', 'some', 'pressure_range')}
  > {s['memory_stall_ratio']}
or
delta(inference_node_host_swap_used_bytes{c.sel()}[{s['swap_growth_range']}])
  > {s['swap_growth_bytes']}
""",
            "host_memory_for", "warning",
            "An inference node is short of host memory.",
            f"{{{{ $labels.instance }}}}: {{{{ if $labels.resource }}}}tasks stalled on"
            f" memory {{{{ $value | humanizePercentage }}}} of the time{{{{ else if gt $value"
            f" 1.0 }}}}swap in use grew by {{{{ $value | humanize1024 }}}}B in"
            f" {s['swap_growth_range']}{{{{ else }}}}only"
            f" {{{{ $value | humanizePercentage }}}} of its memory is available{{{{ end }}}}"
            f" for {s['host_memory_for']}: the engines' CPU side (tokenisers, pinned"
            f" buffers, KV offload) swaps or is about to be killed for memory."),
    ]
