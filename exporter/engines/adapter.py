"""What an engine adapter is: everything the daemon knows of one inference engine.

An adapter names the engine (its kind is the ``engine`` label, the collector's name, the
``--<kind>.endpoint`` flag and the ``[<kind>]`` config section), says where its metrics are
served, which upstream families it reads under which names across versions, how they become
the engine-neutral :class:`~exporter.engines.reading.EngineReading`, and how the engine's
processes are recognised. What it does not map is what the engine lacks.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from exporter.canary.api import OPENAI, ProbeApi
from exporter.engines.reading import COUNTERS, HISTOGRAMS, SIGNALS, EngineReading
from exporter.expfmt import Exposition

__all__ = ["Adapter", "ModelInfo", "Normaliser", "ProcessMatch"]

EXACT, MEAN, ABSENT = "exact", "derived mean", "absent"
"""What an engine gives of a signal (the README's support table)."""


class Normaliser(Protocol):
    """Turns one parsed exposition into readings, at most ``max_engines`` of them."""

    def normalise(self, exp: Exposition, model: str) -> tuple[list[EngineReading], int]:
        """The readings found, and how many label sets were dropped by the cap. ``model`` is
        the served model's name from :attr:`Adapter.model_info` for engines whose samples
        carry none ("" for the others)."""
        ...


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Where an engine whose metrics name no model says which model it serves."""

    path: str
    """Path on the metrics endpoint's host and port (``/v1/models``)."""
    parse: Callable[[bytes], str | None]
    """The model's name from the answer's body; None when the body does not say."""


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
    (``serve`` for ``vllm serve``); a program's path counts by its file name."""
    port_flags: tuple[str, ...] = ("--port",)

    def matches(self, cmd: Sequence[str]) -> bool:
        """Whether the command line is the engine's."""
        return any(word in part for part in cmd for word in self.words)

    def port(self, cmd: Sequence[str]) -> int | None:
        """The port the command line sets with a port flag (``--port N``, ``--port=N``)."""
        given = None
        for i, part in enumerate(cmd):
            if part in self.port_flags and i + 1 < len(cmd):
                given = cmd[i + 1]
            elif "=" in part and part.partition("=")[0] in self.port_flags:
                given = part.partition("=")[2]
        if given is None or not given.isascii() or not given.isdigit():
            return None
        return int(given) if 0 < int(given) < 65536 else None

    def implies_default_port(self, cmd: Sequence[str]) -> bool:
        """Whether the command line, setting no port, serves on the default one."""
        return any(p in self.default_port_words or posixpath.basename(p)
                   in self.default_port_words for p in cmd)


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
    means: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Per latency it has no histogram of, the upstream cumulative durations and counts
    (:attr:`EngineReading.durations`) a windowed mean comes from."""
    counted_at_request_end: frozenset[str] = frozenset()
    """Counters of :data:`COUNTERS` the engine moves only when a request ends (or its prefill
    does), by whole requests: their rate over a window in which none moved while requests
    ran is unknown, not zero."""
    model_info: ModelInfo | None = None
    """Set for engines whose samples carry no model name."""
    canary: ProbeApi | None = OPENAI
    """The streaming API the canary probes the engine through (:mod:`exporter.canary`)."""

    def __post_init__(self) -> None:
        unknown = set(self.names) - set(SIGNALS)
        if unknown:
            raise ValueError(f"adapter {self.kind}: unknown signals {sorted(unknown)}")
        means = set(self.means)
        if means - set(HISTOGRAMS) or means & set(self.names):
            raise ValueError(f"adapter {self.kind}: means are for latencies it has no"
                             f" histogram of: {sorted(means)}")
        if self.counted_at_request_end - set(COUNTERS):
            raise ValueError(f"adapter {self.kind}: unknown counters"
                             f" {sorted(self.counted_at_request_end - set(COUNTERS))}")

    @property
    def default_url(self) -> str:
        return f"http://127.0.0.1:{self.default_port}{self.metrics_path}"

    def support(self, signal: str) -> str:
        """``exact``, ``derived mean`` or ``absent``: what the engine gives of ``signal``."""
        return EXACT if signal in self.names else MEAN if signal in self.means else ABSENT

    @property
    def lacks(self) -> tuple[str, ...]:
        """The signals the engine does not expose, in :data:`SIGNALS` order."""
        return tuple(s for s in SIGNALS if self.support(s) == ABSENT)
