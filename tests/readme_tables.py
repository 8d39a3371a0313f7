"""Rewrites the metric, flag and alert-knob tables of README.md from the code.

Run ``python -m tests.readme_tables``; tests/test_schema.py and tests/test_alerts.py fail
while they disagree.
"""

from __future__ import annotations

import re
from pathlib import Path

from exporter.cli import ENV_PREFIX, FLAGS
from exporter.config import COLLECTORS
from exporter.schema import SCHEMA
from tests.series import alerts_generator

README = Path(__file__).parents[1] / "README.md"


def knob_table() -> str:
    table: str = alerts_generator().knob_table()
    return table if table.endswith("\n") else table + "\n"


def metric_table() -> str:
    rows = ["| Name | Type | Labels | Meaning |", "|---|---|---|---|"]
    for s in SCHEMA:
        labels = ", ".join(f"`{label}`" for label in s.labels)
        rows.append(f"| `{s.name}` | {s.type} | {labels} | {s.help} |")
    return "\n".join(rows) + "\n"


def flag_table() -> str:
    rows = ["| Flag | Environment variable | Meaning |", "|---|---|---|",
            f"| `--config.file PATH` | `{ENV_PREFIX}CONFIG_FILE` | TOML configuration file"
            " (optional). |"]
    rows += [f"| `{f.flag} {f.metavar}` | `{f.env}` | {f.help} |" for f in FLAGS]
    rows += [f"| `--[no-]collector.{c}` | `{ENV_PREFIX}COLLECTOR_{c.upper()}` | Enable or"
             f" disable the {c} collector (default on). |" for c in COLLECTORS]
    rows.append("| `--config.check` | | Validate the configuration, print it, and exit 0"
                " (or 2). |")
    return "\n".join(rows) + "\n"


def main() -> None:
    text = README.read_text()
    text = re.sub(r"\| Name \| Type \| Labels \| Meaning \|\n(\|.*\|\n)+", metric_table(), text)
    text = re.sub(r"\| Flag \| Environment variable \| Meaning \|\n(\|.*\|\n)+", flag_table(),
                  text)
    text = re.sub(r"\| Knob \| Default \| Meaning \|\n(\|.*\|\n)+", knob_table(), text)
    README.write_text(text)


if __name__ == "__main__":
    main()
