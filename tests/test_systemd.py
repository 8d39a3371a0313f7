"""The systemd unit: `systemd-analyze verify` clean, `systemd-analyze security` exposure at most
2.0, the settings the daemon depends on, and the daemon working under W^X as the unit sets it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.nvml_sim import Scenario, build, h100
from tests.nvml_sim import env as nvml_env
from tests.support.harness import ROOT, free_port, parse_series, pick, wait_for
from tests.support.promtool import required

UNIT = ROOT / "systemd" / "inference-node-exporter.service"
EXEC = "/opt/inference-node-exporter/venv/bin/inference-node-exporter"
MAX_EXPOSURE = 2.0



def settings(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit (sections merged), values in order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([required("systemd-analyze", "systemd"), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_unit_verifies_clean(tmp_path: Path) -> None:
    # verify checks that the commands exist: point them at a stand-in with the same role.
    binary = tmp_path / "bin" / "inference-node-exporter"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(EXEC) == 2  # ExecStart and the ExecReload check
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(EXEC, str(binary)))
    result = analyze("verify", "--man=no", str(unit))
    assert result.returncode == 0 and not result.stdout and not result.stderr, \
        result.stdout + result.stderr


def test_unit_security_exposure_is_at_most_2() -> None:
    result = analyze("security", "--offline=yes", str(UNIT))
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"Overall exposure level for inference-node-exporter\.service:"
                      r" (\d+\.\d+)", result.stdout)
    assert found, result.stdout
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_unit_keeps_what_the_daemon_needs() -> None:
    s = settings(UNIT.read_text())
    one = {key: values[-1] for key, values in s.items()}
    # Notifications and the watchdog; no restart loop on a bad config (exit code 2).
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["WatchdogSec"] and one["Restart"] == "on-failure"
    assert one["RestartPreventExitStatus"] == "2"
    assert one["StartLimitIntervalSec"] and one["StartLimitBurst"]
    # Flags from /etc/default, a fixed config path, SIGHUP for reload.
    assert one["EnvironmentFile"] == "-/etc/default/inference-node-exporter"
    assert s["ExecStart"] == [f"{EXEC} --config.file=/etc/inference-node-exporter/config.toml"
                              " $ARGS"]
    assert s["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert one["User"] == one["Group"] == "inference-node-exporter"
    # Other users' processes must stay visible (engine processes are found through /proc),
    # and so must /proc/stat, /proc/meminfo and /proc/pressure (the host collector).
    assert one["ProtectProc"] == "default" and one["ProcSubset"] == "all"
    # The GPUs through the device cgroup, not PrivateDevices (which would hide them).
    assert one["DevicePolicy"] == "closed" and one.get("PrivateDevices", "no") == "no"
    assert "char-nvidia-frontend rw" in s["DeviceAllow"]
    assert one["MemoryDenyWriteExecute"] == "yes" and one["CapabilityBoundingSet"] == ""
    # A file limit set on purpose: the HTTP connection cap is this less 128 (see the unit).
    assert int(one["LimitNOFILE"]) >= 4096
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6",
                                                           "AF_NETLINK"}


_MDWE = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    pass
else:
    sys.exit(78)
if len(sys.argv) > 1:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""
"""Deny writable-and-executable memory to this process and what it execs (Linux 6.3+,
what MemoryDenyWriteExecute=yes does), check that it holds, then exec the arguments."""


def test_daemon_with_nvml_runs_under_memory_deny_write_execute(tmp_path: Path) -> None:
    probe = subprocess.run([sys.executable, "-c", _MDWE], timeout=60, check=False)
    if probe.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert probe.returncode == 0, "writable and executable memory still allowed under MDWE"
    lib_dir = build(tmp_path / "nvml")
    gpus = Scenario(gpus=[h100(0), h100(1)]).write(tmp_path / "gpus.txt")
    port = free_port()
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _MDWE, "-m", "exporter", "--web.listen-address",
             f"127.0.0.1:{port}", "--no-collector.vllm", "--no-collector.dcgm",
             "--poll.interval", "200ms", "--poll.timeout", "200ms"],
            cwd=ROOT, env=nvml_env(lib_dir, gpus), stdout=out, stderr=subprocess.STDOUT)
    try:
        def gpus_seen() -> bool:
            assert proc.poll() is None, log.read_text()
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            return pick(parse_series(text), "inference_node_gpus") == [2.0]

        # pynvml loaded NVML through ctypes (whose import makes a libffi closure) and polled.
        wait_for("the gpu collector to read both simulated GPUs", gpus_seen, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
