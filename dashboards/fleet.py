"""The fleet overview dashboard: headline figures, SLOs per model, firing alerts, and the
worst nodes first for every signal."""

from __future__ import annotations

from cost import per_million
from grafana_foundation_sdk.models import dashboard as model
from layout import Section, assemble
from panels import GREEN, Q, alert_table, graph, ratio_steps, single, thresholds, worst_bars
from queries import (
    CANARY_RATE_RANGE,
    EN,
    FIRING,
    REPLICAS_SERVING,
    REPLICAS_SERVING_SHARE,
    REQUEST_LATENCIES,
    SLO_BAD_1H,
    SLO_BAD_6H,
    SLO_OBJECTIVE,
    SLOWDOWN,
    TTFT,
    WINDOW,
    E,
    G,
    J,
    K,
    M,
    N,
    R,
    burn_rate,
    canary_quantile,
    memory_bandwidth,
    quantile_rule,
    worst,
)

from exporter.latency import LATENCIES


def fleet_now() -> Section:
    """The fleet's headline figures."""
    return Section("Fleet now", [
        single("Nodes up", "Nodes whose exporter Prometheus scrapes successfully.", "none",
               Q(f"sum(up{{{N}}})")),
        single("Engines up", "Engine metrics endpoints that answered their last poll.",
               "none", Q(f"sum(inference_node_engine_up{{{EN}}})")),
        single("Firing alerts", "Alerts of the inference-node rules firing now; see the"
               " table below.", "none",
               Q(f"count(ALERTS{{{FIRING}}}) or vector(0)"),
               steps=thresholds(GREEN, (1, "red"))),
        single("Generated tokens/s", f"Generation throughput of the fleet over {WINDOW}.",
               "short",
               Q("sum(inference_node_engine_generation_tokens_per_second"
                 f'{{{E}, window="{WINDOW}"}})')),
        single("Requests waiting", "Queued requests over all engines: a fleet that queues"
               " needs more capacity or has slow nodes (see worst nodes below).", "short",
               Q(f"sum(inference_node_engine_requests_waiting{{{E}}})")),
        single("GPUs", "GPUs NVML reports, and how many the nodes should have where"
               " --gpu.expected-count is set. Fewer reported than expected: a GPU fell off the"
               " bus.", "none",
               Q(f"sum(inference_node_gpus{{{N}}})", "reporting"),
               Q(f"sum(inference_node_gpus_expected{{{N}}})", "expected")),
    ])


def fleet_slos() -> Section:
    """Per model: the share of bad events, the error-budget burn rate, and the replicas
    serving."""
    return Section("SLOs per model", [
        graph("Bad-event share by model",
              "Share of bad events per model over the last hour: requests slower than the"
              " time-to-first-token threshold (ttft), inter-token gaps slower than the"
              " inter-token latency threshold (itl), requests finished with an error (errors)."
              " The 'budget' lines are what each objective allows (1 - objective): a model"
              " above its line spends its error budget faster than it accrues.",
              "percentunit",
              Q(f"{SLO_BAD_1H}{{{M}}}", "{{model}} {{slo}}"),
              Q(f"1 - {SLO_OBJECTIVE}", "{{slo}} budget"),
              w=6),
        graph("Error-budget burn rate by model",
              "The bad-event share over its budget (1 - objective), per model and SLO, over"
              " 1h and 6h: how many times faster than the objective allows the budget goes."
              " 1 spends a 30-day budget in 30 days; 14.4 over 1h spends 2% of it in an hour"
              " (the usual page), 6 over 6h spends 5% in six hours (the usual ticket).",
              "none",
              Q(burn_rate(SLO_BAD_1H), "{{model}} {{slo}} 1h"),
              Q(burn_rate(SLO_BAD_6H), "{{model}} {{slo}} 6h"),
              w=6, axis="x budget", steps=thresholds(GREEN, (6, "orange"), (14.4, "red"))),
        graph("Serving capacity by model",
              "Engine replicas serving each model that answer, over their peak of the last"
              " day. Below 100% replicas are down or gone and the others carry their share; a"
              " fall in step with a rising burn rate means lost capacity, not slow nodes,"
              " spends the budget.",
              "percentunit",
              Q(f"{REPLICAS_SERVING_SHARE}{{{M}}}", "{{model}}"),
              w=6, max_val=1),
        graph("Replicas serving by model",
              "Engine replicas serving each model that answer their polls, over all nodes:"
              " the count the capacity share divides by its peak of the last day.",
              "none",
              Q(f"{REPLICAS_SERVING}{{{M}}}", "{{model}}"),
              w=6, axis="replicas", decimals=0),
    ])


def fleet_alerts() -> Section:
    """The table of firing alerts."""
    return Section("Firing alerts", [
        alert_table("Firing alerts",
                    "Every InferenceModel* and InferenceNode* alert firing now with its labels"
                    " (node, model, GPU, severity). Start with the critical ones; the node"
                    " dashboard of the instance shows the signals behind each.",
                    f"ALERTS{{{FIRING}}}"),
    ])


def fleet_latency() -> Section:
    """Each latency's quantiles per model, and the slowest nodes."""
    return Section("Latency across the fleet", [
        *(graph(f"{row.title} by model",
                f"Fleet-wide {row.title.lower()} quantiles per model, computed by Prometheus from"
                " the engines' histograms of every node (recording rules). Not filtered by"
                " node or engine: a model's quantile covers all of its nodes; the bars below"
                " show which nodes are the slowest. Engines with no histogram of this latency"
                " export only its windowed mean, which the node dashboard shows.",
                "s",
                Q(f"{quantile_rule('model', row)}{{{M}}}",
                  "{{model}} q{{quantile}}"),
                w=6)
          for row in LATENCIES),
        *(worst_bars(f"Slowest nodes: {row.title} P99",
                     f"Nodes with the highest {row.title.lower()} P99 (the worst model on each,"
                     " from the histograms), slowest first. One node far ahead of the others"
                     " points to that node, not to the load.",
                     "s",
                     Q(worst("max by (instance)"
                             f" ({quantile_rule('instance_model', row)}"
                             f'{{{R}, quantile="0.99"}})'), "{{instance}}"))
          for row in REQUEST_LATENCIES),
    ])


def fleet_canary() -> Section:
    """The canary's TTFT P99 per node: the platform of each node, the traffic left out."""
    p99 = canary_quantile("0.99", TTFT, "instance, model")
    return Section("Canary: the platform's latency per node", [
        worst_bars("Slowest canaries: time to first token P99",
                   "Each node's time to first token P99 of the daemon's canary (one fixed,"
                   " small streaming request per engine endpoint every 10 s), per model,"
                   f" from its fine-bucket histogram over {CANARY_RATE_RANGE}, slowest first."
                   " The request never changes, so, unlike the users' P99 above, the traffic"
                   " mix does not move it: a node far ahead of the others serving the same"
                   " model has a slower platform or more load. Click its bar for its node"
                   " dashboard. Empty where no endpoint is probed (--canary.endpoint).",
                   "s", Q(worst(p99), "{{instance}} {{model}}")),
        graph("Canary time to first token P99 per node",
              "The same P99 over time for the $topk slowest nodes at each moment. A node that"
              " rises alone while the others stay flat: its platform (CPU steal, throttling,"
              " pressure stalls) or its own load, not the fleet's traffic; all rising together:"
              " a shared cause (load balancer, model, storage). Click a series for that"
              " node's dashboard.",
              "s", Q(f"topk({K}, {p99})", "{{instance}} {{model}}"),
              w=16, node_link=True),
    ])


def fleet_load() -> Section:
    """Throughput and finished requests; the deepest queues, fullest KV caches and most
    preemptions."""
    return Section("Load and saturation", [
        graph("Generated tokens per second by model",
              f"Generation throughput per model over the daemon's {WINDOW} window, summed over"
              " the nodes.",
              "short",
              Q("sum by (model) (inference_node_engine_generation_tokens_per_second"
                f'{{{E}, window="{WINDOW}"}})', "{{model}}"),
              w=12, axis="tokens/s"),
        graph("Finished requests per second by model",
              "Requests finished per second per model, and those aborted or failed. A rising"
              " abort rate usually means clients time out on slow responses.",
              "reqps",
              Q("sum by (model) (rate(inference_node_engine_requests_finished_total"
                f"{{{E}}}[$__rate_interval]))", "{{model}} all"),
              Q("sum by (model) (rate(inference_node_engine_requests_finished_total"
                f'{{{E}, reason=~"abort|error"}}[$__rate_interval]))',
                "{{model}} abort/error"),
              w=12),
        worst_bars("Deepest queues",
                   "Nodes with the most requests waiting, deepest first. A few nodes with"
                   " long queues while others have none: the load balancer does not spread"
                   " the load, or those nodes are slower.",
                   "short",
                   Q(worst(f"sum by (instance) (inference_node_engine_requests_waiting{{{E}}})"),
                     "{{instance}}"),
                   decimals=0),
        worst_bars("Fullest KV caches",
                   "Nodes with the fullest KV cache (the fullest engine on each). Near 100% the"
                   " engines start preempting.",
                   "percentunit",
                   Q(worst("max by (instance)"
                           f" (inference_node_engine_kv_cache_usage_ratio{{{E}}})"),
                     "{{instance}}"),
                   max_val=1, steps=ratio_steps()),
        worst_bars("Most preemptions",
                   f"Nodes with the highest preemption rate over {WINDOW}. Any steady rate means"
                   " the KV cache is too small for the node's share of the load.",
                   "short",
                   Q(worst("sum by (instance) (inference_node_engine_preemptions_per_second"
                           f'{{{E}, window="{WINDOW}"}})'), "{{instance}}")),
    ])


def fleet_gpus() -> Section:
    """The worst GPUs for memory pressure, bandwidth, heat and throttling; the fleet's power
    and tokens per joule."""
    return Section("GPUs", [
        worst_bars("Highest GPU memory pressure",
                   "GPUs with the highest memory pressure (KV-cache usage or preemption rate of"
                   " their engines), worst first.",
                   "percentunit",
                   Q(worst("max by (instance, gpu)"
                           f" (inference_node_gpu_memory_pressure_ratio{{{G}}})"),
                     "{{instance}} GPU {{gpu}}"),
                   max_val=1, steps=ratio_steps()),
        worst_bars("Busiest GPU memory bandwidth",
                   "GPUs with the busiest memory interface: DCGM's DRAM active where the node"
                   " reads dcgm-exporter, else NVML's memory-controller utilisation. Decoding"
                   " GPUs near 100% are at their throughput limit.",
                   "percentunit",
                   Q(worst(memory_bandwidth("instance, gpu")), "{{instance}} GPU {{gpu}}"),
                   max_val=1),
        worst_bars("Hottest GPUs",
                   "GPUs with the highest core temperature. Those in the mid-80s °C and above"
                   " are likely to slow down.",
                   "celsius",
                   Q(worst(f"max by (instance, gpu) (inference_node_gpu_temperature_celsius"
                           f"{{{G}}})"), "{{instance}} GPU {{gpu}}"),
                   steps=thresholds(GREEN, (80, "orange"), (87, "red"))),
        worst_bars("Throttled GPUs per node",
                   "Nodes with the most GPUs whose clocks are held down for a slowdown reason"
                   " (idle and operator-set clocks left out).",
                   "none",
                   Q(worst("sum by (instance) (max by (instance, gpu)"
                           f" (inference_node_gpu_throttle_reason{{{G}, {SLOWDOWN}}}))"),
                     "{{instance}}"),
                   decimals=0),
        graph("Fleet GPU power",
              "Total board power of the selected GPUs. Power that rises while throughput stays"
              " flat means the fleet works harder for the same tokens (see tokens per joule).",
              "watt",
              Q(f"sum(inference_node_gpu_power_watts{{{G}}})", "power")),
        graph("Fleet tokens per joule",
              "Generated tokens per second of the fleet over its GPUs' power draw. A fall at"
              " steady load means the fleet spends more energy per token (throttling, smaller"
              " batches, idle GPUs drawing power).",
              "short",
              Q(f"sum(inference_node_gpu_generation_tokens_per_second{{{G}}})"
                f" / sum(inference_node_gpu_power_watts{{{G}}})", "tokens per joule"),
              axis="tokens/J"),
    ])


def fleet_cost() -> Section:
    """Cost per million generated tokens for the fleet and per model."""
    return Section("Cost", [
        graph("Cost per million generated tokens",
              "The fleet's GPU cost per hour over the tokens an hour generates, and each"
              " model's (the GPUs that serve it): from the cost recording rules; absent"
              " without prices ([cost] settings). The cost dashboard has the detail.",
              "short", Q(per_million("job", J), "fleet ({{currency}})"),
              Q(per_million("model", M), "{{model}} ({{currency}})"),
              w=12, axis="per million tokens"),
        worst_bars("Most expensive nodes per token",
                   "The $topk nodes with the highest cost per million generated tokens,"
                   " highest first: idle or slow GPUs for their price.", "short",
                   Q(worst(f"max by (instance) ({per_million('instance', N)})"),
                     "{{instance}}"), w=12, decimals=2),
    ])


def fleet_platform() -> Section:
    """CPU steal and pressure stall across the fleet."""
    return Section("Platform", [
        worst_bars("Most CPU steal",
                   "Nodes whose hypervisor takes the most CPU time for other guests. Steal of"
                   " more than a few percent makes latency uneven on that node.",
                   "percentunit",
                   Q(worst(f"max by (instance) (inference_node_host_cpu_steal_ratio{{{N}}})"),
                     "{{instance}}"),
                   steps=thresholds(GREEN, (0.05, "orange"), (0.1, "red"))),
        graph("CPU steal across the fleet",
              "The highest and the average CPU steal over the nodes. A high maximum with a low"
              " average: one noisy neighbour; both high: the whole pool is oversubscribed.",
              "percentunit",
              Q(f"max(inference_node_host_cpu_steal_ratio{{{N}}})", "max"),
              Q(f"avg(inference_node_host_cpu_steal_ratio{{{N}}})", "average")),
        worst_bars("Most pressure stall",
                   "Nodes and resources (cpu, memory, io) with the highest share of time some"
                   " task stalled.",
                   "percentunit",
                   Q(worst("max by (instance, resource)"
                           f' (inference_node_host_pressure_stall_ratio{{{N}, kind="some"}})'),
                     "{{instance}} {{resource}}")),
    ])


def fleet_health() -> Section:
    """Sources down, the most poll errors and the slowest polls across the fleet."""
    return Section("Source health", collapsed=True, panels=[
        graph("Sources down",
              "Scrape targets, exporter sources and engine endpoints that are down. All"
              " zero in a healthy fleet.",
              "none",
              Q(f"sum(1 - up{{{N}}})", "scrape targets"),
              Q(f"sum by (collector) (1 - inference_node_exporter_collector_up{{{N}}})",
                "source {{collector}}"),
              Q(f"sum(1 - inference_node_engine_up{{{EN}}})", "engines"),
              decimals=0),
        worst_bars("Most poll errors in the time range",
                   "Nodes and collectors with the most failed polls over the dashboard's time"
                   " range.",
                   "none",
                   Q(worst("sum by (instance, collector) (increase("
                           f"inference_node_exporter_collector_errors_total{{{N}}}[$__range]))"),
                     "{{instance}} {{collector}}"),
                   decimals=0, no_value="No failed poll"),
        worst_bars("Slowest polls",
                   "Sources with the slowest last poll. Near --poll.timeout (3 s by default)"
                   " they are about to fail.",
                   "s",
                   Q(worst("max by (instance, collector, source)"
                           " (inference_node_exporter_collector_poll_duration_seconds"
                           f"{{{N}}})"), "{{instance}} {{collector}} {{source}}")),
    ])


def fleet_overview() -> model.Dashboard:
    """Every node of the job."""
    return assemble(
        "Inference fleet overview", "inference-fleet-overview",
        "All inference nodes: fleet throughput, the SLOs per model (bad-event share,"
        " error-budget burn rate, serving capacity), latency from the histograms, the canary's"
        " fixed request per node, the worst nodes first for each signal, and the firing"
        " alerts.",
        [fleet_now(), fleet_slos(), fleet_alerts(), fleet_latency(), fleet_canary(),
         fleet_load(), fleet_gpus(), fleet_cost(), fleet_platform(), fleet_health()],
        node_multi=True, gpu=True, topk=True, alert_annotation=False)
