"""llama.cpp: its server's metric names mapped onto the engine-neutral reading.

llama.cpp's HTTP server (the ``llama-server`` binary, or the same server embedded in the
``xllamacpp`` Python module) serves ``/metrics`` only when started with ``--metrics`` (else
it answers 501). It serves one model and labels nothing, so the model's name comes from
``/v1/models`` and the rank is always "0". It has no histograms, no KV-cache gauge (removed
upstream), no preemption or outcome counters. Values print with six significant digits
(``1.23457e+06``): counters above a million move in steps of ten or more.

Router mode (one server, many models, ``/metrics?model=<id>``) is not read: its plain
``/metrics`` answers 400, and the source is reported down.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from exporter.engines.adapter import Adapter, ModelInfo, ProcessMatch
from exporter.engines.common import listed_model
from exporter.engines.reading import EngineReading
from exporter.expfmt import Exposition

__all__ = ["ADAPTER", "COUNTERS", "GAUGES", "KEEP", "MEANS", "PROMPT_CACHED", "Normaliser"]

# Our signal -> llama.cpp sample names. Its TYPE lines name the whole sample
# (``# TYPE llamacpp:prompt_tokens_total counter``), so these are family names too.
GAUGES: dict[str, tuple[str, ...]] = {
    "requests_waiting": ("llamacpp:requests_deferred",),
    "requests_running": ("llamacpp:requests_processing",),
}
COUNTERS: dict[str, tuple[str, ...]] = {
    "prompt_tokens": ("llamacpp:prompt_tokens_total",),
    "generation_tokens": ("llamacpp:tokens_predicted_total",),
    "iterations": ("llamacpp:n_decode_total",),
}
PROMPT_CACHED = "llamacpp:prompt_tokens_cached_total"
"""Prompt tokens taken from the prompt cache. Builds that have it leave them out of
``prompt_tokens_total``: our prompt tokens are the sum of both where it exists."""
MEANS: dict[str, tuple[str, ...]] = {
    # Seconds each slot spent between a request's first and last token, summed over slots,
    # over the tokens generated: the mean gap between a request's tokens.
    "inter_token_latency": ("llamacpp:tokens_predicted_seconds_total",
                            "llamacpp:tokens_predicted_total"),
}

KEEP: frozenset[str] = frozenset(
    [n for names in (*GAUGES.values(), *COUNTERS.values(), *MEANS.values()) for n in names]
    + [PROMPT_CACHED])
"""The samples the parser should read at all; the rest are skipped unparsed."""

UNKNOWN = "unknown"
"""The model of a reading made without the served model's name."""


def _value(exp: Exposition, names: Iterable[str]) -> float | None:
    """The first of ``names`` the exposition has, summed over its finite samples (llama.cpp
    writes one unlabelled sample each; a label split would be summed)."""
    for name in names:
        values = [v for _, _, v, _ in exp.get(name) if math.isfinite(v)]
        if values:
            return math.fsum(values)
    return None


class Normaliser:
    """Turns a parsed llama.cpp exposition into its one reading."""

    def __init__(self, max_engines: int) -> None:
        self.max_engines = max_engines

    def normalise(self, exp: Exposition, model: str) -> tuple[list[EngineReading], int]:
        """The reading of the model the server serves (``model``, from ``/v1/models``), and
        how many readings the cap dropped (one when the cap is below one)."""
        r = EngineReading(model or UNKNOWN, "0")
        for ours, names in GAUGES.items():
            if (value := _value(exp, names)) is not None:
                r.gauges[ours] = value
        for ours, names in COUNTERS.items():
            if (value := _value(exp, names)) is not None:
                r.counters[ours] = value
        cached = _value(exp, (PROMPT_CACHED,))
        if cached is not None and "prompt_tokens" in r.counters:
            r.counters["prompt_tokens"] += cached
        for ours, (seconds_name, count_name) in MEANS.items():
            seconds, count = _value(exp, (seconds_name,)), _value(exp, (count_name,))
            if seconds is not None and count is not None:
                r.durations[ours] = (seconds, count)
        if not (r.gauges or r.counters):
            return [], 0
        if self.max_engines < 1:
            return [], 1
        return [r], 0


ADAPTER = Adapter(
    kind="llamacpp",
    title="llama.cpp",
    default_port=8080,
    metrics_path="/metrics",
    names={**GAUGES, **COUNTERS},
    keep=KEEP,
    normaliser=Normaliser,
    # ``llama-server`` with no ``--port`` listens on 8080; a Python program embedding the
    # server through ``xllamacpp`` sets its own port, so only the binary implies the default.
    processes=ProcessMatch(words=("llama-server", "xllamacpp"),
                           default_port_words=("llama-server",), port_flags=("--port",)),
    means=MEANS,
    # Prompt tokens are counted when a request's prompt has been processed (at its first
    # token), generated tokens when it ends: both jump by whole requests.
    counted_at_request_end=frozenset({"prompt_tokens", "generation_tokens"}),
    model_info=ModelInfo("/v1/models", listed_model),
)
