"""How the report writes its figures: seconds, numbers, shares, the platform, the movers."""

from __future__ import annotations

from typing import Any

__all__ = ["COMPARISON", "LATENCY", "SIGNALS", "comparison", "compare_sentence", "environment",
           "latency_rows", "movers", "num", "pct", "seconds", "signal_rows"]


def seconds(value: float | None) -> str:
    """Seconds, readably: 85 ms, 1.24 s."""
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def num(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def environment(env: dict[str, str] | None) -> str:
    if not env:
        return "unknown"
    where = env.get("environment", "?")
    if env.get("hypervisor") not in (None, "", "none"):
        where += f" ({env['hypervisor']})"
    if env.get("gpu_virtualization") not in (None, "", "none"):
        where += f", GPUs {env['gpu_virtualization']}"
    return where


def movers(model: dict[str, Any]) -> str:
    moving = [d for d in model["drivers"] if d["signal"] in model["moves_with_p99"]]
    if not moving:
        return "nothing"
    return ", ".join(f"{d['title']} (r {d['strongest']:.2f}{gpu_note(d)})"
                     for d in moving[:3])


def _gpu_cell(driver: dict[str, Any]) -> str:
    """The signals table's "most on" cell: the GPU whose own signal moves most with the P99,
    and its r; "-" for a signal that is not a GPU's."""
    gpu = driver.get("gpu")
    return f"GPU {gpu['gpu']} (r {gpu['strongest']:.2f})" if gpu else "-"


def gpu_note(driver: dict[str, Any]) -> str:
    """", most on GPU 3" for a GPU's signal whose GPU is named; "" otherwise."""
    gpu = driver.get("gpu")
    return f", most on GPU {gpu['gpu']}" if gpu else ""


COMPARISON = ("Node", "Platform", "Model", "TTFT P50", "TTFT P99", "ITL P99",
              "Canary TTFT P99", "Moves with P99", "tok/s per GPU", "GPU util",
              "Cost per 1M tokens")
"""The columns of the nodes side by side, in report.md and report.html alike."""


def comparison(report: dict[str, Any]) -> list[list[str]]:
    """One row of :data:`COMPARISON` per node and model."""
    rows = []
    for node in report["nodes"]:
        cost = node["cost"] or {}
        price = cost.get("per_million_tokens")
        for m in node["models"]:
            user, canary = m["latency"].get("user", {}), m["latency"].get("canary", {})
            ttft = user.get("ttft", {})
            rows.append([node["instance"], environment(node["environment"]), m["model"],
                         seconds(ttft.get("p50")), seconds(ttft.get("p99")),
                         seconds(user.get("itl", {}).get("p99")),
                         seconds(canary.get("ttft", {}).get("p99")), movers(m),
                         num(node["tokens_per_second_per_gpu"]), pct(node["gpu_utilisation"]),
                         num(price, 2, " " + cost.get("currency", "")) if price else "-"])
    return rows


def compare_sentence(compare: dict[str, Any]) -> str:
    """What the comparison price says of a node."""
    cheaper = compare["alternative_cheaper"]
    verdict = "cheaper" if cheaper else "not cheaper" if cheaper is False else "unknown"
    return (f"At {compare['price']:g} per GPU-hour a flat-rate alternative breaks even at"
            f" {pct(compare['break_even_utilisation'])} utilisation; this node ran at"
            f" {pct(compare['utilisation'])}: the alternative is {verdict}.")


LATENCY = ("Latency", "P50", "P95", "P99")
"""The columns of a model's latency table."""


def latency_rows(model: dict[str, Any]) -> list[list[str]]:
    """One row of :data:`LATENCY` per latency with a P99, users' then the canary's."""
    return [[f"{source} {name}", seconds(q.get("p50")), seconds(q.get("p95")),
             seconds(q.get("p99"))]
            for source in ("user", "canary")
            for name, q in model["latency"].get(source, {}).items()
            if q.get("p99") is not None]


SIGNALS = ("Signal", "r with TTFT P99", "r with ITL P99", "r canary TTFT", "rank rho (TTFT)",
           "points", "most on")
"""The columns of a model's table of signals."""


def signal_rows(model: dict[str, Any]) -> list[list[str]]:
    """One row of :data:`SIGNALS` per signal, the strongest first."""
    return [[d["title"], num(d["r"]["user_ttft"], 2), num(d["r"]["user_itl"], 2),
             num(d["r"]["canary_ttft"], 2), num(d["rank_rho"]["user_ttft"], 2),
             str(d["points"]), _gpu_cell(d)] for d in model["drivers"]]
