"""/healthz follows the poll loops: healthy while they run on schedule, 503 once one stalls."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import requests

from exporter import daemon as daemon_module
from exporter.collectors.base import PollOutput
from exporter.config import Config
from exporter.daemon import Daemon
from exporter.exposition.lines import Families
from tests.support.harness import free_port, wait_for


class StuckSource:
    """A source whose second poll never returns until released (a wedged driver call)."""

    collector = "test"
    name = "stuck"
    target = "nowhere"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.polls = 0

    def poll(self) -> PollOutput:
        self.polls += 1
        if self.polls > 1:
            self.release.wait()
        return PollOutput(Families())

    def health(self, up: bool, last_success: float | None, families: Families) -> None:
        pass

    def close(self) -> None:
        pass


def test_healthz_turns_503_when_a_poll_loop_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    source = StuckSource()
    monkeypatch.setattr(daemon_module, "build_sources", lambda cfg: [source])
    cfg = replace(Config(), listen_address=f"127.0.0.1:{free_port()}", poll_interval=0.2,
                  poll_timeout=0.2)
    d = Daemon(cfg, lambda: (cfg, None))
    d.start()
    url = f"http://{cfg.listen_address}/healthz"
    try:
        first = requests.get(url, timeout=5)
        assert first.status_code == 200 and first.text.startswith("ok")
        def stalled() -> str | None:
            r = requests.get(url, timeout=5)
            return r.text if r.status_code == 503 else None

        text = wait_for("healthz to report the stall", stalled, timeout=15)
        assert "polling stalled for test/stuck" in text
        # Scrapes still answer while the loop is stuck.
        assert requests.get(f"http://{cfg.listen_address}/metrics", timeout=5).ok
    finally:
        source.release.set()
        d.stop()
