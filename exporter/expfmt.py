"""A strict, fast parser for the Prometheus text exposition format (version 0.0.4).

Malformed lines are skipped and counted rather than failing the whole payload, so one bad
line from an upstream engine never hides the rest of its metrics. What is accepted follows
the reference (Go) parser: metric and label names by the legacy character set, quoted label
values with the three escapes ``\\\\``, ``\\"`` and ``\\n``, a float value and an optional
integer timestamp in milliseconds.

Speed comes from working line by line with ``str`` methods and from caching what repeats
between polls of the same endpoint: label strings and metric names. A :class:`Parser` keeps
those caches; :func:`parse` uses a throwaway one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["Exposition", "Family", "Parser", "Sample", "parse"]

Labels = Mapping[str, str]
# (sample name, labels, value, timestamp in ms or None). Plain tuples: cheapest to build.
Sample = tuple[str, Labels, float, int | None]

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_LABEL_VALUE = r'"((?:[^"\\\n]|\\[\\"n])*)"'
_PAIR = rf"[ \t]*({_LABEL_NAME})[ \t]*=[ \t]*{_LABEL_VALUE}[ \t]*"
_LABELS_RE = re.compile(rf"(?:{_PAIR},)*(?:{_PAIR})?[ \t]*")
_PAIR_RE = re.compile(_PAIR)
_UNESCAPE_RE = re.compile(r"\\([\\\"n])")
_HELP_UNESCAPE_RE = re.compile(r"\\([\\n])")
_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
_SUFFIXES = {
    "counter": ("",),
    "gauge": ("",),
    "untyped": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
_EMPTY: Labels = {}
_CACHE_LIMIT = 50_000


def _unescape(match: re.Match[str]) -> str:
    char = match.group(1)
    return "\n" if char == "n" else char


class ParseError(ValueError):
    """One line could not be parsed."""


@dataclass(slots=True)
class Family:
    """A metric family: its samples in order, with the metadata given by HELP and TYPE."""

    name: str
    type: str = "untyped"
    help: str = ""
    samples: list[Sample] = field(default_factory=list)


@dataclass(slots=True)
class Exposition:
    """The result of parsing one payload."""

    families: list[Family]
    samples: dict[str, list[Sample]]
    """Every sample by its sample name (``x_bucket``, ``x_total``...), in order."""
    errors: int = 0
    """How many lines were malformed and skipped."""
    first_errors: list[str] = field(default_factory=list)
    """The first few error messages, for logs."""

    def get(self, name: str) -> list[Sample]:
        """The samples named ``name``, or an empty list."""
        return self.samples.get(name, [])


class Parser:
    """Parses expositions, caching label strings and names seen in earlier payloads."""

    def __init__(self) -> None:
        self._labels: dict[str, Labels] = {}
        self._names: set[str] = set()

    def parse(self, text: str, keep: Callable[[str], bool] | None = None) -> Exposition:
        """Parse ``text``; with ``keep``, families whose name it rejects are skipped unparsed.

        Skipped families still have their TYPE and HELP lines checked, not their samples.
        """
        families: list[Family] = []
        by_name: dict[str, list[Sample]] = {}
        typed: dict[str, Family] = {}
        errors: list[str] = []
        nerrors = 0
        family: Family | None = None
        allowed: tuple[str, ...] = ()
        skipping = False
        label_cache = self._labels
        names = self._names
        if len(label_cache) > _CACHE_LIMIT:
            label_cache.clear()
        if len(names) > _CACHE_LIMIT:
            names.clear()

        for lineno, line in enumerate(text.split("\n"), 1):
            if not line:
                continue
            if line[0] in " \t\r":
                line = line.strip()
                if not line:
                    continue
            try:
                if line[0] == "#":
                    meta = self._comment(line)
                    if meta is None:
                        continue
                    kind, name, arg = meta
                    if family is None or family.name != name:
                        if name in typed:
                            raise ParseError(f"{kind} line for {name} apart from its family")
                        family = Family(name)
                        typed[name] = family
                        families.append(family)
                        skipping = keep is not None and not keep(name)
                    if kind == "TYPE":
                        if family.samples:
                            raise ParseError(f"TYPE line for {name} after its samples")
                        if family.type != "untyped":
                            raise ParseError(f"second TYPE line for {name}")
                        family.type = arg
                        allowed = tuple(name + s for s in _SUFFIXES[arg])
                    else:
                        if family.help:
                            raise ParseError(f"second HELP line for {name}")
                        family.help = arg
                        if family.type == "untyped":
                            allowed = (name,)
                    continue

                brace = line.find("{")
                if brace == -1:
                    parts = line.split()
                    name = parts[0]
                    labels = _EMPTY
                    rest = parts[1:]
                else:
                    close = line.rfind("}")
                    if close < brace:
                        raise ParseError("unclosed label set")
                    name = line[:brace].rstrip()
                    raw = line[brace + 1 : close]
                    cached = label_cache.get(raw)
                    if cached is None:
                        cached = _parse_labels(raw)
                        label_cache[raw] = cached
                    labels = cached
                    tail = line[close + 1 :]
                    if tail[:1] not in (" ", "\t"):
                        raise ParseError("no space after label set")
                    rest = tail.split()

                if not rest or len(rest) > 2:
                    raise ParseError("expected a value and an optional timestamp")
                value = _float(rest[0])
                timestamp = None
                if len(rest) == 2:
                    if not _is_int(rest[1]):
                        raise ParseError(f"invalid timestamp {rest[1]!r}")
                    timestamp = int(rest[1])
                if name not in names:
                    _check_name(name)
                    names.add(name)
                if name not in allowed:
                    # A sample outside the current family starts an untyped family of its own.
                    if name in typed:
                        raise ParseError(f"samples of {name} are not grouped together")
                    family = Family(name)
                    typed[name] = family
                    families.append(family)
                    skipping = keep is not None and not keep(name)
                    allowed = (name,)
                if skipping:
                    continue
                sample: Sample = (name, labels, value, timestamp)
                assert family is not None
                family.samples.append(sample)
                bucket = by_name.get(name)
                if bucket is None:
                    by_name[name] = [sample]
                else:
                    bucket.append(sample)
            except (ParseError, ValueError, IndexError) as exc:
                nerrors += 1
                if len(errors) < 5:
                    errors.append(f"line {lineno}: {exc}: {line[:120]!r}")
        return Exposition(families, by_name, nerrors, errors)

    @staticmethod
    def _comment(line: str) -> tuple[str, str, str] | None:
        """Split a ``# HELP`` or ``# TYPE`` line; None for any other comment."""
        body = line[1:].lstrip(" \t")
        kind = body[:4]
        if kind not in ("HELP", "TYPE") or (len(body) > 4 and body[4] not in " \t"):
            return None
        parts = body[4:].lstrip(" \t")
        name, _, arg = parts.partition(" ")
        if not name:
            raise ParseError(f"{kind} line without a metric name")
        _check_name(name)
        if kind == "TYPE":
            arg = arg.strip()
            if arg not in _TYPES:
                raise ParseError(f"unknown metric type {arg!r}")
        elif "\\" in arg:
            arg = _HELP_UNESCAPE_RE.sub(_unescape, arg)
        return kind, name, arg


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ParseError(f"invalid metric name {name!r}")


def _parse_labels(raw: str) -> Labels:
    if not _LABELS_RE.fullmatch(raw):
        raise ParseError("invalid label set")
    labels: dict[str, str] = {}
    for match in _PAIR_RE.finditer(raw):
        key, value = match.group(1), match.group(2)
        if key in labels:
            raise ParseError(f"duplicate label {key!r}")
        labels[key] = _UNESCAPE_RE.sub(_unescape, value) if "\\" in value else value
    return labels


def _is_int(text: str) -> bool:
    body = text[1:] if text[:1] in "+-" else text
    return body.isascii() and body.isdigit()


def _float(text: str) -> float:
    if "_" in text or not text.isascii():
        raise ParseError(f"invalid value {text!r}")
    return float(text)


def parse(text: str, keep: Callable[[str], bool] | None = None) -> Exposition:
    """Parse one payload with no cache carried over."""
    return Parser().parse(text, keep)
