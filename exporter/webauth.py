"""Basic auth against bcrypt hashes, and the per-client rate limit, of the web config file.

Both are built by :mod:`exporter.webconfig` and used by the HTTP server for every request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping

import bcrypt

__all__ = ["HTPASSWD_HINT", "BasicAuth", "RateLimit", "parse_users"]

HTPASSWD_HINT = "htpasswd -nBC 10 \"\" | tr -d ':\\n'"

_BCRYPT_RE = re.compile(r"\$2[abxy]\$(\d\d)\$[./A-Za-z0-9]{53}")
_CACHE_LIMIT = 1024
"""Most verified (user, password) pairs remembered; the set is emptied when full."""
CLIENTS = 4096
"""Most clients the rate limit keeps a bucket for; the least recently seen goes first."""


def _cost(hashed: bytes) -> int:
    return int(hashed[4:6])


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    Every check that runs bcrypt takes at least as long as one run at the highest cost
    configured, whoever the user: an unknown user is checked against a dummy hash of that
    cost, and a user whose own hash is cheaper is checked against the dummy too, so that the
    time of an answer tells nothing about which users exist. A successful check is
    remembered under a salted SHA-256 of the user, the hash and the password, so that a
    Prometheus scraping every few seconds costs one bcrypt run, not one per scrape. bcrypt
    runs one check at a time (it is CPU-bound), so a flood holds at most one core.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = dict(users)
        self._cost = max(_cost(h) for h in self._users.values())
        self._dummy = bcrypt.hashpw(secrets.token_bytes(18), bcrypt.gensalt(self._cost))
        self._salt = secrets.token_bytes(32)
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()

    @property
    def users(self) -> int:
        return len(self._users)

    def quick(self, authorization: str | None) -> bool | None:
        """The answer when it needs no bcrypt run (a remembered success, a malformed header),
        else None: then :meth:`check` must run, off the event loop."""
        found = self._lookup(authorization)
        if found is None:
            return False
        return True if found[3] in self._verified else None

    def check(self, authorization: str | None) -> bool:
        """True if the header carries the password of a configured user."""
        found = self._lookup(authorization)
        if found is None:
            return False
        password, stored, hashed, key = found
        if key in self._verified:  # only pairs that passed bcrypt are ever added
            return True
        with self._lock:
            if key in self._verified:
                return True
            ok = _checkpw(password, hashed) and stored is not None
            if _cost(hashed) < self._cost:  # as slow as the dearest hash, whoever it is
                _checkpw(password, self._dummy)
            if ok:
                if len(self._verified) >= _CACHE_LIMIT:
                    self._verified.clear()
                self._verified.add(key)
        return ok

    def _lookup(self, authorization: str | None
                ) -> tuple[bytes, bytes | None, bytes, bytes] | None:
        """(password, the user's hash or None, the hash to check, cache key), or None."""
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return None
        user, password = credentials
        stored = self._users.get(user) if user is not None else None
        hashed = self._dummy if stored is None else stored
        h = hashlib.sha256(self._salt)
        for part in ((user or "").encode(), hashed, password):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return password, stored, hashed, h.digest()


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # e.g. a password longer than bcrypt's 72 bytes
        return False


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


def parse_users(value: object) -> BasicAuth | None:
    """``basic_auth_users`` as read from YAML; ValueError names what is wrong, never a secret."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of user names to bcrypt hashes")
    users: dict[str, bytes] = {}
    for user, hashed in value.items():
        if not isinstance(user, str) or not user:
            raise ValueError(f"user name {user!r} must be a non-empty string (quote it)")
        if ":" in user:
            raise ValueError(f"user name {user!r} must not contain ':'")
        m = _BCRYPT_RE.fullmatch(hashed) if isinstance(hashed, str) else None
        if m is None or not 4 <= int(m.group(1)) <= 31:
            # Never echo the value: it may be a password written in clear by mistake.
            raise ValueError(f"the password of user {user!r} is not a bcrypt hash (make one"
                             f" with: {HTPASSWD_HINT})")
        assert isinstance(hashed, str)
        users[user] = hashed.encode()
    return BasicAuth(users) if users else None


class RateLimit:
    """A token bucket per client: ``burst`` requests at once, then one per ``interval``.

    exporter-toolkit keeps one bucket for the whole server. Here every client address (an
    IPv6 client by its /64) has its own, checked before authentication: a client flooding
    bad credentials empties only its own bucket (and costs bcrypt at most ``burst`` runs
    plus one per interval), while Prometheus keeps its own. At most :data:`CLIENTS` buckets
    are kept; the least recently seen is dropped first.
    """

    def __init__(self, interval: float, burst: int, clients: int = CLIENTS) -> None:
        self.interval = interval
        self.burst = burst
        self._clients = clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        """Take a token from ``client``'s bucket; False when it is empty."""
        key = _client_key(client)
        with self._lock:
            now = time.monotonic()
            tokens, at = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) / self.interval)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > self._clients:
                self._buckets.popitem(last=False)
            return allowed


def _client_key(client: str) -> str:
    try:
        address = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
