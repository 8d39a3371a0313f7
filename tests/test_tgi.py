"""TGI's router metrics map onto the stable readings: no model label (``/info`` names it),
counters without ``_total``, token counts from histogram sums, failures by ``err``. The
end-to-end test is ``tests/test_trtllm.py::test_the_daemon_serves_each_engine_end_to_end``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from exporter.engines.reading import EngineReading
from exporter.engines.tgi import ADAPTER, ERRORS, KEEP, Normaliser, model_id
from exporter.expfmt import parse

HERE = Path(__file__).parent / "fixtures" / "tgi"
IDLE, BUSY, AFTER = (
    (HERE / f"tgi-{stage}.txt").read_text() for stage in ("idle", "busy", "after-load"))
MODEL = "bigscience/bloom-560m"


def readings(text: str, model: str = MODEL) -> list[EngineReading]:
    exp = parse(text, KEEP)
    assert exp.errors == 0, exp.first_errors
    found, dropped = Normaliser(8).normalise(exp, model)
    assert dropped == 0
    return found


def test_after_load_maps_every_field() -> None:
    (r,) = readings(AFTER)
    assert r.key == (MODEL, "0")
    assert r.gauges == {"requests_waiting": 0.0, "requests_running": 0.0,
                        "kv_cache_capacity_tokens": 163840.0}
    # Prompt tokens of the 9 validated requests, generated tokens of the 8 that succeeded.
    # The forward passes: 9 prefill and 650 decode batches.
    assert r.counters == {"prompt_tokens": 259.0, "generation_tokens": 704.0,
                          "iterations": 659.0}
    assert r.finished == {"success": 8.0, "invalid": 1.0, "abort": 1.0, "overloaded": 1.0}
    assert set(r.histograms) == {"e2e_request_latency", "request_queue_time"}
    e2e = r.histograms["e2e_request_latency"]
    # 35 geometric buckets from 0.0001 * 1.5, as Rust prints them, and +Inf.
    assert len(e2e.bounds) == 36 and e2e.bounds[0] == 0.0001 * 1.5
    assert e2e.bounds[-2] == pytest.approx(145.6, rel=1e-3) and e2e.bounds[-1] == math.inf
    assert e2e.count == 8.0 and e2e.sum == pytest.approx(23.0317)
    assert not r.durations and not r.created


def test_busy_and_idle() -> None:
    (busy,) = readings(BUSY)
    assert busy.gauges == {"requests_waiting": 2.0, "requests_running": 4.0,
                           "kv_cache_capacity_tokens": 163840.0}
    assert busy.counters == {"prompt_tokens": 259.0, "generation_tokens": 287.0,
                          "iterations": 245.0}
    assert busy.finished == {"success": 3.0, "invalid": 1.0}
    # An idle router shows the warm-up's token budget alone: still a reading (up), no more.
    (idle,) = readings(IDLE)
    assert idle.gauges == {"kv_cache_capacity_tokens": 163840.0}
    assert not idle.counters and not idle.histograms and not idle.finished


def test_the_model_comes_from_info_and_is_unknown_without_it() -> None:
    assert model_id((HERE / "info.json").read_bytes()) == MODEL
    (r,) = readings(AFTER, model="")
    assert r.model == "unknown"
    for body in (b"[]", b'{"model_id": ""}', b'{"model_id": 7}', b"[" * 100_000):
        assert model_id(body) is None
    with pytest.raises(ValueError):
        model_id(b"\xff\xfe")


def test_no_ttft_and_no_inter_token_latency() -> None:
    """The per-request mean time per token includes prefill: it is neither."""
    assert ADAPTER.support("time_to_first_token") == "absent"
    assert ADAPTER.support("inter_token_latency") == "absent"
    assert not ADAPTER.means
    assert not any("mean_time_per_token" in name for name in KEEP)
    assert ADAPTER.lacks == ("requests_swapped", "kv_cache_usage_ratio", "preemptions",
                             "time_to_first_token", "inter_token_latency")


def test_counters_with_total_are_read_too() -> None:
    text = AFTER.replace("tgi_request_success", "tgi_request_success_total").replace(
        "tgi_request_failure", "tgi_request_failure_total")
    (r,) = readings(text)
    (plain,) = readings(AFTER)
    assert r.finished == plain.finished


def test_failure_reasons_are_normalised() -> None:
    lines = ["# TYPE tgi_request_failure counter"]
    raw = [*ERRORS, "something new"]
    lines += [f'tgi_request_failure{{err="{err}"}} 1' for err in raw]
    lines.append("tgi_request_failure 1")  # no err at all
    (r,) = readings("\n".join(lines) + "\n")
    assert r.finished == {"invalid": 2.0, "overloaded": 1.0, "abort": 1.0, "error": 4.0}


def test_an_exposition_of_another_engine_gives_no_reading() -> None:
    text = (Path(__file__).parent / "fixtures" / "vllm" / "v0.32.0-cpu-burst.txt").read_text()
    assert Normaliser(8).normalise(parse(text, KEEP), MODEL) == ([], 0)
    assert Normaliser(8).normalise(parse("", KEEP), MODEL) == ([], 0)


def test_garbage_is_skipped() -> None:
    text = ("# TYPE tgi_queue_size gauge\ntgi_queue_size NaN\n"
            "# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size 3\n"
            "tgi_request_success{ 4\n"
            "# TYPE tgi_request_duration histogram\n"
            'tgi_request_duration_bucket{le="banana"} 1\n'
            'tgi_request_duration_bucket{le="+Inf"} 1\n')
    exp = parse(text, KEEP)
    (r,) = Normaliser(8).normalise(exp, MODEL)[0]
    assert r.gauges == {"requests_running": 3.0}
    assert not r.histograms  # one usable bucket is no histogram
    assert not r.finished


def test_the_cap() -> None:
    exp = parse(AFTER, KEEP)
    assert Normaliser(0).normalise(exp, MODEL) == ([], 1)
    assert len(Normaliser(1).normalise(exp, MODEL)[0]) == 1
