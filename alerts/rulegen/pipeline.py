"""The monitoring pipeline and the engines' health: exporters down, absent or gone from
discovery, engines down, wedged or crash-looping, collectors failing or stale, and the
Watchdog that proves alerts are delivered at all."""

from __future__ import annotations

from exporter.kinds import PLATFORM

from .base import Ctx, Rule, match


def exporter(c: Ctx) -> list[Rule]:
    s = c.s
    source = ("source {{ $labels.source }} of collector {{ $labels.collector }} on"
              " {{ $labels.instance }}")
    return [
        c.alert(
            "InferenceNodeExporterDown",
            f"up{c.sel()} == 0",
            "exporter_down_for", "warning",
            "Prometheus cannot scrape an inference node's exporter.",
            f"Prometheus has not scraped inference-node-exporter on {{{{ $labels.instance }}}}"
            f" (job {{{{ $labels.job }}}}) for {s['exporter_down_for']}: the node, its"
            f" network or the exporter is down, and its other alerts cannot fire."),
        c.alert(
            "InferenceNodeExporterAbsent",
            f"absent(up{c.sel()})",
            "exporter_absent_for", "critical",
            "Prometheus has no inference-node-exporter target.",
            f"No target matching {s['job_selector']} has been scraped for"
            f" {s['exporter_absent_for']}: service discovery or the scrape configuration"
            f" lost the inference nodes, and none of their alerts can fire."),
        c.alert(
            "InferenceNodeMissing",
            f"present_over_time(up{c.sel()}[{s['node_missing_range']}])\n"
            f"unless on ({c.by('job, instance')})\nup{c.sel()}",
            "node_missing_for", "warning",
            "An inference node is no longer a scrape target.",
            f"{{{{ $labels.instance }}}} (job {{{{ $labels.job }}}}) was scraped in the"
            f" last {s['node_missing_range']} but is no longer a target, for"
            f" {s['node_missing_for']}: service discovery lost it, or it was removed. Its"
            f" alerts cannot fire. Removed on purpose: silence this alert for"
            f" {s['node_missing_range']}."),
        c.alert(
            "InferenceNodeEngineDown",
            f"inference_node_engine_up{c.sel()} == 0",
            "engine_down_for", "warning",
            "An inference engine does not answer.",
            f"The metrics endpoint of {{{{ $labels.engine }}}} engine"
            f" {{{{ $labels.endpoint }}}} on {{{{ $labels.instance }}}} has not answered"
            f" for {s['engine_down_for']}: the engine is down, restarting or hung."),
        *_engine_health(c),
        c.alert(
            "InferenceNodeCollectorDown",
            # The node's own collectors only: every engine endpoint is a source of its
            # engine's collector too, and InferenceNodeEngineDown covers it; the GPU
            # collector has InferenceNodeGPUTelemetryLost.
            f"inference_node_exporter_collector_up"
            f"{c.sel(match('collector', '=~', '|'.join(k for k in PLATFORM if k != 'gpu')))}"
            f" == 0",
            "collector_down_for", "warning",
            "A collector of inference-node-exporter fails.",
            f"The {source} has failed for {s['collector_down_for']}: its metrics are"
            f" missing and the alerts built on them cannot fire."),
        c.alert(
            "InferenceNodeCollectorStale",
            f"""
(
  time() - inference_node_exporter_collector_last_success_timestamp_seconds{c.sel()}
    > {s['stale_seconds']}
)
unless on ({c.by('job, instance, collector, source')})
(inference_node_exporter_collector_up{c.sel()} == 0)
""",
            "stale_for", "warning",
            "A collector of inference-node-exporter has stopped polling.",
            f"The {source} last succeeded {{{{ $value | humanizeDuration }}}} ago although"
            f" it reads up: its worker has stalled (or the exporter's clock is off), and"
            f" its metrics are old."),
    ]


def _engine_health(c: Ctx) -> list[Rule]:
    """An engine that answers but serves nothing, and one that keeps restarting."""
    s = c.s
    r = s["engine_stalled_range"]
    engine = ("{{ $labels.engine }} engine {{ $labels.endpoint }} (model"
              " {{ $labels.model }}, rank {{ $labels.dp_rank }}) on {{ $labels.instance }}")
    return [
        c.alert(
            "InferenceNodeEngineStalled",
            # Latency histograms record finished requests only: a wedged engine looks
            # like no traffic to them. Work held throughout with no token out is the sign,
            # unless the engine's forward passes go on (one that counts tokens at request
            # end, running one long request).
            f"""
(
    min_over_time(inference_node_engine_requests_running{c.sel()}[{r}])
  + min_over_time(inference_node_engine_requests_waiting{c.sel()}[{r}])
) > 0
and
increase(inference_node_engine_generation_tokens_total{c.sel()}[{r}]) == 0
unless on ({c.by('job, instance, engine, endpoint, model, dp_rank')})
increase(inference_node_engine_iterations_total{c.sel()}[{r}]) > 0
""",
            "engine_stalled_for", "critical",
            "An inference engine holds requests but generates no token.",
            f"The {engine} has held at least {{{{ $value | humanize }}}} request(s),"
            f" running or waiting, throughout the last {r} without generating a single"
            f" token: it answers its metrics endpoint but is wedged, and its users wait."),
        c.alert(
            "InferenceNodeEngineCrashLooping",
            f"increase(inference_node_engine_restarts_total{c.sel()}"
            f"[{s['engine_restarts_range']}])\n  >= {s['engine_restarts']}",
            "engine_restarts_for", "warning",
            "An inference engine keeps restarting.",
            f"The {engine} restarted {{{{ $value | printf \"%.0f\" }}}} times in the last"
            f" {s['engine_restarts_range']}: it crashes and comes back, serving in bursts"
            f" between the crashes, which InferenceNodeEngineDown can miss."),
    ]


def watchdog(c: Ctx) -> list[Rule]:
    return [{
        "alert": "InferenceNodeWatchdog",
        "expr": "vector(1)",
        "for": c.s["watchdog_for"],
        "labels": {"severity": "none"},
        "annotations": {
            "summary": "Always firing: the alerting pipeline works.",
            "description": "Always firing while Prometheus evaluates the inference-node"
                           " rules and Alertmanager delivers them; route it to a"
                           " dead-man's switch, which pages when it stops"
                           " ({{ $value }} means alive).",
            "runbook_url": f"{c.s['runbook_url_base']}#inferencenodewatchdog",
        },
    }]
