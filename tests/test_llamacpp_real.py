"""Integration test against a real llama.cpp server (xllamacpp, a tiny local GGUF model).

A known load is sent to llama.cpp's own HTTP server, more requests than it has slots: the
daemon must see requests wait and run, its token counters must equal the engine's and the
replies', its window rates and inter-token mean must agree with the counters' movement, and
what llama.cpp lacks (percentiles, histograms, a rate over one poll of its request-end
counters) must be absent. A second test lets the daemon find the server by itself, on a
port no flag names, and drop it when it exits.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest
import requests

from exporter.latency import LATENCIES
from tests.llamacpp_real.server import LlamaCppServer, ensure_model, ensure_venv
from tests.support.canary import CANARY_ARGS, C, probed, successes
from tests.support.harness import (
    Series,
    free_port,
    in_process_daemon,
    parse_series,
    pick,
    scrape,
    wait_for,
)

N_PARALLEL, N_CTX = 4, 2048
"""Four slots of 512 tokens each."""
REQUESTS, TOKENS = 16, 400
"""Four times the slots, each long enough (with its ~50-token prompt) to fill most of one:
the queue lasts several poll intervals on a fast machine (about 1.5 s here, one thread)."""
ALIAS = "tiny-llama"
WINDOW = "1m"
"""Longer than the test: the window holds every poll, from the idle server on."""
E = "inference_node_engine_"
RATES = (E + "generation_tokens_per_second", E + "prompt_tokens_per_second")


@pytest.fixture(scope="module")
def built() -> tuple[Path, Path]:
    """The cached xllamacpp virtualenv and tiny model, built on first use."""
    venv = ensure_venv()
    return venv, ensure_model(venv)


def served_model(url: str) -> str:
    """The model's name as the server's ``/v1/models`` gives it."""
    answer = requests.get(f"{url}/v1/models", timeout=10)
    answer.raise_for_status()
    name: str = answer.json()["data"][0]["id"]
    return name


def own(server: LlamaCppServer) -> dict[str, float]:
    """The engine's own counters, read straight from its ``/metrics``."""
    answer = requests.get(server.metrics_url, timeout=10)
    answer.raise_for_status()
    series = parse_series(answer.text)
    out = {}
    for short in ("tokens_predicted_total", "tokens_predicted_seconds_total",
                  "prompt_tokens_total", "prompt_tokens_cached_total"):
        (out[short],) = pick(series, f"llamacpp:{short}")
    return out


def complete(url: str, i: int) -> dict[str, Any]:
    """One ``POST /completion`` of exactly ``TOKENS`` tokens."""
    answer = requests.post(f"{url}/completion", json={
        "prompt": f"Request {i}: the quick brown fox jumps over the lazy dog.",
        "n_predict": TOKENS, "ignore_eos": True, "temperature": 0}, timeout=120)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    assert body["tokens_predicted"] == TOKENS, body
    # The prompt's length, whether its tokens were computed or taken from a slot's cache.
    timings = body["timings"]
    assert body["tokens_evaluated"] == timings["prompt_n"] + timings["cache_n"] > 0, body
    return body


def daemon(*args: str) -> contextlib.AbstractContextManager[str]:
    return in_process_daemon(*args, windows=WINDOW)


def test_exporter_agrees_with_a_real_llama_cpp(tmp_path: Path, built: tuple[Path, Path]
                                               ) -> None:
    venv, model = built
    with LlamaCppServer(tmp_path, free_port(), alias=ALIAS, n_parallel=N_PARALLEL,
                        n_ctx=N_CTX, venv=venv, model=model) as server:
        model_name = served_model(server.url)
        assert model_name == ALIAS
        labels = {"engine": "llamacpp", "endpoint": "l", "model": model_name, "dp_rank": "0"}
        started = time.monotonic()
        with daemon("--llamacpp.endpoint", f"l={server.url}") as metrics:
            # 1. The idle server, as the daemon's first polls saw it: every count at zero.
            def idle() -> Series | None:
                s = scrape(metrics)
                return s if pick(s, E + "generation_tokens_total", **labels) == [0.0] else None

            s = wait_for("the daemon to see the idle server", idle)
            assert pick(s, E + "up", engine="llamacpp", endpoint="l") == [1.0]
            before = own(server)
            assert before == dict.fromkeys(before, 0.0)

            # 2. The burst: REQUESTS at once on N_PARALLEL slots. The daemon's view is read
            # while it lasts, at the pace of waiting for the replies.
            waiting, running, poll_rates = [], [], []
            with ThreadPoolExecutor(REQUESTS) as pool:
                replies: list[Future[dict[str, Any]]] = [
                    pool.submit(complete, server.url, i) for i in range(REQUESTS)]
                while True:
                    done, pending = wait(replies, timeout=0.05, return_when=FIRST_EXCEPTION)
                    if not pending or any(f.exception() for f in done):
                        break
                    s = scrape(metrics)
                    waiting += pick(s, E + "requests_waiting", **labels)
                    running += pick(s, E + "requests_running", **labels)
                    poll_rates += [v for r in RATES for v in pick(s, r, window="poll")]
                bodies = [f.result() for f in replies]
            assert max(waiting, default=0) > 0, f"no request seen waiting in {len(waiting)} scrapes"
            assert max(running, default=0) > 0, f"no request seen running in {len(running)} scrapes"
            assert max(running) <= N_PARALLEL
            after = own(server)
            assert after["tokens_predicted_total"] == REQUESTS * TOKENS

            def caught_up() -> Series | None:
                s = scrape(metrics)
                got = pick(s, E + "generation_tokens_total", **labels)
                return s if got == [after["tokens_predicted_total"]] else None

            s = wait_for("the daemon to catch up with llama.cpp's counters", caught_up)
            elapsed = time.monotonic() - started
    assert server.exit_code == 0

    # 3. Token counters: the engine's own, and the replies'.
    prompt = sum(b["tokens_evaluated"] for b in bodies)
    assert pick(s, E + "generation_tokens_total", **labels) == [REQUESTS * TOKENS]
    assert pick(s, E + "prompt_tokens_total", **labels) == [
        after["prompt_tokens_total"] + after["prompt_tokens_cached_total"]] == [prompt]
    # Slots reuse the start the prompts share ("Request 1"...): both counters take part.
    assert after["prompt_tokens_cached_total"] > 0
    assert pick(s, E + "restarts_total", **labels) == [0.0]
    assert pick(s, E + "requests_waiting", **labels) == [0.0]
    assert pick(s, E + "requests_running", **labels) == [0.0]
    # One engine, labelled with the model /v1/models names (never "unknown").
    assert pick(s, E + "requests_running", engine="llamacpp") == [0.0]

    # 4. The window holds every poll since the idle one: its rates times its span are the
    # counters' whole increase. No rate over one poll: the counters jump at request end.
    (span,) = pick(s, E + "window_span_seconds", **labels, window=WINDOW)
    assert 0 < span <= elapsed
    (gen_rate,) = pick(s, E + "generation_tokens_per_second", **labels, window=WINDOW)
    (prompt_rate,) = pick(s, E + "prompt_tokens_per_second", **labels, window=WINDOW)
    assert gen_rate * span == pytest.approx(REQUESTS * TOKENS, rel=1e-9)
    assert prompt_rate * span == pytest.approx(prompt, rel=1e-9)
    assert poll_rates == []
    for family in RATES:
        assert not pick(s, family, window="poll"), family

    # 5. The mean gap between a request's tokens: llama.cpp's seconds over its tokens, both
    # as they moved over the window; a mean, and the only latency it gives.
    itl = ((after["tokens_predicted_seconds_total"] - before["tokens_predicted_seconds_total"])
           / (after["tokens_predicted_total"] - before["tokens_predicted_total"]))
    assert pick(s, E + "latency_mean_seconds", **labels, latency="itl", window=WINDOW) == [
        pytest.approx(itl, rel=1e-9)]
    means = {dict(lab)["latency"] for (name, lab) in s
             if name == E + "latency_mean_seconds" and ("engine", "llamacpp") in lab}
    assert means == {"itl"}
    for family in (E + "latency_seconds", E + "latency_window_observations"):
        assert not pick(s, family, engine="llamacpp"), family
    assert not [name for (name, lab) in s if ("engine", "llamacpp") in lab
                and any(name.startswith(row.family) for row in LATENCIES)]


@pytest.mark.discovery
def test_the_daemon_finds_a_real_llama_cpp_and_drops_it_when_it_exits(
        tmp_path: Path, built: tuple[Path, Path]) -> None:
    venv, model = built
    port = free_port()
    while port == 8080:  # llama-server's default: the port must be one nothing implies
        port = free_port()
    name = f"llamacpp-{port}"
    server = LlamaCppServer(tmp_path, port, n_parallel=N_PARALLEL, n_ctx=N_CTX, venv=venv,
                            model=model)
    # What tells it from other processes: the serve script's name (and the venv's).
    assert "xllamacpp" in Path(server.command()[1]).name
    with server, daemon("--engines.discover", "--engines.discover-interval", "200ms") as metrics:
        served = served_model(server.url)  # no alias: the model file's path
        labels = {"engine": "llamacpp", "endpoint": name, "model": served, "dp_rank": "0"}

        def found() -> Series | None:
            s = scrape(metrics)
            up = pick(s, E + "up", engine="llamacpp", endpoint=name)
            return s if up == [1.0] and pick(s, E + "requests_running", **labels) else None

        def gone() -> Series | None:
            s = scrape(metrics)
            return None if [k for k in s if ("endpoint", name) in k[1]] else s

        s = wait_for("the daemon to find the server", found, timeout=30)
        assert pick(s, E + "requests_waiting", **labels) == [0.0]
        assert pick(s, E + "requests_running", **labels) == [0.0]
        assert pick(s, "inference_node_exporter_discovered_endpoints", engine="llamacpp") == [1.0]
        assert server.stop() == 0
        s = wait_for("the exited server's series to go", gone, timeout=30)
        assert pick(s, "inference_node_exporter_discovered_endpoints", engine="llamacpp") == [0.0]


def test_the_canary_streams_from_a_real_llama_cpp(tmp_path: Path, built: tuple[Path, Path]
                                                  ) -> None:
    """llama.cpp's OpenAI-compatible stream, as the canary speaks it: each probe makes
    exactly the tokens asked for (ignore_eos), which llama.cpp's own counter holds."""
    venv, model = built
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(LlamaCppServer(
            tmp_path, free_port(), alias=ALIAS, n_parallel=N_PARALLEL, n_ctx=N_CTX,
            venv=venv, model=model))
        # Started with its warm-up off, llama.cpp's first request also pays its one-off
        # set-up (past the probes' 2 s deadline on a busy machine): one request first.
        requests.post(f"{server.url}/completion", json={
            "prompt": "warm up", "n_predict": 1}, timeout=120).raise_for_status()
        before = own(server)["tokens_predicted_total"]
        metrics = stack.enter_context(daemon(
            "--llamacpp.endpoint", f"l={server.url}", "--canary.endpoint", "l",
            *CANARY_ARGS, "--canary.max-tokens", "8"))
        s = probed(metrics)
        n = successes(s)
        assert pick(s, C + "generated_tokens_total") == [8 * n]
        (ttft,) = pick(s, C + "latency_seconds", latency="ttft", percentile="50",
                       model=ALIAS)
        (e2e,) = pick(s, C + "latency_seconds", latency="e2e", percentile="50")
        assert 0 < ttft <= e2e < 2
        # Every token llama.cpp predicted since was a probe's: all the daemon counted, and at
        # most one probe's more (in flight when the daemon was read again).
        predicted = wait_for("llama.cpp to count the probes' tokens", lambda: (
            x if (x := own(server)["tokens_predicted_total"] - before) >= 8 * n else None))
        assert predicted <= 8 * (successes(scrape(metrics)) + 1)
