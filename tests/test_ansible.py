"""The Ansible role: ``ansible-playbook --syntax-check`` and ``ansible-lint`` (production
profile, offline) on the example playbook, and a config template that renders to a valid
daemon configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.harness import ROOT

ANSIBLE = ROOT / "deploy" / "ansible"
BIN = Path(sys.executable).parent
ROLE = ANSIBLE / "roles" / "inference_node_exporter"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_LOCAL_TEMP": "/tmp", "ANSIBLE_HOME": "/tmp/.ansible-tests",
           "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    return subprocess.run(list(args), cwd=ANSIBLE, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_playbook_syntax() -> None:
    done = run(str(BIN / "ansible-playbook"), "--syntax-check", "site.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ansible_lint_production_profile() -> None:
    done = run(str(BIN / "ansible-lint"), "--offline", "--profile", "production", "site.yml",
               "roles")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_config_template_renders_a_valid_config(tmp_path: Path) -> None:
    # Render the role's template with its defaults plus the example playbook's variables,
    # through Ansible's own templating, then let the daemon check the result.
    playbook = tmp_path / "render.yml"
    out = tmp_path / "config.toml"
    site = yaml.safe_load((ANSIBLE / "site.yml").read_text())[0]
    variables = site["roles"][0]["vars"]
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    playbook.write_text(yaml.safe_dump([{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {**defaults, **variables, "ansible_python_interpreter": sys.executable},
        "tasks": [{"name": "Render", "ansible.builtin.template": {
            "src": str(ROLE / "templates" / "config.toml.j2"), "dest": str(out),
            "mode": "0600"}}]}]))
    done = run(str(BIN / "ansible-playbook"), "-i", "localhost,", str(playbook))
    assert done.returncode == 0, done.stdout + done.stderr
    check = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(out),
                            "--config.check"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60, check=False)
    assert check.returncode == 0, check.stderr + out.read_text()
    assert "llama-70b" in check.stdout and "qwen-7b" in check.stdout
    assert "expected_count = 8" in out.read_text()
