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
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import cast

__all__ = ["Exposition", "Family", "Layout", "Parser", "Sample", "parse"]

Labels = Mapping[str, str]
Keep = AbstractSet[str] | Callable[[str], bool]
"""Which families to read: a set of family names, or a predicate on them."""
# (sample name, labels, value, timestamp in ms or None). Plain tuples: cheapest to build.
Sample = tuple[str, Labels, float, int | None]

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_LABEL_VALUE = r'"((?:[^"\\\n]|\\[\\"n])*)"'
_PAIR = rf"[ \t]*({_LABEL_NAME})[ \t]*=[ \t]*{_LABEL_VALUE}[ \t]*"
_LABELS_RE = re.compile(rf"(?:{_PAIR},)*(?:{_PAIR})?[ \t]*")
_PAIR_RE = re.compile(_PAIR)
# A sample line: name, optional label set (up to the last '}'), value, optional timestamp.
_SAMPLE_RE = re.compile(
    r"^[ \t]*([^ \t\n{]+)[ \t]*(?:\{(.*)\})?[ \t]+([^ \t\n]+)(?:[ \t]+([^ \t\n]+))?[ \t\r]*$",
    re.MULTILINE,
)
_LABEL_NAME_RE = re.compile(_LABEL_NAME)
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
    layout: Layout | None = None
    """Set when the samples, name for name and label set for label set, are those the
    parser read for this family before: then the same object as that time, so a consumer
    may reuse what it worked out from the samples' names and labels (only values are new).
    """


@dataclass(frozen=True, slots=True, eq=False)
class Layout:
    """The sample lines of a family as written, less their values: compared by identity."""

    heads: tuple[str, ...]
    """Each line up to its last space (``name{labels}``)."""
    names: tuple[str, ...]
    labels: tuple[Labels, ...]


@dataclass(slots=True)
class Exposition:
    """The result of parsing one payload."""

    families: list[Family]
    by_family: dict[str, Family]
    """Each family by the name its TYPE/HELP lines (or first sample) gave it."""
    errors: int = 0
    """How many lines were malformed and skipped."""
    first_errors: list[str] = field(default_factory=list)
    """The first few error messages, for logs."""

    def get(self, name: str) -> list[Sample]:
        """The samples named ``name`` (``x``, ``x_bucket``, ``x_total``...), in order."""
        family = self.by_family.get(name)
        if family is not None and family.type in ("gauge", "counter", "untyped"):
            return family.samples
        if family is None:
            base, _, suffix = name.rpartition("_")
            family = self.by_family.get(base) if suffix in ("bucket", "sum", "count") else None
        if family is None:
            return []
        return [s for s in family.samples if s[0] == name]


class _State:
    """Where a parse stands: the current family and what has been seen."""

    __slots__ = ("allowed", "errors", "families", "family", "keep", "keep_set", "nerrors",
                 "skip_prefix", "skipping", "typed")

    def __init__(self, keep: Keep | None) -> None:
        self.keep = keep
        self.keep_set = keep if isinstance(keep, AbstractSet) else None
        self.skip_prefix = ""
        """While skipping a family that no wanted name begins with: newline + its name."""
        self.families: list[Family] = []
        self.typed: dict[str, Family] = {}
        self.errors: list[str] = []
        self.nerrors = 0
        self.family: Family | None = None
        self.allowed: tuple[str, ...] = ()
        self.skipping = False

    def error(self, exc: Exception, lineno: int, line: str, where: str = "") -> None:
        self.nerrors += 1
        if len(self.errors) < 5:
            self.errors.append(f"{where}line {lineno}: {exc}: {line[:120]!r}")

    def _start(self, name: str) -> Family:
        family = Family(name)
        self.typed[name] = family
        self.families.append(family)
        self.family = family
        self.skipping, self.skip_prefix = self.skip_rule(name)
        return family

    def skip_rule(self, name: str) -> tuple[bool, str]:
        """Whether family ``name`` is skipped, and newline + its name when nothing wanted
        begins with that name (then its block may be skipped after a count)."""
        keep, keep_set = self.keep, self.keep_set
        if keep is None:
            return False, ""
        if keep_set is not None:
            if name in keep_set:
                return False, ""
            return True, "\n" + name if _prefix_free(keep_set, name) else ""
        return not keep(name), ""  # type: ignore[operator]

    def new_untyped(self, name: str) -> None:
        """A sample outside the current family starts an untyped family of its own."""
        if name in self.typed:
            raise ParseError(f"samples of {name} are not grouped together")
        self._start(name)
        self.allowed = (name,)

    def comment(self, line: str, pos: int, text: str) -> None:
        try:
            meta = _comment(line)
            if meta is None:
                return
            kind, name, arg = meta
            family = self.family
            if family is None or family.name != name:
                if name in self.typed:
                    raise ParseError(f"{kind} line for {name} apart from its family")
                family = self._start(name)
            if kind == "TYPE":
                if family.samples:
                    raise ParseError(f"TYPE line for {name} after its samples")
                if family.type != "untyped":
                    raise ParseError(f"second TYPE line for {name}")
                family.type = arg
                self.allowed = _allowed(name, arg)
            else:
                if family.help:
                    raise ParseError(f"second HELP line for {name}")
                family.help = arg
                if family.type == "untyped":
                    self.allowed = (name,)
        except ParseError as exc:
            self.error(exc, text.count("\n", 0, pos) + 1 if pos >= 0 else 0, line)


_allowed_cache: dict[tuple[str, str], tuple[str, ...]] = {}


def _allowed(name: str, kind: str) -> tuple[str, ...]:
    """The sample names a family of that type may have."""
    key = (name, kind)
    allowed = _allowed_cache.get(key)
    if allowed is None:
        allowed = tuple(name + s for s in _SUFFIXES[kind])
        if len(_allowed_cache) < _CACHE_LIMIT:
            _allowed_cache[key] = allowed
    return allowed


_prefix_free_cache: dict[tuple[frozenset[str], str], bool] = {}


def _prefix_free(keep: AbstractSet[str], name: str) -> bool:
    """Whether no wanted family name begins with ``name``.

    Then a block whose every line begins with ``name`` holds nothing wanted, whichever
    families its lines belong to, and can be skipped after one count.
    """
    if not isinstance(keep, frozenset):
        return not any(k.startswith(name) for k in keep)
    key = (keep, name)
    free = _prefix_free_cache.get(key)
    if free is None:
        free = not any(k.startswith(name) for k in keep)
        if len(_prefix_free_cache) < _CACHE_LIMIT:
            _prefix_free_cache[key] = free
    return free


_needles: dict[tuple[str, ...], tuple[str, ...]] = {}


def _all_start_with(text: str, start: int, end: int, names: tuple[str, ...]) -> int:
    """How many lines of ``text[start:end]`` begin with one of ``names`` then '{' or ' '.

    Counted with ``str.count`` so that skipping a family costs next to nothing.
    """
    if start == 0 or text[start - 1] != "\n":
        return -1
    needles = _needles.get(names)
    if needles is None:
        needles = tuple(f"\n{name}{c}" for name in names for c in "{ ")
        if len(_needles) < _CACHE_LIMIT:
            _needles[names] = needles
    count = 0
    for needle in needles:
        count += text.count(needle, start - 1, end)
    return count


_Header = tuple["Family | None", tuple[str, ...], bool, str]


class Parser:
    """Parses expositions, caching label strings and names seen in earlier payloads."""

    def __init__(self) -> None:
        self._labels: dict[str, Labels] = {}
        self._heads: dict[str, tuple[str, Labels]] = {}
        """``name{labels}`` as written in earlier payloads -> (name, labels)."""
        self._headers: dict[str, _Header] = {}
        """HELP and TYPE lines of a family -> what starting it means, for ``_headers_keep``."""
        self._headers_keep: Keep | None = None
        self._names: set[str] = set()
        self._layouts: dict[tuple[str, ...], Layout] = {}
        """Per family (by the sample names it allows), the layout of its last sample block."""

    def _typed_family(self, st: _State, text: str, pos: int, end: int) -> int:
        """Start a new family from its HELP line (``text[pos:end]``) and the TYPE line after
        it, in one step; where the parse goes on, or -1 to take the lines one by one."""
        n = len(text)
        after = text.find("\n", end + 1)
        after = n if after < 0 else after
        header = self._headers.get(text[pos:after]) or self._header(text[pos:after], st)
        template, allowed, skipping, prefix = header
        if template is None or template.name in st.typed:
            return -1
        family = st.family = Family(template.name, template.type, template.help)
        st.allowed, st.skipping, st.skip_prefix = allowed, skipping, prefix
        st.typed[family.name] = family
        st.families.append(family)
        pos = after + 1
        if prefix and pos < n:
            # Unwanted, and nothing wanted begins with its name: if every line up to the next
            # family begins with it, skip them all (a comment line in between makes the
            # counts differ).
            nxt = text.find("\n# HELP ", pos)
            end = n if nxt < 0 else nxt + 1
            if text.count(prefix, after, end) == text.count("\n", after, end - 1):
                return end
        return pos

    def _header(self, lines: str, st: _State) -> _Header:
        """What the HELP and TYPE ``lines`` of a family start, given ``keep``:
        (a template family or None when the lines are not a valid pair, sample names allowed,
        whether it is skipped, and newline + name when its block may be skipped by count)."""
        meta = _help_and_type(lines)
        if meta is None:
            header: _Header = (None, (), False, "")
        else:
            name, kind, help_text = meta
            header = (Family(name, kind, help_text), _allowed(name, kind), *st.skip_rule(name))
        if len(self._headers) >= _CACHE_LIMIT:
            self._headers.clear()
        self._headers[lines] = header
        return header

    def parse(self, text: str, keep: Keep | None = None) -> Exposition:
        """Parse ``text``; with ``keep``, families whose name it rejects are skipped unparsed.

        Skipped families still have their TYPE and HELP lines checked, not their samples.
        """
        st = _State(keep)
        if keep is not self._headers_keep:
            self._headers.clear()
            self._headers_keep = keep
        label_cache = self._labels
        names = self._names
        if len(label_cache) > _CACHE_LIMIT:
            label_cache.clear()
            self._heads.clear()
            self._layouts.clear()
        if len(names) > _CACHE_LIMIT:
            names.clear()

        def take(name: str, raw: str, v: str, ts: str) -> None:
            """One sample line, split by _SAMPLE_RE; raises ParseError or ValueError."""
            if st.skipping and name in st.allowed:
                return
            if raw:
                labels = label_cache.get(raw)
                if labels is None:
                    labels = _parse_labels(raw)
                    label_cache[raw] = labels
            else:
                labels = _EMPTY
            if "_" in v or not v.isascii():
                raise ParseError(f"invalid value {v!r}")
            value = float(v)
            timestamp = None
            if ts:
                if not _is_int(ts):
                    raise ParseError(f"invalid timestamp {ts!r}")
                timestamp = int(ts)
            if name not in names:
                _check_name(name)
                names.add(name)
            if name not in st.allowed:
                st.new_untyped(name)
            if st.skipping:
                return
            family = st.family
            assert family is not None
            family.layout = None
            family.samples.append((name, labels, value, timestamp))

        pos, n = 0, len(text)
        while pos < n:
            if text[pos] == "#":
                end = text.find("\n", pos)
                end = n if end < 0 else end
                if text.startswith("# TYPE ", end + 1):
                    taken = self._typed_family(st, text, pos, end)
                    if taken >= 0:
                        pos = taken
                        continue
                st.comment(text[pos:end], pos, text)
                pos = end + 1
                continue
            # A block of sample lines runs up to the next comment line.
            nxt = text.find("\n#", pos)
            end = n if nxt < 0 else nxt + 1
            block_start = pos
            pos = end
            nlines = text.count("\n", block_start, end)
            if end == n and text[-1] != "\n":
                nlines += 1
            if not st.skipping and self._warm(st, text, block_start, end, nlines):
                continue
            # A blank or odd line makes the counts below differ: then go line by line.
            if st.skipping:
                prefix = st.skip_prefix
                if prefix and block_start and text[block_start - 1] == "\n":
                    if text.count(prefix, block_start - 1, end) == nlines:
                        continue
                elif _all_start_with(text, block_start, end, st.allowed) == nlines:
                    continue
            matches = _SAMPLE_RE.findall(text, block_start, end)
            if len(matches) == nlines:
                if self._columns(st, matches):
                    continue
                # Every line has the shape of a sample: take them straight from the regex.
                for name, raw, v, ts in matches:
                    try:
                        take(name, raw, v, ts)
                    except (ParseError, ValueError) as exc:
                        lineno = text.count("\n", 0, block_start) + 1
                        st.error(exc, lineno, f"{name}{{{raw}}} {v} {ts}", "in the block at ")
                continue
            for index, line in enumerate(text[block_start:end].split("\n")):
                line = line.strip(" \t\r")
                if not line:
                    continue
                try:
                    if line[0] == "#":
                        st.comment(line, -1, text)
                        continue
                    m = _SAMPLE_RE.match(line)
                    if m is None:
                        raise ParseError("not a sample line")
                    take(*m.groups(""))
                except (ParseError, ValueError) as exc:
                    lineno = text.count("\n", 0, block_start) + index + 1
                    st.error(exc, lineno, line)
        return Exposition(st.families, st.typed, st.nerrors, st.errors)

    def _columns(self, st: _State, matches: list[tuple[str, str, str, str]]) -> bool:
        """Take a whole block of well-formed samples of the current family at once.

        Returns False, having taken nothing, when anything in the block needs the line by
        line path (a new name, a label set not seen before, a timestamp, an odd value).
        """
        names, raws, values, stamps = zip(*matches, strict=True)
        distinct = set(names)
        if not distinct.issubset(st.allowed) or not distinct.issubset(self._names):
            return False
        if st.skipping:
            return True
        if any(stamps):
            return False
        labels: list[Labels | None]
        if "" in raws:
            labels = [self._labels.get(r) if r else _EMPTY for r in raws]
        else:
            labels = list(map(self._labels.get, raws))
        if None in labels:
            return False
        found = cast(list[Labels], labels)
        if not _take_values(st, names, found, values):
            return False
        heads = self._heads
        for name, raw, lab in zip(names, raws, found, strict=True):
            heads[f"{name}{{{raw}}}" if raw else name] = (name, lab)
        return True

    def _warm(self, st: _State, text: str, start: int, end: int, nlines: int) -> bool:
        """Take a block whose every line is ``name{labels} value`` exactly as written in an
        earlier payload, so only the values are new: split at the last space, no regex. When
        the lines are the family's last block line for line, its layout is reused whole.

        Returns False, having taken nothing, when any line differs in any way.
        """
        first = text.find("\n", start, end)
        if text[start:end if first < 0 else first].rpartition(" ")[0] not in self._heads:
            return False  # not even the first line: a payload not seen before
        lines = text[start:end].split("\n")
        if lines[-1] == "":
            lines.pop()
        if len(lines) != nlines or not lines:
            return False
        heads, _, values = zip(*[line.rpartition(" ") for line in lines], strict=True)
        layout = self._layouts.get(st.allowed)
        if layout is None or layout.heads != heads:
            try:
                names, labels = zip(*map(self._heads.get, heads), strict=True)
            except TypeError:  # a line not seen before
                return False
            if not set(names).issubset(st.allowed):
                return False
            layout = Layout(heads, names, labels)
        family = st.family
        assert family is not None
        whole = not family.samples
        if not _take_values(st, layout.names, layout.labels, values):
            return False
        if whole:  # (_take_values has cleared it otherwise)
            family.layout = self._layouts[st.allowed] = layout
        if len(self._layouts) > _CACHE_LIMIT:
            self._layouts.clear()
        return True


def _take_values(st: _State, names: Sequence[str], labels: Sequence[Labels],
                 values: Sequence[str]) -> bool:
    """Append samples to the current family when every value is a valid float; else take
    nothing and return False (the caller goes line by line)."""
    joined = "".join(values)
    if "_" in joined or not joined.isascii():
        return False
    try:
        floats = list(map(float, values))
    except ValueError:
        return False
    family = st.family
    assert family is not None
    family.layout = None  # set again by the caller when the block is a known layout
    family.samples.extend(zip(names, labels, floats, (None,) * len(floats), strict=True))
    return True


_comments: dict[str, tuple[str, str, str] | None] = {}


def _comment(line: str) -> tuple[str, str, str] | None:
    """Split a ``# HELP`` or ``# TYPE`` line; None for any other comment.

    The same lines come back at every poll of an endpoint, so the answers are cached.
    """
    try:
        return _comments[line]
    except KeyError:
        pass
    meta = _split_comment(line)
    if len(_comments) >= _CACHE_LIMIT:
        _comments.clear()
    _comments[line] = meta
    return meta


def _help_and_type(lines: str) -> tuple[str, str, str] | None:
    """(name, type, help) when ``lines`` are a valid HELP line then the same family's TYPE
    line; None for anything else, which then takes the line by line path. (Parsers cache
    what this gives in ``Parser._headers``.)"""
    first, _, second = lines.partition("\n")
    meta = None
    try:
        help_meta, type_meta = _split_comment(first), _split_comment(second)
    except ParseError:
        help_meta = type_meta = None
    if help_meta is not None and type_meta is not None and help_meta[0] == "HELP" \
            and type_meta[0] == "TYPE" and help_meta[1] == type_meta[1]:
        meta = (help_meta[1], type_meta[2], help_meta[2])
    return meta


def _split_comment(line: str) -> tuple[str, str, str] | None:
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
    _check_name(name)
    if kind == "TYPE":
        arg = arg.strip()
        if arg not in _TYPES:
            raise ParseError(f"unknown metric type {arg!r}")
    elif "\\" in arg:
        arg = _HELP_UNESCAPE_RE.sub(_unescape, arg)
    return kind, name, arg


_valid_names: set[str] = set()


def _check_name(name: str) -> None:
    if name in _valid_names:
        return
    if not _NAME_RE.fullmatch(name):
        raise ParseError(f"invalid metric name {name!r}")
    if len(_valid_names) < _CACHE_LIMIT:
        _valid_names.add(name)


_label_names: set[str] = set()


def _parse_labels(raw: str) -> Labels:
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
                if key not in _label_names:
                    if not _LABEL_NAME_RE.fullmatch(key):
                        break
                    if len(_label_names) < _CACHE_LIMIT:
                        _label_names.add(key)
                if key in labels:
                    raise ParseError(f"duplicate label {key!r}")
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


def parse(text: str, keep: Keep | None = None) -> Exposition:
    """Parse one payload with no cache carried over."""
    return Parser().parse(text, keep)
