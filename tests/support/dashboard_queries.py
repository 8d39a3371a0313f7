"""The committed Grafana dashboards and their queries, ready to send to Prometheus.

``tests/test_dashboards.py`` checks the queries statically (metric names, labels, promtool);
the stack test evaluates them against a real Prometheus. ``substitute`` replaces the
dashboards' variables and Grafana's built-ins the way Grafana does before it sends a query.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DASHBOARD_DIR",
    "DEFAULTS",
    "OPTIONAL_SERIES",
    "annotation_queries",
    "dashboards",
    "grouping_labels",
    "label_values",
    "matchers",
    "may_be_empty",
    "metric_names",
    "panel_queries",
    "panels",
    "selectors",
    "substitute",
    "template_queries",
]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "dashboards"

Dashboard = dict[str, Any]


def dashboards(directory: Path = DASHBOARD_DIR) -> list[tuple[str, Dashboard]]:
    """(file name, parsed JSON) of every dashboard, sorted by file name."""
    out = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(data, dict), f"{path}: not a JSON object"
        out.append((path.name, data))
    return out


def panels(dashboard: Dashboard, *, rows: bool = False) -> list[dict[str, Any]]:
    """Every panel, those nested in (collapsed) rows included, in order; rows themselves
    only with ``rows=True``."""
    out: list[dict[str, Any]] = []

    def walk(items: Sequence[dict[str, Any]]) -> None:
        for p in items:
            if p.get("type") == "row":
                if rows:
                    out.append(p)
                walk(p.get("panels") or [])
            else:
                out.append(p)

    walk(dashboard.get("panels") or [])
    return out


def panel_queries(dashboard: Dashboard) -> list[tuple[str, str]]:
    """(panel title, PromQL expr) of every target of every panel, nested ones included."""
    return [(p.get("title", ""), t["expr"])
            for p in panels(dashboard) for t in p.get("targets") or [] if t.get("expr")]


def template_queries(dashboard: Dashboard) -> list[tuple[str, str]]:
    """(variable name, query) of every query-type template variable, e.g.
    ``("node", 'label_values(up{job=~"$job"}, instance)')``."""
    out = []
    for v in (dashboard.get("templating") or {}).get("list") or []:
        if v.get("type") != "query":
            continue
        query = v.get("query")
        if isinstance(query, dict):  # the newer object form of Prometheus' variable editor
            query = query.get("query")
        if isinstance(query, str) and query:
            out.append((v["name"], query))
    return out


def annotation_queries(dashboard: Dashboard) -> list[tuple[str, str]]:
    """(annotation name, PromQL expr) of every annotation backed by a query."""
    out = []
    for a in (dashboard.get("annotations") or {}).get("list") or []:
        expr = a.get("expr") or (a.get("target") or {}).get("expr")
        if expr:
            out.append((a.get("name", ""), expr))
    return out


_LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>[a-zA-Z_]\w*)\s*\)\s*$", re.S)


def label_values(query: str) -> tuple[str | None, str]:
    """The series selector (None for ``label_values(label)``) and the label name of a
    ``label_values(...)`` variable query."""
    m = _LABEL_VALUES.match(query)
    if m is None:
        raise ValueError(f"not a label_values() query: {query!r}")
    return m.group("selector"), m.group("label")


# Series that are absent on a healthy node, or on one without an optional source: no
# dcgm-exporter (--dcgm.url), no --gpu.expected-count, a kernel without pressure-stall
# information, no failed poll, render or NVML call yet, no alert firing, no engine without
# a histogram of a latency (only those export its windowed mean).
OPTIONAL_SERIES = frozenset({
    "inference_node_engine_latency_mean_seconds",
    "inference_node_gpu_dram_active_ratio",
    "inference_node_gpus_expected",
    "inference_node_host_pressure_stall_ratio",
    "inference_node_exporter_collector_errors_total",
    "inference_node_exporter_render_errors_total",
    "inference_node_exporter_nvml_errors_total",
    "ALERTS",
})


def may_be_empty(expr: str) -> bool:
    """Whether expr selects only optional series, so that an empty result is no error."""
    return metric_names(expr) <= OPTIONAL_SERIES and "vector(" not in expr


# --- variables -----------------------------------------------------------------------------

# The dashboards' own variables ("All" is ".*"; window and topk at their defaults) and
# Grafana's built-ins.
DEFAULTS: dict[str, str] = {
    "job": "inference-node",
    "node": ".*",
    "engine": ".*",
    "model": ".*",
    "gpu": ".*",
    "window": "1m",
    "topk": "10",
    "__interval": "1m",
    "__rate_interval": "1m",
    "__range": "1h",
}

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def _seconds(duration: str) -> float:
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _derived(values: Mapping[str, str | Sequence[str]]) -> dict[str, str]:
    """Grafana's numeric built-ins that follow from the duration ones."""
    out = {}
    for name in ("__interval", "__rate_interval", "__range"):
        value = values.get(name)
        if isinstance(value, str):
            seconds = _seconds(value)
            out[f"{name}_ms"] = str(round(seconds * 1000))
            if name == "__range":
                out["__range_s"] = str(round(seconds))
    return out


_VARIABLE = re.compile(
    r"\$\{(?P<braced>\w+)(?::(?P<fmt>[\w-]+))?\}"
    r"|\[\[(?P<old>\w+)(?::(?P<oldfmt>[\w-]+))?\]\]"
    r"|\$(?P<plain>\w+)")
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|{}\[\]/-]")


def _regex_escape(value: str) -> str:
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def _format(value: str | Sequence[str], fmt: str | None) -> str:
    values = [value] if isinstance(value, str) else list(value)
    match fmt:
        case None | "raw" | "text" | "glob" | "lucene" | "sqlstring" | "date":
            if isinstance(value, str):
                return value
            # Grafana's Prometheus data source: escaped alternatives in a group.
            return "(" + "|".join(_regex_escape(v) for v in values) + ")"
        case "regex":
            if isinstance(value, str):
                return _regex_escape(value)
            return "(" + "|".join(_regex_escape(v) for v in values) + ")"
        case "pipe":
            return "|".join(values)
        case "csv" | "distributed":
            return ",".join(values)
        case "doublequote":
            return ",".join(f'"{v}"' for v in values)
        case "singlequote":
            return ",".join(f"'{v}'" for v in values)
        case "json":
            return json.dumps(value if isinstance(value, str) else values)
        case _:
            raise ValueError(f"unknown variable format {fmt!r}")


def substitute(expr: str, variables: Mapping[str, str | Sequence[str]] | None = None) -> str:
    """expr with ``$var``, ``${var}``, ``${var:format}`` and ``[[var]]`` replaced, as Grafana
    does before it sends a query.

    ``variables`` overrides ``DEFAULTS`` (job ``inference-node``, node/engine/model/gpu
    ``.*`` = All, window ``1m``, topk ``10``, ``$__rate_interval`` and ``$__interval`` ``1m``,
    ``$__range`` ``1h``); the ``_ms`` and ``_s`` built-ins follow from those. A list value
    is a multi-value selection: ``(a|b)``, or ``a|b`` with ``:pipe``. A variable that is
    neither passed nor known raises ``KeyError``; ``$1`` and the like (label_replace's
    groups) stay as they are.
    """
    values: dict[str, str | Sequence[str]] = {**DEFAULTS, **(variables or {})}
    values = {**_derived(values), **values}

    def replace(m: re.Match[str]) -> str:
        name = m.group("braced") or m.group("old") or m.group("plain")
        if name[0].isdigit():
            return m.group(0)
        if name not in values:
            raise KeyError(f"variable ${name} is not defined (in {expr!r})")
        return _format(values[name], m.group("fmt") or m.group("oldfmt"))

    return _VARIABLE.sub(replace, expr)


# --- reading PromQL ------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r'\{(?:"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[^}"\'])*\}')
_BRACKETS = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([a-zA-Z_:][\w:]*)")  # not a $variable
_SELECTOR = re.compile(
    r"(?<![\w.:$])([a-zA-Z_:][\w:]*)\s*"
    r'(\{(?:"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[^}"\'])*\})')
_MATCHER = re.compile(
    r'([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*(?:"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')')
_MATCHER_PARTS = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "atan2", "inf", "nan", "Inf", "NaN",
})


def _identifiers(expr: str) -> Iterator[tuple[str, bool]]:
    """(identifier, followed by an opening parenthesis) outside strings, matchers,
    durations and grouping clauses."""
    text = _BRACES.sub("{}", expr)
    text = _STRING.sub('""', text)
    text = _BRACKETS.sub("", text)
    text = _GROUPING.sub(" ", text)
    for m in _IDENTIFIER.finditer(text):
        rest = text[m.end():].lstrip()
        yield m.group(1), rest.startswith("(")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions and keywords left out)."""
    return {name for name, call in _identifiers(expr) if not call and name not in _KEYWORDS}


def selectors(expr: str) -> list[tuple[str, list[str]]]:
    """(metric name, label names matched) of every ``name{...}`` selector in expr."""
    return [(m.group(1), _MATCHER.findall(m.group(2))) for m in _SELECTOR.finditer(expr)
            if m.group(1) not in _KEYWORDS]


def matchers(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """(metric name, label -> (operator, value)) of every ``name{...}`` selector in expr."""
    return [(m.group(1), {label: (op, value) for label, op, value in
                          _MATCHER_PARTS.findall(m.group(2))})
            for m in _SELECTOR.finditer(expr) if m.group(1) not in _KEYWORDS]


def grouping_labels(expr: str) -> set[str]:
    """Label names of the by / without / on / ignoring / group_* clauses."""
    text = _STRING.sub('""', _BRACES.sub("{}", expr))
    return {label.strip() for m in _GROUPING.finditer(text)
            for label in m.group(1).split(",") if label.strip()}
