"""The report's charts, drawn by matplotlib (the ``report`` extra) as inline SVG: the nodes'
percentiles side by side, each model's P99 over the range with the signal that moves most
with it, and the P99/P50 spread by hour of the day.

Text is drawn as paths (no font is needed to show it) and every chart gets its own id
prefix, so that several can share one page.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["available", "comparison", "over_time", "spread"]

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def available() -> bool:
    """Whether matplotlib is installed (``pip install 'inference-node-exporter[report]'``)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("svg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def _svg(fig: Any, salt: str) -> str:
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": salt}):
        out = io.StringIO()
        fig.savefig(out, format="svg", metadata={"Date": None})
    text = out.getvalue()
    return text[text.index("<svg"):]


def comparison(rows: Sequence[tuple[str, dict[str, float | None]]], salt: str) -> str:
    """Grouped bars: each node-and-model's TTFT P50, P95, P99 and the canary's P99."""
    fig = _figure(9, 3.2)
    ax = fig.add_subplot()
    keys = (("p50", "TTFT P50"), ("p95", "TTFT P95"), ("p99", "TTFT P99"),
            ("canary_p99", "Canary TTFT P99"))
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        values = [v.get(key) or 0.0 for _, v in rows]
        ax.bar([x + i * width for x in range(len(rows))], values, width, label=label,
               color=_COLOURS[i])
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))], [n for n, _ in rows])
    ax.set_ylabel("seconds")
    ax.set_title("Time to first token over the whole range")
    ax.legend(fontsize=8)
    return _svg(fig, salt)


def _times(ts: Sequence[float]) -> list[datetime]:
    return [datetime.fromtimestamp(t, UTC) for t in ts]


def over_time(series: dict[str, Any], title: str, signal: str | None,
              signal_title: str | None, salt: str) -> str:
    """The P99 of user traffic and the canary over the range; the strongest signal on a
    second axis."""
    fig = _figure(9, 3.0)
    ax = fig.add_subplot()
    t = _times(series["t"])
    for i, (key, label) in enumerate((("user_ttft_p99", "TTFT P99 (users)"),
                                      ("canary_ttft_p99", "TTFT P99 (canary)"))):
        values = [float("nan") if v is None else v for v in series.get(key, [])]
        if any(v == v for v in values):
            ax.plot(t, values, label=label, color=_COLOURS[i], linewidth=0.9)
    ax.set_ylabel("seconds")
    ax.set_title(title)
    lines, labels = ax.get_legend_handles_labels()
    if signal is not None and f"signal_{signal}" in series:
        other = ax.twinx()
        values = [float("nan") if v is None else v for v in series[f"signal_{signal}"]]
        other.plot(t, values, color=_COLOURS[2], linewidth=0.8, alpha=0.8,
                   label=signal_title or signal)
        other.set_ylabel(signal_title or signal)
        more, names = other.get_legend_handles_labels()
        lines, labels = lines + more, labels + names
    ax.legend(lines, labels, fontsize=8, loc="upper left")
    fig.autofmt_xdate()
    return _svg(fig, salt)


_SPREAD = (("ttft", "TTFT"), ("itl", "ITL"), ("canary_ttft", "canary TTFT"),
           ("canary_itl", "canary ITL"))


def spread(hours: dict[str, Sequence[float | None]], salt: str) -> str:
    """P99 over P50 at each hour of the day, for TTFT and ITL, users' and the canary's (a
    series with no hour at all, such as a canary that was off, is left out)."""
    fig = _figure(9, 2.4)
    ax = fig.add_subplot()
    drawn = [(key, label) for key, label in _SPREAD if any(v for v in hours.get(key, []))]
    width = 0.8 / max(1, len(drawn))
    for i, (key, label) in enumerate(drawn):
        values = [v or 0.0 for v in hours[key]]
        ax.bar([h + i * width for h in range(len(values))], values, width, label=label,
               color=_COLOURS[i])
    ax.set_xticks(range(0, 24, 2))
    ax.set_xlabel("hour of the day (UTC)")
    ax.set_ylabel("P99 / P50")
    ax.legend(fontsize=8, ncol=max(1, len(drawn)), loc="lower center",
              bbox_to_anchor=(0.5, 1.0), frameon=False)  # above the bars, not on them
    return _svg(fig, salt)
