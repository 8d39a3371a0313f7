"""The cost rules' comparison with a flat-rate alternative, which is recorded only with the
knob ``cost_compare_hourly_price`` set: built with it, then checked value by value by
``promtool test rules`` (alerts/tests/compare/). The other cost rules are tested in
alerts/tests/cost.yml with the committed rule file (tests/test_alerts.py runs it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.promtool import promtool
from tests.support.series import alerts_generator

ROOT = Path(__file__).resolve().parent.parent
COMPARE = ROOT / "alerts" / "tests" / "compare" / "cost-compare.yml"
BREAK_EVEN = "instance_gpu:inference_node_gpu_compare_break_even_utilization:ratio"
CHEAPER = "instance_gpu:inference_node_gpu_compare_cheaper:bool"


def test_the_comparison_is_recorded_only_with_the_knob_set() -> None:
    names = alerts_generator().recording_rule_names()
    assert BREAK_EVEN not in names and CHEAPER not in names
    built = alerts_generator().build({"cost_compare_hourly_price": "1.125"})
    rules = {r["record"]: r["expr"] for g in built["groups"] for r in g["rules"]
             if "record" in r}
    assert rules[BREAK_EVEN] == '1.125 / inference_node_gpu_hourly_cost{job="inference-node"}'
    assert CHEAPER in rules


def test_the_comparison_value_by_value(tmp_path: Path) -> None:
    files = alerts_generator().render({"cost_compare_hourly_price": "1.125"})
    rules = tmp_path / "inference-node.rules.yml"
    rules.write_text(files["inference-node.rules.yml"])
    shutil.copy(COMPARE, tmp_path / COMPARE.name)
    tested = {t["expr"] for case in yaml.safe_load(COMPARE.read_text())["tests"]
              for t in case["promql_expr_test"]}
    assert tested == {BREAK_EVEN, CHEAPER}
    done = subprocess.run([promtool(), "test", "rules", COMPARE.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("bad", ["0", "-1", "cheap"])
def test_the_knob_takes_a_price_above_0_or_nothing(bad: str) -> None:
    generator = alerts_generator()
    with pytest.raises(generator.KnobError, match="cost_compare_hourly_price"):
        generator.build({"cost_compare_hourly_price": bad})
