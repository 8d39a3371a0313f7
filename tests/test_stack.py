"""The monitoring stack end to end: a real Prometheus scrapes the real daemon and evaluates
the generated rules, a real Alertmanager routes what fires to a webhook receiver here, and
every dashboard query is evaluated against that Prometheus.

The daemon reads two simulated vLLM servers and a simulated 8-GPU H100 node. One server
(``tests/scenarios/stack_hot_spell.json``, realtime clock) is calm for 20 s, then for 45 s
half of its first tokens take 3.5 s and 28 requests wait, then it is calm again: its TTFT P99
and queue-depth alerts must fire, reach the receivers their severity routes to, and resolve.
The other (``stack_calm.json``) stays calm and must raise nothing. The stack starts once for
the module; the Prometheus and Alertmanager configurations are ``deploy/``'s examples with
this run's addresses, rule file and intervals substituted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.nvml_sim import Process, Scenario, build, h100
from tests.nvml_sim import env as nvml_env
from tests.support.dashboard_queries import (
    annotation_queries,
    dashboards,
    label_values,
    metric_names,
    panel_queries,
    substitute,
    template_queries,
)
from tests.support.harness import Daemon, SimProcess
from tests.support.stack import (
    DEPLOY,
    Alertmanager,
    MovingHost,
    Prometheus,
    Stack,
    StaticPage,
    Webhook,
    alert_labels,
    alertmanager_config,
    check,
    generate_rules,
    matching,
    prometheus_config,
    write_yaml,
)
from tests.vllm_sim import load_scenario

HERE = Path(__file__).parent
SCENARIOS = HERE / "scenarios"
JOB = "inference-node"
HOT_MODEL = "llama-3-70b"
CALM_MODEL = "qwen-2.5-7b"

# Thresholds between the calm and the hot phase of stack_hot_spell.json (TTFT P99 about
# 0.24 s calm and in (2.5, 5] s hot, above the 2.5 s bucket bound; 2 x 2 = 4 waiting calm,
# 2 x 14 = 28 hot), short `for` durations and a 20 s rate range so that the alerts fire and
# resolve within seconds.
KNOBS = {
    "ttft_p99_seconds": "2.5",
    "ttft_p99_for": "5s",
    "queue_depth": "20",
    "queue_depth_for": "5s",
    "latency_rate_range": "20s",
    "rule_interval": "1s",
    # The canary's baseline is whatever the run has recorded; its alerts fire within seconds.
    "canary_baseline_min_history": "10s",
    "canary_latency_for": "5s",
    "cpu_steal_range": "20s",
    "noisy_neighbour_for": "5s",
}
TTFT = "InferenceNodeTTFTP99High"
QUEUE = "InferenceNodeQueueDepthHigh"
FIRING = (TTFT, QUEUE)
# Alerts that must stay silent: every GPU answers, the exporter is up, one failed poll of
# an engine is no outage.
SILENT = ("InferenceNodeGPULost", "InferenceNodeExporterDown", "InferenceNodeEngineDown")
P99 = "instance_model:inference_node_engine_time_to_first_token_seconds:quantile"
# dcgm-exporter profiles GPUs 0-3 only: the dashboards' DCGM queries and their NVML
# fallbacks for GPUs without DCGM both have data.
DCGM_GPUS = frozenset({"0", "1", "2", "3"})
# Series a healthy node never has (no render failed, no NVML call failed): a query over
# nothing else may come back empty.
NEVER_ON_A_HEALTHY_NODE = frozenset({
    "inference_node_exporter_render_errors_total",
    "inference_node_exporter_nvml_errors_total",
})
# vLLM has a histogram of every latency: it exports no windowed mean.
NO_MEAN_FROM_VLLM = frozenset({"inference_node_engine_latency_mean_seconds"})
# deploy/alertmanager/alertmanager.yml routes by severity to these receivers.
RECEIVER = {"critical": "pager", "warning": "ticket"}
WATCHDOG = "InferenceNodeWatchdog"


@dataclass
class Run:
    """The started stack, its addresses, and the wall-clock bounds of the hot phase."""

    stack: Stack
    prometheus: Prometheus
    alertmanager: Alertmanager
    webhook: Webhook
    daemon: Daemon
    target: str
    rules: dict[str, dict[str, Any]]
    """Alerting rules of the generated file, by alert name."""
    hot_start: float
    hot_end: float
    host: MovingHost
    sims: tuple[SimProcess, ...]
    firing_at: float | None = None
    firing: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The hot model's alerts as Prometheus listed them when both fired, by name."""

    def labels(self, alertname: str, model: str = HOT_MODEL) -> dict[str, str]:
        return {"alertname": alertname, "instance": self.target, "job": JOB, "model": model}

    def wait_firing(self) -> float:
        """Wait until both alerts fire for the hot model; the time it was first seen."""
        if self.firing_at is not None:
            return self.firing_at

        def both() -> dict[str, dict[str, Any]] | None:
            alerts = self.prometheus.alerts()
            found = {name: matching(alerts, self.labels(name), "firing") for name in FIRING}
            if not all(found.values()):
                return None
            return {name: dict(hits[0]) for name, hits in found.items()}

        self.firing = self.stack.wait(
            f"{' and '.join(FIRING)} to fire during the hot phase", both,
            timeout=max(1.0, self.hot_end - time.time()))
        self.firing_at = time.time()
        return self.firing_at


def _alerting_rules(path: Path) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    return {rule["alert"]: rule for group in data["groups"] for rule in group["rules"]
            if "alert" in rule}


def _dcgm_page(gpus: frozenset[str]) -> bytes:
    """The recorded dcgm-exporter page with only ``gpus`` in it."""
    text = (HERE / "fixtures" / "dcgm" / "dcgm-exporter-h100x8.txt").read_text()
    lines = [line for line in text.splitlines()
             if line.startswith("#") or any(f'gpu="{g}"' in line for g in gpus)]
    return ("\n".join(lines) + "\n").encode()


def _start(stack: Stack, workdir: Path) -> Run:
    rules_file = generate_rules(workdir / "rules", KNOBS)
    check("promtool", "check", "rules", str(rules_file))
    rules = _alerting_rules(rules_file)
    for name in (*FIRING, *SILENT):
        assert name in rules, f"{rules_file} has no alert {name}"

    webhook = Webhook().start()
    stack.started(webhook.stop)
    am_config = write_yaml(workdir / "alertmanager.yml", alertmanager_config(webhook=webhook.url))
    check("amtool", "check-config", str(am_config))
    alertmanager = Alertmanager(workdir / "alertmanager", am_config)
    alertmanager.start()
    stack.started(alertmanager.stop, "alertmanager", alertmanager.log_path)

    host = MovingHost(workdir).start()
    stack.started(host.stop)
    dcgm = StaticPage(_dcgm_page(DCGM_GPUS))
    dcgm.start()
    stack.started(dcgm.stop)
    lib_dir = build(workdir / "nvml")
    alertmanager.wait_ready()

    # The simulators' clocks start now: the hot phase's bounds follow from the scenario.
    hot_spell = load_scenario(SCENARIOS / "stack_hot_spell.json")
    hot = SimProcess(SCENARIOS / "stack_hot_spell.json")
    stack.started(hot.stop)
    started = time.time()
    calm = SimProcess(SCENARIOS / "stack_calm.json")
    stack.started(calm.stop)
    (_, (hot_from, hot_to), _) = hot_spell.phase_bounds()

    # An 8-GPU H100 node: the hot engines tensor-parallel over GPUs 0-3, the calm one on 4.
    gpus = [replace(h100(i), processes=[Process(pid=hot.pid if i < 4 else calm.pid)])
            if i < 5 else h100(i) for i in range(8)]
    node = Scenario(gpus=gpus).write(workdir / "gpus.txt")
    daemon = Daemon(workdir, [
        "--poll.interval", "500ms", "--poll.timeout", "400ms", "--gpu.expected-count", "8",
        "--path.procfs", str(host.procfs), "--path.sysfs", str(host.sysfs),
        "--dcgm.url", dcgm.url, "--cost.gpu-hourly-price", "2.25",  # the cost dashboards
        "--vllm.endpoint", f"chat={hot.metrics_url}",
        "--vllm.endpoint", f"batch={calm.metrics_url}",
        "--canary.endpoint", "chat", "--canary.endpoint", "batch",
        "--canary.interval", "1s", "--canary.timeout", "900ms"], env=nvml_env(lib_dir, node))
    target = f"127.0.0.1:{daemon.port}"

    prom_config = write_yaml(workdir / "prometheus.yml", prometheus_config(
        target=target, alertmanager=alertmanager.address, rule_file=rules_file))
    check("promtool", "check", "config", str(prom_config))
    prometheus = Prometheus(workdir / "prometheus", prom_config)
    prometheus.start()
    stack.started(prometheus.stop, "prometheus", prometheus.log_path)
    daemon.start()
    stack.started(daemon.stop, "daemon", daemon.log_path)
    prometheus.wait_ready()

    run = Run(stack, prometheus, alertmanager, webhook, daemon, target, rules,
              hot_start=started + float(hot_from), hot_end=started + float(hot_to),
              host=host, sims=(hot, calm))
    _check_calm_baseline(run)
    # One failed poll of the calm server: the poll-error panels have data, and one failure
    # raises no alert.
    requests.post(f"http://127.0.0.1:{calm.port}/_sim/fault",
                  json={"mode": "status500", "count": 1}, timeout=5).raise_for_status()
    return run


def _check_calm_baseline(run: Run) -> None:
    """Before the hot phase: the target is up, the P99 is recorded below the threshold for
    both models, and no alert of ours is pending or firing."""
    prom = run.prometheus

    def recorded() -> list[float] | None:
        values = []
        for model in (HOT_MODEL, CALM_MODEL):
            result = prom.query(f'{P99}{{quantile="0.99",job="{JOB}",model="{model}"}}')
            if not result:
                return None
            values.append(float(result[0]["value"][1]))
        return values

    run.stack.wait(f"the target to be scraped up and {P99} recorded",
                   lambda: prom.query(f'up{{job="{JOB}"}} == 1') and recorded(), timeout=20)
    values = recorded() or []
    with run.stack.explained():
        assert time.time() < run.hot_start - 1, \
            "the stack came up after the calm phase: no baseline to compare with"
        assert all(v < float(KNOBS["ttft_p99_seconds"]) for v in values), values
        ours = [alert_labels(a) for a in prom.alerts()
                if alert_labels(a).get("alertname", "").startswith("InferenceNode")
                and alert_labels(a)["alertname"] != WATCHDOG]
        assert not ours, f"alerts active under calm load: {ours}"


def test_the_watchdog_fires_always_and_reaches_the_heartbeat_receiver(run: Run) -> None:
    """The dead-man's switch: firing from the first evaluation, under calm load too, and
    delivered to its own receiver, never to the pager."""
    # It fires at Prometheus' first evaluation, which may come before Alertmanager listens;
    # Prometheus sends a firing alert again every minute (--rules.alert.resend-delay).
    hits = run.stack.wait("the Watchdog's heartbeat",
                          partial(run.webhook.find, "firing", {"alertname": WATCHDOG}),
                          timeout=90)
    # Every notification that holds it went to the heartbeat receiver alone.
    assert {n.receiver for n, _ in hits} == {"heartbeat"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    workdir = tmp_path_factory.mktemp("stack")
    stack = Stack(workdir)
    try:
        yield _start(stack, workdir)
    finally:
        stack.stop()


def test_alerts_fire_in_prometheus_and_reach_their_receivers(run: Run) -> None:
    run.wait_firing()
    for name, alert in run.firing.items():
        rule = run.rules[name]
        labels = alert_labels(alert)
        severity = rule["labels"]["severity"]
        assert labels == {**labels, **run.labels(name), "severity": severity}, labels
        annotations = alert["annotations"]
        for key in ("summary", "description", "runbook_url"):
            assert annotations.get(key), f"{name}: annotation {key} missing or empty"
            assert "{{" not in annotations[key], f"{name}: {key} not rendered: {annotations}"
        assert annotations["runbook_url"].startswith("http"), annotations

    alerts = run.prometheus.alerts()
    firing = {alert_labels(a)["alertname"] for a in alerts if a["state"] == "firing"}
    assert firing - {WATCHDOG} == set(FIRING), f"firing: {sorted(firing)}, expected {FIRING}"
    assert not matching(alerts, {"model": CALM_MODEL}), "an alert for the calm model"
    for name in SILENT:
        assert not matching(alerts, {"alertname": name}), f"{name} is active"

    # Alertmanager holds them active (neither inhibited nor silenced) and sends each to the
    # receiver its severity routes to, labels and annotations intact.
    def held() -> list[dict[str, Any]] | None:
        ours = [a for a in run.alertmanager.alerts()
                if a["labels"].get("alertname") in FIRING
                and a["labels"].get("model") == HOT_MODEL]
        return ours if len(ours) == len(FIRING) else None

    in_alertmanager = run.stack.wait("Alertmanager to hold both alerts", held, timeout=30)
    assert all(a["status"]["state"] == "active" for a in in_alertmanager), in_alertmanager
    for name, alert in run.firing.items():
        want = run.labels(name)
        hits = run.stack.wait(f"a firing notification of {name}",
                              partial(run.webhook.find, "firing", want), timeout=30)
        receiver = RECEIVER[run.rules[name]["labels"]["severity"]]
        for notification, sent in hits:
            assert notification.receiver == receiver, (name, notification.receiver)
            assert notification.body["receiver"] == receiver
            assert notification.status == "firing"
            assert alert_labels(sent) == alert_labels(alert), (sent, alert)
            for key in ("summary", "runbook_url"):
                assert sent["annotations"][key] == alert["annotations"][key], sent
    assert not run.webhook.find("firing", {"model": CALM_MODEL})
    for name in SILENT:
        assert not run.webhook.find("firing", {"alertname": name})


def test_every_dashboard_query_returns_data(run: Run) -> None:
    """Every panel and annotation query of every dashboard, evaluated while the alerts fire
    (so that the ALERTS queries have data too), returns something; every template variable
    offers the values this node has."""
    at = run.wait_firing()
    # Two GPUs selected (gpu is a multi-value variable): one DCGM profiles, one it does not.
    variables: dict[str, str | list[str]] = {
        "job": JOB, "node": run.target, "model": HOT_MODEL, "gpu": ["0", "4"]}
    empty, checked = [], 0
    for file, dashboard in dashboards():
        queries = [*panel_queries(dashboard),
                   *((f"annotation {name}", expr) for name, expr in annotation_queries(dashboard))]
        assert queries, f"{file}: no queries"
        for title, expr in queries:
            if metric_names(expr) <= NEVER_ON_A_HEALTHY_NODE | NO_MEAN_FROM_VLLM:
                continue
            query = substitute(expr, variables)
            if not run.prometheus.query(query, at=at):
                empty.append(f"{file}: {title}: {query}")
            checked += 1
    assert not empty, f"{len(empty)} of {checked} dashboard queries returned nothing:\n" + \
        "\n".join(empty)

    offered = {"job": {JOB}, "node": {run.target}, "engine": {"vllm"},
               "model": {HOT_MODEL, CALM_MODEL},
               "gpu": {str(i) for i in range(8)}}
    for file, dashboard in dashboards():
        for name, query in template_queries(dashboard):
            selector, label = label_values(substitute(query, variables))
            assert selector is not None, (file, name, query)
            series = run.prometheus.series(selector, start=at - 60, end=at)
            values = {s[label] for s in series if label in s}
            assert offered[name] <= values, f"{file}: ${name} ({query}) offers {values}"


def test_alerts_resolve_after_the_load_drops(run: Run) -> None:
    run.wait_firing()
    prom = run.prometheus

    def resolved() -> bool:
        alerts = prom.alerts()
        return not any(matching(alerts, run.labels(name)) for name in FIRING)

    run.stack.wait("the alerts to resolve after the hot phase", resolved,
                   timeout=max(1.0, run.hot_end + 60 - time.time()))
    assert time.time() > run.hot_end, "the alerts resolved while the load was still high"
    for name in FIRING:
        want = run.labels(name)
        hits = run.stack.wait(f"a resolved notification of {name}",
                              partial(run.webhook.find, "resolved", want), timeout=30)
        receiver = RECEIVER[run.rules[name]["labels"]["severity"]]
        assert {n.receiver for n, _ in hits} == {receiver}
        assert all(a["endsAt"] > a["startsAt"] for _, a in hits)


NOISY = "InferenceNodeCanaryNoisyNeighbour"
WORKLOAD = ("InferenceNodeTTFTP99High", "InferenceNodeITLP99High",
            "InferenceNodeE2ELatencyP99High", "InferenceNodeQueueDepthHigh",
            "InferenceNodeQueueDepthGrowing", "InferenceNodeKVCacheExhausted",
            "InferenceNodeNoisyNeighbour", "InferenceNodeCPUContention")
"""Alerts on what users' traffic shows: a noisy neighbour that leaves it calm raises none."""


def test_a_noisy_neighbour_fires_the_platform_alert_not_the_workload_ones(run: Run) -> None:
    """After the hot spell: the hypervisor steals a quarter of the CPU and both engines
    answer the canary slower, while their users' traffic stays as calm as it was. The canary
    tells the platform's variance from the workload's: its noisy-neighbour alert fires for
    both endpoints, and no alert on the users' latency or load does."""
    test_alerts_resolve_after_the_load_drops(run)
    prom = run.prometheus
    for sim in run.sims:
        requests.post(f"http://127.0.0.1:{sim.port}/_sim/pace",
                      json={"first_token_delay": 0.3, "token_delay": 0.02},
                      timeout=5).raise_for_status()
    run.host.step = MovingHost.NOISY_STEP
    try:
        def noisy() -> list[dict[str, Any]] | None:
            found = [a for a in prom.alerts() if a["state"] == "firing"
                     and alert_labels(a).get("alertname") == NOISY]
            return found if {alert_labels(a).get("endpoint") for a in found} == {
                "chat", "batch"} else None

        found = run.stack.wait(f"{NOISY} to fire for both endpoints", noisy, timeout=90)
        with run.stack.explained():
            assert {alert_labels(a)["neighbour"] for a in found} == {"cpu"}
            active = {alert_labels(a)["alertname"] for a in prom.alerts()}
            assert not active & set(WORKLOAD), f"workload alerts active: {sorted(active)}"
            # The canary's own latency alert says the same, against its own baseline.
            assert "InferenceNodeCanaryTTFTHigh" in active, sorted(active)
            assert "InferenceNodeCanaryFailing" not in active
        hits = run.stack.wait(f"a firing notification of {NOISY}",
                              partial(run.webhook.find, "firing", {"alertname": NOISY}),
                              timeout=30)
        assert {n.receiver for n, _ in hits} == {RECEIVER[run.rules[NOISY]["labels"]
                                                         ["severity"]]}
    finally:
        run.host.step = MovingHost.STEP
        for sim in run.sims:
            requests.post(f"http://127.0.0.1:{sim.port}/_sim/pace",
                          json={"first_token_delay": 0.0, "token_delay": 0.0}, timeout=5)


def test_deploy_grafana_provisioning_files() -> None:
    grafana = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text())
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    providers = yaml.safe_load((grafana / "dashboards" / "inference-node.yml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
