"""Integration test against a real SGLang server (0.5.23, its CPU engine, a tiny local model).

A known load is sent to SGLang, more requests than it runs at once, half of them streamed
(SGLang splits its request-side series by ``is_streaming``): the daemon must see requests wait
and run, its token counters must equal the engine's and the replies', its window rates must
agree with the counters' movement, and its percentiles must lie in the buckets SGLang's own
histograms put them in, counting exactly the requests of the window. A second test lets the
daemon find the server by itself, on a port no flag names, and drop it when it exits.

SGLang takes 20 to 50 s to start here: both tests share one server, and the second one, which
stops it, runs last.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

import pytest
import requests

from exporter.derive.quantiles import bucket_quantile
from exporter.engines.common import listed_model
from exporter.engines.sglang import ADAPTER
from exporter.expfmt import parse
from tests.sglang_real.server import SGLangServer
from tests.support.canary import CANARY_ARGS, C, probed, successes
from tests.support.harness import Series, free_port, in_process_daemon, pick, scrape, wait_for

MAX_RUNNING = 2
REQUESTS, TOKENS = 8, 64
"""Four times what runs at once: the queue lasts several poll intervals."""
MODEL = "tiny-llama"
WINDOW = "5m"
"""Longer than the test: the window holds every poll, from the idle server on."""
E = "inference_node_engine_"
OWN_HISTOGRAMS = {"ttft": "sglang:time_to_first_token_seconds",
                  "itl": "sglang:inter_token_latency_seconds",
                  "e2e": "sglang:e2e_request_latency_seconds",
                  "queue": "sglang:queue_time_seconds"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SGLangServer]:
    """One SGLang on a port nothing implies, warmed by one request (its request-side series
    appear only at the first one)."""
    port = free_port()
    while port == ADAPTER.default_port:
        port = free_port()
    with SGLangServer(tmp_path_factory.mktemp("sglang"), port, model_name=MODEL,
                      max_running=MAX_RUNNING) as srv:
        generate(srv.url, -1, stream=False)
        yield srv


def generate(url: str, i: int, *, stream: bool) -> dict[str, Any]:
    """One ``POST /generate`` of exactly ``TOKENS`` tokens; its last answer's ``meta_info``."""
    body = {"text": f"Request {i}: the quick brown fox jumps over the lazy dog.",
            "sampling_params": {"max_new_tokens": TOKENS, "ignore_eos": True,
                                "temperature": 0}, "stream": stream}
    with requests.post(f"{url}/generate", json=body, timeout=300, stream=stream) as answer:
        answer.raise_for_status()
        if not stream:
            meta: dict[str, Any] = answer.json()["meta_info"]
        else:
            events = [line[len(b"data: "):] for line in answer.iter_lines()
                      if line.startswith(b"data: ") and line != b"data: [DONE]"]
            assert len(events) > 1, events  # streamed, not one answer
            meta = json.loads(events[-1])["meta_info"]
    assert meta["completion_tokens"] == TOKENS, meta
    return meta


def own(server: SGLangServer) -> dict[str, Any]:
    """SGLang's own figures, read straight from its ``/metrics``: counters summed over their
    label sets, and each latency's cumulative bucket counts by bound."""
    answer = requests.get(server.metrics_url, timeout=10)
    answer.raise_for_status()
    exp = parse(answer.text)
    out: dict[str, Any] = {}
    for short in ("generation_tokens_total", "prompt_tokens_total", "num_requests_total"):
        out[short] = sum(v for _, _, v, _ in exp.get(f"sglang:{short}"))
    out["decode_tokens"] = sum(v for _, lab, v, _ in exp.get("sglang:realtime_tokens_total")
                               if lab.get("mode") == "decode")
    for latency, family in OWN_HISTOGRAMS.items():
        buckets: dict[float, float] = {}
        for _, lab, v, _ in exp.get(family + "_bucket"):
            bound = float(lab["le"])
            buckets[bound] = buckets.get(bound, 0.0) + v
        out[latency] = buckets
    return out


def test_exporter_agrees_with_a_real_sglang(server: SGLangServer) -> None:
    assert listed_model(requests.get(f"{server.url}/v1/models", timeout=10).content) == MODEL
    labels = {"engine": "sglang", "endpoint": "s", "model": MODEL, "dp_rank": "0"}
    started = time.monotonic()
    with in_process_daemon("--sglang.endpoint", f"s={server.metrics_url}",
                           windows=WINDOW) as metrics:
        before = own(server)
        assert before["generation_tokens_total"] == TOKENS  # the warm-up request

        # 1. The idle server, as the daemon's first polls saw it.
        def idle() -> Series | None:
            s = scrape(metrics)
            got = pick(s, E + "generation_tokens_total", **labels)
            return s if got == [before["generation_tokens_total"]] else None

        s = wait_for("the daemon to see the idle server", idle, timeout=30)
        assert pick(s, E + "up", engine="sglang", endpoint="s") == [1.0]
        assert pick(s, E + "requests_running", **labels) == [0.0]

        # 2. The burst: REQUESTS at once, MAX_RUNNING at a time, every other one streamed.
        waiting, running, kv = [], [], []
        with ThreadPoolExecutor(REQUESTS) as pool:
            replies: list[Future[dict[str, Any]]] = [
                pool.submit(generate, server.url, i, stream=i % 2 == 1)
                for i in range(REQUESTS)]
            while True:
                done, pending = wait(replies, timeout=0.1, return_when=FIRST_EXCEPTION)
                if not pending or any(f.exception() for f in done):
                    break
                s = scrape(metrics)
                waiting += pick(s, E + "requests_waiting", **labels)
                running += pick(s, E + "requests_running", **labels)
                kv += pick(s, E + "kv_cache_usage_ratio", **labels)
            metas = [f.result() for f in replies]
        assert max(waiting, default=0) > 0, f"no request seen waiting in {len(waiting)} scrapes"
        assert 0 < max(running, default=0) <= MAX_RUNNING, running
        assert max(kv, default=0) > 0, kv
        after = own(server)
        assert after["generation_tokens_total"] - before["generation_tokens_total"] == (
            REQUESTS * TOKENS)

        def caught_up() -> Series | None:
            s = scrape(metrics)
            got = pick(s, E + "prompt_tokens_total", **labels)
            done = pick(s, E + "generation_tokens_total", **labels)
            return s if (got, done) == ([after["prompt_tokens_total"]],
                                        [after["generation_tokens_total"]]) else None

        s = wait_for("the daemon to catch up with SGLang's counters", caught_up)
        elapsed = time.monotonic() - started

    # 3. Token counters: the engine's own, and the replies'. Generated tokens are read live,
    # from SGLang's decode counter, which leaves out each request's first token (made by
    # its prefill), and its count of first tokens: together, the tokenizer's own count.
    prompt = sum(m["prompt_tokens"] for m in metas)
    assert after["prompt_tokens_total"] - before["prompt_tokens_total"] == prompt
    assert after["decode_tokens"] - before["decode_tokens"] == REQUESTS * (TOKENS - 1)
    assert pick(s, E + "generation_tokens_total", **labels) == [
        after["generation_tokens_total"]] == [(REQUESTS + 1) * TOKENS]
    assert after["num_requests_total"] - before["num_requests_total"] == REQUESTS
    assert pick(s, E + "restarts_total", **labels) == [0.0]
    assert pick(s, E + "requests_waiting", **labels) == [0.0]
    assert pick(s, E + "requests_running", **labels) == [0.0]

    # 4. The window holds every poll since the idle one: its rates times its span are the
    # counters' whole increase.
    (span,) = pick(s, E + "window_span_seconds", **labels, window=WINDOW)
    assert 0 < span <= elapsed
    (gen_rate,) = pick(s, E + "generation_tokens_per_second", **labels, window=WINDOW)
    (prompt_rate,) = pick(s, E + "prompt_tokens_per_second", **labels, window=WINDOW)
    assert gen_rate * span == pytest.approx(REQUESTS * TOKENS, rel=1e-9)
    assert prompt_rate * span == pytest.approx(prompt, rel=1e-9)

    # 5. Percentiles: SGLang has histograms. Each window counts exactly the burst's
    # observations, and each percentile lies in the bucket of SGLang's own counts.
    for latency, family in OWN_HISTOGRAMS.items():
        bounds = sorted(after[latency])
        counts = [after[latency][b] - before[latency].get(b, 0.0) for b in bounds]
        assert math.isinf(bounds[-1]) and counts[-1] > 0, (latency, counts)
        assert pick(s, E + "latency_window_observations", **labels, latency=latency,
                    window=WINDOW) == [counts[-1]], family
        for pct in ("50", "95", "99"):
            q = int(pct) / 100
            (got,) = pick(s, E + "latency_seconds", **labels, latency=latency, window=WINDOW,
                          percentile=pct)
            b = next(i for i, c in enumerate(counts) if c >= q * counts[-1])
            low = 0.0 if b == 0 else bounds[b - 1]
            high = bounds[b] if not math.isinf(bounds[b]) else bounds[-2]
            assert low <= got <= high, f"{latency} P{pct} {got} outside ({low}, {high}]"
            assert got == pytest.approx(bucket_quantile(q, bounds, counts))
    # Requests, not SGLang's per-step weighting: one TTFT and one e2e per request.
    assert pick(s, E + "latency_window_observations", **labels, latency="ttft",
                window=WINDOW) == [REQUESTS]
    # Histograms everywhere: no mean stands in for a percentile.
    assert not pick(s, E + "latency_mean_seconds", engine="sglang")
    assert {dict(lab)["latency"] for (name, lab) in s
            if name == E + "latency_seconds" and ("engine", "sglang") in lab} == set(
        OWN_HISTOGRAMS)


def test_the_canary_streams_from_a_real_sglang(server: SGLangServer) -> None:
    """SGLang's OpenAI-compatible stream, as the canary speaks it: each probe makes exactly
    the tokens asked for (ignore_eos), as its usage report says."""
    with in_process_daemon("--sglang.endpoint", f"s={server.metrics_url}",
                           "--canary.endpoint", "s", *CANARY_ARGS,
                           "--canary.max-tokens", "8", windows="1m") as metrics:
        s = probed(metrics, timeout=90)
        n = successes(s)
        assert pick(s, C + "generated_tokens_total") == [8 * n]
        (prompt,) = pick(s, C + "prompt_tokens_total")
        assert prompt >= 32 * n  # 32 words, one token or more each
        (ttft,) = pick(s, C + "latency_seconds", latency="ttft", percentile="50", model=MODEL)
        (e2e,) = pick(s, C + "latency_seconds", latency="e2e", percentile="50")
        assert 0 < ttft <= e2e < 2


@pytest.mark.discovery
def test_the_daemon_finds_a_real_sglang_and_drops_it_when_it_exits(
        server: SGLangServer) -> None:
    name = f"sglang-{server.port}"
    labels = {"engine": "sglang", "endpoint": name, "model": MODEL, "dp_rank": "0"}
    with in_process_daemon("--engines.discover", "--engines.discover-interval",
                           "200ms") as metrics:
        def found() -> Series | None:
            s = scrape(metrics)
            up = pick(s, E + "up", engine="sglang", endpoint=name)
            return s if up == [1.0] and pick(s, E + "requests_running", **labels) else None

        def gone() -> Series | None:
            s = scrape(metrics)
            return None if [k for k in s if ("endpoint", name) in k[1]] else s

        s = wait_for("the daemon to find the server", found, timeout=30)
        assert pick(s, E + "requests_waiting", **labels) == [0.0]
        assert pick(s, "inference_node_exporter_discovered_endpoints", engine="sglang") == [1.0]
        # One endpoint for the launcher's port: its scheduler and detokenizer, which are
        # SGLang processes too, listen on none.
        assert [k for k in s if k[0] == E + "up" and ("engine", "sglang") in k[1]] == [
            (E + "up", tuple(sorted({"engine": "sglang", "endpoint": name}.items())))]
        server.stop()
        s = wait_for("the exited server's series to go", gone, timeout=30)
        assert pick(s, "inference_node_exporter_discovered_endpoints", engine="sglang") == [0.0]
