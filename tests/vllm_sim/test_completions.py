"""Tests of the simulator's streaming requests (what the canary probe sends): every engine's
API, the pace and the stream faults."""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time

import pytest
import requests

from . import SimServer
from .client import MODEL, Answer, canary, is_triton, post, samples, scenario
from .completions import TOKENS
from .faults import GARBAGE_EVENT

# --- every engine's API --------------------------------------------------------------------

def test_model_listing(any_sim: SimServer) -> None:
    if is_triton(any_sim):
        assert requests.get(f"{any_sim.url}/v1/models", timeout=5).status_code == 404
        index = requests.post(f"{any_sim.url}/v2/repository/index", timeout=5)
        assert index.status_code == 200
        assert index.json() == [{"name": MODEL, "version": "1", "state": "READY"}]
    else:
        listed = requests.get(f"{any_sim.url}/v1/models", timeout=5)
        assert listed.status_code == 200
        assert listed.json()["data"][0]["id"] == MODEL


def test_stream_has_one_event_per_token_then_usage_and_done(any_sim: SimServer) -> None:
    answer = post(any_sim, *canary(any_sim, max_tokens=7))
    assert answer.status == 200 and answer.complete
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["transfer-encoding"] == "chunked"
    tokens = answer.tokens()
    assert len(tokens) == 7
    if is_triton(any_sim):
        assert len(answer.events) == 7
        assert [t["text_output"] for t in tokens] == [TOKENS[i] for i in range(7)]
        assert all(t["model_name"] == MODEL for t in tokens)
        return
    assert answer.events[-1] == b"[DONE]"
    assert all(t["choices"][0]["text"] == TOKENS[i] for i, t in enumerate(tokens))
    assert [t["choices"][0]["finish_reason"] for t in tokens] == [None] * 6 + ["length"]
    usage = answer.json_events()[-1]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15}
    assert len(answer.events) == 9


def test_usage_chunk_only_when_asked(vllm: SimServer) -> None:
    path, body = canary(vllm, max_tokens=3)
    del body["stream_options"]
    answer = post(vllm, path, body)
    assert len(answer.events) == 4 and answer.events[-1] == b"[DONE]"
    assert all("usage" not in e for e in answer.json_events())


def test_without_stream_one_json_answer(vllm: SimServer) -> None:
    path, body = canary(vllm, max_tokens=3)
    body["stream"] = False
    answer = post(vllm, path, body)
    got = json.loads(answer.body)
    assert answer.status == 200 and got["choices"][0]["text"] == "".join(TOKENS[:3])
    assert got["usage"]["completion_tokens"] == 3


def test_wrong_model_is_answered_as_the_engine_does(any_sim: SimServer) -> None:
    answer = post(any_sim, *canary(any_sim, model="nope"))
    flavour = any_sim.flavour
    assert answer.status == flavour.not_found
    got = json.loads(answer.body)
    if flavour.name == "vllm":
        assert answer.status == 404
        assert got == {"object": "error", "message": "The model `nope` does not exist.",
                       "type": "NotFoundError", "param": None, "code": 404}
    elif is_triton(any_sim):
        assert answer.status == 400
        assert got == {"error": "Request for unknown model: 'nope' is not found"}
    elif flavour.nested:
        assert answer.status == 400 and "model" in got["error"]["message"]
    else:
        assert got["object"] == "error" and got["code"] == answer.status in (400, 404)
    assert any_sim.stream_requests[-1].outcome == "error"


def test_model_check_off_takes_any_name(vllm: SimServer) -> None:
    vllm.model_check = False
    answer = post(vllm, *canary(vllm, max_tokens=2, model="whatever"))
    assert answer.status == 200 and len(answer.tokens()) == 2
    assert answer.tokens()[0]["model"] == "whatever"


def test_bad_request(vllm: SimServer, triton: SimServer) -> None:
    path, body = canary(vllm)
    assert post(vllm, path, {**body, "max_tokens": 0}).status == 400
    assert json.loads(post(vllm, path, {**body, "prompt": 3}).body)["object"] == "error"
    path, body = canary(triton)
    del body["text_input"]
    assert "error" in json.loads(post(triton, path, body).body)


# --- pace ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dialect", [None, "triton"])
def test_pace_sets_first_token_and_inter_token_delays(dialect: str | None) -> None:
    with SimServer(scenario(), dialect=dialect, first_token_delay=0.3,
                   token_delay=0.05) as sim:
        answer = post(sim, *canary(sim, max_tokens=5))
        token_times = answer.times[:5]
        assert token_times[0] >= 0.3
        gaps = [b - a for a, b in itertools.pairwise(token_times)]
        assert all(g >= 0.04 for g in gaps) and token_times[0] < 1.0
        sim.set_pace(first_token_delay=0.0, token_delay=0.0)
        assert post(sim, *canary(sim, max_tokens=5)).times[-1] < 0.25


# --- stream faults -------------------------------------------------------------------------

def test_slow_stream_times_out_while_metrics_answer(vllm: SimServer) -> None:
    vllm.set_stream_fault("slow", seconds=0.3)
    with pytest.raises(TimeoutError):
        post(vllm, *canary(vllm), timeout=0.15)
    done: list[Answer] = []
    thread = threading.Thread(target=lambda: done.append(post(vllm, *canary(vllm, 8))))
    thread.start()
    try:
        time.sleep(0.1)
        for _ in range(3):  # at most 1.8 s of the stream's 2.4
            started = time.monotonic()
            assert requests.get(vllm.metrics_url, timeout=2).status_code == 200
            assert time.monotonic() - started < 0.5
            assert thread.is_alive()  # the slow stream is still being sent
            time.sleep(0.1)
    finally:
        thread.join(10)
    answer = done[0]
    assert len(answer.tokens()) == 8 and answer.complete and answer.times[0] >= 0.3
    assert answer.times[7] - answer.times[0] >= 2.0


@pytest.mark.parametrize("dialect", [None, "sglang", "triton"])
def test_cut_closes_after_k_tokens_without_done(dialect: str | None) -> None:
    with SimServer(scenario(), dialect=dialect) as sim:
        sim.set_stream_fault("cut", tokens=3)
        answer = post(sim, *canary(sim))
        assert not answer.complete and b"[DONE]" not in answer.events
        assert len(answer.tokens()) == 3
        with pytest.raises(requests.exceptions.ChunkedEncodingError), requests.post(
                f"{sim.url}{canary(sim)[0]}", json=canary(sim)[1], stream=True,
                timeout=5) as response:
            list(response.iter_lines())
        assert [r.outcome for r in sim.stream_requests] == ["cut", "cut"]


@pytest.mark.parametrize("dialect", [None, "triton"])
def test_garbage_line_in_the_stream(dialect: str | None) -> None:
    with SimServer(scenario(), dialect=dialect) as sim:
        sim.set_stream_fault("garbage", tokens=2)
        answer = post(sim, *canary(sim, max_tokens=4))
        bad = GARBAGE_EVENT.removeprefix(b"data: ").strip()
        assert answer.events[2] == bad and answer.complete
        good = [e for e in answer.events if e != bad]
        assert len([e for e in good if e != b"[DONE]"]) == (4 if dialect else 5)


def test_short_ends_normally_before_max_tokens(vllm: SimServer) -> None:
    vllm.set_stream_fault("short", tokens=4)
    answer = post(vllm, *canary(vllm))
    assert answer.complete and answer.events[-1] == b"[DONE]" and len(answer.tokens()) == 4
    assert answer.tokens()[-1]["choices"][0]["finish_reason"] == "stop"
    assert answer.json_events()[-1]["usage"]["completion_tokens"] == 4


def test_wrong_model_fault_serves_another_name(any_sim: SimServer) -> None:
    any_sim.set_stream_fault("wrong_model", model="other")
    assert post(any_sim, *canary(any_sim)).status == any_sim.flavour.not_found
    assert len(post(any_sim, *canary(any_sim, max_tokens=2, model="other")).tokens()) == 2
    if is_triton(any_sim):
        index = requests.post(f"{any_sim.url}/v2/repository/index", timeout=5).json()
        assert [m["name"] for m in index] == ["other"]
    else:
        listed = requests.get(f"{any_sim.url}/v1/models", timeout=5).json()
        assert listed["data"][0]["id"] == "other"
    any_sim.set_stream_fault("none")
    assert post(any_sim, *canary(any_sim, max_tokens=2)).status == 200


@pytest.mark.parametrize("dialect", [None, "llamacpp", "triton"])
def test_status500_and_count(dialect: str | None) -> None:
    with SimServer(scenario(), dialect=dialect) as sim:
        sim.set_stream_fault("status500", count=2)
        for _ in range(2):
            answer = post(sim, *canary(sim))
            got = json.loads(answer.body)
            assert answer.status == 500 and ("error" in got or got["object"] == "error")
        assert post(sim, *canary(sim, max_tokens=2)).status == 200
        assert sim.stream_fault.mode == "none"


def test_close_before_any_answer(vllm: SimServer) -> None:
    vllm.set_stream_fault("close")
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        post(vllm, *canary(vllm))
    assert requests.get(vllm.metrics_url, timeout=5).status_code == 200


def test_down_then_up_on_the_same_port(vllm: SimServer) -> None:
    port = vllm.port
    samples(vllm)
    vllm.stop()
    with pytest.raises(ConnectionRefusedError):
        post(vllm, *canary(vllm))
    vllm.start()
    assert vllm.port == port
    assert post(vllm, *canary(vllm, max_tokens=2)).status == 200
    assert vllm.tick == 1  # the clock ran on


def test_stop_ends_a_stream_in_flight() -> None:
    sim = SimServer(scenario(), token_delay=0.5).start()
    done: list[Answer] = []
    thread = threading.Thread(target=lambda: done.append(post(sim, *canary(sim))))
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    sim.stop()
    thread.join(5)
    assert time.monotonic() - started < 2 and not done[0].complete


def test_controls_over_http(vllm: SimServer) -> None:
    got = requests.post(f"{vllm.url}/_sim/stream_fault", timeout=5,
                        json={"mode": "cut", "tokens": 2, "count": 1})
    assert got.status_code == 200 and got.json()["tokens"] == 2
    assert vllm.stream_fault.mode == "cut"
    got = requests.post(f"{vllm.url}/_sim/pace", json={"token_delay": 0.01}, timeout=5)
    assert got.json() == {"first_token_delay": 0.0, "token_delay": 0.01}
    state = requests.get(f"{vllm.url}/_sim/state", timeout=5).json()
    assert state["stream_fault"]["mode"] == "cut" and state["pace"]["token_delay"] == 0.01
    for path, body in (("/_sim/stream_fault", {"mode": "explode"}),
                       ("/_sim/stream_fault", {"mode": "cut", "tokens": -1}),
                       ("/_sim/pace", {"token_delay": -1}), ("/_sim/pace", {"x": 1})):
        assert requests.post(f"{vllm.url}{path}", json=body, timeout=5).status_code == 400
