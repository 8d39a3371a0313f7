"""The validity dates of a PEM certificate, read from its DER encoding.

Python's ``ssl`` module loads certificates but offers no public way to read a file's dates,
and ``cryptography`` is not a runtime dependency: this walks just enough DER (RFC 5280):
Certificate SEQUENCE -> tbsCertificate SEQUENCE -> [0] version (optional), serialNumber,
signature, issuer, validity SEQUENCE { notBefore, notAfter }.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta

__all__ = ["expiry_note", "validity"]

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)
_SEQUENCE, _INTEGER, _UTC_TIME, _GENERALIZED_TIME, _VERSION = 0x30, 0x02, 0x17, 0x18, 0xA0
SOON = timedelta(days=7)
"""A certificate expiring within this is worth a warning."""


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``at``."""
    if at + 2 > len(der):
        raise ValueError("truncated DER")
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or at + count > len(der):
            raise ValueError("bad DER length")
        length = int.from_bytes(der[at:at + count], "big")
        at += count
    if at + length > len(der):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _time(tag: int, text: bytes) -> datetime:
    raw = text.decode("ascii")
    if not raw.endswith("Z"):
        raise ValueError("a certificate time must be in UTC (end in Z)")
    if tag == _UTC_TIME:  # YYMMDDHHMMSSZ; years 50-99 are 19xx (RFC 5280 4.1.2.5.1)
        year = int(raw[:2])
        raw = f"{1900 + year if year >= 50 else 2000 + year}{raw[2:]}"
    elif tag != _GENERALIZED_TIME:
        raise ValueError("notAfter is not a UTCTime or GeneralizedTime")
    return datetime.strptime(raw[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)


def validity(pem: bytes) -> tuple[datetime, datetime]:
    """(notBefore, notAfter) of the first certificate in ``pem``; ValueError if there is none
    or it cannot be read."""
    found = _PEM.search(pem)
    if found is None:
        raise ValueError("no PEM certificate")
    try:
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
    except binascii.Error:
        raise ValueError("the PEM certificate is not valid base64") from None
    tag, start, _ = _element(der, 0)  # Certificate
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    tag, at, end = _element(der, start)  # tbsCertificate
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    fields: list[tuple[int, int, int]] = []
    while at < end and len(fields) < 5:
        tag, start, stop = _element(der, at)
        if not (tag == _VERSION and not fields):
            fields.append((tag, start, stop))
        at = stop
    if len(fields) < 4 or fields[0][0] != _INTEGER or fields[3][0] != _SEQUENCE:
        raise ValueError("not a certificate")
    _, at, end = fields[3]  # validity
    times: list[datetime] = []
    for _ in range(2):
        tag, start, stop = _element(der, at)
        times.append(_time(tag, der[start:stop]))
        at = stop
    return times[0], times[1]


def expiry_note(pem: bytes, what: str, now: datetime | None = None) -> str | None:
    """A warning for a certificate that has expired, is not valid yet or expires soon."""
    try:
        not_before, not_after = validity(pem)
    except ValueError:
        return None  # ssl loaded it: a form this reader does not know, no warning
    now = now or datetime.now(UTC)
    day = "%Y-%m-%d %H:%M:%S UTC"
    if not_after <= now:
        return f"{what}: the server certificate expired on {not_after.strftime(day)}"
    if not_before > now:
        return f"{what}: the server certificate is not valid before {not_before.strftime(day)}"
    if not_after - now <= SOON:
        return f"{what}: the server certificate expires within 7 days, on" \
               f" {not_after.strftime(day)}"
    return None
