"""The exposition parser, against prometheus_client's parser as an oracle."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.expfmt import Parser, Sample, parse

FIXTURES = Path(__file__).parent / "fixtures" / "vllm"

Flat = list[tuple[str, tuple[tuple[str, str], ...], object, object]]


def _value(v: float) -> object:
    return "NaN" if math.isnan(v) else float(v)


def ours_flat(text: str, parser: Parser | None = None) -> Flat:
    exp = (parser or Parser()).parse(text)
    return [
        (name, tuple(sorted(labels.items())), _value(value),
         None if ts is None else ts / 1000)
        for fam in exp.families for name, labels, value, ts in fam.samples
    ]


def _rejected(kind: str, name: str, value: float) -> bool:
    """Whether we reject a sample the oracle accepts: a negative or NaN counter, histogram
    bucket or count, or summary count."""
    if value >= 0:
        return False
    return kind == "counter" or (kind == "histogram" and name.endswith(("_bucket", "_count"))) \
        or (kind == "summary" and name.endswith("_count"))


def oracle_flat(text: str) -> Flat:
    """The oracle's samples, less those our stricter rules reject (see :func:`oracle_rejects`)."""
    return [
        (s.name, tuple(sorted(s.labels.items())), _value(s.value),
         None if s.timestamp is None else float(s.timestamp))
        for fam in text_string_to_metric_families(text) for s in fam.samples
        if not _rejected(fam.type, s.name, s.value)
    ]


def oracle_rejects(text: str) -> int:
    """How many of the oracle's samples our stricter rules reject."""
    return sum(_rejected(fam.type, s.name, s.value)
               for fam in text_string_to_metric_families(text) for s in fam.samples)


def oracle_types(text: str) -> dict[str, tuple[str, str]]:
    """Family name (as written in TYPE/HELP) -> (type, help)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        out[name] = ("untyped" if fam.type == "unknown" else fam.type, fam.documentation)
    return out


# ---------------------------------------------------------------- generated expositions

_name_start = st.sampled_from("abcxyzABC_:")
_name_rest = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_:0123456789", max_size=12)
metric_names = st.builds(lambda a, b: a + b, _name_start, _name_rest).filter(
    lambda n: not n.endswith(("_total", "_bucket", "_sum", "_count", "_created")))
label_names = st.builds(
    lambda a, b: a + b, st.sampled_from("abkqz_"),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", max_size=8),
).filter(lambda n: n not in ("le", "quantile") and not n.startswith("__"))
label_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"),
    max_size=20)
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(min_value=-(10**15), max_value=10**15).map(float),
)
timestamps = st.one_of(st.none(), st.integers(min_value=-(10**13), max_value=10**13))
helps = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Zl", "Zp", "Cc"),
                           blacklist_characters="\\"),
    max_size=30,
).map(str.strip)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _line(name: str, labels: dict[str, str], value: float, ts: int | None) -> str:
    body = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
    out = f"{name}{{{body}}}" if labels else name
    out += " " + _fmt(value)
    return out + (f" {ts}" if ts is not None else "")


@st.composite
def families(draw: st.DrawFn) -> str:
    names = draw(st.lists(metric_names, min_size=1, max_size=6, unique=True))
    lines: list[str] = []
    for name in names:
        kind = draw(st.sampled_from(["counter", "gauge", "histogram", "summary", "untyped"]))
        help_text = draw(helps)
        base = name + "_total" if kind == "counter" else name
        if draw(st.booleans()):
            lines.append(f"# HELP {base} {help_text}".rstrip())
        if kind != "untyped" or draw(st.booleans()):
            lines.append(f"# TYPE {base} {kind}")
        series = draw(st.lists(st.dictionaries(label_names, label_values, max_size=3),
                               min_size=1, max_size=3))
        for labels in series:
            ts = draw(timestamps)
            if kind == "histogram":
                bounds = sorted(draw(st.sets(st.floats(-10, 100, allow_nan=False), max_size=3)))
                for b in [*bounds, math.inf]:
                    lines.append(_line(name + "_bucket", {**labels, "le": _fmt(b)},
                                       draw(values), ts))
                lines.append(_line(name + "_sum", labels, draw(values), ts))
                lines.append(_line(name + "_count", labels, draw(values), ts))
            elif kind == "summary":
                lines.append(_line(name, {**labels, "quantile": "0.5"}, draw(values), ts))
                lines.append(_line(name + "_sum", labels, draw(values), ts))
                lines.append(_line(name + "_count", labels, draw(values), ts))
            else:
                lines.append(_line(base, labels, draw(values), ts))
    return "\n".join(lines) + "\n"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(families())
def test_generated_expositions_match_the_oracle(text: str) -> None:
    exp = parse(text)
    assert exp.errors == oracle_rejects(text), exp.first_errors
    oracle = oracle_flat(text)
    assert ours_flat(text) == oracle
    # A parser that has seen the payload before takes whole blocks at once: same result.
    warm = Parser()
    warm.parse(text)
    assert ours_flat(text, warm) == oracle
    types = oracle_types(text)
    for fam in exp.families:
        if fam.name in types:
            assert (fam.type, fam.help) == types[fam.name]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(families(), st.randoms(use_true_random=False))
def test_a_warm_parser_reads_new_values_in_known_lines(text: str, rnd: object) -> None:
    warm = Parser()
    for _ in range(3):  # the third time, each block's layout is kept for the next
        warm.parse(text)
    # The next payload: the same lines, each last number (value or timestamp) changed.
    lines = [line if line.startswith("#") else
             f"{line.rpartition(' ')[0]} {rnd.randint(-99, 99)}"  # type: ignore[attr-defined]
             for line in text.rstrip("\n").split("\n")]
    again = "\n".join(lines) + "\n"
    assert ours_flat(again, warm) == oracle_flat(again)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(families(), st.randoms(use_true_random=False))
def test_keep_reads_exactly_the_wanted_families(text: str, rnd: object) -> None:
    everything = parse(text)
    names = [f.name for f in everything.families]
    # Wanted: some of the families, and sometimes a name that others' names begin with.
    keep = frozenset(n for n in names if rnd.random() < 0.5)  # type: ignore[attr-defined]
    keep |= {n[:2] for n in names if rnd.random() < 0.2}  # type: ignore[attr-defined]

    def flat(samples: list[Sample]) -> list[tuple[object, ...]]:
        return [(n, tuple(sorted(lab.items())), _value(v), ts) for n, lab, v, ts in samples]

    want = {f.name: flat(f.samples) for f in everything.families
            if f.name in keep and f.samples}
    cold = Parser()
    warm = Parser()
    warm.parse(text, keep)
    for parser in (cold, warm):
        got = {f.name: flat(f.samples) for f in parser.parse(text, keep).families if f.samples}
        assert got == want


BAD_LINES = [
    'bad{a="b" 1',                 # unclosed label set
    "bad{a=b} 1",                  # unquoted label value
    "bad 1 2 3",                   # too many fields
    "9bad 1",                      # invalid metric name
    'bad{a="\\q"} 1',              # invalid escape
    "bad abc",                     # not a number
    'bad{a="1",a="2"} 1',          # duplicate label
    "# TYPE bad wrongtype",        # unknown type
    "bad 1_000",                   # underscores are not Go floats
    "bad 1 12.5",                  # non-integer timestamp
    'bad{1a="x"} 1',               # invalid label name
    "bad{,} 1",                    # a comma with no pair
    'bad{a="x"b="y"} 1',           # pairs without a comma
    'bad{__name__="x"} 1',         # a reserved label name
    'bad{a="x",__name__="y"} 1',   # a reserved label name, second
    'bad{__name__="\\n"} 1',       # a reserved label name, slow path
]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(families(), st.lists(st.sampled_from(BAD_LINES), min_size=1, max_size=4),
       st.randoms(use_true_random=False))
def test_malformed_lines_are_skipped_and_counted(clean: str, bad: list[str], rnd: object) -> None:
    lines = clean.rstrip("\n").split("\n")
    # Insert only at family boundaries (before a comment line or at the end).
    slots = [i for i, line in enumerate(lines) if line.startswith("# ")] + [len(lines)]
    for b in bad:
        pos = rnd.choice(slots)  # type: ignore[attr-defined]
        lines.insert(pos, b)
        slots = [s + 1 if s >= pos else s for s in slots]
    dirty = "\n".join(lines) + "\n"
    exp = parse(dirty)
    assert exp.errors == len(bad) + oracle_rejects(clean)
    assert ours_flat(dirty) == oracle_flat(clean)
    warm = Parser()
    warm.parse(dirty)
    assert ours_flat(dirty, warm) == oracle_flat(clean)


@settings(max_examples=300)
@given(st.text(max_size=400))
def test_arbitrary_text_never_raises(text: str) -> None:
    exp = parse(text)
    assert exp.errors <= text.count("\n") + 1
    assert len(exp.first_errors) <= 5


def test_empty_label_set_and_trailing_comma_are_valid() -> None:
    exp = parse('a{} 1\nb{x="1",} 2\n')
    assert exp.errors == 0
    assert [(n, dict(lab), v) for n, lab, v, _ in exp.get("a") + exp.get("b")] == [
        ("a", {}, 1.0), ("b", {"x": "1"}, 2.0)]


def test_escapes_in_label_values_and_help() -> None:
    text = '# HELP m a \\\\ b\\nc\n# TYPE m gauge\nm{v="q\\"}\\\\\\n"} 1\n'
    exp = parse(text)
    assert exp.errors == 0
    assert exp.families[0].help == "a \\ b\nc"
    assert dict(exp.get("m")[0][1]) == {"v": 'q"}\\\n'}


def test_second_type_line_and_split_families_are_errors() -> None:
    exp = parse("# TYPE a gauge\na 1\n# TYPE a counter\nb 2\na 3\n")
    assert exp.errors == 2
    assert [s[2] for s in exp.get("a")] == [1.0]


def test_keep_skips_unwanted_families_but_still_counts_their_metadata() -> None:
    text = "# TYPE a gauge\na 1\n# TYPE b gauge\nb 2\n# TYPE c wrong\n"
    exp = parse(text, keep=lambda name: name == "a")
    assert [f.name for f in exp.families if f.samples] == ["a"]
    assert exp.get("b") == []
    assert exp.errors == 1


def test_a_family_read_again_line_for_line_keeps_its_layout() -> None:
    p = Parser()
    text = '# HELP m h\n# TYPE m gauge\nm{a="1"} 1\nm{a="2"} 2\n'
    p.parse(text)  # names and labels learnt
    p.parse(text)  # lines as written learnt
    second = p.parse(text).families[0]
    third = p.parse(text.replace("} 1", "} 7")).families[0]
    assert second.layout is not None and third.layout is second.layout
    assert [s[2] for s in third.samples] == [7.0, 2.0]
    # A line that differs (here a label value) makes a new layout.
    fourth = p.parse(text.replace('a="2"', 'a="3"')).families[0]
    assert fourth.layout is not second.layout
    assert [dict(s[1]) for s in fourth.samples] == [{"a": "1"}, {"a": "3"}]


def test_label_cache_is_reused_between_payloads() -> None:
    p = Parser()
    first = p.parse('m{a="1"} 1\n')
    second = p.parse('m{a="1"} 2\n')
    assert first.get("m")[0][1] is second.get("m")[0][1]
    assert second.get("m")[0][2] == 2.0


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.txt")), ids=lambda p: p.name)
def test_recorded_real_expositions_match_the_oracle(path: Path) -> None:
    text = path.read_text()
    exp = parse(text)
    assert exp.errors == 0, exp.first_errors
    assert ours_flat(text) == oracle_flat(text)
    assert len(ours_flat(text)) > 100


def test_there_are_recorded_real_expositions() -> None:
    assert len(list(FIXTURES.glob("*.txt"))) >= 3
