"""The grammar of single lines of the text exposition format, for :mod:`exporter.expfmt`.

Every regex here runs in time linear in its input: quantifiers that could share characters
with the next one (spaces around names, values and label pairs) are possessive, so a line
that almost matches is rejected without backtracking over each split of a run of spaces.
Functions that remember valid names take the cache to remember them in from their caller.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from exporter.bounded import BoundedDict, strsize

__all__ = ["SAMPLE_RE", "Labels", "ParseError", "check_name", "help_and_type", "is_int",
           "parse_labels", "split_comment"]

Labels = Mapping[str, str]
Names = BoundedDict[str, None]
"""Names (metric or label) already found valid."""

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*+"
_LABEL_VALUE = r'"((?:[^"\\\n]|\\[\\"n])*+)"'
_PAIR = rf"[ \t]*+({_LABEL_NAME})[ \t]*+=[ \t]*+{_LABEL_VALUE}[ \t]*+"
_LABELS_RE = re.compile(rf"(?:{_PAIR},)*(?:{_PAIR})?[ \t]*+")
_PAIR_RE = re.compile(_PAIR)
SAMPLE_RE = re.compile(
    r"^[ \t]*+([^ \t\n{]++)(?:[ \t]*+\{(.*)\})?[ \t]++([^ \t\n]++)(?:[ \t]++([^ \t\n]++))?"
    r"[ \t\r]*+$",
    re.MULTILINE,
)
"""A sample line: name, optional label set (up to the last '}'), value, optional timestamp."""
_LABEL_NAME_RE = re.compile(_LABEL_NAME)
_UNESCAPE_RE = re.compile(r"\\([\\\"n])")
_HELP_UNESCAPE_RE = re.compile(r"\\([\\n])")
_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
_RESERVED = "__name__"


class ParseError(ValueError):
    """One line could not be parsed."""


def snip(text: str) -> str:
    """``text`` quoted for an error message, cut to 40 characters."""
    return repr(text[:40]) + ("..." if len(text) > 40 else "")


def _unescape(match: re.Match[str]) -> str:
    char = match.group(1)
    return "\n" if char == "n" else char


def check_name(name: str, valid: Names) -> None:
    """Raise unless ``name`` is a valid metric name; valid ones are remembered in ``valid``."""
    if name in valid:
        return
    if not _NAME_RE.fullmatch(name):
        raise ParseError(f"invalid metric name {snip(name)}")
    valid.put(name, None, strsize(name))


def split_comment(line: str, valid: Names) -> tuple[str, str, str] | None:
    """(kind, name, argument) of a ``# HELP`` or ``# TYPE`` line; None for other comments."""
    if line.startswith(("# HELP ", "# TYPE ")):
        kind, parts = line[2:6], line[7:]
    else:
        body = line[1:].lstrip(" \t")
        kind = body[:4]
        if kind not in ("HELP", "TYPE") or (len(body) > 4 and body[4] not in " \t"):
            return None
        parts = body[4:].lstrip(" \t")
    name, _, arg = parts.partition(" ")
    if not name:
        raise ParseError(f"{kind} line without a metric name")
    check_name(name, valid)
    if kind == "TYPE":
        arg = arg.strip()
        if arg not in _TYPES:
            raise ParseError(f"unknown metric type {snip(arg)}")
    elif "\\" in arg:
        arg = _HELP_UNESCAPE_RE.sub(_unescape, arg)
    return kind, name, arg


def help_and_type(lines: str, valid: Names) -> tuple[str, str, str] | None:
    """(name, type, help) when ``lines`` are a valid HELP line then the same family's TYPE
    line; None for anything else, which then takes the line by line path."""
    first, _, second = lines.partition("\n")
    try:
        help_meta, type_meta = split_comment(first, valid), split_comment(second, valid)
    except ParseError:
        return None
    if help_meta is not None and type_meta is not None and help_meta[0] == "HELP" \
            and type_meta[0] == "TYPE" and help_meta[1] == type_meta[1]:
        return help_meta[1], type_meta[2], help_meta[2]
    return None


def parse_labels(raw: str, label_names: Names) -> Labels:
    """The label set inside ``{...}``; raises ParseError."""
    if "\\" not in raw:
        # Without backslashes every double quote is a delimiter, so '",' can only end a
        # pair: split on it, and fall back to the full grammar for anything unusual.
        body = raw[:-1] if raw.endswith(",") else raw
        if body.endswith('"'):
            labels: dict[str, str] = {}
            for part in body[:-1].split('",'):
                key, sep, value = part.partition('="')
                if not sep or '"' in value or "\n" in value:
                    break
                if key not in label_names:
                    if key == _RESERVED or not _LABEL_NAME_RE.fullmatch(key):
                        break
                    label_names.put(key, None, strsize(key))
                if key in labels:
                    raise ParseError(f"duplicate label {snip(key)}")
                labels[key] = value
            else:
                return labels
        elif not raw.strip(" \t"):
            return {}
    return _parse_labels_slow(raw)


def _parse_labels_slow(raw: str) -> Labels:
    if not _LABELS_RE.fullmatch(raw):
        raise ParseError("invalid label set")
    labels = {}
    for match in _PAIR_RE.finditer(raw):
        key, value = match.group(1), match.group(2)
        if key == _RESERVED:
            raise ParseError(f"label name {_RESERVED!r} is reserved")
        if key in labels:
            raise ParseError(f"duplicate label {snip(key)}")
        labels[key] = _UNESCAPE_RE.sub(_unescape, value) if "\\" in value else value
    return labels


def is_int(text: str) -> bool:
    """Whether ``text`` is an integer as Go's strconv.ParseInt reads it."""
    body = text[1:] if text[:1] in "+-" else text
    return body.isascii() and body.isdigit()
