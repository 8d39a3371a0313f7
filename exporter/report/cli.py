"""``inference-node-exporter report``: options, progress on the terminal, exit codes."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from exporter.report.figures import build
from exporter.report.promapi import Prometheus, ReportError
from exporter.report.span import span
from exporter.report.write import write
from exporter.settings import ConfigError, parse_duration

__all__ = ["main", "parser"]

EXIT_FAILED = 1
EXIT_USAGE = 2
_MATCHER = re.compile(r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*')


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inference-node-exporter report",
        description="Document the latency of inference nodes over a range, what moves with"
                    " it and what it costs, from the daemon's series in Prometheus (or"
                    " Thanos, Mimir): report.html, report.json and report.md in --out.")
    p.add_argument("--prometheus", required=True, metavar="URL",
                   help="Prometheus API base URL, e.g. http://prometheus:9090.")
    p.add_argument("--since", metavar="DURATION",
                   help="The range ends now (or at --end) and spans this: 7d, 36h, 1w"
                        " (default 7d).")
    p.add_argument("--start", metavar="TIME", help="Range start: RFC 3339 or unix seconds.")
    p.add_argument("--end", metavar="TIME", help="Range end (default now).")
    p.add_argument("--selector", default="", metavar="MATCHERS",
                   help='Label matchers for every series, e.g. \'{job="inference-node",'
                        'cluster="eu-1"}\' (default: none).')
    p.add_argument("--slo", default="", metavar="OBJECTIVES",
                   help="P99 objectives, e.g. ttft_p99=2s,itl_p99=100ms: the report says"
                        " the share of time inside each.")
    p.add_argument("--compare-price", type=float, metavar="PRICE",
                   help="An alternative's flat price per GPU-hour: where it would be cheaper.")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="Folder the report is written to (made if missing).")
    p.add_argument("--quiet", action="store_true", help="No progress on the terminal.")
    return p


def matchers(text: str) -> str:
    """The selector's matchers without braces; :class:`ReportError` if it is not one."""
    inner = text.strip()
    if inner.startswith("{") and inner.endswith("}"):
        inner = inner[1:-1]
    out, pos = [], 0
    while inner[pos:].strip():
        m = _MATCHER.match(inner, pos)
        if m is None or (m.end() < len(inner) and inner[m.end()] != ","):
            raise ReportError(f"--selector {text!r}: expected label matchers such as"
                              ' {job="inference-node",cluster=~"eu-.*"}')
        out.append(m.group(0).strip())
        pos = m.end() + 1
    return ",".join(out)


def objectives(text: str) -> dict[str, float]:
    """``ttft_p99=2s,itl_p99=100ms`` as seconds by objective."""
    out: dict[str, float] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in ("ttft_p99", "itl_p99"):
            raise ReportError(f"--slo {item!r}: expected ttft_p99=DURATION or"
                              " itl_p99=DURATION")
        try:
            out[name.strip()] = parse_duration(value.strip(), f"--slo {name.strip()}")
        except ConfigError as exc:
            raise ReportError(str(exc)) from None
    return out


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    started = time.monotonic()

    def progress(what: str) -> None:
        if not args.quiet:
            print(f"[{time.monotonic() - started:5.1f}s] {what}", file=sys.stderr, flush=True)

    try:
        if args.compare_price is not None and not args.compare_price > 0:
            raise ReportError("--compare-price must be a price above 0")
        rng = span(args.since, args.start, args.end)
        prom = Prometheus(args.prometheus, progress=progress)
        prom.check()
        report = build(prom, rng, matchers(args.selector), objectives(args.slo),
                       args.compare_price, progress)
        files = write(report, args.out)
    except ReportError as exc:
        print(f"inference-node-exporter report: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"inference-node-exporter report: cannot write {args.out}: {exc}",
              file=sys.stderr)
        return EXIT_FAILED
    progress(f"wrote {', '.join(str(f) for f in files)} ({prom.queries} queries)")
    return 0
