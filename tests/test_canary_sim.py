"""The canary against every engine's simulator (``tests/vllm_sim``): the probe speaks each
engine's streaming API, measures the pace the simulator keeps, counts the tokens the engine
counts, and meets every fault (a stalled or cut stream, garbage, a wrong model, an error, an
engine down) with the right outcome while the endpoint's polling goes on untouched.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import requests

from tests.support.harness import Series, in_process_daemon, pick, scrape, wait_for
from tests.vllm_sim import SimServer
from tests.vllm_sim.client import MODEL, scenario
from tests.vllm_sim.dialects import DIALECTS

C = "inference_node_canary_"
E = "inference_node_engine_"
MAX_TOKENS = 4
FIRST, GAP = 0.08, 0.03
"""The simulator's pace: seconds to the first token, and between later ones."""
KINDS: dict[str | None, str] = {None: "vllm", **{n: d.kind for n, d in DIALECTS.items()}}


def _outcomes(s: Series) -> dict[str, float]:
    return {dict(labels)["outcome"]: v for (name, labels), v in s.items()
            if name == C + "probes_total" and v}


def _daemon(sim: SimServer, kind: str, *extra: str) -> AbstractContextManager[str]:
    api = f"={sim.url}" if kind == "triton" else ""
    return in_process_daemon(
        "--collector.vllm", f"--{kind}.endpoint", f"sim={sim.metrics_url}",
        "--canary.endpoint", f"sim{api}",
        "--canary.interval", "1s", "--canary.timeout", "1s",
        "--canary.max-tokens", str(MAX_TOKENS), "--canary.prompt-tokens", "8", *extra,
        windows="1m")


@pytest.mark.parametrize("dialect", list(KINDS), ids=lambda d: d or "vllm")
def test_the_probe_speaks_every_engine(dialect: str | None) -> None:
    kind = KINDS[dialect]
    with SimServer(scenario(), dialect=dialect, first_token_delay=FIRST,
                   token_delay=GAP) as sim, _daemon(sim, kind) as url:
        s = wait_for("two successful probes", lambda: (
            x if _outcomes(x := scrape(url)).get("success", 0) >= 2 else None), timeout=15)
        assert set(_outcomes(s)) == {"success"}
        n = _outcomes(s)["success"]
        # What the engine was sent: the fixed request, ignore_eos only where it is taken.
        bodies = [r.body for r in sim.stream_requests]
        assert all(b == bodies[0] for b in bodies)
        assert ("ignore_eos" in bodies[0]) == (kind not in ("tgi", "triton"))
        # The pace the simulator keeps, seen from the client: never faster.
        (ttft,) = pick(s, C + "latency_seconds", latency="ttft", percentile="50", model=MODEL)
        (itl,) = pick(s, C + "latency_seconds", latency="itl", percentile="50", model=MODEL)
        assert FIRST <= ttft < FIRST + 0.3
        assert GAP * 0.9 <= itl < GAP + 0.2
        assert pick(s, C + "latency_window_observations", latency="itl") == \
            [n * (MAX_TOKENS - 1)]
        assert pick(s, C + "generated_tokens_total") == [n * MAX_TOKENS]
        # The probe's tokens are in the engine's own counters, where it has them: the
        # daemon's counter, read at a quiet moment, holds as many as the probes made.
        if "generation_tokens" in (DIALECTS[dialect].counters if dialect else {
                "generation_tokens"}):
            def quiet() -> Series | None:
                x = scrape(url)
                gen = pick(x, E + "generation_tokens_total")
                made = pick(x, C + "generated_tokens_total")
                return x if gen and made and gen == made else None

            wait_for("the engine's counter to hold the probes' tokens", quiet, timeout=10)
        assert pick(s, E + "up", endpoint="sim") == [1.0]


FAULTS = [
    ("slow", {"seconds": 2.0}, "timeout"),
    ("cut", {"tokens": 2}, "stream_cut"),
    ("garbage", {"tokens": 1}, "bad_stream"),
    ("short", {"tokens": 2}, "short"),
    ("status500", {}, "http_status"),
    ("close", {}, "connection"),
    ("lying_usage", {"tokens": 10**12}, "bad_stream"),
]
NO_USAGE = {"short", "lying_usage"}
"""Faults Triton's stream cannot show: without ignore_eos fewer tokens is a normal end, and
it reports no usage."""


@pytest.mark.parametrize("dialect", [None, "triton-trtllm"], ids=["vllm", "triton"])
def test_faults_change_only_the_canary(dialect: str | None) -> None:
    kind = KINDS[dialect]
    with SimServer(scenario(), dialect=dialect) as sim, _daemon(sim, kind) as url:
        wait_for("a first success", lambda: _outcomes(scrape(url)).get("success"), timeout=10)
        for mode, args, outcome in FAULTS:
            if mode in NO_USAGE and kind == "triton":
                continue
            seen = _outcomes(scrape(url)).get(outcome, 0)
            sim.set_stream_fault(mode, **args)  # type: ignore[arg-type]
            s = wait_for(f"{mode} seen as {outcome}", lambda o=outcome, n=seen: (  # type: ignore[misc]
                x if _outcomes(x := scrape(url)).get(o, 0) > n else None), timeout=10)
            sim.set_stream_fault("none")
            polls = pick(s, "inference_node_exporter_collector_polls_total", source="sim")
            assert pick(s, E + "up", endpoint="sim") == [1.0], mode
            assert pick(s, "inference_node_exporter_collector_errors_total",
                        source="sim") == [], mode
            assert polls and polls[0] > 0
        # Each fault was met with its own outcome and nothing else failed.
        s = wait_for("a success after the faults", lambda: (
            x if _outcomes(x := scrape(url)).get("success", 0) >= 2 else None), timeout=10)
        expected = {o for m, _, o in FAULTS if not (m in NO_USAGE and kind == "triton")}
        assert set(_outcomes(s)) == expected | {"success"}
        # No probe counted more tokens than it asked for, whatever the engine claimed.
        probes = sum(_outcomes(s).values())
        assert pick(s, C + "generated_tokens_total")[0] <= MAX_TOKENS * probes
        assert all(n <= 8 * probes for n in pick(s, C + "prompt_tokens_total"))


def test_a_wrong_model_is_asked_again_and_a_down_engine_refuses() -> None:
    with SimServer(scenario()) as sim, _daemon(sim, "vllm") as url:
        wait_for("a first success", lambda: _outcomes(scrape(url)).get("success"), timeout=10)
        # The engine now serves another model: one probe fails, the next asks /v1/models.
        sim.set_stream_fault("wrong_model", model="other-model")
        s = wait_for("a success with the new model", lambda: (
            x if pick(x := scrape(url), C + "time_to_first_token_seconds_count",
                      model="other-model") else None), timeout=10)
        assert _outcomes(s).get("model_not_found") == 1.0
        assert pick(s, C + "time_to_first_token_seconds_count", model=MODEL) == []
        sim.set_stream_fault("none")
        sim.stop()
        s = wait_for("a refused probe", lambda: (
            x if _outcomes(x := scrape(url)).get("refused") else None), timeout=10)
        assert pick(s, E + "up", endpoint="sim") == [0.0]
        # The landing page says what the canary last met.
        page = requests.get(url.removesuffix("/metrics") + "/", timeout=5).text
        assert f"<td>sim</td><td>{sim.url}</td><td>refused</td>" in page, page
        sim.start()
        wait_for("polling and probing back", lambda: (
            pick(x := scrape(url), E + "up", endpoint="sim") == [1.0]
            and _outcomes(x)["success"] > _outcomes(s)["success"]), timeout=10)


def test_a_configured_model_is_the_one_asked_for(tmp_path: Path) -> None:
    with SimServer(scenario()) as sim:
        config = tmp_path / "config.toml"
        config.write_text(f"""
[vllm]
endpoints = [{{ url = "{sim.metrics_url}", name = "sim" }}]
[canary]
endpoints = [{{ endpoint = "sim", model = "pinned" }}]
interval = "1s"
timeout = "1s"
""")
        with in_process_daemon("--collector.vllm", "--config.file", str(config)) as url:
            s = wait_for("two probes for the pinned model", lambda: (
                x if _outcomes(x := scrape(url)).get("model_not_found", 0) >= 2 else None),
                timeout=10)
            # A configured model is never swapped for a listed one.
            assert {r.body["model"] for r in sim.stream_requests} == {"pinned"}
            assert "success" not in _outcomes(s)
            assert pick(s, E + "up", endpoint="sim") == [1.0]
