"""The canary against a real engine, as the real-server tests check it: a few probes that
all succeed, and what they made the engine generate."""

from __future__ import annotations

from tests.support.harness import Series, pick, scrape, wait_for

C = "inference_node_canary_"
CANARY_ARGS = ("--canary.interval", "2s", "--canary.timeout", "2s")
"""A probe every 2 s, each allowed 2 s: a tiny model on a busy CPU answers well within."""


def outcomes(s: Series) -> dict[str, float]:
    """The daemon's probes by outcome, those that happened only."""
    return {dict(labels)["outcome"]: v for (name, labels), v in s.items()
            if name == C + "probes_total" and v}


def probed(metrics: str, n: int = 3, timeout: float = 60.0) -> Series:
    """The daemon's series once ``n`` probes succeeded; none may have failed."""
    s = wait_for(f"{n} successful canary probes", lambda: (
        x if outcomes(x := scrape(metrics)).get("success", 0) >= n else None), timeout=timeout)
    assert set(outcomes(s)) == {"success"}, outcomes(s)
    return s


def successes(s: Series) -> float:
    """How many probes succeeded."""
    return pick(s, C + "probes_total", outcome="success")[0]
