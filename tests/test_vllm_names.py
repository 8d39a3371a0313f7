"""vLLM's names, current and older, map onto the same stable readings."""

from __future__ import annotations

import re
from pathlib import Path

from exporter.engines.vllm import KEEP, Normaliser
from exporter.expfmt import parse

FIXTURES = Path(__file__).parent / "fixtures" / "vllm"
AFTER_LOAD = (FIXTURES / "v0.32.0-cpu-after-load.txt").read_text()


def to_legacy(text: str) -> str:
    """Rewrite a current exposition with the names and labels of older vLLM releases."""
    text = text.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    text = text.replace("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
    text = re.sub(r'engine="0",', "", text)
    return text + (
        "# HELP vllm:num_requests_swapped Number of requests swapped to CPU.\n"
        "# TYPE vllm:num_requests_swapped gauge\n"
        'vllm:num_requests_swapped{model_name="tiny-llama"} 2.0\n'
    )


def readings(text: str):  # type: ignore[no-untyped-def]
    exp = parse(text, KEEP)
    assert exp.errors == 0, exp.first_errors
    found, dropped = Normaliser(max_engines=8).normalise(exp)
    assert dropped == 0
    return found


def test_real_capture_maps_every_field() -> None:
    (r,) = readings(AFTER_LOAD)
    assert (r.model, r.dp_rank) == ("tiny-llama", "0")
    assert r.counters == {"prompt_tokens": 1122.0, "generation_tokens": 5440.0,
                          "preemptions": 7.0}
    assert r.gauges["requests_waiting"] == 0.0
    assert r.gauges["kv_cache_usage_ratio"] == 0.0
    assert r.gauges["kv_cache_capacity_tokens"] == 20 * 128
    assert r.finished["length"] == 44.0
    assert set(r.histograms) == {"time_to_first_token", "inter_token_latency",
                                 "e2e_request_latency", "request_queue_time"}
    ttft = r.histograms["time_to_first_token"]
    assert ttft.bounds[0] == 0.001 and ttft.bounds[-1] == float("inf")
    assert ttft.count == 44.0 and ttft.counts[-1] == 44.0
    assert set(r.created) == {"prompt_tokens", "generation_tokens", "preemptions"}


def test_legacy_names_give_the_same_readings() -> None:
    (new,) = readings(AFTER_LOAD)
    (old,) = readings(to_legacy(AFTER_LOAD))
    assert old.key == new.key  # no engine label: rank "0"
    assert old.counters == new.counters
    assert old.gauges["kv_cache_usage_ratio"] == new.gauges["kv_cache_usage_ratio"]
    assert old.gauges["requests_swapped"] == 2.0
    assert old.histograms["inter_token_latency"] == new.histograms["inter_token_latency"]


def test_current_name_wins_when_both_are_exposed() -> None:
    both = AFTER_LOAD + (
        "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        'vllm:gpu_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.99\n'
    )
    (r,) = readings(both)
    assert r.gauges["kv_cache_usage_ratio"] == 0.0


def test_data_parallel_ranks_and_models_are_separate_and_capped() -> None:
    lines = ["# TYPE vllm:num_requests_waiting gauge"]
    for model in ("a", "b"):
        for rank in range(3):
            labels = f'engine="{rank}",model_name="{model}"'
            lines.append(f"vllm:num_requests_waiting{{{labels}}} {rank}")
    exp = parse("\n".join(lines) + "\n", KEEP)
    found, dropped = Normaliser(max_engines=4).normalise(exp)
    assert len(found) == 4 and dropped == 2
    assert {(r.model, r.dp_rank, r.gauges["requests_waiting"]) for r in found} == {
        ("a", "0", 0.0), ("a", "1", 1.0), ("a", "2", 2.0), ("b", "0", 0.0)}


def test_histogram_without_inf_bucket_is_ignored() -> None:
    text = ("# TYPE vllm:time_to_first_token_seconds histogram\n"
            'vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 1\n'
            'vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.05\n'
            'vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 1\n'
            "# TYPE vllm:num_requests_running gauge\n"
            'vllm:num_requests_running{engine="0",model_name="m"} 1\n')
    (r,) = readings(text)
    assert r.histograms == {}


def test_families_not_needed_are_not_parsed() -> None:
    exp = parse(AFTER_LOAD, KEEP)
    assert exp.get("vllm:request_prompt_tokens_bucket") == []
    assert exp.get("python_gc_objects_collected_total") == []
    assert exp.get("vllm:time_to_first_token_seconds_bucket")


def test_a_warm_normaliser_reads_what_a_fresh_one_does() -> None:
    from exporter.expfmt import Parser

    parser, normaliser = Parser(), Normaliser(max_engines=8)
    normaliser.normalise(parser.parse(AFTER_LOAD, KEEP))
    for name in ("v0.32.0-cpu-burst.txt", "v0.32.0-cpu-idle.txt", "v0.32.0-cpu-after-load.txt"):
        text = (FIXTURES / name).read_text()
        warm, _ = normaliser.normalise(parser.parse(text, KEEP))
        fresh, _ = Normaliser(max_engines=8).normalise(parse(text, KEEP))
        assert warm == fresh
        assert warm[0].histograms["time_to_first_token"].count == \
            fresh[0].histograms["time_to_first_token"].counts[-1]


def test_histogram_series_with_extra_labels_are_summed_per_engine() -> None:
    lines = ["# TYPE vllm:time_to_first_token_seconds histogram"]
    for extra, counts in (("a", (1, 3)), ("b", (2, 5))):
        labels = f'engine="0",model_name="m",x="{extra}"'
        lines += [f'vllm:time_to_first_token_seconds_bucket{{{labels},le="0.5"}} {counts[0]}',
                  f'vllm:time_to_first_token_seconds_bucket{{{labels},le="+Inf"}} {counts[1]}',
                  f"vllm:time_to_first_token_seconds_sum{{{labels}}} 1.5",
                  f"vllm:time_to_first_token_seconds_count{{{labels}}} {counts[1]}"]
    (r,) = readings("\n".join(lines) + "\n")
    h = r.histograms["time_to_first_token"]
    assert (h.bounds, h.counts, h.sum, h.count) == ((0.5, float("inf")), (3.0, 8.0), 3.0, 8.0)


def test_label_sets_with_other_bounds_are_summed_at_the_bounds_they_share() -> None:
    """Series of one engine with different buckets (two versions of a model, say) are summed
    where every one of them has a bucket; a bound only one has would undercount there."""
    lines = ["# TYPE vllm:time_to_first_token_seconds histogram"]
    for extra, buckets in (("a", (("0.5", 1), ("1.0", 2), ("+Inf", 3))),
                           ("b", (("1.0", 4), ("2.0", 6), ("+Inf", 7)))):
        labels = f'engine="0",model_name="m",x="{extra}"'
        lines += [f'vllm:time_to_first_token_seconds_bucket{{{labels},le="{le}"}} {n}'
                  for le, n in buckets]
        lines.append(f"vllm:time_to_first_token_seconds_sum{{{labels}}} 2.0")
    (r,) = readings("\n".join(lines) + "\n")
    h = r.histograms["time_to_first_token"]
    assert (h.bounds, h.counts, h.sum) == ((1.0, float("inf")), (6.0, 10.0), 4.0)
