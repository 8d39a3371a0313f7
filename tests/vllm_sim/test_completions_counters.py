"""Tests of the tokens and requests the simulator's streaming requests add to its engines'
counters (what the canary makes an engine generate)."""

from __future__ import annotations

from . import SimServer, parse_scenario, totals_after_tick
from .client import MODEL, canary, post, samples, scenario


def test_served_tokens_show_in_every_engines_counters(any_sim: SimServer) -> None:
    """On an idle scenario, what the counters gain is the canary's alone."""
    before = samples(any_sim)
    post(any_sim, *canary(any_sim, max_tokens=16))
    after = samples(any_sim)
    gains = {k: v - before.get(k, 0.0) for k, v in after.items()
             if v != before.get(k, 0.0) and not k[0].endswith(("_created", "_seconds"))}
    counters = any_sim.state()["engines"][0]["counters"]
    assert counters["generation_tokens"] == 16 and counters["prompt_tokens"] == 8
    assert counters["request_success"]["length"] == 1
    dialect = any_sim.dialect
    if dialect is None or "generation_tokens" in dialect.counters:
        assert 16 in gains.values(), gains
    if dialect is None:
        assert gains[("vllm:prompt_tokens_total",
                      frozenset({("model_name", MODEL), ("engine", "0")}))] == 8
    if dialect is None or dialect.finished(totals_after_tick(scenario(rate=2), 3)):
        assert 1 in gains.values(), gains  # the finished request


def test_tokens_add_to_the_scenarios_and_restart_zeroes_them() -> None:
    sc = scenario(rate=2)
    with SimServer(sc) as sim:
        labels = frozenset({("model_name", MODEL), ("engine", "0")})
        samples(sim)
        post(sim, *canary(sim, max_tokens=10))
        sim.set_stream_fault("cut", tokens=3, count=1)
        post(sim, *canary(sim, max_tokens=10))
        got = samples(sim)
        want = totals_after_tick(sc, 2)
        assert got[("vllm:generation_tokens_total", labels)] == want.generation_tokens + 13
        assert got[("vllm:prompt_tokens_total", labels)] == want.prompt_tokens + 16
        success = "vllm:request_success_total"
        for reason, extra in (("length", 1), ("abort", 1), ("stop", 0)):
            key = (success, labels | {("finished_reason", reason)})
            assert got[key] == want.finished_reason[reason] + extra
        sim.restart()
        got = samples(sim)
        want = totals_after_tick(sc, 3, [2])
        assert got[("vllm:generation_tokens_total", labels)] == want.generation_tokens


def test_tokens_show_on_the_realtime_clock() -> None:
    sc = parse_scenario({"naming": "v1", "clock": "realtime",
                         "engines": [{"model": MODEL, "dp_rank": "0"}],
                         "phases": [{"duration": 100}]})
    with SimServer(sc, dialect="sglang") as sim:
        post(sim, *canary(sim, max_tokens=5))
        got = samples(sim)
        assert sum(v for (name, _), v in got.items()
                   if name == "sglang:generation_tokens_total") == 5  # split by is_streaming
