"""How the report writes its figures: seconds, numbers, shares, the platform, the movers."""

from __future__ import annotations

from typing import Any

__all__ = ["COMPARISON", "comparison", "environment", "movers", "num", "pct", "seconds"]


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


def gpu_cell(driver: dict[str, Any]) -> str:
    """The drivers tables' "most on" cell: the GPU whose own signal moves most with the P99,
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
