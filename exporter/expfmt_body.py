"""An HTTP answer's body, as the parser reads it: decoded a slice at a time, and without a
last line that was cut off in transit."""

from __future__ import annotations

import codecs

from exporter.expfmt import Exposition, Parser
from exporter.expfmt_state import MAX_LINE, Keep

__all__ = ["decode", "parse_body", "release"]

_SLICE = 2000
"""Samples freed at a time by :func:`release`."""


def decode(body: bytes) -> str:
    """``body`` as UTF-8 with replacement characters, decoded a slice at a time so that a
    large body does not hold the interpreter in one call."""
    if len(body) <= MAX_LINE:
        return body.decode("utf-8", "replace")
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    view = memoryview(body)
    parts = [decoder.decode(view[i:i + MAX_LINE]) for i in range(0, len(body), MAX_LINE)]
    parts.append(decoder.decode(b"", True))
    return "".join(parts)


def parse_body(parser: Parser, body: bytes, keep: Keep | None = None) -> Exposition:
    """Parse an HTTP answer's body with ``parser``. The format ends every line with a
    newline: a last line without one was cut off in transit (a value may have lost digits),
    so it is counted as malformed rather than read."""
    end = body.rfind(b"\n") + 1
    exp = parser.parse(decode(body if end == len(body) else body[:end]), keep)
    if end < len(body):
        exp.errors += 1
        if len(exp.first_errors) < 5:
            exp.first_errors.append(f"the last line has no newline, {len(body) - end}"
                                    " bytes cut off: skipped")
    return exp


def release(exp: Exposition) -> None:
    """Free ``exp``'s samples a slice at a time. Dropping a large exposition in one go is
    one long C call (30,000 samples: about 10 ms) that holds the interpreter, and so every
    scrape, for its whole length."""
    for family in exp.families:
        samples = family.samples
        while len(samples) > _SLICE:
            del samples[-_SLICE:]
        samples.clear()
    exp.families.clear()
    exp.by_family.clear()
