"""The ``tls_server_config`` of the web config file: an ``ssl.SSLContext`` from Go-style
settings (exporter-toolkit's names), checked as it is built, and the validators the rest of
the file's parser shares.
"""

from __future__ import annotations

import ipaddress
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporter import certdates
from exporter.files import FileError, read_regular

__all__ = ["CLIENT_AUTH_TYPES", "SettingError", "boolean", "normal_san", "string", "strings",
           "tls_context"]


CLIENT_AUTH_TYPES = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                     "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")


_W = "tls_server_config"
"""The section's name, which every message here begins with."""


class SettingError(Exception):
    """A problem in the web config file; the loader prefixes it with the file's name."""


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


def string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise SettingError(f"{what}: expected a string")
    return value


def strings(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingError(f"{what}: expected a list of strings")
    return list(value)


def boolean(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise SettingError(f"{what}: expected true or false, got {value!r}")
    return value


def _contents(tls: Mapping[str, Any], inline: str, file: str, base: Path) -> bytes:
    """The PEM given inline or in a file (relative to the config's directory), which must
    be a regular file: a FIFO or a device would block the loader."""
    if not tls.get(file):
        return string(tls[inline], f"{_W}: {inline}").encode()
    path = base / string(tls[file], f"{_W}: {file}")
    try:
        return read_regular(path)
    except FileError as exc:
        raise SettingError(f"{_W}: {file} {path}: cannot read it: {exc}") from None


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).replace("_", " ").lower()


def tls_context(tls: Mapping[str, Any], base: Path, notes: list[str]
                ) -> tuple[ssl.SSLContext, str, frozenset[str]]:
    """The server's context, its client_auth_type (Go's name) and the client SANs allowed;
    raises SettingError at the first problem, in the order the settings are checked."""
    _check_pair_given(tls)
    versions = _versions(tls)
    client_auth = _client_auth(tls, notes)
    sans = _allowed_sans(tls, client_auth)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[versions[0]]
    ctx.maximum_version = _VERSIONS[versions[1]]
    ctx.set_alpn_protocols(["http/1.1"])
    _load_pair(ctx, tls, base, notes)
    _verify_clients(ctx, tls, base, client_auth)
    _cipher_suites(ctx, tls, versions[0], notes)
    prefer = tls.get("prefer_server_cipher_suites")
    if prefer is not None and not boolean(prefer, f"{_W}: prefer_server_cipher_suites"):
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _curve(ctx, tls)
    return ctx, client_auth, sans


def _check_pair_given(tls: Mapping[str, Any]) -> None:
    """Each PEM given once at most (inline or as a file), and a certificate and key given."""
    for inline, file in (("cert", "cert_file"), ("key", "key_file"),
                         ("client_ca", "client_ca_file")):
        if tls.get(inline) and tls.get(file):
            raise SettingError(f"{_W}: give {inline} or {file}, not both")
    if not tls.get("cert") and not tls.get("cert_file"):
        raise SettingError(f"{_W}: cert_file (or cert) is missing")
    if not tls.get("key") and not tls.get("key_file"):
        raise SettingError(f"{_W}: key_file (or key) is missing")


def _versions(tls: Mapping[str, Any]) -> tuple[str, str]:
    """(min_version, max_version) by Go's names, checked."""
    versions = []
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = string(tls.get(key) or default, f"{_W}: {key}")
        if name in _OLD_VERSIONS:
            raise SettingError(f"{_W}: {key} {name} is not supported: TLS 1.0 and 1.1 are"
                               " deprecated (RFC 8996); use TLS12 or TLS13")
        if name not in _VERSIONS:
            raise SettingError(f"{_W}: {key}: unknown TLS version {name!r} (use TLS12 or"
                               " TLS13)")
        versions.append(name)
    low, high = versions
    if _VERSIONS[low] > _VERSIONS[high]:
        raise SettingError(f"{_W}: min_version {low} is above max_version {high}")
    return low, high


def _client_auth(tls: Mapping[str, Any], notes: list[str]) -> str:
    """The client_auth_type, checked against the client CA's presence."""
    client_auth = string(tls.get("client_auth_type") or "NoClientCert",
                         f"{_W}: client_auth_type")
    if client_auth == "RequireClientCert":  # exporter-toolkit's old spelling
        client_auth = "RequireAnyClientCert"
    if client_auth not in CLIENT_AUTH_TYPES:
        raise SettingError(f"{_W}: client_auth_type: expected one of"
                           f" {', '.join(CLIENT_AUTH_TYPES)}, got {client_auth!r}")
    if client_auth == "RequireAnyClientCert":
        raise SettingError(f"{_W}: client_auth_type RequireAnyClientCert (a certificate"
                           " required but never verified) cannot be done with Python's ssl"
                           " module; use RequireAndVerifyClientCert with client_ca_file")
    has_ca = bool(tls.get("client_ca") or tls.get("client_ca_file"))
    verifies = client_auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
    if has_ca and not verifies:
        raise SettingError(f"{_W}: client_ca_file is set but client_auth_type {client_auth}"
                           " does not verify client certificates (use"
                           " RequireAndVerifyClientCert)")
    if verifies and not has_ca:
        raise SettingError(f"{_W}: client_auth_type {client_auth} needs client_ca_file, the"
                           " CA that signs the client certificates")
    if client_auth == "RequestClientCert":
        notes.append(f"{_W}: client_auth_type RequestClientCert asks for a certificate it"
                     " never verifies or uses; it is served as NoClientCert")
    return client_auth


def _allowed_sans(tls: Mapping[str, Any], client_auth: str) -> frozenset[str]:
    """client_allowed_sans, normalised; only where client certificates are verified."""
    sans = frozenset(normal_san("IP Address", s) for s in
                     strings(tls.get("client_allowed_sans"), f"{_W}: client_allowed_sans"))
    if sans and client_auth != "RequireAndVerifyClientCert":
        raise SettingError(f"{_W}: client_allowed_sans needs client_auth_type"
                           " RequireAndVerifyClientCert")
    return sans


def _verify_clients(ctx: ssl.SSLContext, tls: Mapping[str, Any], base: Path,
                    client_auth: str) -> None:
    """The context's verify mode, and the client CA where certificates are verified."""
    if client_auth in ("NoClientCert", "RequestClientCert"):
        ctx.verify_mode = ssl.CERT_NONE
        return
    ctx.verify_mode = (ssl.CERT_OPTIONAL if client_auth == "VerifyClientCertIfGiven"
                       else ssl.CERT_REQUIRED)
    ca = _contents(tls, "client_ca", "client_ca_file", base)
    try:
        ctx.load_verify_locations(cadata=ca.decode("utf-8", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        reason = _ssl_reason(exc) if isinstance(exc, ssl.SSLError) else "no certificate"
        raise SettingError(f"{_W}: the client CA holds no usable certificate"
                           f" ({reason})") from None


def _cipher_suites(ctx: ssl.SSLContext, tls: Mapping[str, Any], min_version: str,
                   notes: list[str]) -> None:
    """Restrict the TLS 1.2 suites to cipher_suites (Go's names), when given."""
    suites = strings(tls.get("cipher_suites"), f"{_W}: cipher_suites")
    if not suites:
        return
    unknown = [s for s in suites if s not in _CIPHERS and s not in _TLS13_CIPHERS]
    if unknown:
        raise SettingError(f"{_W}: cipher_suites: unknown or insecure suite {unknown[0]!r}"
                           f" (known: {', '.join(_CIPHERS)})")
    if any(s in _TLS13_CIPHERS for s in suites):
        notes.append(f"{_W}: cipher_suites: TLS 1.3 suites are not configurable (as in Go);"
                     " they are left out of the list")
    wanted = [_CIPHERS[s] for s in suites if s in _CIPHERS]
    if not wanted:
        return
    if min_version == "TLS13":
        notes.append(f"{_W}: cipher_suites only apply to TLS 1.2, and min_version is TLS13")
    try:
        ctx.set_ciphers(":".join(wanted))
    except ssl.SSLError:
        raise SettingError(f"{_W}: cipher_suites: none is available in this OpenSSL"
                           " build") from None
    have = {c["name"] for c in ctx.get_ciphers()}
    missing = [s for s in suites if s in _CIPHERS and _CIPHERS[s] not in have]
    if missing:
        raise SettingError(f"{_W}: cipher_suites: {missing[0]} is not available in this"
                           " OpenSSL build")


def _curve(ctx: ssl.SSLContext, tls: Mapping[str, Any]) -> None:
    """The one key-exchange curve of curve_preferences, when given."""
    curves = strings(tls.get("curve_preferences"), f"{_W}: curve_preferences")
    for c in curves:
        if c not in _CURVES:
            raise SettingError(f"{_W}: curve_preferences: unknown curve {c!r}"
                               f" (known: {', '.join(_CURVES)})")
    if len(curves) > 1:
        raise SettingError(f"{_W}: curve_preferences: Python's ssl module can restrict the"
                           " key exchange to one curve only, not order several; list one or"
                           " none")
    if curves:
        ctx.set_ecdh_curve(_CURVES[curves[0]])


def _load_pair(ctx: ssl.SSLContext, tls: Mapping[str, Any], base: Path,
               notes: list[str]) -> None:
    """Load the server's certificate chain and key, from files or inline PEM."""
    cert = _contents(tls, "cert", "cert_file", base)
    key = _contents(tls, "key", "key_file", base)
    with tempfile.TemporaryDirectory(prefix="inx-tls-") as tmp:
        # Python's ssl loads a key only from a file: a private one, gone at once.
        paths = [Path(tmp) / "cert", Path(tmp) / "key"]
        for path, data in zip(paths, (cert, key), strict=True):
            path.touch(mode=0o600)
            path.write_bytes(data)
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
            raise SettingError(f"{_W}: {detail}") from None
    note = certdates.expiry_note(cert, f"{_W}: {what[0]}")
    if note is not None:
        notes.append(note)


def normal_san(kind: str, value: str) -> str:
    value = value.strip()
    if kind == "IP Address":
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return value
    return value

