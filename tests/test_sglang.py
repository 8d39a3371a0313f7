"""SGLang's names, current (0.5) and older (0.4), map onto the engine-neutral readings, and the
daemon serves recorded SGLang expositions end to end."""

from __future__ import annotations

import math
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter.cli import load, parser
from exporter.daemon import Daemon
from exporter.engines.reading import SIGNALS, EngineReading
from exporter.engines.sglang import ADAPTER, KEEP, Normaliser
from exporter.expfmt import Parser, parse
from exporter.processes import EngineProcesses
from tests.support.harness import Series, free_port, parse_series, pick, terminate, wait_for
from tests.support.served import Answer, Served

FIXTURES = Path(__file__).parent / "fixtures" / "sglang"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


IDLE, BUSY, AFTER = (fixture(f"v0.5.23-{s}.txt") for s in ("idle", "busy", "after-load"))
SMALL_IDLE, SMALL_BUSY, SMALL_AFTER = (
    fixture(f"v0.5.23-smallkv-{s}.txt") for s in ("idle", "busy", "after-load"))
OLD = fixture("v0.4-collector-busy.txt")
TINY = ("tiny-llama", "0")


def readings(text: str, max_engines: int = 8) -> list[EngineReading]:
    exp = parse(text, KEEP)
    assert exp.errors == 0, exp.first_errors
    found, dropped = Normaliser(max_engines).normalise(exp)
    assert dropped == 0
    return found


def one(text: str) -> EngineReading:
    (r,) = readings(text)
    return r


def with_copies(text: str, marker: str, replacement: str) -> str:
    """Each sample line holding ``marker`` followed by a copy with ``replacement`` instead
    and value 2v + 7 (which keeps a histogram's buckets cumulative and its count at +Inf)."""
    out = []
    for line in text.splitlines():
        out.append(line)
        if not line.startswith("#") and marker in line:
            head, _, value = line.rpartition(" ")
            out.append(f"{head.replace(marker, replacement)} {2 * float(value) + 7}")
    return "\n".join(out) + "\n"


def set_value(text: str, sample: str, value: float) -> str:
    """``text`` with every sample of the family ``sample`` (exact name) set to ``value``."""
    return re.sub(rf"^({re.escape(sample)}\{{[^}}]*\}}) \S+$", rf"\g<1> {value}", text,
                  flags=re.M)


# --- the recorded 0.5.23 server ---------------------------------------------------------

def test_idle_server_has_its_gauges_and_no_made_up_counter() -> None:
    r = one(IDLE)
    assert r.key == TINY
    assert r.gauges == {"requests_waiting": 0.0, "requests_running": 0.0,
                        "kv_cache_usage_ratio": 0.0, "kv_cache_capacity_tokens": 4096.0}
    # Only the /health probe's prefill was counted: no decode, no finished request yet.
    assert r.counters == {} and r.finished == {}
    assert set(r.histograms) == {"request_queue_time"}  # the probe queued
    assert r.histograms["request_queue_time"].count == 1.0


def test_busy_server_maps_every_field() -> None:
    r = one(BUSY)
    assert r.gauges["requests_running"] == 4.0 and r.gauges["requests_waiting"] == 0.0
    # The unrounded usage (token_usage says 0.12).
    assert r.gauges["kv_cache_usage_ratio"] == 0.121337890625
    # Counted live: 1288 decode tokens and the first token of each of the 8 requests that
    # had one (the 4 finished requests' 800 are all the tokenizer's own count has).
    assert r.counters == {"prompt_tokens": 36.0, "generation_tokens": 1288.0 + 8}
    counts = {k: h.count for k, h in r.histograms.items()}
    assert counts == {"time_to_first_token": 8.0, "inter_token_latency": 800.0,
                      "e2e_request_latency": 4.0, "request_queue_time": 9.0}
    itl = r.histograms["inter_token_latency"]
    assert itl.bounds[:2] == (0.002, 0.004) and itl.bounds[-1] == math.inf
    assert itl.counts[1] == 200.0 and itl.sum == pytest.approx(3.412668350000331)


def test_after_load_the_itl_is_the_per_step_histogram_not_the_per_request_mean() -> None:
    r = one(AFTER)
    assert r.gauges["requests_running"] == 0.0
    # 8 requests x 200 tokens: 1592 decode tokens and the first token of each, from prefill;
    # exactly the tokenizer's own count.
    assert r.counters == {"prompt_tokens": 72.0, "generation_tokens": 1600.0}
    # 1200 token-weighted observations; request_time_per_output_token has 8, one a request.
    assert r.histograms["inter_token_latency"].count == 1200.0
    assert r.histograms["e2e_request_latency"].count == 8.0


def test_small_pool_server_queues_and_its_capacity_is_read() -> None:
    busy, after = one(SMALL_BUSY), one(SMALL_AFTER)
    assert busy.gauges == {"requests_waiting": 11.0, "requests_running": 1.0,
                           "kv_cache_usage_ratio": 0.4166666666666667,
                           "kv_cache_capacity_tokens": 600.0}
    assert "prompt_tokens" not in busy.counters  # no request had finished
    assert after.counters == {"prompt_tokens": 108.0, "generation_tokens": 4800.0}
    # No retraction happened: no preemption counter, rather than a zero.
    assert "preemptions" not in after.counters


# --- the older collector ----------------------------------------------------------------

def test_older_collector_maps_onto_the_same_readings() -> None:
    r = one(OLD)
    assert r.key == ("Qwen/Qwen2.5-0.5B-Instruct", "0")
    # No full_token_usage nor max_total_num_tokens: the rounded usage, and no capacity.
    assert r.gauges == {"requests_waiting": 2.0, "requests_running": 3.0,
                        "kv_cache_usage_ratio": 0.37}
    # No live counter: the tokenizer's count at request end.
    assert r.counters == {"prompt_tokens": 1290.0, "generation_tokens": 2048.0}
    assert r.finished == {"abort": 1.0}
    assert set(r.histograms) == {"time_to_first_token", "inter_token_latency",
                                 "e2e_request_latency", "request_queue_time"}
    assert r.histograms["request_queue_time"].bounds[0] == 0.0


def test_the_live_and_the_request_end_counters_are_never_mixed() -> None:
    late = IDLE + ("# TYPE sglang:generation_tokens_total counter\n"
                   'sglang:generation_tokens_total{engine_type="unified",is_streaming="false",'
                   'model_name="tiny-llama"} 5.0\n')
    # The live counter's family is there (prefill only): decode tokens are unknown yet.
    assert "generation_tokens" not in one(late).counters
    no_live = "\n".join(line for line in AFTER.splitlines()
                        if "sglang:realtime_tokens_total" not in line) + "\n"
    assert one(no_live).counters["generation_tokens"] == 1600.0


# --- labels ------------------------------------------------------------------------------

@pytest.mark.parametrize("rank", ["tp_rank", "pp_rank", "moe_ep_rank"])
def test_other_shards_repeating_the_figures_do_not_multiply_them(rank: str) -> None:
    for text in (BUSY, AFTER, SMALL_AFTER):
        shards = with_copies(text, f'{rank}="0"', f'{rank}="1"')
        assert shards.count(f'{rank}="1"') > 20
        assert readings(shards) == readings(text)


def test_retractions_are_counted_once_though_every_rank_counts_them() -> None:
    labels = 'engine_type="unified",model_name="tiny-llama",moe_ep_rank="0",pp_rank="0"'
    text = AFTER + "# TYPE sglang:num_retracted_requests_total counter\n" + "".join(
        f'sglang:num_retracted_requests_total{{{labels},tp_rank="{tp}"}} 1.0\n'
        for tp in range(4))
    assert one(text).counters["preemptions"] == 1.0


def test_data_parallel_ranks_stay_apart_and_the_tokenizer_lands_on_rank_0() -> None:
    text = with_copies(BUSY, 'tp_rank="0"', 'dp_rank="1",tp_rank="0"')
    found = {r.key: r for r in readings(text)}
    assert set(found) == {TINY, ("tiny-llama", "1")}
    rank0, rank1 = found[TINY], found[("tiny-llama", "1")]
    assert rank0 == one(BUSY)
    assert rank1.gauges["requests_running"] == 2 * 4.0 + 7
    # The first tokens are the tokenizer's, which knows no rank: on rank 0 only.
    assert rank1.counters == {"generation_tokens": 2 * 1288.0 + 7}
    assert set(rank1.histograms) == {"request_queue_time"}  # the scheduler's only


def test_with_dp_attention_each_rank_is_read_from_its_groups_first_scheduler() -> None:
    # DP attention: rank 1's stats come from global tp_rank 4 (its attention group's first),
    # and with --enable-metrics-for-all-schedulers tp_rank 5 repeats them.
    group = with_copies(BUSY, 'moe_ep_rank="0",pp_rank="0",tp_rank="0"',
                        'dp_rank="1",moe_ep_rank="4",pp_rank="0",tp_rank="4"')
    text = with_copies(group, 'tp_rank="4"', 'tp_rank="5"')
    found = {r.key: r for r in readings(text)}
    assert set(found) == {TINY, ("tiny-llama", "1")}
    assert found[TINY] == one(BUSY)
    rank1 = found[("tiny-llama", "1")]
    assert rank1.gauges["requests_running"] == 2 * 4.0 + 7
    assert rank1.gauges["kv_cache_capacity_tokens"] == 2 * 4096.0 + 7
    assert rank1.histograms["request_queue_time"].count == 2 * 9.0 + 7


def test_streaming_splits_are_summed() -> None:
    text = with_copies(AFTER, 'is_streaming="false"', 'is_streaming="true"')
    r, base = one(text), one(AFTER)
    assert r.counters["prompt_tokens"] == 72.0 + (2 * 72.0 + 7)
    # The live decode count, and the first tokens of both splits' requests.
    assert r.counters["generation_tokens"] == 1592.0 + 8.0 + (2 * 8.0 + 7)
    ttft, ttft0 = r.histograms["time_to_first_token"], base.histograms["time_to_first_token"]
    assert ttft.counts == tuple(c + 2 * c + 7 for c in ttft0.counts)
    assert ttft.count == ttft0.count * 3 + 7
    assert r.histograms["inter_token_latency"] == base.histograms["inter_token_latency"]


def test_priority_totals_are_read_and_request_splits_summed() -> None:
    sched = 'engine_type="unified",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"'
    tok = 'engine_type="unified",is_streaming="false",model_name="m"'
    lines = ["# TYPE sglang:num_running_reqs gauge",
             f'sglang:num_running_reqs{{{sched},priority=""}} 5.0',
             f'sglang:num_running_reqs{{{sched},priority="1"}} 2.0',
             f'sglang:num_running_reqs{{{sched},priority="2"}} 3.0',
             "# TYPE sglang:num_queue_reqs gauge",
             f'sglang:num_queue_reqs{{{sched},priority="1"}} 4.0',
             f'sglang:num_queue_reqs{{{sched},priority=""}} 4.0',
             "# TYPE sglang:prompt_tokens_total counter",
             f'sglang:prompt_tokens_total{{{tok},priority=""}} 1.0',
             f'sglang:prompt_tokens_total{{{tok},priority="1"}} 10.0',
             f'sglang:prompt_tokens_total{{{tok},priority="2"}} 20.0',
             "# TYPE sglang:e2e_request_latency_seconds histogram"]
    for priority, (low, total) in (("1", (1, 2)), ("2", (0, 3))):
        labels = f'{tok},priority="{priority}"'
        lines += [f'sglang:e2e_request_latency_seconds_sum{{{labels}}} 4.0',
                  f'sglang:e2e_request_latency_seconds_bucket{{{labels},le="1.0"}} {low}',
                  f'sglang:e2e_request_latency_seconds_bucket{{{labels},le="+Inf"}} {total}',
                  f'sglang:e2e_request_latency_seconds_count{{{labels}}} {total}']
    r = one("\n".join(lines) + "\n")
    assert r.gauges == {"requests_running": 5.0, "requests_waiting": 4.0}
    assert r.counters == {"prompt_tokens": 31.0}
    e2e = r.histograms["e2e_request_latency"]
    assert (e2e.counts, e2e.sum, e2e.count) == ((1.0, 5.0), 8.0, 5.0)


@pytest.mark.parametrize(("swa", "expected"), [(0.5, 0.5), (0.05, 0.121337890625)])
def test_a_hybrid_model_reads_its_fullest_kv_pool(swa: float, expected: float) -> None:
    text = set_value(BUSY, "sglang:swa_token_usage", swa)
    assert one(text).gauges["kv_cache_usage_ratio"] == expected


def test_pid_and_model_less_series_are_not_read() -> None:
    assert 'evicted_tokens_total{cache_type="UnifiedRadixCache",dp_rank="0"' in SMALL_AFTER
    assert [r.key for r in readings(SMALL_AFTER)] == [TINY]
    exp = parse(SMALL_AFTER, KEEP)
    for name in ("sglang:num_retracted_reqs", "sglang:evicted_tokens_total",
                 "sglang:request_time_per_output_token_seconds_bucket",
                 "sglang:routing_key_running_req_count"):
        assert exp.get(name) == [], name
    assert exp.get("sglang:inter_token_latency_seconds_bucket")


# --- hostile input and the cap -----------------------------------------------------------

def test_garbage_and_foreign_input_is_tolerated() -> None:
    assert readings("# TYPE foo gauge\nfoo 1\n") == []
    text = ("# TYPE sglang:num_running_reqs gauge\n"
            'sglang:num_running_reqs{model_name="m",tp_rank="0"} NaN\n'
            'sglang:num_running_reqs{tp_rank="0"} 3\n'
            'sglang:num_running_reqs{model_name="m",tp_rank="x"} 3\n'
            'sglang:num_running_reqs{model_name="m" 3\n'
            "this is not a sample\n"
            "# TYPE sglang:num_queue_reqs gauge\n"
            'sglang:num_queue_reqs{model_name="m"} 2\n'
            "# TYPE sglang:time_to_first_token_seconds histogram\n"
            'sglang:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 1\n'
            'sglang:time_to_first_token_seconds_sum{model_name="m"} 0.05\n')
    exp = parse(text, KEEP)
    assert exp.errors == 2
    found, dropped = Normaliser(8).normalise(exp)
    assert dropped == 0 and len(found) == 1
    (r,) = found
    assert r.key == ("m", "0")
    assert r.gauges == {"requests_waiting": 2.0} and r.histograms == {}


def test_the_number_of_readings_is_capped() -> None:
    lines = ["# TYPE sglang:num_queue_reqs gauge"]
    for model in ("a", "b", "c"):
        for rank in ("0", "1"):
            lines.append(f'sglang:num_queue_reqs{{dp_rank="{rank}",model_name="{model}",'
                         f'tp_rank="0"}} {rank}')
    found, dropped = Normaliser(4).normalise(parse("\n".join(lines) + "\n", KEEP))
    assert dropped == 2
    assert {(r.model, r.dp_rank) for r in found} == {("a", "0"), ("a", "1"), ("b", "0"),
                                                      ("b", "1")}


def test_a_warm_normaliser_reads_what_a_fresh_one_does() -> None:
    warm_parser, warm = Parser(), Normaliser(8)
    for text in (IDLE, BUSY, AFTER, SMALL_IDLE, SMALL_BUSY, SMALL_AFTER, OLD, AFTER, BUSY):
        got, _ = warm.normalise(warm_parser.parse(text, KEEP))
        assert got == readings(text)


# --- the adapter's declarations and process match ----------------------------------------

def test_the_adapter_declares_what_it_reads_and_lacks() -> None:
    assert ADAPTER.lacks == ("requests_swapped", "iterations")
    assert all(ADAPTER.support(s) == "exact" for s in SIGNALS
               if s not in ("requests_swapped", "iterations"))
    assert ADAPTER.counted_at_request_end == {"prompt_tokens", "generation_tokens"}
    assert not ADAPTER.means and ADAPTER.model_info is None
    assert ADAPTER.default_url == "http://127.0.0.1:30000/metrics"
    for names in ADAPTER.names.values():
        assert all(n in KEEP for n in names)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_sglang_processes_are_found_by_their_command_line(tmp_path: Path) -> None:
    package = tmp_path / "lib" / "sglang"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "launch_server.py").write_text("import time\ntime.sleep(120)\n")
    cli = tmp_path / "bin" / "sglang"
    cli.parent.mkdir()
    cli.write_text("import time\ntime.sleep(120)\n")
    port = free_port()
    env = {"PYTHONPATH": str(tmp_path / "lib"), "PATH": "/usr/bin:/bin"}
    module = subprocess.Popen([sys.executable, "-m", "sglang.launch_server", "--model-path",
                               "m", "--port", str(port)], env=env)
    serve = subprocess.Popen([sys.executable, str(cli), "serve", "--model-path", "m"], env=env)
    try:
        def found(at: int) -> frozenset[int] | None:
            reading = EngineProcesses(at, ADAPTER.processes, ADAPTER.default_port).read()
            return None if reading is None else reading.pids

        assert wait_for("the launch_server process", lambda: found(port)) == {module.pid}
        assert found(free_port()) is None
        if not _listening(ADAPTER.default_port):  # `sglang serve` without --port: 30000
            assert wait_for("the sglang serve process",
                            lambda: found(ADAPTER.default_port)) == {serve.pid}
    finally:
        terminate(module)
        terminate(serve)


# --- end to end -------------------------------------------------------------------------

def recorded_page(body: str) -> Callable[[str], Answer]:
    """Answers ``/metrics`` with one recorded exposition."""
    data = body.encode()
    return lambda path: data if path == "/metrics" else None


@pytest.fixture
def recorded() -> Iterator[Served]:
    """Serves the idle exposition until the test serves another (``recorded.answer = ...``)."""
    with Served(recorded_page(IDLE), "text/plain; version=0.0.4; charset=utf-8") as engine:
        yield engine


E = "inference_node_engine_"
L = {"engine": "sglang", "endpoint": "s", "model": "tiny-llama", "dp_rank": "0"}


def _delta_bucket(name: str, before: str, after: str) -> tuple[float, float, float]:
    """(observations, lower, upper bound) of the bucket holding the median of the
    observations that ``name`` gained between two expositions (read with another parser)."""
    def buckets(text: str) -> dict[float, float]:
        out: dict[float, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name + "_bucket":
                    le = float(s.labels["le"])
                    out[le] = out.get(le, 0.0) + s.value
        return out

    b, a = buckets(before), buckets(after)
    bounds = sorted(a)
    delta = [a[le] - b.get(le, 0.0) for le in bounds]
    total = delta[-1]
    i = next(i for i, c in enumerate(delta) if c >= total / 2)
    return total, (bounds[i - 1] if i else 0.0), bounds[i]


def test_the_daemon_serves_a_recorded_sglang_end_to_end(recorded: Served) -> None:
    port = free_port()
    args = ["--web.listen-address", f"127.0.0.1:{port}", "--sglang.endpoint",
            f"s={recorded.url}", "--poll.interval", "200ms", "--poll.timeout", "200ms",
            "--derive.windows", "2s", "--no-collector.vllm", "--no-collector.gpu",
            "--no-collector.host"]
    cfg, web = load(parser().parse_args(args), {})
    daemon = Daemon(cfg, lambda: (cfg, web), web=web)
    texts: list[str] = []

    def until(what: str, done: Callable[[Series], bool]) -> Series:
        def check() -> Series | None:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            texts.append(text)
            series = parse_series(text)
            return series if done(series) else None
        return wait_for(what, check, timeout=30)

    def one_of(series: Series, metric: str, **labels: str) -> float:
        (value,) = pick(series, metric, **L, **labels)
        return value

    daemon.start()
    try:
        s = until("the idle server", lambda s: bool(pick(s, E + "requests_running", **L)))
        assert pick(s, E + "up", engine="sglang", endpoint="s") == [1.0]
        assert one_of(s, E + "kv_cache_capacity_tokens") == 4096.0
        assert one_of(s, E + "request_queue_time_seconds_count") == 1.0
        for absent in ("generation_tokens_total", "prompt_tokens_total", "preemptions_total",
                       "requests_finished_total", "requests_swapped"):
            assert not pick(s, E + absent, engine="sglang"), absent

        recorded.answer = recorded_page(BUSY)
        s = until("the busy server", lambda s: pick(s, E + "requests_running", **L) == [4.0])
        assert one_of(s, E + "kv_cache_usage_ratio") == 0.121337890625
        assert one_of(s, E + "generation_tokens_total") == 1288.0 + 8
        assert one_of(s, E + "prompt_tokens_total") == 36.0
        # Hold the busy figures for longer than the window, so that it starts among them.
        until("a full window of busy readings", lambda s: any(
            v >= 1.9 for v in pick(s, E + "window_span_seconds", **L, window="2s")))

        recorded.answer = recorded_page(AFTER)
        s = until("the rates after the load", lambda s: any(
            v > 0 for v in pick(s, E + "generation_tokens_per_second", **L, window="2s")))
        span = one_of(s, E + "window_span_seconds", window="2s")
        assert one_of(s, E + "generation_tokens_total") == 1600.0
        # The window's rate times its span is the counters' increase since the busy reading.
        assert one_of(s, E + "generation_tokens_per_second", window="2s") * span == \
            pytest.approx(1600.0 - 1296.0)
        assert one_of(s, E + "prompt_tokens_per_second", window="2s") * span == \
            pytest.approx(72.0 - 36.0)
        # Prompt tokens are counted at request end: no rate over one poll interval. Decode
        # tokens come from the live counter, which has one.
        assert not pick(s, E + "prompt_tokens_per_second", engine="sglang", window="poll")
        assert pick(s, E + "generation_tokens_per_second", engine="sglang", window="poll")
        # Percentiles from the window's bucket deltas, where the window has observations.
        for key, name in (("itl", "sglang:inter_token_latency_seconds"),
                          ("e2e", "sglang:e2e_request_latency_seconds")):
            total, low, high = _delta_bucket(name, BUSY, AFTER)
            assert one_of(s, E + "latency_window_observations", latency=key,
                          window="2s") == total
            p50 = one_of(s, E + "latency_seconds", latency=key, window="2s", percentile="50")
            assert low < p50 <= high, (key, low, p50, high)
        for key in ("ttft", "queue"):  # all observed before the window: none in it
            assert one_of(s, E + "latency_window_observations", latency=key,
                          window="2s") == 0.0
            assert not pick(s, E + "latency_seconds", **L, latency=key)
        assert not pick(s, E + "latency_mean_seconds", engine="sglang")
        assert one_of(s, E + "inter_token_latency_seconds_count") == 1200.0
        assert one_of(s, E + "restarts_total") == 0.0

        # Another server on the same endpoint: its histograms went back, a restart.
        recorded.answer = recorded_page(SMALL_IDLE)
        s = until("the new server", lambda s: pick(s, E + "kv_cache_capacity_tokens", **L)
                  == [600.0])
        assert one_of(s, E + "restarts_total") == 1.0
        assert not pick(s, E + "generation_tokens_total", engine="sglang")
    finally:
        daemon.stop()
    # Neither scheduler's pid, nor any pid label, in anything the daemon served.
    for text in texts:
        for (_name, labels) in parse_series(text):
            assert "pid" not in dict(labels)
            assert not {"29943", "31016"} & {v for _k, v in labels}
