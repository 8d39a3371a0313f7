"""The simulator's engine state in the other engines' own expositions (SGLang, llama.cpp,
Triton, trtllm-serve, TGI, LMDeploy), for time-varying load tests of every adapter.

A dialect renders the same :class:`EngineSnapshot` s that the vLLM exposition renders, in
one engine's names, labels, units and buckets, and says what of the scenario it carries:
the latencies it has as histograms (rebucketed at the engine's own bounds from the exact
observed values the simulator keeps), those it has only as cumulative durations (a mean),
and the gauges and counters it has. Tests compute what the daemon must show from that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from ..expected import INF, HistogramTotals, Totals
from ..exposition import EngineSnapshot
from ..scenario import Engine

__all__ = ["DIALECTS", "Dialect", "Lines", "exact_sum", "fmt", "histogram_lines", "rebucket"]

Route = tuple[str, bytes]
"""(content type, body) of a GET the engine answers beside its metrics."""


@dataclass(frozen=True)
class Dialect:
    """One engine's exposition of the simulated state."""

    name: str
    """Unique among the dialects: the kind, or the kind and a release (``trtllm-1.0``)."""
    kind: str
    """The adapter's kind (``engine`` label)."""
    render: Callable[[Sequence[EngineSnapshot], float], bytes]
    """Exposition bytes for the snapshots (one per engine of the scenario) and the
    process's start time."""
    histograms: Mapping[str, tuple[float, ...]]
    """Latency key (``ttft``...) -> the engine's finite bucket bounds, for the latencies it
    exports as histograms."""
    means: Callable[[Totals], Mapping[str, float]]
    """Latency key -> the mean the engine's cumulative durations give over an increase of
    the totals (a window), for the latencies it has only as durations."""
    gauges: frozenset[str]
    """Of ``running``, ``waiting``, ``kv_cache_usage``: the gauges it carries."""
    counters: frozenset[str]
    """Of ``prompt_tokens``, ``generation_tokens``, ``preemptions``: the counters it carries."""
    finished: Callable[[Totals], Mapping[str, float]] = field(default=lambda totals: {})
    """``reason`` -> the finished requests the engine's counters give, as the daemon's
    ``inference_node_engine_requests_finished_total`` (empty: it has no such counter)."""
    metrics_path: str = "/metrics"
    content_type: str = "text/plain; version=0.0.4; charset=utf-8"
    routes: Callable[[Sequence[Engine]], Mapping[str, Route]] = field(
        default=lambda engines: {})
    """Other GETs it answers (``/v1/models``, ``/info``), given the scenario's engines."""


def rebucket(h: HistogramTotals, bounds: Iterable[float]) -> tuple[tuple[float, int], ...]:
    """Cumulative (bound, count) at ``bounds`` and +Inf, from the exact observed values."""
    out = []
    for bound in (*sorted(bounds), INF):
        out.append((bound, sum(c for v, c in h.values if v <= bound)))
    return tuple(out)


def exact_sum(h: HistogramTotals) -> float:
    """The observations' sum, computed exactly from the observed values."""
    return float(sum((Fraction(v) * c for v, c in h.values), Fraction(0)))


def fmt(value: float) -> str:
    """A sample value as Python's repr writes it (``+Inf``, ``NaN`` for the others)."""
    if value != value:
        return "NaN"
    if value in (INF, -INF):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Lines:
    """An exposition written line by line: ``# HELP`` / ``# TYPE`` once per family."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._families: set[str] = set()

    def family(self, name: str, kind: str, doc: str) -> None:
        if name not in self._families:
            self._families.add(name)
            self._lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, labels: Mapping[str, str], value: float) -> None:
        text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        self._lines.append(f"{name}{{{text}}} {fmt(value)}" if text else f"{name} {fmt(value)}")

    def raw(self, line: str) -> None:
        self._lines.append(line)

    def bytes(self) -> bytes:
        return ("\n".join(self._lines) + "\n").encode()


def histogram_lines(out: Lines, name: str, labels: Mapping[str, str], h: HistogramTotals,
                    bounds: Sequence[float], le: Callable[[float], str] = fmt) -> None:
    """One histogram series (``_bucket`` at ``bounds`` and +Inf, ``_sum``, ``_count``);
    ``le`` writes a bound as the engine does."""
    for bound, count in rebucket(h, bounds):
        out.sample(name + "_bucket", {**labels, "le": le(bound)}, count)
    out.sample(name + "_sum", labels, exact_sum(h))
    out.sample(name + "_count", labels, h.count)


# The modules import the above: loaded last.
from . import llamacpp, lmdeploy, sglang, tgi, triton, trtllm  # noqa: E402

DIALECTS: Mapping[str, Dialect] = {
    d.name: d for module in (sglang, llamacpp, triton, trtllm, tgi, lmdeploy)
    for d in module.DIALECTS}
"""Every dialect by name."""
