"""Engines found by themselves: processes that look like an engine and answer with its
metrics are polled on unexpected ports, look-alikes are not, configured endpoints win, the
count is bounded, and an engine is dropped when its process exits."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from exporter import engines
from exporter.cli import load, parser
from exporter.config import Config
from exporter.daemon import Daemon
from exporter.discovery import Candidate, Discovery, candidates, merged
from exporter.engines.adapter import Adapter
from tests.support.harness import free_port, parse_series, pick, wait_for

HERE = Path(__file__).parent
FAKE = HERE / "support" / "fake_engine.py"
LLAMA_BUSY = HERE / "fixtures" / "llamacpp" / "llamacpp-busy.txt"

pytestmark = pytest.mark.discovery


def found(kind: str, port: int, pid: int = 100) -> Candidate:
    return Candidate(kind, "127.0.0.1", port, pid, 1.0)


class Scripted:
    """Candidates and probe answers set by the test."""

    def __init__(self) -> None:
        self.now: list[Candidate] = []
        self.serving: set[int] = set()
        self.probed: list[str] = []

    def scan(self) -> list[Candidate]:
        return list(self.now)

    def probe(self, _adapter: Adapter, url: str, _limit: int) -> bool:
        self.probed.append(url)
        return int(url.split(":")[2].split("/")[0]) in self.serving


def test_what_answers_is_polled_and_a_look_alike_is_not() -> None:
    s = Scripted()
    d = Discovery(s.scan, s.probe)
    s.now = [found("sglang", 31000), found("llamacpp", 18080, pid=7)]
    s.serving = {31000}
    assert set(d.scan(Config())) == {"sglang"}
    (e,) = d.scan(Config())["sglang"]
    assert (e.name, e.url) == ("sglang-31000", "http://127.0.0.1:31000/metrics")
    # The look-alike is asked again (an engine may still be starting), the found one is not.
    assert s.probed.count("http://127.0.0.1:18080/metrics") == 2
    assert s.probed.count("http://127.0.0.1:31000/metrics") == 1
    s.serving.add(18080)
    assert set(d.scan(Config())) == {"sglang", "llamacpp"}


def test_configured_endpoints_win_and_the_exited_are_dropped() -> None:
    s = Scripted()
    d = Discovery(s.scan, s.probe)
    s.now, s.serving = [found("vllm", 8000), found("vllm", 8001)], {8000, 8001}
    # vLLM's default endpoint (127.0.0.1:8000) is configured: only 8001 is found.
    assert [e.url for e in d.scan(Config())["vllm"]] == ["http://127.0.0.1:8001/metrics"]
    cfg = Config().with_engine("vllm", endpoints=())
    assert len(d.scan(cfg)["vllm"]) == 2
    s.now = [found("vllm", 8000)]
    assert [e.url for e in d.scan(cfg)["vllm"]] == ["http://127.0.0.1:8000/metrics"]
    s.now = []
    assert d.scan(cfg) == {}
    # A disabled collector's engines are not looked for.
    s.now = [found("sglang", 30000)]
    s.serving = {30000}
    assert d.scan(Config(collectors=frozenset({"host"}))) == {}


def test_the_count_is_bounded_and_what_is_left_out_is_counted() -> None:
    s = Scripted()
    d = Discovery(s.scan, s.probe)
    s.now = [found("sglang", 30000 + i, pid=i) for i in range(5)]
    s.serving = {30000 + i for i in range(5)}
    cfg = Config(max_discovered=3)
    assert len(d.scan(cfg)["sglang"]) == 3
    assert d.left_out == 2
    lines = d.families().lines
    assert lines["inference_node_exporter_discovered_endpoints"].count(
        'inference_node_exporter_discovered_endpoints{engine="sglang"} 3.0') == 1
    assert lines["inference_node_exporter_discovery_left_out_endpoints"] == [
        "inference_node_exporter_discovery_left_out_endpoints 2.0"]


def test_merged_adds_the_found_endpoints_after_the_configured() -> None:
    s = Scripted()
    d = Discovery(s.scan, s.probe)
    s.now, s.serving = [found("vllm", 8001)], {8001}
    cfg = merged(Config(), d.scan(Config()))
    assert [e.name for e in cfg.engine("vllm").endpoints] == ["127.0.0.1:8000", "vllm-8001"]
    assert merged(Config(), {}) == Config()


# --- real processes ------------------------------------------------------------------------


def start(*argv: str, port: int, body: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(FAKE), *argv, "--port", str(port),
                             "--body", str(body)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == f"listening {port}\n".encode()
    return proc


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[dict[str, tuple[subprocess.Popen[bytes], int]]]:
    """A llama.cpp look-alike that is one (on an unexpected port), one that is not."""
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("<html>not metrics</html>\n")
    real, fake = free_port(), free_port()
    procs = {"real": (start("llama-server", "-m", "tiny.gguf", port=real, body=LLAMA_BUSY),
                      real),
             "look-alike": (start("llama-server", port=fake, body=garbage), fake)}
    try:
        yield procs
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(10)


def test_candidates_are_the_processes_and_their_listening_ports(
        fakes: dict[str, tuple[subprocess.Popen[bytes], int]]) -> None:
    seen = {(c.kind, c.port, c.pid) for c in candidates(engines.adapters())}
    for proc, port in fakes.values():
        assert ("llamacpp", port, proc.pid) in seen


def test_the_daemon_polls_what_it_finds_and_drops_it_when_it_exits(
        fakes: dict[str, tuple[subprocess.Popen[bytes], int]]) -> None:
    port = free_port()
    args = ["--web.listen-address", f"127.0.0.1:{port}", "--engines.discover",
            "--engines.discover-interval", "200ms", "--poll.interval", "200ms",
            "--poll.timeout", "200ms", "--no-collector.vllm", "--no-collector.gpu",
            "--no-collector.host"]
    cfg, web = load(parser().parse_args(args), {})
    daemon = Daemon(cfg, lambda: (cfg, web), web=web)
    real, real_port = fakes["real"]
    fake_port = fakes["look-alike"][1]
    name = f"llamacpp-{real_port}"
    daemon.start()
    try:
        def metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            return parse_series(requests.get(f"http://127.0.0.1:{port}/metrics",
                                             timeout=5).text)

        def polled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            series = metrics()
            return series if pick(series, "inference_node_engine_requests_running",
                                  engine="llamacpp", endpoint=name) else None

        series = wait_for("the found llama.cpp server's series", polled, timeout=30)
        assert pick(series, "inference_node_engine_requests_running", engine="llamacpp",
                    endpoint=name, model="fake-model") == [4.0]
        assert not pick(series, "inference_node_engine_up", endpoint=f"llamacpp-{fake_port}")
        assert pick(series, "inference_node_exporter_discovered_endpoints",
                    engine="llamacpp") == [1.0]
        landing = requests.get(f"http://127.0.0.1:{port}/", timeout=5).text
        assert name in landing and "found running on this node" in landing
        real.terminate()
        real.wait(10)
        wait_for("the exited server's series to go", lambda: not pick(
            metrics(), "inference_node_engine_up", endpoint=name) or None, timeout=30)
        assert pick(metrics(), "inference_node_exporter_discovered_endpoints",
                    engine="llamacpp") == [0.0]
    finally:
        daemon.stop()


def test_no_engines_discover_turns_it_off(
        fakes: dict[str, tuple[subprocess.Popen[bytes], int]]) -> None:
    cfg, _ = load(parser().parse_args(["--no-engines.discover"]), {})
    assert cfg.discover is False
    daemon = Daemon(cfg, lambda: (cfg, None))
    assert daemon._own_metrics().lines == {}


def test_with_no_config_a_vllm_and_an_sglang_are_both_found() -> None:
    """The quick start on a node serving two kinds of engine: nothing configured but the
    listen address, and each engine is polled under its own kind."""
    vllm_port, sglang_port, port = free_port(), free_port(), free_port()
    args = ["--web.listen-address", f"127.0.0.1:{port}", "--engines.discover-interval",
            "200ms", "--poll.interval", "200ms", "--poll.timeout", "200ms",
            "--no-collector.gpu", "--no-collector.host"]
    cfg, web = load(parser().parse_args(args), {})
    assert cfg.discover, "discovery is on by default"
    daemon = Daemon(cfg, lambda: (cfg, web), web=web)
    procs = [start("vllm", "serve", "tiny", port=vllm_port,
                   body=HERE / "fixtures" / "vllm" / "v0.32.0-cpu-burst.txt")]
    try:
        procs.append(start("-m", "sglang.launch_server", "--model-path", "tiny",
                           port=sglang_port,
                           body=HERE / "fixtures" / "sglang" / "v0.5.23-busy.txt"))
        daemon.start()

        def both() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            s = parse_series(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
            ups = (pick(s, "inference_node_engine_up", engine="vllm",
                        endpoint=f"vllm-{vllm_port}"),
                   pick(s, "inference_node_engine_up", engine="sglang",
                        endpoint=f"sglang-{sglang_port}"))
            return s if ups == ([1.0], [1.0]) else None

        s = wait_for("both engines found and polled", both, timeout=30)
        for kind, own in (("vllm", vllm_port), ("sglang", sglang_port)):
            # at least: the node may run other engines of the kind (another test's)
            (count,) = pick(s, "inference_node_exporter_discovered_endpoints", engine=kind)
            assert count >= 1
            assert pick(s, "inference_node_engine_requests_running", engine=kind,
                        endpoint=f"{kind}-{own}"), kind
        landing = requests.get(f"http://127.0.0.1:{port}/", timeout=5).text
        assert f"vllm-{vllm_port}" in landing and f"sglang-{sglang_port}" in landing
    finally:
        daemon.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(10)
