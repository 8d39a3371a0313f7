"""The variance report's pieces alone: its statistics, its range and step, its options."""

from __future__ import annotations

import json
import random
import re
import socket
import threading
from pathlib import Path

import pytest

from exporter.report import stats
from exporter.report.cli import main, matchers, objectives
from exporter.report.figures import strongest_gpu
from exporter.report.fmt import SIGNALS, movers, signal_rows
from exporter.report.promapi import Prometheus, ReportError
from exporter.report.queries import DRIVERS, Q
from exporter.report.span import MAX_POINTS, parse_since, span
from tests.support.served import Answer, Served


def test_pearson_sees_rare_episodes_that_ranks_dilute() -> None:
    # A week of noise with a few joint spikes: linear correlation sees them, ranks hardly.
    rng = random.Random(5)
    steal = [rng.random() * 0.01 for _ in range(700)]
    p99 = [0.3 + rng.random() * 0.01 for _ in range(700)]
    for i in range(0, 700, 100):
        steal[i], p99[i] = 0.3, 1.2
    r = stats.pearson(steal, p99)
    rho = stats.spearman(steal, p99)
    assert r is not None and r > 0.9
    assert rho is not None and rho < 0.2
    assert stats.pearson([1.0] * 30, p99[:30]) is None


def test_the_gpu_whose_signal_moves_with_the_p99_is_named() -> None:
    rng = random.Random(7)
    times = [float(t * 60) for t in range(600)]
    spikes = {t for i, t in enumerate(times) if i % 97 < 4}
    p99 = {t: (1.5 if t in spikes else 0.3) + rng.random() * 0.02 for t in times}
    node = ("", "inference-node", "node-b:19400")
    # GPUs 0 and 2 throttle now and then on their own; GPU 1 with the P99's spikes.
    def throttled(gpu: int, t: float) -> bool:
        return t in spikes if gpu == 1 else rng.random() < 0.03

    series: dict[tuple[str, ...], dict[float, float]] = {
        (*node, str(g)): {t: 0.8 if throttled(g, t) else 0.0 for t in times} for g in range(3)}
    series[("", "inference-node", "node-a:19400", "1")] = {t: p99[t] for t in times}
    best = strongest_gpu(node, series, {"user_ttft": p99})
    assert best is not None and best["gpu"] == "1" and best["strongest"] > 0.9
    flat: dict[tuple[str, ...], dict[float, float]] = {(*node, "0"): {t: 0.0 for t in times}}
    assert strongest_gpu(node, flat, {"user_ttft": p99}) is None  # flat says nothing
    # Where the page and the summary say it: the signals table and the movers.
    r = {"user_ttft": 0.8, "user_itl": None, "canary_ttft": 0.7}
    model = {"moves_with_p99": ["gpu_throttling"], "drivers": [
        {"signal": "gpu_throttling", "title": "GPU clocks held down", "r": r,
         "rank_rho": {"user_ttft": 0.2}, "points": 600, "strongest": 0.8, "gpu": best},
        {"signal": "cpu_steal", "title": "CPU steal", "r": r, "rank_rho": {"user_ttft": 0.1},
         "points": 600, "strongest": 0.3}]}
    (throttling, steal) = signal_rows(model)
    assert throttling == ["GPU clocks held down", "0.80", "-", "0.70", "0.20", "600",
                          f"GPU 1 (r {best['strongest']:.2f})"]
    assert len(throttling) == len(SIGNALS) and steal[-1] == "-"
    assert movers(model) == "GPU clocks held down (r 0.80, most on GPU 1)"


def test_spearman() -> None:
    xs = [float(i) for i in range(50)]
    assert stats.spearman(xs, [x ** 3 for x in xs]) == pytest.approx(1.0)  # monotonic
    assert stats.spearman(xs, [-x for x in xs]) == pytest.approx(-1.0)
    rng = random.Random(3)
    noise = [rng.random() for _ in xs]
    assert abs(stats.spearman(xs, noise) or 0) < 0.3
    assert stats.spearman(xs[:10], xs[:10]) is None  # too few points
    assert stats.spearman(xs, [1.0] * 50) is None  # a flat signal says nothing
    # Ties share their mean rank: a step function still correlates fully with itself.
    step = [float(i // 10) for i in range(50)]
    assert stats.spearman(step, step) == pytest.approx(1.0)


def test_by_hour_and_shares() -> None:
    day = 86400.0 * 20000  # a midnight, UTC
    p99 = {day + h * 3600: 2.0 + h for h in range(24)}
    p50 = {day + h * 3600: 1.0 for h in range(24)}
    p50[day + 5 * 3600] = 0.0  # no ratio from a zero
    hours = stats.by_hour(p99, p50)
    assert hours[0] == 2.0 and hours[23] == 25.0 and hours[5] is None
    assert stats.inside_share([0.1, 0.2, 0.3, 0.4], 0.25) == 0.5
    assert stats.inside_share([], 1.0) is None
    assert stats.median([3.0, 1.0, 2.0, 10.0]) == 2.5


def test_span_keeps_queries_bounded() -> None:
    end = 1_795_000_000.0
    week = span("7d", None, None, now=end)
    assert week.seconds >= 7 * 86400 and week.seconds / week.step <= MAX_POINTS + 1
    assert week.start % week.step == 0 and week.end % week.step == 0
    assert week.promql == f"{int(week.seconds // 3600)}h"
    short = span(None, "2026-11-29T00:00:00Z", "2026-11-29T01:00:00Z")
    assert short.step == 60 and short.seconds == 3600 and short.window == "5m"
    assert parse_since("1w2d") == 9 * 86400
    bad: list[tuple[str | None, str | None]] = [
        ("7x", None), (None, "yesterday"), ("7d", "0"), ("5m", None), ("1000d", None)]
    for since, start in bad:
        with pytest.raises(ReportError):
            span(since, start, None, now=end)


def test_options() -> None:
    assert matchers('{job="a", cluster=~"eu-.*"}') == 'job="a",cluster=~"eu-.*"'
    assert matchers('x="a,b"') == 'x="a,b"' and matchers("") == ""
    for bad in ("{job=a}", 'job="a" up', '{job="a",,}', "}{"):
        with pytest.raises(ReportError, match="expected label matchers"):
            matchers(bad)
    assert objectives("ttft_p99=2s,itl_p99=100ms") == {"ttft_p99": 2.0, "itl_p99": 0.1}
    for bad in ("ttft=2s", "itl_p99=fast", "ttft_p99"):
        with pytest.raises(ReportError):
            objectives(bad)


def test_queries_carry_the_selector() -> None:
    q = Q('cluster="eu"')
    assert q.sel('reason!~"x"') == '{cluster="eu",reason!~"x"}'
    assert Q("").sel() == "{}"
    for d in DRIVERS:
        assert '{cluster="eu"' in q.driver(d, "15m") and "[15m]" in q.driver(d, "15m")


def test_an_unreachable_or_wrong_prometheus_is_one_clear_error() -> None:
    with pytest.raises(ReportError, match="cannot reach Prometheus"):
        Prometheus("http://127.0.0.1:1").check()
    with pytest.raises(ReportError, match="cannot reach Prometheus"):
        Prometheus("http://no-such-host.invalid:9090", timeout=5).check()


def _vector(result: object, kind: str = "vector") -> str:
    return json.dumps({"status": "success", "data": {"resultType": kind, "result": result}})


BROKEN_ANSWERS = [
    ((200, "text/html", "<html>sign in to the proxy</html>"), "did not answer with Prometheus"),
    ((200, "application/json", "[" * 100_000), "did not answer with Prometheus"),
    ((400, "application/json", '{"status":"error","error":"parse error at char 3"}'),
     "HTTP 400: parse error at char 3"),
    (_vector({"not": "a list"}), "not a list of series"),
    (_vector(["a string"]), "not a list of series"),
    (_vector([{"metric": {}, "value": "1"}]), "without its [time, value]"),
    (_vector([{"metric": {"job": 1}, "value": [0, "1"]}]), "labels are not strings"),
    (_vector([{"metric": [], "value": [0, "1"]}]), "labels are not strings"),
    (_vector([{"metric": {}, "values": [[0]]}], "matrix"), "not [time, value] pairs"),
    (_vector([{"metric": {}, "values": [["x", "1"]]}], "matrix"), "not [time, value] pairs"),
    (_vector([{"metric": {}, "values": "1"}], "matrix"), "not [time, value] pairs"),
]


@pytest.mark.parametrize(("answer", "message"), BROKEN_ANSWERS)
def test_a_broken_answer_is_one_clear_error(answer: Answer, message: str,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    """What a proxy, a wrong URL or a broken Prometheus answers is a ReportError naming the
    fault, never a traceback: for each kind of query, and from the command itself."""
    with Served(lambda path: answer if "query" in path else None) as prom:
        p = Prometheus(prom.url, timeout=5)
        matrix = '"matrix"' in str(answer)
        with pytest.raises(ReportError, match=re.escape(message)):
            if matrix:
                p.range("up", 0, 60, 15)
            else:
                p.instant("up", 0)
        code = main(["--prometheus", prom.url, "--since", "1d", "--out",
                     str(tmp_path / "out"), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("inference-node-exporter report: ") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_answer_cut_short_is_one_clear_error() -> None:
    """A Prometheus that dies mid-answer: its Content-Length promised more than came."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        def answer_and_die() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 1000\r\n\r\n{\"status\":\"succ")

        thread = threading.Thread(target=answer_and_die, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(ReportError, match=r"cannot reach .* broke off, 985 bytes short"):
            Prometheus(url, timeout=5).check()
        thread.join(timeout=5)
