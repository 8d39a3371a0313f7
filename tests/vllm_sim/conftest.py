"""Fixtures of the simulator's streaming tests: a server of each engine's dialect."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .client import ALL, scenario
from .server import SimServer


@pytest.fixture(params=ALL, ids=lambda d: d or "vllm")
def any_sim(request: pytest.FixtureRequest) -> Iterator[SimServer]:
    with SimServer(scenario(), dialect=request.param) as server:
        yield server


@pytest.fixture
def vllm() -> Iterator[SimServer]:
    with SimServer(scenario()) as server:
        yield server


@pytest.fixture
def triton() -> Iterator[SimServer]:
    with SimServer(scenario(), dialect="triton-trtllm") as server:
        yield server
