"""The Kubernetes manifests: valid against Kubernetes' own schemas (kubernetes-validate),
the prometheus-operator resources against the fields the operator requires, and consistent
with each other and with the daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.harness import ROOT

KUBE = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
"""The oldest Kubernetes the manifests must work on (runtimeClassName, seccompProfile...)."""

_RULE = {"type": "object", "required": ["expr"],
         "properties": {"record": {"type": "string"}, "alert": {"type": "string"},
                        "expr": {"type": "string"}, "for": {"type": "string"},
                        "labels": {"type": "object"}, "annotations": {"type": "object"}},
         "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
         "additionalProperties": False}
# What prometheus-operator's CRDs require of the fields these manifests use.
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": {"type": "object", "required": ["selector", "endpoints"], "properties": {
                "jobLabel": {"type": "string"},
                "selector": {"type": "object", "properties": {
                    "matchLabels": {"type": "object",
                                    "additionalProperties": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"},
                        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        "scrapeTimeout": {"type": "string",
                                          "pattern": "^[0-9]+(ms|s|m|h)$"},
                        "relabelings": {"type": "array"}},
                    "additionalProperties": False}}},
                "additionalProperties": False}}},
    "PrometheusRule": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": {"type": "object", "required": ["groups"], "properties": {
                "groups": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["name", "rules"], "properties": {
                        "name": {"type": "string"}, "interval": {"type": "string"},
                        "rules": {"type": "array", "items": _RULE}},
                    "additionalProperties": False}}},
                "additionalProperties": False}}},
}


def resources() -> list[tuple[str, dict[str, Any]]]:
    """Every resource kustomization.yaml lists, as kubectl apply -k would send it."""
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    out = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((KUBE / name).read_text()):
            if doc:
                out.append((name, doc))
    return out


RESOURCES = resources()


def by_kind(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in RESOURCES if doc["kind"] == kind]
    assert len(found) == 1, f"one {kind} expected, found {len(found)}"
    return found[0]


def test_every_manifest_in_the_directory_is_in_the_kustomization() -> None:
    listed = set(yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("name,doc", RESOURCES, ids=[f"{n}:{d['kind']}" for n, d in RESOURCES])
def test_manifest_is_valid(name: str, doc: dict[str, Any]) -> None:
    if doc["kind"] in CRD_SCHEMAS:
        jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_an_invalid_manifest_is_caught() -> None:
    broken = yaml.safe_load((KUBE / "daemonset.yaml").read_text())
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    monitor = by_kind("ServiceMonitor")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**monitor, "spec": {"endpoints": []}}, CRD_SCHEMAS["ServiceMonitor"])


def test_ports_and_probes_agree() -> None:
    pod = by_kind("DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("metrics", 19400)
    service = by_kind("Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= \
        by_kind("DaemonSet")["spec"]["template"]["metadata"]["labels"].items()
    monitor = by_kind("ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_the_scrape_job_is_the_one_the_rules_select() -> None:
    relabel = by_kind("ServiceMonitor")["spec"]["endpoints"][0]["relabelings"]
    assert {"targetLabel": "job", "replacement": "inference-node"} in relabel
    rules = by_kind("PrometheusRule")["spec"]["groups"]
    exprs = [r["expr"] for g in rules for r in g["rules"]]
    assert any('job="inference-node"' in e for e in exprs)


def test_the_config_map_is_a_valid_daemon_config(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "config.toml"
    config.write_text(by_kind("ConfigMap")["data"]["config.toml"])
    done = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(config),
                           "--config.check"], capture_output=True, text=True, timeout=60,
                          check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    pod = by_kind("DaemonSet")["spec"]["template"]["spec"]
    mount = pod["containers"][0]["volumeMounts"][0]["mountPath"]
    assert f"--config.file={mount}/config.toml" in pod["containers"][0]["args"]


def test_the_pod_is_hardened_and_takes_no_gpu() -> None:
    pod = by_kind("DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    # NVML through the NVIDIA runtime, without taking a GPU from the engines.
    assert pod["runtimeClassName"] == "nvidia"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"}
    limits = container["resources"].get("limits", {})
    requests = container["resources"].get("requests", {})
    assert not any(k.startswith("nvidia.com/") for k in [*limits, *requests])
    assert pod["hostPID"] is True and pod["hostNetwork"] is True
