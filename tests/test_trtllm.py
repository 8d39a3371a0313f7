"""trtllm-serve's names, in all three spellings, map onto the same stable readings; and the
daemon serves trtllm-serve, TGI and LMDeploy end to end from their fixtures."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from exporter.cli import load, parser
from exporter.collectors.base import SourceError
from exporter.collectors.engine import EngineSource
from exporter.daemon import Daemon
from exporter.derive.engine_state import RATES
from exporter.derive.quantiles import bucket_quantiles
from exporter.engines import lmdeploy, tgi, trtllm
from exporter.engines.adapter import Adapter
from exporter.engines.common import listed_model as served_model
from exporter.engines.reading import EngineReading
from exporter.engines.trtllm import ADAPTER, KEEP, REASONS, Normaliser
from exporter.expfmt import parse
from tests.support.harness import Series, free_port, parse_series, pick, wait_for
from tests.support.served import Answer, Served, in_turn

FIXTURES = Path(__file__).parent / "fixtures"
HERE = FIXTURES / "trtllm"
IDLE, BUSY, AFTER = (
    (HERE / f"trtllm-{stage}.txt").read_text() for stage in ("idle", "busy", "after-load"))
MODEL = "Qwen3-0.6B"


def readings(text: str, model: str = "", max_engines: int = 8) -> list[EngineReading]:
    exp = parse(text, KEEP)
    assert exp.errors == 0, exp.first_errors
    found, dropped = Normaliser(max_engines).normalise(exp, model)
    assert dropped == 0
    return found


def test_after_load_maps_every_field() -> None:
    (r,) = readings(AFTER)
    assert (r.model, r.dp_rank) == (MODEL, "0")  # the pid label of the gauges is dropped
    assert r.counters == {"prompt_tokens": 1222.0, "generation_tokens": 380.0}
    assert r.gauges == {"requests_waiting": 0.0, "requests_running": 0.0,
                        "kv_cache_usage_ratio": 0.0, "kv_cache_capacity_tokens": 1000 * 64}
    assert r.finished == {"stop": 5.0, "length": 2.0, "abort": 1.0}
    assert set(r.histograms) == {"time_to_first_token", "e2e_request_latency",
                                 "request_queue_time"}
    ttft = r.histograms["time_to_first_token"]
    assert ttft.bounds[0] == 0.001 and ttft.bounds[-1] == math.inf and len(ttft.bounds) == 23
    assert ttft.count == 8.0 and ttft.sum == pytest.approx(2.22)
    assert r.histograms["request_queue_time"].counts[0] == 6.0  # 6 of 8 queued <= 0.3 s
    assert not r.durations and not r.created


def test_busy_and_idle() -> None:
    (busy,) = readings(BUSY)
    # SAMPLE_ITERATION_STATS of TensorRT-LLM's own collector test.
    assert busy.gauges == {"requests_waiting": 3.0, "requests_running": 5.0,
                           "kv_cache_usage_ratio": 0.6, "kv_cache_capacity_tokens": 64000.0}
    assert busy.finished == {"stop": 1.0, "length": 1.0}
    assert busy.counters == {"prompt_tokens": 192.0, "generation_tokens": 110.0}
    # Idle: start-up info and gauges only; no counter, histogram or outcome yet.
    (idle,) = readings(IDLE)
    assert idle.key == (MODEL, "0")
    assert idle.gauges["requests_running"] == 0.0 and not idle.counters
    assert not idle.histograms and not idle.finished


def test_a_server_recognised_by_its_config_info_alone_is_up() -> None:
    info = "\n".join(line for line in IDLE.splitlines() if "model_config_info" in line) + "\n"
    (r,) = readings(info)
    assert r.key == (MODEL, "0") and not r.gauges and not r.counters


def spelled(text: str, prefix: str, reason_label: str = "finished_reason") -> str:
    return text.replace("trtllm_", prefix).replace("finished_reason=", f"{reason_label}=")


@pytest.mark.parametrize(("prefix", "label"), [("trtllm:", "finished_reason"),
                                               ("", "finish_reason"), ("", "finished_reason")])
def test_every_spelling_gives_the_same_readings(prefix: str, label: str) -> None:
    (new,) = readings(AFTER)
    (old,) = readings(spelled(AFTER, prefix, label))
    assert (old.key, old.gauges, old.counters, old.finished) == \
        (new.key, new.gauges, new.counters, new.finished)
    assert old.histograms == new.histograms


def test_the_newest_spelling_wins() -> None:
    both = AFTER + (
        "# TYPE num_requests_running gauge\n"
        'num_requests_running{engine_type="pytorch",model_name="Qwen3-0.6B",pid="1"} 7.0\n'
        "# TYPE trtllm:prompt_tokens_total counter\n"
        'trtllm:prompt_tokens_total{engine_type="pytorch",model_name="Qwen3-0.6B"} 9.0\n')
    (r,) = readings(both)
    assert r.gauges["requests_running"] == 0.0 and r.counters["prompt_tokens"] == 1222.0


def test_the_first_release_names_no_model_so_the_served_one_is_used() -> None:
    text = (HERE / "trtllm-v1.0-unprefixed.txt").read_text()
    (r,) = readings(text, model=MODEL)
    assert r.key == (MODEL, "0")
    assert r.finished == {"stop": 2.0}  # label finish_reason
    assert set(r.histograms) == {"time_to_first_token", "e2e_request_latency",
                                 "request_queue_time"}
    assert r.histograms["e2e_request_latency"].sum == pytest.approx(3.4878)
    assert not r.counters and not r.gauges  # that release had neither
    (unknown,) = readings(text)
    assert unknown.model == "unknown"


def test_dynamo_passes_the_families_through_with_a_colon() -> None:
    (r,) = readings((HERE / "trtllm-dynamo-colon.txt").read_text())
    assert r.key == ("Qwen/Qwen3-0.6B", "0")
    assert r.finished == {"stop": 2.0, "length": 1.0}
    assert r.histograms["time_to_first_token"].count == 3.0


def test_the_per_request_mean_time_per_output_token_is_no_inter_token_latency() -> None:
    (r,) = readings(AFTER)
    assert "inter_token_latency" not in r.histograms
    assert ADAPTER.support("inter_token_latency") == "absent"
    assert not any("time_per_output_token" in name for name in KEEP)
    assert ADAPTER.lacks == ("requests_swapped", "preemptions", "iterations",
                            "inter_token_latency")


def test_finish_reasons_are_normalised_to_a_bounded_set() -> None:
    lines = ["# TYPE trtllm_request_success_total counter"]
    raw = [*REASONS, "unknown", "something new"]
    lines += [f'trtllm_request_success_total{{finished_reason="{reason}",model_name="m"}} 1'
              for reason in raw]
    (r,) = readings("\n".join(lines) + "\n")
    assert r.finished == {"stop": 3.0, "length": 1.0, "abort": 1.0, "timeout": 2.0,
                          "other": 2.0}
    assert sum(r.finished.values()) == len(raw)


def test_garbage_is_skipped_and_shards_other_than_rank_0_ignored() -> None:
    text = (
        "# TYPE trtllm_num_requests_running gauge\n"
        'trtllm_num_requests_running{model_name="m",pid="1"} NaN\n'
        'trtllm_num_requests_running{model_name="m",tp_rank="1"} 9\n'
        "# TYPE trtllm_num_requests_waiting gauge\n"
        'trtllm_num_requests_waiting{model_name="m"} +Inf\n'
        "# TYPE trtllm_kv_cache_max_blocks gauge\n"
        'trtllm_kv_cache_max_blocks{model_name="m"} 100\n'
        "# TYPE trtllm_prompt_tokens_total counter\n"
        'trtllm_prompt_tokens_total{model_name="m"} 12\n'
        "trtllm_prompt_tokens_total{model_name= 13\n"
        "something else entirely\n")
    exp = parse(text, KEEP)
    assert exp.errors == 2
    (r,) = Normaliser(8).normalise(exp, "")[0]
    # No made-up values: NaN and Inf skipped, no capacity without the tokens per block.
    assert r.gauges == {} and r.counters == {"prompt_tokens": 12.0}
    assert Normaliser(8).normalise(parse("", KEEP), "") == ([], 0)


def test_the_number_of_models_is_capped() -> None:
    lines = ["# TYPE trtllm_num_requests_running gauge"]
    lines += [f'trtllm_num_requests_running{{model_name="m{i}"}} {i}' for i in range(3)]
    exp = parse("\n".join(lines) + "\n", KEEP)
    found, dropped = Normaliser(max_engines=2).normalise(exp, "")
    assert [r.model for r in found] == ["m0", "m1"] and dropped == 1


def test_the_served_model_is_read_from_v1_models() -> None:
    assert served_model((HERE / "v1-models.json").read_bytes()) == MODEL
    for body in (b"[]", b'{"data": []}', b'{"data": [{"id": 3}]}', b'"x"', b"[" * 100_000,
                 b"not json"):
        assert served_model(body) is None


def fake_engine(metrics_path: str, stages: Sequence[bytes], polls: int = 4,
                model_path: str = "", model_body: bytes = b"") -> Served:
    """A fake engine: a metrics path answered by ``stages`` in turn (each ``polls`` times,
    the last one from then on) and a model path answered by ``model_body``."""
    metrics = in_turn(stages, each=polls)

    def answer(path: str) -> Answer:
        if path.startswith(metrics_path):
            return metrics()
        return model_body if model_path and path == model_path else None

    return Served(answer)


def test_a_json_answer_is_no_trtllm_serve_metrics() -> None:
    """``/metrics`` of trtllm-serve is JSON: a clear error, never a crash or a reading."""
    body = (HERE / "metrics-iteration-stats.json").read_bytes()
    with fake_engine("/metrics", [body]) as engine:
        cfg, _ = load(parser().parse_args(["--trtllm.endpoint", f"t={engine.url}/metrics"]), {})
        source = EngineSource(ADAPTER, cfg.engines["trtllm"].endpoints[0], cfg)
        with pytest.raises(SourceError) as caught:
            source.poll()
        source.close()
    assert caught.value.reason == "no_engine_metrics"
    assert "no trtllm-serve metrics" in str(caught.value)


@dataclass(frozen=True)
class Case:
    adapter: Adapter
    files: tuple[Path, ...]
    """idle, busy, after-load."""
    model: str
    finished: dict[str, float]
    """The outcomes after the load, as the fixtures' ORIGIN.md describes them."""
    generated: float
    model_path: str = ""
    model_body: bytes = b""


def stages(kind: str) -> tuple[Path, ...]:
    return tuple(FIXTURES / kind / f"{kind}-{s}.txt" for s in ("idle", "busy", "after-load"))


CASES = {
    "trtllm": Case(trtllm.ADAPTER, stages("trtllm"), MODEL,
                   {"stop": 5, "length": 2, "abort": 1}, 380, "/v1/models",
                   (HERE / "v1-models.json").read_bytes()),
    "tgi": Case(tgi.ADAPTER, stages("tgi"), "bigscience/bloom-560m",
                {"success": 8, "invalid": 1, "abort": 1, "overloaded": 1}, 704, "/info",
                (FIXTURES / "tgi" / "info.json").read_bytes()),
    "lmdeploy": Case(lmdeploy.ADAPTER, stages("lmdeploy"), "Qwen/Qwen2.5-7B-Instruct",
                     {"success": 9, "abort": 0, "invalid": 0, "error": 0}, 2228),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Iterator[tuple[Case, Served]]:
    c = CASES[request.param]
    with fake_engine(c.adapter.metrics_path, [f.read_bytes() for f in c.files],
                     model_path=c.model_path, model_body=c.model_body) as engine:
        yield c, engine


def reading_of(c: Case, i: int) -> EngineReading:
    a = c.adapter
    (r,) = a.normaliser(8).normalise(parse(c.files[i].read_text(), a.keep), c.model)[0]
    return r


def test_the_daemon_serves_each_engine_end_to_end(case: tuple[Case, Served]) -> None:
    c, engine = case
    kind = c.adapter.kind
    port = free_port()
    args = ["--web.listen-address", f"127.0.0.1:{port}", f"--{kind}.endpoint",
            f"e={engine.url}", "--poll.interval", "200ms", "--poll.timeout", "200ms",
            "--derive.windows", "2s", "--no-collector.vllm", "--no-collector.gpu",
            "--no-collector.host"]
    cfg, web = load(parser().parse_args(args), {})
    idle, busy, after = (reading_of(c, i) for i in range(3))
    labels = {"engine": kind, "endpoint": "e", "model": c.model, "dp_rank": "0"}

    def ready() -> Series | None:
        series = parse_series(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        tokens = pick(series, "inference_node_engine_generation_tokens_total", **labels)
        rate = pick(series, "inference_node_engine_generation_tokens_per_second", **labels,
                    window="2s")
        done = tokens == [c.generated] and rate and rate[0] > 0
        return series if done else None

    daemon = Daemon(cfg, lambda: (cfg, web), web=web)
    daemon.start()
    try:
        series = wait_for(f"{kind}'s after-load figures", ready, timeout=30)
    finally:
        daemon.stop()
    assert pick(series, "inference_node_engine_up", engine=kind, endpoint="e") == [1.0]
    assert pick(series, "inference_node_exporter_collector_up", collector=kind) == [1.0]
    # One engine, labelled with the served model and rank 0; nothing else invented.
    assert {dict(lab)["model"] for (n, lab) in series if n.startswith("inference_node_engine_")
            and "model" in dict(lab)} == {c.model}
    for name, value in after.gauges.items():
        assert pick(series, f"inference_node_engine_{name}", **labels) == [value], name
    for name, value in after.counters.items():
        assert pick(series, f"inference_node_engine_{name}_total", **labels) == [value], name
    finished = {dict(lab)["reason"]: v for (n, lab), v in series.items()
                if n == "inference_node_engine_requests_finished_total"}
    assert finished == c.finished and after.finished == c.finished
    # The window's rate is its counter delta over the span it covers: since busy (the window
    # restarts when counters first appear) or, where idle already had them, since idle.
    span = pick(series, "inference_node_engine_window_span_seconds", **labels, window="2s")
    for name in (n for n in after.counters if n in RATES):  # forward passes have no rate
        (rate,) = pick(series, f"inference_node_engine_{name}_per_second", **labels,
                       window="2s")
        deltas = [after.counters[name] - r.counters[name] for r in (busy, idle)
                  if name in r.counters]
        assert any(math.isclose(rate * span[0], d, rel_tol=1e-9) for d in deltas), \
            (name, rate, span, deltas)
    # Percentiles where the engine has a histogram, from the bucket deltas; none elsewhere.
    latencies = {"time_to_first_token": "ttft", "inter_token_latency": "itl",
                 "e2e_request_latency": "e2e", "request_queue_time": "queue"}
    for key, short in latencies.items():
        p50 = pick(series, "inference_node_engine_latency_seconds", **labels, latency=short,
                   window="2s", percentile="50")
        if c.adapter.support(key) != "exact":
            assert not p50 and not pick(series, "inference_node_engine_latency_mean_seconds",
                                        **labels, latency=short), key
            continue
        h = after.histograms[key]
        bases = [r.histograms[key].counts for r in (busy, idle) if key in r.histograms]
        expected = [bucket_quantiles([0.5], h.bounds,
                                     [a - b for a, b in zip(h.counts, base, strict=True)])[0]
                    for base in bases]
        assert p50 and any(e is not None and math.isclose(p50[0], e) for e in expected), \
            (key, p50, expected)
        assert pick(series, f"inference_node_engine_{key}_seconds_count", **labels) == \
            [h.count]
    # What the engine lacks is absent.
    for signal in c.adapter.lacks:
        for family in (signal, f"{signal}_total", f"{signal}_seconds_count"):
            assert not pick(series, f"inference_node_engine_{family}", engine=kind), family
    assert sum(path.startswith(c.adapter.metrics_path) for path in engine.paths) >= 9
