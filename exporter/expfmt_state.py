"""The results of :mod:`exporter.expfmt` and the state of one parse: families, where the
parse stands, and how a block's values are taken once its lines are known."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exporter.bounded import BoundedDict, Budget, strsize
from exporter.expfmt_lines import Labels, Names, ParseError, check_name, is_int, parse_labels, snip

if TYPE_CHECKING:
    from exporter.expfmt import Parser

__all__ = ["MAX_LINE", "Allowed", "Exposition", "Family", "Header", "Keep", "Layout", "Meta",
           "Sample", "State", "Take", "line_end", "sample_taker", "take_values"]

Keep = AbstractSet[str] | Callable[[str], bool]
"""Which families to read: a set of family names, or a predicate on them."""
# (sample name, labels, value, timestamp in ms or None). Plain tuples: cheapest to build.
Sample = tuple[str, Labels, float, int | None]

MAX_LINE = 64 * 1024
"""The longest line read, in characters less its newline; a longer one is malformed. Also
the most that one ``str`` or regex call is given: sample blocks are cut at a newline to fit."""


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
    """The first few error messages, for logs (input quoted, 120 characters at most)."""

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


# What a family of a type allows: its sample names, and those that must not be negative.
Allowed = tuple[tuple[str, ...], tuple[str, ...]]
# What HELP and TYPE lines start: a template family (None when not a valid pair), what it
# allows, whether it is skipped, and newline + its name when its block may be skipped by count.
Header = tuple["Family | None", Allowed, bool, str]
Meta = tuple[str, str, str] | None


class State:
    """Where a parse stands: the current family and what has been seen."""

    __slots__ = ("allowed", "errors", "families", "family", "keep", "keep_set", "line_at",
                 "line_no", "nerrors", "nonneg", "parser", "skip_prefix", "skipping", "text",
                 "typed")

    def __init__(self, parser: Parser, text: str, keep: Keep | None) -> None:
        self.parser = parser
        self.text = text
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
        self.nonneg: tuple[str, ...] = ()
        """Sample names of the current family whose values must be >= 0 (not NaN)."""
        self.skipping = False
        self.line_at, self.line_no = 0, 1

    def error(self, exc: Exception, pos: int, line: str, index: int = 0) -> None:
        """Count a malformed line: the one at ``pos``, or ``index`` lines after it."""
        self.nerrors += 1
        if len(self.errors) < 5:
            msg = str(exc)
            msg = msg if len(msg) <= 100 else msg[:100] + "..."
            self.errors.append(f"line {self._lineno(pos) + index}: {msg}: {line[:120]!r}")

    def _lineno(self, pos: int) -> int:
        """The number of the line at ``pos``: newlines counted on from the last one asked
        (only the first few errors ask), a slice at a time."""
        if pos < self.line_at:
            self.line_at, self.line_no = 0, 1
        at, no, text = self.line_at, self.line_no, self.text
        while at < pos:
            stop = min(pos, at + MAX_LINE)
            no += text.count("\n", at, stop)
            at = stop
        self.line_at, self.line_no = at, no
        return no

    def start(self, name: str, allowed: Allowed) -> Family:
        family = Family(name)
        self.typed[name] = family
        self.families.append(family)
        self.family = family
        self.allowed, self.nonneg = allowed
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
            return True, "\n" + name if self.parser.prefix_free(keep_set, name) else ""
        return not keep(name), ""  # type: ignore[operator]

    def new_untyped(self, name: str) -> None:
        """A sample outside the current family starts an untyped family of its own."""
        if name in self.typed:
            raise ParseError(f"samples of {name} are not grouped together")
        self.start(name, ((name,), ()))

    def comment(self, line: str, pos: int, index: int = 0) -> None:
        try:
            meta = self.parser.comment(line)
            if meta is None:
                return
            kind, name, arg = meta
            family = self.family
            if family is None or family.name != name:
                if name in self.typed:
                    raise ParseError(f"{kind} line for {name} apart from its family")
                family = self.start(name, ((name,), ()))
            if kind == "TYPE":
                if family.samples:
                    raise ParseError(f"TYPE line for {name} after its samples")
                if family.type != "untyped":
                    raise ParseError(f"second TYPE line for {name}")
                family.type = arg
                self.allowed, self.nonneg = self.parser.allowed(name, arg)
            else:
                if family.help:
                    raise ParseError(f"second HELP line for {name}")
                family.help = arg
        except ParseError as exc:
            self.error(exc, pos, line, index)


def line_end(text: str, pos: int) -> int:
    """Where the line at ``pos`` ends (its newline, or the end), looked for a slice at a time."""
    n = len(text)
    while pos < n:
        end = text.find("\n", pos, pos + MAX_LINE)
        if end >= 0:
            return end
        pos += MAX_LINE
    return n


def take_values(st: State, names: Sequence[str], labels: Sequence[Labels],
                 values: Sequence[str]) -> bool:
    """Append samples to the current family when every value is a valid float (and not
    negative or NaN where the family's type forbids it); else take nothing and return False
    (the caller goes line by line, which finds the line at fault)."""
    joined = "".join(values)
    if "_" in joined or not joined.isascii():
        return False
    try:
        floats = list(map(float, values))
    except ValueError:
        return False
    nonneg = st.nonneg
    if nonneg:
        # min() alone would miss a NaN anywhere but first; a NaN makes the sum NaN.
        total = sum(floats)
        if not (min(floats) >= 0 and total == total) and any(
                not v >= 0 and n in nonneg for n, v in zip(names, floats, strict=True)):
            return False
    family = st.family
    assert family is not None
    family.layout = None  # set again by the caller when the block is a known layout
    family.samples.extend(zip(names, labels, floats, (None,) * len(floats), strict=True))
    return True


Take = Callable[[str, str, str, str], None]
"""Takes one sample line (name, label string, value, timestamp as written)."""
_EMPTY: Labels = {}


def sample_taker(st: State, label_cache: BoundedDict[str, Labels],
                 label_names: Names, names: Names, budget: Budget) -> Take:
    """The step that takes one sample line of a parse, split by SAMPLE_RE; it raises
    ParseError or ValueError. A closure over the parser's caches: cheapest per sample."""

    def take(name: str, raw: str, v: str, ts: str) -> None:
        if st.skipping and name in st.allowed:
            return
        if raw:
            labels = label_cache.get(raw)
            if labels is None:
                labels = parse_labels(raw, label_names)
                budget.charge(2 * strsize(raw) + 100 * len(labels) + 200)
                label_cache[raw] = labels
        else:
            labels = _EMPTY
        if "_" in v or not v.isascii():
            raise ParseError(f"invalid value {snip(v)}")
        value = float(v)
        timestamp = None
        if ts:
            if not is_int(ts):
                raise ParseError(f"invalid timestamp {snip(ts)}")
            timestamp = int(ts)
        if name not in names:
            check_name(name, names)
        if name not in st.allowed:
            st.new_untyped(name)
        if st.skipping:
            return
        if not value >= 0 and name in st.nonneg:
            raise ParseError(f"{name} is {value} (negative or NaN)")
        family = st.family
        assert family is not None
        family.layout = None
        family.samples.append((name, labels, value, timestamp))

    return take
