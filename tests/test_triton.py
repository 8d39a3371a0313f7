"""Triton's core metrics and the TensorRT-LLM backend's, normalised from real and written
expositions, and served end to end by the daemon."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from exporter.cli import load, parser
from exporter.daemon import Daemon
from exporter.derive.engine_state import EngineState
from exporter.engines.adapter import ABSENT, EXACT, MEAN
from exporter.engines.reading import EngineReading
from exporter.engines.triton import ADAPTER, FAILURE_REASONS, KEEP, Normaliser
from exporter.expfmt import parse
from exporter.exposition.lines import Families
from tests.support.harness import Series, free_port, parse_series, pick, wait_for
from tests.support.served import Answer, Served

FIXTURES = Path(__file__).parent / "fixtures" / "triton"


def fixture(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text()


def readings(text: str, max_engines: int = 16) -> dict[str, EngineReading]:
    """The readings of one exposition, by model; it must parse cleanly and fit the cap."""
    exp = parse(text, KEEP)
    assert exp.errors == 0, exp.first_errors
    found, dropped = Normaliser(max_engines).normalise(exp, "")
    assert dropped == 0
    assert all(r.dp_rank == "0" for r in found)
    return {r.model: r for r in found}


def exposition(*families: tuple[str, str, list[str]]) -> str:
    """A small exposition: (family, type, sample lines) each."""
    out = []
    for name, kind, lines in families:
        out += [f"# TYPE {name} {kind}", *lines]
    return "\n".join(out) + "\n"


def finite(r: EngineReading) -> bool:
    values = [*r.gauges.values(), *r.counters.values(), *r.finished.values(),
              *(v for d in r.durations.values() for v in d)]
    for h in r.histograms.values():
        values += [*h.counts, h.sum, h.count, *(b for b in h.bounds if b != math.inf)]
    return all(math.isfinite(v) for v in values)


# --- Triton core: the real 2.51.0 captures ------------------------------------------------

def test_idle_capture_has_every_outcome_and_duration_at_zero() -> None:
    (r,) = readings(fixture("triton-idle")).values()
    assert r.key == ("tiny_llm", "0")
    assert r.finished == {"success": 0.0, "rejected": 0.0, "abort": 0.0, "error": 0.0}
    assert r.durations == {"e2e_request_latency": (0.0, 0.0), "request_queue_time": (0.0, 0.0)}
    assert r.gauges == {"requests_waiting": 0.0}
    assert r.counters == {} and r.histograms == {}


def test_busy_capture_gives_the_queue_and_durations_in_seconds() -> None:
    r = readings(fixture("triton-busy"))["tiny_llm"]
    assert r.gauges == {"requests_waiting": 6.0}  # no running gauge in core Triton
    assert r.finished["success"] == 2.0
    assert r.durations["e2e_request_latency"] == pytest.approx((0.410007, 2.0))
    assert r.durations["request_queue_time"] == pytest.approx((78e-6, 2.0))


def test_after_load_capture_counts_successes_only() -> None:
    r = readings(fixture("triton-after-load"))["tiny_llm"]
    # The model's error response and the frontend's rejection still counted as successes.
    assert r.finished == {"success": 11.0, "rejected": 0.0, "abort": 0.0, "error": 0.0}
    assert r.durations["e2e_request_latency"] == pytest.approx((11.539964, 11.0))
    assert r.durations["request_queue_time"] == pytest.approx((8.871847, 11.0))
    assert r.gauges == {"requests_waiting": 0.0}


def test_summaries_are_never_parsed_nor_read() -> None:
    text = fixture("triton-idle")
    assert "quantile=\"0.5\"} Nan" in text
    exp = parse(text, KEEP)
    assert not exp.get("nv_inference_request_summary_us")  # skipped unparsed
    # Even parsed in full, their Nan quantiles and their counts change nothing.
    (everything,) = Normaliser(4).normalise(parse(text), "")[0]
    assert everything == readings(text)["tiny_llm"] and finite(everything)


def test_nan_and_infinite_values_never_reach_a_reading_or_the_output() -> None:
    text = exposition(
        ("nv_inference_request_success", "counter",
         ['nv_inference_request_success{model="m",version="1"} 3']),
        ("nv_inference_request_duration_us", "counter",
         ['nv_inference_request_duration_us{model="m",version="1"} +Inf']),
        ("nv_inference_pending_request_count", "gauge",
         ['nv_inference_pending_request_count{model="m",version="1"} Nan']),
        ("nv_trt_llm_kv_cache_block_metrics", "gauge",
         [f'nv_trt_llm_kv_cache_block_metrics{{kv_cache_block_type="{t}",model="m"}} {v}'
          for t, v in (("max", "100"), ("used", "Nan"), ("fraction", "0.5"))]),
        ("nv_trt_llm_request_metrics", "gauge",
         [f'nv_trt_llm_request_metrics{{model="m",request_type="{t}",version="1"}} {v}'
          for t, v in (("active", "Nan"), ("scheduled", "1"), ("waiting", "Nan"))]),
        ("nv_inference_first_response_histogram_ms", "histogram",
         ['nv_inference_first_response_histogram_ms_bucket{model="m",version="1",le="100"} 1',
          'nv_inference_first_response_histogram_ms_bucket{model="m",version="1",le="+Inf"} 1',
          'nv_inference_first_response_histogram_ms_sum{model="m",version="1"} Nan',
          'nv_inference_first_response_histogram_ms_count{model="m",version="1"} 1']),
    )
    (r,) = Normaliser(4).normalise(parse(text, KEEP), "")[0]
    assert finite(r)
    assert r.finished == {"success": 3.0}
    assert r.gauges == {} and r.durations == {} and r.histograms == {}
    state = EngineState((60.0,), (0.5,), 1.0, ADAPTER.counted_at_request_end)
    for t, one in enumerate((r, *readings(fixture("triton-idle")).values())):
        out = Families()
        state.render(out, 'engine="triton"', state.update(float(t), one))
        assert not [line for lines in out.lines.values() for line in lines
                    if "nan" in line.lower() or "inf " in line.lower()]


def test_failure_reasons_are_normalised_to_few_words() -> None:
    lines = [f'nv_inference_request_failure{{model="m",reason="{reason}",version="1"}} {n}'
             for reason, n in (("REJECTED", 1), ("CANCELED", 2), ("BACKEND", 4), ("OTHER", 8),
                               ("SOMETHING_NEW", 16))]
    lines.append('nv_inference_request_failure{model="old",version="1"} 32')  # before 24.07
    r = readings(exposition(("nv_inference_request_failure", "counter", lines)))
    assert r["m"].finished == {"rejected": 1.0, "abort": 2.0, "error": 4.0 + 8.0 + 16.0}
    assert r["old"].finished == {"error": 32.0}
    assert set(FAILURE_REASONS.values()) == {"rejected", "abort", "error"}


def test_versions_gpus_and_tags_of_one_model_are_summed() -> None:
    success, duration, pending = [], [], []
    for version, gpu, n in (("1", "GPU-a", 3), ("1", "GPU-b", 5), ("2", "", 7)):
        labels = f'model="resnet",version="{version}",_team="vision"' + \
                 (f',gpu_uuid="{gpu}"' if gpu else "")
        success.append(f"nv_inference_request_success{{{labels}}} {n}")
        duration.append(f"nv_inference_request_duration_us{{{labels}}} {n * 1000}")
        pending.append(f"nv_inference_pending_request_count{{{labels}}} {n % 2}")
    found = readings(exposition(("nv_inference_request_success", "counter", success),
                                ("nv_inference_request_duration_us", "counter", duration),
                                ("nv_inference_pending_request_count", "gauge", pending)))
    assert list(found) == ["resnet"]
    r = found["resnet"]
    assert r.finished == {"success": 15.0}
    assert r.durations == {"e2e_request_latency": pytest.approx((0.015, 15.0))}
    assert r.gauges == {"requests_waiting": 3.0}


def test_models_beyond_the_cap_are_dropped_and_counted() -> None:
    text = fixture("trtllm-busy")
    exp = parse(text, KEEP)
    found, dropped = Normaliser(2).normalise(exp, "")
    assert [r.model for r in found] == ["ensemble", "postprocessing"] and dropped == 3
    # The backend's families of a dropped model make no reading of their own.
    assert all("kv_cache_usage_ratio" not in r.gauges for r in found)


@pytest.mark.parametrize("text", [
    "", "garbage\n\x00\x01 not a metric {{{\n", "nv_inference_request_success 5\n",
    'nv_inference_request_success{model=""} 5\n',
    'nv_inference_request_success{version="1"} 5\nnv_trt_llm_request_metrics{request_type="x"} 1\n',
    'nv_trt_llm_request_metrics{model="m"} 1\nnv_trt_llm_kv_cache_block_metrics{model="m"} 2\n',
])
def test_garbage_and_unlabelled_samples_make_no_reading(text: str) -> None:
    found, dropped = Normaliser(4).normalise(parse(text, KEEP), "")
    assert found == [] and dropped == 0


def test_malformed_lines_among_real_ones_are_skipped_and_negative_gauges_dropped() -> None:
    text = fixture("triton-busy").replace(
        "# HELP nv_inference_exec_count", 'nv_inference_count{model="tiny_llm" 2\n'
        'nv_inference_count{model="tiny_llm",version="1"} x\n# HELP nv_inference_exec_count')
    exp = parse(text, KEEP)
    assert exp.errors == 0  # in a family that is not read: skipped unparsed
    assert Normaliser(4).normalise(exp, "")[0] == list(readings(fixture("triton-busy")).values())
    text = text.replace('nv_inference_request_success{model="tiny_llm",version="1"} 2',
                        'nv_inference_request_success{model="tiny_llm",version="1"} 2\n'
                        'nv_inference_request_success{model="tiny_llm",version="2"} x')
    text = text.replace('pending_request_count{model="tiny_llm",version="1"} 6',
                        'pending_request_count{model="tiny_llm",version="1"} -3')
    exp = parse(text, KEEP)
    assert exp.errors == 1
    (r,) = Normaliser(4).normalise(exp, "")[0]
    assert r.finished["success"] == 2.0 and "requests_waiting" not in r.gauges


# --- the TensorRT-LLM backend: expositions written from its source -----------------------

def test_backend_gauges_and_token_counters_while_busy() -> None:
    found = readings(fixture("trtllm-busy"))
    assert list(found) == ["ensemble", "postprocessing", "preprocessing", "tensorrt_llm_bls",
                           "tensorrt_llm"]
    r = found["tensorrt_llm"]
    # active 8 = scheduled 6 + waiting 2: running is the scheduled part.
    assert r.gauges == {"requests_waiting": 2.0, "requests_running": 6.0,
                        "kv_cache_usage_ratio": 72 / 128, "kv_cache_capacity_tokens": 128 * 32}
    # Token-length histogram sums, observed as each request ended: 4 x 128 in, 4 x 256 out.
    assert r.counters == {"prompt_tokens": 512.0, "generation_tokens": 1024.0}
    assert r.durations["e2e_request_latency"] == pytest.approx((15.480113, 4.0))
    # The other models of the ensemble have the core figures only.
    assert found["postprocessing"].gauges == {"requests_waiting": 3.0}
    assert found["ensemble"].finished["success"] == 4.0
    assert found["ensemble"].counters == {}


def test_backend_waiting_is_preferred_to_the_core_queue() -> None:
    text = fixture("trtllm-busy").replace(
        'nv_inference_pending_request_count{model="tensorrt_llm",version="1"} 0',
        'nv_inference_pending_request_count{model="tensorrt_llm",version="1"} 5')
    assert readings(text)["tensorrt_llm"].gauges["requests_waiting"] == 2.0


def test_backend_before_its_first_iteration_has_no_kv_cache_figures() -> None:
    r = readings(fixture("trtllm-idle"))["tensorrt_llm"]
    assert r.gauges == {"requests_waiting": 0.0, "requests_running": 0.0}
    assert r.counters == {"prompt_tokens": 0.0, "generation_tokens": 0.0}


def test_backend_after_load() -> None:
    r = readings(fixture("trtllm-after-load"))["tensorrt_llm"]
    assert r.gauges == {"requests_waiting": 0.0, "requests_running": 0.0,
                        "kv_cache_usage_ratio": 0.0, "kv_cache_capacity_tokens": 4096.0}
    assert r.counters == {"prompt_tokens": 12 * 128.0, "generation_tokens": 12 * 256.0}
    assert r.finished["success"] == 12.0


def test_older_backends_without_waiting_and_fraction_read_the_same() -> None:
    text = fixture("trtllm-busy")
    old = "\n".join(line for line in text.splitlines()
                    if 'request_type="waiting"' not in line
                    and 'kv_cache_block_type="fraction"' not in line
                    and 'kv_cache_block_type="reused"' not in line) + "\n"
    assert old != text
    assert readings(old)["tensorrt_llm"].gauges == readings(text)["tensorrt_llm"].gauges


def shift(text: str, family: str, sub: str, missing: str, order: list[str]) -> str:
    """The backend's positional bug: stat ``missing`` absent, the later values each moved
    one sub-label up, the last sub-label left at its previous value (0 here)."""
    prefix = f"{family}{{"
    values = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            labels, value = line.rsplit(" ", 1)
            values[labels.split(f'{sub}="')[1].split('"')[0]] = value
    kept = [values[k] for k in order if k != missing] + ["0"]
    moved = dict(zip(order, kept, strict=True))
    out = []
    for line in text.splitlines():
        if line.startswith(prefix):
            kind = line.split(f'{sub}="')[1].split('"')[0]
            line = f"{line.rsplit(' ', 1)[0]} {moved[kind]}"
        out.append(line)
    return "\n".join(out) + "\n"


def test_groups_shifted_by_a_missing_stat_are_left_out() -> None:
    text = fixture("trtllm-busy")
    requests_order = ["active", "max", "scheduled", "context", "waiting"]
    shifted = shift(text, "nv_trt_llm_request_metrics", "request_type", "max", requests_order)
    r = readings(shifted)["tensorrt_llm"]
    # active 8, scheduled 0, waiting 0: they contradict; neither the core queue stands in.
    assert "requests_waiting" not in r.gauges and "requests_running" not in r.gauges
    assert r.gauges["kv_cache_usage_ratio"] == 72 / 128
    kv_order = ["max", "free", "used", "tokens_per", "reused", "fraction"]
    shifted = shift(text, "nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "free",
                    kv_order)
    r = readings(shifted)["tensorrt_llm"]
    assert "kv_cache_usage_ratio" not in r.gauges and "kv_cache_capacity_tokens" not in r.gauges
    assert r.gauges["requests_running"] == 6.0


def test_two_versions_of_the_backend_model_pool_their_kv_caches() -> None:
    kv, req = [], []
    for version, used, total, per in (("1", 30, 100, 64), ("2", 10, 300, 32)):
        for kind, value in (("used", used), ("max", total), ("tokens_per", per),
                            ("fraction", used / total)):
            kv.append(f'nv_trt_llm_kv_cache_block_metrics{{kv_cache_block_type="{kind}",'
                      f'model="llm",version="{version}"}} {value}')
        for kind, value in (("active", 4), ("scheduled", 3), ("waiting", 1)):
            req.append(f'nv_trt_llm_request_metrics{{model="llm",request_type="{kind}",'
                       f'version="{version}"}} {value}')
    r = readings(exposition(("nv_trt_llm_kv_cache_block_metrics", "gauge", kv),
                            ("nv_trt_llm_request_metrics", "gauge", req)))["llm"]
    assert r.gauges == {"requests_waiting": 2.0, "requests_running": 6.0,
                        "kv_cache_usage_ratio": pytest.approx(40 / 400),
                        "kv_cache_capacity_tokens": 100 * 64 + 300 * 32}


def test_static_batching_generation_tokens_gauge_is_not_a_counter() -> None:
    text = fixture("trtllm-idle") + exposition(("nv_trt_llm_v1_metrics", "gauge", [
        'nv_trt_llm_v1_metrics{model="tensorrt_llm",v1_specific_metric="total_generation_tokens",'
        'version="1"} 20']))
    assert readings(text)["tensorrt_llm"].counters["generation_tokens"] == 0.0


# --- the opt-in time-to-first-response histogram ----------------------------------------

def test_first_response_histogram_becomes_ttft_in_seconds() -> None:
    (r,) = readings(fixture("first-response")).values()
    h = r.histograms["time_to_first_token"]
    assert h.bounds == (0.1, 0.5, 2.0, 5.0, math.inf)
    assert h.counts == (8.0, 30.0, 36.0, 37.0, 37.0)
    assert (h.sum, h.count) == pytest.approx((10.771, 37.0))
    assert set(r.histograms) == {"time_to_first_token"}


def test_a_first_response_histogram_that_is_not_cumulative_is_left_out() -> None:
    text = fixture("first-response").replace('le="2000"} 36', 'le="2000"} 3')
    assert readings(text) == {}


# --- the adapter's table ------------------------------------------------------------------

def test_the_adapter_says_what_it_gives() -> None:
    support = ADAPTER.support
    for signal in ("requests_waiting", "requests_running", "kv_cache_usage_ratio",
                   "kv_cache_capacity_tokens", "prompt_tokens", "generation_tokens",
                   "requests_finished", "time_to_first_token"):
        assert support(signal) == EXACT, signal
    assert support("e2e_request_latency") == support("request_queue_time") == MEAN
    assert ADAPTER.lacks == ("requests_swapped", "preemptions", "iterations",
                            "inter_token_latency")
    assert support("inter_token_latency") == ABSENT
    assert ADAPTER.counted_at_request_end == {"prompt_tokens", "generation_tokens"}
    assert ADAPTER.model_info is None and not ADAPTER.filters_by_name
    assert ADAPTER.default_url == "http://127.0.0.1:8002/metrics"
    read = {n for names in (*ADAPTER.names.values(), *ADAPTER.means.values()) for n in names}
    assert read <= KEEP


@pytest.mark.parametrize(("cmd", "port"), [
    (["tritonserver", "--model-repository=/models", "--metrics-port=18002"], 18002),
    (["/opt/tritonserver/bin/tritonserver", "--metrics-port", "9102", "--http-port=8000"], 9102),
    (["/opt/tritonserver/bin/tritonserver", "--http-port", "8000", "--grpc-port=8001"], None),
    (["mpirun", "-n", "2", "/opt/tritonserver/bin/tritonserver", "--metrics-port=8012", ":",
      "-n", "1", "/opt/tritonserver/bin/tritonserver", "--allow-metrics=false"], 8012),
])
def test_the_metrics_port_flag_is_read_in_both_forms(cmd: list[str], port: int | None) -> None:
    match = ADAPTER.processes
    assert match.matches(cmd) and match.port(cmd) == port
    # Without the flag, Triton serves its metrics on 8002.
    assert match.implies_default_port(cmd)
    assert not match.matches(["python", "serve.py", "--metrics-port=8002"])


# --- end to end ---------------------------------------------------------------------------

def triton_phase(phase: str) -> Callable[[str], Answer]:
    """Answers ``/core/metrics`` and ``/trt/metrics`` with their fixtures of ``phase``."""
    files = {"core": "triton-{}", "trt": "trtllm-{}"}
    bodies = {path: fixture(name.format(phase)).encode() for path, name in files.items()}

    def answer(path: str) -> Answer:
        body = bodies.get(path.split("/")[1])
        return body if body is not None and path.endswith("/metrics") else None

    return answer


@pytest.fixture
def triton() -> Iterator[Served]:
    """Serves the idle phase until the test serves another (``triton.answer = ...``)."""
    with Served(triton_phase("idle"), "text/plain; charset=utf-8") as engine:
        yield engine


CORE = {"engine": "triton", "endpoint": "core", "model": "tiny_llm", "dp_rank": "0"}
TRT = {"engine": "triton", "endpoint": "trt", "model": "tensorrt_llm", "dp_rank": "0"}


def test_the_daemon_serves_triton_and_its_backend_end_to_end(triton: Served) -> None:
    port = free_port()
    args = ["--web.listen-address", f"127.0.0.1:{port}",
            "--triton.endpoint", f"core={triton.url}/core/metrics",
            "--triton.endpoint", f"trt={triton.url}/trt/metrics",
            "--poll.interval", "200ms", "--poll.timeout", "200ms", "--derive.windows", "1m",
            "--no-collector.vllm", "--no-collector.gpu", "--no-collector.host"]
    cfg, web = load(parser().parse_args(args), {})
    daemon = Daemon(cfg, lambda: (cfg, web), web=web)
    text = ""

    def when(what: str, name: str, core: float, trt: float, **more: str) -> Series:
        """The daemon's series once both endpoints show the phase's value of ``name``."""
        def ready() -> Series | None:
            nonlocal text
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            series = parse_series(text)
            done = pick(series, name, **CORE, **more) == [core] \
                and pick(series, name, **TRT, **more) == [trt]
            return series if done else None
        return wait_for(what, ready, timeout=30)

    def one(series: Series, name: str, labels: dict[str, str], **more: str) -> float:
        (value,) = pick(series, name, **labels, **more)
        return value

    finished = "inference_node_engine_requests_finished_total"
    waiting = "inference_node_engine_requests_waiting"
    mean = "inference_node_engine_latency_mean_seconds"
    rate = "inference_node_engine_generation_tokens_per_second"
    daemon.start()
    try:
        when("the idle readings", finished, 0.0, 0.0, reason="success")
        triton.answer = triton_phase("busy")
        busy = when("the busy readings", waiting, 6.0, 2.0)
        triton.answer = triton_phase("after-load")
        after = when("the after-load readings", finished, 11.0, 12.0, reason="success")
    finally:
        daemon.stop()

    # The 1m window starts at the idle reading: its means are the busy and after-load totals.
    assert one(busy, mean, CORE, latency="e2e", window="1m") == pytest.approx(0.410007 / 2)
    assert one(busy, mean, CORE, latency="queue", window="1m") == pytest.approx(78e-6 / 2)
    assert one(after, mean, CORE, latency="e2e", window="1m") == pytest.approx(11.539964 / 11)
    assert one(after, mean, CORE, latency="queue", window="1m") == pytest.approx(8.871847 / 11)
    for reason, count in (("success", 11.0), ("rejected", 0.0), ("abort", 0.0), ("error", 0.0)):
        assert one(after, finished, CORE, reason=reason) == count
    for endpoint in ("core", "trt"):
        assert pick(after, "inference_node_engine_up", engine="triton", endpoint=endpoint) == [1.0]
    # The backend's gauges, and tokens counted at request end: window rates only, each
    # equal to the counter's increase over the span the window covers.
    assert one(busy, "inference_node_engine_requests_running", TRT) == 6.0
    assert one(busy, "inference_node_engine_kv_cache_usage_ratio", TRT) == 0.5625
    assert one(busy, "inference_node_engine_kv_cache_capacity_tokens", TRT) == 4096.0
    for series, tokens, prompt in ((busy, 1024.0, 512.0), (after, 3072.0, 1536.0)):
        assert one(series, "inference_node_engine_generation_tokens_total", TRT) == tokens
        assert one(series, "inference_node_engine_prompt_tokens_total", TRT) == prompt
        span = one(series, "inference_node_engine_window_span_seconds", TRT, window="1m")
        assert one(series, rate, TRT, window="1m") * span == pytest.approx(tokens)
        assert not pick(series, rate, **TRT, window="poll")
    assert one(after, mean, {**TRT, "model": "ensemble"}, latency="e2e", window="1m") == \
        pytest.approx(55.391032 / 12)
    # What Triton lacks is absent, never a made-up value; no percentile from a mean.
    assert not pick(after, "inference_node_engine_latency_seconds", engine="triton")
    assert not pick(after, "inference_node_engine_time_to_first_token_seconds_count",
                    engine="triton")
    for name in ("requests_running", "kv_cache_usage_ratio", "generation_tokens_total",
                 "preemptions_total"):
        assert not pick(after, f"inference_node_engine_{name}", **CORE), name
    assert not pick(after, "inference_node_engine_preemptions_total", engine="triton")
    assert pick(after, "inference_node_engine_restarts_total", engine="triton") == [0.0] * 6
    assert not [line for line in text.splitlines()
                if 'engine="triton"' in line and ("nan" in line.lower() or "inf" in
                                                  line.rsplit(" ", 1)[-1].lower())]
