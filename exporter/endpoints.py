"""Endpoint URLs and listen addresses, validated strictly: what a setting may name to poll
or to listen on."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from exporter.settings import ConfigError, as_list, show

__all__ = ["DEFAULT_PORT", "Endpoint", "endpoint", "endpoints", "split_address", "valid_host"]

DEFAULT_PORT = 19400
"""The daemon's own port."""
_NAMED_URL_RE = re.compile(r"([A-Za-z0-9_.:/-]+)=(https?://.*)", re.DOTALL)
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_AUTHORITY_RE = re.compile(r"(?:.*@)?(\[[^]]*\]|[^:[\]]*)(?::([^:]*))?")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One engine metrics endpoint to poll."""

    url: str
    name: str


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


def endpoint(url: str, name: str | None = None, what: str = "endpoint",
             default_path: str = "/metrics") -> Endpoint:
    """Validate an endpoint URL strictly; a URL without a path gets ``default_path``, and the
    endpoint's name (unless given) is ``host[:port]``, then the path when it is another."""
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
    path = parts.path if parts.path not in ("", "/") else default_path
    normal = urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
    if name is None:
        name = authority[1].strip("[]").lower() + ("" if port is None else f":{port}")
        if path != default_path:
            name += path
    if not name or len(name) > 128 or not name.isprintable():
        raise ConfigError(f"{what}: name must be 1 to 128 printable characters,"
                          f" got {show(name)}")
    return Endpoint(normal, name)


def endpoints(value: object, what: str, path: str = "/metrics") -> tuple[Endpoint, ...]:
    """A list of endpoints: URLs, ``NAME=URL`` strings or tables with url and name; a URL
    without a path gets ``path``. Names must differ."""
    result = []
    for i, item in enumerate(as_list(value, what)):
        if isinstance(item, str):
            named = _NAMED_URL_RE.fullmatch(item.strip())
            if named:
                result.append(endpoint(named.group(2), named.group(1), f"{what}[{i}]", path))
            else:
                result.append(endpoint(item, None, f"{what}[{i}]", path))
        elif isinstance(item, dict):
            unknown = set(item) - {"url", "name"}
            if unknown:
                raise ConfigError(f"{what}[{i}]: unknown key {show(sorted(unknown)[0])}")
            if not isinstance(item.get("url"), str):
                raise ConfigError(f"{what}[{i}]: 'url' is required")
            name = item.get("name")
            if name is not None and not isinstance(name, str):
                raise ConfigError(f"{what}[{i}]: 'name' must be a string")
            result.append(endpoint(item["url"], name, f"{what}[{i}]", path))
        else:
            raise ConfigError(f"{what}[{i}]: expected a URL or a table with url and name")
    seen: set[str] = set()
    for n in (e.name for e in result):
        if n in seen:
            raise ConfigError(f"{what}: two endpoints share the name {show(n)}; give each a name")
        seen.add(n)
    return tuple(result)
