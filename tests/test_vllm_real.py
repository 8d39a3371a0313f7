"""Integration test against a real vLLM server (CPU build, tiny local model).

A known load is sent; the daemon's token counters must equal vLLM's own, its tokens/s must
agree with the counters' movement between polls, queue depth must be seen during a burst,
and its latency percentiles must lie in the bucket vLLM's own histograms put them in.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from pathlib import Path

import pytest
import requests

from exporter.derive.quantiles import bucket_quantile
from exporter.engines.vllm import KEEP, Normaliser
from exporter.expfmt import parse
from tests.support.harness import Daemon, Series, free_port, pick, wait_for
from tests.vllm_real.server import VllmServer, run_load

pytestmark = pytest.mark.vllm_real
INTERVAL = 0.4
MAX_NUM_SEQS = 4
BURST = 64
"""Sixteen times MAX_NUM_SEQS: the queue lasts several poll intervals even on a fast run, and
forms even on a starved machine, whose API server takes the requests in slowly (seen with
128 requests over 16 slots: the engine kept up with their arrival, and no queue showed)."""
E = "inference_node_engine_"


ERRORS = "inference_node_exporter_collector_errors_total"
SAMPLED = frozenset({
    "inference_node_exporter_collector_polls_total", E + "last_success_timestamp_seconds",
    ERRORS,
    E + "generation_tokens_total", E + "generation_tokens_per_second", E + "requests_waiting",
    E + "kv_cache_usage_ratio"})


def sample(daemon: Daemon) -> dict[str, float]:
    """The few figures the burst checks need, read cheaply (the CPU is busy with vLLM); an
    empty sample when the scrape does not answer within 10 s on a starved machine (a sample
    missed, which the checks below allow for: they need only some consecutive polls)."""
    try:
        text = requests.get(daemon.url + "/metrics", timeout=10).text
    except requests.Timeout:
        return {}
    exp = parse(text, SAMPLED)
    out = {ERRORS: 0.0}
    for name in SAMPLED:
        for _, labels, value, _ts in exp.get(name):
            if name == ERRORS:
                out[name] += value  # every reason
            elif labels.get("window", "poll") == "poll":
                out[name] = value
    return out


def vllm_reading(url: str):  # type: ignore[no-untyped-def]
    """vLLM's own figures, read straight from its /metrics."""
    text = requests.get(url, timeout=10).text
    (reading,), _ = Normaliser(8).normalise(parse(text, KEEP))
    return reading


def test_exporter_agrees_with_a_real_vllm(tmp_path: Path) -> None:
    port = free_port()
    daemon = Daemon(tmp_path / "daemon", [
        "--poll.interval", f"{int(INTERVAL * 1000)}ms", "--poll.timeout", "400ms",
        "--no-collector.gpu", "--no-collector.host",
        "--poll.max-backoff", "1s", "--derive.windows", "30s,5m",
        "--vllm.endpoint", f"real=http://127.0.0.1:{port}/metrics"]).start()
    server = VllmServer(tmp_path / "vllm", port, extra_args=[
        "--num-gpu-blocks-override", "20", "--max-num-seqs", str(MAX_NUM_SEQS)])
    try:
        # Not started yet: reported down, not absent.
        wait_for("vLLM reported down", lambda: pick(daemon.series(), E + "up") == [0.0])
        server.start()
        wait_for("the daemon to see vLLM up", lambda: pick(daemon.series(), E + "up") == [1.0],
                 timeout=30)
        url = server.url
        model = server.model_name

        # Once checked against a whole answer, the daemon reads the samples it wants only
        # (name[] under /metrics/): every check below is made on what that read gave.
        wait_for("the daemon to read vLLM's filtered answer", lambda: any(
            e.get("event") == "reading the wanted samples only" and e.get("source") == "real"
            for e in daemon.logs()))
        whole = len(requests.get(server.metrics_url, timeout=10).content)
        (filtered,) = pick(daemon.series(), "inference_node_exporter_collector_response_bytes",
                           source="real")
        assert filtered < whole / 2, (filtered, whole)

        # 1. A known load: 20 requests of exactly 32 tokens.
        run_load(url, model, n_requests=20, max_tokens=32, concurrency=4)
        own = vllm_reading(server.metrics_url)
        assert own.counters["generation_tokens"] == 640

        def caught_up() -> Series | None:
            s = daemon.series()
            got = pick(s, E + "generation_tokens_total", model=model)
            return s if got == [own.counters["generation_tokens"]] else None

        s = wait_for("the daemon to catch up with vLLM's counters", caught_up)
        assert pick(s, E + "prompt_tokens_total") == [own.counters["prompt_tokens"]]

        # 2. A burst of BURST requests: they queue, the KV cache fills.
        samples: list[dict[str, float]] = []
        took: list[float] = []  # each scrape's seconds, for the messages below
        burst = threading.Thread(target=run_load, args=(url, model, BURST, 200, BURST))
        burst.start()
        while burst.is_alive():
            started = time.monotonic()
            samples.append(sample(daemon))
            took.append(round(time.monotonic() - started, 3))
            time.sleep(0.02)  # sampling pace while the burst runs, not synchronisation
        burst.join()
        own = vllm_reading(server.metrics_url)
        assert own.counters["generation_tokens"] == 640 + BURST * 200
        s = wait_for("the daemon to catch up after the burst", caught_up)

        waiting = [x[E + "requests_waiting"] for x in samples if E + "requests_waiting" in x]
        kv = [x[E + "kv_cache_usage_ratio"] for x in samples if E + "kv_cache_usage_ratio" in x]
        assert max(waiting) > 0, f"queue depth never above 0 in {len(samples)} samples"
        assert max(kv) > 0.1
        assert pick(s, E + "preemptions_total") == [own.counters["preemptions"]]
        assert pick(s, E + "requests_finished_total", reason="length") == [20.0 + BURST]

        # 3. tokens/s agrees with the counters between two consecutive successful polls: each
        # success is told apart by its timestamp, and two are consecutive when every poll the
        # daemon made between them failed (its poll and error counters grew alike). Under the
        # burst some polls time out; a rate is absent over a gap of more than one tick.
        success: dict[float, tuple[float, float, float, float | None]] = {}
        for x in samples:
            try:
                ts, n, errors = (x[E + "last_success_timestamp_seconds"],
                                 x["inference_node_exporter_collector_polls_total"], x[ERRORS])
                gen = x[E + "generation_tokens_total"]
            except KeyError:  # before the first success
                continue
            if ts not in success or n < success[ts][0]:
                success[ts] = (n, errors, gen, x.get(E + "generation_tokens_per_second"))
        ordered = sorted(success.items())
        pairs = [((t1, a[2]), (t2, b[2], b[3])) for (t1, a), (t2, b)
                 in itertools.pairwise(ordered)
                 if b[0] - a[0] == b[1] - a[1] + 1 and b[3] is not None and b[2] > a[2]]
        assert len(pairs) >= 3, (
            f"too few consecutive polls observed: {ordered}; the scrapes took {took} s")
        for (t1, gen1), (t2, gen2, rate) in pairs:
            assert rate == pytest.approx((gen2 - gen1) / (t2 - t1), rel=0.02)

        # 4. Percentiles lie in the bucket vLLM's own histograms put them in (the 5m window
        # holds every request, since vLLM started counting from zero after the daemon).
        for key, latency in (("time_to_first_token", "ttft"), ("inter_token_latency", "itl"),
                             ("e2e_request_latency", "e2e"), ("request_queue_time", "queue")):
            h = own.histograms[key]
            assert pick(s, E + "latency_window_observations", latency=latency,
                        window="5m") == [h.count]
            for pct in ("50", "95", "99"):
                q = int(pct) / 100
                (got,) = pick(s, E + "latency_seconds", latency=latency, window="5m",
                              percentile=pct)
                rank = q * h.count
                b = next(i for i, c in enumerate(h.counts) if c >= rank)
                low = 0.0 if b == 0 else h.bounds[b - 1]
                high = h.bounds[b] if not math.isinf(h.bounds[b]) else h.bounds[-2]
                assert low <= got <= high, f"{latency} P{pct} {got} outside ({low}, {high}]"
                assert got == pytest.approx(bucket_quantile(q, h.bounds, h.counts))
    finally:
        server.stop(check=False)
        assert daemon.stop() == 0
