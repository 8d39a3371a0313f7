"""Scenario-driven simulator of vLLM's /metrics endpoint (and the other engines'), with
the engines' streaming requests, for tests."""

from .expected import (
    HISTOGRAMS,
    Gauges,
    HistogramSpec,
    HistogramTotals,
    Totals,
    apportion,
    gauges_at,
    histogram_quantile,
    integral,
    totals_after_tick,
    totals_at,
    totals_at_elapsed,
)
from .exposition import CONTENT_TYPE, EngineSnapshot, render
from .scenario import Engine, Phase, Scenario, load_scenario, parse_scenario
from .server import FAULT_MODES, STREAM_FAULT_MODES, Fault, SimServer, StreamFault
from .streaming import StreamRequest

__all__ = [
    "CONTENT_TYPE",
    "FAULT_MODES",
    "HISTOGRAMS",
    "STREAM_FAULT_MODES",
    "Engine",
    "EngineSnapshot",
    "Fault",
    "Gauges",
    "HistogramSpec",
    "HistogramTotals",
    "Phase",
    "Scenario",
    "SimServer",
    "StreamFault",
    "StreamRequest",
    "Totals",
    "apportion",
    "gauges_at",
    "histogram_quantile",
    "integral",
    "load_scenario",
    "parse_scenario",
    "render",
    "totals_after_tick",
    "totals_at",
    "totals_at_elapsed",
]
