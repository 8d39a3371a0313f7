"""``report.json`` (every figure), ``report.md`` (a summary that pastes into a ticket) and
``report.html`` (:mod:`exporter.report.html`), the comparison of the nodes first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
from exporter.report.html import page

__all__ = ["markdown", "write"]


def _table(head: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|---" * len(head) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def markdown(report: dict[str, Any]) -> str:
    """The summary: the nodes side by side, then each node's detail."""
    r = report["range"]
    lines = [f"# Inference latency variance report: {r['start']} to {r['end']}", "",
             f"Prometheus {report['prometheus']}, selector `{report['selector']}`, step"
             f" {r['step_seconds']:g}s. {report['statistic']}", "",
             *_table(COMPARISON, comparison(report))]
    for node in report["nodes"]:
        lines += ["", f"## {node['instance']}", "",
                  f"Platform: {environment(node['environment'])}; {num(node['gpus'], 0)} GPUs."]
        compare = (node["cost"] or {}).get("compare")
        if compare:
            lines.append(compare_sentence(compare))
        for m in node["models"]:
            lines += ["", f"### {m['model']}", "", *_table(LATENCY, latency_rows(m))]
            for objective, share in m["slo_inside_share"].items():
                lines.append(f"\nTime inside `{objective}`"
                             f" ({seconds(report['slo'][objective])}): {pct(share)}.")
            lines += ["", *_table(SIGNALS, signal_rows(m))]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out: Path) -> list[Path]:
    """Write the report's files into ``out`` (made if missing); the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.json", out / "report.md", out / "report.html"]
    files[0].write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    files[1].write_text(markdown(report))
    files[2].write_text(page(report))
    return files
