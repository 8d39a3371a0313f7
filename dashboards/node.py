"""The node overview dashboard: one node's engines, latency, GPUs, host and sources."""

from __future__ import annotations

from cost import busy_hour_cost, per_million, utilization
from grafana_foundation_sdk.builders import timeseries
from grafana_foundation_sdk.models import dashboard as model
from layout import PanelBuilder, Section, assemble
from panels import GREEN, NODE_UID, Q, graph, ratio_steps, thresholds, up_down
from queries import (
    CANARY_LATENCIES,
    CANARY_PROBES,
    CANARY_RATE_RANGE,
    CANARY_TOKENS,
    EN,
    SLOWDOWN,
    WINDOW,
    E,
    G,
    N,
    R,
    canary_quantile,
    canary_windowed,
    quantile_rule,
    windowed,
    windowed_mean,
)

from exporter.latency import LATENCIES, Latency


def _latency_panel(latency: Latency) -> timeseries.Panel:
    title = latency.title
    return graph(
        f"{title} P50 / P95 / P99",
        f"{title} percentiles of this node's engines. Solid: the daemon's {WINDOW} sliding"
        " window (the worst engine per model), which reacts within a poll or two. 'histogram':"
        " the same quantiles computed by Prometheus from the re-exported histograms (recording"
        " rules, over every engine of the model: not filtered by engine), smoother and"
        " comparable across nodes. 'mean': engines with no histogram of this latency, only"
        " its total duration, export the window's mean instead: a mean, not a percentile,"
        " usually well below the P99 of the same requests. A P99 that drifts away from P95"
        " means outliers: open the Latency variance dashboard to see whether the platform"
        " causes them.",
        "s",
        Q(f"max by (model, percentile) ({windowed(latency.key)})", "{{model}} P{{percentile}}"),
        Q(f"max by (model) ({windowed_mean(latency.key)})", "{{model}} mean"),
        Q(f"{quantile_rule('instance_model', latency)}{{{R}}}",
          "{{model}} q{{quantile}} (histogram)"),
        w=6)


def node_engines() -> Section:
    """The engines' throughput, queue, batch, KV cache, preemptions and finished requests."""
    return Section("Engines", [
        graph("Tokens per second",
              "Generated (decode) and prompt (prefill) tokens per second of each engine over"
              f" the daemon's {WINDOW} window. Throughput that drops while the queue grows means"
              " the engine slowed down (look at KV cache, preemptions, GPU throttling); a drop"
              " with an empty queue is just less traffic.",
              "short",
              Q("sum by (engine, endpoint, model)"
                " (inference_node_engine_generation_tokens_per_second"
                f'{{{E}, window="{WINDOW}"}})', "{{engine}} {{endpoint}} {{model}} generated"),
              Q("sum by (engine, endpoint, model) (inference_node_engine_prompt_tokens_per_second"
                f'{{{E}, window="{WINDOW}"}})', "{{engine}} {{endpoint}} {{model}} prompt"),
              axis="tokens/s"),
        graph("Queue depth",
              "Requests waiting to be scheduled. A queue that keeps growing means the engine"
              " is saturated and time to first token grows with it; short spikes when a batch"
              " of requests arrives are normal.",
              "short",
              Q("sum by (engine, endpoint, model)"
                f" (inference_node_engine_requests_waiting{{{E}}})",
                "{{engine}} {{endpoint}} {{model}}"),
              axis="requests", decimals=0),
        graph("Requests running",
              "Requests in the engine's running batch. A flat line at the engine's limit"
              " (max_num_seqs) with a growing queue means the batch is full; fewer running"
              " requests than usual at the same load points to a KV cache that is too small.",
              "short",
              Q("sum by (engine, endpoint, model)"
                f" (inference_node_engine_requests_running{{{E}}})",
                "{{engine}} {{endpoint}} {{model}}"),
              axis="requests", decimals=0),
        graph("KV cache usage",
              "Share of the KV cache in use per engine and data-parallel rank. Near 100% the"
              " scheduler can no longer admit requests and starts preempting running ones"
              " (recomputing them), which shows as latency spikes.",
              "percentunit",
              Q("max by (engine, endpoint, model, dp_rank)"
                f" (inference_node_engine_kv_cache_usage_ratio{{{E}}})",
                "{{engine}} {{endpoint}} {{model}} rank {{dp_rank}}"),
              max_val=1, steps=ratio_steps()),
        graph("Preemptions per second",
              "Requests the scheduler preempted, per second over the daemon's window. Any"
              " steady rate means the KV cache is too small for the load: every preempted"
              " request is recomputed or swapped and its latency jumps.",
              "short",
              Q("sum by (engine, endpoint, model) (inference_node_engine_preemptions_per_second"
                f'{{{E}, window="{WINDOW}"}})', "{{engine}} {{endpoint}} {{model}}"),
              axis="preemptions/s"),
        graph("Finished requests by reason",
              "Requests finished per second by reason. 'stop' and 'length' are normal"
              " completions ('length': max_tokens reached); a growing share of 'abort' (clients"
              " giving up, often on slow responses) or 'error' needs attention.",
              "reqps",
              Q("sum by (model, reason) (rate(inference_node_engine_requests_finished_total"
                f"{{{E}}}[$__rate_interval]))", "{{model}} {{reason}}"),
              stacked=True),
    ])


def node_latency() -> Section:
    """The percentiles of every latency, windowed and from the histograms."""
    return Section("Latency", [
        *(_latency_panel(row) for row in LATENCIES),
        graph("Observations in the latency window",
              f"Requests the windowed percentiles of the last {WINDOW} rest on, per model and"
              " kind. With fewer than about a hundred observations a P99 is close to the"
              " maximum: read its spikes with care. An engine that exports a mean instead of"
              " percentiles counts none here.",
              "short",
              Q("sum by (model, latency) (inference_node_engine_latency_window_observations"
                f'{{{E}, window="{WINDOW}"}})', "{{model}} {{latency}}"),
              w=24, h=6, decimals=0),
    ])


def _canary_latency_panel(latency: Latency) -> timeseries.Panel:
    words = latency.words
    return graph(
        f"Canary {words} P50 / P99",
        f"{latency.title} of the daemon's canary: one fixed, small streaming request per"
        " engine endpoint every 10 s (--canary.endpoint). The request never changes, so its"
        " latency moves only with the platform and the load, never with what users send:"
        f" read it against '{latency.title} P50 / P95 / P99' above it, in the same unit and"
        f" window. Users' P99 up and the canary's flat: the traffic changed (longer prompts"
        " or answers). Both up: the node is slower; the queue and KV cache say load, CPU"
        " steal, throttling and pressure stalls say platform. Solid: exact percentiles of"
        f" the canary's own successful probes in the daemon's {WINDOW} window (about 6 probes"
        " in 1m, where the P99 is nearly the slowest one; 30 in 5m). 'histogram': Prometheus'"
        f" quantiles of the canary's fine buckets over {CANARY_RATE_RANGE}, the range of the"
        " engines' quantile rules. Failed probes add no latency: see 'Canary probes by"
        " outcome'. Empty where no endpoint is probed.",
        "s",
        Q(f"max by (model, percentile) ({canary_windowed(latency)})",
          "{{model}} P{{percentile}}"),
        *(Q(canary_quantile(q, latency, "model"), f"{{{{model}}}} q{q} (histogram)")
          for q in ("0.5", "0.99")),
        w=6)


def node_canary() -> Section:
    """The canary's TTFT and ITL beside the engines' traffic, its outcomes and its share of
    the generated tokens."""
    return Section("Canary: the platform's latency", [
        *(_canary_latency_panel(row) for row in CANARY_LATENCIES),
        graph("Canary probes by outcome",
              "Canary probes per second by outcome, stacked: the bars' height is the cadence"
              " (0.1/s at the default 10 s interval). 'success' is a probe streamed to its"
              " end; the rest say why one failed: refused, connection, timeout (past"
              " --canary.timeout), http_status, model_not_found or no_model (the model the"
              " probe asks for is not served), stream_cut, bad_stream, short (fewer tokens"
              " than asked for); outcomes that did not occur are left out. Failures while"
              " users' requests succeed point to the engine's API server or to the canary's"
              " configuration.",
              "reqps",
              Q(f"sum by (engine, endpoint, outcome) (rate({CANARY_PROBES}{{{EN}}}"
                "[$__rate_interval])) > 0", "{{engine}} {{endpoint}} {{outcome}}"),
              w=6, stacked=True)
        .override_by_regexp(" success$", [model.DynamicConfigValue(
            id_val="color", value={"mode": "fixed", "fixedColor": "green"})]),
        graph("Canary share of generated tokens",
              "Tokens the canary's probes made each engine endpoint generate, over all the"
              " tokens it generated (the canary's included): the probe's own cost, and what"
              " to subtract from throughput figures: about 1.6 tokens/s per endpoint at the"
              " defaults (16 tokens every 10 s). Near 100% the endpoint serves almost nothing"
              " but the canary, whose latency is then the unloaded engine's. Endpoints that"
              " serve none of the selected models are left out.",
              "percentunit",
              Q(f"sum by (engine, endpoint) (rate({CANARY_TOKENS}{{{EN}}}[$__rate_interval]))"
                " / on (engine, endpoint) sum by (engine, endpoint)"
                " (rate(inference_node_engine_generation_tokens_total"
                f"{{{E}}}[$__rate_interval]))", "{{engine}} {{endpoint}}"),
              w=6),
    ])


def node_gpus() -> Section:
    """Each GPU's memory and load, its power, heat and clocks, and its output."""
    return Section("GPUs", [*_gpu_load_panels(), *_gpu_power_panels(), *_gpu_output_panels()])


def _gpu_load_panels() -> list[PanelBuilder]:
    """Memory pressure, utilisation and memory bandwidth per GPU."""
    return [
        graph("GPU memory pressure",
              "Per GPU, the larger of the KV-cache usage of the engines on it and their"
              " preemption rate (one per second reads 100%); VRAM used over total where no"
              " engine is known on the GPU. This, not VRAM used (vLLM reserves most of it up"
              " front), tells whether memory limits the GPU.",
              "percentunit",
              Q(f"max by (gpu) (inference_node_gpu_memory_pressure_ratio{{{G}}})", "GPU {{gpu}}"),
              max_val=1, steps=ratio_steps()),
        graph("GPU utilisation",
              "Share of time a kernel ran on the GPU (NVML). Decoding is bound by memory"
              " bandwidth, so this reads high even when the GPU has room; use it to spot idle"
              " GPUs, not saturated ones.",
              "percentunit",
              Q(f"max by (gpu) (inference_node_gpu_utilization_ratio{{{G}}})", "GPU {{gpu}}"),
              max_val=1),
        graph("GPU memory bandwidth",
              "DRAM active from DCGM (share of cycles the memory interface was busy): the"
              " bottleneck of decoding, so the best saturation signal. Where the daemon reads no"
              " dcgm-exporter, NVML's memory-controller utilisation is shown instead (a coarser"
              " figure of the same thing).",
              "percentunit",
              Q(f'max by (gpu) (inference_node_gpu_dram_active_ratio{{{G}, gpu_instance=""}})',
                "GPU {{gpu}} DRAM active"),
              Q(f"max by (gpu) (inference_node_gpu_memory_utilization_ratio{{{G}}}) unless on"
                f" (gpu) max by (gpu) (inference_node_gpu_dram_active_ratio{{{G}}})",
                "GPU {{gpu}} memory controller (NVML)"),
              max_val=1),
    ]


def _gpu_power_panels() -> list[PanelBuilder]:
    """Power, temperature and clock throttling per GPU."""
    return [
        graph("GPU power",
              "Board power draw. Sitting at the power limit together with the sw_power_cap"
              " throttle reason means the GPU is power bound; a sudden drop under load points"
              " to throttling or a stalled engine.",
              "watt",
              Q(f"max by (gpu) (inference_node_gpu_power_watts{{{G}}})", "GPU {{gpu}}")),
        graph("GPU temperature",
              "Core temperature. Most data-centre GPUs begin thermal slowdown in the mid-80s"
              " °C; one GPU much hotter than its neighbours points to cooling (fan, airflow).",
              "celsius",
              Q(f"max by (gpu) (inference_node_gpu_temperature_celsius{{{G}}})", "GPU {{gpu}}"),
              min_val=None, steps=thresholds(GREEN, (80, "orange"), (87, "red"))),
        graph("Throttled GPUs by reason",
              "GPUs whose clocks are held down by a slowdown the alert counts: hw_slowdown,"
              " hw_thermal_slowdown, sw_thermal_slowdown or hw_power_brake_slowdown, the platform"
              " (cooling, power delivery) costing throughput and adding latency variance. The"
              " power cap (sw_power_cap) is left out: a busy GPU sits at it.",
              "short",
              Q(f"sum by (reason) (inference_node_gpu_throttle_reason{{{G}, {SLOWDOWN}}})",
                "{{reason}}"),
              axis="GPUs", decimals=0),
        up_down("Throttling per GPU",
                "Red while any slowdown reason (as in 'Throttled GPUs by reason') holds the"
                " GPU's clocks down.",
                Q(f"max by (gpu) (inference_node_gpu_throttle_reason{{{G}, {SLOWDOWN}}})",
                  "GPU {{gpu}}"),
                w=8, ok="full clocks", bad="throttled"),
    ]


def _gpu_output_panels() -> list[PanelBuilder]:
    """Generated tokens per second and per joule per GPU."""
    return [
        graph("Generated tokens per second per GPU",
              "Each engine's generation rate split evenly over the GPUs it runs on (tensor"
              " parallel), summed per GPU. GPUs of one engine that diverge point to an"
              " imbalance; a GPU at zero while others work may have lost its engine.",
              "short",
              Q(f"max by (gpu) (inference_node_gpu_generation_tokens_per_second{{{G}}})",
                "GPU {{gpu}}"),
              axis="tokens/s"),
        graph("Generated tokens per joule",
              "Energy efficiency per GPU: its tokens per second over its power draw. A drop at"
              " the same load means the GPU works harder for the same output (throttling,"
              " smaller batches).",
              "short",
              Q(f"max by (gpu) (inference_node_gpu_generation_tokens_per_joule{{{G}}})",
                "GPU {{gpu}}"),
              axis="tokens/J"),
    ]


def node_cost() -> Section:
    """The node's GPU cost per million generated tokens and per busy GPU-hour."""
    return Section("Cost", [
        graph("Cost per million generated tokens",
              "The node's GPU cost per hour (every priced GPU, idle ones included) over the"
              " tokens its engines on priced GPUs generate in an hour, from the cost"
              " recording rules. Absent without prices ([cost] settings) or tokens.",
              "short", Q(per_million("instance", N), "{{currency}}"),
              w=12, axis="per million tokens"),
        graph("Cost per busy GPU-hour and utilisation",
              "Each GPU's price per hour over its 24h utilisation (what an hour of work costs"
              " when every hour is paid for), beside its 24h utilisation (right axis off:"
              " read it in the tooltip).",
              "short", Q(busy_hour_cost(), "GPU {{gpu}} ({{currency}})"),
              Q(utilization("24h"), "GPU {{gpu}} utilisation 24h"),
              w=12, axis="per busy hour"),
    ])


def node_host() -> Section:
    """CPU steal, busy and iowait, pressure stall."""
    return Section("Host", [
        graph("CPU steal",
              "Share of CPU time the hypervisor gave to other guests: the noisy-neighbour"
              " signal. Above a few percent the engine's CPU side (scheduling, tokenisation,"
              " sampling) stalls in bursts, which shows as inter-token latency variance.",
              "percentunit",
              Q(f"inference_node_host_cpu_steal_ratio{{{N}}}", "steal"),
              steps=thresholds(GREEN, (0.05, "orange"), (0.1, "red"))),
        graph("CPU busy and iowait",
              "Share of CPU time spent working and idle waiting for I/O, all CPUs together. A"
              " saturated CPU delays the engine's scheduler; iowait during model loads is"
              " normal.",
              "percentunit",
              Q(f"inference_node_host_cpu_busy_ratio{{{N}}}", "busy"),
              Q(f"inference_node_host_cpu_iowait_ratio{{{N}}}", "iowait"),
              max_val=1),
        graph("Pressure stall",
              "Share of time tasks stalled on CPU, memory or I/O (pressure-stall information;"
              " 'some': at least one task, 'full': all non-idle tasks). Memory stalls mean the"
              " host is swapping or reclaiming; empty on kernels without PSI.",
              "percentunit",
              Q(f"inference_node_host_pressure_stall_ratio{{{N}}}", "{{resource}} {{kind}}")),
    ])


def node_health() -> Section:
    """Whether each source answers, how long its polls take and why they fail."""
    return Section("Source health", collapsed=True, panels=[
        up_down("Sources up",
                "Whether Prometheus scrapes the daemon ('scrape'), whether each of the daemon's"
                " sources answered its last poll, and whether each engine's metrics endpoint"
                " did. A source that is down keeps its last values for --poll.stale-after,"
                " then its series disappear.",
                Q(f"up{{{N}}}", "scrape"),
                Q(f"inference_node_exporter_collector_up{{{N}}}", "{{collector}} {{source}}"),
                Q(f"inference_node_engine_up{{{EN}}}", "engine {{engine}} {{endpoint}}")),
        graph("Poll duration",
              "Wall-clock time of each source's last poll. Polls that approach"
              " --poll.timeout (3 s by default) are about to fail: the engine or NVML answers"
              " slowly.",
              "s",
              Q("max by (collector, source)"
                f" (inference_node_exporter_collector_poll_duration_seconds{{{N}}})",
                "{{collector}} {{source}}"),
              w=12),
        graph("Poll errors by reason",
              "Failed polls per second by source and reason (timeout, connection, http status,"
              " parse, nvml_init...). Errors that persist turn the source's up series to 0.",
              "cps",
              Q("sum by (collector, source, reason)"
                f" (rate(inference_node_exporter_collector_errors_total{{{N}}}"
                "[$__rate_interval]))", "{{collector}} {{source}} {{reason}}"),
              no_value="No failed poll"),
        graph("Time since last successful poll",
              "Age of each source's last successful poll. It grows while a source fails;"
              " beyond --poll.stale-after the source's series are no longer served.",
              "s",
              Q("time() - max by (collector, source)"
                f" (inference_node_exporter_collector_last_success_timestamp_seconds{{{N}}})",
                "{{collector}} {{source}}")),
        graph("Skipped data and internal errors",
              "Upstream lines that could not be parsed, label sets dropped over the series"
              " limit, failures while rendering a scrape and failed NVML calls, per second."
              " All should stay at zero; anything else is worth a look at the daemon's log.",
              "cps",
              Q("sum by (source) (rate(inference_node_exporter_collector_malformed_lines_total"
                f"{{{N}}}[$__rate_interval]))", "malformed lines {{source}}"),
              Q("sum by (source) (rate(inference_node_exporter_collector_dropped_series_total"
                f"{{{N}}}[$__rate_interval]))", "dropped series {{source}}"),
              Q("sum by (collector) (rate(inference_node_exporter_render_errors_total"
                f"{{{N}}}[$__rate_interval]))", "render errors {{collector}}"),
              Q("sum by (error) (rate(inference_node_exporter_nvml_errors_total"
                f"{{{N}}}[$__rate_interval]))", "NVML {{error}}"),
              no_value="Nothing skipped"),
    ])


def node_overview() -> model.Dashboard:
    """One node, chosen with the ``node`` variable."""
    return assemble(
        "Inference node overview", NODE_UID,
        "One inference node: its engines (throughput, queue, KV cache, preemptions, latency"
        " percentiles, and the canary's fixed request beside the users' latency), its GPUs"
        " (memory pressure, bandwidth, power, temperature, throttling), the host (CPU steal,"
        " pressure) and the health of the exporter's sources.",
        [node_engines(), node_latency(), node_canary(), node_gpus(), node_cost(), node_host(),
         node_health()],
        node_multi=False, gpu=True, topk=False, alert_annotation=True)
