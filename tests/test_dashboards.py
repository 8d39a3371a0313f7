"""The Grafana dashboards: regenerated and diffed, importable as they are, and every query
built from names the daemon really exports (or the recording rules of alerts/) and valid
PromQL by promtool's own parser."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard as DashboardModel

from exporter import engines
from exporter.config import Config
from exporter.latency import LATENCIES, by_key
from exporter.settings import format_duration
from tests.support.dashboard_queries import (
    DASHBOARD_DIR,
    DEFAULTS,
    OPTIONAL_SERIES,
    annotation_queries,
    dashboards,
    grouping_labels,
    label_values,
    matchers,
    may_be_empty,
    metric_names,
    panel_queries,
    panels,
    selectors,
    substitute,
    template_queries,
)
from tests.support.promtool import promtool
from tests.support.series import alerts_generator, known_series

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = DASHBOARD_DIR / "generate.py"
FILES = ("inference-cost-utilisation.json", "inference-fleet-overview.json",
         "inference-latency-variance.json", "inference-node-overview.json")
DATASOURCE_UID = "${datasource}"
COST = "inference-cost-utilisation.json"
"""The cost dashboard reads the cost recording rules, which sum over the engines: it has no
engine, endpoint, window or latency of its own."""

SERIES = known_series()
"""Every series name a query may select (the schema's, the recording rules', up, ALERTS)."""
KEPT_TARGET_LABELS = frozenset(
    label for label in alerts_generator().knobs()["target_labels"].default.split(",") if label)
"""Target labels the recording rules keep besides job and instance (``cluster``)."""
ALL_LABELS = frozenset(label for labels in SERIES.values() if labels for label in labels) | (
    KEPT_TARGET_LABELS)
DASHBOARDS = dashboards()
IDS = [name for name, _ in DASHBOARDS]
BY_FILE = dict(DASHBOARDS)
NODE, FLEET, VARIANCE = (BY_FILE[f"inference-{n}.json"]
                         for n in ("node-overview", "fleet-overview", "latency-variance"))


def all_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target, annotation and variable selector."""
    for title, expr in panel_queries(dashboard):
        yield f"panel {title!r}", expr
    for name, expr in annotation_queries(dashboard):
        yield f"annotation {name!r}", expr
    for name, query in template_queries(dashboard):
        selector, _ = label_values(query)
        if selector is not None:
            yield f"variable {name!r}", selector


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def section(dashboard: dict[str, Any], title: str) -> list[dict[str, Any]]:
    """The panels of the row titled ``title``: nested in it when collapsed, else those
    that follow it up to the next row."""
    out: list[dict[str, Any]] = []
    inside = False
    for p in dashboard["panels"]:
        if p["type"] == "row":
            if inside:
                break
            inside = p["title"] == title
            if inside:
                out.extend(p.get("panels") or [])
        elif inside:
            out.append(p)
    assert out, f"no row {title!r} with panels"
    return out


def exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


# --- generated and current -----------------------------------------------------------------


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GENERATOR), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_committed_dashboards_are_current() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, (
        f"{result.stderr}{result.stdout}\nregenerate with: python dashboards/generate.py")


def test_check_names_a_stale_or_missing_file(tmp_path: Path) -> None:
    assert run_generator("--out-dir", str(tmp_path)).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    assert run_generator("--check", "--out-dir", str(tmp_path)).returncode == 0
    stale = tmp_path / "inference-node-overview.json"
    stale.write_text(stale.read_text().replace("Queue depth", "Queue length"))
    (tmp_path / "inference-latency-variance.json").unlink()
    result = run_generator("--check", "--out-dir", str(tmp_path))
    assert result.returncode == 1
    assert f"{stale}: stale" in result.stderr
    assert "inference-latency-variance.json: missing" in result.stderr
    assert "inference-fleet-overview.json" not in result.stderr


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert run_generator("--out-dir", str(first)).returncode == 0
    assert run_generator("--out-dir", str(second)).returncode == 0
    for name in FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_the_generator_loads_by_path() -> None:
    """Loaded from its file (not run as a script), the generator finds its own modules and
    builds exactly the committed files."""
    spec = importlib.util.spec_from_file_location("_dashboards_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        built = module.build_all()
    finally:
        del sys.modules[spec.name]
    assert sorted(built) == sorted(FILES)
    for name, text in built.items():
        assert (DASHBOARD_DIR / name).read_text(encoding="utf-8") == text, name


def test_the_three_dashboards_are_there() -> None:
    assert tuple(IDS) == FILES
    uids = [d["uid"] for _, d in DASHBOARDS]
    assert len(set(uids)) == len(uids)
    assert all(re.fullmatch(r"[a-z0-9-]{1,40}", uid) for uid in uids)


# --- importable into Grafana 10 and 11 as they are -----------------------------------------


@pytest.mark.parametrize(("name", "dashboard"), DASHBOARDS, ids=IDS)
def test_importable_as_is(name: str, dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    assert "__inputs" not in dashboard and "__requires" not in dashboard
    assert dashboard.get("id") is None, "an id would clash on import"
    assert dashboard["title"] and dashboard["uid"]
    assert json.dumps(dashboard).count(DATASOURCE_UID) > 0
    assert "${DS_" not in json.dumps(dashboard), "no import-time data-source inputs"


@pytest.mark.parametrize(("name", "dashboard"), DASHBOARDS, ids=IDS)
def test_the_sdk_reads_back_exactly_what_it_wrote(name: str, dashboard: dict[str, Any]) -> None:
    """Decoded with the Foundation SDK's dashboard model and encoded again, nothing changes:
    every field is one the schema of the pinned Grafana version knows."""
    register_default_plugins()
    decoded = DashboardModel.from_json(dashboard)
    assert json.loads(JSONEncoder(sort_keys=True).encode(decoded)) == dashboard


@pytest.mark.parametrize(("name", "dashboard"), DASHBOARDS, ids=IDS)
def test_variables(name: str, dashboard: dict[str, Any]) -> None:
    v = variables(dashboard)
    assert v["datasource"]["type"] == "datasource"
    assert v["datasource"]["query"] == "prometheus"
    queries = dict(template_queries(dashboard))
    assert label_values(queries["job"])[1] == "job"
    assert v["job"]["current"]["value"] == DEFAULTS["job"] == "inference-node"
    assert label_values(queries["node"])[1] == "instance"
    assert label_values(queries["model"])[1] == "model"
    uses_gpu = any(n.startswith("inference_node_gpu") for _, e in panel_queries(dashboard)
                   for n in metric_names(e))
    assert ("gpu" in v) == uses_gpu
    if uses_gpu:
        assert label_values(queries["gpu"])[1] == "gpu"
    for var in v.values():
        if var["type"] == "query":
            assert var["datasource"]["uid"] == DATASOURCE_UID, var["name"]
            if var.get("includeAll"):
                assert var["allValue"] == ".*", var["name"]
    # Every variable a query uses is defined (substitute raises otherwise).
    used = {m for _, e in all_queries(dashboard)
            for m in re.findall(r"\$\{?(\w+)", e) if not m.startswith("__")}
    assert used <= set(v), used - set(v)


@pytest.mark.parametrize(("name", "dashboard"), DASHBOARDS, ids=IDS)
def test_panels(name: str, dashboard: dict[str, Any]) -> None:
    every = panels(dashboard, rows=True)
    ids = [p["id"] for p in every]
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for p in every:
        pos = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(pos), p["title"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
    for row in (p for p in dashboard["panels"] if p["type"] == "row"):
        # Grafana drops panels nested in an open row.
        assert row["collapsed"] or not row.get("panels"), row["title"]
    for p in panels(dashboard):
        where = f"{name}: {p['title']!r}"
        assert p["title"] and len(p.get("description", "")) > 40, where
        assert p["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, where
        assert p["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        targets = p["targets"]
        assert targets, where
        assert len({t["refId"] for t in targets}) == len(targets) and all(
            t["refId"] for t in targets), where
        for t in targets:
            assert t["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, where
            assert t["expr"].strip(), where
    for a in dashboard.get("annotations", {}).get("list", []):
        if a.get("expr"):
            assert a["datasource"]["uid"] == DATASOURCE_UID


# --- queries against the schema ------------------------------------------------------------


@pytest.mark.parametrize(("name", "dashboard"), DASHBOARDS, ids=IDS)
def test_queries_use_exported_names_and_labels(name: str, dashboard: dict[str, Any]) -> None:
    for where, expr in all_queries(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: selects no metric: {expr}"
        unknown = names - set(SERIES)
        assert not unknown, f"{where}: not exported nor recorded: {sorted(unknown)} in {expr}"
        for metric, labels in selectors(expr):
            allowed = SERIES[metric]
            if allowed is not None:
                bad = set(labels) - allowed
                assert not bad, f"{where}: {metric} has no label {sorted(bad)}: {expr}"
        bad = grouping_labels(expr) - ALL_LABELS
        assert not bad, f"{where}: grouping by unknown labels {sorted(bad)}: {expr}"


@pytest.mark.parametrize(("name", "dashboard"), DASHBOARDS, ids=IDS)
def test_no_query_names_an_engine(name: str, dashboard: dict[str, Any]) -> None:
    """The dashboards are engine-neutral: no query selects one engine's kind."""
    for where, expr in all_queries(dashboard):
        for kind in engines.kinds():
            assert kind not in expr, f"{where}: names the engine {kind}: {expr}"


# --- the engine variable, and the means of engines without histograms --------------------

ENGINE_SERIES = ("inference_node_engine_", "inference_node_canary_")
"""The series of one engine endpoint: the engines' own and the canary's probes of them."""
PERCENTILES = "inference_node_engine_latency_seconds"
MEANS = "inference_node_engine_latency_mean_seconds"


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) of every panel target with a query."""
    for p in panels(dashboard):
        for t in p.get("targets") or []:
            if t.get("expr"):
                yield p, t


def latencies(matcher: tuple[str, str]) -> set[str]:
    """The latency label values a ``latency`` matcher selects: one, or the alternatives of
    a plain ``a|b`` regular expression."""
    op, value = matcher
    assert op in ("=", "=~") and re.fullmatch(r"\w+(\|\w+)*", value), matcher
    return set(value.split("|")) if op == "=~" else {value}


@pytest.mark.parametrize(("name", "dashboard"), DASHBOARDS, ids=IDS)
def test_the_engine_variable(name: str, dashboard: dict[str, Any]) -> None:
    """Multi-select with All, offering the kinds of the engines the selected nodes poll; the
    models it offers are those of the chosen engines."""
    v = variables(dashboard)
    engine = v["engine"]
    assert engine["type"] == "query" and engine["multi"] and engine["includeAll"], engine
    assert engine["allValue"] == ".*"
    queries = dict(template_queries(dashboard))
    selector, label = label_values(queries["engine"])
    assert label == "engine" and selector is not None
    assert matchers(selector) == [("inference_node_engine_up", {
        "job": ("=~", "$job"), "instance": ("=~", "$node")})]
    order = list(v)
    assert order.index("node") < order.index("engine") < order.index("model"), order
    model_selector, _ = label_values(queries["model"])
    assert model_selector is not None
    ((_, model_matchers),) = matchers(model_selector)
    assert model_matchers["engine"] == ("=~", "$engine")


@pytest.mark.parametrize(("name", "dashboard"), DASHBOARDS, ids=IDS)
def test_every_engine_series_follows_the_engine_variable(name: str,
                                                         dashboard: dict[str, Any]) -> None:
    """Every selector of an ``inference_node_engine_*`` or ``inference_node_canary_*``
    series (panels, annotations and the variables but the engine variable's own) matches
    ``engine=~"$engine"``; the recording rules, which sum over the engines, have no engine
    label to match."""
    own = label_values(dict(template_queries(dashboard))["engine"])[0]
    checked = 0
    for where, expr in all_queries(dashboard):
        if where == "variable 'engine'":
            assert expr == own
            continue
        for metric, found in matchers(expr):
            if metric.startswith(ENGINE_SERIES):
                assert found.get("engine") == ("=~", "$engine"), f"{where}: {metric}: {expr}"
                checked += 1
            else:
                assert "engine" not in found, f"{where}: {metric}: {expr}"
    assert checked or name == COST, f"{name}: no query of an engine series"


@pytest.mark.parametrize(("name", "dashboard"), DASHBOARDS, ids=IDS)
def test_legends_that_name_an_endpoint_name_its_engine(name: str,
                                                       dashboard: dict[str, Any]) -> None:
    """An endpoint alone does not say what serves it: the legend says the engine too, and
    the query keeps the label."""
    found = 0
    for p, t in targets(dashboard):
        legend = t.get("legendFormat", "")
        if "{{endpoint}}" not in legend:
            continue
        found += 1
        where = f"{p['title']!r}: {legend}"
        assert legend.index("{{engine}}") < legend.index("{{endpoint}}"), where
        for clause in re.findall(r"\bby \(([^)]*)\)", t["expr"]):
            assert "engine" in {c.strip() for c in clause.split(",")}, f"{where}: {t['expr']}"
    # The fleet's panels rank nodes, not engines.
    if name not in ("inference-fleet-overview.json", COST):
        assert found, name


@pytest.mark.parametrize(("name", "dashboard"), DASHBOARDS, ids=IDS)
def test_windowed_percentiles_come_with_the_windowed_mean(name: str,
                                                          dashboard: dict[str, Any]) -> None:
    """An engine with no histogram of a latency (llama.cpp's inter-token latency, Triton's
    end-to-end and queue time) exports the window's mean instead: every panel of windowed
    percentiles in seconds shows it for the same latencies and window, as a query of its
    own whose legend says "mean" and never a percentile or quantile."""
    by_panel: dict[int, list[dict[str, Any]]] = {}
    for p, t in targets(dashboard):
        by_panel.setdefault(p["id"], []).append(t)
    shown = 0
    for p in panels(dashboard):
        ts = by_panel.get(p["id"], [])
        percentile = [m for t in ts for n, m in matchers(t["expr"]) if n == PERCENTILES]
        means = [(t, m) for t in ts for n, m in matchers(t["expr"]) if n == MEANS]
        where = f"{name}: {p['title']!r}"
        if not percentile or p["fieldConfig"]["defaults"]["unit"] != "s":
            # A ratio of percentiles (the spread) has no mean to show.
            assert not means, where
            continue
        assert means, f"{where}: windowed percentiles without the engines' means"
        for t, m in means:
            assert metric_names(t["expr"]) == {MEANS}, f"{where}: {t['expr']}"
            assert "percentile" not in m and "percentile" not in t["expr"], where
            legend = t["legendFormat"]
            assert legend.endswith(" mean"), f"{where}: {legend}"
            assert not re.search(r"\bP\{\{|\bq\{\{|\bP\d|percentile|quantile", legend), where
            assert m["window"] == ("=", "$window"), where
        assert {k for m in percentile for k in latencies(m["latency"])} == {
            k for _, m in means for k in latencies(m["latency"])}, where
        for t in ts:  # a percentile is never labelled a mean
            if MEANS not in metric_names(t["expr"]):
                assert "mean" not in t.get("legendFormat", ""), where
        shown += 1
    if name == COST:
        assert not shown
    elif name != "inference-fleet-overview.json":  # the fleet's latency is the histograms'
        assert shown, f"{name}: no windowed percentiles"
    else:
        assert not shown and MEANS not in json.dumps(dashboard)


def test_every_latency_with_a_mean_is_shown_as_a_mean() -> None:
    """The node dashboard has the mean of every latency the daemon may export one of."""
    shown = {k for p, t in targets(NODE) for n, m in matchers(t["expr"]) if n == MEANS
             for k in latencies(m["latency"])}
    assert shown == {row.key for row in LATENCIES}


def test_signals_of_the_issue_are_shown() -> None:
    used = {name: {n for _, e in all_queries(d) for n in metric_names(e)}
            for name, d in DASHBOARDS}
    quantiles = {f"model:{row.family}:quantile" for row in LATENCIES}
    node = {
        "inference_node_gpu_memory_pressure_ratio", "inference_node_gpu_utilization_ratio",
        "inference_node_gpu_dram_active_ratio", "inference_node_gpu_memory_utilization_ratio",
        "inference_node_gpu_power_watts", "inference_node_gpu_temperature_celsius",
        "inference_node_gpu_throttle_reason", "inference_node_engine_generation_tokens_per_second",
        "inference_node_engine_requests_waiting", "inference_node_engine_requests_running",
        "inference_node_engine_kv_cache_usage_ratio",
        "inference_node_engine_preemptions_per_second", "inference_node_engine_latency_seconds",
        "inference_node_host_cpu_steal_ratio", "inference_node_exporter_collector_up",
        "inference_node_engine_up", "inference_node_exporter_collector_poll_duration_seconds",
        "inference_node_exporter_collector_errors_total",
    }
    assert node <= used["inference-node-overview.json"], node - used[
        "inference-node-overview.json"]
    fleet = {"ALERTS", *quantiles, "inference_node_gpu_memory_pressure_ratio",
             "inference_node_host_cpu_steal_ratio", "inference_node_gpu_throttle_reason",
             "inference_node_engine_requests_waiting"}
    assert fleet <= used["inference-fleet-overview.json"], fleet - used[
        "inference-fleet-overview.json"]
    variance = {"inference_node_engine_latency_seconds", "inference_node_host_cpu_steal_ratio",
                "inference_node_gpu_throttle_reason", "inference_node_gpu_dram_active_ratio",
                "instance_model:inference_node_engine_time_to_first_token_seconds:quantile"}
    assert variance <= used["inference-latency-variance.json"], variance - used[
        "inference-latency-variance.json"]
    fleet_dashboard = dict(DASHBOARDS)["inference-fleet-overview.json"]
    assert any(e.startswith("sort_desc(topk(") for _, e in panel_queries(fleet_dashboard))
    assert any('alertstate="firing"' in e and "Inference(Node|Model)" in e
               for _, e in panel_queries(fleet_dashboard))


# --- the window and topk variables ---------------------------------------------------------

WINDOW_MATCHER = re.compile(r'\bwindow\s*(=~|!~|!=|=)\s*"([^"]*)"')
TOPK_CALL = re.compile(r"\btopk\s*\(\s*([^,]*?)\s*,")


def custom_options(var: dict[str, Any]) -> tuple[list[str], str]:
    """The values a custom variable offers and its default."""
    assert var["type"] == "custom" and not var.get("multi") and not var.get("includeAll")
    values = [v.strip() for v in var["query"].split(",")]
    assert [o["value"] for o in var["options"]] == values
    assert [o["value"] for o in var["options"] if o["selected"]] == [var["current"]["value"]]
    return values, var["current"]["value"]


@pytest.mark.parametrize(("name", "dashboard"), DASHBOARDS, ids=IDS)
def test_the_window_variable_picks_every_windowed_series(name: str,
                                                         dashboard: dict[str, Any]) -> None:
    """The daemon's default windows (--derive.windows) to choose from, 1m first; every
    query of a windowed engine series follows the variable, none names a window itself."""
    values, default = custom_options(variables(dashboard)["window"])
    assert values == [format_duration(w) for w in Config().windows] == ["1m", "5m"]
    assert default == "1m"
    windowed = 0
    for where, expr in all_queries(dashboard):
        for _, value in WINDOW_MATCHER.findall(expr):
            assert value == "$window", f"{where}: a hard-coded window: {expr}"
        for metric, labels in selectors(expr):
            if metric.startswith(ENGINE_SERIES) and "window" in (
                    SERIES.get(metric) or ()):
                assert "window" in labels, f"{where}: {metric} of every window: {expr}"
                windowed += 1
    assert windowed or name == COST, "no query reads a windowed series"


def test_every_topk_follows_the_topk_variable() -> None:
    """The worst-first panels of the fleet and variance dashboards show $topk nodes (5 to
    50, 10 by default), so they read at 100 nodes as at 5."""
    for name, dashboard in DASHBOARDS:
        ks = [(where, k) for where, expr in all_queries(dashboard)
              for k in TOPK_CALL.findall(expr)]
        assert all(k == "$topk" for _, k in ks), [w for w, k in ks if k != "$topk"]
        assert not re.search(r"\b(topk|bottomk)\s*\(\s*\d", json.dumps(dashboard)), name
        if dashboard is NODE:
            assert not ks and "topk" not in variables(dashboard)
            continue
        assert ks, f"{name}: ranks no nodes"
        assert custom_options(variables(dashboard)["topk"]) == (["5", "10", "20", "50"], "10")
    for title, expr in panel_queries(FLEET) + panel_queries(VARIANCE):
        if title.startswith("Slowest nodes"):
            assert expr.startswith("sort_desc(topk($topk, "), (title, expr)


# --- the variance dashboard: nodes against their fleet, batch, prefill ---------------------


@pytest.mark.parametrize("key", ["ttft", "itl"])
def test_a_nodes_p99_is_divided_by_its_models_fleet_p99(key: str) -> None:
    latency = by_key(key)
    node_rule = f"instance_model:{latency.family}:quantile"
    model_rule = f"model:{latency.family}:quantile"
    ratio = re.compile(
        rf"{re.escape(node_rule)}\{{(?P<left>[^}}]*)\}}\s*/\s*on\s*\((?P<on>[^)]*)\)\s*"
        rf"group_left\s*\(\s*\)\s*{re.escape(model_rule)}\{{(?P<right>[^}}]*)\}}")
    found = []
    for p in section(VARIANCE, "Nodes against their model's fleet"):
        for expr in exprs(p):
            m = ratio.search(expr)
            if m is None:
                continue
            found.append(p)
            assert 'quantile="0.99"' in m["left"] and 'instance=~"$node"' in m["left"], expr
            assert 'quantile="0.99"' in m["right"] and "instance" not in m["right"], expr
            on = {label.strip() for label in m["on"].split(",")}
            # Every label the per-model rule keeps, so a model of one cluster never divides
            # by another's.
            assert on == {"job", "model"} | KEPT_TARGET_LABELS == {"cluster", "job", "model"}
            assert "by (instance, model)" in expr, expr
    assert {p["type"] for p in found} == {"bargauge", "timeseries"}, [p["title"] for p in found]


def test_the_variance_dashboard_shows_batch_size_and_prefill() -> None:
    queries = {title: expr for title, expr in panel_queries(VARIANCE)}
    assert queries["Batch size"].startswith(
        "sum by (instance, model) (inference_node_engine_requests_running{")
    assert metric_names(queries["Prefill load"]) == {
        "instance_model:inference_node_engine_prompt_tokens:rate"}
    assert "by (instance, model)" in queries["Prefill load"]


def test_worst_node_panels_link_to_that_nodes_dashboard() -> None:
    """Each bar (and each series of the ratio graphs) opens the node dashboard, by its real
    uid, on that instance, with the same data source and time range."""
    node_var = next(n for n, q in template_queries(NODE) if label_values(q)[1] == "instance")
    linked = []
    for name in ("inference-fleet-overview.json", "inference-latency-variance.json"):
        for p in panels(BY_FILE[name]):
            links = p["fieldConfig"]["defaults"].get("links") or []
            wants = p["type"] == "bargauge" or "over the model's fleet P99" in p["title"] or (
                p["title"] == CANARY_PER_NODE)
            assert bool(links) == wants, f"{name}: {p['title']!r}"
            if not links:
                continue
            assert all(re.search(r"\bby \([^)]*\binstance\b", e) for e in exprs(p)), p["title"]
            (link,) = links
            url = urlsplit(link["url"])
            assert url.path == f"/d/{NODE['uid']}"
            params = parse_qsl(url.query, keep_blank_values=True)
            assert (f"var-{node_var}", "${__field.labels.instance}") in params, link["url"]
            rest = {k for k, v in params if not v}
            assert {"${__url_time_range}", "${datasource:queryparam}"} <= rest, link["url"]
            linked.append(p["title"])
    slowest = [t for n in (FLEET, VARIANCE) for t, _ in panel_queries(n)
               if t.startswith("Slowest nodes")]
    # TTFT, ITL and E2E on the fleet dashboard; TTFT and ITL against the fleet.
    assert len(slowest) == 5 and set(slowest) <= set(linked), slowest


# --- the canary: its fixed request beside the users' traffic ------------------------------

CANARY_ROW = "Canary: the platform's latency"
CANARY_FLEET_ROW = "Canary: the platform's latency per node"
CANARY_PER_NODE = "Canary time to first token P99 per node"
"""The fleet's graph of each node's canary P99, linked to the node dashboard like the bars."""
CANARY_PERCENTILES = "inference_node_canary_latency_seconds"
RATE_RANGES = re.compile(r"\[([^\]]+)\]")


def row_titles(dashboard: dict[str, Any]) -> list[str]:
    return [p["title"] for p in dashboard["panels"] if p["type"] == "row"]


def canary_bucket(key: str) -> str:
    return f"inference_node_canary_{by_key(key).reading}_seconds_bucket"


def rules_latency_rate_range() -> str:
    """The range of rate() the engines' quantile rules use by default."""
    return str(alerts_generator().knobs()["latency_rate_range"].default)


def test_the_canary_rows_follow_the_latency_rows() -> None:
    node, fleet = row_titles(NODE), row_titles(FLEET)
    assert node[node.index("Latency") + 1] == CANARY_ROW, node
    assert fleet[fleet.index("Latency across the fleet") + 1] == CANARY_FLEET_ROW, fleet


@pytest.mark.parametrize("key", ["ttft", "itl"])
def test_the_canarys_latency_sits_under_the_users(key: str) -> None:
    """Same column, size and unit as the users' percentiles of that latency; the same kinds
    of figure: the daemon's windowed percentiles in the same window, and quantiles of the
    histogram over the range of the engines' quantile rules."""
    latency = by_key(key)
    users = next(p for p in section(NODE, "Latency")
                 if p["title"] == f"{latency.title} P50 / P95 / P99")
    canary = next(p for p in section(NODE, CANARY_ROW)
                  if p["title"] == f"Canary {latency.words} P50 / P99")
    for k in ("x", "w", "h"):
        assert canary["gridPos"][k] == users["gridPos"][k], k
    assert canary["fieldConfig"]["defaults"]["unit"] == users["fieldConfig"]["defaults"][
        "unit"] == "s"
    users_windowed = [m for e in exprs(users) for n, m in matchers(e) if n == PERCENTILES]
    windowed = [m for e in exprs(canary) for n, m in matchers(e) if n == CANARY_PERCENTILES]
    assert users_windowed and windowed
    for m in windowed:
        assert m["latency"] == ("=", key)
        assert m["window"] == users_windowed[0]["window"] == ("=", "$window")
        assert latencies(m["percentile"]) == {"50", "99"}
    histograms = [e for e in exprs(canary) if metric_names(e) == {canary_bucket(key)}]
    assert len(histograms) == len(exprs(canary)) - 1 == 2, exprs(canary)
    quantiles: set[str] = set()
    for e in histograms:
        found = re.match(r"histogram_quantile\(([\d.]+), sum by \(model, le\) \(rate\(", e)
        assert found, e
        quantiles.add(found[1])
        assert RATE_RANGES.findall(e) == [rules_latency_rate_range()], e
    assert quantiles == {"0.5", "0.99"}
    for e in exprs(canary):
        ((_, m),) = matchers(e)
        assert {k: m[k] for k in ("job", "instance", "engine", "model")} == {
            "job": ("=~", "$job"), "instance": ("=~", "$node"), "engine": ("=~", "$engine"),
            "model": ("=~", "$model")}, e


def test_the_canarys_outcomes_and_share_of_the_tokens() -> None:
    by_title = {p["title"]: p for p in section(NODE, CANARY_ROW)}
    outcomes_panel = by_title["Canary probes by outcome"]
    (outcomes,) = exprs(outcomes_panel)
    assert outcomes.startswith("sum by (engine, endpoint, outcome) (rate("
                               "inference_node_canary_probes_total{"), outcomes
    assert outcomes.endswith("[$__rate_interval])) > 0"), outcomes  # only what occurred
    assert outcomes_panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    share_panel = by_title["Canary share of generated tokens"]
    (share,) = exprs(share_panel)
    canary_tokens, _, engine_tokens = share.partition(" / on (engine, endpoint) ")
    assert metric_names(canary_tokens) == {"inference_node_canary_generated_tokens_total"}
    assert metric_names(engine_tokens) == {"inference_node_engine_generation_tokens_total"}
    # The canary's counter has no model; the engine's keeps the endpoints of the models chosen.
    assert matchers(engine_tokens)[0][1]["model"] == ("=~", "$model")
    assert share_panel["fieldConfig"]["defaults"]["unit"] == "percentunit"


def test_the_fleet_shows_each_nodes_canary_ttft_p99() -> None:
    found = section(FLEET, CANARY_FLEET_ROW)
    assert {p["type"] for p in found} == {"bargauge", "timeseries"}
    assert CANARY_PER_NODE in {p["title"] for p in found}
    for p in found:
        (e,) = exprs(p)
        assert metric_names(e) == {canary_bucket("ttft")}, e
        assert "histogram_quantile(0.99, sum by (instance, model, le) (rate(" in e, e
        assert RATE_RANGES.findall(e) == [rules_latency_rate_range()], e
        assert p["fieldConfig"]["defaults"]["unit"] == "s"
        assert matchers(e)[0][1]["instance"] == ("=~", "$node")


# --- the fleet dashboard's SLOs -------------------------------------------------------------

SLO_BAD_1H = "model:inference_node_slo_bad:ratio_rate1h"
SLO_OBJECTIVE = "slo:inference_node_slo_objective:ratio"


def test_the_slo_section_reads_the_slo_rules() -> None:
    by_title = {p["title"]: p for p in section(FLEET, "SLOs per model")}
    share = exprs(by_title["Bad-event share by model"])
    assert share[0] == f'{SLO_BAD_1H}{{job=~"$job", model=~"$model"}}'
    burn_panel = by_title["Error-budget burn rate by model"]
    burn = exprs(burn_panel)[0]
    assert burn == (f'{SLO_BAD_1H}{{job=~"$job", model=~"$model"}}'
                    f" / on (slo) group_left () (1 - {SLO_OBJECTIVE})")
    defaults = burn_panel["fieldConfig"]["defaults"]
    assert [s["value"] for s in defaults["thresholds"]["steps"]][1:] == [6, 14.4]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "dashed"
    capacity = by_title["Serving capacity by model"]
    assert metric_names(exprs(capacity)[0]) == {
        "model:inference_node_engine_replicas_serving:ratio"}
    assert capacity["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert {n for p in by_title.values() for e in exprs(p) for n in metric_names(e)} == {
        SLO_BAD_1H, "model:inference_node_slo_bad:ratio_rate6h", SLO_OBJECTIVE,
        "model:inference_node_engine_replicas_serving:ratio",
        "model:inference_node_engine_replicas_serving:count"}


# --- queries parse --------------------------------------------------------------------------


def balanced(expr: str) -> str | None:
    """None when brackets and quotes are balanced, else what is wrong."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for ch in expr:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return f"unbalanced {ch!r}"
    if quote:
        return f"unclosed {quote}"
    return f"unclosed {stack[-1]!r}" if stack else None


@pytest.mark.parametrize(("name", "dashboard"), DASHBOARDS, ids=IDS)
def test_queries_parse_with_promtool(name: str, dashboard: dict[str, Any],
                                     tmp_path: Path) -> None:
    queries = list(all_queries(dashboard))
    rules = []
    for i, (where, expr) in enumerate(queries):
        for variables in ({}, {"node": "10.0.0.7:19400", "model": ["llama-3-8b", "a/b.c"],
                               "gpu": "0", "__rate_interval": "20s", "__range": "6h"}):
            text = substitute(expr, variables)
            assert "$" not in text and "[[" not in text, f"{where}: left over: {text}"
            problem = balanced(text)
            assert problem is None, f"{where}: {problem}: {text}"
        rules.append({"record": f"dashboard_query_{i}", "expr": substitute(expr)})
    path = tmp_path / "queries.rules.yml"
    path.write_text(json.dumps({"groups": [{"name": name, "rules": rules}]}, indent=1))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)
    if result.returncode != 0:
        named = result.stdout + result.stderr
        for i, (where, expr) in enumerate(queries):
            named = named.replace(f"dashboard_query_{i}", f"{where} ({expr})")
        pytest.fail(f"promtool rejects a query of {name}:\n{named}")
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_catches_a_broken_query(tmp_path: Path) -> None:
    path = tmp_path / "broken.rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "x", "rules": [
        {"record": "broken", "expr": substitute('sum by (gpu (up{job=~"$job"})')}]}]}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode != 0


# --- the helpers the stack test relies on ---------------------------------------------------


def test_substitute() -> None:
    expr = 'rate(x{job=~"$job", instance=~"${node}", model=~"${model:regex}"}[$__rate_interval])'
    assert substitute(expr) == 'rate(x{job=~"inference-node", instance=~".*", model=~"\\.\\*"}[1m])'
    assert substitute(expr, {"node": "n:1", "model": "m", "__rate_interval": "20s"}) == (
        'rate(x{job=~"inference-node", instance=~"n:1", model=~"m"}[20s])')
    assert substitute('m=~"$model"', {"model": ["a", "b.c"]}) == 'm=~"(a|b\\.c)"'
    assert substitute('m=~"${model:pipe}"', {"model": ["a", "b.c"]}) == 'm=~"a|b.c"'
    assert substitute('g=~"[[gpu]]"', {"gpu": "3"}) == 'g=~"3"'
    assert substitute("increase(x[$__range]) / $__range_s") == "increase(x[1h]) / 3600"
    assert substitute("$__range_ms $__interval_ms", {"__range": "5m", "__interval": "15s"}) == (
        "300000 15000")
    assert substitute('label_replace(x, "a", "$1", "b", "(.*)")') == (
        'label_replace(x, "a", "$1", "b", "(.*)")')
    with pytest.raises(KeyError, match="undefined_one"):
        substitute("x{a=~\"$undefined_one\"}")


def test_optional_series_are_known() -> None:
    assert set(OPTIONAL_SERIES) <= set(SERIES)
    assert may_be_empty('sum(inference_node_gpus_expected{job=~"$job"})')
    assert not may_be_empty('count(ALERTS{alertstate="firing"}) or vector(0)')
    assert not may_be_empty("max(inference_node_gpu_dram_active_ratio) or on (gpu)"
                            " max(inference_node_gpu_memory_utilization_ratio)")


def test_query_helpers() -> None:
    assert label_values('label_values(up{job=~"$job"}, instance)') == (
        'up{job=~"$job"}', "instance")
    assert label_values("label_values(job)") == (None, "job")
    expr = ('sort_desc(topk(10, max by (instance, gpu) (a_ratio{x="1", y=~"$v"}) or on'
            ' (instance, gpu) rate(b_total{z!="q"}[5m]) / ignoring (le) c:rule:quantile'
            ' offset 5m > bool 0.5e3))')
    assert metric_names(expr) == {"a_ratio", "b_total", "c:rule:quantile"}
    assert selectors(expr) == [("a_ratio", ["x", "y"]), ("b_total", ["z"])]
    assert grouping_labels(expr) == {"instance", "gpu", "le"}
    assert metric_names('topk($topk, x{window="$window"}) / ${y}') == {"x"}
    dashboard = {"panels": [
        {"type": "row", "title": "r", "panels": [
            {"type": "timeseries", "title": "in row", "targets": [{"expr": "a"}]}]},
        {"type": "stat", "title": "top", "targets": [{"expr": "b"}, {"refId": "X"}]},
    ], "templating": {"list": [
        {"type": "query", "name": "v", "query": {"query": "label_values(c, l)"}},
        {"type": "datasource", "name": "datasource", "query": "prometheus"},
    ]}}
    assert panel_queries(dashboard) == [("in row", "a"), ("top", "b")]
    assert template_queries(dashboard) == [("v", "label_values(c, l)")]
