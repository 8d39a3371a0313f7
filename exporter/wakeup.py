"""A wake-up for the daemon's main loop that a signal handler may set.

``threading.Event.set`` takes a lock that is not re-entrant: a second signal that arrives
while the first one's handler holds it runs its handler in the same thread, which then waits
for itself forever (seen: two SIGTERMs in a row left the daemon running, deaf to signals). A
byte written to a non-blocking pipe takes no lock.

Signals also write to that pipe themselves (:meth:`Wakeup.wake_on_signals`): the kernel may
hand a signal to any thread, and Python runs the handler only once the main thread runs
again, so a main thread asleep in ``select`` would otherwise sleep on (seen: SIGTERM during
a burst of SIGHUPs ignored).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal

__all__ = ["Wakeup"]


class Wakeup:
    """Set from any thread or signal handler; waited on by one thread."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending already
            os.write(self._write, b"\0")

    def wake_on_signals(self) -> None:
        """Have every signal with a Python handler set it, whichever thread it reaches
        (from the main thread only, as Python requires)."""
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def wait(self, timeout: float | None) -> None:
        """Return once set (at once if it was set since the last wait) or after
        ``timeout`` seconds (None: no limit); clear it."""
        select.select([self._read], [], [], timeout)
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass
