"""``report.json`` (every figure), ``report.md`` (a summary that pastes into a ticket) and
``report.html`` (:mod:`exporter.report.html`), the comparison of the nodes first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from exporter.report.fmt import COMPARISON, comparison, gpu_cell
from exporter.report.fmt import environment as _environment
from exporter.report.fmt import num as _n
from exporter.report.fmt import pct as _pct
from exporter.report.fmt import seconds as _s
from exporter.report.html import page

__all__ = ["markdown", "write"]


def markdown(report: dict[str, Any]) -> str:
    """The summary: the nodes side by side, then each node's detail."""
    r = report["range"]
    lines = [f"# Inference latency variance report: {r['start']} to {r['end']}", "",
             f"Prometheus {report['prometheus']}, selector `{report['selector']}`, step"
             f" {r['step_seconds']:g}s. {report['statistic']}", "",
             "| " + " | ".join(COMPARISON) + " |", "|---" * len(COMPARISON) + "|",
             *("| " + " | ".join(row) + " |" for row in comparison(report))]
    for node in report["nodes"]:
        lines += ["", f"## {node['instance']}", "",
                  f"Platform: {_environment(node['environment'])}; {_n(node['gpus'], 0)} GPUs."]
        compare = (node["cost"] or {}).get("compare")
        if compare:
            cheaper = compare["alternative_cheaper"]
            lines.append(
                f"At {compare['price']:g} per GPU-hour, a flat-rate alternative breaks even at"
                f" {_pct(compare['break_even_utilisation'])} utilisation; this node ran at"
                f" {_pct(compare['utilisation'])}: the alternative is"
                f" {'cheaper' if cheaper else 'not cheaper' if cheaper is False else 'unknown'}.")
        for m in node["models"]:
            lines += ["", f"### {m['model']}", "",
                      "| Latency | P50 | P95 | P99 |", "|---|---|---|---|"]
            for source in ("user", "canary"):
                for name, q in m["latency"].get(source, {}).items():
                    if q.get("p99") is not None:
                        lines.append(f"| {source} {name} | {_s(q.get('p50'))} |"
                                     f" {_s(q.get('p95'))} | {_s(q.get('p99'))} |")
            for objective, share in m["slo_inside_share"].items():
                lines.append(f"\nTime inside `{objective}`"
                             f" ({_s(report['slo'][objective])}): {_pct(share)}.")
            lines += ["", "| Signal | r with TTFT P99 | r with ITL P99 | r canary TTFT |"
                      " rank rho (TTFT) | points | most on |", "|---|---|---|---|---|---|---|"]
            for d in m["drivers"]:
                r = d["r"]
                lines.append(f"| {d['title']} | {_n(r['user_ttft'], 2)} |"
                             f" {_n(r['user_itl'], 2)} | {_n(r['canary_ttft'], 2)} |"
                             f" {_n(d['rank_rho']['user_ttft'], 2)} | {d['points']} |"
                             f" {gpu_cell(d)} |")
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out: Path) -> list[Path]:
    """Write the report's files into ``out`` (made if missing); the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.json", out / "report.md", out / "report.html"]
    files[0].write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    files[1].write_text(markdown(report))
    files[2].write_text(page(report))
    return files
