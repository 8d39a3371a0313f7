"""The canary against a real vLLM server (CPU build, tiny local model), with no other load:
every request vLLM serves is a probe, so vLLM's own counters and histograms must account for
exactly the probes the daemon counts, and the probe's client-side timings must bound vLLM's
server-side ones from above.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from exporter.engines.reading import EngineReading
from tests.support.harness import Daemon, Series, free_port, pick, wait_for
from tests.test_vllm_real import vllm_reading
from tests.vllm_real.server import VllmServer

pytestmark = pytest.mark.vllm_real
C = "inference_node_canary_"
PROBES = 6
MAX_TOKENS = 16


def _probes(s: Series) -> dict[str, float]:
    return {dict(labels)["outcome"]: v for (name, labels), v in s.items()
            if name == C + "probes_total"}


def test_canary_agrees_with_a_real_vllm(tmp_path: Path) -> None:
    port = free_port()
    server = VllmServer(tmp_path / "vllm", port)
    server.start()
    daemon = Daemon(tmp_path / "daemon", [
        "--poll.interval", "1s", "--poll.timeout", "1s",
        "--no-collector.gpu", "--no-collector.host",
        "--no-engines.discover", "--derive.windows", "5m,10m",
        "--vllm.endpoint", f"real=http://127.0.0.1:{port}/metrics",
        "--canary.endpoint", "real", "--canary.interval", "3s", "--canary.timeout", "3s",
        "--canary.max-tokens", str(MAX_TOKENS)]).start()
    try:
        # A quiet moment: no probe ended between two scrapes of the daemon, and vLLM, read
        # between them, runs none: its counters then hold exactly the probes counted.
        def settled() -> tuple[Series, EngineReading] | None:
            before = daemon.series()
            own = vllm_reading(server.metrics_url)
            after = daemon.series()
            done = _probes(before).get("success", 0)
            if done < PROBES or _probes(before) != _probes(after):
                return None
            if own.gauges.get("requests_running") or own.gauges.get("requests_waiting"):
                return None
            return before, own

        s, own = wait_for("the canary to have made its probes", settled, timeout=120)
        outcomes = _probes(s)
        assert {k: v for k, v in outcomes.items() if k != "success" and v} == {}
        n = outcomes["success"]
        model = server.model_name

        # Tokens: the probes' own count equals vLLM's, all of which are the probes'.
        assert pick(s, C + "generated_tokens_total") == [n * MAX_TOKENS]
        assert own.counters["generation_tokens"] == n * MAX_TOKENS
        assert pick(s, C + "prompt_tokens_total") == [own.counters["prompt_tokens"]]

        # vLLM observed each probe once; the client sees each at least as slow as the server.
        for key in ("time_to_first_token", "e2e_request_latency"):
            h = own.histograms[key]
            assert h.count == n
            (count,) = pick(s, C + f"{key}_seconds_count", model=model)
            (total,) = pick(s, C + f"{key}_seconds_sum", model=model)
            assert count == n
            assert total >= h.sum, (key, total, h.sum)
            assert (total - h.sum) / n < 0.5, f"{key}: client {total}s vs vLLM {h.sum}s"
            # So is every quantile: the canary's P50 is not below the bottom of the vLLM
            # bucket its own P50 lies in.
            latency = "ttft" if key == "time_to_first_token" else "e2e"
            (p50,) = pick(s, C + "latency_seconds", latency=latency, window="10m",
                          percentile="50")
            b = next(i for i, c in enumerate(h.counts) if c >= 0.5 * h.count)
            assert p50 >= (0.0 if b == 0 else h.bounds[b - 1])
            assert pick(s, C + "latency_window_observations", latency=latency,
                        window="10m") == [n]
        # Inter-token gaps: at most one per token after the first (a lagging API server may
        # send two tokens in one chunk), and together they fill the time after the first.
        (gaps,) = pick(s, C + "inter_token_latency_seconds_count", model=model)
        assert n <= gaps <= n * (MAX_TOKENS - 1)
        assert own.histograms["inter_token_latency"].count == n * (MAX_TOKENS - 1)
        (gap_sum,) = pick(s, C + "inter_token_latency_seconds_sum", model=model)
        (ttft_sum,) = pick(s, C + "time_to_first_token_seconds_sum", model=model)
        (e2e_sum,) = pick(s, C + "e2e_request_latency_seconds_sum", model=model)
        assert ttft_sum + gap_sum <= e2e_sum
        assert not math.isnan(gap_sum)
        # Polling went on beside the probes.
        assert pick(s, "inference_node_engine_up", endpoint="real") == [1.0]
    finally:
        server.stop(check=False)
        assert daemon.stop() == 0
