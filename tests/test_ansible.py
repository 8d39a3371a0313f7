"""The Ansible role and example playbook in deploy/ansible: ``ansible-playbook --syntax-check``,
``ansible-lint`` with the production profile (offline), the configuration the role writes for
each example host read back by the daemon's own ``--config.check``, the role's fixed layout
against the systemd unit, and the controller-side wheel build run for real, twice."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.harness import ROOT
from tests.support.promtool import promtool

ANSIBLE = ROOT / "deploy" / "ansible"
ROLE = ANSIBLE / "roles" / "inference_node_exporter"
INVENTORY = ANSIBLE / "inventory.example.yml"
UNIT = ROOT / "systemd" / "inference-node-exporter.service"
BIN = Path(sys.executable).parent
PREFIX = "inference_node_exporter_"


@pytest.fixture(scope="module")
def ansible_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Ansible and ansible-lint with their state in a scratch directory, offline, no colour."""
    home = tmp_path_factory.mktemp("ansible-home")
    (home / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANSIBLE_", "INFERENCE_NODE_EXPORTER_"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / "cache"),
        "ANSIBLE_HOME": str(home / "ansible"),
        "TMPDIR": str(home / "tmp"),  # the role's scratch directory on the controller too
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "tmp"),
        "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCALHOST_WARNING": "0",
    })
    return env


def run(env: dict[str, str], *args: str, cwd: Path = ANSIBLE,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_playbook_syntax_check(ansible_env: dict[str, str]) -> None:
    done = run(ansible_env, "ansible-playbook", "-i", str(INVENTORY), "--syntax-check",
               "site.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ansible_lint_production_profile(ansible_env: dict[str, str]) -> None:
    # .ansible-lint sets the production profile and offline mode; both are repeated here so
    # that the test means the same whatever the file says.
    done = run(ansible_env, "ansible-lint", "-c", ".ansible-lint", "--offline",
               "--profile", "production", "--nocolor", "site.yml", "roles", "inventory.example.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Profile 'production' was required, and it passed" in done.stdout + done.stderr


def role_options() -> dict[str, Any]:
    specs = load(ROLE / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert isinstance(specs, dict)
    return specs


def test_argument_specs_describe_every_default() -> None:
    defaults = load(ROLE / "defaults" / "main.yml")
    options = role_options()
    assert set(defaults) == set(options)
    for name, value in defaults.items():
        assert name.startswith(PREFIX) and not name.startswith(PREFIX + "_")
        if "default" in options[name]:
            assert options[name]["default"] == value, name


def test_the_role_lays_down_what_the_unit_expects() -> None:
    layout = load(ROLE / "vars" / "main.yml")
    unit = UNIT.read_text()
    settings = [line.partition("=") for line in unit.splitlines()
                if line and not line.startswith(("#", "["))]
    unit_settings: dict[str, list[str]] = {}
    for key, _, value in settings:
        unit_settings.setdefault(key, []).append(value)
    exe = f"{layout[PREFIX + '_venv']}/bin/inference-node-exporter"
    assert unit_settings["ExecStart"] == [
        f"{exe} --config.file={layout[PREFIX + '_config_file']} $ARGS"]
    assert unit_settings["User"] == [layout[PREFIX + "_user"]]
    assert unit_settings["Group"] == [layout[PREFIX + "_group"]]
    assert unit_settings["EnvironmentFile"] == [f"-{layout[PREFIX + '_env_file']}"]
    assert layout[PREFIX + "_unit_file"] == \
        f"/etc/systemd/system/{layout[PREFIX + '_name']}.service"
    # The default unit source, seen from the role's directory, is the repository's unit.
    default = load(ROLE / "defaults" / "main.yml")[PREFIX + "unit_src"]
    assert (ROLE / default.replace("{{ role_path }}/", "")).resolve() == UNIT
    source = load(ROLE / "defaults" / "main.yml")[PREFIX + "source_dir"]
    assert (ROLE / source.replace("{{ role_path }}/", "")).resolve() == ROOT


def example_hosts(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    done = run(env, "ansible-inventory", "-i", str(INVENTORY), "--list")
    assert done.returncode == 0, done.stdout + done.stderr
    inventory = json.loads(done.stdout)
    hostvars = inventory["_meta"]["hostvars"]
    return {h: hostvars.get(h, {}) for h in hosts_of(inventory, "gpu_nodes")}


def hosts_of(inventory: dict[str, Any], group: str) -> list[str]:
    entry = inventory.get(group, {})
    out = list(entry.get("hosts", []))
    for child in entry.get("children", []):
        out += hosts_of(inventory, child)
    return out


def test_the_example_inventory_sets_only_role_variables(ansible_env: dict[str, str]) -> None:
    hosts = example_hosts(ansible_env)
    assert len(hosts) >= 2
    options = role_options()
    for host, variables in hosts.items():
        unknown = {v for v in variables if v.startswith(PREFIX) and v not in options}
        assert not unknown, f"{host}: {sorted(unknown)} are not variables of the role"


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A role that is the real one but for its tasks: the same defaults, fixed layout,
    argument specs (checked when it starts) and templates, and tasks that count the node's
    GPUs as the real role does (its tasks/gpus.yml) and then only render the configuration
    and the environment file into ``out_dir``. Played against an inventory, it gives each
    host the variables it would get from the real role, with the same precedence."""
    roles = tmp_path_factory.mktemp("probe-roles")
    role = roles / "probe"
    (role / "meta").mkdir(parents=True)
    for part in ("defaults", "vars", "templates"):
        (role / part).symlink_to(ROLE / part, target_is_directory=True)
    (role / "meta" / "argument_specs.yml").symlink_to(ROLE / "meta" / "argument_specs.yml")
    (role / "tasks").mkdir()
    (role / "tasks" / "gpus.yml").symlink_to(ROLE / "tasks" / "gpus.yml")
    (role / "tasks" / "main.yml").write_text(yaml.safe_dump([
        {"name": "Count the GPUs", "ansible.builtin.import_tasks": "gpus.yml"},
        *({"name": f"Render {src}", "delegate_to": "localhost", "ansible.builtin.template": {
            "src": src, "dest": "{{ out_dir }}/{{ inventory_hostname }}." + out,
            "mode": "0600"}}
          for src, out in (("config.toml.j2", "toml"), ("environment.j2", "env")))]))
    return roles


def render(env: dict[str, str], probe: Path, out_dir: Path, inventory: str,
           variables: dict[str, Any] | None = None,
           fail: bool = False) -> subprocess.CompletedProcess[str]:
    """Play the probe role against every host of ``inventory``, writing HOST.toml and
    HOST.env into ``out_dir``; ``variables`` are given as extra variables. Each host's PCI
    devices are read from ``out_dir``/pci/HOST (none where it does not exist), and its
    current configuration is the HOST.toml of an earlier render into ``out_dir``."""
    playbook = out_dir / "render.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Render the role's templates", "hosts": "all", "connection": "local",
        "gather_facts": True, "gather_subset": ["!all"], "roles": ["probe"]}]))
    extra = out_dir / "variables.json"
    extra.write_text(json.dumps({
        PREFIX + "_pci_devices": f"{out_dir}/pci/{{{{ inventory_hostname }}}}",
        PREFIX + "_config_file": f"{out_dir}/{{{{ inventory_hostname }}}}.toml",
        PREFIX + "python": sys.executable,
        **(variables or {}), "out_dir": str(out_dir),
        "ansible_python_interpreter": sys.executable}))
    done = run({**env, "ANSIBLE_ROLES_PATH": str(probe)}, "ansible-playbook", "-i", inventory,
               "-e", f"@{extra}", str(playbook), cwd=out_dir)
    if not fail:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def config_check(path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_NODE_EXPORTER_")}
    return subprocess.run([sys.executable, "-m", "exporter", f"--config.file={path}",
                           "--config.check"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_every_example_host_gets_a_valid_config(ansible_env: dict[str, str], probe: Path,
                                                 tmp_path: Path) -> None:
    hosts = example_hosts(ansible_env)
    render(ansible_env, probe, tmp_path, str(INVENTORY))
    for host, variables in hosts.items():
        text = (tmp_path / f"{host}.toml").read_text()
        done = config_check(tmp_path / f"{host}.toml")
        assert done.returncode == 0, f"{host}:\n{text}\n{done.stderr}"
        config = tomllib.loads(text)
        endpoints = variables.get(PREFIX + "vllm_endpoints", ["http://127.0.0.1:8000/metrics"])
        assert config["vllm"]["endpoints"] == endpoints
        expected = variables.get(PREFIX + "gpu_expected_count", 0)
        assert config.get("gpu", {}).get("expected_count", 0) == expected
        for section, settings in variables.get(PREFIX + "config", {}).items():
            assert config[section].items() >= settings.items()


def test_the_templates_carry_awkward_values_intact(ansible_env: dict[str, str], probe: Path,
                                                   tmp_path: Path) -> None:
    variables = {
        PREFIX + "vllm_endpoints": [
            "http://127.0.0.1:8000",
            {"url": "http://127.0.0.1:8001/metrics", "name": 'odd "name" \\ é'},
        ],
        PREFIX + "collectors": {"vllm": True, "gpu": False, "dcgm": False, "host": True},
        PREFIX + "gpu_expected_count": 4,
        PREFIX + "dcgm_url": "http://127.0.0.1:9400/metrics",
        PREFIX + "web_config": {"http_server_config": {"headers": {"X-Frame-Options": "DENY"}}},
        PREFIX + "config": {"derive": {"windows": ["1m", "15m"], "quantiles": [0.5, 0.999]},
                            "poll": {"interval": "2s", "timeout": "1500ms"},
                            "vllm": {"max_engines_per_endpoint": 16}},
        PREFIX + "args": ["--log.format=json", '--vllm.endpoint=x="y"'],
        PREFIX + "environment": {"INFERENCE_NODE_EXPORTER_LOG_LEVEL": "debug",
                                 "OTHER": 'a "quoted" \\ value'},
    }
    render(ansible_env, probe, tmp_path, "node,", variables)
    rendered = (tmp_path / "node.toml").read_text()
    config = tomllib.loads(rendered)
    assert config == {
        "web": {"listen_address": "0.0.0.0:19400",
                "config_file": "/etc/inference-node-exporter/web-config.yml"},
        "vllm": {"endpoints": variables[PREFIX + "vllm_endpoints"],
                 "max_engines_per_endpoint": 16},
        "poll": {"interval": "2s", "timeout": "1500ms"},
        "collectors": variables[PREFIX + "collectors"],
        "log": {"level": "info"},
        "gpu": {"expected_count": 4},
        "dcgm": {"url": "http://127.0.0.1:9400/metrics"},
        "derive": {"windows": ["1m", "15m"], "quantiles": [0.5, 0.999]},
    }
    # The web config file is the role's to write; point the check at an empty stand-in.
    web = tmp_path / "web-config.yml"
    web.write_text("{}\n")
    checked = tmp_path / "checked.toml"
    checked.write_text(rendered.replace("/etc/inference-node-exporter/web-config.yml", str(web)))
    done = config_check(checked)
    assert done.returncode == 0, rendered + done.stderr
    # systemd reads the environment file as assignments with double-quoted values.
    lines = [line for line in (tmp_path / "node.env").read_text().splitlines()
             if line and not line.startswith("#")]
    parsed = dict(shlex.split(line)[0].split("=", 1) for line in lines)
    assert parsed == {"ARGS": '--log.format=json --vllm.endpoint=x="y"',
                      "INFERENCE_NODE_EXPORTER_LOG_LEVEL": "debug",
                      "OTHER": 'a "quoted" \\ value'}


def pci_device(root: Path, address: str, vendor: str, klass: str, driver: str = "") -> None:
    """A PCI function as sysfs shows it under /sys/bus/pci/devices."""
    device = root / address
    device.mkdir(parents=True)
    (device / "vendor").write_text(vendor + "\n")
    (device / "class").write_text(klass + "\n")
    if driver:
        (root.parent / "drivers" / driver).mkdir(parents=True, exist_ok=True)
        (device / "driver").symlink_to(root.parent / "drivers" / driver)


def test_the_role_counts_the_gpus_the_node_should_have(ansible_env: dict[str, str],
                                                        probe: Path, tmp_path: Path) -> None:
    """Without inference_node_exporter_gpu_expected_count, gpu.expected_count is the number
    of NVIDIA VGA and 3D controllers on the node's PCI bus (not its NVSwitches, audio
    functions, other vendors' VGA, or a GPU bound to vfio-pci); unset where there are none,
    no sysfs, or the count is turned off; the variable wins when set. A later run never
    lowers the count: a GPU that no longer enumerates keeps the alert firing."""
    hgx = tmp_path / "pci" / "hgx"
    for i in range(3):
        pci_device(hgx, f"0000:{0x18 + i:02x}:00.0", "0x10de", "0x030200", "nvidia")
    pci_device(hgx, "0000:2a:00.0", "0x10de", "0x030000", "nvidia")  # a GPU shown as VGA
    pci_device(hgx, "0000:2b:00.0", "0x10de", "0x030200", "vfio-pci")  # a VM's
    pci_device(hgx, "0000:05:00.0", "0x10de", "0x068000")  # NVSwitch
    pci_device(hgx, "0000:2a:00.1", "0x10de", "0x040300")  # HDMI audio
    pci_device(hgx, "0000:03:00.0", "0x1a03", "0x030000")  # the BMC's VGA
    pci_device(hgx, "0000:00:00.0", "0x8086", "0x060000")
    for host in ("explicit", "off"):
        shutil.copytree(hgx, tmp_path / "pci" / host, symlinks=True)
    pci_device(tmp_path / "pci" / "cpu-only", "0000:03:00.0", "0x1a03", "0x030000")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {
        "hgx": {}, "explicit": {PREFIX + "gpu_expected_count": 8},
        "off": {PREFIX + "gpu_expected_count_detect": False},
        "cpu-only": {}, "no-sysfs": {}}}}))

    def written() -> dict[str, int | None]:
        return {host: tomllib.loads((tmp_path / f"{host}.toml").read_text())
                .get("gpu", {}).get("expected_count")
                for host in ("hgx", "explicit", "off", "cpu-only", "no-sysfs")}

    render(ansible_env, probe, tmp_path, str(inventory))
    assert written() == {"hgx": 4, "explicit": 8, "off": None, "cpu-only": None,
                         "no-sysfs": None}
    for host in ("hgx", "explicit"):
        done = config_check(tmp_path / f"{host}.toml")
        assert done.returncode == 0, done.stderr
    # After a reboot, one GPU no longer enumerates; the next run keeps the count.
    shutil.rmtree(hgx / "0000:18:00.0")
    render(ansible_env, probe, tmp_path, str(inventory))
    assert written()["hgx"] == 4


def test_the_argument_specs_stop_a_bad_variable(ansible_env: dict[str, str], probe: Path,
                                                 tmp_path: Path) -> None:
    for name, value, message in [
            ("log_level", "verbose", "must be one of: debug, info, warning, error"),
            ("gpu_expected_count", "eight", "inference_node_exporter_gpu_expected_count"),
            ("install_from", "git", "must be one of: source, index, wheel")]:
        done = render(ansible_env, probe, tmp_path, "node,", {PREFIX + name: value}, fail=True)
        assert done.returncode != 0 and message in done.stdout, done.stdout + done.stderr
        assert not (tmp_path / "node.toml").exists()


def test_the_prometheus_play_writes_a_valid_targets_file(ansible_env: dict[str, str],
                                                          tmp_path: Path) -> None:
    """site.yml's second play renders the file_sd targets of the example inventory's GPU
    nodes; promtool checks it under FLEET.md's scrape job."""
    site = load(ANSIBLE / "site.yml")
    (play,) = [p for p in site if p["hosts"] == "prometheus"]
    (task,) = [t for t in play["tasks"] if "ansible.builtin.template" in t]
    targets = tmp_path / "targets" / "inference-node.yml"
    targets.parent.mkdir()
    playbook = tmp_path / "targets.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Render the targets file", "hosts": "prometheus", "connection": "local",
        "gather_facts": False, "vars": {"ansible_python_interpreter": sys.executable},
        "tasks": [{"name": "Render", "ansible.builtin.template": {
            **task["ansible.builtin.template"], "src": str(ANSIBLE / "templates" /
                                                          task["ansible.builtin.template"]["src"]),
            "dest": str(targets), "owner": None, "group": None}}]}]))
    done = run(ansible_env, "ansible-playbook", "-i", str(INVENTORY), str(playbook),
               cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    entries = yaml.safe_load(targets.read_text())
    hosts = example_hosts(ansible_env)
    assert sorted(t for e in entries for t in e["targets"]) == \
        sorted(f"{h}:19400" for h in hosts)
    assert {e["labels"].get("cluster") for e in entries} == \
        {v.get("cluster") for v in hosts.values()}
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": [{
        "job_name": "inference-node",
        "file_sd_configs": [{"files": [str(targets.parent / "*.yml")]}]}]}))
    checked = subprocess.run([promtool(), "check", "config", str(config)], capture_output=True,
                             text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_wheel_build_is_reproducible(ansible_env: dict[str, str], tmp_path: Path) -> None:
    """The role's controller-side build (tasks/build.yml) run for real, twice: the same
    bytes both times, so that an unchanged source tree copies and restarts nothing."""
    playbook = tmp_path / "build.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Build the wheel as the role does",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable},
        "tasks": [
            {"name": "Build", "ansible.builtin.include_role": {
                "name": "inference_node_exporter", "tasks_from": "build.yml"}},
            {"name": "Keep the wheel", "ansible.builtin.copy": {
                "src": "{{ inference_node_exporter__wheel_src }}",
                "dest": str(tmp_path) + "/{{ run }}.whl", "mode": "0600"}},
            {"name": "Remove the scratch directory", "ansible.builtin.file": {
                "path": "{{ inference_node_exporter__build.path }}", "state": "absent"}},
        ],
    }], sort_keys=False))
    digests = []
    for attempt in ("first", "second"):
        done = run(ansible_env, "ansible-playbook", "-i", "localhost,", str(playbook),
                   "-e", f"run={attempt}", cwd=tmp_path, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        digests.append(hashlib.sha256((tmp_path / f"{attempt}.whl").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    with zipfile.ZipFile(tmp_path / "first.whl") as wheel:
        names = wheel.namelist()
    assert "exporter/cli.py" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith(("build/", "tests/"))]
