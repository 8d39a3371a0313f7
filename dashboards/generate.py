#!/usr/bin/env python3
"""Build the Grafana dashboards with Grafana's Foundation SDK and write their JSON.

    python dashboards/generate.py               # (re)write dashboards/*.json
    python dashboards/generate.py --check       # exit 1 when a committed file is stale
    python dashboards/generate.py --out-dir DIR # write the files into DIR instead

The output is deterministic (fixed uids and panel ids, sorted keys, no timestamps), so the
committed JSON can be diffed against a fresh build in CI. Every query uses the names of
``exporter/schema.py`` or the recording rules of ``alerts/``; ``tests/test_dashboards.py``
checks that, and that each query parses with promtool. The latencies, their families and
titles come from ``exporter/latency.py``.

Every dashboard selects its data source through the ``datasource`` variable and filters
with ``job``, ``node`` (the ``instance`` label), ``model`` and ``gpu``, so the files import
into Grafana 10 and 11 as they are, without ``__inputs``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.builders.dashboard import (
    AnnotationQuery,
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BigValueColorMode,
    BigValueGraphMode,
    FieldTextAlignment,
    GraphDrawStyle,
    GraphThresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    StackingMode,
    TooltipDisplayMode,
    VisibilityMode,
    VizOrientation,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat, QueryEditorMode

from exporter.latency import LATENCIES, Latency, by_key
from exporter.slowdown import SLOWDOWN_REASONS

HERE = Path(__file__).resolve().parent
TAG = "inference-node"
DEFAULT_JOB = "inference-node"

# --- selectors -----------------------------------------------------------------------------

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
WINDOW = "1m"  # the daemon's first sliding window with the default --derive.windows
J = 'job=~"$job"'
N = f'{J}, instance=~"$node"'
E = f'{N}, model=~"$model"'
G = f'{N}, gpu=~"$gpu"'
# The throttle reasons the alert counts (exporter.slowdown): not the ordinary power cap.
SLOWDOWN = f'reason=~"{"|".join(SLOWDOWN_REASONS)}"'
FIRING = 'alertstate="firing", alertname=~"InferenceNode.*"'

TTFT = by_key("ttft")
ITL = by_key("itl")
REQUEST_LATENCIES: tuple[Latency, ...] = tuple(row for row in LATENCIES if row.key != "queue")
"""Every latency but queue time (which time to first token includes): those with a spread
panel and a slowest-nodes panel."""


def quantile_rule(level: str, latency: Latency) -> str:
    """A quantile recording rule of alerts/: level ``instance_model`` or ``model``."""
    return f"{level}:{latency.family}:quantile"


def windowed(latency: str, selector: str = E, **labels: str) -> str:
    """The daemon's windowed latency gauge for one kind of latency."""
    extra = "".join(f', {k}="{v}"' for k, v in labels.items())
    return (f'inference_node_engine_latency_seconds{{{selector}, latency="{latency}",'
            f' window="{WINDOW}"{extra}}}')


def memory_bandwidth(by: str) -> str:
    """DCGM's DRAM active per whole GPU, or NVML's memory-controller utilisation where DCGM
    is not read (the ``or`` keeps DRAM active wherever both exist)."""
    return (f'max by ({by}) (inference_node_gpu_dram_active_ratio{{{G}, gpu_instance=""}})'
            f" or on ({by}) max by ({by}) (inference_node_gpu_memory_utilization_ratio{{{G}}})")


def worst(expr: str, k: int = 10) -> str:
    """The k largest series of expr, largest first."""
    return f"sort_desc(topk({k}, {expr}))"


# --- panel helpers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Q:
    """One Prometheus target."""

    expr: str
    legend: str = "__auto"
    instant: bool = False
    table: bool = False


def _targets(queries: Sequence[Q]) -> list[Dataquery]:
    out: list[Dataquery] = []
    for i, q in enumerate(queries):
        t = (Dataquery().ref_id(chr(ord("A") + i)).datasource(DATASOURCE).expr(q.expr)
             .legend_format(q.legend).editor_mode(QueryEditorMode.CODE))
        t = t.instant() if q.instant else t.range()
        if q.table:
            t = t.format(PromQueryFormat.TABLE)
        out.append(t)
    return out


def _steps(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    return (ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=v, color=c) for v, c in steps]))


GREEN = (None, "green")


def ratio_steps() -> ThresholdsConfig:
    """Green, orange from 90%, red from 98%: for ratios that hurt when nearly full."""
    return _steps(GREEN, (0.9, "orange"), (0.98, "red"))


def graph(title: str, description: str, unit: str, *queries: Q, w: int = 8, h: int = 8,
          min_val: float | None = 0, max_val: float | None = None, axis: str | None = None,
          steps: ThresholdsConfig | None = None, stacked: bool = False,
          decimals: float | None = None, no_value: str | None = None) -> timeseries.Panel:
    """A time series panel."""
    p = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
         .unit(unit).height(h).span(w).line_width(1).fill_opacity(10).span_nulls(False)
         .legend(VizLegendOptions().display_mode(LegendDisplayMode.LIST)
                 .placement(LegendPlacement.BOTTOM).show_legend(True))
         .tooltip(VizTooltipOptions().mode(TooltipDisplayMode.MULTI)
                  .sort(SortOrder.DESCENDING)))
    for t in _targets(queries):
        p = p.with_target(t)
    if min_val is not None:
        p = p.min(min_val)
    if max_val is not None:
        p = p.max(max_val)
    if axis is not None:
        p = p.axis_label(axis)
    if decimals is not None:
        p = p.decimals(decimals)
    if no_value is not None:
        p = p.no_value(no_value)
    if steps is not None:
        p = (p.thresholds(steps)
             .thresholds_style(GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.DASHED)))
    if stacked:
        p = (p.stacking(StackingConfig().mode(StackingMode.NORMAL).group("A"))
             .draw_style(GraphDrawStyle.BARS).fill_opacity(80))
    return p


def worst_bars(title: str, description: str, unit: str, query: Q, *, w: int = 8, h: int = 8,
               max_val: float | None = None, steps: ThresholdsConfig | None = None,
               decimals: float | None = None, no_value: str | None = None) -> bargauge.Panel:
    """A horizontal bar gauge of an instant query, in the query's (worst first) order."""
    p = (bargauge.Panel().title(title).description(description).datasource(DATASOURCE)
         .unit(unit).height(h).span(w).min(0)
         .with_target(_targets([Q(query.expr, query.legend, instant=True)])[0])
         .orientation(VizOrientation.HORIZONTAL).display_mode(BarGaugeDisplayMode.GRADIENT)
         .show_unfilled(True)
         .reduce_options(ReduceDataOptions().values(False).calcs(["lastNotNull"]))
         .thresholds(steps if steps is not None else _steps((None, "blue"))))
    if max_val is not None:
        p = p.max(max_val)
    if decimals is not None:
        p = p.decimals(decimals)
    if no_value is not None:
        p = p.no_value(no_value)
    return p


def single(title: str, description: str, unit: str, *queries: Q, w: int = 4, h: int = 4,
           steps: ThresholdsConfig | None = None, decimals: float | None = 0) -> stat.Panel:
    """A stat panel of instant queries."""
    p = (stat.Panel().title(title).description(description).datasource(DATASOURCE)
         .unit(unit).height(h).span(w).graph_mode(BigValueGraphMode.NONE)
         .color_mode(BigValueColorMode.VALUE)
         .reduce_options(ReduceDataOptions().values(False).calcs(["lastNotNull"]))
         .thresholds(steps if steps is not None else _steps((None, "text"))))
    for t in _targets([Q(q.expr, q.legend, instant=True) for q in queries]):
        p = p.with_target(t)
    if decimals is not None:
        p = p.decimals(decimals)
    return p


def up_down(title: str, description: str, *queries: Q, w: int = 12, h: int = 8,
            ok: str = "up", bad: str = "down") -> statetimeline.Panel:
    """A state timeline of 0/1 series: 1 green, 0 red."""
    p = (statetimeline.Panel().title(title).description(description).datasource(DATASOURCE)
         .unit("none").height(h).span(w).show_value(VisibilityMode.NEVER).merge_values(True)
         .fill_opacity(80)
         .legend(VizLegendOptions().display_mode(LegendDisplayMode.LIST)
                 .placement(LegendPlacement.BOTTOM).show_legend(False))
         .mappings([model.ValueMap(options={
             "0": model.ValueMappingResult(text=bad, color="red", index=0),
             "1": model.ValueMappingResult(text=ok, color="green", index=1)})])
         .thresholds(_steps((None, "red"), (1, "green"))))
    for t in _targets(queries):
        p = p.with_target(t)
    return p


def alert_table(title: str, description: str, expr: str, *, w: int = 24,
                h: int = 7) -> table.Panel:
    """A table of the firing alerts, one row each, their labels as columns."""
    hidden = {"Time": True, "Value": True, "__name__": True, "alertstate": True}
    return (table.Panel().title(title).description(description).datasource(DATASOURCE)
            .unit("none").height(h).span(w).align(FieldTextAlignment.AUTO).inspect(False)
            .with_target(_targets([Q(expr, instant=True, table=True)])[0])
            .with_transformation(model.DataTransformerConfig(
                id_val="organize", options={"excludeByName": hidden}))
            .no_value("No alert firing"))


# --- dashboards ----------------------------------------------------------------------------

PanelBuilder = Builder[model.Panel]


@dataclass
class Section:
    """A row and its panels; a collapsed row holds its panels, an open one is followed by
    them (Grafana drops panels nested in an open row)."""

    title: str
    panels: list[PanelBuilder] = field(default_factory=list)
    collapsed: bool = False


@dataclass(frozen=True)
class Spec:
    """One dashboard file."""

    file: str
    build: Callable[[], model.Dashboard]


def variables(*, node_multi: bool, gpu: bool) -> list[Builder[model.VariableModel]]:
    """datasource, job, node (instance), model and, where GPUs are shown, gpu."""
    def query(name: str, label: str, q: str, *, multi: bool,
              sort: model.VariableSort = model.VariableSort.ALPHABETICAL_ASC,
              ) -> QueryVariable:
        v = (QueryVariable(name).label(label).datasource(DATASOURCE).query(q)
             .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(sort).multi(multi)
             .include_all(multi))
        return v.all_value(".*") if multi else v

    out: list[Builder[model.VariableModel]] = [
        DatasourceVariable("datasource").label("Data source").type("prometheus"),
        (query("job", "Job", "label_values(inference_node_exporter_build_info, job)",
               multi=False)
         .current(model.VariableOption(selected=True, text=DEFAULT_JOB, value=DEFAULT_JOB))),
        query("node", "Node", f"label_values(inference_node_exporter_build_info{{{J}}},"
              " instance)", multi=node_multi),
        query("model", "Model",
              f"label_values(inference_node_engine_requests_running{{{N}}}, model)",
              multi=True),
    ]
    if gpu:
        out.append(query("gpu", "GPU", f"label_values(inference_node_gpu_info{{{N}}}, gpu)",
                         multi=True, sort=model.VariableSort.NUMERICAL_ASC))
    return out


def assemble(title: str, uid: str, description: str, sections: Sequence[Section], *,
             node_multi: bool, gpu: bool, alert_annotation: bool) -> model.Dashboard:
    """The dashboard with its variables, links and panels; panel ids numbered in order."""
    d = (Dashboard(title).uid(uid).description(description).tags([TAG]).editable()
         .time("now-3h", "now").refresh("30s").timezone("browser")
         .tooltip(model.DashboardCursorSync.CROSSHAIR)
         .link(DashboardLink("Inference node dashboards").type(model.DashboardLinkType.DASHBOARDS)
               .tags([TAG]).as_dropdown(True).include_vars(True).keep_time(True)))
    for v in variables(node_multi=node_multi, gpu=gpu):
        d = d.with_variable(v)
    if alert_annotation:
        d = d.annotation(
            AnnotationQuery().name("Firing alerts").datasource(DATASOURCE).enable(True)
            .hide(False).icon_color("red")
            .expr(f'ALERTS{{{FIRING}, instance=~"$node"}}'))
    for s in sections:
        if s.collapsed:
            row = Row(s.title)
            for p in s.panels:
                row = row.with_panel(p)
            d = d.with_row(row)
        else:
            d = d.with_row(Row(s.title).collapsed(False))
            for p in s.panels:
                d = d.with_panel(p)
    built = d.build()
    number = 0
    for top in built.panels or []:
        number += 1
        top.id_val = number
        if isinstance(top, model.RowPanel):
            for inner in top.panels:
                number += 1
                inner.id_val = number
    return built


def _latency_panel(latency: Latency) -> timeseries.Panel:
    title = latency.title
    return graph(
        f"{title} P50 / P95 / P99",
        f"{title} percentiles of this node's engines. Solid: the daemon's {WINDOW} sliding"
        " window (the worst engine per model), which reacts within a poll or two. 'histogram':"
        " the same quantiles computed by Prometheus from the re-exported histograms (recording"
        " rules), smoother and comparable across nodes. A P99 that drifts away from P95 means"
        " outliers: open the Latency variance dashboard to see whether the platform causes"
        " them.",
        "s",
        Q(f"max by (model, percentile) ({windowed(latency.key)})", "{{model}} P{{percentile}}"),
        Q(f"{quantile_rule('instance_model', latency)}{{{E}}}",
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
              Q("sum by (endpoint, model) (inference_node_engine_generation_tokens_per_second"
                f'{{{E}, window="{WINDOW}"}})', "{{endpoint}} {{model}} generated"),
              Q("sum by (endpoint, model) (inference_node_engine_prompt_tokens_per_second"
                f'{{{E}, window="{WINDOW}"}})', "{{endpoint}} {{model}} prompt"),
              axis="tokens/s"),
        graph("Queue depth",
              "Requests waiting to be scheduled. A queue that keeps growing means the engine"
              " is saturated and time to first token grows with it; short spikes when a batch"
              " of requests arrives are normal.",
              "short",
              Q(f"sum by (endpoint, model) (inference_node_engine_requests_waiting{{{E}}})",
                "{{endpoint}} {{model}}"),
              axis="requests", decimals=0),
        graph("Requests running",
              "Requests in the engine's running batch. A flat line at the engine's limit"
              " (max_num_seqs) with a growing queue means the batch is full; fewer running"
              " requests than usual at the same load points to a KV cache that is too small.",
              "short",
              Q(f"sum by (endpoint, model) (inference_node_engine_requests_running{{{E}}})",
                "{{endpoint}} {{model}}"),
              axis="requests", decimals=0),
        graph("KV cache usage",
              "Share of the KV cache in use per engine and data-parallel rank. Near 100% the"
              " scheduler can no longer admit requests and starts preempting running ones"
              " (recomputing them), which shows as latency spikes.",
              "percentunit",
              Q("max by (endpoint, model, dp_rank)"
                f" (inference_node_engine_kv_cache_usage_ratio{{{E}}})",
                "{{endpoint}} {{model}} rank {{dp_rank}}"),
              max_val=1, steps=ratio_steps()),
        graph("Preemptions per second",
              "Requests the scheduler preempted, per second over the daemon's window. Any"
              " steady rate means the KV cache is too small for the load: every preempted"
              " request is recomputed or swapped and its latency jumps.",
              "short",
              Q("sum by (endpoint, model) (inference_node_engine_preemptions_per_second"
                f'{{{E}, window="{WINDOW}"}})', "{{endpoint}} {{model}}"),
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
              " maximum: read its spikes with care.",
              "short",
              Q("sum by (model, latency) (inference_node_engine_latency_window_observations"
                f'{{{E}, window="{WINDOW}"}})', "{{model}} {{latency}}"),
              w=24, h=6, decimals=0),
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
              min_val=None, steps=_steps(GREEN, (80, "orange"), (87, "red"))),
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


def node_host() -> Section:
    """CPU steal, busy and iowait, pressure stall."""
    return Section("Host", [
        graph("CPU steal",
              "Share of CPU time the hypervisor gave to other guests: the noisy-neighbour"
              " signal. Above a few percent the engine's CPU side (scheduling, tokenisation,"
              " sampling) stalls in bursts, which shows as inter-token latency variance.",
              "percentunit",
              Q(f"inference_node_host_cpu_steal_ratio{{{N}}}", "steal"),
              steps=_steps(GREEN, (0.05, "orange"), (0.1, "red"))),
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
                Q(f"inference_node_engine_up{{{N}}}", "engine {{endpoint}}")),
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
    return assemble(
        "Inference node overview", "inference-node-overview",
        "One inference node: its engines (throughput, queue, KV cache, preemptions, latency"
        " percentiles), its GPUs (memory pressure, bandwidth, power, temperature, throttling),"
        " the host (CPU steal, pressure) and the health of the exporter's sources.",
        [node_engines(), node_latency(), node_gpus(), node_host(), node_health()],
        node_multi=False, gpu=True, alert_annotation=True)


def fleet_now() -> Section:
    """The fleet's headline figures."""
    return Section("Fleet now", [
        single("Nodes up", "Nodes whose exporter Prometheus scrapes successfully.", "none",
               Q(f"sum(up{{{N}}})")),
        single("Engines up", "Engine metrics endpoints that answered their last poll.",
               "none", Q(f"sum(inference_node_engine_up{{{N}}})")),
        single("Firing alerts", "Alerts of the inference-node rules firing now; see the"
               " table below.", "none",
               Q(f"count(ALERTS{{{FIRING}}}) or vector(0)"),
               steps=_steps(GREEN, (1, "red"))),
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


def fleet_alerts() -> Section:
    """The table of firing alerts."""
    return Section("Firing alerts", [
        alert_table("Firing alerts",
                    "Every InferenceNode* alert firing now with its labels (node, model,"
                    " GPU, severity). Start with the critical ones; the node dashboard of the"
                    " instance shows the signals behind each.",
                    f"ALERTS{{{FIRING}}}"),
    ])


def fleet_latency() -> Section:
    """Each latency's quantiles per model, and the slowest nodes."""
    return Section("Latency across the fleet", [
        *(graph(f"{row.title} by model",
                f"Fleet-wide {row.title.lower()} quantiles per model, computed by Prometheus from"
                " the engines' histograms of every node (recording rules). Not filtered by"
                " node: a model's quantile covers all of its nodes; the bars below show which"
                " nodes are the slowest.",
                "s",
                Q(f"{quantile_rule('model', row)}{{{J}, model=~\"$model\"}}",
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
                             f'{{{E}, quantile="0.99"}})'), "{{instance}}"))
          for row in REQUEST_LATENCIES),
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
                   steps=_steps(GREEN, (80, "orange"), (87, "red"))),
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


def fleet_platform() -> Section:
    """CPU steal and pressure stall across the fleet."""
    return Section("Platform", [
        worst_bars("Most CPU steal",
                   "Nodes whose hypervisor takes the most CPU time for other guests. Steal of"
                   " more than a few percent makes latency uneven on that node.",
                   "percentunit",
                   Q(worst(f"max by (instance) (inference_node_host_cpu_steal_ratio{{{N}}})"),
                     "{{instance}}"),
                   steps=_steps(GREEN, (0.05, "orange"), (0.1, "red"))),
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
              Q(f"sum(1 - inference_node_engine_up{{{N}}})", "engines"),
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
    return assemble(
        "Inference fleet overview", "inference-fleet-overview",
        "All inference nodes: fleet throughput and latency from the histograms, the worst"
        " nodes first for each signal, and the firing alerts.",
        [fleet_now(), fleet_alerts(), fleet_latency(), fleet_load(),
         fleet_gpus(), fleet_platform(), fleet_health()],
        node_multi=True, gpu=True, alert_annotation=False)


def _spread_panel(latency: Latency) -> timeseries.Panel:
    rule, title, key = quantile_rule("instance_model", latency), latency.title, latency.key
    return graph(
        f"{title}: P99 / P50",
        f"How many times the median the {title.lower()} P99 is, per node and model. Solid:"
        f" from the daemon's {WINDOW} window; 'histogram': from Prometheus' quantiles of the"
        " histograms. A spread that rises while the load panels below stay flat, in step"
        " with CPU steal, GPU throttling or memory bandwidth, comes from the platform.",
        "none",
        Q(f'max by (instance, model) ({windowed(key, percentile="99")}) / max by'
          f' (instance, model) ({windowed(key, percentile="50")})',
          "{{instance}} {{model}}"),
        Q(f'{rule}{{{E}, quantile="0.99"}} / ignoring (quantile) {rule}{{{E}, quantile="0.5"}}',
          "{{instance}} {{model}} (histogram)"),
        axis="P99 / P50", min_val=None)


def variance_spread() -> Section:
    """P99 over P50 of each latency, and the figures it divides."""
    return Section("Latency spread", [
        *(_spread_panel(row) for row in REQUEST_LATENCIES),
        graph("P50 and P99",
              "Time to first token and inter-token latency, median and P99, from the daemon's"
              f" {WINDOW} window: the figures the spread above divides.",
              "s",
              Q("max by (instance, model, latency, percentile)"
                f' (inference_node_engine_latency_seconds{{{E}, latency=~"{TTFT.key}|{ITL.key}",'
                f' window="{WINDOW}", percentile=~"50|99"}})',
                "{{instance}} {{model}} {{latency}} P{{percentile}}"),
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
              steps=_steps(GREEN, (0.05, "orange"), (0.1, "red"))),
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
              Q("sum by (instance, endpoint) (rate(inference_node_engine_process_cpu_seconds_total"
                f"{{{N}}}[$__rate_interval]))", "{{instance}} {{endpoint}}"),
              axis="cores"),
    ])


def variance_load() -> Section:
    """The load's signals: queue, KV cache, preemptions."""
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
    ])


def latency_variance() -> model.Dashboard:
    return assemble(
        "Inference latency variance", "inference-latency-variance",
        "Whether latency variance (P99 over P50) comes from the platform (CPU steal, GPU"
        " throttling, memory bandwidth, pressure stalls) or from the load (queue, KV cache,"
        " preemptions): all on one time axis with a shared crosshair.",
        [variance_spread(), variance_platform(), variance_load()],
        node_multi=True, gpu=True, alert_annotation=True)


DASHBOARDS: tuple[Spec, ...] = (
    Spec("inference-node-overview.json", node_overview),
    Spec("inference-fleet-overview.json", fleet_overview),
    Spec("inference-latency-variance.json", latency_variance),
)


def render(d: model.Dashboard) -> str:
    """The dashboard as JSON text: sorted keys, two-space indent, a final newline."""
    text = JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False).encode(d)
    data: Any = json.loads(text)  # normalise (enums, nested builders) before the final dump
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def build_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {s.file: render(s.build()) for s in DASHBOARDS}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out-dir", type=Path, default=HERE,
                        help="where to write (or, with --check, read) the JSON files"
                             " (default: this script's directory)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a file differs from a fresh build")
    args = parser.parse_args(argv)
    out: Path = args.out_dir
    files = build_all()
    if args.check:
        stale = []
        for name, text in files.items():
            path = out / name
            if not path.is_file():
                stale.append(f"{path}: missing")
            elif path.read_text(encoding="utf-8") != text:
                stale.append(f"{path}: stale (differs from what generate.py builds)")
        if stale:
            for line in stale:
                print(line, file=sys.stderr)
            print("run: python dashboards/generate.py", file=sys.stderr)
            return 1
        print(f"{len(files)} dashboards up to date in {out}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
