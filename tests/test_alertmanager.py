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
from tests.support.series import alerts_generator
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


def severities() -> dict[str, set[str]]:
    """Each shipped alert's severities (a burn-rate alert has a page and a ticket)."""
    out: dict[str, set[str]] = {}
    for group in alerts_generator().build()["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                out.setdefault(rule["alert"], set()).add(rule["labels"]["severity"])
    return out


SEVERITIES = severities()


def alert(name: str, severity: str | None = None, **labels: str) -> dict[str, str]:
    """An alert as the shipped rules would send it: its severity is the rule's."""
    if severity is None:
        (severity,) = SEVERITIES[name]
    assert severity in SEVERITIES[name], (name, severity)
    return {"alertname": name, "severity": severity, **labels}


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


def test_a_gpu_off_the_bus_is_one_notification(alertmanager: tuple[Alertmanager, Webhook]) -> None:
    am, webhook = alertmanager
    gpu0 = {"instance": NODE, "gpu": "0", "uuid": "GPU-0"}
    post(am,
         alert("InferenceNodeGPULost", **gpu0),
         alert("InferenceNodeGPUXidError", xid="79", **gpu0),
         alert("InferenceNodeGPUsMissing", instance=NODE),
         alert("InferenceNodeEngineDown", instance=NODE, engine="vllm", endpoint="chat"),
         alert("InferenceNodeTTFTP99High", instance=NODE, model="llama"),
         # Another GPU's own XID, and the same GPU index on another node: not explained.
         alert("InferenceNodeGPUXidError", xid="79", instance=NODE, gpu="1", uuid="GPU-1"),
         alert("InferenceNodeGPUsMissing", instance="gpu-node-8:19400"))
    found = wait(am, 7)
    assert found == {
        ("InferenceNodeGPULost", "0", "", NODE, ""): "active",
        ("InferenceNodeGPUXidError", "0", "79", NODE, ""): "suppressed",
        ("InferenceNodeGPUsMissing", "", "", NODE, ""): "suppressed",
        ("InferenceNodeEngineDown", "", "", NODE, "chat"): "suppressed",
        # The engine is down: its latency ticket is held back too (by EngineDown, itself held).
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
         alert("InferenceNodeGPUUncorrectableECC", **gpu2),
         alert("InferenceNodeGPUXidError", xid="48", **gpu2),
         alert("InferenceNodeGPUXidError", xid="94", **gpu2),
         alert("InferenceNodeGPUXidError", xid="74", **gpu2))
    assert wait(am, 4) == {
        ("InferenceNodeGPUUncorrectableECC", "2", "", NODE, ""): "active",
        ("InferenceNodeGPUXidError", "2", "48", NODE, ""): "suppressed",
        ("InferenceNodeGPUXidError", "2", "94", NODE, ""): "suppressed",
        # An NVLink error is another fault: its own ticket.
        ("InferenceNodeGPUXidError", "2", "74", NODE, ""): "active",
    }


def test_a_bad_rollout_on_fifty_nodes_is_one_page(alertmanager: tuple[Alertmanager, Webhook]
                                                  ) -> None:
    """The model's budget burns fast on 50 nodes: one page, the model's; the 50 per-node
    tickets and the slow-burn ticket of the same objective are held back by it."""
    am, webhook = alertmanager
    nodes = [f"gpu-node-{i}:19400" for i in range(50)]
    burn = {"model": "llama", "slo": "ttft"}
    post(am, *(alert("InferenceNodeTTFTP99High", instance=n, model="llama") for n in nodes),
         alert("InferenceModelTTFTBudgetBurn", "critical", **burn),
         alert("InferenceModelTTFTBudgetBurn", "warning", **burn),
         # Another model's tickets are not explained by llama's page.
         alert("InferenceNodeTTFTP99High", instance=nodes[0], model="mistral"))
    held = wait_for("Alertmanager to hold 53 alerts", lambda: _held(am, 53), timeout=30)
    assert held == {
        ("InferenceNodeTTFTP99High", "llama", "warning"): {"suppressed"},
        ("InferenceModelTTFTBudgetBurn", "llama", "critical"): {"active"},
        ("InferenceModelTTFTBudgetBurn", "llama", "warning"): {"suppressed"},
        ("InferenceNodeTTFTP99High", "mistral", "warning"): {"active"},
    }

    def delivered() -> dict[str, list[Any]] | None:
        found: dict[str, list[Any]] = {}
        for n in webhook.notifications():
            found.setdefault(n.receiver, []).append(n)
        return found if {"pager", "ticket"} <= set(found) else None

    found = wait_for("the page and the other model's ticket", delivered, timeout=30)
    (page,) = found["pager"]
    assert page.body["groupLabels"] == {"alertname": "InferenceModelTTFTBudgetBurn",
                                        "cluster": "eu-1", "model": "llama"}
    assert [a["labels"]["severity"] for a in page.alerts] == ["critical"]
    tickets = [a["labels"] for n in found["ticket"] for a in n.alerts]
    assert tickets == [{**BASE, "alertname": "InferenceNodeTTFTP99High", "severity": "warning",
                        "instance": nodes[0], "model": "mistral"}]


def test_fifty_node_tickets_without_a_page_are_one_ticket(
        alertmanager: tuple[Alertmanager, Webhook]) -> None:
    am, webhook = alertmanager
    post(am, *(alert("InferenceNodeTTFTP99High", instance=f"gpu-node-{i}:19400",
                     model="llama") for i in range(50)))

    def ticketed() -> list[Any] | None:
        hits = webhook.find("firing", {"alertname": "InferenceNodeTTFTP99High"})
        return hits if len(hits) == 50 else None

    hits = wait_for("the rollout's ticket", ticketed, timeout=30)
    notifications = {id(n): n for n, _ in hits}
    assert len(notifications) == 1, "one notification for the cluster and model"
    (only,) = notifications.values()
    assert only.receiver == "ticket"
    assert only.body["groupLabels"] == {"alertname": "InferenceNodeTTFTP99High",
                                        "cluster": "eu-1", "model": "llama"}


def _held(am: Alertmanager, count: int) -> dict[tuple[str, str, str], set[str]] | None:
    """(alertname, model, severity) -> the states of those alerts, once Alertmanager holds
    ``count`` alerts and has decided on them all."""
    held: list[dict[str, Any]] = am.get("/api/v2/alerts")
    if len(held) != count or any(a["status"]["state"] == "unprocessed" for a in held):
        return None
    out: dict[tuple[str, str, str], set[str]] = {}
    for a in held:
        key = (a["labels"]["alertname"], a["labels"].get("model", ""), a["labels"]["severity"])
        out.setdefault(key, set()).add(a["status"]["state"])
    return out


def wait(am: Alertmanager, count: int) -> dict[tuple[str, ...], str]:
    return wait_for(f"Alertmanager to hold {count} alerts", lambda: states(am, count),
                    timeout=30)


def wait_sent(webhook: Webhook, names: int) -> set[str]:
    """The alert names delivered, once ``names`` different ones have been."""
    def sent() -> set[str] | None:
        found = {a["labels"]["alertname"] for n in webhook.notifications() for a in n.alerts}
        return found if len(found) >= names else None

    return wait_for(f"{names} alert names delivered", sent, timeout=30)


def test_the_canarys_cause_silences_its_symptoms(
        alertmanager: tuple[Alertmanager, Webhook]) -> None:
    am, _ = alertmanager
    post(am,
         alert("InferenceNodeEngineDown", instance=NODE, engine="vllm", endpoint="chat"),
         alert("InferenceNodeCanaryFailing", instance=NODE, engine="vllm", endpoint="chat"),
         alert("InferenceNodeCanaryNoisyNeighbour", instance=NODE, engine="vllm",
               endpoint="batch", model="m", neighbour="cpu"),
         alert("InferenceNodeCanaryTTFTHigh", instance=NODE, engine="vllm", endpoint="batch",
               model="m"),
         # Another endpoint's slower canary has no noisy neighbour to explain it.
         alert("InferenceNodeCanaryITLHigh", instance=NODE, engine="vllm", endpoint="code",
               model="c"))
    assert wait(am, 5) == {
        ("InferenceNodeEngineDown", "", "", NODE, "chat"): "active",
        ("InferenceNodeCanaryFailing", "", "", NODE, "chat"): "suppressed",
        ("InferenceNodeCanaryNoisyNeighbour", "", "", NODE, "batch"): "active",
        ("InferenceNodeCanaryTTFTHigh", "", "", NODE, "batch"): "suppressed",
        ("InferenceNodeCanaryITLHigh", "", "", NODE, "code"): "active",
    }
