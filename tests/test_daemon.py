"""The real daemon as a process: signals, reload, health, failure isolation, logs."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import requests

from tests.support.harness import Daemon, pick, wait_for
from tests.vllm_sim import Scenario, SimServer, load_scenario

SCENARIOS = Path(__file__).parent / "scenarios"
FAST = ["--poll.interval", "200ms", "--poll.timeout", "200ms", "--poll.max-backoff", "400ms"]
UP = "inference_node_engine_up"


def scenario() -> Scenario:
    return load_scenario(SCENARIOS / "steady_v1.json")


def up(daemon: Daemon, endpoint: str) -> float | None:
    values = pick(daemon.series(), UP, endpoint=endpoint)
    return values[0] if values else None


def test_sigterm_stops_within_two_seconds_even_with_a_hung_endpoint(tmp_path: Path) -> None:
    with SimServer(scenario()) as sim:
        sim.set_fault("hang", seconds=30)
        daemon = Daemon(tmp_path, [*FAST, "--poll.interval", "3s", "--poll.timeout", "3s",
                                   "--vllm.endpoint", sim.metrics_url]).start()
        wait_for("the poll to be in flight", lambda: sim.scrapes >= 1)
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.proc is not None
        code = daemon.proc.wait(5)
        took = time.monotonic() - started
        assert code == 0
        assert took < 2.0, f"stopping took {took:.2f} s"
        assert any(e["event"] == "stopped" for e in daemon.logs())


def test_signals_back_to_back_never_wedge_the_daemon(tmp_path: Path) -> None:
    """A burst of SIGHUPs, then SIGTERM, SIGTERM and SIGINT at once (``timeout`` signals the
    daemon and its group; an impatient operator presses Ctrl-C twice): each handler may run
    while another is running, and the daemon still reloads, serves and stops cleanly."""
    with Daemon(tmp_path, [*FAST, "--no-engines.discover"]) as daemon:
        for _ in range(300):
            daemon.signal(signal.SIGHUP)
        wait_for("a reload after the burst", lambda: any(
            e["event"] == "configuration reloaded" for e in daemon.logs()))
        assert pick(daemon.series(), "inference_node_exporter_build_info")
        for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT):
            daemon.signal(sig)
        assert daemon.proc is not None
        assert daemon.proc.wait(10) == 0
        assert any(e["event"] == "stopped" for e in daemon.logs())


def test_sighup_reloads_and_a_bad_config_keeps_the_old_one(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    with SimServer(scenario()) as a, SimServer(scenario()) as b:
        config.write_text(f'[poll]\ninterval = "200ms"\ntimeout = "200ms"\n'
                          f'[vllm]\nendpoints = [{{url = "{a.metrics_url}", name = "a"}}]\n')
        with Daemon(tmp_path, ["--config.file", str(config)]) as daemon:
            wait_for("endpoint a up", lambda: up(daemon, "a") == 1.0)
            config.write_text(f'[poll]\ninterval = "200ms"\ntimeout = "200ms"\n'
                              f'[vllm]\nendpoints = [{{url = "{a.metrics_url}", name = "a"}},'
                              f' {{url = "{b.metrics_url}", name = "b"}}]\n')
            daemon.signal(signal.SIGHUP)
            wait_for("endpoint b up after reload", lambda: up(daemon, "b") == 1.0)
            polls_a = a.scrapes

            config.write_text('[poll]\ninterval = "-1s"\n')
            daemon.signal(signal.SIGHUP)
            wait_for("the rejection to be logged",
                     lambda: any(e["event"].startswith("reload rejected") for e in daemon.logs()))
            rejected = next(e for e in daemon.logs() if e["event"].startswith("reload rejected"))
            assert "invalid duration '-1s'" in rejected["error"]
            # Both endpoints are still polled under the old configuration.
            wait_for("a polled again", lambda: a.scrapes > polls_a + 2)
            assert up(daemon, "a") == 1.0 and up(daemon, "b") == 1.0
            # Endpoint a kept its worker (and its windows) across the reload.
            assert sum(1 for e in daemon.logs() if e["event"] == "source up"
                       and e.get("source") == "a") == 1


def test_health_landing_page_and_unknown_paths(tmp_path: Path) -> None:
    with SimServer(scenario()) as sim, \
            Daemon(tmp_path, [*FAST, "--vllm.endpoint", f"main={sim.metrics_url}"]) as daemon:
        wait_for("endpoint up", lambda: up(daemon, "main") == 1.0)
        health = requests.get(daemon.url + "/healthz", timeout=5)
        assert health.status_code == 200 and health.text.startswith("ok")
        page = requests.get(daemon.url + "/", timeout=5)
        assert page.status_code == 200
        for text in ("inference-node-exporter 0.1.0", "vllm", "main", sim.metrics_url, "up",
                     'href="/metrics"'):
            assert text in page.text
        assert requests.get(daemon.url + "/nope", timeout=5).status_code == 404
        metrics = requests.get(daemon.url + "/metrics", timeout=5)
        assert metrics.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert sim.last_accept == "text/plain; version=0.0.4"


def test_a_hung_endpoint_marks_only_itself_down_and_never_holds_a_scrape(
        tmp_path: Path) -> None:
    with SimServer(scenario()) as good, SimServer(scenario()) as bad:
        bad.set_fault("hang", seconds=20)
        with Daemon(tmp_path, [*FAST, "--vllm.endpoint", f"good={good.metrics_url}",
                               "--vllm.endpoint", f"bad={bad.metrics_url}"]) as daemon:
            wait_for("good up, bad down",
                     lambda: up(daemon, "good") == 1.0 and up(daemon, "bad") == 0.0)
            # While the bad endpoint hangs, scrapes answer from the last snapshot.
            for _ in range(5):
                started = time.monotonic()
                daemon.metrics()
                assert time.monotonic() - started < 1.0
            s = daemon.series()
            assert pick(s, "inference_node_exporter_collector_errors_total", source="bad",
                        reason="timeout")[0] >= 1
            assert pick(s, "inference_node_engine_requests_running", endpoint="good")
            assert requests.get(daemon.url + "/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("mode", "seconds", "reason"),
    [("status500", 0, "http_status"), ("garbage", 0, "not_text"),
     ("huge", 3, "too_large"), ("slow_drip", 0, "timeout"), ("close", 0, "connection")],
)
def test_bad_upstream_answers_are_errors_with_a_reason(tmp_path: Path, mode: str,
                                                       seconds: float, reason: str) -> None:
    with SimServer(scenario()) as sim:
        sim.set_fault(mode, seconds=seconds)
        args = [*FAST, "--poll.timeout", "200ms", "--poll.max-response-bytes", "1000000",
                "--vllm.endpoint", f"x={sim.metrics_url}"]
        with Daemon(tmp_path, args) as daemon:
            wait_for(f"an error with reason {reason}", lambda: pick(
                daemon.series(), "inference_node_exporter_collector_errors_total",
                source="x", reason=reason))
            assert up(daemon, "x") == 0.0
            sim.set_fault("none")
            wait_for("recovery", lambda: up(daemon, "x") == 1.0)
        events = [e["event"] for e in daemon.logs()
                  if e.get("source") == "x" and e.get("component") == "worker"]
        # Down and back up are logged once each, not on every failed poll.
        assert events == ["source down", "source up"]


def test_malformed_lines_are_skipped_counted_and_logged_once(tmp_path: Path) -> None:
    with SimServer(scenario()) as sim:
        sim.set_fault("partial_garbage")
        with Daemon(tmp_path, [*FAST, "--vllm.endpoint", f"x={sim.metrics_url}"]) as daemon:
            wait_for("several polls with malformed lines", lambda: pick(
                daemon.series(), "inference_node_exporter_collector_malformed_lines_total",
                source="x")[0] >= 3 * 2)
            assert up(daemon, "x") == 1.0
            assert pick(daemon.series(), "inference_node_engine_requests_running",
                        endpoint="x")
        warnings = [e for e in daemon.logs() if e["event"] == "malformed upstream lines skipped"]
        assert len(warnings) == 1 and warnings[0]["first"]


def test_stale_values_are_dropped_after_the_bound(tmp_path: Path) -> None:
    with SimServer(scenario()) as sim:
        args = [*FAST, "--poll.stale-after", "1s", "--vllm.endpoint", f"x={sim.metrics_url}"]
        with Daemon(tmp_path, args) as daemon:
            wait_for("values", lambda: pick(daemon.series(),
                                            "inference_node_engine_requests_running",
                                            endpoint="x"))
            sim.set_fault("status500")
            wait_for("down", lambda: up(daemon, "x") == 0.0)
            wait_for("stale values dropped", lambda: not pick(
                daemon.series(), "inference_node_engine_requests_running", endpoint="x"))
            s = daemon.series()
            assert pick(s, UP, endpoint="x") == [0.0]
            assert pick(s, "inference_node_engine_last_success_timestamp_seconds",
                        endpoint="x")


def test_no_engine_running_still_serves_and_reports_down(tmp_path: Path) -> None:
    from tests.support.harness import free_port

    url = f"http://127.0.0.1:{free_port()}/metrics"
    with Daemon(tmp_path, [*FAST, "--vllm.endpoint", url]) as daemon:
        wait_for("down with the connection refused", lambda: pick(
            daemon.series(), "inference_node_exporter_collector_errors_total",
            reason="refused"))
        assert pick(daemon.series(), UP) == [0.0]
        assert requests.get(daemon.url + "/healthz", timeout=5).status_code == 200


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with SimServer(scenario()) as sim:
        # The last --web.listen-address wins: the simulator's port, already taken.
        taken = Daemon(tmp_path, ["--web.listen-address", f"127.0.0.1:{sim.port}"])
        taken.start(ready=False)
        assert taken.proc is not None
        assert taken.proc.wait(10) == 1
        assert f"cannot listen on 127.0.0.1:{sim.port}" in taken.log_text()


def test_sighup_with_bytes_not_utf8_or_a_broken_url_keeps_the_daemon_serving(
        tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    with SimServer(scenario()) as sim:
        good = (f'[poll]\ninterval = "200ms"\ntimeout = "200ms"\n'
                f'[vllm]\nendpoints = [{{url = "{sim.metrics_url}", name = "a"}}]\n')
        config.write_text(good)
        with Daemon(tmp_path, ["--config.file", str(config)]) as daemon:
            wait_for("endpoint a up", lambda: up(daemon, "a") == 1.0)

            def rejections() -> list[dict[str, object]]:
                return [e for e in daemon.logs() if e["event"].startswith("reload rejected")]

            bad = [(good.encode().replace(b'name = "a"', b'name = "a\xff"'), "not valid TOML"),
                   (good.replace(sim.metrics_url, "http://[::1").encode(), "Invalid IPv6 URL")]
            for n, (text, message) in enumerate(bad, 1):
                config.write_bytes(text)
                daemon.signal(signal.SIGHUP)
                wait_for(f"rejection {n} to be logged", lambda n=n: len(rejections()) == n)
                assert message in str(rejections()[-1]["error"])
                polls = sim.scrapes
                wait_for("a polled again", lambda polls=polls: sim.scrapes > polls + 2)
                assert daemon.proc is not None and daemon.proc.poll() is None
                assert up(daemon, "a") == 1.0
            errors = [e for e in daemon.logs() if e["level"] == "error"
                      and e.get("component") == "daemon"]
            assert len(errors) == 2, errors
            assert "Traceback" not in daemon.log_text()
