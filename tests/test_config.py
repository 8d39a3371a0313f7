"""Configuration: defaults, file, environment, flags, and clear errors with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter import cli, engines
from exporter.cli import ENV_PREFIX, flags, load_config, main, parser
from exporter.config import Config
from exporter.settings import ConfigError, format_duration, parse_duration


def cfg(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Config:
    return load_config(parser().parse_args(argv or []), env or {})


def test_no_file_no_flags_gives_one_local_vllm() -> None:
    c = cfg()
    assert [(e.url, e.name) for e in c.engines["vllm"].endpoints] == [
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
    assert [e.name for e in c.engines["vllm"].endpoints] == ["a", "h:8001/m"]
    c = cfg(["--config.file", str(f)], {ENV_PREFIX + "POLL_INTERVAL": "20s"})
    assert c.poll_interval == 20
    c = cfg(["--config.file", str(f), "--poll.interval", "30s"],
            {ENV_PREFIX + "POLL_INTERVAL": "20s"})
    assert c.poll_interval == 30
    assert "flags" in c.source and str(f) in c.source


def test_every_flag_has_an_environment_twin_and_help(tmp_path: Path) -> None:
    text = parser().format_help()
    # Per setting: a value other than the default given through the environment, where the
    # configuration holds it, and what it must hold then.
    table: dict[str, tuple[str, Callable[[Config], object], object]] = {
        setting: row for a in engines.adapters() for setting, row in (
            (f"{a.kind}.endpoints", (
                "http://x:1", lambda c, k=a.kind: [e.url for e in c.engines[k].endpoints],
                [f"http://x:1{a.metrics_path}"])),
            (f"{a.kind}.max_engines_per_endpoint", (
                "3", lambda c, k=a.kind: c.engines[k].max_engines_per_endpoint, 3)))}
    table |= {
        "derive.windows": ("2m,1m", lambda c: c.windows, (60.0, 120.0)),
        "derive.quantiles": ("0.9", lambda c: c.quantiles, (0.9,)),
        "log.level": ("DEBUG", lambda c: c.log_level, "debug"),
        "log.format": ("json", lambda c: c.log_format, "json"),
        "web.listen_address": (":1234", lambda c: c.listen_address, ":1234"),
        # tests/test_webconfig.py reads such files; here it is only a path.
        "web.config_file": (str(tmp_path / "web.yml"), lambda c: c.web_config_file,
                            str(tmp_path / "web.yml")),
        "poll.max_response_bytes": ("1000", lambda c: c.max_response_bytes, 1000),
        "poll.interval": ("4s", lambda c: c.poll_interval, 4.0),
        "poll.timeout": ("1500ms", lambda c: c.poll_timeout, 1.5),
        "poll.stale_after": ("2m", lambda c: c.stale_after, 120.0),
        "poll.max_backoff": ("20s", lambda c: c.max_backoff, 20.0),
        "path.procfs": (str(tmp_path), lambda c: c.procfs, str(tmp_path)),
        "path.sysfs": (str(tmp_path), lambda c: c.sysfs, str(tmp_path)),
        "gpu.expected_count": ("8", lambda c: c.gpu_expected_count, 8),
        "dcgm.url": ("http://127.0.0.1:9400", lambda c: c.dcgm_url,
                     "http://127.0.0.1:9400/metrics"),
        "engines.discover": ("false", lambda c: c.discover, False),
        "engines.discover_interval": ("1m", lambda c: c.discover_interval, 60.0),
        "engines.max_discovered": ("4", lambda c: c.max_discovered, 4),
        "cost.gpu_hourly_price": ("2.49", lambda c: c.pricing.gpu_hourly_price, 2.49),
        "cost.currency": ("EUR", lambda c: c.pricing.currency, "EUR"),
        # The default vLLM endpoint's name.
        "canary.endpoints": ("127.0.0.1:8000", lambda c: [t.endpoint for t in c.canary_targets],
                             ["127.0.0.1:8000"]),
        "canary.interval": ("20s", lambda c: c.canary_interval, 20.0),
        "canary.timeout": ("4s", lambda c: c.canary_timeout, 4.0),
        "canary.prompt_tokens": ("8", lambda c: c.canary_prompt_tokens, 8),
        "canary.max_tokens": ("4", lambda c: c.canary_max_tokens, 4),
    }
    assert {f.setting for f in flags()} == set(table)
    defaults = cfg()
    for f in flags():
        assert f.flag in text and f.env in text
        value, read, expected = table[f.setting]
        assert read(defaults) != expected, f.setting  # else the test could not tell
        c = cfg(env={f.env: value})
        assert read(c) == expected, f.setting
        assert c.source == "defaults + environment"
        # The twins agree (a switch is written --x or --no-x).
        args = [f.flag, value] if not f.switch else \
            [f.flag if value == "true" else "--no-" + f.flag.removeprefix("--")]
        assert read(cfg(args)) == expected, f.flag
    # Empty means no web configuration file.
    assert cfg(env={ENV_PREFIX + "WEB_CONFIG_FILE": ""}).web_config_file is None


def test_repeated_endpoints_and_named_endpoints() -> None:
    c = cfg(["--vllm.endpoint", "main=http://127.0.0.1:8000", "--vllm.endpoint",
             "http://127.0.0.1:8001/"])
    assert [(e.name, e.url) for e in c.engines["vllm"].endpoints] == [
        ("main", "http://127.0.0.1:8000/metrics"), ("127.0.0.1:8001", "http://127.0.0.1:8001/metrics")]
    c = cfg(env={ENV_PREFIX + "VLLM_ENDPOINT": "http://a:1,http://b:2"})
    assert [e.name for e in c.engines["vllm"].endpoints] == ["a:1", "b:2"]


def test_collector_switches() -> None:
    kinds = set(engines.kinds())
    assert cfg(["--no-collector.vllm"]).collectors == {"gpu", "dcgm", "host"} | kinds - {"vllm"}
    assert cfg(env={ENV_PREFIX + "COLLECTOR_HOST": "false"}).collectors == {
        "gpu", "dcgm"} | kinds
    off = ["--no-collector.host", "--no-collector.gpu", "--no-collector.dcgm",
           *(f"--no-collector.{k}" for k in kinds - {"vllm"})]
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


def run_main(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, with a deadline (a config that blocks start-up fails the test)."""
    return subprocess.run([sys.executable, "-m", "exporter", *argv], capture_output=True,
                          text=True, timeout=20, env=env)


@pytest.mark.parametrize(
    ("argv", "file", "message"),
    [
        ([], b'[poll]\ninterval = "5s\xff"\n', "not valid TOML"),
        ([], b"[gpu]\nexpected_count = " + b"9" * 5000 + b"\n", "not valid TOML"),
        ([], b"[poll]\nx = " + b"[" * 5000 + b"]" * 5000 + b"\n", "not valid TOML"),
        (["--vllm.endpoint", "http://[::1"], None, "Invalid IPv6 URL"),
        (["--dcgm.url", "http://[::1/metrics"], None, "Invalid IPv6 URL"),
        (["--poll.stale-after", "2562047788015216h"], None, "invalid duration"),
        (["--poll.stale-after", "1e30"], None, "must be at most 8760h"),
        ([], b"[poll]\nstale_after = " + b"9" * 400 + b"\n", "must be at most 8760h"),
        (["--vllm.max-engines-per-endpoint", "9" * 5000], None, "must be at most 10000"),
        (["--vllm.endpoint", "http://a b:8000"], None, "whitespace"),
    ],
)
def test_bad_input_at_start_is_one_line_and_exit_2(tmp_path: Path, argv: list[str],
                                                   file: bytes | None, message: str) -> None:
    if file is not None:
        (tmp_path / "c.toml").write_bytes(file)
        argv = [*argv, "--config.file", str(tmp_path / "c.toml")]
    result = run_main(*argv)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert lines[0].startswith("inference-node-exporter: configuration error: ")


def test_a_fifo_or_a_directory_as_config_file_is_refused_without_blocking(tmp_path: Path
                                                                         ) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (tmp_path, "a directory")):
        result = run_main("--config.file", str(path))
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [
            f"inference-node-exporter: configuration error: config file {path}: cannot read"
            f" it: not a regular file ({kind})"]


def test_a_config_file_over_1_mib_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text("# padding\n" * 110_000)
    with pytest.raises(ConfigError, match=r"cannot read it: too large \(1100000 bytes"):
        cfg(["--config.file", str(path)])


def test_an_unexpected_error_while_loading_is_one_line_and_exit_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*_: object) -> Config:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "load", broken)
    assert main([], {}) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["inference-node-exporter: configuration error: unexpected"
                                " RuntimeError while loading it: boom\\nsecond line"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--poll.interval", "2h", "--poll.stale-after", "3h"],
         "poll.interval: must be at most 1h"),
        (["--poll.max-backoff", "9000h"], "poll.max_backoff: must be at most 8760h"),
        (["--poll.max-backoff", str(366 * 86400)], "must be at most 8760h (365 days)"),
        (["--poll.timeout", "0.0001"], "must be at least 1ms"),
        (["--derive.windows", "1m,25h"], "derive.windows: must be at most 24h"),
        (["--derive.windows", "3h"], "window 3h spans more than 2000 poll intervals (2h46m40s)"),
        (["--poll.max-response-bytes", str((1 << 30) + 1)], "must be at most 1073741824"),
        (["--vllm.max-engines-per-endpoint", "10001"], "must be at most 10000"),
        (["--gpu.expected-count", "1025"], "must be at most 1024"),
        (["--gpu.expected-count", "99999999999999999999999"], "must be at most 1024"),
        (["--poll.max-backoff", "1m"], "poll max_backoff (1m) must be shorter than poll"
         " stale_after (1m)"),
        (["--poll.stale-after", "20s"], "poll max_backoff (30s) must be shorter than poll"
         " stale_after (20s)"),
    ],
)
def test_bounds(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg(argv)
    assert message in str(info.value)


def test_bounds_themselves_are_accepted() -> None:
    c = cfg(["--poll.interval", "1h", "--poll.stale-after", "8760h", "--poll.max-backoff",
             "8759h", "--derive.windows", "2h,24h", "--poll.max-response-bytes",
             str(1 << 30), "--vllm.max-engines-per-endpoint", "10000",
             "--gpu.expected-count", "1024"])
    assert (c.poll_interval, c.stale_after, c.windows) == (3600, 365 * 86400, (7200, 86400))
    assert (c.max_response_bytes, c.engines["vllm"].max_engines_per_endpoint,
            c.gpu_expected_count) == (1 << 30, 10000, 1024)
    assert cfg(["--poll.interval", "200ms", "--poll.timeout", "200ms",
                "--derive.windows", "400s"]).windows == (400,)


@pytest.mark.parametrize("url", [
    "http://a b:8000", "http://h:8000/a\nb", "http://h:8000/\tx", "http://h\x00:1",
    " http://h:1", "http://[::1", "http://[::1]x:1", "http://[1.2.3.4]:1", "http://::1:80",
    "http://999.0.0.1:1", "http://-h:1", "http://h..x:1", "http://h:0", "http://h:",
    "http://h:65536", "http://h:1:2", "http://h:+1", "http://hé:1", "http://" + "a" * 64,
    "ftp://h:1", "http:///metrics", "h:8000",
])
def test_invalid_urls_are_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg(["--vllm.endpoint", url])
    assert str(info.value).startswith("flags: vllm.endpoints[0]: invalid ")
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize(("url", "name"), [
    ("http://[::1]:8000", "::1:8000"), ("https://10.0.0.1", "10.0.0.1"),
    ("http://vllm-0.vllm_svc.ns.svc.cluster.local.:8000/m", "vllm-0.vllm_svc.ns.svc.cluster"
     ".local.:8000/m"), ("http://u:p%20w@H:1", "h:1"),
])
def test_valid_urls_are_kept(url: str, name: str) -> None:
    assert [e.name for e in cfg(["--vllm.endpoint", url]).engines["vllm"].endpoints] == [name]
