"""The engine seam is real: an adapter defined here, in the tests only, is served end to end
by the daemon (flags, config section, polling, rates, percentiles, self-metrics) with no
file of the package changed."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests

from exporter import engines
from exporter.cli import load, parser
from exporter.daemon import Daemon
from exporter.engines.adapter import Adapter, ModelInfo, ProcessMatch
from exporter.engines.histograms import HistogramReader
from exporter.engines.reading import EngineKey, EngineReading
from exporter.expfmt import Exposition
from tests.support.harness import free_port, parse_series, pick, wait_for
from tests.support.served import Answer, Served, counted

BOUNDS = ("0.1", "0.5", "1.0", "+Inf")


def _key(labels: Mapping[str, str]) -> EngineKey | None:
    return (labels["served"], "0") if "served" in labels else None


class ToyNormaliser:
    """A made-up engine: ``toy_waiting``, ``toy_generated_total`` and ``toy_ttft_seconds``."""

    def __init__(self, max_engines: int) -> None:
        self.max_engines = max_engines
        self.histograms = HistogramReader(_key)

    def normalise(self, exp: Exposition, model: str) -> tuple[list[EngineReading], int]:
        readings: dict[EngineKey, EngineReading] = {}
        for _, labels, value, _ts in exp.get("toy_waiting"):
            if (key := _key(labels)) is not None:
                readings.setdefault(key, EngineReading(*key)).gauges["requests_waiting"] = value
        for _, labels, value, _ts in exp.get("toy_generated_total"):
            if (key := _key(labels)) is not None:
                readings.setdefault(key, EngineReading(*key)).counters[
                    "generation_tokens"] = value
        for key, histogram in self.histograms.read(exp, "toy_ttft_seconds") or []:
            readings.setdefault(key, EngineReading(*key)).histograms[
                "time_to_first_token"] = histogram
        return list(readings.values()), 0


TOY = Adapter(
    kind="toy", title="Toy", default_port=9, metrics_path="/stats",
    names={"requests_waiting": ("toy_waiting",), "generation_tokens": ("toy_generated",),
           "time_to_first_token": ("toy_ttft_seconds",)},
    keep=frozenset({"toy_waiting", "toy_generated_total", "toy_ttft_seconds",
                    "toy_ttft_seconds_bucket", "toy_ttft_seconds_sum", "toy_ttft_seconds_count"}),
    normaliser=ToyNormaliser, processes=ProcessMatch(words=("toy-engine-server",)))


def toy_exposition(n: int) -> str:
    """The toy's ``n``-th answer: 50 tokens and 2 requests on from the one before."""
    lines = ["# TYPE toy_waiting gauge", 'toy_waiting{served="m"} 3',
             "# TYPE toy_generated counter", f'toy_generated_total{{served="m"}} {50 * n}',
             "# TYPE toy_ttft_seconds histogram"]
    # Each answer adds two observations: one in (0.1, 0.5], one in (0.5, 1].
    for le, count in zip(BOUNDS, (0, n, 2 * n, 2 * n), strict=True):
        lines.append(f'toy_ttft_seconds_bucket{{served="m",le="{le}"}} {count}')
    lines += [f'toy_ttft_seconds_sum{{served="m"}} {1.0 * n}',
              f'toy_ttft_seconds_count{{served="m"}} {2 * n}']
    return "\n".join(lines) + "\n"


@pytest.fixture
def toy() -> Iterator[Served]:
    """Serves the toy exposition on ``/stats``."""
    engines.register(TOY)
    stats = counted(toy_exposition)
    try:
        with Served(lambda path: stats() if path == "/stats" else None,
                    "text/plain; version=0.0.4") as engine:
            yield engine
    finally:
        engines.unregister(TOY.kind)


def test_the_registry_makes_the_flags_and_the_config_section(toy: Served,
                                                              tmp_path: Path) -> None:
    text = parser().format_help()
    assert "--toy.endpoint [NAME=]URL" in text and "INFERENCE_NODE_EXPORTER_TOY_ENDPOINT" in text
    assert "--collector.toy" in text
    config = tmp_path / "c.toml"
    config.write_text(f'[toy]\nendpoints = ["{toy.url}"]\nmax_engines_per_endpoint = 3\n')
    cfg, _ = load(parser().parse_args(["--config.file", str(config)]), {})
    # A URL without a path gets the adapter's metrics path; not polled by default otherwise.
    assert [e.url for e in cfg.engines["toy"].endpoints] == [toy.url + "/stats"]
    assert cfg.engines["toy"].max_engines_per_endpoint == 3
    cfg, _ = load(parser().parse_args([]), {"INFERENCE_NODE_EXPORTER_TOY_ENDPOINT": toy.url})
    assert [e.name for e in cfg.engines["toy"].endpoints] == [toy.url.removeprefix("http://")]
    assert load(parser().parse_args([]), {})[0].engines["toy"].endpoints == ()


def test_the_daemon_serves_a_toy_engine_end_to_end(toy: Served) -> None:
    port = free_port()
    args = ["--web.listen-address", f"127.0.0.1:{port}", "--toy.endpoint", f"t={toy.url}",
            "--poll.interval", "200ms", "--poll.timeout", "200ms", "--derive.windows", "2s",
            "--no-collector.vllm", "--no-collector.gpu", "--no-collector.host"]
    cfg, web = load(parser().parse_args(args), {})
    daemon = Daemon(cfg, lambda: (cfg, web), web=web)
    daemon.start()
    try:
        def ready() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            series = parse_series(text)
            done = pick(series, "inference_node_engine_latency_seconds", engine="toy",
                        window="2s", latency="ttft", percentile="50")
            return series if done else None

        series = wait_for("the toy engine's percentiles", ready, timeout=30)
    finally:
        daemon.stop()
    labels = {"engine": "toy", "endpoint": "t", "model": "m", "dp_rank": "0"}
    assert pick(series, "inference_node_engine_up", engine="toy", endpoint="t") == [1.0]
    assert pick(series, "inference_node_engine_requests_waiting", **labels) == [3.0]
    assert pick(series, "inference_node_engine_generation_tokens_total", **labels)[0] % 50 == 0
    # 50 tokens per answer, one answer per poll of 200 ms: 250 tokens/s.
    rate = pick(series, "inference_node_engine_generation_tokens_per_second", **labels,
                window="2s")
    assert rate and math.isclose(rate[0], 250.0, rel_tol=0.35), rate
    # Half the observations in (0.1, 0.5], half in (0.5, 1]: the median is the first's top.
    p50 = pick(series, "inference_node_engine_latency_seconds", **labels, latency="ttft",
               window="2s", percentile="50")
    assert p50 == [pytest.approx(0.5)]
    assert pick(series, "inference_node_engine_time_to_first_token_seconds_bucket", **labels,
                le="+Inf")
    assert pick(series, "inference_node_exporter_collector_up", collector="toy",
                source="t") == [1.0]
    # What the toy lacks is absent, never a made-up value.
    assert not pick(series, "inference_node_engine_kv_cache_usage_ratio", engine="toy")
    assert not pick(series, "inference_node_engine_latency_seconds", engine="toy", latency="itl")
    assert TOY.lacks[:2] == ("requests_running", "requests_swapped")


class MeanToyNormaliser:
    """A made-up engine with no histogram and no model label, like llama.cpp: a running
    gauge, tokens counted at request end, and cumulative request seconds."""

    def __init__(self, max_engines: int) -> None:
        self.max_engines = max_engines

    def normalise(self, exp: Exposition, model: str) -> tuple[list[EngineReading], int]:
        r = EngineReading(model, "0")
        for name, target in (("meantoy_running", r.gauges), ("meantoy_tokens_total", None)):
            for _, _, value, _ts in exp.get(name):
                if target is None:
                    r.counters["generation_tokens"] = value
                else:
                    target["requests_running"] = value
        seconds = [v for _, _, v, _ in exp.get("meantoy_seconds_total")]
        count = [v for _, _, v, _ in exp.get("meantoy_requests_total")]
        if seconds and count:
            r.durations["e2e_request_latency"] = (seconds[0], count[0])
        return ([r] if r.gauges or r.counters else []), 0


def _model(body: bytes) -> str | None:
    data = json.loads(body).get("data") or [{}]
    return str(data[0].get("id") or "") or None


MEANTOY = Adapter(
    kind="meantoy", title="Mean toy", default_port=9, metrics_path="/metrics",
    names={"requests_running": ("meantoy_running",), "generation_tokens": ("meantoy_tokens",)},
    means={"e2e_request_latency": ("meantoy_seconds_total", "meantoy_requests_total")},
    counted_at_request_end=frozenset({"generation_tokens"}),
    model_info=ModelInfo("/v1/models", _model),
    keep=frozenset({"meantoy_running", "meantoy_tokens_total", "meantoy_seconds_total",
                    "meantoy_requests_total"}),
    normaliser=MeanToyNormaliser, processes=ProcessMatch(words=("meantoy-server",)))


def mean_toy(model: str | None) -> Served:
    """Every answer: one more request ended, taking 0.25 s and 100 tokens; 2 running."""
    models = json.dumps({"object": "list", "data": [{"id": model}]})
    metrics = counted(lambda n: f"meantoy_running 2\nmeantoy_tokens_total {100 * n}\n"
                                f"meantoy_seconds_total {0.25 * n}\nmeantoy_requests_total {n}\n")

    def answer(path: str) -> Answer:
        if path == "/v1/models" and model is not None:
            return models
        return metrics() if path == "/metrics" else None

    return Served(answer)


def serve_mean_toy(model: str | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The daemon's series once it has a windowed mean of the mean toy serving ``model``."""
    engines.register(MEANTOY)
    engine = mean_toy(model)
    port = free_port()
    args = ["--web.listen-address", f"127.0.0.1:{port}", "--meantoy.endpoint",
            f"t={engine.url}", "--poll.interval", "200ms", "--poll.timeout", "200ms",
            "--derive.windows", "2s", "--no-collector.vllm", "--no-collector.gpu",
            "--no-collector.host"]
    try:
        cfg, web = load(parser().parse_args(args), {})
        daemon = Daemon(cfg, lambda: (cfg, web), web=web)
        daemon.start()
        try:
            def ready() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
                series = parse_series(
                    requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
                done = pick(series, "inference_node_engine_latency_mean_seconds",
                            engine="meantoy", window="2s", latency="e2e")
                return series if done else None

            return wait_for("the mean toy's windowed mean", ready, timeout=30)
        finally:
            daemon.stop()
    finally:
        engine.close()
        engines.unregister(MEANTOY.kind)


def test_an_engine_without_histograms_gets_means_and_its_model_asked() -> None:
    series = serve_mean_toy("tiny-gguf")
    labels = {"engine": "meantoy", "endpoint": "t", "model": "tiny-gguf", "dp_rank": "0"}
    assert pick(series, "inference_node_engine_requests_running", **labels) == [2.0]
    # Each request took 0.25 s: the mean says so, and nothing claims a percentile.
    assert pick(series, "inference_node_engine_latency_mean_seconds", **labels,
                latency="e2e", window="2s") == [pytest.approx(0.25)]
    assert not pick(series, "inference_node_engine_latency_seconds", engine="meantoy")
    # Tokens counted at request end: a window rate, no poll-interval rate.
    assert pick(series, "inference_node_engine_generation_tokens_per_second", **labels,
                window="2s")
    assert not pick(series, "inference_node_engine_generation_tokens_per_second", **labels,
                    window="poll")
    assert MEANTOY.support("e2e_request_latency") == "derived mean"
    assert MEANTOY.support("time_to_first_token") == "absent"
    assert "e2e_request_latency" not in MEANTOY.lacks


def test_an_engine_that_does_not_name_its_model_is_labelled_unknown() -> None:
    series = serve_mean_toy(None)
    assert pick(series, "inference_node_engine_requests_running", engine="meantoy",
                model="unknown") == [2.0]
