"""Configuration: defaults, then the TOML file, then environment variables, then flags.

Every setting is validated at load time; any problem raises :class:`ConfigError` with one
message that names the setting and where it came from.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from exporter.webconfig import WebConfig

__all__ = [
    "COLLECTORS", "Config", "ConfigError", "Endpoint", "format_duration", "parse_duration",
]

COLLECTORS = ("vllm", "gpu", "dcgm", "host")
DEFAULT_PORT = 19400
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_NAMED_URL_RE = re.compile(r"([A-Za-z0-9_.:/-]+)=(https?://.*)")
_LEVELS = ("debug", "info", "warning", "error")
_FORMATS = ("auto", "json", "logfmt")


class ConfigError(ValueError):
    """The configuration is invalid; the message says what and where."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One engine metrics endpoint to poll."""

    url: str
    name: str


@dataclass(frozen=True, slots=True)
class Config:
    """The daemon's settings, all validated."""

    listen_address: str = f"0.0.0.0:{DEFAULT_PORT}"
    poll_interval: float = 5.0
    poll_timeout: float = 3.0
    stale_after: float = 60.0
    max_backoff: float = 30.0
    max_response_bytes: int = 16 * 1024 * 1024
    windows: tuple[float, ...] = (60.0, 300.0)
    quantiles: tuple[float, ...] = (0.5, 0.95, 0.99)
    collectors: frozenset[str] = frozenset(COLLECTORS)
    vllm_endpoints: tuple[Endpoint, ...] = field(
        default_factory=lambda: (endpoint("http://127.0.0.1:8000"),)
    )
    max_engines_per_endpoint: int = 64
    log_level: str = "info"
    log_format: str = "auto"
    gpu_expected_count: int | None = None
    dcgm_url: str | None = None
    procfs: str = "/proc"
    sysfs: str = "/sys"
    web_config_file: str | None = None
    web_config: WebConfig | None = field(default=None, compare=False, repr=False)
    """The web config file, read and checked (TLS, basic auth), once every origin is applied."""
    source: str = "defaults"
    """Where the settings came from, for logs."""

    @property
    def host_port(self) -> tuple[str, int]:
        """The listen address split for ``bind()``."""
        return split_address(self.listen_address)


def parse_duration(value: object, what: str) -> float:
    """Seconds from ``"500ms"``, ``"5s"``, ``"1m30s"``, ``"1h"`` or a plain number."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a duration such as '5s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for m in _DURATION_RE.finditer(text):
                if m.start() != pos:
                    break
                n = float(m.group(1))
                seconds += n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
                pos = m.end()
            if pos != len(text) or not text:
                raise ConfigError(
                    f"{what}: invalid duration {value!r} (use e.g. '500ms', '5s', '1m30s')"
                ) from None
    else:
        raise ConfigError(f"{what}: expected a duration such as '5s', got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{what}: must be a positive duration, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest Prometheus-style spelling: 60 -> '1m', 90 -> '1m30s', 0.5 -> '500ms'."""
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    out = ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            out += f"{s // size}{unit}"
            s %= size
    return out or "0s"


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too; empty host means all interfaces) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen address {address!r}: expected HOST:PORT, e.g. ':{DEFAULT_PORT}'")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def endpoint(url: str, name: str | None = None, what: str = "vLLM endpoint") -> Endpoint:
    """Validate an endpoint URL; a URL without a path gets ``/metrics``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what}: invalid URL {url!r} (expected http://HOST:PORT[/PATH])")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{what}: invalid port in URL {url!r}") from None
    path = parts.path if parts.path not in ("", "/") else "/metrics"
    normal = urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
    if name is None:
        name = parts.hostname if port is None else f"{parts.hostname}:{port}"
        if path != "/metrics":
            name += path
    if not name or len(name) > 128:
        raise ConfigError(f"{what}: name must be 1 to 128 characters, got {name!r}")
    return Endpoint(normal, name)


# The file's layout: section -> key -> setter that checks and converts the value.
_FILE_KEYS: dict[str, tuple[str, ...]] = {
    "web": ("listen_address", "config_file"),
    "poll": ("interval", "timeout", "stale_after", "max_backoff", "max_response_bytes"),
    "derive": ("windows", "quantiles"),
    "log": ("level", "format"),
    "collectors": COLLECTORS,
    "vllm": ("endpoints", "max_engines_per_endpoint"),
    "path": ("procfs", "sysfs"),
    "gpu": ("expected_count",),
    "dcgm": ("url",),
}


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{what}: expected a positive integer, got {value!r}")
    return value


def _choice(value: object, what: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ConfigError(f"{what}: expected one of {', '.join(choices)}, got {value!r}")
    return value.lower()


def _bool(value: object, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false",
                                                    "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"{what}: expected true or false, got {value!r}")


def _list(value: object, what: str) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    raise ConfigError(f"{what}: expected a list, got {value!r}")


def apply(cfg: Config, settings: Mapping[str, object], origin: str) -> Config:
    """Apply flat settings (``poll.interval`` style keys) from one origin onto ``cfg``."""
    changes: dict[str, Any] = {}
    collectors = set(cfg.collectors)
    for key, value in settings.items():
        what = f"{origin}: {key}"
        section, _, name = key.partition(".")
        if name not in _FILE_KEYS.get(section, ()):
            raise ConfigError(f"{origin}: unknown setting {key!r}")
        if key == "web.listen_address":
            if not isinstance(value, str):
                raise ConfigError(f"{what}: expected HOST:PORT, got {value!r}")
            try:
                split_address(value)
            except ConfigError as exc:
                raise ConfigError(f"{what}: {exc}") from None
            changes["listen_address"] = value
        elif key == "web.config_file":
            if not isinstance(value, str):
                raise ConfigError(f"{what}: expected a file path, got {value!r}")
            changes["web_config_file"] = value or None  # empty: none, plain HTTP
        elif key in ("poll.interval", "poll.timeout", "poll.stale_after", "poll.max_backoff"):
            field_name = {"interval": "poll_interval", "timeout": "poll_timeout"}.get(name, name)
            changes[field_name] = parse_duration(value, what)
        elif key == "poll.max_response_bytes":
            changes["max_response_bytes"] = _positive_int(value, what)
        elif key == "derive.windows":
            windows = [parse_duration(v, what) for v in _list(value, what)]
            if not windows:
                raise ConfigError(f"{what}: at least one window is needed")
            changes["windows"] = tuple(sorted(set(windows)))
        elif key == "derive.quantiles":
            qs = []
            for v in _list(value, what):
                try:
                    q = float(v)
                except (TypeError, ValueError):
                    raise ConfigError(f"{what}: invalid quantile {v!r}") from None
                if not 0 < q < 1:
                    raise ConfigError(f"{what}: a quantile must lie strictly between 0 and 1,"
                                      f" got {v!r}")
                qs.append(q)
            if not qs:
                raise ConfigError(f"{what}: at least one quantile is needed")
            changes["quantiles"] = tuple(sorted(set(qs)))
        elif key == "log.level":
            changes["log_level"] = _choice(value, what, _LEVELS)
        elif key == "log.format":
            changes["log_format"] = _choice(value, what, _FORMATS)
        elif section == "collectors":
            if _bool(value, what):
                collectors.add(name)
            else:
                collectors.discard(name)
        elif key == "vllm.endpoints":
            changes["vllm_endpoints"] = _endpoints(value, what)
        elif key == "vllm.max_engines_per_endpoint":
            changes["max_engines_per_endpoint"] = _positive_int(value, what)
        elif key == "dcgm.url":
            if not isinstance(value, str):
                raise ConfigError(f"{what}: expected a URL, got {value!r}")
            changes["dcgm_url"] = endpoint(value, "dcgm-exporter", what=what).url
        elif key == "gpu.expected_count":
            changes["gpu_expected_count"] = _positive_int(value, what)
        elif section == "path":
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{what}: expected a directory path, got {value!r}")
            changes[name] = value
    changes["collectors"] = frozenset(collectors)
    return replace(cfg, **changes)


def _endpoints(value: object, what: str) -> tuple[Endpoint, ...]:
    result = []
    for i, item in enumerate(_list(value, what)):
        if isinstance(item, str):
            named = _NAMED_URL_RE.fullmatch(item.strip())
            if named:
                result.append(endpoint(named.group(2), named.group(1), what=f"{what}[{i}]"))
            else:
                result.append(endpoint(item, what=f"{what}[{i}]"))
        elif isinstance(item, dict):
            unknown = set(item) - {"url", "name"}
            if unknown:
                raise ConfigError(f"{what}[{i}]: unknown key {sorted(unknown)[0]!r}")
            if not isinstance(item.get("url"), str):
                raise ConfigError(f"{what}[{i}]: 'url' is required")
            name = item.get("name")
            if name is not None and not isinstance(name, str):
                raise ConfigError(f"{what}[{i}]: 'name' must be a string")
            result.append(endpoint(item["url"], name, what=f"{what}[{i}]"))
        else:
            raise ConfigError(f"{what}[{i}]: expected a URL or a table with url and name")
    names = [e.name for e in result]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"{what}: two endpoints share the name {n!r}; give each a name")
    return tuple(result)


def read_file(path: Path) -> dict[str, object]:
    """Flatten a TOML config file into ``section.key`` settings."""
    origin = f"config file {path}"
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    flat: dict[str, object] = {}
    for section, body in data.items():
        if section not in _FILE_KEYS:
            raise ConfigError(f"{origin}: unknown section [{section}]")
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        for key, value in body.items():
            flat[f"{section}.{key}"] = value
    return flat


def check(cfg: Config) -> Config:
    """Cross-setting checks, once every origin has been applied."""
    if cfg.poll_timeout > cfg.poll_interval:
        raise ConfigError(
            f"poll timeout ({format_duration(cfg.poll_timeout)}) must not exceed the poll"
            f" interval ({format_duration(cfg.poll_interval)})"
        )
    for w in cfg.windows:
        if w < 2 * cfg.poll_interval:
            raise ConfigError(
                f"window {format_duration(w)} is shorter than two poll intervals"
                f" ({format_duration(2 * cfg.poll_interval)})"
            )
    if cfg.stale_after < cfg.poll_interval:
        raise ConfigError("poll stale_after must be at least one poll interval")
    if not cfg.collectors:
        raise ConfigError("every collector is disabled; enable at least one")
    if "host" in cfg.collectors:
        for what, path in (("procfs", cfg.procfs), ("sysfs", cfg.sysfs)):
            if not Path(path).is_dir():
                raise ConfigError(f"path.{what}: {path!r} is not a directory")
    if cfg.web_config_file:
        from exporter import webconfig  # it builds on this module

        cfg = replace(cfg, web_config=webconfig.load(Path(cfg.web_config_file)))
    return cfg
