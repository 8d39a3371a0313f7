"""The engine latencies the daemon exports: one table for the collectors, the windowed
percentiles, the alert and dashboard generators and the tests.

Each row ties the engine-neutral reading key an adapter fills, the exported histogram family,
the ``latency`` label value of the windowed percentiles and the words people read.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LATENCIES", "Latency", "by_key"]


@dataclass(frozen=True, slots=True)
class Latency:
    """One latency an engine may expose as a histogram."""

    key: str
    """Value of the ``latency`` label of ``inference_node_engine_latency_seconds``."""
    reading: str
    """Key of :attr:`EngineReading.histograms` (and stem of the exported family)."""
    family: str
    """The exported histogram family."""
    title: str
    """Panel title."""
    words: str
    """The latency in a sentence (alert descriptions)."""
    help: str
    """HELP text of the exported histogram."""


LATENCIES: tuple[Latency, ...] = (
    Latency("ttft", "time_to_first_token", "inference_node_engine_time_to_first_token_seconds",
            "Time to first token", "time to first token",
            "Time to first token, with the engine's buckets."),
    Latency("itl", "inter_token_latency", "inference_node_engine_inter_token_latency_seconds",
            "Inter-token latency", "inter-token latency",
            "Time between successive output tokens, with the engine's buckets."),
    Latency("e2e", "e2e_request_latency", "inference_node_engine_e2e_request_latency_seconds",
            "End-to-end latency", "end-to-end request latency",
            "End-to-end request latency, with the engine's buckets."),
    Latency("queue", "request_queue_time", "inference_node_engine_request_queue_time_seconds",
            "Queue time", "queue time",
            "Time requests spent waiting in the queue, with the engine's buckets."),
)
_BY_KEY = {row.key: row for row in LATENCIES}


def by_key(key: str) -> Latency:
    """The row of a ``latency`` label value (``ttft``...)."""
    return _BY_KEY[key]
