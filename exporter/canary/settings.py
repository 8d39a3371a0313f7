"""The ``[canary]`` settings: which endpoints are probed (by name, optionally with the API's
URL and the model), how often and how hard."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from exporter.endpoints import endpoint
from exporter.files import FileError, read_regular
from exporter.settings import ConfigError, as_list, show

__all__ = ["MAX_MAX_TOKENS", "MAX_PROMPT_TOKENS", "MAX_TARGETS", "CanaryTarget", "targets"]

MAX_TARGETS = 64
MAX_PROMPT_TOKENS = 4096
MAX_MAX_TOKENS = 256
_NAMED = re.compile(r"([A-Za-z0-9_.:/-]+)=([A-Za-z][A-Za-z0-9+.-]*://.*)", re.DOTALL)
_KEYS = frozenset({"endpoint", "url", "model", "api_key_file"})
_KEY_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class CanaryTarget:
    """One endpoint to probe, as configured."""

    endpoint: str
    """The name of a configured engine endpoint."""
    url: str | None = None
    """The engine's API base URL; None: the metrics URL's scheme, host and port."""
    model: str | None = None
    """The model to ask for; None: the first the engine lists."""
    api_key: str | None = field(default=None, repr=False)
    """Sent as ``Authorization: Bearer`` (an engine started with ``--api-key``)."""


def _api_key(path: object, what: str) -> str:
    """The key in ``path``: a regular file of at most 4 KiB, one printable line."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{what}: 'api_key_file' must be a file path")
    try:
        key = read_regular(Path(path), _KEY_LIMIT).decode().strip()
    except (FileError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: api_key_file {show(path)}: cannot read it: {exc}") from None
    if not key or not key.isprintable() or any(c.isspace() for c in key):
        raise ConfigError(f"{what}: api_key_file {show(path)} must hold one key, without"
                          " spaces")
    return key


def _url(value: str, what: str) -> str:
    return endpoint(value, "canary", what, default_path="/").url.rstrip("/")


def _target(item: object, what: str) -> CanaryTarget:
    if isinstance(item, str):
        named = _NAMED.fullmatch(item.strip())
        if named:
            return CanaryTarget(named.group(1), _url(named.group(2), what))
        if not item.strip() or not item.strip().isprintable():
            raise ConfigError(f"{what}: expected an endpoint name, got {show(item)}")
        return CanaryTarget(item.strip())
    if isinstance(item, dict):
        unknown = set(item) - _KEYS
        if unknown:
            raise ConfigError(f"{what}: unknown key {show(sorted(unknown)[0])}")
        name, url, model = item.get("endpoint"), item.get("url"), item.get("model")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{what}: 'endpoint' (an endpoint's name) is required")
        if url is not None and not isinstance(url, str):
            raise ConfigError(f"{what}: 'url' must be a string")
        if model is not None and (not isinstance(model, str) or not model
                                  or not model.isprintable() or len(model) > 256):
            raise ConfigError(f"{what}: 'model' must be 1 to 256 printable characters,"
                              f" got {show(model)}")
        key = item.get("api_key_file")
        return CanaryTarget(name, _url(url, what) if url else None, model,
                            _api_key(key, what) if key is not None else None)
    raise ConfigError(f"{what}: expected an endpoint name, NAME=URL or a table with"
                      " endpoint, url and model")


def targets(value: object, what: str) -> tuple[CanaryTarget, ...]:
    """The probed endpoints: names, ``NAME=API_URL`` strings or tables; names must differ."""
    items = as_list(value, what)
    if len(items) > MAX_TARGETS:
        raise ConfigError(f"{what}: at most {MAX_TARGETS} endpoints may be probed")
    result = tuple(_target(item, f"{what}[{i}]") for i, item in enumerate(items))
    names = [t.endpoint for t in result]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"{what}: endpoint {show(n)} is named twice")
    return result
