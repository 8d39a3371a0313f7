"""The web configuration file (``--web.config.file``): TLS, client certificates, response
headers and basic auth for every HTTP endpoint, in the format of Prometheus' exporter-toolkit,
so that one file can serve this daemon and node_exporter alike.

Everything is checked when the file is read, certificates and keys loaded and bcrypt hashes
inspected: a bad file is a :class:`ConfigError` at start, and on SIGHUP the running settings
stay. Secrets (passwords, hashes, inline keys) never appear in an error message, and a YAML
error names its line and column, not the line's text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import secrets
import ssl
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from exporter.config import ConfigError, format_duration, parse_duration

__all__ = ["CLIENT_AUTH_TYPES", "BasicAuth", "RateLimit", "WebConfig", "load"]

CLIENT_AUTH_TYPES = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                     "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")

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

_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_OLD_VERSIONS = ("TLS10", "TLS11")

# Go's names of the TLS 1.0-1.2 suites (crypto/tls CipherSuites()) -> OpenSSL's names.
_CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
_TLS13_CIPHERS = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                  "TLS_CHACHA20_POLY1305_SHA256")
_CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1",
           "X25519": "X25519"}

_BCRYPT_RE = re.compile(r"\$2[abxy]\$(\d\d)\$[./A-Za-z0-9]{53}")
_CACHE_LIMIT = 1024
"""Most verified (user, password) pairs remembered; the set is emptied when full."""

HTPASSWD_HINT = "htpasswd -nBC 10 \"\" | tr -d ':\\n'"


class _Error(Exception):
    """A problem in the file; :func:`load` prefixes it with the file's name."""


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    An unknown user is checked against a dummy hash of the same cost, so that it takes as
    long as a wrong password. A successful check is remembered under a salted SHA-256 of the
    user, the hash and the password, so that a Prometheus scraping every few seconds costs
    one bcrypt run, not one per scrape. bcrypt runs one at a time (it is CPU-bound), so a
    flood of bad credentials holds at most one core.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = dict(users)
        cost = max(int(h[4:6]) for h in self._users.values())
        self._dummy = bcrypt.hashpw(secrets.token_bytes(18), bcrypt.gensalt(cost))
        self._salt = secrets.token_bytes(32)
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()

    @property
    def users(self) -> int:
        return len(self._users)

    def check(self, authorization: str | None) -> bool:
        """True if the header carries the password of a configured user."""
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        stored = self._users.get(user) if user is not None else None
        hashed = self._dummy if stored is None else stored
        key = self._key(user or "", hashed, password)
        if key in self._verified:  # only pairs that passed bcrypt are ever added
            return True
        with self._lock:
            if key in self._verified:
                return True
            try:
                ok = bcrypt.checkpw(password, hashed)
            except ValueError:  # e.g. a password longer than bcrypt's 72 bytes
                ok = False
            ok = ok and stored is not None
            if ok:
                if len(self._verified) >= _CACHE_LIMIT:
                    self._verified.clear()
                self._verified.add(key)
        return ok

    def _key(self, user: str, hashed: bytes, password: bytes) -> bytes:
        h = hashlib.sha256(self._salt)
        for part in (user.encode(), hashed, password):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.digest()


def _basic_credentials(header: str | None) -> tuple[str | None, bytes] | None:
    """(user, password) from a Basic ``Authorization`` header; user None if not UTF-8."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    try:
        return user.decode(), password
    except UnicodeDecodeError:
        return None, password


class RateLimit:
    """A token bucket: ``burst`` requests at once, then one per ``interval`` seconds."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval = interval
        self.burst = burst
        self._tokens = float(burst)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(float(self.burst),
                               self._tokens + (now - self._at) / self.interval)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


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
    """Settings accepted but not applied as written, for a warning in the log."""

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
            if _normal_san(kind, str(value)) in self.allowed_sans:
                return True
        return False


def _normal_san(kind: str, value: str) -> str:
    value = value.strip()
    if kind == "IP Address":
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return value
    return value


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
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read it: {exc.strerror or exc}") from None
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
        _boolean(http["http2"], "http_server_config: http2")
        if http["http2"]:
            notes.append("http_server_config: http2 is ignored; the daemon serves HTTP/1.1")
    ssl_context: ssl.SSLContext | None = None
    client_auth = "NoClientCert"
    sans: frozenset[str] = frozenset()
    if any(tls.get(k) not in (None, "") for k in ("cert", "key", "cert_file", "key_file",
                                                   "client_ca", "client_ca_file",
                                                   "client_auth_type")):
        ssl_context, client_auth, sans = _tls(tls, path.parent, notes)
    elif tls:
        raise _Error("tls_server_config: cert_file and key_file (or cert and key) are"
                     " needed to serve TLS")
    return WebConfig(
        path=str(path), ssl_context=ssl_context, client_auth_type=client_auth,
        allowed_sans=sans, headers=_headers(http.get("headers")),
        auth=_users(top.get("basic_auth_users")),
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


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _Error(f"{what}: expected a string")
    return value


def _strings(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Error(f"{what}: expected a list of strings")
    return list(value)


def _boolean(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise _Error(f"{what}: expected true or false, got {value!r}")
    return value


def _file(value: object, what: str, base: Path) -> Path:
    """A file named in the config; relative paths are relative to the config's directory."""
    path = base / _string(value, what)
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise _Error(f"{what} {path}: cannot read it: {exc.strerror or exc}") from None
    return path


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).replace("_", " ").lower()


def _tls(tls: Mapping[str, Any], base: Path, notes: list[str]
         ) -> tuple[ssl.SSLContext, str, frozenset[str]]:
    w = "tls_server_config"
    for inline, file in (("cert", "cert_file"), ("key", "key_file"),
                         ("client_ca", "client_ca_file")):
        if tls.get(inline) and tls.get(file):
            raise _Error(f"{w}: give {inline} or {file}, not both")
    if not tls.get("cert") and not tls.get("cert_file"):
        raise _Error(f"{w}: cert_file (or cert) is missing")
    if not tls.get("key") and not tls.get("key_file"):
        raise _Error(f"{w}: key_file (or key) is missing")

    versions = []
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = _string(tls.get(key) or default, f"{w}: {key}")
        if name in _OLD_VERSIONS:
            raise _Error(f"{w}: {key} {name} is not supported: TLS 1.0 and 1.1 are"
                         " deprecated (RFC 8996); use TLS12 or TLS13")
        if name not in _VERSIONS:
            raise _Error(f"{w}: {key}: unknown TLS version {name!r} (use TLS12 or TLS13)")
        versions.append(name)
    if _VERSIONS[versions[0]] > _VERSIONS[versions[1]]:
        raise _Error(f"{w}: min_version {versions[0]} is above max_version {versions[1]}")

    client_auth = _string(tls.get("client_auth_type") or "NoClientCert",
                          f"{w}: client_auth_type")
    if client_auth == "RequireClientCert":  # exporter-toolkit's old spelling
        client_auth = "RequireAnyClientCert"
    if client_auth not in CLIENT_AUTH_TYPES:
        raise _Error(f"{w}: client_auth_type: expected one of {', '.join(CLIENT_AUTH_TYPES)},"
                     f" got {client_auth!r}")
    if client_auth == "RequireAnyClientCert":
        raise _Error(f"{w}: client_auth_type RequireAnyClientCert (a certificate required but"
                     " never verified) cannot be done with Python's ssl module; use"
                       " RequireAndVerifyClientCert with client_ca_file")
    has_ca = bool(tls.get("client_ca") or tls.get("client_ca_file"))
    verifies = client_auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
    if has_ca and not verifies:
        raise _Error(f"{w}: client_ca_file is set but client_auth_type {client_auth} does not"
                     " verify client certificates (use RequireAndVerifyClientCert)")
    if verifies and not has_ca:
        raise _Error(f"{w}: client_auth_type {client_auth} needs client_ca_file, the CA"
                     " that signs the client certificates")
    if client_auth == "RequestClientCert":
        notes.append(f"{w}: client_auth_type RequestClientCert asks for a certificate it never"
                     " verifies or uses; it is served as NoClientCert")
    sans = frozenset(_normal_san("IP Address", s) for s in
                     _strings(tls.get("client_allowed_sans"), f"{w}: client_allowed_sans"))
    if sans and client_auth != "RequireAndVerifyClientCert":
        raise _Error(f"{w}: client_allowed_sans needs client_auth_type"
                     " RequireAndVerifyClientCert")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[versions[0]]
    ctx.maximum_version = _VERSIONS[versions[1]]
    ctx.set_alpn_protocols(["http/1.1"])
    _load_pair(ctx, tls, base)

    if client_auth in ("NoClientCert", "RequestClientCert"):
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = (ssl.CERT_OPTIONAL if client_auth == "VerifyClientCertIfGiven"
                           else ssl.CERT_REQUIRED)
        try:
            if tls.get("client_ca_file"):
                ca = _file(tls["client_ca_file"], f"{w}: client_ca_file", base)
                ctx.load_verify_locations(cafile=str(ca))
            else:
                ctx.load_verify_locations(cadata=_string(tls["client_ca"], f"{w}: client_ca"))
        except ssl.SSLError as exc:
            raise _Error(f"{w}: the client CA holds no usable certificate"
                         f" ({_ssl_reason(exc)})") from None

    suites = _strings(tls.get("cipher_suites"), f"{w}: cipher_suites")
    if suites:
        unknown = [s for s in suites if s not in _CIPHERS and s not in _TLS13_CIPHERS]
        if unknown:
            raise _Error(f"{w}: cipher_suites: unknown or insecure suite {unknown[0]!r}"
                         f" (known: {', '.join(_CIPHERS)})")
        if any(s in _TLS13_CIPHERS for s in suites):
            notes.append(f"{w}: cipher_suites: TLS 1.3 suites are not configurable (as in Go);"
                         " they are left out of the list")
        wanted = [_CIPHERS[s] for s in suites if s in _CIPHERS]
        if wanted:
            if versions[0] == "TLS13":
                notes.append(f"{w}: cipher_suites only apply to TLS 1.2, and min_version is"
                             " TLS13")
            try:
                ctx.set_ciphers(":".join(wanted))
            except ssl.SSLError:
                raise _Error(f"{w}: cipher_suites: none is available in this OpenSSL"
                             " build") from None
            have = {c["name"] for c in ctx.get_ciphers()}
            missing = [s for s in suites if s in _CIPHERS and _CIPHERS[s] not in have]
            if missing:
                raise _Error(f"{w}: cipher_suites: {missing[0]} is not available in this"
                             " OpenSSL build")
    prefer = tls.get("prefer_server_cipher_suites")
    if prefer is not None and not _boolean(prefer, f"{w}: prefer_server_cipher_suites"):
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE

    curves = _strings(tls.get("curve_preferences"), f"{w}: curve_preferences")
    for c in curves:
        if c not in _CURVES:
            raise _Error(f"{w}: curve_preferences: unknown curve {c!r}"
                         f" (known: {', '.join(_CURVES)})")
    if len(curves) > 1:
        raise _Error(f"{w}: curve_preferences: Python's ssl module can restrict the key"
                     " exchange to one curve only, not order several; list one or none")
    if curves:
        ctx.set_ecdh_curve(_CURVES[curves[0]])
    return ctx, client_auth, sans


def _load_pair(ctx: ssl.SSLContext, tls: Mapping[str, Any], base: Path) -> None:
    """Load the server's certificate chain and key, from files or inline PEM."""
    w = "tls_server_config"
    with tempfile.TemporaryDirectory(prefix="inx-tls-") as tmp:
        paths = []
        for inline, file in (("cert", "cert_file"), ("key", "key_file")):
            if tls.get(file):
                paths.append(_file(tls[file], f"{w}: {file}", base))
            else:
                # Python's ssl loads a key only from a file: a private one, gone at once.
                p = Path(tmp) / inline
                p.touch(mode=0o600)
                p.write_text(_string(tls[inline], f"{w}: {inline}"))
                paths.append(p)
        what = ("cert_file" if tls.get("cert_file") else "cert",
                "key_file" if tls.get("key_file") else "key")
        try:
            ctx.load_cert_chain(str(paths[0]), str(paths[1]), password=b"")
        except ssl.SSLError as exc:
            reason = _ssl_reason(exc)
            if "mismatch" in reason:
                detail = f"{what[1]} is not the key of the certificate in {what[0]}"
            else:
                detail = (f"cannot load the certificate from {what[0]} and its key from"
                          f" {what[1]} ({reason}; encrypted keys are not supported)")
            raise _Error(f"{w}: {detail}") from None


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
        text = _string(text, f"{w}: {name}")
        allowed = _HEADERS[name]
        if allowed is not None and text not in allowed:
            raise _Error(f"{w}: {name} must be one of {', '.join(allowed)}, got {text!r}")
        if "\r" in text or "\n" in text:
            raise _Error(f"{w}: {name} must be one line")
        if text:  # blank means unset
            out.append((name, text))
    return tuple(out)


def _users(value: object) -> BasicAuth | None:
    w = "basic_auth_users"
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Error(f"{w}: expected a mapping of user names to bcrypt hashes")
    users: dict[str, bytes] = {}
    for user, hashed in value.items():
        if not isinstance(user, str) or not user:
            raise _Error(f"{w}: user name {user!r} must be a non-empty string (quote it)")
        if ":" in user:
            raise _Error(f"{w}: user name {user!r} must not contain ':'")
        m = _BCRYPT_RE.fullmatch(hashed) if isinstance(hashed, str) else None
        if m is None or not 4 <= int(m.group(1)) <= 31:
            # Never echo the value: it may be a password written in clear by mistake.
            raise _Error(f"{w}: the password of user {user!r} is not a bcrypt hash (make one"
                         f" with: {HTPASSWD_HINT})")
        assert isinstance(hashed, str)
        users[user] = hashed.encode()
    return BasicAuth(users) if users else None


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
