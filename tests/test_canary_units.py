"""The canary's pieces alone: its request bodies and stream reading, its exact windowed
percentiles and fine buckets, its settings and their messages."""

from __future__ import annotations

import itertools
import json
import math
import random
from array import array
from pathlib import Path

import pytest

from exporter.canary.api import (
    OPENAI,
    OPENAI_NO_IGNORE_EOS,
    TRITON,
    ProbeError,
    model_from_index,
    model_from_models,
    prompt_text,
    read_chunk,
)
from exporter.canary.record import BUCKETS, OUTCOMES, SPECS, Probe, Record, percentile
from exporter.cli import load, parser
from exporter.config import Config
from exporter.exposition.lines import Families
from exporter.settings import ConfigError
from tests.support.harness import Series, parse_series, pick


def test_requests_are_fixed_and_say_what_each_engine_takes() -> None:
    path, body = OPENAI.request("m", prompt_text(8), 16)
    sent = json.loads(body)
    assert path == "/v1/completions"
    assert sent == {"model": "m", "prompt": "the quick brown fox jumps over a lazy",
                    "max_tokens": 16, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}, "ignore_eos": True}
    assert "ignore_eos" not in json.loads(OPENAI_NO_IGNORE_EOS.request("m", "x", 4)[1])
    path, body = TRITON.request("a b/c", "x", 4)
    assert path == "/v2/models/a%20b%2Fc/generate_stream"
    assert json.loads(body)["text_input"] == "x"
    assert len(prompt_text(100).split()) == 100
    assert prompt_text(40) == prompt_text(40)


def test_stream_chunks() -> None:
    assert read_chunk(OPENAI, b"[DONE]") is None
    partial = read_chunk(OPENAI, b'{"choices":[{"text":""}]}')  # a partial character
    assert partial is not None and partial.token
    usage = read_chunk(OPENAI, b'{"choices":[],"usage":{"prompt_tokens":9,'
                               b'"completion_tokens":16}}')
    assert usage is not None and not usage.token
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 16)
    triton = read_chunk(TRITON, b'{"model_name":"m","text_output":"a"}')
    assert triton is not None and triton.token
    for bad, reason in ((b"garbage", "bad_stream"), (b"[1]", "bad_stream"),
                        (b'{"choices":[{"index":0}]}', "bad_stream"),
                        (b'{"error":{"message":"boom"}}', "http_status"),
                        (b'{"choices":"x"}', "bad_stream"), (b'[' * 100_000, "bad_stream")):
        with pytest.raises(ProbeError) as err:
            read_chunk(OPENAI, bad)
        assert err.value.reason == reason
    with pytest.raises(ProbeError):
        read_chunk(TRITON, b'{"text_output": 3}')


def test_models_from_listings() -> None:
    assert model_from_models(b'{"data":[{"id":"tiny"},{"id":"other"}]}') == "tiny"
    assert model_from_index(b'[{"name":"a","state":"UNAVAILABLE"},{"name":"b"}]') == "b"
    for junk in (b"", b"{}", b'{"data":[]}', b'{"data":[{"id":""}]}', b"[", b'{"data":[1]}'):
        assert model_from_models(junk) is None
    assert model_from_index(b"{}") is None


def test_percentiles_are_exact() -> None:
    rng = random.Random(7)
    values = sorted(rng.uniform(0, 10) for _ in range(999))
    assert percentile(values, 0.5) == values[499]
    assert percentile(values, 0.0) == values[0]
    assert percentile(values, 1.0) == values[-1]
    assert percentile([1.0, 2.0], 0.25) == 1.25
    assert percentile([3.0], 0.99) == 3.0


def test_buckets_are_fine() -> None:
    finite = BUCKETS[:-1]
    assert BUCKETS[-1] == math.inf and finite == tuple(sorted(set(finite)))
    assert finite[0] == 0.001 and finite[-1] == 100.0
    assert max(b / a for a, b in itertools.pairwise(finite)) <= 4 / 3 + 1e-9


def _rendered(record: Record, now: float) -> Series:
    out = Families()
    record.render(now, out)
    types = {spec.name: spec.type for spec in SPECS}
    return parse_series("".join(f"# TYPE {name} {types[name]}\n{text}"
                                for name, text in out.joined().items()))


def test_record_windows_and_counts() -> None:
    record = Record("vllm", "a", 10.0, (60.0, 300.0), (0.5, 0.99))
    assert Families().lines == {}
    empty = Families()
    record.render(0.0, empty)
    assert empty.lines == {}  # nothing probed yet: nothing claimed
    for i in range(30):  # one probe every 10 s for 300 s, TTFT i/100
        record.count("success", 16, 9)
        record.succeed("m", Probe(float(i * 10), i / 100, 0.5, array("d", [0.01] * 15)), 1e9)
    record.count("timeout", 3, None)
    s = _rendered(record, 290.0)
    assert pick(s, "inference_node_canary_probes_total", outcome="success") == [30.0]
    assert pick(s, "inference_node_canary_probes_total", outcome="timeout") == [1.0]
    assert len(pick(s, "inference_node_canary_probes_total")) == len(OUTCOMES)
    assert pick(s, "inference_node_canary_generated_tokens_total") == [30 * 16 + 3]
    assert pick(s, "inference_node_canary_prompt_tokens_total") == [270.0]
    # The 1m window holds the probes that ended at 230..290 s: TTFT 0.23..0.29.
    assert pick(s, "inference_node_canary_latency_window_observations", latency="ttft",
                window="1m") == [7.0]
    assert pick(s, "inference_node_canary_latency_seconds", latency="ttft", window="1m",
                percentile="50") == [pytest.approx(0.26)]
    assert pick(s, "inference_node_canary_latency_seconds", latency="ttft", window="5m",
                percentile="99") == [pytest.approx(percentile([i / 100 for i in range(30)],
                                                              0.99))]
    assert pick(s, "inference_node_canary_latency_window_observations", latency="itl",
                window="5m") == [450.0]
    assert pick(s, "inference_node_canary_time_to_first_token_seconds_count") == [30.0]
    # Later, the windows empty: observation counts say 0, no percentile is made up.
    s = _rendered(record, 10_000.0)
    assert pick(s, "inference_node_canary_latency_window_observations", window="1m") == \
        [0.0, 0.0, 0.0]
    assert pick(s, "inference_node_canary_latency_seconds") == []
    assert pick(s, "inference_node_canary_time_to_first_token_seconds_count") == [30.0]


def test_a_new_model_starts_the_latencies_afresh() -> None:
    record = Record("vllm", "a", 10.0, (60.0,), (0.5,))
    record.count("success", 1, None)
    record.succeed("old", Probe(1.0, 0.1, 0.2, array("d")), 1e9)
    record.count("success", 1, None)
    record.succeed("new", Probe(2.0, 0.3, 0.4, array("d")), 1e9)
    s = _rendered(record, 2.0)
    assert pick(s, "inference_node_canary_time_to_first_token_seconds_count", model="new") == \
        [1.0]
    assert pick(s, "inference_node_canary_time_to_first_token_seconds_count",
                model="old") == []
    assert pick(s, "inference_node_canary_probes_total", outcome="success") == [2.0]


def _cfg(*args: str) -> Config:
    cfg, _ = load(parser().parse_args(list(args)), {})
    return cfg


def test_settings() -> None:
    cfg = _cfg("--vllm.endpoint", "a=http://127.0.0.1:8000/metrics",
               "--triton.endpoint", "t=http://127.0.0.1:8002/metrics",
               "--canary.endpoint", "a", "--canary.endpoint", "t=http://127.0.0.1:8000",
               "--canary.interval", "5s", "--canary.timeout", "4s",
               "--canary.max-tokens", "8")
    assert [(t.endpoint, t.url) for t in cfg.canary_targets] == [
        ("a", None), ("t", "http://127.0.0.1:8000")]
    assert (cfg.canary_interval, cfg.canary_timeout, cfg.canary_max_tokens) == (5.0, 4.0, 8)
    from exporter.canary.probes import resolve
    assert [(t.engine, t.api_url, t.api.kind) for t in resolve(cfg)] == [
        ("vllm", "http://127.0.0.1:8000", "openai"), ("triton", "http://127.0.0.1:8000",
                                                     "triton")]
    assert _cfg().canary_targets == ()  # off by default


@pytest.mark.parametrize(("args", "message"), [
    (["--canary.endpoint", "nope"], "no configured engine endpoint has that name"),
    (["--vllm.endpoint", "a=http://h:1/metrics", "--canary.endpoint", "a",
      "--canary.timeout", "20s"], "must not exceed the canary interval"),
    (["--vllm.endpoint", "a=http://h:1/metrics", "--canary.endpoint", "a",
      "--canary.interval", "500ms", "--canary.timeout", "100ms"], "at least 1s"),
    (["--triton.endpoint", "t=http://h:8002/metrics", "--canary.endpoint", "t"],
     "give its URL"),
    (["--vllm.endpoint", "a=http://h:1/metrics", "--canary.endpoint", "a",
      "--canary.endpoint", "a"], "named twice"),
    (["--canary.endpoint", "a=ftp://x"], "invalid URL"),
    (["--canary.max-tokens", "1000"], "at most 256"),
    (["--canary.prompt-tokens", "0"], "positive integer"),
])
def test_bad_settings_say_what_is_wrong(args: list[str], message: str) -> None:
    with pytest.raises((ConfigError, SystemExit)) as err:
        _cfg(*args)
    assert message in str(err.value)


def test_credentials(tmp_path: Path) -> None:
    from exporter.canary.stream import Client

    key = tmp_path / "key"
    key.write_text("sk-secret\n")
    config = tmp_path / "config.toml"
    config.write_text(f"""
[vllm]
endpoints = [{{ url = "http://127.0.0.1:8000/metrics", name = "a" }}]
[canary]
endpoints = [{{ endpoint = "a", api_key_file = "{key}" }}]
""")
    cfg = _cfg("--config.file", str(config))
    (target,) = cfg.canary_targets
    assert target.api_key == "sk-secret" and "sk-secret" not in repr(target)
    assert Client("http://h:1", "k")._headers["Authorization"] == "Bearer k"
    assert Client("http://u:p%40@h:1")._headers["Authorization"] == "Basic dTpwQA=="
    assert "Authorization" not in Client("http://h:1")._headers
    for text in ("", "two words"):
        key.write_text(text)
        with pytest.raises(ConfigError, match="must hold one key"):
            _cfg("--config.file", str(config))
    key.unlink()
    with pytest.raises(ConfigError, match="cannot read it"):
        _cfg("--config.file", str(config))
