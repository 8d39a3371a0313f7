"""The recording rules work unchanged under federation (deploy/FLEET.md): a site Prometheus
scrapes the daemon and evaluates the generated rules; a global Prometheus federates only the
node-level rates from it and loads the very same rule file. Its fleet percentiles must equal
the site's, and none of its rules may fail (two sources of one series would)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import Daemon, SimProcess
from tests.support.stack import (
    Prometheus,
    Stack,
    check,
    generate_rules,
    prometheus_config,
    write_yaml,
)

SCENARIO = Path(__file__).parent / "scenarios" / "stack_calm.json"
MODEL = "qwen-2.5-7b"
FLEET = re.compile(r"```yaml\n(- job_name: federate-inference\n.*?)```", re.S)
"""The federation job of deploy/FLEET.md, which the global Prometheus runs as written."""
P99 = 'model:inference_node_engine_time_to_first_token_seconds:quantile{quantile="0.99"}'


def federation_job(site: str) -> dict[str, object]:
    import yaml

    text = (Path(__file__).parents[1] / "deploy" / "FLEET.md").read_text()
    found = FLEET.search(text.replace("\n  ", "\n"))
    assert found, "deploy/FLEET.md has no federate-inference job"
    (job,) = yaml.safe_load(found.group(1))
    job["static_configs"] = [{"targets": [site]}]
    job["scrape_interval"] = "1s"
    return dict(job)


@pytest.fixture(scope="module")
def prometheuses(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus,
                                                                             Prometheus, Stack]]:
    workdir = tmp_path_factory.mktemp("federation")
    stack = Stack(workdir)
    try:
        rules = generate_rules(workdir / "rules", {"latency_rate_range": "10s",
                                                   "rule_interval": "1s"})
        sim = SimProcess(SCENARIO)
        stack.started(sim.stop)
        daemon = Daemon(workdir, ["--poll.interval", "500ms", "--poll.timeout", "400ms",
                                  "--no-collector.gpu", "--no-collector.dcgm",
                                  "--vllm.endpoint", f"chat={sim.metrics_url}"])
        daemon.start()
        stack.started(daemon.stop, "daemon", daemon.log_path)

        site_config = prometheus_config(target=f"127.0.0.1:{daemon.port}",
                                         alertmanager="127.0.0.1:9", rule_file=rules)
        del site_config["alerting"]
        site = Prometheus(workdir / "site", write_yaml(workdir / "site.yml", site_config))
        site.start()
        stack.started(site.stop, "site prometheus", site.log_path)
        site.wait_ready()

        global_config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                         "rule_files": [str(rules)],
                         "scrape_configs": [federation_job(site.address)]}
        path = write_yaml(workdir / "global.yml", global_config)
        check("promtool", "check", "config", str(path))
        fleet = Prometheus(workdir / "global", path)
        fleet.start()
        stack.started(fleet.stop, "global prometheus", fleet.log_path)
        fleet.wait_ready()
        yield site, fleet, stack
    finally:
        stack.stop()


def _value(prom: Prometheus, expr: str) -> float | None:
    result = prom.query(expr)
    if len(result) != 1:
        return None
    value = float(result[0]["value"][1])
    return value if math.isfinite(value) else None


def test_the_global_prometheus_computes_the_fleet_p99_from_federated_rates(
        prometheuses: tuple[Prometheus, Prometheus, Stack]) -> None:
    site, fleet, stack = prometheuses
    expr = P99.replace("}", f',model="{MODEL}"}}')

    seen: list[tuple[float | None, float | None]] = []

    def agree() -> tuple[float, float] | None:
        here, there = _value(site, expr), _value(fleet, expr)
        seen.append((here, there))
        if here is None or there is None:
            return None
        # The scenario puts 90% of first tokens under 50 ms and the rest under 100 ms: the
        # P99 lies in the (50, 100] ms bucket, and both servers compute it from the same
        # rates (the global one a scrape later).
        in_bucket = 0.05 < here <= 0.1 and 0.05 < there <= 0.1
        return (here, there) if in_bucket and abs(here - there) <= 0.002 else None

    try:
        stack.wait("the same fleet P99 in both Prometheus servers", agree, timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; (site, global) seen: {seen[-5:]}") from exc

    # The global server recomputed the node-level percentile from the federated rates too.
    node = fleet.query('instance_model:inference_node_engine_time_to_first_token_seconds'
                       f':quantile{{quantile="0.99",model="{MODEL}"}}')
    assert len(node) == 1 and node[0]["metric"]["job"] == "inference-node"


def test_every_rule_of_the_global_prometheus_is_healthy(
        prometheuses: tuple[Prometheus, Prometheus, Stack]) -> None:
    _, fleet, stack = prometheuses

    def evaluated() -> list[dict[str, object]] | None:
        groups = fleet.get("/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("2")
                                      for r in rules) else None

    rules = stack.wait("every rule evaluated once", evaluated, timeout=30)
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert unhealthy == []
