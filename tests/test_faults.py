"""The fault matrix: the real daemon against an upstream that misbehaves in every way known.

One daemon polls one faulty upstream (``tests/support/faulty_upstream.py``, a process of its own)
every second while a thread scrapes ``/metrics`` every 50 ms. Each case switches a fault on,
holds it for at least two polls, switches it off and checks, from the scrapes and the logs:

- every scrape answered 200 within :data:`SCRAPE_BOUND`, and the daemon is still running;
- the fault is counted under its reason in ``..._collector_errors_total`` and nothing else is,
  ``inference_node_engine_up`` went to 0, exactly one ``source down`` warning was logged with
  that reason, and the logs stayed small;
- or, for faults that keep the source up, up stayed 1 with its rates served throughout and
  the malformed lines or dropped label sets were counted;
- no rate or percentile was served while up was 0, and no rate was ever negative or above
  what the upstream generated;
- the source was up again within one interval of the fault clearing (cheap failures), or
  within the longest backoff plus one interval (``timeout``, ``too_large``).

The cases run in sequence on the shared daemon; one that leaves the daemon dead or down gets
the next a fresh daemon, so that a failure does not cascade.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from exporter.expfmt import CACHE_BUDGET
from tests.support.faulty_upstream import FaultyUpstream
from tests.support.harness import Daemon, wait_for

T = TypeVar("T")

NAME = "faulty"
HOST = "127.0.0.1"
INTERVAL = 1.0
MAX_BACKOFF = 2.0
MAX_BYTES = 12 * 1024 * 1024
MAX_ENGINES = 8
ARGS = ["--no-collector.gpu", "--no-collector.dcgm", "--poll.interval", "1s",
        "--poll.timeout", "500ms", "--poll.max-backoff", "2s",
        "--poll.max-response-bytes", str(MAX_BYTES),
        "--vllm.max-engines-per-endpoint", str(MAX_ENGINES)]
SCRAPE_BOUND = 1.0
"""Seconds every scrape must be answered within, whatever the upstream does."""
SLACK = 0.5
"""Seconds allowed on top of each recovery bound, for this noisy 2-vCPU machine."""
RATE_SLACK = 1.5
"""A served rate may exceed the upstream's true rate by this factor (poll-timing jitter)."""
RSS_BOUND = 80 * 1024 * 1024
LOG_BYTES_BOUND = 64 * 1024
LOG_LINE_BOUND = 8 * 1024
EXPENSIVE = ("timeout", "too_large")
X = "inference_node_exporter_"
P = "inference_node_engine_"
RATES = {P + "prompt_tokens_per_second": "prompt_tokens",
         P + "generation_tokens_per_second": "generation_tokens",
         P + "preemptions_per_second": "preemptions"}


@dataclass(frozen=True)
class Fault:
    """One misbehaviour and what the daemon must make of it."""

    mode: str
    reason: str | None = None
    """The ``errors_total`` reason it must be counted under; None: the source stays up."""
    counted: str = ""
    """For a fault that keeps the source up: the self-metric that must grow."""
    at_least: int = 1
    """How much ``counted`` must grow by."""
    polls: int = 3
    """For a fault that keeps the source up: how many polls it is held for."""

    @property
    def recovery_bound(self) -> float:
        bound = INTERVAL + (MAX_BACKOFF if self.reason in EXPENSIVE else 0.0)
        return bound + SLACK


FAULTS = (
    Fault("down", "refused"),
    Fault("status_503", "http_status"),
    Fault("redirect", "http_status"),
    Fault("reset", "connection"),
    Fault("truncated", "truncated"),
    Fault("bad_chunk_size", "truncated"),
    Fault("chunked_early_end", "truncated"),
    Fault("junk", "no_engine_metrics"),
    Fault("binary", "not_text"),
    Fault("hang", "timeout"),
    Fault("header_trickle", "timeout"),
    Fault("body_trickle", "timeout"),
    # Before the large bodies, so that the memory figure is the flood's own.
    Fault("label_flood", counted="dropped_series", polls=10),
    Fault("malformed_flood", counted="malformed_lines", at_least=40_000),
    Fault("huge_line", counted="malformed_lines"),
    Fault("huge", "too_large"),
    Fault("huge_declared", "too_large"),
)

_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
Key = tuple[str, frozenset[tuple[str, str]]]


def _ours(text: str) -> dict[Key, float]:
    """The samples about the faulty endpoint (``endpoint=`` or ``source=`` it)."""
    out: dict[Key, float] = {}
    quoted = f'"{NAME}"'
    for line in text.splitlines():
        if quoted not in line or line.startswith("#"):
            continue
        m = _LINE.fullmatch(line)
        if m is not None:
            out[(m[1], frozenset(_LABEL.findall(m[2])))] = float(m[3])
    return out


@dataclass(frozen=True)
class Scrape:
    """One scrape of ``/metrics``: when, how it went, and the faulty endpoint's samples."""

    start: float
    end: float
    status: int
    error: str = ""
    samples: dict[Key, float] = field(default_factory=dict)

    @property
    def latency(self) -> float:
        return self.end - self.start

    def values(self, name: str, **labels: str) -> list[float]:
        want = set(labels.items())
        return [v for (n, lab), v in self.samples.items() if n == name and want <= lab]

    def total(self, name: str) -> float:
        return sum(self.values(name, collector="vllm")
                   if name.startswith(X) else self.values(name))

    @property
    def up(self) -> float | None:
        values = self.values(P + "up")
        return values[0] if values else None

    def errors(self) -> Counter[str]:
        return Counter({dict(lab)["reason"]: int(v) for (n, lab), v in self.samples.items()
                        if n == X + "collector_errors_total"})

    def rates(self) -> list[tuple[str, str, float]]:
        """(family, window, value) of every rate served."""
        return [(n, dict(lab).get("window", ""), v) for (n, lab), v in self.samples.items()
                if n.endswith("_per_second")]

    @property
    def derived(self) -> bool:
        """Whether any rate or percentile is served."""
        return any(n.endswith("_per_second") or n == P + "latency_seconds"
                   for n, _ in self.samples)

    @property
    def healthy(self) -> bool:
        return self.status == 200 and self.up == 1.0 and bool(
            self.values(P + "generation_tokens_per_second"))


class Scraper:
    """Scrapes the daemon every 50 ms from a thread, keeping every result."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.records: list[Scrape] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.records.append(self._once())

    def _once(self) -> Scrape:
        start = time.monotonic()
        conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            body = resp.read()
            return Scrape(start, time.monotonic(), resp.status,
                          samples=_ours(body.decode("utf-8", "replace")))
        except (OSError, http.client.HTTPException) as exc:
            return Scrape(start, time.monotonic(), 0, f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    def between(self, start: float, end: float) -> list[Scrape]:
        return [s for s in list(self.records) if start <= s.start <= end]

    def after(self, t: float, timeout: float = 15.0) -> Scrape:
        """The first scrape started after ``t``, once it has completed."""
        return wait_for("a scrape", lambda: next(
            (s for s in reversed(self.records) if s.start > t), None), timeout=timeout)

    def first(self, since: float, check: Callable[[Scrape], bool],
              timeout: float) -> Scrape | None:
        """The first scrape started after ``since`` for which ``check`` holds, if one comes
        within ``timeout``."""
        deadline = since + timeout
        while True:
            found = next((s for s in list(self.records) if s.start > since and check(s)),
                         None)
            if found is not None or time.monotonic() > deadline:
                return found
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Rig:
    """The faulty upstream, the daemon polling it, and the scraper."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.upstream = FaultyUpstream(huge_bytes=2 * MAX_BYTES)
        self.rates: dict[str, float] = self.upstream.state()["rates"]
        self.daemon: Daemon | None = None
        self.scraper: Scraper | None = None
        self.restarted = 0

    def start_daemon(self) -> None:
        self.stop_daemon()
        self.daemon = Daemon(self.workdir, [*ARGS, "--vllm.endpoint",
                                            f"{NAME}={self.upstream.metrics_url}"]).start()
        self.scraper = Scraper(self.daemon.port)

    def stop_daemon(self) -> None:
        if self.scraper is not None:
            self.scraper.stop()
        if self.daemon is not None:
            self.daemon.stop()

    def ready(self) -> tuple[Daemon, Scraper]:
        """A daemon that polls the healed upstream, up with rates; a fresh one if the last
        case left it dead or down."""
        self.upstream.set("ok")
        for attempt in (0, 1):
            if self.daemon is None or self.daemon.proc is None \
                    or self.daemon.proc.poll() is not None:
                self.start_daemon()
            assert self.daemon is not None and self.scraper is not None
            if self.scraper.first(time.monotonic(), lambda s: s.healthy,
                                  timeout=30 if attempt else 10) is not None:
                return self.daemon, self.scraper
            self.restarted += 1
            self.start_daemon()
        raise AssertionError("the daemon does not come up against the healed upstream")

    def close(self) -> None:
        self.stop_daemon()
        self.upstream.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    rig = Rig(tmp_path_factory.mktemp("faults"))
    try:
        yield rig
    finally:
        rig.close()


def _wait(problems: list[str], what: str, check: Callable[[], T | None],
          timeout: float) -> T | None:
    """``wait_for``, but a time-out is noted as a problem and the case goes on."""
    try:
        return wait_for(what, check, timeout=timeout, every=0.02)
    except AssertionError as exc:
        problems.append(str(exc))
        return None


def _our_events(daemon: Daemon, skip: int) -> list[dict[str, Any]]:
    return [e for e in daemon.logs()[skip:] if e.get("source") == NAME]


def _check_scrapes(scrapes: list[Scrape], rates: dict[str, float], problems: list[str]
                   ) -> None:
    """What must hold of every scrape, whatever the fault."""
    if len(scrapes) < 10:
        problems.append(f"only {len(scrapes)} scrapes completed during the case")
    bad = [s for s in scrapes if s.status != 200 or s.latency > SCRAPE_BOUND]
    if bad:
        worst = max(bad, key=lambda s: s.latency)
        problems.append(f"{len(bad)} of {len(scrapes)} scrapes failed or took over"
                        f" {SCRAPE_BOUND:g}s; worst: status {worst.status}, {worst.latency:.3f}s"
                        f" {worst.error}")
    derived_while_down = [s for s in scrapes if s.up == 0.0 and s.derived]
    if derived_while_down:
        s = derived_while_down[0]
        served = sorted({n for n, _ in s.samples if n.endswith("_per_second")
                         or n == P + "latency_seconds"})
        problems.append(f"{len(derived_while_down)} scrapes served rates or percentiles while"
                        f" {P}up was 0: {served}")
    wrong = [(family, window, value) for s in scrapes for family, window, value in s.rates()
             if family in RATES and not 0 <= value <= rates[RATES[family]] * RATE_SLACK + 1e-9]
    if wrong:
        problems.append(f"{len(wrong)} rates negative or above the upstream's true rate"
                        f" ({rates}) x {RATE_SLACK}; first: {wrong[:3]}")


def _check_logs(daemon: Daemon, size_before: int, problems: list[str]) -> None:
    grown = daemon.log_path.stat().st_size - size_before
    if grown > LOG_BYTES_BOUND:
        problems.append(f"the log grew by {grown} bytes during the case")
    with daemon.log_path.open("rb") as fh:
        fh.seek(size_before)
        longest = max((len(line) for line in fh), default=0)
    if longest > LOG_LINE_BOUND:
        problems.append(f"a log line of {longest} bytes")


@pytest.mark.parametrize("fault", FAULTS, ids=[f.mode for f in FAULTS])
def test_fault(rig: Rig, fault: Fault) -> None:
    daemon, scraper = rig.ready()
    assert daemon.proc is not None
    problems: list[str] = []
    base = scraper.after(time.monotonic())
    logs_before = len(daemon.logs())
    log_size = daemon.log_path.stat().st_size
    t_fault = time.monotonic()
    rig.upstream.set(fault.mode)

    if fault.reason is not None:
        def failed() -> bool:
            s = scraper.records[-1]
            return sum(s.errors().values()) - sum(base.errors().values()) >= 2
        _wait(problems, "two failed polls", failed, timeout=20)
    else:
        def grown() -> bool:
            s = scraper.records[-1]
            return (s.total(X + f"collector_{fault.counted}_total")
                    - base.total(X + f"collector_{fault.counted}_total") >= fault.at_least
                    and s.total(X + "collector_polls_total")
                    - base.total(X + "collector_polls_total") >= fault.polls)
        _wait(problems, f"{fault.counted} to grow by {fault.at_least} over {fault.polls} polls",
              grown, timeout=15 + 2 * fault.polls)
        if fault.mode == "label_flood":
            rss = _rss(daemon.proc.pid)
            if rss > RSS_BOUND:
                problems.append(f"RSS {rss / 2**20:.1f} MiB after the flood (bound"
                                f" {RSS_BOUND / 2**20:.0f} MiB)")
            cache = scraper.records[-1].total(X + "collector_parser_cache_bytes")
            if not 0 < cache <= CACHE_BUDGET:
                problems.append(f"parser caches at {cache:.0f} bytes after the flood (budget"
                                f" {CACHE_BUDGET})")
    rig.upstream.set("ok")
    t_clear = time.monotonic()

    took = None
    if fault.reason is not None:
        back = scraper.first(t_clear, lambda s: s.up == 1.0, timeout=15)
        if back is None:
            problems.append("not up again within 15 s of the fault clearing")
        else:
            took = back.end - t_clear
            if took > fault.recovery_bound:
                problems.append(f"up again {took:.2f}s after the fault cleared (bound"
                                f" {fault.recovery_bound:g}s)")
    t_end = time.monotonic()
    after = scraper.after(t_end)
    scrapes = scraper.between(t_fault, t_end)

    if daemon.proc.poll() is not None:
        problems.append(f"the daemon exited with {daemon.proc.returncode}")
    errors = after.errors() - base.errors()
    downs = [e for e in _our_events(daemon, logs_before) if e["event"] == "source down"]
    if fault.reason is not None:
        if errors[fault.reason] < 1:
            problems.append(f"no error counted under reason {fault.reason!r}")
        others = {r: n for r, n in errors.items() if r != fault.reason}
        if others:
            problems.append(f"errors counted under other reasons: {others}")
        if not any(s.up == 0.0 for s in scrapes):
            problems.append(f"{P}up never went to 0")
        if len(downs) != 1:
            problems.append(f"{len(downs)} 'source down' log lines, not 1")
        elif downs[0].get("reason") != fault.reason:
            problems.append(f"the 'source down' line gives reason {downs[0].get('reason')!r}")
    else:
        grew = after.total(X + f"collector_{fault.counted}_total") \
            - base.total(X + f"collector_{fault.counted}_total")
        if grew < fault.at_least:
            problems.append(f"{fault.counted} grew by {grew:g}, not at least {fault.at_least}")
        if errors:
            problems.append(f"errors counted: {dict(errors)}")
        if downs:
            problems.append(f"{len(downs)} 'source down' log lines for a fault that keeps the"
                            " source up")
        unhealthy = [s for s in scrapes if s.status == 200 and not s.healthy]
        if unhealthy:
            problems.append(f"{len(unhealthy)} scrapes without the source up and its rates"
                            f" (first: up={unhealthy[0].up})")
    _check_scrapes(scrapes, rig.rates, problems)
    _check_logs(daemon, log_size, problems)

    latencies = sorted(s.latency for s in scrapes)
    rss = _rss(daemon.proc.pid) if daemon.proc.poll() is None else 0
    summary = (f"{fault.mode}: {len(scrapes)} scrapes, slowest"
               f" {latencies[-1] * 1e3 if latencies else 0:.0f} ms; errors {dict(errors)};"
               f" recovery {'n/a' if took is None else f'{took:.2f}s'};"
               f" RSS {rss / 2**20:.1f} MiB")
    print(summary)
    if problems:
        events = [{k: e[k] for k in ("event", "reason", "error", "count") if k in e}
                  for e in _our_events(daemon, logs_before)]
        pytest.fail("\n".join([summary, *problems,
                               "daemon log: " + json.dumps(events)[:2000]]), pytrace=False)


def test_restart_counts_once_and_rates_stay_true(rig: Rig) -> None:
    """A restarted engine (counters back to small values, new ``_created``) is one restart,
    never a negative rate or a spike, and never a source down."""
    daemon, scraper = rig.ready()
    problems: list[str] = []
    base = scraper.after(time.monotonic())
    logs_before = len(daemon.logs())
    t0 = time.monotonic()
    rig.upstream.restart()
    seen = scraper.first(t0, lambda s: s.total(P + "restarts_total")
                         > base.total(P + "restarts_total"), timeout=10)
    if seen is None:
        problems.append(f"{P}restarts_total did not go up")
        seen = scraper.records[-1]
    polls = seen.total(X + "collector_polls_total")
    _wait(problems, "three more polls", lambda: scraper.records[-1].total(
        X + "collector_polls_total") >= polls + 3, timeout=15)
    t_end = time.monotonic()
    after = scraper.after(t_end)
    scrapes = scraper.between(t0, t_end)
    restarts = after.total(P + "restarts_total") - base.total(P + "restarts_total")
    if restarts != 1:
        problems.append(f"{P}restarts_total went up by {restarts:g}, not 1")
    if any(s.up != 1.0 for s in scrapes if s.status == 200):
        problems.append("the source was not up throughout")
    if after.errors() - base.errors():
        problems.append(f"errors counted: {dict(after.errors() - base.errors())}")
    if any(e["event"] == "source down" for e in _our_events(daemon, logs_before)):
        problems.append("a 'source down' line for a restart")
    if not after.rates():
        problems.append("no rates served three polls after the restart")
    _check_scrapes(scrapes, rig.rates, problems)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
