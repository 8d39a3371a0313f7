"""Panel builders: time series, worst-first bars, stats, state timelines and the alert table,
all on the ``datasource`` variable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.builders.dashboard import DashboardLink, ThresholdsConfig
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.builder import Builder
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
from queries import DATASOURCE

NODE_UID = "inference-node-overview"
"""The node overview dashboard's uid, which the worst-nodes panels link to."""
NODE_LINK = (f"/d/{NODE_UID}?var-node=${{__field.labels.instance}}&${{datasource:queryparam}}"
             "&${job:queryparam}&${engine:queryparam}&${model:queryparam}&${__url_time_range}")
"""The node dashboard of the series' instance, with the same data source, job, engines,
models and time range."""


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


def _node_links() -> list[Builder[model.DashboardLink]]:
    return [DashboardLink("Node overview of ${__field.labels.instance}")
            .type(model.DashboardLinkType.LINK).url(NODE_LINK)]


def thresholds(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    """Absolute thresholds: (from value, colour), the first from None."""
    return (ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=v, color=c) for v, c in steps]))


GREEN = (None, "green")


def ratio_steps() -> ThresholdsConfig:
    """Green, orange from 90%, red from 98%: for ratios that hurt when nearly full."""
    return thresholds(GREEN, (0.9, "orange"), (0.98, "red"))


def graph(title: str, description: str, unit: str, *queries: Q, w: int = 8, h: int = 8,
          min_val: float | None = 0, max_val: float | None = None, axis: str | None = None,
          steps: ThresholdsConfig | None = None, stacked: bool = False,
          decimals: float | None = None, no_value: str | None = None,
          node_link: bool = False) -> timeseries.Panel:
    """A time series panel; ``steps`` are drawn as dashed lines; ``node_link`` links each
    series to its instance's node dashboard."""
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
    if node_link:
        p = p.data_links(_node_links())
    return p


def worst_bars(title: str, description: str, unit: str, query: Q, *, w: int = 8, h: int = 8,
               max_val: float | None = None, steps: ThresholdsConfig | None = None,
               decimals: float | None = None, no_value: str | None = None) -> bargauge.Panel:
    """A horizontal bar gauge of an instant query, in the query's (worst first) order; each
    bar links to the node dashboard of its instance."""
    p = (bargauge.Panel().title(title).description(description).datasource(DATASOURCE)
         .unit(unit).height(h).span(w).min(0)
         .with_target(_targets([Q(query.expr, query.legend, instant=True)])[0])
         .orientation(VizOrientation.HORIZONTAL).display_mode(BarGaugeDisplayMode.GRADIENT)
         .show_unfilled(True)
         .reduce_options(ReduceDataOptions().values(False).calcs(["lastNotNull"]))
         .thresholds(steps if steps is not None else thresholds((None, "blue")))
         .data_links(_node_links()))
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
         .thresholds(steps if steps is not None else thresholds((None, "text"))))
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
         .thresholds(thresholds((None, "red"), (1, "green"))))
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
