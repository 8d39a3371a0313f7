"""llama.cpp (exporter/engines/llamacpp.py): its real expositions normalised, its model asked
of ``/v1/models``, its process told from its command line, and the daemon serving it end to
end: means where it has cumulative seconds, no percentile anywhere, lumpy counters' rates
only over windows, and a server started without ``--metrics`` reported down."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from exporter.cli import load, parser
from exporter.daemon import Daemon
from exporter.derive.engine_state import EngineState
from exporter.engines.adapter import ABSENT, EXACT, MEAN
from exporter.engines.common import listed_model as served_model
from exporter.engines.llamacpp import ADAPTER, KEEP, Normaliser
from exporter.engines.reading import EngineReading
from exporter.expfmt import Parser
from exporter.processes import EngineProcesses
from tests.support.harness import Series, free_port, parse_series, pick, wait_for
from tests.support.served import Answer, Served, in_turn

FIXTURES = Path(__file__).parent / "fixtures" / "llamacpp"
SEQUENCE = ("llamacpp-idle.txt", "llamacpp-busy.txt", "llamacpp-after-load.txt")
MODEL = "../models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"
"""The ``id`` of fixtures/llamacpp/models.json."""


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def normalise(text: str, model: str = "tiny", max_engines: int = 8
              ) -> tuple[list[EngineReading], int]:
    return Normaliser(max_engines).normalise(Parser().parse(text, KEEP), model)


def one(text: str, model: str = "tiny") -> EngineReading:
    readings, dropped = normalise(text, model)
    assert dropped == 0 and len(readings) == 1, readings
    return readings[0]


# --- the normaliser on the real captures --------------------------------------------------

def test_idle_is_one_reading_of_the_served_model_all_zero() -> None:
    r = one(fixture("llamacpp-idle.txt"))
    assert r.key == ("tiny", "0")
    assert r.gauges == {"requests_waiting": 0.0, "requests_running": 0.0}
    assert r.counters == {"prompt_tokens": 0.0, "generation_tokens": 0.0, "iterations": 0.0}
    assert r.durations == {"inter_token_latency": (0.0, 0.0)}


def test_busy_maps_deferred_to_waiting_and_adds_cached_prompt_tokens() -> None:
    r = one(fixture("llamacpp-busy.txt"))
    assert r.gauges == {"requests_waiting": 2.0, "requests_running": 4.0}
    # 160 processed + 152 from the prompt cache: the 8 requests that got a slot, 39 each.
    assert r.counters["prompt_tokens"] == 312.0 == 8 * 39
    # Generated tokens are counted when a request ends: the 4 finished, 400 each.
    assert r.counters["generation_tokens"] == 1600.0
    assert r.durations == {"inter_token_latency": (1.11702, 1600.0)}


def test_after_load_counts_every_prompt_token_once() -> None:
    r = one(fixture("llamacpp-after-load.txt"))
    # 10 x 39 prompt tokens; the decode calls are the forward passes.
    assert r.counters == {"prompt_tokens": 390.0, "generation_tokens": 4000.0,
                          "iterations": 1234.0}
    assert r.gauges == {"requests_waiting": 0.0, "requests_running": 0.0}
    seconds, tokens = r.durations["inter_token_latency"]
    assert (seconds, tokens) == (2.76496, 4000.0)


def test_what_llama_cpp_lacks_is_absent_and_its_averages_are_not_read() -> None:
    r = one(fixture("llamacpp-after-load.txt"))
    assert not r.histograms and not r.finished and not r.created
    assert "kv_cache_usage_ratio" not in r.gauges and "preemptions" not in r.counters
    # The scrape-window and lifetime averages move freely without changing the reading.
    text = fixture("llamacpp-after-load.txt")
    for name in ("prompt_tokens_seconds", "predicted_tokens_seconds", "n_busy_slots_per_decode",
                 "prompt_seconds_total", "n_tokens_max"):
        assert f"llamacpp:{name}" not in KEEP
        text = "\n".join(f"llamacpp:{name} 12345" if line.startswith(f"llamacpp:{name} ")
                         else line for line in text.splitlines()) + "\n"
    assert text != fixture("llamacpp-after-load.txt")
    assert one(text) == r


def test_an_older_build_without_the_cached_counter_gives_its_processed_count() -> None:
    r = one(fixture("llamacpp-older-build.txt"))
    # Six significant digits: 1.23457e+06 is read as the float it prints.
    assert r.counters == {"prompt_tokens": 1234570.0, "generation_tokens": 4567890.0,
                          "iterations": 2051230.0}
    assert r.gauges == {"requests_waiting": 1.0, "requests_running": 3.0}
    # Its KV-cache ratio counts the cells idle slots keep for their prompt cache: not read.
    assert "kv_cache_usage_ratio" not in r.gauges
    assert r.durations["inter_token_latency"] == (91357.8, 4567890.0)


# --- labels, cap and garbage --------------------------------------------------------------

def test_the_model_comes_from_the_caller_and_is_unknown_without_one() -> None:
    assert one(fixture("llamacpp-busy.txt"), MODEL).key == (MODEL, "0")
    assert one(fixture("llamacpp-busy.txt"), "").key == ("unknown", "0")


def test_the_cap_drops_the_reading_it_has_no_room_for() -> None:
    assert len(normalise(fixture("llamacpp-busy.txt"), max_engines=1)[0]) == 1
    assert normalise(fixture("llamacpp-busy.txt"), max_engines=0) == ([], 1)


def test_an_answer_without_llama_cpp_metrics_gives_no_reading() -> None:
    assert normalise("") == ([], 0)
    assert normalise("# TYPE vllm:num_requests_running gauge\n"
                     'vllm:num_requests_running{model_name="m"} 3\n') == ([], 0)
    # The averages alone are not llama.cpp's readings.
    assert normalise("llamacpp:predicted_tokens_seconds 1452.72\n") == ([], 0)


def test_garbage_and_non_finite_values_are_skipped() -> None:
    text = ("llamacpp:requests_processing NaN\n"
            "llamacpp:requests_deferred 2\n"
            "this is not a sample line\n"
            "llamacpp:tokens_predicted_total +Inf\n"
            "llamacpp:prompt_tokens_total 10\n"
            "llamacpp:tokens_predicted_seconds_total 0.5\n")
    r = one(text)
    assert r.gauges == {"requests_waiting": 2.0}
    assert r.counters == {"prompt_tokens": 10.0}  # no cached counter: processed alone
    assert r.durations == {}  # seconds without a finite token count make no mean


def test_a_label_split_is_summed() -> None:
    text = ('llamacpp:requests_processing{slot_group="a"} 1\n'
            'llamacpp:requests_processing{slot_group="b"} 2\n')
    assert one(text).gauges == {"requests_running": 3.0}


def test_cached_tokens_without_the_processed_count_are_not_prompt_tokens() -> None:
    r = one("llamacpp:requests_processing 1\nllamacpp:prompt_tokens_cached_total 99\n")
    assert "prompt_tokens" not in r.counters


@pytest.mark.parametrize("body", [
    b"", b"not json", b"\xff\xfe", b"[1, 2]", b'{"data": []}', b'{"data": [1]}',
    b'{"data": [{"id": 7}]}', b'{"data": [{"id": "  "}]}', b'{"data": {"id": "x"}}',
    b"[" * 100_000,
])
def test_a_models_answer_that_does_not_say_gives_none(body: bytes) -> None:
    assert served_model(body) is None


def test_the_models_answer_names_the_model() -> None:
    assert served_model((FIXTURES / "models.json").read_bytes()) == MODEL
    assert served_model(b'{"object":"list","data":[{"id":"tiny-llama"},{"id":"b"}]}') == \
        "tiny-llama"


# --- the adapter's table ------------------------------------------------------------------

def test_the_adapter_says_what_it_gives() -> None:
    support = ADAPTER.support
    assert support("requests_waiting") == support("prompt_tokens") == EXACT
    assert support("inter_token_latency") == MEAN
    for signal in ("time_to_first_token", "e2e_request_latency", "request_queue_time",
                   "kv_cache_usage_ratio", "preemptions", "requests_finished"):
        assert support(signal) == ABSENT, signal
    assert ADAPTER.counted_at_request_end == {"prompt_tokens", "generation_tokens"}
    assert ADAPTER.model_info is not None and ADAPTER.model_info.path == "/v1/models"
    read = {n for names in (*ADAPTER.names.values(), *ADAPTER.means.values()) for n in names}
    assert read | {"llamacpp:prompt_tokens_cached_total"} == KEEP
    assert ADAPTER.default_url == "http://127.0.0.1:8080/metrics"


def test_request_end_counters_have_window_rates_and_no_poll_rate() -> None:
    state = EngineState((10.0,), (0.5,), 1.0, ADAPTER.counted_at_request_end)
    rates = {}
    for t, name in zip((0.0, 1.0, 2.0), SEQUENCE, strict=True):
        rates = state.update(t, one(fixture(name))).rates
    assert "poll" not in rates["generation_tokens"] and "poll" not in rates["prompt_tokens"]
    assert rates["generation_tokens"]["10s"] == pytest.approx(4000 / 2.0)
    assert rates["prompt_tokens"]["10s"] == pytest.approx(390 / 2.0)


# --- the process ----------------------------------------------------------------------------

@pytest.fixture
def fake_server() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes whose command line is a llama-server's (Python, named llama-server)."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
        proc.wait(10)


def start_as_llama_server(started: list[subprocess.Popen[bytes]], *args: str) -> int:
    proc = subprocess.Popen(["llama-server", "-c", "import time; time.sleep(60)", *args],
                            executable=sys.executable)
    started.append(proc)
    return proc.pid


def test_a_llama_server_is_told_by_its_port_flag_or_its_default(
        fake_server: list[subprocess.Popen[bytes]]) -> None:
    port, default = free_port(), free_port()
    flagged = start_as_llama_server(fake_server, "-m", "m.gguf", "--port", str(port))
    plain = start_as_llama_server(fake_server, "-m", "m.gguf")

    def pids(at: int) -> set[int] | None:
        found = EngineProcesses(at, ADAPTER.processes, default_port=default).read()
        return None if found is None else set(found.pids)

    assert wait_for("the flagged server", lambda: pids(port) == {flagged})
    # No --port: llama-server listens on its default port.
    assert wait_for("the default-port server", lambda: pids(default) == {plain})
    assert pids(free_port()) is None


# --- end to end -----------------------------------------------------------------------------

JSON_TYPE = "application/json; charset=utf-8"


def llama_server(metrics: bool = True) -> Served:
    """Serves the captures in order (idle, busy, then after-load on every later poll), and
    the models answer; or, started "without --metrics", llama.cpp's 501."""
    polls = in_turn([(FIXTURES / name).read_bytes() for name in SEQUENCE])
    models = (FIXTURES / "models.json").read_bytes()
    disabled = (FIXTURES / "metrics-disabled-501.json").read_bytes()

    def answer(path: str) -> Answer:
        if path == "/v1/models":
            return 200, JSON_TYPE, models
        if path == "/metrics":
            return polls() if metrics else (501, JSON_TYPE, disabled)
        return None

    return Served(answer, "text/plain; version=0.0.4")


def serve(server: Served, what: str, done: Callable[[Series], bool]) -> Series:
    """The daemon's series polling ``server``, once they are ``done``."""
    port = free_port()
    args = ["--web.listen-address", f"127.0.0.1:{port}", "--llamacpp.endpoint",
            f"l={server.url}", "--poll.interval", "200ms", "--poll.timeout", "200ms",
            "--derive.windows", "30s", "--no-collector.vllm", "--no-collector.gpu",
            "--no-collector.host"]
    cfg, web = load(parser().parse_args(args), {})
    daemon = Daemon(cfg, lambda: (cfg, web), web=web)
    daemon.start()
    try:
        def ready() -> Series | None:
            answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            assert answer.status_code == 200
            series = parse_series(answer.text)
            return series if done(series) else None

        return wait_for(what, ready, timeout=30)
    finally:
        daemon.stop()


@pytest.fixture
def llamacpp() -> Iterator[Served]:
    with llama_server() as engine:
        yield engine


def test_the_daemon_serves_llama_cpp_end_to_end(llamacpp: Served) -> None:
    labels = {"engine": "llamacpp", "endpoint": "l", "model": MODEL, "dp_rank": "0"}

    def after_load(series: Series) -> bool:
        return pick(series, "inference_node_engine_generation_tokens_total", **labels) == \
            [4000.0] and bool(pick(series, "inference_node_engine_latency_mean_seconds",
                                   **labels, latency="itl", window="30s"))

    series = serve(llamacpp, "the after-load poll", after_load)
    assert llamacpp.paths.count("/metrics") >= len(SEQUENCE)
    assert pick(series, "inference_node_engine_up", engine="llamacpp", endpoint="l") == [1.0]
    assert pick(series, "inference_node_exporter_collector_up", collector="llamacpp",
                source="l") == [1.0]
    # Exactly one engine, labelled with the model /v1/models named.
    running = pick(series, "inference_node_engine_requests_running", engine="llamacpp")
    assert running == [0.0] and pick(series, "inference_node_engine_requests_running", **labels)
    assert pick(series, "inference_node_engine_requests_waiting", **labels) == [0.0]
    prompt = pick(series, "inference_node_engine_prompt_tokens_total", **labels)
    generated = pick(series, "inference_node_engine_generation_tokens_total", **labels)
    assert prompt == [390.0] and generated == [4000.0]
    assert pick(series, "inference_node_engine_restarts_total", **labels) == [0.0]
    # The window holds every poll since the first (idle): its rates are the whole deltas
    # over the span it covers.
    (span,) = pick(series, "inference_node_engine_window_span_seconds", **labels, window="30s")
    assert 0.2 <= span <= 30.0
    (gen_rate,) = pick(series, "inference_node_engine_generation_tokens_per_second", **labels,
                       window="30s")
    (prompt_rate,) = pick(series, "inference_node_engine_prompt_tokens_per_second", **labels,
                          window="30s")
    assert gen_rate * span == pytest.approx(4000.0, rel=1e-6)
    assert prompt_rate * span == pytest.approx(390.0, rel=1e-6)
    # Both jump by whole requests: no rate over one poll interval.
    for family in ("inference_node_engine_generation_tokens_per_second",
                   "inference_node_engine_prompt_tokens_per_second"):
        assert not pick(series, family, **labels, window="poll")
    # The mean gap between a request's tokens, summed over slots: 2.76496 s over 4000 tokens.
    assert pick(series, "inference_node_engine_latency_mean_seconds", **labels, latency="itl",
                window="30s") == [pytest.approx(2.76496 / 4000)]
    means = [lab for (name, lab) in series if name == "inference_node_engine_latency_mean_seconds"
             and ("engine", "llamacpp") in lab]
    assert {dict(lab)["latency"] for lab in means} == {"itl"}
    # What llama.cpp lacks is absent, never a made-up value.
    for family in ("inference_node_engine_latency_seconds",
                   "inference_node_engine_latency_window_observations",
                   "inference_node_engine_kv_cache_usage_ratio",
                   "inference_node_engine_kv_cache_capacity_tokens",
                   "inference_node_engine_requests_swapped",
                   "inference_node_engine_preemptions_total",
                   "inference_node_engine_preemptions_per_second",
                   "inference_node_engine_requests_finished_total"):
        assert not pick(series, family, engine="llamacpp"), family
    assert not [name for (name, lab) in series if ("engine", "llamacpp") in lab and any(
        name.startswith(f"inference_node_engine_{row}") for row in (
            "time_to_first_token", "inter_token_latency", "e2e_request", "request_queue"))]
    assert math.isfinite(gen_rate) and gen_rate > 0


def test_a_server_without_metrics_is_down_with_its_http_status() -> None:
    with llama_server(metrics=False) as engine:
        series = serve(engine, "a failed poll", lambda series: bool(pick(
            series, "inference_node_exporter_collector_errors_total", collector="llamacpp",
            source="l", reason="http_status")))
    assert pick(series, "inference_node_exporter_collector_up", collector="llamacpp",
                source="l") == [0.0]
    assert pick(series, "inference_node_engine_up", engine="llamacpp", endpoint="l") == [0.0]
    assert not pick(series, "inference_node_engine_requests_running", engine="llamacpp")
    assert not pick(series, "inference_node_exporter_collector_errors_total",
                    collector="llamacpp", reason="internal")
