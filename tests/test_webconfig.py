"""TLS, client certificates and basic auth from a web config file (exporter-toolkit format).

The parser's messages, the authenticator's timing and cache rules, and the real daemon
scraped by a real Prometheus over TLS: basic auth, a wrong password, plain HTTP on the TLS
port, an expired and an untrusted certificate, client certificates required. Every key and
certificate is made here, at test time; the password and its bcrypt hash too.
"""

from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
import structlog
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exporter import certdates, logs, webauth, webconfig
from exporter.cli import ENV_PREFIX, main
from exporter.settings import ConfigError
from exporter.web import Health, WebServer
from tests.support.harness import ROOT, Daemon, free_port, terminate, wait_for

PASSWORD = "pw-" + secrets.token_urlsafe(12)
WRONG = "wrong-" + secrets.token_urlsafe(12)
USER = "prometheus"
LIGHT = ["--no-collector.gpu", "--no-collector.dcgm", "--no-collector.host",
         "--vllm.endpoint", "http://127.0.0.1:1/metrics", "--log.level", "debug"]


# --- a small PKI, made at test time -----------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def issue(cn: str, *, issuer: Issued | None = None, ca: bool = False,
          days: tuple[float, float] = (-1, 30), server: bool = False,
          client: bool = False) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + timedelta(days=days[0]))
        .not_valid_after(now + timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            signer_key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return Issued(builder.sign(signer_key, hashes.SHA256()), key)


def write(directory: Path, name: str, issued: Issued) -> None:
    (directory / f"{name}.crt").write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(issued.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.crt; server, server2 (signed by the CA), expired, selfsigned, client: .crt + .key."""
    d = tmp_path_factory.mktemp("pki")
    ca = issue("test CA", ca=True, days=(-1, 365))
    (d / "ca.crt").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    write(d, "server", issue("server", issuer=ca, server=True))
    write(d, "server2", issue("server2", issuer=ca, server=True))
    write(d, "expired", issue("expired", issuer=ca, server=True, days=(-10, -5)))
    write(d, "selfsigned", issue("selfsigned", server=True, client=True))
    write(d, "client", issue("client", issuer=ca, client=True))
    return d


@pytest.fixture(scope="module")
def hashed() -> str:
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()


def web_config(directory: Path, name: str, body: dict[str, Any]) -> Path:
    path = directory / f"{name}.yml"
    path.write_text(yaml.safe_dump(body))
    return path


# --- the parser ---------------------------------------------------------------------------

TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
MTLS = TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_config: {}\n", "unknown key 'tls_config' (known: tls_server_config,"),
        (TLS + "  cert_files: x\n", "unknown key 'cert_files' in tls_server_config"),
        ("tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n",
         "tls_server_config: cert_file {dir}/nope.crt: cannot read it: no such file"),
        ("tls_server_config:\n  cert_file: server.crt\n", "key_file (or key) is missing"),
        ("tls_server_config:\n  min_version: TLS13\n", "cert_file and key_file (or cert and"
         " key) are needed"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n",
         "key_file is not the key of the certificate in cert_file"),
        ("tls_server_config:\n  cert_file: ca.crt\n  key_file: ca.crt\n",
         "cannot load the certificate from cert_file and its key from key_file"),
        (TLS + "  client_auth_type: VerifyEverything\n", "client_auth_type: expected one of"
         " NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven,"
         " RequireAndVerifyClientCert, got 'VerifyEverything'"),
        (TLS + "  client_auth_type: RequireAnyClientCert\n  client_ca_file: ca.crt\n",
         "RequireAnyClientCert (a certificate required but never verified) cannot be done"),
        (TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
         "RequireAndVerifyClientCert needs client_ca_file"),
        (TLS + "  client_ca_file: ca.crt\n", "client_ca_file is set but client_auth_type"
         " NoClientCert does not verify client certificates"),
        (MTLS.replace("ca.crt", "server.key"), "the client CA holds no usable certificate"),
        (TLS + "  min_version: TLS11\n", "min_version TLS11 is not supported"),
        (TLS + "  max_version: TLS14\n", "max_version: unknown TLS version 'TLS14'"),
        (TLS + "  min_version: TLS13\n  max_version: TLS12\n",
         "min_version TLS13 is above max_version TLS12"),
        (TLS + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
         "cipher_suites: unknown or insecure suite 'TLS_RSA_WITH_RC4_128_SHA'"),
        (TLS + "  curve_preferences: [X25519, CurveP256]\n", "one curve only"),
        (TLS + "  curve_preferences: [CurveP25519]\n", "unknown curve 'CurveP25519'"),
        (TLS + "  client_allowed_sans: [client]\n",
         "client_allowed_sans needs client_auth_type RequireAndVerifyClientCert"),
        ("http_server_config:\n  headers:\n    Server: mine\n",
         "header 'Server' can not be configured"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
         "X-Frame-Options must be one of deny, sameorigin, got 'allow'"),
        ("http_server_config:\n  http2: maybe\n", "http2: expected true or false"),
        ("basic_auth_users:\n  alice: {secret}\n",
         "the password of user 'alice' is not a bcrypt hash"),
        ("basic_auth_users:\n  alice: $2y$03$" + "a" * 53 + "\n",
         "the password of user 'alice' is not a bcrypt hash"),
        ("basic_auth_users:\n  alice: {hash}\n  bob: {hash}\n  alice: {hash}\n",
         "key 'alice' is given twice (line 4)"),
        ("basic_auth_users:\n  yes: {hash}\n", "user name True must be a non-empty string"),
        ("basic_auth_users:\n  alice: [{hash}\n", "not valid YAML: "),
        ("basic_auth_users: [alice]\n", "basic_auth_users: expected a mapping"),
        ("rate_limit:\n  interval: 1s\n  burst: 0\n", "burst must be a whole number"),
        ("rate_limit:\n  interval: soon\n  burst: 5\n", "invalid duration 'soon'"),
    ],
)
def test_a_bad_web_config_is_one_clear_message_without_secrets(
        pki: Path, hashed: str, text: str, message: str) -> None:
    path = pki / "bad.yml"
    path.write_text(text.replace("{hash}", hashed).replace("{secret}", PASSWORD))
    with pytest.raises(ConfigError) as info:
        webconfig.load(path)
    error = str(info.value)
    assert error.startswith(f"web config file {path}: ")
    assert message.replace("{dir}", str(pki)) in error
    assert "\n" not in error
    for secret in (PASSWORD, hashed, hashed[7:29]):
        assert secret not in error


def test_a_good_web_config_and_its_notes(pki: Path, hashed: str) -> None:
    path = pki / "good.yml"
    path.write_text(MTLS + (
        "  min_version: TLS12\n  max_version: TLS13\n"
        "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]\n"
        "  prefer_server_cipher_suites: false\n  curve_preferences: [CurveP256]\n"
        "  client_allowed_sans: [127.0.0.1, client.example]\n"
        "http_server_config:\n  http2: true\n  headers:\n    X-Content-Type-Options: nosniff\n"
        "    Content-Security-Policy: ''\n"
        f"basic_auth_users:\n  alice: {hashed}\n  bob: {hashed}\n"
        "rate_limit:\n  interval: 100ms\n  burst: 3\n"))
    web = webconfig.load(path)
    assert web.tls and web.client_auth_type == "RequireAndVerifyClientCert"
    assert web.ssl_context is not None and web.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert not web.ssl_context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert web.headers == (("X-Content-Type-Options", "nosniff"),)  # blank means unset
    assert web.auth is not None and web.auth.users == 2
    assert web.rate_limit is not None
    assert [web.rate_limit.allow("127.0.0.1") for _ in range(4)] == [True, True, True, False]
    assert any("http2 is ignored" in n for n in web.notes)
    assert any("TLS 1.3 suites are not configurable" in n for n in web.notes)
    assert web.describe() == (
        "TLS (client certificates: RequireAndVerifyClientCert); basic auth for 2 users;"
        f" headers X-Content-Type-Options; rate limit 3 then one per 100ms (from {path})")
    assert web.peer_allowed({"subjectAltName": (("IP Address", "127.0.0.1\n"),)})
    assert web.peer_allowed({"subjectAltName": (("DNS", "client.example"),)})
    assert not web.peer_allowed({"subjectAltName": (("DNS", "other.example"),)})
    assert not web.peer_allowed(None)
    # An empty file is valid: plain HTTP, no authentication, as without one.
    (pki / "empty.yml").write_text("")
    empty = webconfig.load(pki / "empty.yml")
    assert not empty.tls and empty.auth is None and empty.headers == ()


def test_inline_pem_instead_of_files(pki: Path) -> None:
    web = webconfig.load(web_config(pki, "inline", {"tls_server_config": {
        "cert": (pki / "server.crt").read_text(), "key": (pki / "server.key").read_text(),
        "client_auth_type": "VerifyClientCertIfGiven", "client_ca": (pki / "ca.crt").read_text()}}))
    assert web.ssl_context is not None and web.ssl_context.verify_mode == ssl.CERT_OPTIONAL
    with pytest.raises(ConfigError, match="give cert or cert_file, not both"):
        webconfig.load(web_config(pki, "both", {"tls_server_config": {
            "cert": "x", "cert_file": "server.crt", "key_file": "server.key"}}))


def test_the_example_web_config_is_valid(pki: Path) -> None:
    example = pki / "example.yml"
    shutil.copy(ROOT / "deploy" / "web-config.example.yml", example)
    web = webconfig.load(example)  # server.crt and server.key lie beside it here
    assert web.tls and web.client_auth_type == "NoClientCert" and web.auth is None
    assert dict(web.headers) == {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "deny"}
    assert web.notes == ()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_unknown_users_cost_a_bcrypt_run_and_only_successes_are_cached(
        hashed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = webconfig.BasicAuth({USER: hashed.encode()})
    checked: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, stored: bytes) -> bool:
        checked.append(stored)
        return real(password, stored)

    monkeypatch.setattr(webauth.bcrypt, "checkpw", counting)
    assert not auth.check(basic("nobody", PASSWORD))
    # The unknown user was checked against a dummy hash of the same cost as the real one.
    assert len(checked) == 1 and checked[0] != hashed.encode()
    assert checked[0][:7] == hashed.encode()[:7] == b"$2b$10$"
    assert not auth.check(basic(USER, WRONG)) and not auth.check(basic(USER, WRONG))
    assert len(checked) == 3  # failures are never cached
    assert auth.check(basic(USER, PASSWORD)) and auth.check(basic(USER, PASSWORD))
    assert len(checked) == 4  # the second success came from the cache
    for header in (None, "", "Bearer x", "Basic !!!", basic(USER, "x" * 100),
                   "Basic " + "bm9jb2xvbg=="):  # "nocolon"
        assert not auth.check(header)


def test_a_cheap_hash_takes_as_long_as_the_dearest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timing must not tell which users exist: a user hashed at cost 4 and an unknown user
    (checked against a dummy of the highest cost, 11) answer a wrong password alike."""
    cheap = bcrypt.hashpw(b"cheap-password", bcrypt.gensalt(4))
    dear = bcrypt.hashpw(b"dear-password", bcrypt.gensalt(11))
    auth = webauth.BasicAuth({"cheap": cheap, "dear": dear})

    def took(header: str) -> float:
        started = time.perf_counter()
        assert not auth.check(header)
        return time.perf_counter() - started

    unknown = min(took(basic("nobody", WRONG)) for _ in range(2))
    known = min(took(basic("cheap", WRONG)) for _ in range(2))
    assert known >= 0.5 * unknown, (known, unknown)
    # ... and the right password too, the first time (then it is remembered).
    started = time.perf_counter()
    assert auth.check(basic("cheap", "cheap-password"))
    assert time.perf_counter() - started >= 0.5 * unknown
    assert auth.quick(basic("cheap", "cheap-password")) is True
    assert auth.quick(basic("cheap", WRONG)) is None  # needs a bcrypt run
    assert auth.quick("Bearer x") is False


def test_the_rate_limit_keeps_a_bucket_per_client(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(webauth.time, "monotonic", lambda: now[0])
    limit = webauth.RateLimit(interval=10.0, burst=2, clients=3)
    assert [limit.allow("10.0.0.1") for _ in range(3)] == [True, True, False]
    assert limit.allow("10.0.0.2") and limit.allow("::ffff:10.0.0.2")  # the same client
    assert not limit.allow("10.0.0.2")
    # An IPv6 client is its /64.
    assert limit.allow("2001:db8::1") and limit.allow("2001:db8::2")
    assert not limit.allow("2001:db8::3") and limit.allow("2001:db8:0:1::1")
    now[0] += 10.0  # one token back each
    assert limit.allow("2001:db8::1") and not limit.allow("2001:db8::1")
    # At most 3 buckets: 10.0.0.1, the least recently seen, was dropped and starts full.
    assert limit.allow("10.0.0.1") and limit.allow("10.0.0.1")


def test_a_fifo_or_a_directory_is_refused_without_blocking(pki: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "web.yml"
    os.mkfifo(fifo)
    cert_fifo = tmp_path / "cert.crt"
    os.mkfifo(cert_fifo)
    (tmp_path / "server.key").write_bytes((pki / "server.key").read_bytes())
    uses_fifo = web_config(tmp_path, "cert", {"tls_server_config": {
        "cert_file": "cert.crt", "key_file": "server.key"}})
    errors: list[str] = []

    def load_all() -> None:
        for path in (fifo, tmp_path, uses_fifo):
            with pytest.raises(ConfigError) as info:
                webconfig.load(path)
            errors.append(str(info.value))

    loader = threading.Thread(target=load_all, daemon=True)
    loader.start()
    loader.join(10)
    assert not loader.is_alive(), "loading a FIFO blocked"
    assert errors == [
        f"web config file {fifo}: cannot read it: not a regular file (a FIFO)",
        f"web config file {tmp_path}: cannot read it: not a regular file (a directory)",
        f"web config file {uses_fifo}: tls_server_config: cert_file {cert_fifo}: cannot read"
        " it: not a regular file (a FIFO)"]


@pytest.mark.parametrize("users", ["basic_auth_users:\n", "basic_auth_users: {}\n",
                                   "basic_auth_users:\n#  alice: $2y$10$...\n"])
def test_basic_auth_users_present_but_empty_is_a_warning(pki: Path, users: str) -> None:
    path = pki / "nobody.yml"
    path.write_text(users)
    web = webconfig.load(path)
    assert web.auth is None
    assert web.notes == ("basic_auth_users is empty: every endpoint is served without"
                         " authentication",)


def test_an_expired_or_expiring_server_certificate_is_a_warning(pki: Path) -> None:
    expired = webconfig.load(web_config(pki, "old", {"tls_server_config": {
        "cert_file": "expired.crt", "key_file": "expired.key"}}))
    when = x509.load_pem_x509_certificate((pki / "expired.crt").read_bytes()
                                          ).not_valid_after_utc
    assert expired.notes == ("tls_server_config: cert_file: the server certificate expired on"
                             f" {when:%Y-%m-%d %H:%M:%S} UTC",)
    soon = issue("soon", days=(-1, 3), server=True)
    write(pki, "soon", soon)
    expiring = webconfig.load(web_config(pki, "soon", {"tls_server_config": {
        "cert": (pki / "soon.crt").read_text(), "key": (pki / "soon.key").read_text()}}))
    assert len(expiring.notes) == 1
    assert expiring.notes[0].startswith("tls_server_config: cert: the server certificate"
                                        " expires within 7 days, on ")
    good = webconfig.load(web_config(pki, "fine", {"tls_server_config": {
        "cert_file": "server.crt", "key_file": "server.key"}}))
    assert good.notes == ()


@pytest.mark.parametrize("span", [(-1, 30), (-400, -300), (10, 20), (-1, 365 * 40),
                                  (-365 * 60, 1)])
def test_certificate_dates_are_read_from_der(span: tuple[float, float]) -> None:
    """UTCTime before 2050, GeneralizedTime from 2050 on (RFC 5280), with a version field."""
    cert = issue("dates", days=span).cert
    pem = b"junk before\n" + cert.public_bytes(serialization.Encoding.PEM)
    not_before, not_after = certdates.validity(pem)
    assert not_before == cert.not_valid_before_utc.replace(microsecond=0)
    assert not_after == cert.not_valid_after_utc.replace(microsecond=0)


@pytest.mark.parametrize("body", [None, b"!!", b"MAMCAQE=", b"MIIB", b"MAA="])
def test_a_certificate_that_cannot_be_read_is_a_value_error(body: bytes | None) -> None:
    pem = b"" if body is None else \
        b"-----BEGIN CERTIFICATE-----\n" + body + b"\n-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError):
        certdates.validity(pem)
    assert certdates.expiry_note(pem, "cert") is None


def test_web_config_flag_env_and_config_check(pki: Path, hashed: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = web_config(pki, "check", {"tls_server_config": {"cert_file": "server.crt",
                                                           "key_file": "server.key"},
                                     "basic_auth_users": {USER: hashed}})
    assert main(["--config.check", "--web.config.file", str(path)], {}) == 0
    out = capsys.readouterr().out
    assert f"web: TLS (client certificates: NoClientCert); basic auth for 1 user (from {path})" \
        in out
    assert hashed not in out
    assert main(["--config.check"], {ENV_PREFIX + "WEB_CONFIG_FILE": str(path)}) == 0
    assert "basic auth for 1 user" in capsys.readouterr().out
    config = pki / "config.toml"
    config.write_text(f'[web]\nconfig_file = "{path}"\n')
    assert main(["--config.check", "--config.file", str(config)], {}) == 0
    assert "basic auth for 1 user" in capsys.readouterr().out
    assert main(["--config.check"], {}) == 0
    assert "web: plain HTTP, no authentication" in capsys.readouterr().out


def test_a_bad_web_config_stops_the_start_with_exit_code_2(pki: Path) -> None:
    bad = pki / "start.yml"
    bad.write_text(f"basic_auth_users:\n  alice: {PASSWORD}\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--web.config.file", str(bad), *LIGHT],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (f"inference-node-exporter: configuration error: web config file {bad}:"
                        " basic_auth_users: the password of user 'alice' is not a bcrypt hash"
                        f" (make one with: {webconfig.HTPASSWD_HINT})")


def test_a_client_gone_mid_request_is_a_debug_line_not_a_traceback(
        pki: Path, capfd: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    before = structlog.get_config()
    logs.configure("debug", "json", stream)
    rendering, release = threading.Event(), threading.Event()

    def render() -> bytes:
        rendering.set()
        release.wait(10)
        return b"x" * 1_000_000

    server = WebServer(("127.0.0.1", 0), render, lambda: Health(True, "ok", ()),
                       webconfig.load(web_config(pki, "gone", {"tls_server_config": {
                           "cert_file": "server.crt", "key_file": "server.key"}})))
    server.start()
    try:
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        with context.wrap_socket(socket.create_connection(("127.0.0.1", server.port)),
                                 server_hostname="localhost") as gone:
            gone.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert rendering.wait(10)
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        release.set()  # the answer now goes to a connection the client has reset
        wait_for("the reset to be logged",
                 lambda: "connection ended during a request" in stream.getvalue())
    finally:
        release.set()
        server.stop()
        structlog.configure(**before)
    assert "Traceback" not in capfd.readouterr().err


# --- the real daemon, scraped by a real Prometheus ----------------------------------------


class SecureDaemon(Daemon):
    """The daemon with a web config; ready once its port accepts connections."""

    def __init__(self, workdir: Path, config: Path | None, *args: str) -> None:
        super().__init__(workdir, [*LIGHT, *args,
                                   *(["--web.config.file", str(config)] if config else [])])
        self.url = f"https://127.0.0.1:{self.port}"
        self.target = f"127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_text()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False


class Prometheus:
    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus not found: install Debian's 'prometheus' package")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = workdir / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address={self.url.removeprefix('http://')}"],
                cwd=workdir, stdout=log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()[-3000:]}")
        try:
            return requests.get(self.url + "/-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def targets(self) -> dict[str, dict[str, Any]]:
        """Active targets by job, once every one of them has been scraped."""
        body = requests.get(self.url + "/api/v1/targets", timeout=5).json()
        targets = {t["labels"]["job"]: t for t in body["data"]["activeTargets"]}
        return targets if all(t["health"] != "unknown" for t in targets.values()) else {}

    def up(self) -> dict[str, float]:
        body = requests.get(self.url + "/api/v1/query", params={"query": "up"}, timeout=5).json()
        return {r["metric"]["job"]: float(r["value"][1]) for r in body["data"]["result"]}

    def stop(self) -> None:
        terminate(self.proc)


@dataclass
class Stack:
    pki: Path
    auth: SecureDaemon  # TLS + basic auth + headers
    expired: SecureDaemon  # TLS with an expired certificate
    untrusted: SecureDaemon  # TLS with a self-signed certificate
    mtls: SecureDaemon  # TLS, RequireAndVerifyClientCert
    prometheus: Prometheus
    targets: dict[str, dict[str, Any]]

    @property
    def daemons(self) -> list[SecureDaemon]:
        return [self.auth, self.expired, self.untrusted, self.mtls]


@pytest.fixture(scope="module")
def stack(pki: Path, hashed: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("stack")

    def tls(cert: str, **extra: Any) -> dict[str, Any]:
        return {"cert_file": f"{cert}.crt", "key_file": f"{cert}.key", **extra}

    configs = {
        "auth": {"tls_server_config": tls("server"), "basic_auth_users": {USER: hashed},
                 "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff",
                                                    "X-Frame-Options": "deny"}}},
        "expired": {"tls_server_config": tls("expired")},
        "untrusted": {"tls_server_config": tls("selfsigned")},
        "mtls": {"tls_server_config": tls("server", client_auth_type="RequireAndVerifyClientCert",
                                          client_ca_file="ca.crt")},
    }
    daemons = {name: SecureDaemon(work, web_config(pki, name, body))
               for name, body in configs.items()}
    started: list[Any] = []
    try:
        for d in daemons.values():
            started.append(d.start(ready=False))
        for d in daemons.values():
            wait_for("the daemon to listen", d._answers, timeout=30)
        ca = str(pki / "ca.crt")

        def job(name: str, daemon: str, **extra: Any) -> dict[str, Any]:
            return {"job_name": name, "scheme": "https", "tls_config": {"ca_file": ca},
                    "static_configs": [{"targets": [daemons[daemon].target]}], **extra}

        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                  "scrape_configs": [
                      job("tls_auth", "auth",
                          basic_auth={"username": USER, "password": PASSWORD}),
                      job("wrong_password", "auth",
                          basic_auth={"username": USER, "password": WRONG}),
                      job("no_credentials", "auth"),
                      {**job("plain_http", "auth"), "scheme": "http"},
                      job("expired", "expired"),
                      job("untrusted", "untrusted"),
                      job("mtls_without_cert", "mtls"),
                      job("mtls_with_cert", "mtls", tls_config={
                          "ca_file": ca, "cert_file": str(pki / "client.crt"),
                          "key_file": str(pki / "client.key")}),
                  ]}
        prometheus = Prometheus(work / "prometheus", config)
        started.append(prometheus)
        wait_for("prometheus to be ready", prometheus.ready, timeout=30)
        targets = wait_for("every target scraped once", prometheus.targets, timeout=30)
        yield Stack(pki, daemons["auth"], daemons["expired"], daemons["untrusted"],
                    daemons["mtls"], prometheus, targets)
    finally:
        for process in started:
            process.stop()


def test_prometheus_scrapes_over_tls_with_basic_auth_and_client_certificates(
        stack: Stack) -> None:
    assert stack.targets["tls_auth"]["health"] == "up", stack.targets["tls_auth"]["lastError"]
    assert stack.targets["mtls_with_cert"]["health"] == "up", \
        stack.targets["mtls_with_cert"]["lastError"]
    def every_job() -> dict[str, float] | None:
        up = stack.prometheus.up()
        return up if len(up) == len(stack.targets) else None

    up = wait_for("up for every job", every_job)
    assert up["tls_auth"] == 1.0 and up["mtls_with_cert"] == 1.0
    # The scrape carried the daemon's metrics.
    got = requests.get(stack.prometheus.url + "/api/v1/query", timeout=5, params={
        "query": 'inference_node_exporter_collector_up{job="tls_auth"}'}).json()
    assert got["data"]["result"]


@pytest.mark.parametrize(("job", "error"), [
    ("wrong_password", "server returned HTTP status 401 Unauthorized"),
    ("no_credentials", "server returned HTTP status 401 Unauthorized"),
    ("plain_http", "server returned HTTP status 400 Bad Request"),
    ("expired", "x509: certificate has expired or is not yet valid"),
    ("untrusted", "x509: certificate signed by unknown authority"),
    # Under TLS 1.3 the client has sent its request by the time the server refuses the
    # missing certificate: it reads either the server's alert or the reset that follows it.
    ("mtls_without_cert", "remote error: tls: |connection reset by peer"),
])
def test_prometheus_reports_what_is_wrong(stack: Stack, job: str, error: str) -> None:
    target = stack.targets[job]
    assert target["health"] == "down"
    assert any(e in target["lastError"] for e in error.split("|")), target["lastError"]
    assert stack.prometheus.up()[job] == 0.0


def test_direct_requests(stack: Stack) -> None:
    ca = str(stack.pki / "ca.crt")
    url = stack.auth.url + "/metrics"
    ok = requests.get(url, verify=ca, auth=(USER, PASSWORD), timeout=5)
    assert ok.status_code == 200 and "inference_node_exporter_collector_up" in ok.text
    assert ok.headers["X-Content-Type-Options"] == "nosniff"
    assert ok.headers["X-Frame-Options"] == "deny"
    answers = [requests.get(url, verify=ca, auth=auth, timeout=5)
               for auth in ((USER, WRONG), ("nobody", PASSWORD), None)]
    for r in answers:
        assert r.status_code == 401 and r.text == "Unauthorized\n"
        assert r.headers["WWW-Authenticate"].startswith("Basic ")
    # Unknown user and wrong password look the same.
    same = [{k: v for k, v in r.headers.items() if k != "Date"} for r in answers]
    assert same[0] == same[1] == same[2]
    # /healthz and / are behind the same lock.
    assert requests.get(stack.auth.url + "/healthz", verify=ca, timeout=5).status_code == 401
    assert requests.head(stack.auth.url + "/", verify=ca, timeout=5).status_code == 401

    # Plain HTTP to the TLS port gets a 400 that says so; a TLS handshake that is garbage, and
    # a client that connects and says nothing, hold nobody else up.
    plain = requests.get(f"http://{stack.auth.target}/metrics", timeout=5)
    assert plain.status_code == 400 and "HTTP request to an HTTPS server" in plain.text
    with socket.create_connection(("127.0.0.1", stack.auth.port), timeout=5) as garbage:
        garbage.sendall(b"\x16\x03\x01\x00\x10" + secrets.token_bytes(16))
    with socket.create_connection(("127.0.0.1", stack.auth.port), timeout=5):
        assert requests.get(url, verify=ca, auth=(USER, PASSWORD), timeout=5).status_code == 200

    # Client certificates: none, or one from another CA, gets no answer; the CA's one does.
    mtls = stack.mtls.url + "/metrics"
    for cert in (None, (str(stack.pki / "selfsigned.crt"), str(stack.pki / "selfsigned.key"))):
        with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
            requests.get(mtls, verify=ca, cert=cert, timeout=5)
    client = (str(stack.pki / "client.crt"), str(stack.pki / "client.key"))
    assert requests.get(mtls, verify=ca, cert=client, timeout=5).status_code == 200

    # Each of these failures was logged at debug, as a JSON line like every other line, and
    # every daemon still serves.
    for d in stack.daemons:
        assert all(line.startswith("{") for line in d.log_text().splitlines()), d.log_text()
    events = [e["event"] for e in stack.auth.logs()]
    assert "plain HTTP on the TLS port; answered 400" in events
    assert "TLS handshake failed" in events
    assert any(e["event"] == "TLS handshake failed" for e in stack.mtls.logs())
    for d in stack.daemons:
        assert d.proc is not None and d.proc.poll() is None


def test_logs_name_the_web_config_but_never_a_secret(stack: Stack, hashed: str) -> None:
    logs = stack.auth.logs()
    applied = next(e for e in logs if e["event"] == "web config in force")
    assert applied["tls"] is True and applied["basic_auth_users"] == 1
    assert any(e["event"] == "http request" for e in logs)  # debug lines are on
    # The expired certificate loads (clients refuse it) but is a warning at start.
    assert any(e["event"] == "web config warning" and e["level"] == "warning"
               and "the server certificate expired on" in e["note"]
               for e in stack.expired.logs())
    assert not any(e["event"] == "web config warning" for e in logs)
    for d in stack.daemons:
        text = d.log_text()
        for secret in (PASSWORD, WRONG, hashed, hashed[7:29],
                       hashlib.sha256(PASSWORD.encode()).hexdigest()):
            assert secret not in text


def test_sighup_applies_a_new_web_config_and_rejects_a_bad_one(
        pki: Path, tmp_path: Path) -> None:
    first = bcrypt.hashpw(b"first-password", bcrypt.gensalt(4)).decode()
    second = bcrypt.hashpw(b"second-password", bcrypt.gensalt(4)).decode()
    body = {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"},
            "basic_auth_users": {"alice": first}}
    path = web_config(pki, "reload", body)
    toml = tmp_path / "config.toml"
    toml.write_text(f'[web]\nconfig_file = "{path}"\n')
    ca = str(pki / "ca.crt")

    def status(password: str) -> int:
        return requests.get(daemon.url + "/metrics", verify=ca, auth=("alice", password),
                            timeout=5).status_code

    def served() -> x509.Certificate:
        pem = ssl.get_server_certificate(("127.0.0.1", daemon.port))
        return x509.load_pem_x509_certificate(pem.encode())

    with SecureDaemon(tmp_path, None, "--config.file", str(toml)) as daemon:
        assert status("first-password") == 200 and status("second-password") == 401
        assert served().subject.rfc4514_string() == "CN=server"
        # A renewed certificate and a new password, applied on SIGHUP to new connections.
        web_config(pki, "reload", {**body, "tls_server_config": {
            "cert_file": "server2.crt", "key_file": "server2.key"},
            "basic_auth_users": {"alice": second}})
        daemon.signal(signal.SIGHUP)
        wait_for("the new web config", lambda: status("second-password") == 200)
        assert status("first-password") == 401
        assert served().subject.rfc4514_string() == "CN=server2"
        assert any(e["event"] == "web config reloaded" for e in daemon.logs())

        path.write_text("basic_auth_users:\n  alice: second-password\n")
        daemon.signal(signal.SIGHUP)
        rejected = wait_for("the rejection", lambda: next(
            (e for e in daemon.logs() if e["event"].startswith("reload rejected")), None))
        assert "the password of user 'alice' is not a bcrypt hash" in rejected["error"]
        assert status("second-password") == 200
        assert served().subject.rfc4514_string() == "CN=server2"

        # A reload never falls back to plain HTTP without authentication.
        toml.write_text("")
        daemon.signal(signal.SIGHUP)
        wait_for("the refusal", lambda: any(
            e["event"].startswith("the web config file is no longer set")
            for e in daemon.logs()))
        assert status("first-password") == 401 and status("second-password") == 200
    text = daemon.log_text()
    for secret in ("first-password", "second-password", first, second):
        assert secret not in text
