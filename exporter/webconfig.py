"""The web configuration file (``--web.config.file``): TLS, client certificates, response
headers and basic auth for every HTTP endpoint, in the format of Prometheus' exporter-toolkit,
so that one file can serve this daemon and node_exporter alike.

Everything is checked when the file is read, certificates and keys loaded and bcrypt hashes
inspected: a bad file is a :class:`ConfigError` at start, and on SIGHUP the running settings
stay. Secrets (passwords, hashes, inline keys) never appear in an error message, and a YAML
error names its line and column, not the line's text.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from exporter.files import FileError, read_regular
from exporter.settings import ConfigError, format_duration, parse_duration
from exporter.webauth import HTPASSWD_HINT, BasicAuth, RateLimit, parse_users
from exporter.webtls import CLIENT_AUTH_TYPES, boolean, normal_san, string, tls_context
from exporter.webtls import SettingError as _Error

__all__ = ["CLIENT_AUTH_TYPES", "HTPASSWD_HINT", "BasicAuth", "RateLimit", "WebConfig", "load"]

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
_TLS_KEYS = ("cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type",
             "client_ca_file", "client_allowed_sans", "min_version", "max_version",
             "cipher_suites", "prefer_server_cipher_suites", "curve_preferences")
_HTTP_KEYS = ("http2", "headers")
_RATE_KEYS = ("interval", "burst")

# The headers exporter-toolkit lets a file set, with their allowed values (None: any).
_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}


@dataclass(frozen=True, slots=True, eq=False)
class WebConfig:
    """A web configuration file, read and checked."""

    path: str
    ssl_context: ssl.SSLContext | None = None
    client_auth_type: str = "NoClientCert"
    allowed_sans: frozenset[str] = frozenset()
    headers: tuple[tuple[str, str], ...] = ()
    auth: BasicAuth | None = None
    rate_limit: RateLimit | None = None
    notes: tuple[str, ...] = ()
    """What deserves a warning in the log: settings accepted but not applied as written, no
    authentication where users were expected, a server certificate expired or expiring."""

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None

    def describe(self) -> str:
        """One line for ``--config.check``; names no secret."""
        parts = [f"TLS (client certificates: {self.client_auth_type})" if self.tls
                 else "plain HTTP"]
        parts.append(f"basic auth for {self.auth.users} user{'s' if self.auth.users > 1 else ''}"
                     if self.auth else "no basic auth")
        if self.headers:
            parts.append("headers " + ", ".join(name for name, _ in self.headers))
        if self.rate_limit:
            parts.append(f"rate limit {self.rate_limit.burst} then one per"
                         f" {format_duration(self.rate_limit.interval)}")
        return f"{'; '.join(parts)} (from {self.path})"

    def peer_allowed(self, cert: Mapping[str, Any] | None) -> bool:
        """Whether a verified client certificate has a SAN in ``client_allowed_sans``."""
        if not self.allowed_sans:
            return True
        for kind, value in (cert or {}).get("subjectAltName", ()):
            if normal_san(kind, str(value)) in self.allowed_sans:
                return True
        return False


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice (as Go's strict YAML does)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise _Error(f"key {key!r} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        except TypeError:  # an unhashable key: let PyYAML say so
            break
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load(path: Path) -> WebConfig:
    """Read and check a web configuration file; :class:`ConfigError` names what is wrong."""
    origin = f"web config file {path}"
    try:
        text = read_regular(path)  # a FIFO would block the start for ever
    except FileError as exc:
        raise ConfigError(f"{origin}: cannot read it: {exc}") from None
    try:
        return _parse(text, path)
    except _Error as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def _parse(text: bytes, path: Path) -> WebConfig:
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a safe loader
    except yaml.MarkedYAMLError as exc:
        # Only the problem and its place: the offending line may hold a secret.
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise _Error(f"not valid YAML: {exc.problem or exc.context}{where}") from None
    except yaml.YAMLError as exc:
        raise _Error(f"not valid YAML: {type(exc).__name__}") from None
    if data is None:
        data = {}
    top = _section(data, "the file", _TOP_KEYS)
    notes: list[str] = []
    tls = _section(top.get("tls_server_config"), "tls_server_config", _TLS_KEYS)
    http = _section(top.get("http_server_config"), "http_server_config", _HTTP_KEYS)
    if http.get("http2") is not None:
        boolean(http["http2"], "http_server_config: http2")
        if http["http2"]:
            notes.append("http_server_config: http2 is ignored; the daemon serves HTTP/1.1")
    ssl_context: ssl.SSLContext | None = None
    client_auth = "NoClientCert"
    sans: frozenset[str] = frozenset()
    if any(tls.get(k) not in (None, "") for k in ("cert", "key", "cert_file", "key_file",
                                                   "client_ca", "client_ca_file",
                                                   "client_auth_type")):
        ssl_context, client_auth, sans = tls_context(tls, path.parent, notes)
    elif tls:
        raise _Error("tls_server_config: cert_file and key_file (or cert and key) are"
                     " needed to serve TLS")
    try:
        auth = parse_users(top.get("basic_auth_users"))
    except ValueError as exc:
        raise _Error(f"basic_auth_users: {exc}") from None
    if auth is None and "basic_auth_users" in top:
        notes.append("basic_auth_users is empty: every endpoint is served without"
                     " authentication")
    return WebConfig(
        path=str(path), ssl_context=ssl_context, client_auth_type=client_auth,
        allowed_sans=sans, headers=_headers(http.get("headers")), auth=auth,
        rate_limit=_rate_limit(top.get("rate_limit")), notes=tuple(notes))


def _section(value: object, what: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Error(f"{what}: expected a mapping of keys to values")
    for key in value:
        if key not in keys:
            where = "" if what == "the file" else f" in {what}"
            raise _Error(f"unknown key {key!r}{where} (known: {', '.join(keys)})")
    return value


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    w = "http_server_config: headers"
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise _Error(f"{w}: expected a mapping of header names to values")
    out = []
    for name, text in value.items():
        if name not in _HEADERS:
            raise _Error(f"{w}: header {name!r} can not be configured (allowed:"
                         f" {', '.join(_HEADERS)})")
        text = string(text, f"{w}: {name}")
        allowed = _HEADERS[name]
        if allowed is not None and text not in allowed:
            raise _Error(f"{w}: {name} must be one of {', '.join(allowed)}, got {text!r}")
        if "\r" in text or "\n" in text:
            raise _Error(f"{w}: {name} must be one line")
        if text:  # blank means unset
            out.append((name, text))
    return tuple(out)


def _rate_limit(value: object) -> RateLimit | None:
    w = "rate_limit"
    body = _section(value, w, _RATE_KEYS)
    interval = body.get("interval")
    if interval in (None, 0, "0", "0s"):
        return None
    try:
        seconds = parse_duration(interval, f"{w}: interval")
    except ConfigError as exc:
        raise _Error(str(exc)) from None
    burst = body.get("burst")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise _Error(f"{w}: burst must be a whole number of at least 1, got {burst!r}")
    return RateLimit(seconds, burst)
