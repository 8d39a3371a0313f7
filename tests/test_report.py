"""The variance report against a real Prometheus holding a generated week of two nodes
(``tests/support/week.py``): node A steady on bare metal, node B a VM whose CPU steal spikes
line up with its P99 spikes. The report must rank steal first for B and find nothing for A,
and every figure it writes must equal the same PromQL run directly.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exporter.report import stats
from exporter.report.figures import QUANTILES, TRACKS, node_key, strongest_gpu
from exporter.report.queries import CANARY, DRIVERS, USER, Q
from exporter.report.span import span
from tests.support import week
from tests.support.week import WeekPrometheus

week_prometheus = week.week_prometheus
ROOT = Path(__file__).parents[1]
MODEL = "llama-3-70b"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", "report", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def report(week_prometheus: WeekPrometheus, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[dict[str, Any], Path]:
    w = week_prometheus.week
    out = tmp_path_factory.mktemp("report")
    done = run("--prometheus", week_prometheus.url, "--start", str(w.start), "--end",
               str(w.end), "--selector", '{job="inference-node"}',
               "--slo", "ttft_p99=250ms,itl_p99=100ms", "--compare-price", "1.5",
               "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "GPU prices" in done.stderr  # progress on the terminal
    return json.loads((out / "report.json").read_text()), out


def _node(report: dict[str, Any], key: str) -> dict[str, Any]:
    (node,) = [n for n in report["nodes"] if n["instance"].startswith(f"node-{key}")]
    found: dict[str, Any] = node
    return found


def test_steal_is_ranked_first_for_b_and_nothing_for_a(
        report: tuple[dict[str, Any], Path]) -> None:
    data, _ = report
    (a,) = _node(data, "a")["models"]
    (b,) = _node(data, "b")["models"]
    assert a["moves_with_p99"] == []
    assert all((d["strongest"] or 0) < TRACKS for d in a["drivers"])
    assert b["moves_with_p99"] == ["cpu_steal"]
    top = b["drivers"][0]
    assert top["signal"] == "cpu_steal" and top["strongest"] > 0.6
    assert top["r"]["user_ttft"] > 0.6 and top["r"]["canary_ttft"] > 0.6
    assert top["points"] > 500
    # The node's daily pattern and its queue are not mistaken for the spikes' cause.
    assert all((d["strongest"] or 0) < TRACKS for d in b["drivers"][1:])


def test_every_figure_is_the_promql_run_directly(
        week_prometheus: WeekPrometheus, report: tuple[dict[str, Any], Path]) -> None:
    data, _ = report
    w = week_prometheus.week
    rng = span(None, str(w.start), str(w.end))
    assert (data["range"]["seconds"], data["range"]["step_seconds"]) == (rng.seconds, rng.step)
    q = Q('job="inference-node"')
    prom = week_prometheus.prometheus

    def direct(expr: str, node: dict[str, Any], model: bool = True) -> float | None:
        hits = [float(r["value"][1]) for r in prom.query(expr, at=rng.end)
                if r["metric"].get("instance") == node["instance"]
                and (not model or r["metric"].get("model") == MODEL)]
        assert len(hits) <= 1, (expr, hits)
        return hits[0] if hits and math.isfinite(hits[0]) else None

    for key in ("a", "b"):
        node = _node(data, key)
        (m,) = node["models"]
        for source, families in (("user", USER), ("canary", CANARY)):
            for name, family in families.items():
                for quantile in QUANTILES:
                    want = direct(q.quantile_over_range(family, quantile, rng.promql), node)
                    assert want is not None
                    assert m["latency"][source][name][f"p{quantile * 100:g}"] == want
        tokens = direct(q.tokens(rng.promql), node)
        gpus = direct(q.gpus(rng.promql), node, model=False)
        assert tokens is not None and gpus is not None
        assert node["generated_tokens"] == tokens
        assert node["gpus"] == gpus == 2
        assert node["tokens_per_second_per_gpu"] == pytest.approx(
            tokens / rng.seconds / gpus)
        assert node["gpu_utilisation"] == direct(q.utilisation(rng.promql), node, model=False)
        hourly = direct(q.hourly_cost(rng.promql), node, model=False)
        assert hourly is not None
        cost = node["cost"]
        assert cost["per_hour"] == hourly and cost["currency"] == "USD"
        assert cost["per_million_tokens"] == pytest.approx(
            hourly * rng.seconds / 3600 / (tokens / 1e6))
        compare = cost["compare"]
        assert compare["break_even_utilisation"] == pytest.approx(1.5 / (hourly / gpus))
        assert compare["alternative_cheaper"] == (
            node["gpu_utilisation"] > compare["break_even_utilisation"])
        # The curves the correlations, shares and spreads rest on: the range query's own
        # points.
        def points(family: str, quantile: float, instance: str = node["instance"]
                   ) -> dict[float, float]:
            (curve,) = [r for r in prom.query_range(
                q.quantile_over_time(family, quantile, rng.window), rng.start, rng.end,
                rng.step) if r["metric"]["instance"] == instance]
            return {float(t): float(v) for t, v in curve["values"]}

        for source, families in (("user", USER), ("canary", CANARY)):
            got = m["over_time"]
            assert dict(zip(got["t"], got[f"{source}_ttft_p99"], strict=True)) == points(
                families["ttft"], 0.99)
            for name in ("ttft", "itl"):
                by_hour = m["p99_over_p50_by_hour"][
                    name if source == "user" else f"{source}_{name}"]
                hours = stats.by_hour(points(families[name], 0.99),
                                     points(families[name], 0.5))
                assert by_hour == hours and len(hours) == 24
                assert all(v is not None and v >= 1 for v in hours), (source, name, hours)
        # The GPU named for each GPU signal is the one the per-GPU query ranks first.
        p99s = {f"{source}_{name}": dict(zip(m["over_time"]["t"],
                                             m["over_time"][f"{source}_{name}_p99"],
                                             strict=True))
                for source in ("user", "canary") for name in ("ttft", "itl")}
        p99s = {k: {t: v for t, v in c.items() if v is not None} for k, c in p99s.items()}
        for d in (d for d in DRIVERS if d.per_gpu):
            per_gpu = {(*node_key(r["metric"]), r["metric"]["gpu"]):
                       {float(t): float(v) for t, v in r["values"]}
                       for r in prom.query_range(q.driver(d, rng.window, by_gpu=True),
                                                 rng.start, rng.end, rng.step)}
            assert {k[3] for k in per_gpu if k[2] == node["instance"]} == {"0", "1"}, d.key
            (entry,) = [e for e in m["drivers"] if e["signal"] == d.key]
            assert entry["gpu"] == strongest_gpu(node_key(node), per_gpu, p99s), d.key
        # So is the signal drawn beside the P99 (the strongest one).
        top = next(d for d in DRIVERS if d.key == m["drivers"][0]["signal"])
        (signal,) = [r for r in prom.query_range(q.driver(top, rng.window), rng.start, rng.end,
                                                 rng.step)
                     if r["metric"]["instance"] == node["instance"]]
        drawn = dict(zip(m["over_time"]["t"], m["over_time"][f"signal_{top.key}"],
                         strict=True))
        assert {t: v for t, v in drawn.items() if v is not None} == {
            float(t): float(v) for t, v in signal["values"]}
        inside = [v for v in m["over_time"]["user_ttft_p99"] if v is not None]
        assert m["slo_inside_share"]["ttft_p99"] == sum(v <= 0.25 for v in inside) / len(inside)
        truth = w.node(key)
        assert hourly == pytest.approx(truth.hourly_cost * truth.gpus)
        assert node["environment"] == dict(truth.environment)
    assert _node(data, "b")["environment"]["hypervisor"] == "kvm"


def test_slo_shares_and_spread_follow_the_spikes(report: tuple[dict[str, Any], Path]) -> None:
    data, _ = report
    (a,) = _node(data, "a")["models"]
    (b,) = _node(data, "b")["models"]
    # Node B's spikes push its P99 out of the objective for part of the week only.
    assert a["slo_inside_share"]["ttft_p99"] is not None
    assert b["slo_inside_share"]["ttft_p99"] < a["slo_inside_share"]["ttft_p99"] or \
        b["slo_inside_share"]["ttft_p99"] < 1
    spread_a = [v for v in a["p99_over_p50_by_hour"]["ttft"] if v is not None]
    assert len(spread_a) == 24 and max(spread_a) / min(spread_a) < 1.5


def test_the_summary_compares_the_nodes_first(report: tuple[dict[str, Any], Path]) -> None:
    _, out = report
    text = (out / "report.md").read_text()
    table = text.split("\n## ")[0]
    assert "| node-a:19400 |" in table and "| node-b:19400 |" in table
    assert "CPU steal (r 0." in table and "| nothing |" in table
    assert "virtual_machine (kvm)" in table and "bare_metal" in table


def test_nothing_to_report_is_a_clear_failure(week_prometheus: WeekPrometheus,
                                              tmp_path: Path) -> None:
    w = week_prometheus.week
    cases = [
        (["--prometheus", "http://127.0.0.1:1", "--since", "1d"], "cannot reach Prometheus"),
        (["--prometheus", week_prometheus.url, "--start", str(w.start - 30 * 86400),
          "--end", str(w.start - 29 * 86400)], "no engine latency series"),
        (["--prometheus", week_prometheus.url, "--start", str(w.start), "--end", str(w.end),
          "--selector", '{cluster="elsewhere"}'], "no engine latency series"),
        (["--prometheus", week_prometheus.url, "--since", "7d", "--selector", "junk"],
         "expected label matchers"),
    ]
    for args, message in cases:
        done = run(*args, "--out", str(tmp_path / "out"), "--quiet")
        assert done.returncode == 1, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


SCREENSHOT = ROOT / "tests" / "fixtures" / "report" / "screenshot.png"
"""The README's picture of a report: written by this test when UPDATE_SCREENSHOT=1."""


def chromium(page: Path, *args: str) -> str:
    """Open ``page`` in Debian's headless Chromium; its log, console messages included."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "Chromium is missing: make deps installs it"
    done = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--enable-logging=stderr", "--v=1",
                           "--user-data-dir=" + str(page.parent / "chromium-profile"),
                           *args, page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def test_the_page_is_self_contained_and_draws_its_charts(
        report: tuple[dict[str, Any], Path]) -> None:
    data, out = report
    page = out / "report.html"
    text = page.read_text()
    # Nothing to fetch: no script, no stylesheet or image by URL, and a policy that would
    # block (and report) any load.
    assert "<script" not in text and "<link" not in text
    assert not re.search(r"url\((?!#)", text)  # only the SVGs' own clip paths
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    models = sum(len(n["models"]) for n in data["nodes"])
    assert text.count("<svg") == 1 + 2 * models  # the comparison, then two a model
    assert text.index("The nodes side by side") < text.index("<h2>node-a")
    shot = out / "screenshot.png"
    log = chromium(page, "--window-size=1280,1600", f"--screenshot={shot}")
    console = [line for line in log.splitlines() if "CONSOLE" in line]
    assert console == [], console
    # Not blank: the charts' colours are there, and much of the page is not white.
    from PIL import Image

    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        raw = rgb.tobytes()
    pixels = [(raw[i], raw[i + 1], raw[i + 2]) for i in range(0, len(raw), 3)]
    assert len(set(pixels)) > 50
    assert sum(1 for p in pixels if p != (255, 255, 255)) > 0.05 * len(pixels)
    assert any(abs(r - 31) < 8 and abs(g - 119) < 8 and abs(b - 180) < 8
               for r, g, b in pixels[:: 7])  # a bar or a line of the first colour
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
    assert SCREENSHOT.is_file(), "run with UPDATE_SCREENSHOT=1 once to make the README's"


def test_the_console_check_would_see_a_blocked_load(tmp_path: Path) -> None:
    """The check above can fail: a page that tries to load an image from the network is
    blocked by the same policy, and Chromium says so on its console."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><html><head><meta http-equiv="Content-Security-Policy"'
                    " content=\"default-src 'none'\"></head><body>"
                    '<img src="http://127.0.0.1:9/x.png"></body></html>')
    log = chromium(page, "--dump-dom")
    assert any("CONSOLE" in line and "Content Security Policy" in line
               for line in log.splitlines())


def test_without_the_report_extra_the_page_says_what_to_install(
        report: tuple[dict[str, Any], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.report import charts, html

    data, _ = report
    monkeypatch.setattr(charts, "available", lambda: False)
    text = html.page(data)
    assert "<svg" not in text and "inference-node-exporter[report]" in text
    assert "node-b:19400" in text  # the tables are all there
