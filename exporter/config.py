"""Configuration: defaults, then the TOML file, then environment variables, then flags.

Every setting is validated at load time; any problem raises :class:`ConfigError` with one
message that names the setting and where it came from.
"""

from __future__ import annotations

import ipaddress
import math
import os.path
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from exporter.files import FileError, read_regular

if TYPE_CHECKING:
    from exporter.webconfig import WebConfig

__all__ = ["COLLECTORS", "Config", "ConfigError", "Endpoint", "endpoint", "format_duration",
           "parse_duration", "show"]

COLLECTORS = ("vllm", "gpu", "dcgm", "host")
DEFAULT_PORT = 19400
_DURATION_RE = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,12})?)(ms|s|m|h)")
_NAMED_URL_RE = re.compile(r"([A-Za-z0-9_.:/-]+)=(https?://.*)", re.DOTALL)
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_AUTHORITY_RE = re.compile(r"(?:.*@)?(\[[^]]*\]|[^:[\]]*)(?::([^:]*))?")
_LEVELS, _FORMATS = ("debug", "info", "warning", "error"), ("auto", "json", "logfmt")
_TRUE = ("1", "true", "yes", "on")

# Bounds: far above any sensible setting, low enough that nothing downstream overflows
# (threading's TIMEOUT_MAX is about 292 years) or holds unbounded memory (a window holds one
# reading per poll per engine, hence at most MAX_WINDOW_POLLS intervals).
MAX_DURATION, MAX_INTERVAL, MAX_WINDOW, MAX_WINDOW_POLLS = 365 * 86400.0, 3600.0, 86400.0, 2000
MAX_RESPONSE_BYTES, MAX_ENGINES, MAX_GPUS, CONFIG_FILE_LIMIT = 1 << 30, 10_000, 1024, 1 << 20


class ConfigError(ValueError):
    """The configuration is invalid; the message (always one line) says what and where."""

    def __init__(self, message: str) -> None:
        super().__init__("".join(c if c.isprintable() else ascii(c)[1:-1] for c in message))


def show(value: object, limit: int = 80) -> str:
    """``repr(value)`` for a message: never raises, never longer than ``limit``."""
    try:
        text = repr(value)
    except Exception:  # a huge int (str conversion limit), a deep nesting...
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


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


def parse_duration(value: object, what: str, most: float = MAX_DURATION) -> float:
    """Seconds from ``"500ms"``, ``"5s"``, ``"1m30s"``, ``"1h"`` or a plain number, from 1ms
    to ``most`` (365 days unless told); else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{what}: expected a duration such as '5s', got {show(value)}")
    try:
        seconds = float(value.strip() if isinstance(value, str) else value)
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    except ValueError:
        assert isinstance(value, str)
        text, pos, seconds = value.strip(), 0, 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            n = float(m.group(1))
            seconds += n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise ConfigError(
                f"{what}: invalid duration {show(value)} (use e.g. '500ms', '5s', '1m30s')"
            ) from None
    if math.isnan(seconds) or seconds <= 0:
        raise ConfigError(f"{what}: must be a positive duration, got {show(value)}")
    if seconds < 0.001:
        raise ConfigError(f"{what}: must be at least 1ms, got {show(value)}")
    if seconds > most:
        raise ConfigError(f"{what}: must be at most {format_duration(most)}"
                          f"{' (365 days)' if most == MAX_DURATION else ''}, got {show(value)}")
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


def split_address(address: str, what: str = "listen address") -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too; empty host means all interfaces) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if (not sep or not _PORT_RE.fullmatch(port) or not 0 < int(port) < 65536
            or (host and not valid_host(host))):
        raise ConfigError(f"{what} {show(address)}: expected HOST:PORT,"
                          f" e.g. ':{DEFAULT_PORT}'")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def valid_host(host: str) -> bool:
    """A DNS name (letters, digits, ``-`` and ``_``), an IPv4 address, or ``[IPv6]``."""
    v6 = host.startswith("[") and host.endswith("]")
    if v6 or host.replace(".", "").isdigit():
        try:
            return ipaddress.ip_address(host[1:-1] if v6 else host).version == (6 if v6 else 4)
        except ValueError:
            return False
    name = host[:-1] if host.endswith(".") else host
    return 0 < len(name) <= 253 and all(_LABEL_RE.fullmatch(p) for p in name.split("."))


def endpoint(url: str, name: str | None = None, what: str = "vLLM endpoint") -> Endpoint:
    """Validate an endpoint URL strictly; a URL without a path gets ``/metrics``."""
    bad = f"{what}: invalid URL {show(url)}"
    if not url or any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(f"{bad}: it must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. "Invalid IPv6 URL"
        raise ConfigError(f"{bad}: {exc}") from None
    authority = _AUTHORITY_RE.fullmatch(parts.netloc)
    if parts.scheme not in ("http", "https") or not authority or not valid_host(authority[1]):
        raise ConfigError(f"{bad} (expected http[s]://HOST[:PORT][/PATH])")
    port = authority[2]
    if port is not None and (not _PORT_RE.fullmatch(port) or not 0 < int(port) < 65536):
        raise ConfigError(f"{what}: invalid port in URL {show(url)} (1 to 65535)")
    path = parts.path if parts.path not in ("", "/") else "/metrics"
    normal = urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
    if name is None:
        name = authority[1].strip("[]").lower() + ("" if port is None else f":{port}")
        if path != "/metrics":
            name += path
    if not name or len(name) > 128 or not name.isprintable():
        raise ConfigError(f"{what}: name must be 1 to 128 printable characters,"
                          f" got {show(name)}")
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


def _positive_int(value: object, what: str, most: int) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value) if len(value.strip()) <= 18 else most + 1
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{what}: expected a positive integer, got {show(value)}")
    if value > most:
        raise ConfigError(f"{what}: must be at most {most}, got {show(value, 24)}")
    return value


def _str(value: object, what: str, expected: str, empty: bool = True) -> str:
    if not isinstance(value, str) or not (empty or value):
        raise ConfigError(f"{what}: expected {expected}, got {show(value)}")
    return value


def _choice(value: object, what: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ConfigError(f"{what}: expected one of {', '.join(choices)}, got {show(value)}")
    return value.lower()


def _bool(value: object, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (*_TRUE, "0", "false", "no", "off"):
        return value.lower() in _TRUE
    raise ConfigError(f"{what}: expected true or false, got {show(value)}")


def _list(value: object, what: str) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    raise ConfigError(f"{what}: expected a list, got {show(value)}")


def apply(cfg: Config, settings: Mapping[str, object], origin: str) -> Config:
    """Apply flat settings (``poll.interval`` style keys) from one origin onto ``cfg``."""
    changes: dict[str, Any] = {}
    collectors = set(cfg.collectors)
    for key, value in settings.items():
        what = f"{origin}: {key}"
        section, _, name = key.partition(".")
        if name not in _FILE_KEYS.get(section, ()):
            raise ConfigError(f"{origin}: unknown setting {show(key)}")
        if key == "web.listen_address":
            split_address(_str(value, what, "HOST:PORT"), f"{what}:")
            changes["listen_address"] = value
        elif key == "web.config_file":
            changes["web_config_file"] = _str(value, what, "a file path") or None  # "": none
        elif key in ("poll.interval", "poll.timeout", "poll.stale_after", "poll.max_backoff"):
            field_name = {"interval": "poll_interval", "timeout": "poll_timeout"}.get(name, name)
            most = MAX_INTERVAL if name == "interval" else MAX_DURATION
            changes[field_name] = parse_duration(value, what, most)
        elif key == "poll.max_response_bytes":
            changes["max_response_bytes"] = _positive_int(value, what, MAX_RESPONSE_BYTES)
        elif key == "derive.windows":
            windows = [parse_duration(v, what, MAX_WINDOW) for v in _list(value, what)]
            if not windows:
                raise ConfigError(f"{what}: at least one window is needed")
            changes["windows"] = tuple(sorted(set(windows)))
        elif key == "derive.quantiles":
            qs = []
            for v in _list(value, what):
                try:
                    q = float(v)
                except (TypeError, ValueError, OverflowError):
                    raise ConfigError(f"{what}: invalid quantile {show(v)}") from None
                if not 0 < q < 1:
                    raise ConfigError(f"{what}: a quantile must lie strictly between 0 and 1,"
                                      f" got {show(v)}")
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
            changes["max_engines_per_endpoint"] = _positive_int(value, what, MAX_ENGINES)
        elif key == "dcgm.url":
            changes["dcgm_url"] = endpoint(_str(value, what, "a URL"), "dcgm-exporter", what).url
        elif key == "gpu.expected_count":
            changes["gpu_expected_count"] = _positive_int(value, what, MAX_GPUS)
        elif section == "path":
            changes[name] = _str(value, what, "a directory path", empty=False)
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
                raise ConfigError(f"{what}[{i}]: unknown key {show(sorted(unknown)[0])}")
            if not isinstance(item.get("url"), str):
                raise ConfigError(f"{what}[{i}]: 'url' is required")
            name = item.get("name")
            if name is not None and not isinstance(name, str):
                raise ConfigError(f"{what}[{i}]: 'name' must be a string")
            result.append(endpoint(item["url"], name, what=f"{what}[{i}]"))
        else:
            raise ConfigError(f"{what}[{i}]: expected a URL or a table with url and name")
    seen: set[str] = set()
    for n in (e.name for e in result):
        if n in seen:
            raise ConfigError(f"{what}: two endpoints share the name {show(n)}; give each a name")
        seen.add(n)
    return tuple(result)


def read_file(path: Path) -> dict[str, object]:
    """Flatten a TOML config file (regular, at most 1 MiB) into ``section.key`` settings."""
    origin = f"config file {path}"
    try:
        data = tomllib.loads(read_regular(path, CONFIG_FILE_LIMIT).decode())
    except FileError as exc:
        raise ConfigError(f"{origin}: cannot read it: {exc}") from None
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, not UTF-8, an int too long
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    flat: dict[str, object] = {}
    for section, body in data.items():
        if section not in _FILE_KEYS:
            raise ConfigError(f"{origin}: unknown section [{show(section)[1:-1]}]")
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        for key, value in body.items():
            flat[f"{section}.{key}"] = value
    return flat


def check(cfg: Config) -> Config:
    """Cross-setting checks, once every origin has been applied."""
    d, interval = format_duration, cfg.poll_interval
    if cfg.poll_timeout > interval:
        raise ConfigError(f"poll timeout ({d(cfg.poll_timeout)}) must not exceed the poll"
                          f" interval ({d(interval)})")
    for w in cfg.windows:
        if w < 2 * interval:
            raise ConfigError(f"window {d(w)} is shorter than two poll intervals"
                              f" ({d(2 * interval)})")
        if w > MAX_WINDOW_POLLS * interval:
            raise ConfigError(f"window {d(w)} spans more than {MAX_WINDOW_POLLS} poll intervals"
                              f" ({d(MAX_WINDOW_POLLS * interval)}); lengthen the interval or"
                              " shorten the window")
    if cfg.stale_after < interval:
        raise ConfigError("poll stale_after must be at least one poll interval")
    if cfg.max_backoff >= cfg.stale_after:
        raise ConfigError(f"poll max_backoff ({d(cfg.max_backoff)}) must be shorter than poll"
                          f" stale_after ({d(cfg.stale_after)}), or a source's data expires"
                          " while it is still backing off")
    if not cfg.collectors:
        raise ConfigError("every collector is disabled; enable at least one")
    if "host" in cfg.collectors:
        for what, path in (("procfs", cfg.procfs), ("sysfs", cfg.sysfs)):
            if not os.path.isdir(path):  # False for any error: ENAMETOOLONG, a NUL...
                raise ConfigError(f"path.{what}: {show(path)} is not a directory")
    if cfg.web_config_file:
        from exporter import webconfig  # it builds on this module

        try:
            cfg = replace(cfg, web_config=webconfig.load(Path(cfg.web_config_file)))
        except Exception as exc:  # whatever the web config's reader missed
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"web config file {show(cfg.web_config_file)}: cannot use"
                              f" it: {exc}") from None
    return cfg
