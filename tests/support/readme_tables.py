"""Rewrites the metric, flag, engine-support and alert-knob tables of README.md from the code.

Run ``python -m tests.support.readme_tables``; tests/test_schema.py and tests/test_alerts.py fail
while they disagree.
"""

from __future__ import annotations

import re
from pathlib import Path

from exporter import engines
from exporter.cli import ENV_PREFIX, flags
from exporter.config import collector_names
from exporter.engines.reading import SIGNALS
from exporter.schema import SCHEMA
from tests.support.series import alerts_generator

README = Path(__file__).parents[2] / "README.md"


def knob_table() -> str:
    table: str = alerts_generator().knob_table()
    return table if table.endswith("\n") else table + "\n"


def support_table() -> str:
    """Engine x signal, from the adapters: what each engine exposes, under our names."""
    adapters = engines.adapters()
    rows = ["| Signal | " + " | ".join(a.title for a in adapters) + " |",
            "|---|" + "---|" * len(adapters)]
    for signal in SIGNALS:
        cells = [a.support(signal) for a in adapters]
        rows.append(f"| `{signal}` | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


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
    rows += [f"| `{f.usage}` | `{f.env}` | {f.help} |" for f in flags()]
    rows += [f"| `--[no-]collector.{c}` | `{ENV_PREFIX}COLLECTOR_{c.upper()}` | Enable or"
             f" disable the {c} collector (default on). |" for c in collector_names()]
    rows.append("| `--config.check` | | Validate the configuration, print it, and exit 0"
                " (or 2). |")
    return "\n".join(rows) + "\n"


def main() -> None:
    text = README.read_text()
    text = re.sub(r"\| Name \| Type \| Labels \| Meaning \|\n(\|.*\|\n)+", metric_table(), text)
    text = re.sub(r"\| Flag \| Environment variable \| Meaning \|\n(\|.*\|\n)+", flag_table(),
                  text)
    text = re.sub(r"\| Knob \| Default \| Meaning \|\n(\|.*\|\n)+", knob_table(), text)
    text = re.sub(r"\| Signal \|.*\|\n(\|.*\|\n)+", support_table(), text)
    README.write_text(text)


if __name__ == "__main__":
    main()
