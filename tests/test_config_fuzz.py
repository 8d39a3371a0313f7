"""Fuzzing the configuration loader: whatever the file, the environment or the flags hold,
``load()`` returns a Config or raises ConfigError with a one-line message, nothing else."""

from __future__ import annotations

import datetime as dt
import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.cli import ENV_PREFIX, flags, load, parser
from exporter.config import Config, ConfigError, collector_names, file_keys

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
FUZZ_DOCS = settings(FUZZ, max_examples=100)
"""Documents are slower to draw; the bounds keep all of this file's tests under ~15 s."""

# Strings that get past the first checks, so that the fuzzing reaches the later ones.
EDGES = [
    "", "0", "1", "5s", "200ms", "1m30s", "1h", "8760h", "8761h", "1e400", "-1", "nan", "true",
    "http://127.0.0.1:8000", "http://[::1]:8000/m", "http://[::1", "https://h:99999",
    "a=http://h:1", "http://h:1,http://h:1", "127.0.0.1:1", "[::]:0", ":19400", "/proc",
    "json", "debug", "0.5,0.99", "1m,5m", "99999999999999999999999999", "9" * 5000,
    "http://a b:1", "http://h:1/a\nb", "٣", "²", "\x00", "\ud800", "x\ny",
]
PLAUSIBLE = st.sampled_from(EDGES)
ENCODABLE = st.sampled_from([e for e in EDGES if e.isascii() or e.isprintable()])
TEXT = st.one_of(PLAUSIBLE, st.text(max_size=40))


def outcome(argv: list[str], env: Mapping[str, str]) -> Config | None:
    """The loader's answer: a Config, None for a ConfigError; anything else fails the test."""
    try:
        cfg, _web = load(parser().parse_args(argv), env)
    except ConfigError as exc:
        message = str(exc)
        assert message and len(message.splitlines()) == 1, repr(message)
        assert message.isprintable(), repr(message)
        return None
    assert isinstance(cfg, Config)
    return cfg


# -- TOML documents --------------------------------------------------------------------------

def toml_key(key: str) -> str:
    return toml_value(key)


def toml_value(value: object) -> str:
    """A tiny TOML writer for what the strategies below produce (checked by a test)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else {math.inf: "inf", -math.inf: "-inf"}.get(
            value, repr(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(doc: Mapping[str, object]) -> str:
    top = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    tables = [f"[{toml_key(k)}]\n" + "".join(f"{toml_key(key)} = {toml_value(value)}\n"
                                              for key, value in v.items())
              for k, v in doc.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "".join(tables)


KEY_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
SCALARS = st.one_of(
    KEY_TEXT, ENCODABLE, st.booleans(), st.integers(), st.integers(-2**63, 2**63 - 1),
    st.floats(), st.datetimes(timezones=st.none() | st.builds(dt.timezone, st.integers(
        -1439, 1439).map(lambda m: dt.timedelta(minutes=m)))), st.dates(), st.times(),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(KEY_TEXT, inner, max_size=4), max_leaves=8)
KNOWN_KEYS = st.sampled_from(sorted({k for keys in file_keys().values() for k in keys}))
SECTION = st.dictionaries(st.one_of(KNOWN_KEYS, KEY_TEXT), VALUES, max_size=6)
DOCUMENTS = st.dictionaries(st.one_of(st.sampled_from(sorted(file_keys())), KEY_TEXT),
                            st.one_of(SECTION, VALUES), max_size=5)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def load_file(workdir: Path, data: bytes, env: Mapping[str, str] | None = None) -> None:
    path = workdir / "config.toml"
    path.write_bytes(data)
    outcome(["--config.file", str(path)], env or {})


@settings(FUZZ, max_examples=50)
@given(doc=DOCUMENTS)
def test_the_toml_writer_of_these_tests_is_right(doc: dict[str, object]) -> None:
    parsed = tomllib.loads(toml_document(doc))
    assert json.dumps(parsed, sort_keys=True, default=str) == json.dumps(
        doc, sort_keys=True, default=str)  # NaN dumps as NaN on both sides


@FUZZ_DOCS
@given(doc=DOCUMENTS)
def test_random_toml_documents(workdir: Path, doc: dict[str, object]) -> None:
    load_file(workdir, toml_document(doc).encode())


@FUZZ
@given(data=st.one_of(
    st.binary(max_size=300),
    st.tuples(st.sampled_from([b'[poll]\ninterval = "5s"\n', b"[vllm]\nendpoints = []\n",
                               b'[web]\nlisten_address = ":1"\n']),
              st.integers(0, 40), st.binary(min_size=1, max_size=4))
    .map(lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:]),
))
def test_random_bytes_as_the_config_file(workdir: Path, data: bytes) -> None:
    load_file(workdir, data)


@FUZZ
@given(values=st.dictionaries(st.sampled_from([f for f in flags() if not f.switch]),
                              st.lists(TEXT, min_size=1, max_size=3),
                              min_size=1, max_size=5),
       switches=st.dictionaries(st.sampled_from(collector_names()), st.booleans(), max_size=4))
def test_random_flag_values(values: dict[object, list[str]], switches: dict[str, bool]) -> None:
    argv = [f"{f.flag}={v}" for f, vs in values.items() for v in vs  # type: ignore[attr-defined]
            ]
    argv += [f"--{'' if on else 'no-'}collector.{name}" for name, on in switches.items()]
    outcome(argv, {})


ENV_NAMES = [f.env for f in flags()] + [f"{ENV_PREFIX}COLLECTOR_{c.upper()}"
                                        for c in collector_names()]


@pytest.mark.parametrize("value", EDGES, ids=range(len(EDGES)))
def test_every_flag_and_variable_with_each_edge_value(value: str) -> None:
    for f in flags():
        if not f.switch:
            outcome([f"{f.flag}={value}"], {})
    for name in [*ENV_NAMES, ENV_PREFIX + "CONFIG_FILE"]:
        outcome([], {name: value})


@FUZZ
@given(env=st.dictionaries(st.sampled_from([*ENV_NAMES, ENV_PREFIX + "X"]), TEXT, min_size=1,
                           max_size=6))
def test_random_environment_values(env: dict[str, str]) -> None:
    outcome([], env)


@FUZZ_DOCS
@given(doc=DOCUMENTS, env=st.dictionaries(st.sampled_from(ENV_NAMES), PLAUSIBLE, max_size=3))
def test_file_and_environment_together(workdir: Path, doc: dict[str, object],
                                       env: dict[str, str]) -> None:
    load_file(workdir, toml_document(doc).encode(), env)
