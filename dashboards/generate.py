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
with ``job``, ``node`` (the ``instance`` label), ``engine`` (the engine's kind), ``model`` and
``gpu``, so the files import into Grafana 10 and 11 as they are, without ``__inputs``.

The code is split by what it does: ``queries.py`` (selectors, variables' values, PromQL
helpers), ``panels.py`` (panel builders), ``layout.py`` (rows, variables, assembly) and one
module per dashboard (``node.py``, ``fleet.py``, ``variance.py``, ``cost.py``), imported as
top-level modules from this file's directory. Importable by path too: ``build_all()`` gives every
file's JSON text.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # loaded by path (tests), not run as a script
    sys.path.insert(0, str(HERE))

from cost import cost_and_utilization  # noqa: E402
from fleet import fleet_overview  # noqa: E402
from node import node_overview  # noqa: E402
from variance import latency_variance  # noqa: E402


@dataclass(frozen=True)
class Spec:
    """One dashboard file."""

    file: str
    build: Callable[[], model.Dashboard]


DASHBOARDS: tuple[Spec, ...] = (
    Spec("inference-node-overview.json", node_overview),
    Spec("inference-fleet-overview.json", fleet_overview),
    Spec("inference-latency-variance.json", latency_variance),
    Spec("inference-cost-utilisation.json", cost_and_utilization),
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
