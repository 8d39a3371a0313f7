"""LMDeploy's ``lmdeploy:`` names map onto the stable readings: data-parallel ranks apart,
``ResponseType`` members in our words, ``iter_token_latency`` as the inter-token latency.
The end-to-end test is ``tests/test_trtllm.py::test_the_daemon_serves_each_engine_end_to_end``."""

from __future__ import annotations

import math
import re
from pathlib import Path

from exporter.engines.lmdeploy import ADAPTER, KEEP, REASONS, Normaliser, reason
from exporter.engines.reading import EngineReading
from exporter.expfmt import parse

HERE = Path(__file__).parent / "fixtures" / "lmdeploy"
IDLE, BUSY, AFTER = (
    (HERE / f"lmdeploy-{stage}.txt").read_text() for stage in ("idle", "busy", "after-load"))
MODEL = "Qwen/Qwen2.5-7B-Instruct"
RESPONSE_TYPES = ("SUCCESS", "FINISH", "ENGINE_STOP_ERROR", "SESSION_REPEAT",
                  "SESSION_NOT_EXIST", "HANDLER_NOT_EXIST", "INPUT_LENGTH_ERROR",
                  "INTERNAL_ENGINE_ERROR", "CANCEL", "PREFIX_CACHE_CONFLICT", "NO_QUEUE",
                  "NOT_SUPPORTED", "OUT_OF_MEMORY")
"""``lmdeploy.messages.ResponseType``, in its order."""


def readings(text: str, max_engines: int = 8) -> list[EngineReading]:
    exp = parse(text, KEEP)
    assert exp.errors == 0, exp.first_errors
    found, dropped = Normaliser(max_engines).normalise(exp, "")
    assert dropped == 0
    return found


def test_after_load_maps_every_field() -> None:
    (r,) = readings(AFTER)
    assert r.key == (MODEL, "0")
    assert r.gauges == {"requests_waiting": 0.0, "requests_running": 0.0,
                        "kv_cache_usage_ratio": 0.0}
    assert r.counters == {"prompt_tokens": 410.0, "generation_tokens": 2228.0}
    # 13 series become four words; only FINISH ever moves.
    assert r.finished == {"success": 9.0, "abort": 0.0, "invalid": 0.0, "error": 0.0}
    assert set(r.histograms) == {"time_to_first_token", "inter_token_latency",
                                 "e2e_request_latency", "request_queue_time"}
    itl = r.histograms["inter_token_latency"]
    assert itl.bounds[0] == 0.005 and itl.bounds[-1] == math.inf and itl.count == 1275.0
    assert r.histograms["time_to_first_token"].count == 9.0
    assert r.histograms["e2e_request_latency"].bounds[0] == 0.3
    assert not r.durations and not r.created


def test_busy_and_idle() -> None:
    (busy,) = readings(BUSY)
    assert busy.gauges == {"requests_waiting": 2.0, "requests_running": 4.0,
                           "kv_cache_usage_ratio": 0.42}
    assert busy.finished["success"] == 3.0
    # Tokens move per output: the 4 running requests' first outputs count already.
    assert busy.counters == {"prompt_tokens": 131.0 + 185.0, "generation_tokens": 852.0}
    (idle,) = readings(IDLE)
    assert idle.counters == {"prompt_tokens": 0.0, "generation_tokens": 0.0}
    assert all(h.count == 0 for h in idle.histograms.values()) and len(idle.histograms) == 4


def test_the_per_output_time_per_token_is_not_read() -> None:
    assert not any("time_per_output_token" in name for name in KEEP)
    assert ADAPTER.lacks == ("requests_swapped", "kv_cache_capacity_tokens", "preemptions",
                            "iterations")
    assert not ADAPTER.counted_at_request_end


def test_every_response_type_has_a_word() -> None:
    assert set(REASONS) == set(RESPONSE_TYPES)
    words = {member: reason(f"ResponseType.{member}") for member in RESPONSE_TYPES}
    assert set(words.values()) == {"success", "abort", "invalid", "error"}
    assert words["FINISH"] == "success" and words["CANCEL"] == "abort"
    assert words["INPUT_LENGTH_ERROR"] == "invalid" and words["OUT_OF_MEMORY"] == "error"
    assert reason("FINISH") == "success"  # printed without the class name
    assert reason("ResponseType.SOMETHING_NEW") == "other" and reason("") == "other"


def test_reasons_sum_per_word() -> None:
    text = AFTER
    for member, value in (("CANCEL", 2), ("OUT_OF_MEMORY", 1), ("INTERNAL_ENGINE_ERROR", 3),
                          ("INPUT_LENGTH_ERROR", 4)):
        text = re.sub(rf'(finished_reason="ResponseType\.{member}",[^}}]*}}) 0\.0',
                      rf"\g<1> {value}.0", text)
    (r,) = readings(text)
    assert r.finished == {"success": 9.0, "abort": 2.0, "invalid": 4.0, "error": 4.0}


def test_data_parallel_ranks_and_models_are_separate_and_capped() -> None:
    lines = ["# TYPE lmdeploy:num_requests_waiting gauge"]
    for model in ("a", "b"):
        for rank in range(3):
            lines.append(f'lmdeploy:num_requests_waiting{{engine="{rank}",model_name="{model}"}}'
                         f" {rank}")
    lines.append('lmdeploy:num_requests_waiting{engine="0",model_name="a",tp_rank="1"} 9')
    exp = parse("\n".join(lines) + "\n", KEEP)
    found, dropped = Normaliser(max_engines=4).normalise(exp, "")
    assert len(found) == 4 and dropped == 2
    assert {(r.model, r.dp_rank, r.gauges["requests_waiting"]) for r in found} == {
        ("a", "0", 0.0), ("a", "1", 1.0), ("a", "2", 2.0), ("b", "0", 0.0)}


def test_garbage_is_skipped() -> None:
    text = ("# TYPE lmdeploy:gpu_cache_usage_perc gauge\n"
            'lmdeploy:gpu_cache_usage_perc{engine="0",model_name="m"} NaN\n'
            'lmdeploy:num_requests_running{engine="0"} 3\n'  # no model: skipped
            'lmdeploy:num_requests_waiting{engine="0",model_name="m"} 1\n'
            "lmdeploy:prompt_tokens_total{model_name=} 1\n")
    exp = parse(text, KEEP)
    assert exp.errors == 1
    (r,) = Normaliser(8).normalise(exp, "")[0]
    assert r.key == ("m", "0") and r.gauges == {"requests_waiting": 1.0}
    assert Normaliser(8).normalise(parse("", KEEP), "") == ([], 0)
