"""``report.html``: one self-contained page (inline CSS and SVG charts, no script, no
external asset, a content security policy that forbids loading any), the nodes side by side
first, then each node's detail."""

from __future__ import annotations

import html
from typing import Any

from exporter.report import charts
from exporter.report.fmt import (
    COMPARISON,
    LATENCY,
    SIGNALS,
    compare_sentence,
    comparison,
    environment,
    latency_rows,
    num,
    pct,
    seconds,
    signal_rows,
)

__all__ = ["page"]

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #555; font-size: 0.9em; }
.chart svg { max-width: 100%; height: auto; }
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _table(head: tuple[str, ...], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _bars(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Each node and model's TTFT percentiles and canary P99, for the comparison chart."""
    return [(f"{node['instance']}\n{m['model']}",
             {**m["latency"].get("user", {}).get("ttft", {}),
              "canary_p99": m["latency"].get("canary", {}).get("ttft", {}).get("p99")})
            for node in report["nodes"] for m in node["models"]]


def _model(report: dict[str, Any], node: dict[str, Any], m: dict[str, Any], i: int,
           drawn: bool) -> str:
    parts = [f"<h3>{_e(m['model'])}</h3>", _table(LATENCY, latency_rows(m))]
    for objective, share in m["slo_inside_share"].items():
        parts.append(f"<p>Time inside <code>{_e(objective)}</code>"
                     f" ({_e(seconds(report['slo'][objective]))}): {_e(pct(share))}.</p>")
    top = m["drivers"][0] if m["drivers"] else None
    if drawn:
        moving = top is not None and top["signal"] in m["moves_with_p99"]
        parts.append('<div class="chart">' + charts.over_time(
            m["over_time"], f"{node['instance']} {m['model']}: P99 over the range",
            top["signal"] if moving and top else None,
            top["title"] if moving and top else None, f"t{i}") + "</div>")
        parts.append('<div class="chart">' + charts.spread(m["p99_over_p50_by_hour"],
                                                           f"s{i}") + "</div>")
    parts.append(_table(SIGNALS, signal_rows(m)))
    return "\n".join(parts)


def page(report: dict[str, Any]) -> str:
    """The whole page."""
    r = report["range"]
    drawn = charts.available()
    table, bars = _table(COMPARISON, comparison(report)), _bars(report)
    body = [f"<h1>Inference latency variance: {_e(r['start'])} to {_e(r['end'])}</h1>",
            f"<p class=\"note\">Prometheus {_e(report['prometheus'])}, selector"
            f" <code>{_e(report['selector'])}</code>, step {r['step_seconds']:g}s."
            f" {_e(report['statistic'])}</p>",
            "<h2>The nodes side by side</h2>", table]
    if drawn and bars:
        body.append('<div class="chart">' + charts.comparison(bars, "c") + "</div>")
    elif not drawn:
        body.append("<p class=\"note\">No charts: install the report extra"
                    " (<code>pip install 'inference-node-exporter[report]'</code>).</p>")
    i = 0
    for node in report["nodes"]:
        body.append(f"<h2>{_e(node['instance'])}</h2>"
                    f"<p>Platform: {_e(environment(node['environment']))};"
                    f" {_e(num(node['gpus'], 0))} GPUs.</p>")
        compare = (node["cost"] or {}).get("compare")
        if compare:
            body.append(f"<p>{_e(compare_sentence(compare))}</p>")
        for m in node["models"]:
            body.append(_model(report, node, m, i, drawn))
            i += 1
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f"<title>Inference latency variance report</title><style>{_STYLE}</style>"
            f"</head><body>\n" + "\n".join(body) + "\n</body></html>\n")
