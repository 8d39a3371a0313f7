"""The tokens and requests the simulator's served completions add to its engines' counters.

The scenario's totals are exact functions of the clock; requests a test sends (the canary's)
come on top: their prompt tokens once the first token is out, each generated token as it is
sent, and the request itself (by its finish reason) when it ends. Each addition is shown from
a clock position on (on the tick clock, by the next GET /metrics) and, like the scenario's
counts, only until the next restart.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from fractions import Fraction

from .expected import Totals
from .scenario import FINISHED_REASONS

__all__ = ["Ledger", "TokenEvent"]


@dataclass(frozen=True)
class TokenEvent:
    """One addition to an engine's counters."""

    at: Fraction
    """Clock position (ticks or seconds) from which /metrics shows it."""
    engine: int
    """Index of the engine in the scenario."""
    prompt: int = 0
    generation: int = 0
    finished: str | None = None
    """A finished request's reason (one of FINISHED_REASONS), counted in ``requests`` too."""


class Ledger:
    """Thread-safe list of the additions, applied to the scenario's totals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[TokenEvent] = []

    def add(self, event: TokenEvent) -> None:
        if event.finished is not None and event.finished not in FINISHED_REASONS:
            raise ValueError(f"finished: must be one of {list(FINISHED_REASONS)}")
        with self._lock:
            self._events.append(event)

    def clear(self) -> None:
        """Forget every addition (an engine restart zeroes them)."""
        with self._lock:
            self._events.clear()

    def sums(self, engine: int, position: Fraction,
             restart: Fraction | None) -> tuple[int, int, Mapping[str, int]]:
        """Prompt tokens, generated tokens and finished requests by reason that `engine`
        shows at `position`, counting after the restart at `restart` (if any)."""
        prompt = generation = 0
        finished = dict.fromkeys(FINISHED_REASONS, 0)
        with self._lock:
            events = list(self._events)
        for e in events:
            if e.engine != engine or e.at > position or (restart is not None
                                                         and e.at <= restart):
                continue
            prompt += e.prompt
            generation += e.generation
            if e.finished is not None:
                finished[e.finished] += 1
        return prompt, generation, finished

    def apply(self, totals: Totals, engine: int, position: Fraction,
              restart: Fraction | None) -> Totals:
        """`totals` with the additions shown at `position`; the same object when none."""
        prompt, generation, finished = self.sums(engine, position, restart)
        if not prompt and not generation and not any(finished.values()):
            return totals
        return replace(
            totals,
            prompt_tokens=totals.prompt_tokens + prompt,
            generation_tokens=totals.generation_tokens + generation,
            requests=totals.requests + sum(finished.values()),
            finished_reason={r: n + finished.get(r, 0)
                             for r, n in totals.finished_reason.items()},
        )
