"""Integration test against a real Triton Inference Server (2.51.0, from PyPI
``nvidia-pytriton``) serving ``tiny_llm``, a decoupled Python-backend model with one CPU
instance that streams one word every 10 ms.

A burst of streaming requests, more than the one instance takes at a time, is sent through
``generate_stream``: the daemon must see requests wait in Triton's queue, count every
success as Triton does, and give end-to-end and queue means equal to the movement of
Triton's microsecond counters over a window that holds the whole load. What 2.51.0 lacks
(percentiles, histograms: it has no first-response histogram) must be absent, and the
``Nan`` of the summaries it is told to print must not reach the daemon's output. A second
test lets the daemon find the server by itself, its three ports all unexpected, and drop it
when it exits.
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path

import pytest
import requests

from exporter.latency import LATENCIES
from tests.support.canary import CANARY_ARGS, C, probed, successes
from tests.support.harness import Series, free_port, in_process_daemon, parse_series, pick, wait_for
from tests.triton_real.server import MODEL_NAME, TritonServer, ensure_venv

REQUESTS, TOKENS = 8, 30
"""Eight streams of 30 words, 10 ms apart, one at a time: the burst lasts about 3.5 s (0.43 s
a request here), more than three of Triton's 1 s metrics intervals, so the queue shows
however seldom the pending count is refreshed."""
METRICS_INTERVAL_MS = 1000
WINDOW = "1m"
"""Longer than the test: the window holds every poll, from the idle server on."""
E = "inference_node_engine_"
FINISHED = E + "requests_finished_total"
MEAN = E + "latency_mean_seconds"
OWN = ("nv_inference_request_success", "nv_inference_request_duration_us",
       "nv_inference_queue_duration_us", "nv_inference_pending_request_count")


@pytest.fixture(scope="module")
def venv() -> Path:
    """The cached nvidia-pytriton virtualenv, built on first use."""
    return ensure_venv()


def own(server: TritonServer) -> tuple[dict[str, float], str]:
    """Triton's own figures for the model, read straight from its ``/metrics``, and the
    text they came in."""
    answer = requests.get(server.metrics_url, timeout=10)
    answer.raise_for_status()
    series = parse_series(answer.text)
    out = {}
    for name in OWN:
        # prometheus_client's parser names a counter's sample with ``_total`` appended.
        sample = name if name.endswith("_count") else name + "_total"
        (out[name],) = pick(series, sample, model=MODEL_NAME, version="1")
    out["failures"] = sum(pick(series, "nv_inference_request_failure_total", model=MODEL_NAME))
    return out, answer.text


def generate(url: str, i: int) -> int:
    """One streaming request of ``TOKENS`` words; the number of words that came back."""
    with requests.post(f"{url}/v2/models/{MODEL_NAME}/generate_stream",
                       json={"text_input": f"hello {i}", "max_tokens": TOKENS},
                       headers={"Connection": "close"}, stream=True, timeout=60) as answer:
        answer.raise_for_status()
        events = [line for line in answer.iter_lines() if line.startswith(b"data: ")]
    assert all(b'"text_output"' in e for e in events), events
    return len(events)


def daemon(*args: str) -> contextlib.AbstractContextManager[str]:
    return in_process_daemon(*args, windows=WINDOW)


def scrape(url: str) -> Series:
    answer = requests.get(url, timeout=5)
    assert answer.status_code == 200
    series = parse_series(answer.text)
    # No NaN anywhere, whatever Triton printed.
    assert not [k for k, v in series.items() if math.isnan(v)], answer.text
    return series


def test_exporter_agrees_with_a_real_triton(tmp_path: Path, venv: Path) -> None:
    with TritonServer(tmp_path, free_port(), free_port(), free_port(), [
            f"--metrics-interval-ms={METRICS_INTERVAL_MS}",
            "--metrics-config=summary_latencies=true"], venv=venv) as server:
        labels = {"engine": "triton", "endpoint": "t", "model": MODEL_NAME, "dp_rank": "0"}
        before, text = own(server)
        assert before == dict.fromkeys(before, 0.0)
        # The idle summaries' quantiles: what must not leak through.
        assert "} Nan" in text
        with daemon("--triton.endpoint", f"t={server.metrics_url}") as metrics:
            # 1. The idle server, as the daemon's first polls saw it: every count at zero.
            def idle() -> Series | None:
                s = scrape(metrics)
                return s if pick(s, FINISHED, **labels, reason="success") == [0.0] else None

            s = wait_for("the daemon to see the idle server", idle)
            assert pick(s, E + "up", engine="triton", endpoint="t") == [1.0]

            # 2. The burst: REQUESTS at once on one instance; the daemon's view is read
            # while it lasts, at the pace of waiting for the replies.
            waiting: list[float] = []
            with ThreadPoolExecutor(REQUESTS) as pool:
                replies: list[Future[int]] = [pool.submit(generate, server.url, i)
                                              for i in range(REQUESTS)]
                while True:
                    done, pending = wait(replies, timeout=0.05, return_when=FIRST_EXCEPTION)
                    if not pending or any(f.exception() for f in done):
                        break
                    waiting += pick(scrape(metrics), E + "requests_waiting", **labels)
                words = [f.result() for f in replies]
            assert words == [TOKENS] * REQUESTS
            assert max(waiting, default=0) > 0, f"no request seen waiting in {len(waiting)} scrapes"
            assert max(waiting) <= REQUESTS - 1
            after, _ = own(server)
            assert after["nv_inference_request_success"] == REQUESTS
            assert after["failures"] == 0
            e2e = ((after["nv_inference_request_duration_us"]
                    - before["nv_inference_request_duration_us"])
                   / (after["nv_inference_request_success"]
                      - before["nv_inference_request_success"]) / 1e6)
            queue = ((after["nv_inference_queue_duration_us"]
                      - before["nv_inference_queue_duration_us"])
                     / (after["nv_inference_request_success"]
                        - before["nv_inference_request_success"]) / 1e6)

            def caught_up() -> Series | None:
                s = scrape(metrics)
                done = pick(s, FINISHED, **labels, reason="success") == [REQUESTS]
                means = pick(s, MEAN, **labels, latency="e2e", window=WINDOW)
                return s if done and means == [pytest.approx(e2e, rel=1e-9)] else None

            s = wait_for("the daemon to catch up with Triton's counters", caught_up)
            assert own(server)[0] == after, "Triton's counters moved after the load"
            # And the queue drains in the daemon's view too.
            s = wait_for("the daemon to see the queue empty", lambda: (
                t if pick(t := scrape(metrics), E + "requests_waiting", **labels) == [0.0]
                else None), timeout=10)
    assert server.exit_code == 0

    # 3. Outcomes: every request a success, as Triton counts them; no failure of any kind.
    assert pick(s, FINISHED, **labels, reason="success") == [
        after["nv_inference_request_success"]] == [REQUESTS]
    for reason in ("rejected", "abort", "error"):
        assert pick(s, FINISHED, **labels, reason=reason) == [0.0], reason
    assert pick(s, E + "restarts_total", **labels) == [0.0]
    # Core Triton has no running gauge.
    assert not pick(s, E + "requests_running", engine="triton")

    # 4. Means over the window, which holds the whole load: Triton's microseconds over its
    # successes, as both moved. Requests waited behind each other: the queue mean is a good
    # part of the end-to-end mean (7 of 8 wait, 3.5 requests' time on average).
    assert pick(s, MEAN, **labels, latency="e2e", window=WINDOW) == [
        pytest.approx(e2e, rel=1e-9)]
    assert pick(s, MEAN, **labels, latency="queue", window=WINDOW) == [
        pytest.approx(queue, rel=1e-9)]
    assert e2e > TOKENS * 0.01 and 0 < queue < e2e
    means = {dict(lab)["latency"] for (name, lab) in s
             if name == MEAN and ("engine", "triton") in lab}
    assert means == {"e2e", "queue"}

    # 5. No percentile and no histogram: 2.51.0 has no first-response histogram, and its
    # summaries are never read.
    for family in (E + "latency_seconds", E + "latency_window_observations"):
        assert not pick(s, family, engine="triton"), family
    assert not [name for (name, lab) in s if ("engine", "triton") in lab
                and any(name.startswith(row.family) for row in LATENCIES)]


@pytest.mark.discovery
def test_the_daemon_finds_a_real_triton_among_its_ports_and_drops_it_when_it_exits(
        tmp_path: Path, venv: Path) -> None:
    # Three ports, none of them Triton's defaults: only the metrics one answers /metrics.
    ports = [free_port(), free_port(), free_port()]
    while {8000, 8001, 8002} & set(ports) or len(set(ports)) < 3:
        ports = [free_port(), free_port(), free_port()]
    http, grpc, metrics_port = ports
    name = f"triton-{metrics_port}"
    labels = {"engine": "triton", "endpoint": name, "model": MODEL_NAME, "dp_rank": "0"}
    server = TritonServer(tmp_path, http, grpc, metrics_port, venv=venv)
    with server, daemon("--engines.discover", "--engines.discover-interval", "200ms") as metrics:
        def found() -> Series | None:
            s = scrape(metrics)
            up = pick(s, E + "up", engine="triton", endpoint=name)
            return s if up == [1.0] and pick(s, FINISHED, **labels, reason="success") else None

        def gone() -> Series | None:
            s = scrape(metrics)
            return None if [k for k in s if ("endpoint", name) in k[1]] else s

        s = wait_for("the daemon to find the server", found, timeout=30)
        assert pick(s, FINISHED, **labels, reason="success") == [0.0]
        # The HTTP and gRPC ports were probed too, and are not polled.
        assert [dict(lab)["endpoint"] for (n, lab) in s
                if n == E + "up" and ("engine", "triton") in lab] == [name]
        assert pick(s, "inference_node_exporter_discovered_endpoints", engine="triton") == [1.0]
        assert server.stop() == 0
        s = wait_for("the exited server's series to go", gone, timeout=30)
        assert pick(s, "inference_node_exporter_discovered_endpoints", engine="triton") == [0.0]


def test_the_canary_streams_from_a_real_triton(tmp_path: Path, venv: Path) -> None:
    """Triton's generate_stream, as the canary speaks it: every probe is one request Triton
    counts, its words arrive at the model's 10 ms pace, and the model is found in the
    repository index."""
    with TritonServer(tmp_path, free_port(), free_port(), free_port(), [
            f"--metrics-interval-ms={METRICS_INTERVAL_MS}"], venv=venv) as server, daemon(
            "--triton.endpoint", f"t={server.metrics_url}",
            "--canary.endpoint", f"t={server.url}", *CANARY_ARGS,
            "--canary.max-tokens", "8") as metrics:
        s = probed(metrics)
        n = successes(s)
        # Triton streams no usage: the tokens are the events that came, 8 a probe.
        assert pick(s, C + "generated_tokens_total") == [8 * n]
        assert pick(s, C + "prompt_tokens_total") == []
        (itl,) = pick(s, C + "latency_seconds", latency="itl", percentile="50",
                      model=MODEL_NAME)
        assert 0.01 <= itl < 0.2, itl
        (ttft,) = pick(s, C + "latency_seconds", latency="ttft", percentile="50")
        assert 0.01 <= ttft < 0.5, ttft
        # Triton counts each probe once: all those the daemon counted, at most one more (in
        # flight when the daemon was read again).
        counted = wait_for("Triton to count the probes", lambda: (
            x if (x := own(server)[0])["nv_inference_request_success"] >= n else None))
        after = successes(scrape(metrics))
        assert counted["nv_inference_request_success"] <= after + 1
        assert counted["failures"] == 0
