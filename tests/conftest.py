"""The two test tiers, decided here so that no test module has to remember its own.

``make test-fast`` runs ``pytest -m "not slow"``: the unit, property and golden tests, with no
outside server or program, in under a minute. ``make test`` runs everything (CI). A test is
``slow`` when

1. it reaches a helper that starts a server or the daemon (``HELPERS``), or code that starts
   or looks up a program (``LAUNCHERS``) and names an outside one (``PROGRAMS``), the daemon
   (``PYTHON_MODULES``) or ``sys.executable`` (a Python program of its own): looked for in the
   code of the test, of its fixtures, and of every function and class under ``tests/`` that
   they use, transitively. A new test that starts a Prometheus through
   ``tests/support/stack.py``, or runs ``promtool``, is slow without being listed anywhere;
2. it carries the marker of a need (``NEEDS``: ``vllm_real``) or ``slow`` itself;
3. its module or package is in ``SLOW_MODULES``, with the reason (measured, or a tool that no
   helper names);

unless its module is in ``FAST_MODULES`` (the golden test, and processes.py's, whose input is
real processes). A fast test that runs longer than ``FAST_BUDGET`` seconds is named at the end
of the run, to be made faster or listed here. ``pytest --collect-only -q -m slow --tiers``
prints each slow test with its reason.
"""

from __future__ import annotations

import inspect
import os
import types
from collections.abc import Iterator
from typing import Any

import pytest

HELPERS = {
    "tests.support.harness.Daemon": "starts the real daemon in a process (end to end)",
    "tests.support.stack.Server": "starts a real Prometheus or Alertmanager",
    "tests.support.stack.Stack": "starts the stack (Prometheus, Alertmanager, the daemon)",
    "tests.support.server_process.ServerProcess": "starts a real engine server",
    "tests.vllm_real.server.VllmServer": "starts a real vLLM",
    "tests.vllm_real.server.ensure_vllm_venv": "builds the real vLLM's virtualenv",
    "tests.support.server_process.built_venv": "builds a real engine's virtualenv",
    "tests.support.faulty_upstream.FaultyUpstream": "runs the fault matrix's upstream",
    "tests.support.promtool.promtool": "runs promtool",
    "exporter.daemon.Daemon": "runs the daemon in the test process, with real polls and timing",
}
"""Qualified names of functions and classes (with their subclasses) that make a test slow."""

PROGRAMS = {
    "prometheus": "runs a real Prometheus",
    "prometheus-alertmanager": "runs a real Alertmanager",
    "promtool": "runs promtool",
    "systemd-analyze": "runs systemd-analyze",
    "ansible-playbook": "runs Ansible",
    "ansible-lint": "runs ansible-lint",
    "ansible-inventory": "runs Ansible",
    "shellcheck": "runs shellcheck",
    "hadolint": "runs hadolint",
    "chromium": "runs a real Chromium",
}
"""Outside programs, as the string constants that name them in code that starts or looks up
programs (it uses one of ``LAUNCHERS``): ``shutil.which("prometheus")``,
``subprocess.run(["promtool", ...])``, ``required("systemd-analyze", ...)``."""

PYTHON_MODULES = {
    "exporter": "runs the daemon in a process (end to end)",
}
"""Modules run as programs (``[sys.executable, "-m", "exporter", ...]``), the same way."""

LAUNCHERS = frozenset({"which", "required", "_binary", "run", "Popen", "call", "check_call",
                       "check_output", "execv", "execvp", "spawn"})
"""Names (functions or methods) through which the tests start or find a program."""

NEEDS = {
    "vllm_real": "talks to a real vLLM",
}
"""Markers of what a test needs; each puts its tests in the slow tier."""

SLOW_MODULES = {
    "tests.test_install": "installs into a fresh virtualenv and a scratch root (about 50 s)",
    "tests.test_ansible": "builds wheels and runs Ansible (about 85 s)",
    "tests.nvml_sim": "the simulated NVML's own tests: NVML in a Python process of its own per"
                      " test (about 15 s); the golden test runs the simulator in the fast tier",
    "tests.vllm_sim": "the vLLM simulator's own tests: servers, real-time faults (about 6 s);"
                      " the golden test runs the simulator in the fast tier",
    "tests.test_expfmt_hostile": "times the parser on 10-16 MB payloads (linear time, the"
                                 " interpreter never held; about 8 s), which wants a quiet"
                                 " machine",
}
"""Modules (or packages) whose every test is slow, with the reason."""

FAST_MODULES = {
    "tests.test_golden": "the golden end-to-end test is part of the fast tier (STYLE.md"
                         " habit 16): the daemon, two simulators and promtool check metrics,"
                         " about 10 s",
    "tests.test_processes": "exporter/processes.py reads other processes: real ones, started"
                            " by the tests, are its input (about 3 s)",
}
"""Modules kept in the fast tier whatever they reach, with the reason."""

FAST_BUDGET = 10.0
"""Seconds (setup, call and teardown) above which a fast test is reported."""

# Engine discovery (on by default) would find the simulators and servers other tests start:
# a daemon under test polls what it is told, unless its test is about discovery, which
# turns it on (tests/test_discovery.py).
os.environ["INFERENCE_NODE_EXPORTER_ENGINES_DISCOVER"] = "false"


@pytest.fixture(autouse=True)
def _no_discovery(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process daemons see no engine process either, but in the discovery tests."""
    if request.node.get_closest_marker("discovery") is None:
        from exporter import discovery

        monkeypatch.setattr(discovery, "candidates", lambda *_: iter(()))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--tiers", action="store_true",
                     help="print why each collected slow test is slow")


_budgeted: set[str] = set()
"""Node ids of the fast tests whose time is watched (not those of FAST_MODULES)."""
_durations: dict[str, float] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cache: dict[int, str | None] = {}
    for item in items:
        reason = _why_slow(item, cache)
        if reason is not None:
            item.add_marker(pytest.mark.slow(reason=reason))
        elif not _listed(_module_name(item), FAST_MODULES):
            _budgeted.add(item.nodeid)


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]
                                   ) -> list[str]:
    if not config.getoption("--tiers"):
        return []
    lines = []
    for item in items:
        mark = item.get_closest_marker("slow")
        if mark is not None:
            lines.append(f"slow: {item.nodeid}: {mark.kwargs.get('reason', '(marked)')}")
    return lines


def _why_slow(item: pytest.Item, cache: dict[int, str | None]) -> str | None:
    name = _module_name(item)
    if _listed(name, FAST_MODULES):
        return None
    if (reason := _listed(name, SLOW_MODULES)) is not None:
        return reason
    for need, reason in NEEDS.items():
        if item.get_closest_marker(need) is not None:
            return reason
    if item.get_closest_marker("slow") is not None:
        return "marked slow"
    fixtures = getattr(item, "_fixtureinfo", None)
    roots: list[Any] = [getattr(item, "obj", None)]
    if fixtures is not None:
        for fixture in item.fixturenames:  # type: ignore[attr-defined]
            for fixturedef in fixtures.name2fixturedefs.get(fixture, ()):
                roots.append(fixturedef.func)
    for root in roots:
        reason = _reaches(root, cache, set())
        if reason is not None:
            return reason
    return None


def _module_name(item: pytest.Item) -> str:
    return str(getattr(getattr(item, "module", None), "__name__", ""))


def _listed(module: str, listing: dict[str, str]) -> str | None:
    """The reason ``listing`` gives for ``module`` or a package above it."""
    for name, reason in listing.items():
        if module == name or module.startswith(name + "."):
            return reason
    return None


def _ours(obj: object) -> bool:
    module = getattr(obj, "__module__", None) or getattr(obj, "__name__", "")
    return isinstance(module, str) and (module == "tests" or module.startswith("tests."))


def _strings_and_names(code: types.CodeType) -> tuple[set[str], set[str]]:
    """Every string constant and global or attribute name in ``code`` and the code nested
    in it (lambdas, inner functions, comprehensions)."""
    strings: set[str] = set()
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            inner_strings, inner_names = _strings_and_names(const)
            strings |= inner_strings
            names |= inner_names
        elif isinstance(const, str):
            strings.add(const)
        elif isinstance(const, tuple | frozenset):
            strings |= {c for c in const if isinstance(c, str)}
    return strings, names


def _members(cls: type) -> Iterator[object]:
    for value in vars(cls).values():
        if isinstance(value, staticmethod | classmethod):
            yield value.__func__
        elif isinstance(value, property):
            yield from (f for f in (value.fget, value.fset) if f is not None)
        else:
            yield value


def _reaches(obj: object, cache: dict[int, str | None], seen: set[int]) -> str | None:
    """Why ``obj`` (a test, fixture, helper function or class) makes a test slow, or None."""
    obj = getattr(obj, "__func__", obj)  # a method of a test class
    if id(obj) in cache:
        return cache[id(obj)]
    if id(obj) in seen:
        return None
    seen.add(id(obj))
    reason = _reaches_uncached(obj, cache, seen)
    cache[id(obj)] = reason
    return reason


def _reaches_uncached(obj: object, cache: dict[int, str | None], seen: set[int]
                      ) -> str | None:
    if inspect.isclass(obj):
        for cls in obj.__mro__:
            reason = HELPERS.get(f"{cls.__module__}.{cls.__qualname__}")
            if reason is not None:
                return reason
        if not _ours(obj):
            return None
        for base in obj.__mro__[1:]:
            if _ours(base) and (reason := _reaches(base, cache, seen)) is not None:
                return reason
        for member in _members(obj):
            if inspect.isfunction(member) and (reason := _reaches(member, cache, seen)):
                return reason
        return None
    if not inspect.isfunction(obj):
        return None
    func = inspect.unwrap(obj)
    if not isinstance(func, types.FunctionType):
        return None
    reason = HELPERS.get(f"{func.__module__}.{func.__qualname__}")
    if reason is not None:
        return reason
    if not _ours(func):
        return None
    strings, names = _strings_and_names(func.__code__)
    if names & LAUNCHERS:
        for text in sorted(strings):
            if text in PROGRAMS:
                return PROGRAMS[text]
            if text in PYTHON_MODULES and "-m" in strings:
                return PYTHON_MODULES[text]
        if "executable" in names:  # sys.executable
            return "starts a Python program of its own"
    for name in sorted(names):
        target = func.__globals__.get(name)
        if isinstance(target, types.ModuleType):
            if not _ours(target):
                continue
            # ``stack.Prometheus``: the attribute is among the names too.
            for attribute in sorted(names):
                inner = getattr(target, attribute, None)
                if inner is not None and (reason := _reaches(inner, cache, seen)):
                    return reason
        elif target is not None and (reason := _reaches(target, cache, seen)):
            return reason
    return None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    over = sorted(((d, n) for n, d in _durations.items()
                   if d > FAST_BUDGET and n in _budgeted), reverse=True)
    if over:
        terminalreporter.section("fast tests over the fast tier's budget")
        terminalreporter.write_line(
            f"these tests are not marked slow but took over {FAST_BUDGET:g} s: speed them up"
            " or put them in the slow tier (tests/conftest.py)")
        for duration, nodeid in over:
            terminalreporter.write_line(f"{duration:6.2f} s  {nodeid}")
