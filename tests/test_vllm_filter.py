"""Asking vLLM for the wanted samples only (``/metrics/?name[]=``), and falling back to the
whole exposition wherever an endpoint does not filter faithfully."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.collectors.base import PollOutput
from exporter.collectors.engine import EngineSource
from exporter.collectors.filtering import filtered_url
from exporter.config import Config, endpoint
from exporter.engines.vllm import ADAPTER, KEEP
from exporter.fetch import FetchError
from tests.support.served import Answer, Served
from tests.vllm_sim.scenario import load_scenario
from tests.vllm_sim.server import SimServer

SCENARIOS = Path(__file__).parent / "scenarios"
FIXTURE = Path(__file__).parent / "fixtures" / "vllm" / "v0.32.0-cpu-after-load.txt"


def source(url: str) -> EngineSource:
    cfg = Config()
    src = EngineSource(ADAPTER, endpoint(url, "x"), cfg)
    src.processes = None
    return src


def test_filtered_url_asks_the_mounted_app_and_keeps_query_and_credentials() -> None:
    url = filtered_url("http://u:p@h:8000/metrics?x=1", ["vllm:b_total", "vllm:a"])
    assert url == "http://u:p@h:8000/metrics/?x=1&name%5B%5D=vllm%3Aa&name%5B%5D=vllm%3Ab_total"
    assert filtered_url("https://h/m/", ["a"]) == "https://h/m/?name%5B%5D=a"


def test_a_filtering_endpoint_is_read_filtered_with_the_same_output() -> None:
    scenario = load_scenario(SCENARIOS / "steady_v1.json")
    with SimServer(scenario) as filtering, SimServer(scenario, filtering=False) as plain:
        a, b = source(filtering.metrics_url), source(plain.metrics_url)
        now = [0.0]
        a.clock = b.clock = lambda: now[0]  # the same times, so the same rates

        def both() -> tuple[PollOutput, PollOutput]:
            now[0] += 5.0
            return a.poll(), b.poll()
        outputs = [both() for _ in range(4)]
        # A whole answer first, then the filtered one, checked against it, from then on.
        assert a.filtering and not b.filtering
        sizes = [(x.response_bytes or 0, y.response_bytes or 0) for x, y in outputs]
        assert sizes[0][0] > sizes[1][0]
        assert all(x < y for x, y in sizes[1:]), sizes
        # The same ticks of the same scenario: the exporter's output is the same, line for line.
        for x, y in outputs:
            assert x.families.lines == y.families.lines
        # One request per poll where the filter works.
        assert filtering.state()["scrapes"] == 4


class Endpoint(Served):
    """``/metrics`` answers the whole recorded exposition; ``/metrics/`` what ``filtered``
    holds (a status code, or a body)."""

    def __init__(self, whole: bytes) -> None:
        self.whole = whole
        self.filtered: int | bytes = 404
        super().__init__(self.page)

    def page(self, path: str) -> Answer:
        answer = self.whole if path == "/metrics" else self.filtered
        return (answer, None, b"") if isinstance(answer, int) else answer


def _families(text: str, drop: str = "") -> bytes:
    """The wanted families of ``text`` (as a filtering endpoint answers), less ``drop``."""
    out = []
    for block in text.split("# HELP ")[1:]:
        name = block.split(" ", 1)[0]
        if (name in KEEP or name + "_total" in KEEP) and name != drop:
            out.append("# HELP " + block)
    return "".join(out).encode()


def test_endpoints_that_do_not_filter_faithfully_are_read_whole() -> None:
    text = FIXTURE.read_text()
    cases: list[int | bytes] = [
        404,  # no app under /metrics/
        b"",  # prometheus_client in multiprocess mode: nothing for name[]
        _families(text, drop="vllm:num_requests_waiting"),  # a series short
    ]
    for answer in cases:
        with Endpoint(text.encode()) as server:
            server.filtered = answer
            src = source(server.url + "/metrics")
            outs = [src.poll() for _ in range(3)]
            assert not src.filtering, answer
            assert all(o.response_bytes == len(text.encode()) for o in outs)
            got = outs[-1].families.lines
            assert "inference_node_engine_requests_waiting" in got
            # Two requests in the poll that tried the filter, one in the others.
            assert len(server.paths) == 4


def test_an_endpoint_that_stops_filtering_is_read_whole_in_the_same_poll() -> None:
    text = FIXTURE.read_text()
    with Endpoint(text.encode()) as server:
        server.filtered = _families(text)
        src = source(server.url + "/metrics")
        src.poll()
        filtered = src.poll()
        assert src.filtering and filtered.response_bytes == len(server.filtered)
        # A server error is the engine's, filtered or not: an error, and the filter stays.
        server.filtered = 500
        with pytest.raises(FetchError) as failed:
            src.poll()
        assert failed.value.reason == "http_status" and src.filtering
        assert server.paths[-1].startswith("/metrics/?")
        # The engine comes back in multiprocess mode: the filtered answer is empty.
        server.filtered = b""
        out = src.poll()
        assert not src.filtering
        assert out.response_bytes == len(text.encode())
        assert "inference_node_engine_requests_waiting" in out.families.lines
        assert server.paths[-2].startswith("/metrics/?name%5B%5D=vllm%3A")
        assert server.paths[-1] == "/metrics"


def test_a_reading_is_stamped_at_its_request_not_after_a_slow_parse(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.collectors import engine

    scenario = load_scenario(SCENARIOS / "steady_v1.json")
    parse_body = engine.parse_body
    now = [100.0]

    def slow_parse(*args: object, **kwargs: object) -> object:
        now[0] += 7.0  # a parse that takes 7 s of the source's clock
        return parse_body(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "parse_body", slow_parse)
    with SimServer(scenario) as sim:
        src = source(sim.metrics_url)
        src.clock = lambda: now[0]
        src.poll()
        # The request itself took no time on this clock: the reading is stamped at its
        # start, not in the middle of the parse after it.
        assert src._stamp[0] == 100.0
        now[0] = 200.0
        src.poll()
        assert src._stamp[0] == 200.0
