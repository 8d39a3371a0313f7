"""Configuration: defaults, file, environment, flags, and clear errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import ENV_PREFIX, FLAGS, load, main, parser
from exporter.config import Config, ConfigError, format_duration, parse_duration


def cfg(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Config:
    return load(parser().parse_args(argv or []), env or {})


def test_no_file_no_flags_gives_one_local_vllm() -> None:
    c = cfg()
    assert [(e.url, e.name) for e in c.vllm_endpoints] == [
        ("http://127.0.0.1:8000/metrics", "127.0.0.1:8000")]
    assert c.listen_address == "0.0.0.0:19400"
    assert c.windows == (60.0, 300.0) and c.quantiles == (0.5, 0.95, 0.99)


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        '[web]\nlisten_address = "127.0.0.1:9999"\n'
        '[poll]\ninterval = "10s"\ntimeout = "2s"\n'
        '[derive]\nwindows = ["1m", "5m", "15m"]\n'
        '[vllm]\nendpoints = [{url = "http://10.0.0.1:8000", name = "a"}, "http://h:8001/m"]\n'
    )
    c = cfg(["--config.file", str(f)])
    assert c.poll_interval == 10 and c.windows == (60, 300, 900)
    assert [e.name for e in c.vllm_endpoints] == ["a", "h:8001/m"]
    c = cfg(["--config.file", str(f)], {ENV_PREFIX + "POLL_INTERVAL": "20s"})
    assert c.poll_interval == 20
    c = cfg(["--config.file", str(f), "--poll.interval", "30s"],
            {ENV_PREFIX + "POLL_INTERVAL": "20s"})
    assert c.poll_interval == 30
    assert "flags" in c.source and str(f) in c.source


def test_every_flag_has_an_environment_twin_and_help() -> None:
    text = parser().format_help()
    for f in FLAGS:
        assert f.flag in text and f.env in text
        value = {"vllm.endpoints": "http://x:1", "derive.windows": "1m",
                 "derive.quantiles": "0.5", "log.level": "debug", "log.format": "json",
                 "web.listen_address": ":1234", "poll.max_response_bytes": "1000",
                 "vllm.max_engines_per_endpoint": "3", "poll.interval": "5s",
                 "poll.timeout": "1s", "poll.stale_after": "1m",
                 "poll.max_backoff": "1m", "path.procfs": "/proc", "path.sysfs": "/sys",
                 "gpu.expected_count": "8", "dcgm.url": "http://127.0.0.1:9400/metrics",
                 "web.config_file": "",  # empty: none (tests/test_webconfig.py reads files)
                 }[f.setting]
        cfg(env={f.env: value})  # accepted through the environment


def test_repeated_endpoints_and_named_endpoints() -> None:
    c = cfg(["--vllm.endpoint", "main=http://127.0.0.1:8000", "--vllm.endpoint",
             "http://127.0.0.1:8001/"])
    assert [(e.name, e.url) for e in c.vllm_endpoints] == [
        ("main", "http://127.0.0.1:8000/metrics"), ("127.0.0.1:8001", "http://127.0.0.1:8001/metrics")]
    c = cfg(env={ENV_PREFIX + "VLLM_ENDPOINT": "http://a:1,http://b:2"})
    assert [e.name for e in c.vllm_endpoints] == ["a:1", "b:2"]


def test_collector_switches() -> None:
    assert cfg(["--no-collector.vllm"]).collectors == {"gpu", "dcgm", "host"}
    assert cfg(env={ENV_PREFIX + "COLLECTOR_HOST": "false"}).collectors == {
        "vllm", "gpu", "dcgm"}
    off = ["--no-collector.host", "--no-collector.gpu", "--no-collector.dcgm"]
    with pytest.raises(ConfigError, match="every collector is disabled"):
        cfg(["--no-collector.vllm", *off])
    with pytest.raises(ConfigError, match="every collector is disabled"):
        cfg(off, {ENV_PREFIX + "COLLECTOR_VLLM": "false"})
    assert cfg(["--gpu.expected-count", "8"]).gpu_expected_count == 8
    with pytest.raises(ConfigError, match="is not a directory"):
        cfg(["--path.procfs", "/nonexistent"])


@pytest.mark.parametrize(
    ("argv", "env", "file", "message"),
    [
        ([], {}, '[poll]\nintervall = "5s"\n', "unknown setting 'poll.intervall'"),
        ([], {}, "[pol]\n", "unknown section [pol]"),
        ([], {}, "[poll\n", "not valid TOML"),
        (["--vllm.endpoint", "ftp://x"], {}, None, "invalid URL 'ftp://x'"),
        (["--vllm.endpoint", "http://x:99999"], {}, None, "invalid port"),
        (["--poll.interval=-5s"], {}, None, "invalid duration '-5s'"),
        (["--poll.interval", "0"], {}, None, "must be a positive duration"),
        (["--poll.timeout", "10s"], {}, None, "must not exceed the poll interval"),
        (["--derive.windows", "5s"], {}, None, "shorter than two poll intervals"),
        (["--derive.quantiles", "1.5"], {}, None, "strictly between 0 and 1"),
        (["--web.listen-address", "nope"], {}, None, "expected HOST:PORT"),
        (["--log.level", "loud"], {}, None, "expected one of debug"),
        ([], {ENV_PREFIX + "POLL_INTERVALL": "5s"}, None, "unknown variable"),
        ([], {}, '[vllm]\nendpoints = [{url = "http://a:1", nam = "x"}]\n', "unknown key 'nam'"),
        (["--vllm.endpoint", "http://a:1", "--vllm.endpoint", "http://a:1"], {}, None,
         "share the name"),
    ],
)
def test_invalid_input_is_one_clear_message(tmp_path: Path, argv: list[str],
                                            env: dict[str, str], file: str | None,
                                            message: str) -> None:
    if file is not None:
        path = tmp_path / "c.toml"
        path.write_text(file)
        argv = [*argv, "--config.file", str(path)]
    with pytest.raises(ConfigError) as info:
        cfg(argv, env)
    assert message in str(info.value)


def test_unreadable_file_exits_2_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(missing)],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "cannot read it" in lines[0]


def test_config_check_prints_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config.check", "--vllm.endpoint", "http://u:secret@h:1"], {}) == 0
    out = capsys.readouterr().out
    assert "configuration OK" in out and "http://u:***@h:1/metrics" in out
    assert "secret" not in out


def test_bad_value_via_main_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--poll.interval", "soon"], {}) == 2
    assert "invalid duration 'soon'" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "seconds", "canonical"),
                         [("500ms", 0.5, "500ms"), ("5s", 5, "5s"), ("1m30s", 90, "1m30s"),
                          ("1h", 3600, "1h"), (2, 2, "2s"), ("300", 300, "5m")])
def test_durations(text: object, seconds: float, canonical: str) -> None:
    assert parse_duration(text, "x") == seconds
    assert format_duration(seconds) == canonical
