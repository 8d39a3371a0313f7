"""The shipped Alertmanager configuration in a real Alertmanager: one page per cause.

Alerts are posted to its API as Prometheus would; what it delivers reaches a webhook here,
and its API tells which alerts it holds back and why.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.harness import wait_for
from tests.support.stack import Alertmanager, Webhook, alertmanager_config, write_yaml

NODE = "gpu-node-7:19400"
BASE = {"job": "inference-node", "cluster": "eu-1"}


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[Alertmanager, Webhook]]:
    webhook = Webhook().start()
    config = write_yaml(tmp_path / "alertmanager.yml",
                        alertmanager_config(webhook=webhook.url, wait="1s"))
    am = Alertmanager(tmp_path / "am", config)
    am.start()
    try:
        am.wait_ready()
        yield am, webhook
    finally:
        am.stop()
        webhook.stop()


def post(am: Alertmanager, *alerts: dict[str, str]) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = [{"labels": {**BASE, **a}, "annotations": {"summary": a["alertname"]},
             "startsAt": now} for a in alerts]
    requests.post(am.url + "/api/v2/alerts", json=body, timeout=10).raise_for_status()


def states(am: Alertmanager, count: int) -> dict[tuple[str, ...], str] | None:
    """Each alert's (alertname, gpu, xid, instance, endpoint) -> active or suppressed, once
    Alertmanager holds ``count`` alerts and has decided on them all."""
    held: list[dict[str, Any]] = am.get("/api/v2/alerts")
    if len(held) != count or any(a["status"]["state"] == "unprocessed" for a in held):
        return None
    return {tuple(a["labels"].get(k, "") for k in ("alertname", "gpu", "xid", "instance",
                                                     "endpoint")): a["status"]["state"]
            for a in held}


def test_a_gpu_off_the_bus_pages_once(alertmanager: tuple[Alertmanager, Webhook]) -> None:
    am, webhook = alertmanager
    gpu0 = {"instance": NODE, "gpu": "0", "uuid": "GPU-0"}
    post(am,
         {"alertname": "InferenceNodeGPULost", "severity": "critical", **gpu0},
         {"alertname": "InferenceNodeGPUXidError", "severity": "critical", "xid": "79", **gpu0},
         {"alertname": "InferenceNodeGPUsMissing", "severity": "critical", "instance": NODE},
         {"alertname": "InferenceNodeEngineDown", "severity": "critical", "instance": NODE,
          "engine": "vllm", "endpoint": "chat"},
         {"alertname": "InferenceNodeTTFTP99High", "severity": "critical", "instance": NODE,
          "model": "llama"},
         # Another GPU's own XID, and the same GPU index on another node: not explained.
         {"alertname": "InferenceNodeGPUXidError", "severity": "critical", "xid": "79",
          "instance": NODE, "gpu": "1", "uuid": "GPU-1"},
         {"alertname": "InferenceNodeGPUsMissing", "severity": "critical",
          "instance": "gpu-node-8:19400"})
    found = wait(am, 7)
    assert found == {
        ("InferenceNodeGPULost", "0", "", NODE, ""): "active",
        ("InferenceNodeGPUXidError", "0", "79", NODE, ""): "suppressed",
        ("InferenceNodeGPUsMissing", "", "", NODE, ""): "suppressed",
        ("InferenceNodeEngineDown", "", "", NODE, "chat"): "suppressed",
        # The engine is down: its latency page is held back too (by EngineDown, itself held).
        ("InferenceNodeTTFTP99High", "", "", NODE, ""): "suppressed",
        ("InferenceNodeGPUXidError", "1", "79", NODE, ""): "active",
        ("InferenceNodeGPUsMissing", "", "", "gpu-node-8:19400", ""): "active",
    }
    sent = wait_sent(webhook, 3)
    assert sent == {"InferenceNodeGPULost", "InferenceNodeGPUXidError",
                    "InferenceNodeGPUsMissing"}
    assert not webhook.find("firing", {"alertname": "InferenceNodeEngineDown"})


def test_an_ecc_error_silences_its_xids_only(alertmanager: tuple[Alertmanager, Webhook]) -> None:
    am, _ = alertmanager
    gpu2 = {"instance": NODE, "gpu": "2", "uuid": "GPU-2"}
    post(am,
         {"alertname": "InferenceNodeGPUUncorrectableECC", "severity": "critical", **gpu2},
         {"alertname": "InferenceNodeGPUXidError", "severity": "critical", "xid": "48", **gpu2},
         {"alertname": "InferenceNodeGPUXidError", "severity": "critical", "xid": "94", **gpu2},
         {"alertname": "InferenceNodeGPUXidError", "severity": "critical", "xid": "74", **gpu2})
    assert wait(am, 4) == {
        ("InferenceNodeGPUUncorrectableECC", "2", "", NODE, ""): "active",
        ("InferenceNodeGPUXidError", "2", "48", NODE, ""): "suppressed",
        ("InferenceNodeGPUXidError", "2", "94", NODE, ""): "suppressed",
        # An NVLink error is another fault: it pages.
        ("InferenceNodeGPUXidError", "2", "74", NODE, ""): "active",
    }


def test_a_bad_rollout_on_fifty_nodes_is_one_page(alertmanager: tuple[Alertmanager, Webhook]
                                                  ) -> None:
    am, webhook = alertmanager
    post(am, *({"alertname": "InferenceNodeTTFTP99High", "severity": "critical",
                "instance": f"gpu-node-{i}:19400", "model": "llama"} for i in range(50)))

    def paged() -> list[Any] | None:
        hits = webhook.find("firing", {"alertname": "InferenceNodeTTFTP99High"})
        return hits if len(hits) == 50 else None

    hits = wait_for("the rollout's page", paged, timeout=30)
    notifications = {id(n): n for n, _ in hits}
    assert len(notifications) == 1, "one notification for the cluster and model"
    (only,) = notifications.values()
    assert only.receiver == "pager"
    assert only.body["groupLabels"] == {"alertname": "InferenceNodeTTFTP99High",
                                        "cluster": "eu-1", "model": "llama"}


def wait(am: Alertmanager, count: int) -> dict[tuple[str, ...], str]:
    return wait_for(f"Alertmanager to hold {count} alerts", lambda: states(am, count),
                    timeout=30)


def wait_sent(webhook: Webhook, names: int) -> set[str]:
    """The alert names delivered, once ``names`` different ones have been."""
    def sent() -> set[str] | None:
        found = {a["labels"]["alertname"] for n in webhook.notifications() for a in n.alerts}
        return found if len(found) >= names else None

    return wait_for(f"{names} alert names delivered", sent, timeout=30)
