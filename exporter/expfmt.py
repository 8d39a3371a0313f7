"""A strict, fast parser for the Prometheus text exposition format (version 0.0.4).

Malformed lines are skipped and counted rather than failing the whole payload, so one bad
line from an upstream engine never hides the rest of its metrics. What is accepted follows
the reference (Go) parser: metric and label names by the legacy character set (``__name__``
is reserved), quoted label values with the three escapes ``\\\\``, ``\\"`` and ``\\n``, a
float value and an optional integer timestamp in milliseconds. Stricter than it: a counter,
a histogram's buckets and count and a summary's count must not be negative or NaN.

Speed comes from working line by line with ``str`` methods and from caching what repeats
between polls of the same endpoint: label strings and metric names. A :class:`Parser` keeps
those caches, within :data:`CACHE_BUDGET` bytes; :func:`parse` uses a throwaway one.

No payload can hold the interpreter for long: no single ``str`` or regex call covers more
than :data:`MAX_LINE` characters, lines longer than that are malformed and skipped, and the
work grows linearly with the payload, however many of its lines are malformed.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import cast

from exporter.bounded import BoundedDict, Budget, strsize
from exporter.expfmt_lines import (
    SAMPLE_RE,
    Labels,
    Names,
    ParseError,
    help_and_type,
    split_comment,
)
from exporter.expfmt_state import (
    MAX_LINE,
    Allowed,
    Exposition,
    Family,
    Header,
    Keep,
    Layout,
    Meta,
    Sample,
    State,
    Take,
    line_end,
    sample_taker,
    take_values,
)

__all__ = ["CACHE_BUDGET", "MAX_LINE", "Exposition", "Family", "Layout", "ParseError",
           "Parser", "Sample", "parse"]

CACHE_BUDGET = 4 * 1024 * 1024
"""Bytes (estimated) that one :class:`Parser`'s caches may hold; over it they are emptied.
A 4-engine vLLM exposition (148 KiB) needs about 1 MiB."""

_SUFFIXES = {
    "counter": ("",), "gauge": ("",), "untyped": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
_NON_NEGATIVE = {"counter": ("",), "histogram": ("_bucket", "_count"), "summary": ("_count",)}
_EMPTY: Labels = {}
_HEAD = 160
"""Bytes of a ``_heads`` entry beyond its key's characters."""


class Parser:
    """Parses expositions, caching label strings and names seen in earlier payloads.

    The caches are this parser's own (one endpoint's junk cannot evict another's entries)
    and share one byte budget, :data:`CACHE_BUDGET` unless given.
    """

    def __init__(self, cache_budget: int = CACHE_BUDGET) -> None:
        self._budget = budget = Budget(cache_budget)
        self._labels: BoundedDict[str, Labels] = BoundedDict(budget)
        self._heads: BoundedDict[str, tuple[str, Labels]] = BoundedDict(budget)
        """``name{labels}`` as written in earlier payloads -> (name, labels)."""
        self._headers: BoundedDict[str, Header] = BoundedDict(budget)
        """HELP and TYPE lines of a family -> what starting it means, for ``_headers_keep``."""
        self._headers_keep: Keep | None = None
        self._names: Names = BoundedDict(budget)
        """Valid metric names (of samples, and in HELP and TYPE lines)."""
        self._label_names: Names = BoundedDict(budget)
        self._layouts: BoundedDict[tuple[str, ...], Layout] = BoundedDict(budget)
        """Per family (by the sample names it allows), the layout of its last sample block."""
        self._comments: BoundedDict[str, Meta] = BoundedDict(budget)
        self._allowed: BoundedDict[tuple[str, str], Allowed] = BoundedDict(budget)
        self._prefix_free: BoundedDict[tuple[frozenset[str], str], bool] = BoundedDict(budget)
        self._needles: BoundedDict[tuple[str, ...], tuple[str, ...]] = BoundedDict(budget)

    def cache_bytes(self) -> int:
        """Bytes (estimated) charged to the caches since they were last emptied."""
        return self._budget.used

    def comment(self, line: str) -> Meta:
        """Split a ``# HELP`` or ``# TYPE`` line; None for any other comment.

        The same lines come back at every poll of an endpoint, so the answers are cached.
        """
        try:
            return self._comments[line]
        except KeyError:
            pass
        meta = split_comment(line, self._names)
        return self._comments.put(line, meta, 2 * strsize(line) + 150)

    def allowed(self, name: str, kind: str) -> Allowed:
        """The sample names a family of that type may have, and those not negative."""
        key = (name, kind)
        allowed = self._allowed.get(key)
        if allowed is None:
            allowed = (tuple([name + s for s in _SUFFIXES[kind]]),
                       tuple([name + s for s in _NON_NEGATIVE.get(kind, ())]))
            self._allowed.put(key, allowed, 6 * strsize(name) + 250)
        return allowed

    def prefix_free(self, keep: AbstractSet[str], name: str) -> bool:
        """Whether no wanted family name begins with ``name``.

        Then a block whose every line begins with ``name`` holds nothing wanted, whichever
        families its lines belong to, and can be skipped after one count.
        """
        if not isinstance(keep, frozenset):
            return not any(k.startswith(name) for k in keep)
        key = (keep, name)
        free = self._prefix_free.get(key)
        if free is None:
            free = not any(k.startswith(name) for k in keep)
            self._prefix_free.put(key, free, strsize(name) + 100)
        return free

    def _all_start_with(self, text: str, start: int, end: int, names: tuple[str, ...]) -> int:
        """How many lines of ``text[start:end]`` begin with one of ``names`` then '{' or ' '.

        Counted with ``str.count`` so that skipping a family costs next to nothing.
        """
        if start == 0 or text[start - 1] != "\n":
            return -1
        needles = self._needles.get(names)
        if needles is None:
            needles = tuple(f"\n{name}{c}" for name in names for c in "{ ")
            self._needles.put(names, needles, sum(map(strsize, needles)) + 100)
        count = 0
        for needle in needles:
            count += text.count(needle, start - 1, end)
        return count

    def _typed_family(self, st: State, text: str, pos: int, end: int) -> int:
        """Start a new family from its HELP line (``text[pos:end]``) and the TYPE line after
        it, in one step; where the parse goes on, or -1 to take the lines one by one."""
        n = len(text)
        after = text.find("\n", end + 1, end + MAX_LINE + 2)
        if after < 0:
            if n - end - 1 > MAX_LINE:
                return -1  # a TYPE line too long: counted as such on the way line by line
            after = n
        lines = text[pos:after]
        header = self._headers.get(lines)
        if header is None:
            if not lines.startswith("# HELP "):
                return -1
            header = self._header(lines, st)
        template, allowed, skipping, prefix = header
        if template is None or template.name in st.typed:
            return -1
        family = st.family = Family(template.name, template.type, template.help)
        (st.allowed, st.nonneg), st.skipping, st.skip_prefix = allowed, skipping, prefix
        st.typed[family.name] = family
        st.families.append(family)
        pos = after + 1
        if prefix and pos < n:
            # Unwanted, and nothing wanted begins with its name: if every line up to the next
            # family begins with it, skip them all (a comment line in between makes the
            # counts differ). Looked for within MAX_LINE; the block loop goes on from there.
            nxt = text.find("\n# HELP ", pos, pos + MAX_LINE)
            if nxt < 0 and n - pos > MAX_LINE:
                return pos
            stop = n if nxt < 0 else nxt + 1
            if text.count(prefix, after, stop) == text.count("\n", after, stop - 1):
                return stop
        return pos

    def _header(self, lines: str, st: State) -> Header:
        """What the HELP and TYPE ``lines`` of a family start, given ``keep``."""
        meta = help_and_type(lines, self._names)
        if meta is None:
            header: Header = (None, ((), ()), False, "")
        else:
            name, kind, help_text = meta
            header = (Family(name, kind, help_text), self.allowed(name, kind),
                      *st.skip_rule(name))
        return self._headers.put(lines, header, 2 * strsize(lines) + 500)

    def _too_long(self, st: State, text: str, pos: int) -> int:
        """Count the over-long line at ``pos`` as malformed; where the next line starts."""
        st.error(ParseError(f"line longer than {MAX_LINE} characters"), pos, text[pos:pos + 120])
        return line_end(text, pos) + 1

    def parse(self, text: str, keep: Keep | None = None) -> Exposition:
        """Parse ``text``; with ``keep``, families whose name it rejects are skipped unparsed.

        Skipped families still have their TYPE and HELP lines checked, not their samples.
        """
        st = State(self, text, keep)
        if keep is not self._headers_keep:
            self._headers.clear()
            self._headers_keep = keep
        take = self._taker(st)
        # The hot loop: one pass over comment lines and sample blocks, the common cases
        # inline; a block that no fast path takes goes to _slow_block.
        pos, n = 0, len(text)
        while pos < n:
            if text[pos] == "#":
                end = text.find("\n", pos, pos + MAX_LINE + 1)
                if end < 0:
                    if n - pos > MAX_LINE:
                        pos = self._too_long(st, text, pos)
                        continue
                    end = n
                if text.startswith("# TYPE ", end + 1):
                    taken = self._typed_family(st, text, pos, end)
                    if taken >= 0:
                        pos = taken
                        continue
                st.comment(text[pos:end], pos)
                pos = end + 1
                continue
            # A block of sample lines runs up to the next comment line; cut at a newline
            # to MAX_LINE characters at most.
            stop = pos + MAX_LINE + 1
            nxt = text.find("\n#", pos, stop)
            if nxt >= 0:
                end = nxt + 1
            elif n - pos <= MAX_LINE:
                end = n
            else:
                end = text.rfind("\n", pos, stop) + 1
                if end == 0:
                    pos = self._too_long(st, text, pos)
                    continue
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
                elif self._all_start_with(text, block_start, end, st.allowed) == nlines:
                    continue
            self._slow_block(st, text, block_start, end, nlines, take)
        return Exposition(st.families, st.typed, st.nerrors, st.errors)

    def _taker(self, st: State) -> Take:
        """The step that takes one sample line of this parse (see :func:`sample_taker`)."""
        return sample_taker(st, self._labels, self._label_names, self._names, self._budget)

    def _slow_block(self, st: State, text: str, start: int, end: int, nlines: int,
                    take: Take) -> None:
        """Take the sample block ``text[start:end]`` that the warm and skip paths did not:
        from one regex pass when every line has the shape of a sample, else line by line
        (blank lines, comments and malformed lines among the samples)."""
        matches = SAMPLE_RE.findall(text, start, end)
        if len(matches) == nlines:
            if self._columns(st, matches):
                return
            # Every line has the shape of a sample (one match per line, in order): take
            # them straight from the regex.
            for index, (name, raw, v, ts) in enumerate(matches):
                try:
                    take(name, raw, v, ts)
                except (ParseError, ValueError) as exc:
                    head = f"{name}{{{raw}}}" if raw else name
                    st.error(exc, start, f"{head} {v} {ts}".rstrip(), index)
            return
        for index, line in enumerate(text[start:end].split("\n")):
            line = line.strip(" \t\r")
            if not line:
                continue
            try:
                if line[0] == "#":
                    st.comment(line, start, index)
                    continue
                m = SAMPLE_RE.match(line)
                if m is None:
                    raise ParseError("not a sample line")
                take(*m.groups(""))
            except (ParseError, ValueError) as exc:
                st.error(exc, start, line, index)

    def _columns(self, st: State, matches: list[tuple[str, str, str, str]]) -> bool:
        """Take a whole block of well-formed samples of the current family at once.

        Returns False, having taken nothing, when anything in the block needs the line by
        line path (a new name, a label set not seen before, a timestamp, an odd value).
        """
        names, raws, values, stamps = zip(*matches, strict=True)
        distinct = set(names)
        if not distinct.issubset(st.allowed) or not distinct <= self._names.keys():
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
        if not take_values(st, names, found, values):
            return False
        heads = self._heads
        new = {}
        for name, raw, lab in zip(names, raws, found, strict=True):
            head = f"{name}{{{raw}}}" if raw else name
            if head not in heads:
                new[head] = (name, lab)
        if new:
            self._budget.charge(sum(map(len, new)) + _HEAD * len(new))
            heads.update(new)
        return True

    def _warm(self, st: State, text: str, start: int, end: int, nlines: int) -> bool:
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
        known = self._layouts.get(st.allowed)
        layout = known
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
        if not take_values(st, layout.names, layout.labels, values):
            return False
        if whole:  # (_take_values has cleared it otherwise)
            family.layout = layout
            if layout is not known:
                cost = sum(map(len, heads)) + 80 * len(heads) + 200
                self._layouts.put(st.allowed, layout, cost)
        return True


def parse(text: str, keep: Keep | None = None) -> Exposition:
    """Parse one payload with no cache carried over."""
    return Parser().parse(text, keep)
