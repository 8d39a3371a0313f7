"""A client of the simulator's streaming requests, for tests: the canary probe's request to
each engine (the body ``exporter/canary`` sends), read event by event, and the scenarios the
tests serve."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from .dialects import DIALECTS
from .scenario import Scenario, parse_scenario
from .server import SimServer

__all__ = ["ALL", "MODEL", "PROMPT", "Answer", "canary", "is_triton", "post", "samples",
           "scenario"]

MODEL = "sim-model"
PROMPT = "the quick brown fox jumps over a lazy"
"""Eight words: eight prompt tokens."""
ALL = [None, *DIALECTS]
"""Every engine's simulator: vLLM's (None) and the dialects."""


def scenario(rate: int = 0) -> Scenario:
    """An idle scenario (or a busy one, `rate` times a base load) on the tick clock."""
    phase: dict[str, Any] = {"duration": 100}
    if rate:
        phase.update({"requests_per_s": rate, "prompt_tokens_per_s": 100 * rate,
                      "generation_tokens_per_s": 300 * rate,
                      "itl_observations_per_s": 300 * rate, "ttft": {"0.05": 1},
                      "itl": {"0.02": 1}, "e2e": {"1.0": 1}, "queue": {"0.1": 1}})
    return parse_scenario({"naming": "v1", "clock": "tick",
                           "engines": [{"model": MODEL, "dp_rank": "0"}], "phases": [phase]})


def is_triton(sim: SimServer) -> bool:
    return sim.flavour.api == "triton"


def canary(sim: SimServer, max_tokens: int = 16, model: str = MODEL) -> tuple[str, Any]:
    """The canary's request: path and JSON body."""
    if is_triton(sim):
        return (f"/v2/models/{model}/generate_stream",
                {"text_input": PROMPT, "max_tokens": max_tokens, "stream": True,
                 "temperature": 0})
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    if sim.flavour.name != "tgi":
        body["ignore_eos"] = True
    return "/v1/completions", body


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    events: list[bytes] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    """Seconds from the request to each event."""
    complete: bool = True
    """Whether the chunked framing ended properly."""

    def json_events(self) -> list[Any]:
        return [json.loads(e) for e in self.events if e != b"[DONE]"]

    def tokens(self) -> list[Any]:
        return [e for e in self.json_events() if e.get("choices") or "text_output" in e]


def post(sim: SimServer, path: str, body: Any, timeout: float = 10.0) -> Answer:
    """POST and read the answer event by event, as the canary does. (``read1``, not
    ``readline``: http.client's ``readline`` of a chunked answer takes a broken framing for
    its end, where ``read1`` raises IncompleteRead.)"""
    conn = http.client.HTTPConnection(sim.host, sim.port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()})
        if resp.status != 200 or "event-stream" not in answer.headers["content-type"]:
            answer.body = resp.read()
            return answer
        buffer, data = b"", list[bytes]()
        while True:
            try:
                more = resp.read1(65536)
            except http.client.IncompleteRead:
                answer.complete = False
                return answer
            buffer += more
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip() == b"" and data:
                    answer.events.append(b"\n".join(data))
                    answer.times.append(time.monotonic() - started)
                    data = []
                elif line.startswith(b"data:"):
                    data.append(line[5:].strip())
            if not more:
                return answer
    finally:
        conn.close()


def samples(sim: SimServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = requests.get(sim.metrics_url, timeout=5)
    response.raise_for_status()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}
