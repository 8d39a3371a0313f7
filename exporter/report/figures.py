"""Every figure of the report, from Prometheus, as one JSON-ready dict.

Per node and model: the P50/P95/P99 of user traffic's and the canary's latencies over the
whole range (from the histograms' increase over it, as ``histogram_quantile`` computes
them), the P99/P50 spread by hour of the day (users' and the canary's), the share of time
inside each objective, and the signals that move with the P99 ranked by Pearson's
correlation over the range's steps (a correlation, never a cause; Spearman's rank
correlation beside it), with the GPU that moves most for a GPU's signal. Per node: the
platform's fingerprint, tokens per second per GPU, GPU utilisation, cost per million tokens
and, with a comparison price, whether that flat price would be cheaper.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from exporter.report import stats
from exporter.report.promapi import Prometheus, ReportError, Sample
from exporter.report.queries import CANARY, DRIVERS, USER, Q
from exporter.report.span import Span

__all__ = ["QUANTILES", "TRACKS", "build", "node_key", "strongest_gpu"]

QUANTILES = (0.5, 0.95, 0.99)
TRACKS = 0.5
"""A signal "moves with" the P99 when the absolute correlation reaches this."""
_NODE = ("cluster", "job", "instance")
Key = tuple[str, ...]


def node_key(labels: Mapping[str, str]) -> Key:
    return tuple(labels.get(k, "") for k in _NODE)


def _by(samples: list[Sample], model: bool) -> dict[Key, float]:
    return {node_key(s.labels) + ((s.labels.get("model", ""),) if model else ()): s.value
            for s in samples}


class _Run:
    def __init__(self, prom: Prometheus, span: Span, q: Q,
                 progress: Callable[[str], None]) -> None:
        self.prom, self.span, self.q, self.progress = prom, span, q, progress

    def instant(self, what: str, expr: str, model: bool = True) -> dict[Key, float]:
        self.progress(what)
        return _by(self.prom.instant(expr, self.span.end), model)

    def over_time(self, what: str, expr: str, model: bool = True, gpu: bool = False
                  ) -> dict[Key, dict[float, float]]:
        """Each series' points, keyed by node, then model or GPU where asked."""
        self.progress(what)
        series = self.prom.range(expr, self.span.start, self.span.end, self.span.step)
        return {node_key(s.labels) + ((s.labels.get("model", ""),) if model else ())
                + ((s.labels.get("gpu", ""),) if gpu else ()): dict(s.points) for s in series}


def build(prom: Prometheus, span: Span, matchers: str,
          slo: Mapping[str, float], compare_price: float | None,
          progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The report's figures; raises :class:`ReportError` when the range holds nothing."""
    q = Q(matchers)
    run = _Run(prom, span, q, progress)
    rng = span.promql
    engines = run.instant("the nodes and models in the range", q.engines(rng))
    if not engines:
        raise ReportError(f"no engine latency series match {q.sel()} between"
                          f" {_iso(span.start)} and {_iso(span.end)}: check --selector"
                          " and the range")
    latency = {
        (source, key, quantile): run.instant(
            f"{source} {key} P{quantile * 100:g} over the range",
            q.quantile_over_range(family, quantile, rng))
        for source, families in (("user", USER), ("canary", CANARY))
        for key, family in families.items() for quantile in QUANTILES}
    w = span.window
    curves = {(source, key, quantile): run.over_time(
        f"{source} {key} P{quantile * 100:g} over time",
        q.quantile_over_time(families[key], quantile, w))
        for source, families in (("user", USER), ("canary", CANARY))
        for key in ("ttft", "itl") for quantile in (0.5, 0.99)}
    drivers = {d: run.over_time(d.title, q.driver(d, w), model=d.per_model) for d in DRIVERS}
    per_gpu = {d: run.over_time(f"{d.title} per GPU", q.driver(d, w, by_gpu=True),
                                model=False, gpu=True) for d in DRIVERS if d.per_gpu}
    environment = {node_key(s.labels): {k: v for k, v in s.labels.items()
                                        if k not in (*_NODE, "__name__")}
                   for s in prom.instant(q.environment(rng), span.end)}
    tokens = run.instant("generated tokens", q.tokens(rng))
    gpus = run.instant("GPUs", q.gpus(rng), model=False)
    utilisation = run.instant("GPU utilisation", q.utilisation(rng), model=False)
    progress("GPU prices")
    costs = prom.instant(q.hourly_cost(rng), span.end)
    priced = run.instant("priced GPUs", q.priced_gpus(rng), model=False)

    nodes: dict[Key, dict[str, Any]] = {}
    for key in sorted(engines):
        node = key[:3]
        entry = nodes.setdefault(node, _node(node, environment.get(node), span, tokens,
                                             gpus, utilisation, costs, priced, compare_price))
        entry["models"].append(_model(key, latency, curves, drivers, per_gpu, slo))
    return {
        "generated_at": _iso(time.time()),
        "prometheus": prom.url,
        "selector": q.sel(),
        "range": {"start": _iso(span.start), "end": _iso(span.end),
                  "seconds": span.seconds, "step_seconds": span.step,
                  "window": span.window},
        "statistic": "Pearson's correlation r between each signal and the P99 at every"
                     f" step of {span.step:g}s (strongest over user and canary TTFT and ITL);"
                     f" |r| >= {TRACKS} counts as moving with it. Spearman's rank correlation"
                     " is given beside it. A correlation, not a cause.",
        "slo": dict(slo),
        "compare_price": compare_price,
        "nodes": list(nodes.values()),
        "queries": prom.queries,
    }


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _model(key: Key, latency: Mapping[tuple[str, str, float], dict[Key, float]],
           curves: Mapping[tuple[str, str, float], dict[Key, dict[float, float]]],
           drivers: Mapping[Any, dict[Key, dict[float, float]]],
           per_gpu: Mapping[Any, dict[Key, dict[float, float]]],
           slo: Mapping[str, float]) -> dict[str, Any]:
    node, model = key[:3], key[3]
    lat: dict[str, dict[str, dict[str, float | None]]] = {}
    for (source, name, quantile), values in latency.items():
        lat.setdefault(source, {}).setdefault(name, {})[f"p{quantile * 100:g}"] = \
            values.get(key)
    spread = {name if source == "user" else f"canary_{name}": stats.by_hour(
        curves[(source, name, 0.99)].get(key, {}), curves[(source, name, 0.5)].get(key, {}))
        for source in ("user", "canary") for name in ("ttft", "itl")}
    shares = {}
    for objective, target in slo.items():
        name = objective.removesuffix("_p99")
        steps = list(curves.get(("user", name, 0.99), {}).get(key, {}).values())
        shares[objective] = stats.inside_share(steps, target)
    p99s = {f"{source}_{name}": curves[(source, name, 0.99)].get(key, {})
            for source, name in _TRACKED}
    ranked = []
    for d, series in drivers.items():
        rs, rhos, points = _correlations(series.get(key if d.per_model else node, {}), p99s)
        known = [abs(r) for r in rs.values() if r is not None]
        entry = {"signal": d.key, "title": d.title, "r": rs, "rank_rho": rhos,
                 "points": points, "strongest": max(known) if known else None}
        if d.per_gpu:
            entry["gpu"] = strongest_gpu(node, per_gpu.get(d, {}), p99s)
        ranked.append(entry)
    ranked.sort(key=lambda r: -(r["strongest"] or 0.0))
    moving = [r["signal"] for r in ranked
              if r["strongest"] is not None and r["strongest"] >= TRACKS]
    return {
        "model": model, "node": node[2],
        "latency": lat,
        "p99_over_p50_by_hour": spread,
        "slo_inside_share": shares,
        "drivers": ranked,
        "moves_with_p99": moving,
        "over_time": _over_time(key, curves, drivers, ranked[0]["signal"] if ranked else None),
    }


_TRACKED = (("user", "ttft"), ("user", "itl"), ("canary", "ttft"), ("canary", "itl"))
"""The P99 curves a signal is correlated with."""


def _correlations(signal: Mapping[float, float], p99s: Mapping[str, Mapping[float, float]]
                  ) -> tuple[dict[str, float | None], dict[str, float | None], int]:
    """Pearson's r and Spearman's rho of the signal with each P99 curve, and the most
    points any pair had."""
    rs: dict[str, float | None] = {}
    rhos: dict[str, float | None] = {}
    points = 0
    for name, p99 in p99s.items():
        xs, ys = stats.aligned(signal, p99)
        rs[name], rhos[name] = stats.pearson(xs, ys), stats.spearman(xs, ys)
        points = max(points, len(xs))
    return rs, rhos, points


def strongest_gpu(node: Key, series: Mapping[Key, Mapping[float, float]],
                   p99s: Mapping[str, Mapping[float, float]]) -> dict[str, Any] | None:
    """The node's GPU whose own signal moves most with the P99 (the strongest |r| over the
    curves), with that r; None where no GPU's signal varies with it."""
    best: dict[str, Any] | None = None
    for gpu_key, signal in sorted(series.items()):
        if gpu_key[:3] != node:
            continue
        rs, _, _ = _correlations(signal, p99s)
        known = [abs(r) for r in rs.values() if r is not None]
        if known and (best is None or max(known) > best["strongest"]):
            best = {"gpu": gpu_key[3], "strongest": max(known)}
    return best


def _over_time(key: Key, curves: Mapping[tuple[str, str, float], dict[Key, dict[float, float]]],
               drivers: Mapping[Any, dict[Key, dict[float, float]]],
               top: str | None) -> dict[str, Any]:
    """The P99s and the strongest signal at every step, for the charts: unix times, and
    values with None where a step has none."""
    wanted = {f"{source}_{name}_p99": curves[(source, name, 0.99)].get(key, {})
              for source in ("user", "canary") for name in ("ttft", "itl")}
    for d, series in drivers.items():
        if d.key == top:
            wanted[f"signal_{d.key}"] = series.get(key if d.per_model else key[:3], {})
    times = sorted({t for values in wanted.values() for t in values})
    return {"t": times, **{name: [values.get(t) for t in times]
                           for name, values in wanted.items()}}


def _node(node: Key, environment: Mapping[str, str] | None, span: Span,
          tokens: Mapping[Key, float], gpus: Mapping[Key, float],
          utilisation: Mapping[Key, float], costs: list[Sample], priced: Mapping[Key, float],
          compare_price: float | None) -> dict[str, Any]:
    made = sum(v for k, v in tokens.items() if k[:3] == node) if any(
        k[:3] == node for k in tokens) else None
    n = gpus.get(node)
    per_second = made / span.seconds if made is not None else None
    hourly = [s for s in costs if node_key(s.labels) == node]
    hours = span.seconds / 3600
    cost: dict[str, Any] | None = None
    if hourly:
        per_hour = sum(s.value for s in hourly)
        cost = {"currency": hourly[0].labels.get("currency", ""), "per_hour": per_hour,
                "over_range": per_hour * hours,
                "per_million_tokens": per_hour * hours / (made / 1e6) if made else None}
        count = priced.get(node)
        util = utilisation.get(node)
        if compare_price is not None and count:
            price = per_hour / count
            even = compare_price / price if price > 0 else None
            cost["compare"] = {
                "price": compare_price, "break_even_utilisation": even,
                "utilisation": util,
                "alternative_cheaper": None if even is None or util is None else util > even}
    return {
        "cluster": node[0], "job": node[1], "instance": node[2],
        "environment": dict(environment) if environment is not None else None,
        "gpus": n,
        "generated_tokens": made,
        "tokens_per_second_per_gpu": per_second / n if per_second is not None and n else None,
        "gpu_utilisation": utilisation.get(node),
        "cost": cost,
        "models": [],
    }
