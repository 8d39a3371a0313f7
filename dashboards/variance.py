"""The latency variance dashboard: which nodes are slower than their model's fleet, and
whether the spread comes from the platform or from the load."""

from __future__ import annotations

from grafana_foundation_sdk.builders import timeseries
from grafana_foundation_sdk.builders.dashboard import ThresholdsConfig
from grafana_foundation_sdk.models import dashboard as model
from layout import PanelBuilder, Section, assemble
from panels import GREEN, Q, graph, ratio_steps, thresholds, worst_bars
from queries import (
    EN,
    ITL,
    REQUEST_LATENCIES,
    SLOWDOWN,
    TTFT,
    WINDOW,
    E,
    G,
    K,
    N,
    R,
    memory_bandwidth,
    p99_over_fleet,
    quantile_rule,
    windowed,
    windowed_mean,
    worst,
)

from exporter.latency import Latency


def _outlier_steps() -> ThresholdsConfig:
    """Orange from 1.5 times the model's fleet P99, red from twice it: a guide, no alert."""
    return thresholds(GREEN, (1.5, "orange"), (2, "red"))


def _against_fleet(latency: Latency) -> list[PanelBuilder]:
    title, ratio = latency.title, p99_over_fleet(latency)
    by_node = f"max by (instance, model) ({ratio})"
    return [
        worst_bars(f"Slowest nodes against their model: {title} P99",
                   f"Each node's {title.lower()} P99 over its model's P99 across the fleet,"
                   " both from the histograms' recording rules, the $topk highest first. Near 1"
                   " everywhere: the latency is the model's or the traffic's. One node well"
                   " above 1 while the others sit just below: that node is the outlier; click"
                   " its bar for its node dashboard, and read the panels below for why.",
                   "none", Q(worst(by_node), "{{instance}} {{model}}"),
                   steps=_outlier_steps(), decimals=2),
        graph(f"{title} P99 over the model's fleet P99",
              "The same ratio over time for the $topk highest nodes at each moment. A node"
              " that rises above the others in step with CPU steal, throttling or pressure"
              " stalls below: its platform, not its load, makes it slow. Click a series for"
              " that node's dashboard.",
              "none", Q(f"topk({K}, {by_node})", "{{instance}} {{model}}"),
              w=16, axis="x fleet P99", steps=_outlier_steps(), node_link=True),
    ]


def variance_against_fleet() -> Section:
    """Each node's TTFT and ITL P99 over its model's fleet-wide P99."""
    return Section("Nodes against their model's fleet",
                   [*_against_fleet(TTFT), *_against_fleet(ITL)])


def _spread_panel(latency: Latency) -> timeseries.Panel:
    rule, title, key = quantile_rule("instance_model", latency), latency.title, latency.key
    return graph(
        f"{title}: P99 / P50",
        f"How many times the median the {title.lower()} P99 is, per node and model. Solid:"
        f" from the daemon's {WINDOW} window; 'histogram': from Prometheus' quantiles of the"
        " histograms (over every engine of the model: not filtered by engine). A spread that"
        " rises while the load panels below stay flat, in step with CPU steal, GPU throttling"
        " or memory bandwidth, comes from the platform. An engine with no histogram of this"
        " latency exports only its mean, which has no spread: it is absent here.",
        "none",
        Q(f'max by (instance, model) ({windowed(key, percentile="99")}) / max by'
          f' (instance, model) ({windowed(key, percentile="50")})',
          "{{instance}} {{model}}"),
        Q(f'{rule}{{{R}, quantile="0.99"}} / ignoring (quantile) {rule}{{{R}, quantile="0.5"}}',
          "{{instance}} {{model}} (histogram)"),
        axis="P99 / P50", min_val=None)


def variance_spread() -> Section:
    """P99 over P50 of each latency, and the figures it divides."""
    return Section("Latency spread", [
        *(_spread_panel(row) for row in REQUEST_LATENCIES),
        graph("P50 and P99",
              "Time to first token and inter-token latency, median and P99, from the daemon's"
              f" {WINDOW} window: the figures the spread above divides. 'mean': the window's"
              " mean, from engines with no histogram of that latency (only its total"
              " duration); a mean, not a percentile, and no spread can be read from it.",
              "s",
              Q("max by (instance, model, latency, percentile)"
                f' (inference_node_engine_latency_seconds{{{E}, latency=~"{TTFT.key}|{ITL.key}",'
                f' window="{WINDOW}", percentile=~"50|99"}})',
                "{{instance}} {{model}} {{latency}} P{{percentile}}"),
              Q(f"max by (instance, model, latency) ({windowed_mean(TTFT.key, ITL.key)})",
                "{{instance}} {{model}} {{latency}} mean"),
              w=12),
        graph("Requests in the window",
              f"Requests the {WINDOW} window's percentiles rest on. A spread spike on a few"
              " dozen requests is noise, not a trend.",
              "short",
              Q("sum by (instance, model) (inference_node_engine_latency_window_observations"
                f'{{{E}, latency="{TTFT.key}", window="{WINDOW}"}})', "{{instance}} {{model}}"),
              w=12, decimals=0),
    ])


def variance_platform() -> Section:
    """The platform's signals: CPU steal, GPU clocks and bandwidth, pressure stall, engine CPU."""
    return Section("Platform: does the variance come from the node?", [
        graph("CPU steal",
              "CPU time the hypervisor gave to other guests. Steal in step with the spread"
              " above: noisy neighbours delay the engine's CPU work (scheduling, sampling,"
              " detokenisation).",
              "percentunit",
              Q(f"max by (instance) (inference_node_host_cpu_steal_ratio{{{N}}})", "{{instance}}"),
              steps=thresholds(GREEN, (0.05, "orange"), (0.1, "red"))),
        graph("GPU clock throttling",
              "GPUs held down per node and reason (idle and operator-set clocks left out)."
              " Thermal or hardware slowdown in step with the spread: the platform slows the"
              " GPUs.",
              "short",
              Q(f"sum by (instance, reason) (inference_node_gpu_throttle_reason{{{G},"
                f" {SLOWDOWN}}})", "{{instance}} {{reason}}"),
              axis="GPUs", decimals=0),
        graph("GPU memory bandwidth",
              "DRAM active (DCGM) or memory-controller utilisation (NVML) per GPU. Near 100%"
              " decoding is bandwidth bound and every extra request slows all the others.",
              "percentunit",
              Q(memory_bandwidth("instance, gpu"), "{{instance}} GPU {{gpu}}"),
              max_val=1),
        graph("GPU SM clock",
              "Streaming-multiprocessor clock per GPU. Dips under load are throttling at work,"
              " whatever the reason the GPU reports.",
              "hertz",
              Q(f"max by (instance, gpu) (inference_node_gpu_sm_clock_hertz{{{G}}})",
                "{{instance}} GPU {{gpu}}")),
        graph("Pressure stall",
              "Share of time some task stalled on CPU, memory or I/O. Memory or I/O stalls in"
              " step with the spread: the host swaps, reclaims or waits on disks.",
              "percentunit",
              Q("max by (instance, resource)"
                f' (inference_node_host_pressure_stall_ratio{{{N}, kind="some"}})',
                "{{instance}} {{resource}}")),
        graph("Engine CPU use",
              "CPU time of the engines' processes, in cores. vLLM's scheduler runs on one"
              " core: an engine pinned near a multiple of 1 core is CPU bound, and any steal"
              " or contention goes straight into its latency.",
              "short",
              Q("sum by (instance, engine, endpoint)"
                " (rate(inference_node_engine_process_cpu_seconds_total"
                f"{{{EN}}}[$__rate_interval]))", "{{instance}} {{engine}} {{endpoint}}"),
              axis="cores"),
    ])


def variance_load() -> Section:
    """The load's signals: queue, KV cache, preemptions, batch size and prefill."""
    return Section("Load: or does it come from the traffic?", [
        graph("Queue depth",
              "Requests waiting. A spread that follows the queue comes from the load: more"
              " capacity, not a better platform, is the fix.",
              "short",
              Q(f"sum by (instance, model) (inference_node_engine_requests_waiting{{{E}}})",
                "{{instance}} {{model}}"),
              decimals=0),
        graph("KV cache usage",
              "The fullest engine's KV cache per node and model. A full cache forces"
              " preemptions, whose recomputed requests make the P99.",
              "percentunit",
              Q("max by (instance, model) (inference_node_engine_kv_cache_usage_ratio"
                f"{{{E}}})", "{{instance}} {{model}}"),
              max_val=1, steps=ratio_steps()),
        graph("Preemptions per second",
              f"Preemptions per second over {WINDOW}. Preempted requests are recomputed and"
              " land in the tail of the latency distribution.",
              "short",
              Q("sum by (instance, model) (inference_node_engine_preemptions_per_second"
                f'{{{E}, window="{WINDOW}"}})', "{{instance}} {{model}}"),
              axis="preemptions/s"),
        graph("Batch size",
              "Requests in the running batch per node and model. Every decode step serves"
              " the whole batch: inter-token latency that grows with the batch comes from the"
              " load. A node with a smaller batch than its peers at the same latency is slower"
              " for itself.",
              "short",
              Q(f"sum by (instance, model) (inference_node_engine_requests_running{{{E}}})",
                "{{instance}} {{model}}"),
              w=12, axis="requests", decimals=0),
        graph("Prefill load",
              "Prompt tokens per second per node and model (the recording rule's rate, over"
              " 5m with the rules' default rate_range). Long prompts take GPU time from the"
              " running batch's decode steps: inter-token latency spikes and time to first"
              " token in step with prefill bursts come from the traffic, not the platform.",
              "short",
              Q("sum by (instance, model) (instance_model:inference_node_engine_prompt_tokens:rate"
                f"{{{R}}})", "{{instance}} {{model}}"),
              w=12, axis="tokens/s"),
    ])


def latency_variance() -> model.Dashboard:
    """The selected nodes' latency spread next to the platform's and the load's signals."""
    return assemble(
        "Inference latency variance", "inference-latency-variance",
        "Which nodes are slower than their model's fleet (their P99 over the fleet's), and"
        " whether latency variance (P99 over P50) comes from the platform (CPU steal, GPU"
        " throttling, memory bandwidth, pressure stalls) or from the load (queue, KV cache,"
        " preemptions, batch size, prefill): all on one time axis with a shared crosshair.",
        [variance_against_fleet(), variance_spread(), variance_platform(), variance_load()],
        node_multi=True, gpu=True, topk=True, alert_annotation=True)

