"""Quantiles from buckets: hand-computed cases, and Prometheus' own histogram_quantile."""

from __future__ import annotations

import json
import math
import random
import subprocess
from pathlib import Path

import pytest

from exporter.derive.quantiles import bucket_quantile
from tests.support.promtool import promtool

INF = math.inf


@pytest.mark.parametrize(
    ("q", "bounds", "counts", "expected"),
    [
        # 100 observations: 50 in (0, 0.1], 40 in (0.1, 0.5], 10 in (0.5, 1].
        (0.5, (0.1, 0.5, 1.0, INF), (50, 90, 100, 100), 0.1),
        (0.75, (0.1, 0.5, 1.0, INF), (50, 90, 100, 100), 0.1 + 0.4 * (25 / 40)),
        (0.99, (0.1, 0.5, 1.0, INF), (50, 90, 100, 100), 0.5 + 0.5 * (9 / 10)),
        # Rank in the first bucket interpolates from 0.
        (0.25, (0.1, 0.5, 1.0, INF), (50, 90, 100, 100), 0.1 * 0.5),
        # Rank in +Inf gives the highest finite bound.
        (0.99, (0.1, 0.5, INF), (10, 20, 100), 0.5),
        # Non-monotonic counts are evened out first.
        (0.5, (1.0, 2.0, 4.0, INF), (10, 8, 20, 20), 1.0),
        # A first bucket with a non-positive bound returns that bound.
        (0.1, (-1.0, 0.0, 1.0, INF), (5, 10, 20, 20), -1.0),
    ],
)
def test_hand_computed(q: float, bounds: tuple[float, ...], counts: tuple[float, ...],
                       expected: float) -> None:
    assert bucket_quantile(q, bounds, counts) == pytest.approx(expected, rel=1e-12)


def test_no_observations_or_no_inf_bucket_gives_none() -> None:
    assert bucket_quantile(0.99, (0.1, INF), (0, 0)) is None
    assert bucket_quantile(0.99, (0.1, 0.2), (1, 2)) is None
    assert bucket_quantile(0.99, (INF,), (3,)) is None


def _cases(n: int) -> list[tuple[float, tuple[float, ...], tuple[float, ...]]]:
    rnd = random.Random(20261123)
    vllm_ttft = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0, INF)
    cases = []
    for i in range(n):
        if i % 3 == 0:
            bounds = vllm_ttft
        else:
            k = rnd.randint(1, 8)
            bounds = (*sorted({round(rnd.uniform(-1, 50), 3) for _ in range(k)}), INF)
        counts: list[float] = []
        c = 0.0
        for _ in bounds:
            c += rnd.choice([0, 0, 1, 3, 17, 250])
            counts.append(c)
        if i % 7 == 0 and len(counts) > 2:
            counts[1] = max(0.0, counts[1] - 5)  # a non-monotonic reading
        if counts[-1] == 0:
            counts[-1] = 1.0
        q = rnd.choice([0.5, 0.9, 0.95, 0.99, 0.999, rnd.random()])
        cases.append((q, bounds, tuple(counts)))
    return cases


def test_matches_prometheus_histogram_quantile(tmp_path: Path) -> None:
    """promtool evaluates histogram_quantile on the same buckets; values must be identical."""
    tests = []
    for i, (q, bounds, counts) in enumerate(_cases(120)):
        value = bucket_quantile(q, bounds, counts)
        assert value is not None
        series = [
            {"series": f'h_bucket{{case="{i}",le="{"+Inf" if math.isinf(b) else repr(b)}"}}',
             "values": repr(c)}
            for b, c in zip(bounds, counts, strict=True)
        ]
        tests.append({
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [{
                "expr": f'histogram_quantile({q!r}, h_bucket{{case="{i}"}})',
                "eval_time": "0m",
                "exp_samples": [{"labels": f'{{case="{i}"}}', "value": value}],
            }],
        })
    (tmp_path / "rules.yml").write_text("groups: []\n")
    test_file = tmp_path / "quantiles_test.yml"
    # JSON is valid YAML; promtool reads it as is.
    test_file.write_text(json.dumps({"rule_files": ["rules.yml"], "tests": tests}))
    result = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SUCCESS" in result.stdout + result.stderr
