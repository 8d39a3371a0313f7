"""llama.cpp server's exposition (``llamacpp:``) of the simulated state, written by hand as
its ``to_metrics()`` does (captures/llamacpp-*.txt).

One model and no labels: the scenario's first engine only, read as ``(model, "0")`` with the
model's name from ``/v1/models``. Every TYPE line names the whole sample; values print as
C++'s ``std::stringstream`` does (``1600``, ``0.00784``, ``1e+06``), except that they keep as
many digits as they need to read back exactly, where llama.cpp keeps six (so that the
daemon's figures equal the scenario's above a million too).

What its counters hold: the prompt tokens, less a quarter (rounded down) served from the
prompt cache and counted apart; the generated tokens; one ``llama_decode()`` per simulated
engine step; as the seconds spent on prompts, the sum of the TTFT observations; as the
seconds spent generating, the sum of the ITL observations. The throughput gauges, which
llama.cpp averages since the previous scrape, are lifetime averages here (no scrape state).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

from ..expected import Totals
from ..exposition import EngineSnapshot
from ..scenario import Engine
from . import Dialect, Lines, Route, exact_sum

__all__ = ["DIALECTS", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4"
JSON = "application/json; charset=utf-8"
MODEL_CREATED = 1764547200
"""The ``created`` of the ``/v1/models`` answer (llama.cpp writes the time of the request)."""


def _num(value: float) -> str:
    """A value as ``std::stringstream`` writes it, with the digits it needs past six."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    for digits in range(6, 18):
        text = f"{value:.{digits}g}"
        if float(text) == value:
            return text
    return repr(value)


def _six(value: float) -> float:
    """``value`` to llama.cpp's six significant digits (for figures the daemon does not read)."""
    return float(f"{value:.6g}")


def _cached(totals: Totals) -> float:
    """The prompt tokens taken from the prompt cache: a quarter, rounded down."""
    return float(math.floor(totals.prompt_tokens) // 4)


def render(snapshots: Sequence[EngineSnapshot], process_start: float) -> bytes:
    """The first engine's exposition (llama.cpp serves one model)."""
    out = Lines()
    if not snapshots:
        return out.bytes()
    t, g = snapshots[0].totals, snapshots[0].gauges
    cached = _cached(t)
    prompt_seconds = exact_sum(t.histograms["ttft"])
    predicted_seconds = exact_sum(t.histograms["itl"])
    decodes = float(t.histograms["iteration_tokens"].count)
    longest = max((v for v, _ in t.histograms["request_prompt_tokens"].values), default=0.0)
    families: tuple[tuple[str, str, str, float], ...] = (
        ("prompt_tokens_total", "counter",
         "Number of prompt tokens processed, excluding cached tokens", t.prompt_tokens - cached),
        ("prompt_tokens_cached_total", "counter", "Number of prompt tokens reused from the cache",
         cached),
        ("prompt_seconds_total", "counter", "Total time spent processing prompts",
         prompt_seconds),
        ("tokens_predicted_total", "counter", "Number of generation tokens processed",
         t.generation_tokens),
        ("tokens_predicted_seconds_total", "counter", "Total time spent generating tokens",
         predicted_seconds),
        ("n_decode_total", "counter", "Total number of llama_decode() calls, excluding "
         "speculative decoding and multimodal decoding", decodes),
        ("n_tokens_max", "counter", "Largest observed sequence length (prompt + generation)",
         longest),
        ("spec_decode_num_draft_tokens_total", "counter",
         "Speculative: Total draft tokens generated", 0.0),
        ("spec_decode_num_accepted_tokens_total", "counter",
         "Speculative: Total draft tokens accepted by the target model", 0.0),
        ("spec_decode_num_drafts_total", "counter",
         "Speculative: Total speculative decoding verification steps", 0.0),
        ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s",
         _six((t.prompt_tokens - cached) / prompt_seconds if prompt_seconds else 0.0)),
        ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s",
         _six(t.generation_tokens / predicted_seconds if predicted_seconds else 0.0)),
        ("requests_processing", "gauge", "Number of requests processing", g.running),
        ("requests_deferred", "gauge", "Number of requests deferred", g.waiting),
        ("n_busy_slots_per_decode", "gauge",
         "Average number of busy slots per llama_decode() call", g.running if decodes else 0.0),
    )
    for name, kind, doc, value in families:
        out.family("llamacpp:" + name, kind, doc)
        out.raw(f"llamacpp:{name} {_num(value)}")
    return out.bytes()


def _means(delta: Totals) -> Mapping[str, float]:
    """The ITL mean the adapter derives: generation seconds over generated tokens."""
    if delta.generation_tokens <= 0:
        return {}
    return {"itl": exact_sum(delta.histograms["itl"]) / delta.generation_tokens}


def _routes(engines: Sequence[Engine]) -> Mapping[str, Route]:
    """``/v1/models`` (OpenAI's list, beside llama.cpp's own ``models``) and ``/health``."""
    model = engines[0].model if engines else "model.gguf"
    listed = {
        "models": [{"name": model, "model": model, "modified_at": "", "size": "",
                    "digest": "", "type": "model", "description": "", "tags": [""],
                    "capabilities": ["completion"], "parameters": "",
                    "details": {"parent_model": "", "format": "gguf", "family": "",
                                "families": [""], "parameter_size": "",
                                "quantization_level": ""}}],
        "object": "list",
        "data": [{"id": model, "object": "model", "created": MODEL_CREATED,
                  "owned_by": "llamacpp",
                  "meta": {"vocab_type": 2, "n_vocab": 128256, "n_ctx_train": 131072,
                           "n_embd": 4096, "n_params": 8030261248, "size": 4920734720}}],
    }
    return {"/v1/models": (JSON, json.dumps(listed, separators=(",", ":")).encode()),
            "/health": (JSON, b'{"status":"ok"}')}


DIALECTS: tuple[Dialect, ...] = (Dialect(
    name="llamacpp",
    kind="llamacpp",
    render=render,
    histograms={},
    means=_means,
    gauges=frozenset({"running", "waiting"}),
    counters=frozenset({"prompt_tokens", "generation_tokens"}),
    content_type=CONTENT_TYPE,
    routes=_routes,
),)
