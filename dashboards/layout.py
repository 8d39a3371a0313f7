"""A dashboard's frame: its sections (rows of panels), template variables, links and
annotations, and the panel ids numbered in order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from grafana_foundation_sdk.builders.dashboard import (
    AnnotationQuery,
    CustomVariable,
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import dashboard as model
from queries import DATASOURCE, DEFAULT_TOPK, EN, FIRING, TOPK, WINDOWS, J, N

TAG = "inference-node"
DEFAULT_JOB = "inference-node"

PanelBuilder = Builder[model.Panel]
VariableBuilder = Builder[model.VariableModel]


@dataclass
class Section:
    """A row and its panels; a collapsed row holds its panels, an open one is followed by
    them (Grafana drops panels nested in an open row)."""

    title: str
    panels: list[PanelBuilder] = field(default_factory=list)
    collapsed: bool = False


def _query(name: str, label: str, q: str, *, multi: bool,
           sort: model.VariableSort = model.VariableSort.ALPHABETICAL_ASC) -> QueryVariable:
    v = (QueryVariable(name).label(label).datasource(DATASOURCE).query(q)
         .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(sort).multi(multi)
         .include_all(multi))
    return v.all_value(".*") if multi else v


def _custom(name: str, label: str, description: str, values: Sequence[str],
            default: str) -> CustomVariable:
    return (CustomVariable(name).label(label).description(description)
            .values(",".join(values)).multi(False).include_all(False)
            .current(model.VariableOption(selected=True, text=default, value=default))
            .options([model.VariableOption(selected=v == default, text=v, value=v)
                      for v in values]))


def variables(*, node_multi: bool, gpu: bool, topk: bool) -> list[VariableBuilder]:
    """datasource, job, node (instance), engine (the kind: the ``engine`` label), model,
    where GPUs are shown gpu, the daemon's window and, where nodes are ranked, topk."""
    out: list[VariableBuilder] = [
        DatasourceVariable("datasource").label("Data source").type("prometheus"),
        (_query("job", "Job", "label_values(inference_node_exporter_build_info, job)",
                multi=False)
         .current(model.VariableOption(selected=True, text=DEFAULT_JOB, value=DEFAULT_JOB))),
        _query("node", "Node", f"label_values(inference_node_exporter_build_info{{{J}}},"
               " instance)", multi=node_multi),
        _query("engine", "Engine", f"label_values(inference_node_engine_up{{{N}}}, engine)",
               multi=True),
        _query("model", "Model",
               f"label_values(inference_node_engine_requests_running{{{EN}}}, model)",
               multi=True),
    ]
    if gpu:
        out.append(_query("gpu", "GPU", f"label_values(inference_node_gpu_info{{{N}}}, gpu)",
                          multi=True, sort=model.VariableSort.NUMERICAL_ASC))
    out.append(_custom("window", "Window",
                       "The daemon's sliding window of the rates and percentiles"
                       " (--derive.windows).", WINDOWS, WINDOWS[0]))
    if topk:
        out.append(_custom("topk", "Top nodes",
                           "How many nodes the worst-first panels show.", TOPK, DEFAULT_TOPK))
    return out


def assemble(title: str, uid: str, description: str, sections: Sequence[Section], *,
             node_multi: bool, gpu: bool, topk: bool, alert_annotation: bool,
             ) -> model.Dashboard:
    """The dashboard with its variables, links and panels; panel ids numbered in order."""
    d = (Dashboard(title).uid(uid).description(description).tags([TAG]).editable()
         .time("now-3h", "now").refresh("30s").timezone("browser")
         .tooltip(model.DashboardCursorSync.CROSSHAIR)
         .link(DashboardLink("Inference node dashboards").type(model.DashboardLinkType.DASHBOARDS)
               .tags([TAG]).as_dropdown(True).include_vars(True).keep_time(True)))
    for v in variables(node_multi=node_multi, gpu=gpu, topk=topk):
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
