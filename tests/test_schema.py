"""Exported names follow Prometheus conventions and every one is documented in the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.cli import flags, parser
from exporter.schema import CANARY, SCHEMA, Spec

README = (Path(__file__).parents[1] / "README.md").read_text()
GOLDEN = (Path(__file__).parent / "golden" / "metrics.txt").read_text()

BASE_UNITS = ("_seconds", "_bytes", "_ratio", "_total", "_info", "_tokens", "_observations",
              "_per_second", "_up", "_waiting", "_running", "_swapped", "_cpus", "_celsius",
              "_hertz", "_watts", "_lost", "_pending", "_failed", "_reason", "_generation",
              "_width", "_gpus", "_expected", "_processes", "_per_joule", "_pages",
              "_endpoints", "_aligned", "_hourly_cost")
# "_hourly_cost": currency units per hour, OpenCost's unit (node_gpu_hourly_cost); the currency
# is a label.
FORBIDDEN = re.compile(r"(milli|micro|nano|_ms\b|_us\b|mib|kib|percent|perc\b|celsius_)",
                       re.IGNORECASE)


@pytest.mark.parametrize("spec", SCHEMA, ids=lambda s: s.name)
def test_name_conventions(spec: Spec) -> None:
    assert re.fullmatch(r"inference_node_[a-z0-9_]+", spec.name)
    assert not FORBIDDEN.search(spec.name), "use base units (seconds, bytes, ratios 0..1)"
    assert spec.name.endswith("_total") == (spec.type == "counter")
    assert spec.name.endswith(BASE_UNITS) or spec.type == "histogram" or \
        spec.name.endswith("_build_info")
    if spec.type == "histogram":
        assert spec.name.endswith("_seconds")
    assert "le" not in spec.labels and "quantile" not in spec.labels
    for label in spec.labels:
        assert re.fullmatch(r"[a-z][a-z_]*", label)
        assert label not in ("instance", "job", "hostname", "host", "pid"), \
            "no target or PID labels"
    assert spec.help.endswith(".") and len(spec.help) > 20


def test_names_are_unique() -> None:
    names = [s.name for s in SCHEMA]
    assert len(names) == len(set(names))


def _readme_table() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in README.splitlines():
        m = re.match(r"\| `(inference_node_\w+)` \| (\w+) \| (.*?) \|", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def test_readme_documents_every_name_with_type_and_labels() -> None:
    table = _readme_table()
    assert set(table) == {s.name for s in SCHEMA}
    for s in SCHEMA:
        kind, labels = table[s.name]
        assert kind == s.type
        assert labels == ", ".join(f"`{label}`" for label in s.labels)


def test_every_exported_name_is_in_the_schema() -> None:
    families = set(re.findall(r"^# TYPE (\S+) ", GOLDEN, re.MULTILINE))
    assert families <= {s.name for s in SCHEMA}
    # The golden run shows every family but those that need failures or a moving /proc/stat
    # (covered by tests/test_daemon.py and tests/test_host.py).
    assert {s.name for s in SCHEMA} - families == {
        "inference_node_exporter_collector_errors_total",
        "inference_node_exporter_render_errors_total",
        "inference_node_host_cpu_busy_ratio",
        "inference_node_host_cpu_iowait_ratio",
        "inference_node_host_cpu_steal_ratio",
        "inference_node_exporter_nvml_errors_total",
        "inference_node_gpu_xid_errors_total",
        # DCGM's profiling fields need a dcgm-exporter (tests/test_gpu.py serves a capture).
        "inference_node_gpu_dram_active_ratio",
        "inference_node_gpu_sm_active_ratio",
        "inference_node_gpu_tensor_active_ratio",
        "inference_node_gpu_graphics_engine_active_ratio",
        # Means need an engine without histograms (tests/test_engine_seam.py serves one).
        "inference_node_engine_latency_mean_seconds",
        # The golden run configures its engines; tests/test_discovery.py finds some.
        "inference_node_exporter_discovered_endpoints",
        "inference_node_exporter_discovery_left_out_endpoints",
        # The golden host has no balloon counters nor NUMA topology: tests/test_environment.py
        # and tests/test_platform.py read fixture trees that have them.
        "inference_node_host_balloon_inflated_bytes_total",
        "inference_node_host_balloon_deflated_bytes_total",
        "inference_node_host_balloon_migrated_bytes_total",
        "inference_node_gpu_numa_info",
        "inference_node_engine_numa_aligned",
        # The golden run sets no price ([cost]): tests/test_cost.py sets some.
        "inference_node_gpu_hourly_cost",
        # The golden run probes no endpoint: tests/test_canary*.py do.
        *(s.name for s in CANARY),
    }


def test_readme_tables_are_current() -> None:
    from tests.support.readme_tables import flag_table, metric_table, support_table

    assert metric_table() in README and flag_table() in README \
        and support_table() in README, \
        "README tables are stale: run python -m tests.support.readme_tables"


def test_readme_documents_every_flag_and_its_environment_variable() -> None:
    for f in flags():
        assert f"`{f.usage}`" in README and f"`{f.env}`" in README
    assert "--collector.vllm" in parser().format_help()
    assert "`--[no-]collector.vllm`" in README and "`--[no-]collector.gpu`" in README


def test_readme_lists_every_upstream_name_each_adapter_reads() -> None:
    from exporter import engines

    for adapter in engines.adapters():
        for signal, names in (*adapter.names.items(), *adapter.means.items()):
            for name in names:
                assert f"`{name}" in README, (adapter.kind, signal, name)


def test_every_family_is_defined_once_under_its_full_name() -> None:
    """A family's full name leads to its one definition, beside the code that emits it."""
    root = Path(__file__).parents[1] / "exporter"
    sources = {p: p.read_text() for p in root.rglob("*.py")}
    for spec in SCHEMA:
        where = [p.relative_to(root) for p, text in sources.items() if f'"{spec.name}"' in text]
        assert len(where) == 1, (spec.name, where)


def test_every_signal_of_the_reading_has_its_family() -> None:
    """The engine-neutral reading's keys and the families they are exported as agree."""
    from exporter.derive import engine_state
    from exporter.engines import reading

    assert tuple(engine_state.GAUGES) == reading.GAUGES
    assert tuple(engine_state.COUNTERS) == reading.COUNTERS
    assert tuple(engine_state.HISTOGRAMS) == reading.HISTOGRAMS
    assert set(engine_state.RATES) <= set(reading.COUNTERS)
