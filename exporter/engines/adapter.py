"""What an engine adapter is: everything the daemon knows of one inference engine.

An adapter names the engine (its kind is the ``engine`` label, the collector's name, the
``--<kind>.endpoint`` flag and the ``[<kind>]`` config section), says where its metrics are
served, which upstream families it reads under which names across versions, how they become
the engine-neutral :class:`~exporter.engines.reading.EngineReading`, and how the engine's
processes are recognised. What it does not map is what the engine lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from exporter.engines.reading import SIGNALS, EngineReading
from exporter.expfmt import Exposition

__all__ = ["Adapter", "Normaliser", "ProcessMatch"]


class Normaliser(Protocol):
    """Turns one parsed exposition into readings, at most ``max_engines`` of them."""

    def normalise(self, exp: Exposition) -> tuple[list[EngineReading], int]:
        """The readings found, and how many label sets were dropped by the cap."""
        ...


@dataclass(frozen=True, slots=True)
class ProcessMatch:
    """How the engine's server process is told from its command line.

    The socket table is asked first (who listens on the endpoint's port); the command line
    is the fallback when the daemon may not see other users' sockets.
    """

    words: tuple[str, ...]
    """A command-line argument containing one of these is the engine's."""
    default_port_words: tuple[str, ...] = ()
    """Arguments that mean a server listening on the default port when no port flag is given
    (``serve`` for ``vllm serve``)."""
    port_flags: tuple[str, ...] = ("--port",)


@dataclass(frozen=True, slots=True)
class Adapter:
    """One inference engine, as the daemon reads it."""

    kind: str
    """Lower-case identifier: ``engine`` label, collector, flag prefix, config section."""
    title: str
    """The engine's name as people write it, for help texts and messages."""
    default_port: int
    metrics_path: str
    names: Mapping[str, tuple[str, ...]]
    """Per signal of :data:`SIGNALS` it reads, the upstream family names, preferred first."""
    keep: frozenset[str]
    """Every sample name the normaliser reads, and the family name of each histogram it
    reads (``x`` beside ``x_bucket``, ``x_sum``, ``x_count``); the parser skips the rest."""
    normaliser: Callable[[int], Normaliser]
    """Makes a normaliser that keeps at most the given number of (model, rank) label sets."""
    processes: ProcessMatch
    polled_by_default: bool = False
    """Whether ``http://127.0.0.1:<default_port><metrics_path>`` is polled when no endpoint
    of this kind is configured."""
    filters_by_name: bool = False
    """Whether ``<metrics_path>/`` answers ``name[]`` parameters with those samples alone
    (prometheus_client's WSGI app), so a poll may ask for :attr:`keep` only."""

    def __post_init__(self) -> None:
        unknown = set(self.names) - set(SIGNALS)
        if unknown:
            raise ValueError(f"adapter {self.kind}: unknown signals {sorted(unknown)}")

    @property
    def default_url(self) -> str:
        return f"http://127.0.0.1:{self.default_port}{self.metrics_path}"

    @property
    def lacks(self) -> tuple[str, ...]:
        """The signals the engine does not expose, in :data:`SIGNALS` order."""
        return tuple(s for s in SIGNALS if s not in self.names)
