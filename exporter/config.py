"""Configuration: defaults, then the TOML file, then environment variables, then flags.

Every setting is validated at load time; any problem raises :class:`ConfigError` with one
message that names the setting and where it came from. Each registered engine adapter (see
:mod:`exporter.engines`) has a section of its own, ``[<kind>]``, with its endpoints.
"""

from __future__ import annotations

import os.path
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from exporter import engines
from exporter.canary.settings import MAX_MAX_TOKENS, MAX_PROMPT_TOKENS, CanaryTarget, targets
from exporter.cost import Pricing, currency, price, prices
from exporter.endpoints import DEFAULT_PORT, Endpoint, endpoint, endpoints, split_address
from exporter.files import FileError, read_regular
from exporter.kinds import PLATFORM
from exporter.settings import (
    MAX_DURATION,
    ConfigError,
    as_list,
    format_duration,
    parse_duration,
    show,
)

__all__ = ["Config", "ConfigError", "EngineConfig", "Endpoint", "apply", "check",
           "collector_names", "endpoint", "file_keys", "read_file"]

_LEVELS, _FORMATS = ("debug", "info", "warning", "error"), ("auto", "json", "logfmt")
_TRUE = ("1", "true", "yes", "on")

# Bounds: far above any sensible setting, low enough that nothing downstream overflows
# (threading's TIMEOUT_MAX is about 292 years) or holds unbounded memory (a window holds one
# reading per poll per engine, hence at most MAX_WINDOW_POLLS intervals).
MAX_INTERVAL, MAX_WINDOW, MAX_WINDOW_POLLS = 3600.0, 86400.0, 2000
MAX_RESPONSE_BYTES, MAX_ENGINES, MAX_GPUS, CONFIG_FILE_LIMIT = 1 << 30, 10_000, 1024, 1 << 20
MAX_DISCOVERED = 256
ENGINE_KEYS = ("endpoints", "max_engines_per_endpoint")
"""The keys of each engine's section."""


def collector_names() -> tuple[str, ...]:
    """Every collector: one per registered engine adapter, then the node's own."""
    return (*engines.kinds(), *PLATFORM)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The settings of one engine kind."""

    endpoints: tuple[Endpoint, ...] = ()
    max_engines_per_endpoint: int = 64


def _default_engines() -> dict[str, EngineConfig]:
    return {a.kind: EngineConfig((endpoint(a.default_url),) if a.polled_by_default else ())
            for a in engines.adapters()}


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
    collectors: frozenset[str] = field(default_factory=lambda: frozenset(collector_names()))
    engines: Mapping[str, EngineConfig] = field(default_factory=_default_engines)
    """By engine kind: every registered adapter has an entry."""
    log_level: str = "info"
    log_format: str = "auto"
    gpu_expected_count: int | None = None
    dcgm_url: str | None = None
    discover: bool = True
    """Whether engines running on the node are found and polled (:mod:`exporter.discovery`)."""
    discover_interval: float = 30.0
    max_discovered: int = 16
    procfs: str = "/proc"
    sysfs: str = "/sys"
    web_config_file: str | None = None
    gpu_hourly_price: float | None = None
    gpu_hourly_prices: Mapping[str, float] = field(default_factory=dict)
    currency: str = "USD"
    canary_targets: tuple[CanaryTarget, ...] = ()
    """The endpoints the canary probes (:mod:`exporter.canary`); none by default."""
    canary_interval: float = 10.0
    canary_timeout: float = 8.0
    canary_prompt_tokens: int = 32
    canary_max_tokens: int = 16
    source: str = "defaults"
    """Where the settings came from, for logs."""

    @property
    def host_port(self) -> tuple[str, int]:
        """The listen address split for ``bind()``."""
        return split_address(self.listen_address)

    @property
    def pricing(self) -> Pricing:
        """The ``[cost]`` settings: the price of each GPU-hour (:mod:`exporter.cost`)."""
        return Pricing(self.gpu_hourly_price, self.gpu_hourly_prices, self.currency)

    def engine(self, kind: str) -> EngineConfig:
        """The settings of engine ``kind`` (the defaults for an adapter registered later)."""
        return self.engines.get(kind) or EngineConfig()

    def with_engine(self, kind: str, **changes: Any) -> Config:
        """A copy with the settings of engine ``kind`` changed."""
        return replace(self, engines={**self.engines,
                                      kind: replace(self.engine(kind), **changes)})


def file_keys() -> dict[str, tuple[str, ...]]:
    """The file's layout: section -> keys (an engine section per registered adapter)."""
    return {
        "web": ("listen_address", "config_file"),
        "poll": ("interval", "timeout", "stale_after", "max_backoff", "max_response_bytes"),
        "derive": ("windows", "quantiles"),
        "log": ("level", "format"),
        "collectors": collector_names(),
        **{kind: ENGINE_KEYS for kind in engines.kinds()},
        "path": ("procfs", "sysfs"),
        "gpu": ("expected_count",),
        "dcgm": ("url",),
        "engines": ("discover", "discover_interval", "max_discovered"),
        "cost": ("gpu_hourly_price", "gpu_hourly_prices", "currency"),
        "canary": ("endpoints", "interval", "timeout", "prompt_tokens", "max_tokens"),
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


def _windows(value: object, what: str) -> tuple[float, ...]:
    windows = [parse_duration(v, what, MAX_WINDOW) for v in as_list(value, what)]
    if not windows:
        raise ConfigError(f"{what}: at least one window is needed")
    return tuple(sorted(set(windows)))


def _quantiles(value: object, what: str) -> tuple[float, ...]:
    qs = []
    for v in as_list(value, what):
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
    return tuple(sorted(set(qs)))


def _listen(value: object, what: str) -> str:
    text = _str(value, what, "HOST:PORT")
    split_address(text, f"{what}:")
    return text


def _duration(most: float) -> Callable[[object, str], float]:
    return lambda value, what: parse_duration(value, what, most)


# Each setting outside the engine and collector sections: the field it sets and its check.
_SETTERS: dict[str, tuple[str, Callable[[object, str], Any]]] = {
    "web.listen_address": ("listen_address", _listen),
    # "" means no web config file.
    "web.config_file": ("web_config_file", lambda v, w: _str(v, w, "a file path") or None),
    "poll.interval": ("poll_interval", _duration(MAX_INTERVAL)),
    "poll.timeout": ("poll_timeout", _duration(MAX_DURATION)),
    "poll.stale_after": ("stale_after", _duration(MAX_DURATION)),
    "poll.max_backoff": ("max_backoff", _duration(MAX_DURATION)),
    "poll.max_response_bytes": (
        "max_response_bytes", lambda v, w: _positive_int(v, w, MAX_RESPONSE_BYTES)),
    "derive.windows": ("windows", _windows),
    "derive.quantiles": ("quantiles", _quantiles),
    "log.level": ("log_level", lambda v, w: _choice(v, w, _LEVELS)),
    "log.format": ("log_format", lambda v, w: _choice(v, w, _FORMATS)),
    "dcgm.url": ("dcgm_url", lambda v, w: endpoint(_str(v, w, "a URL"), "dcgm-exporter", w).url),
    "gpu.expected_count": ("gpu_expected_count", lambda v, w: _positive_int(v, w, MAX_GPUS)),
    "engines.discover": ("discover", _bool),
    "engines.discover_interval": ("discover_interval", _duration(MAX_INTERVAL)),
    "engines.max_discovered": (
        "max_discovered", lambda v, w: _positive_int(v, w, MAX_DISCOVERED)),
    "path.procfs": ("procfs", lambda v, w: _str(v, w, "a directory path", empty=False)),
    "path.sysfs": ("sysfs", lambda v, w: _str(v, w, "a directory path", empty=False)),
    "cost.gpu_hourly_price": ("gpu_hourly_price", price),
    "cost.gpu_hourly_prices": ("gpu_hourly_prices", prices),
    "cost.currency": ("currency", currency),
    "canary.endpoints": ("canary_targets", targets),
    "canary.interval": ("canary_interval", _duration(MAX_INTERVAL)),
    "canary.timeout": ("canary_timeout", _duration(MAX_DURATION)),
    "canary.prompt_tokens": (
        "canary_prompt_tokens", lambda v, w: _positive_int(v, w, MAX_PROMPT_TOKENS)),
    "canary.max_tokens": (
        "canary_max_tokens", lambda v, w: _positive_int(v, w, MAX_MAX_TOKENS)),
}


def _engine_setting(kind: str, name: str, value: object, what: str) -> dict[str, Any]:
    if name == "endpoints":
        return {"endpoints": endpoints(value, what, engines.adapter(kind).metrics_path)}
    return {"max_engines_per_endpoint": _positive_int(value, what, MAX_ENGINES)}


def apply(cfg: Config, settings: Mapping[str, object], origin: str) -> Config:
    """Apply flat settings (``poll.interval`` style keys) from one origin onto ``cfg``."""
    changes: dict[str, Any] = {}
    collectors = set(cfg.collectors)
    engine_changes: dict[str, dict[str, Any]] = {}
    layout = file_keys()
    for key, value in settings.items():
        what = f"{origin}: {key}"
        section, _, name = key.partition(".")
        if name not in layout.get(section, ()):
            raise ConfigError(f"{origin}: unknown setting {show(key)}")
        if section == "collectors":
            (collectors.add if _bool(value, what) else collectors.discard)(name)
        elif key in _SETTERS:
            field_name, setter = _SETTERS[key]
            changes[field_name] = setter(value, what)
        else:
            engine_changes.setdefault(section, {}).update(
                _engine_setting(section, name, value, what))
    changes["collectors"] = frozenset(collectors)
    if engine_changes:
        changes["engines"] = {**cfg.engines, **{
            kind: replace(cfg.engine(kind), **c)
            for kind, c in engine_changes.items()}}
    return replace(cfg, **changes)


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
    layout = file_keys()
    for section, body in data.items():
        if section not in layout:
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
    _check_canary(cfg)
    if "host" in cfg.collectors:
        for what, path in (("procfs", cfg.procfs), ("sysfs", cfg.sysfs)):
            if not os.path.isdir(path):  # False for any error: ENAMETOOLONG, a NUL...
                raise ConfigError(f"path.{what}: {show(path)} is not a directory")
    return cfg


def _check_canary(cfg: Config) -> None:
    """The canary's cadence, and that each probed endpoint is a configured one."""
    if not cfg.canary_targets:
        return
    d = format_duration
    if cfg.canary_interval < 1.0:
        raise ConfigError(f"canary interval ({d(cfg.canary_interval)}) must be at least 1s")
    if cfg.canary_timeout > cfg.canary_interval:
        raise ConfigError(f"canary timeout ({d(cfg.canary_timeout)}) must not exceed the"
                          f" canary interval ({d(cfg.canary_interval)}): one probe in flight")
    known = {e.name: kind for kind, ec in cfg.engines.items() for e in ec.endpoints}
    for t in cfg.canary_targets:
        kind = known.get(t.endpoint)
        if kind is None:
            names = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"canary endpoint {show(t.endpoint)}: no configured engine"
                              f" endpoint has that name (known: {names})")
        api = engines.adapter(kind).canary
        if api is None:
            raise ConfigError(f"canary endpoint {show(t.endpoint)}: {kind} has no streaming"
                              " API the canary speaks")
        if api.kind == "triton" and t.url is None:
            raise ConfigError(f"canary endpoint {show(t.endpoint)}: Triton serves its API on"
                              " another port than its metrics; give its URL"
                              f" ({t.endpoint}=http://HOST:8000)")
