"""The knobs of the rules: every threshold, duration, range and selector, with its default
and meaning (``alerts/generate.py --list-knobs`` prints them)."""

from __future__ import annotations

from typing import NamedTuple

from exporter.slowdown import SLOWDOWN_REASONS


class KnobError(ValueError):
    """An unknown knob or a value a knob does not accept."""


class Knob(NamedTuple):
    """One setting of the rules: its name, default, kind of value and meaning."""

    name: str
    default: str
    kind: str
    help: str


KNOBS: tuple[Knob, ...] = (
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
    Knob("latency_min_rate", "0.1", "number",
         "Latency alerts need more than this many requests per second (the end-to-end"
         " histogram's count) on the node and model, or on the model for the SLO alerts:"
         " a few slow requests of a nearly idle model never alert."),
    # Service-level objectives per model (the pages).
    Knob("slo_period", "30d", "range",
         "The period each objective's error budget is counted over (named in the"
         " descriptions; the burn-rate factors assume 30 days)."),
    Knob("ttft_slo_seconds", "2.5", "number",
         "TTFT objective: a request is good when its first token comes within this many"
         " seconds. Must be a bucket bound of the engines' TTFT histograms (vLLM: 1, 2.5,"
         " 5...): InferenceModelSLOUnmeasurable says when it is not."),
    Knob("ttft_slo_objective", "0.99", "objective",
         "TTFT objective: the share of requests that must be good."),
    Knob("itl_slo_seconds", "0.2", "number",
         "ITL objective: an inter-token gap is good within this many seconds; a bucket bound"
         " of the engines' ITL histograms (vLLM: 0.1, 0.15, 0.2, 0.3...)."),
    Knob("itl_slo_objective", "0.99", "objective",
         "ITL objective: the share of inter-token gaps that must be good."),
    Knob("error_slo_objective", "0.999", "objective",
         "Error objective: the share of finished requests that must not end in error."),
    Knob("error_reasons", "error,rejected,overloaded", "names",
         "Error objective: the finish reasons (`reason` label) that count as errors: the"
         " engine failed, or shed the request (Triton's queue timeout, TGI's 429)."),
    Knob("slo_page_for", "2m", "duration",
         "Budget-burn pages (fast burn, severity critical): for this long."),
    Knob("slo_ticket_for", "15m", "duration",
         "Budget-burn tickets (slow burn, severity warning): for this long."),
    Knob("slo_unmeasurable_for", "30m", "duration",
         "InferenceModelSLOUnmeasurable: for this long."),
    Knob("capacity_share", "0.75", "ratio",
         "InferenceModelCapacityLow: a model's answering engine replicas below this share of"
         " their most in `capacity_range`."),
    Knob("capacity_range", "1d", "range",
         "InferenceModelCapacityLow: the range the most replicas are taken over."),
    Knob("capacity_for", "5m", "duration", "InferenceModelCapacityLow: for this long."),
    # Per-node latency (tickets).
    Knob("ttft_p99_seconds", "2.5", "number",
         "InferenceNodeTTFTP99High: P99 time to first token above this many seconds. On a"
         " bucket bound of the engine's histogram (vLLM: 1, 2.5, 5) the P99 is exact;"
         " between bounds it is interpolated. Per model: see the README."),
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
    Knob("gpu_lost_hold", "1h", "range",
         "InferenceNodeGPULost: while the GPU collector fails, a GPU lost in this range stays"
         " lost (its series have gone stale)."),
    Knob("gpu_telemetry_lost_for", "5m", "duration",
         "InferenceNodeGPUTelemetryLost: for this long."),
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
    Knob("pcie_busy_utilization", "0.1", "ratio",
         "InferenceNodeGPUPCIeLinkDegraded: the GPU counts as busy above this utilization."),
    Knob("pcie_degraded_for", "15m", "duration",
         "InferenceNodeGPUPCIeLinkDegraded: for this long."),
    Knob("gpu_temperature_celsius", "85", "number",
         "InferenceNodeGPUTemperatureHigh: GPU core temperature above this."),
    Knob("gpu_temperature_for", "10m", "duration",
         "InferenceNodeGPUTemperatureHigh: for this long."),
    # Noisy neighbour.
    Knob("cpu_steal_ratio", "0.1", "ratio",
         "InferenceNodeNoisyNeighbour: CPU steal above this share (0..1), together with"
         " degraded latency on the node (InferenceNodeCanaryNoisyNeighbour: with the canary"
         " degraded)."),
    Knob("degraded_ttft_p99_seconds", "1", "number",
         "InferenceNodeNoisyNeighbour: latency is degraded with a P99 time to first token"
         " above this many seconds..."),
    Knob("degraded_itl_p99_seconds", "0.1", "number",
         "InferenceNodeNoisyNeighbour: ...or a P99 inter-token latency above this many"
         " seconds."),
    Knob("cpu_steal_range", "5m", "range",
         "InferenceNodeNoisyNeighbour, InferenceNodeCanaryNoisyNeighbour: steal is averaged"
         " over this range, so bursts count."),
    Knob("canary_degraded_factor", "1.5", "number",
         "InferenceNodeCanaryNoisyNeighbour: the canary is degraded with its P99 time to"
         " first token or inter-token latency above this many times its 24h median (floors"
         " and history as for the canary's latency alerts), together with CPU steal or"
         " foreign processes on a GPU of the endpoint."),
    Knob("noisy_neighbour_for", "10m", "duration",
         "InferenceNodeNoisyNeighbour, InferenceNodeCanaryNoisyNeighbour: for this long."),
    Knob("pressure_range", "5m", "range",
         "Pressure-stall shares (CPU contention, memory) are taken over this range."),
    Knob("cpu_stall_ratio", "0.25", "ratio",
         "InferenceNodeCPUContention: runnable tasks waited for a CPU more than this share of"
         " the time (PSI cpu some), together with degraded latency on the node."),
    Knob("cpu_contention_for", "10m", "duration",
         "InferenceNodeCPUContention: for this long."),
    Knob("host_memory_available_ratio", "0.05", "ratio",
         "InferenceNodeHostMemoryPressure: memory available below this share of the total..."),
    Knob("memory_stall_ratio", "0.1", "ratio",
         "InferenceNodeHostMemoryPressure: ...or tasks stalled on memory more than this share"
         " of the time (PSI memory some)."),
    Knob("swap_growth_bytes", "268435456", "number",
         "InferenceNodeHostMemoryPressure: ...or swap in use grew by more than this many bytes"
         " over `swap_growth_range`."),
    Knob("swap_growth_range", "10m", "range",
         "InferenceNodeHostMemoryPressure: the range swap growth is measured over."),
    Knob("host_memory_for", "10m", "duration",
         "InferenceNodeHostMemoryPressure: for this long."),
    # The platform's fingerprint.
    Knob("balloon_range", "10m", "range",
         "InferenceNodeBalloonWhileKVCacheFull: the balloon inflated at some point in this"
         " range (rate of its inflated bytes above 0)..."),
    Knob("balloon_kv_cache_usage", "0.9", "ratio",
         "InferenceNodeBalloonWhileKVCacheFull: ...while an engine on the node has its KV"
         " cache fuller than this (0..1)."),
    Knob("balloon_for", "5m", "duration",
         "InferenceNodeBalloonWhileKVCacheFull: for this long."),
    Knob("gpu_foreign_processes", "0", "number",
         "InferenceNodeGPUForeignProcesses: more compute processes of no known engine than"
         " this on a GPU that serves an engine (InferenceNodeCanaryNoisyNeighbour: that"
         " serves the canary's endpoint)."),
    Knob("gpu_foreign_processes_for", "15m", "duration",
         "InferenceNodeGPUForeignProcesses: for this long."),
    Knob("numa_misaligned_for", "1h", "duration",
         "InferenceNodeEngineNUMAMisaligned: for this long."),
    # The canary: one fixed small request per engine endpoint, its own past the baseline.
    Knob("canary_latency_factor", "2", "number",
         "InferenceNodeCanaryTTFTHigh, InferenceNodeCanaryITLHigh: the canary's P99 (over"
         " `latency_rate_range`) above this many times its median of the last 24h."),
    Knob("canary_ttft_floor_seconds", "0.05", "number",
         "Canary alerts: a 24h median of the canary's P99 time to first token below this many"
         " seconds counts as this, so that jitter on a near-zero median is no multiple."),
    Knob("canary_itl_floor_seconds", "0.01", "number",
         "Canary alerts: the same floor for the canary's P99 inter-token latency."),
    Knob("canary_baseline_min_history", "12h", "range",
         "Canary alerts: the 24h median counts only once the canary's P99 has been recorded"
         " for this long of the last 24h (its samples there against the last hour's); until"
         " then the latency and noisy-neighbour canary alerts stay silent."),
    Knob("canary_latency_for", "10m", "duration",
         "InferenceNodeCanaryTTFTHigh, InferenceNodeCanaryITLHigh: for this long."),
    Knob("canary_failure_ratio", "0.2", "ratio",
         "InferenceNodeCanaryFailing: more than this share of the canary's probes end in"
         " another outcome than success over `canary_failure_range`, while the engine's"
         " metrics answer."),
    Knob("canary_failure_range", "10m", "range",
         "InferenceNodeCanaryFailing: the range the probes' outcomes are counted over."),
    Knob("canary_failing_for", "10m", "duration", "InferenceNodeCanaryFailing: for this long."),
    # Cost.
    Knob("cost_compare_hourly_price", "", "optional_number",
         "An alternative price of a GPU-hour (a dedicated GPU at a flat rate), in the"
         " currency of the daemon's [cost] prices; set, it records each GPU's break-even"
         " utilisation (this over the GPU's price: above it the flat rate is cheaper than"
         " paying the GPU's price for its busy hours only) and whether the alternative is"
         " cheaper at the 24h utilisation. Empty: not recorded."),
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
    return {k.name: k for k in KNOBS}

