"""systemd's service notification protocol (sd_notify(3)), without libsystemd.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, a Unix datagram socket (a path, or an
abstract name written with a leading ``@``), and with ``WatchdogSec=`` also ``$WATCHDOG_USEC``
(and ``$WATCHDOG_PID``, the process that must ping). Each message is one datagram of
newline-separated ``KEY=value`` assignments. Outside systemd nothing is set and every call here
does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]


class Notifier:
    """Sends state changes and watchdog pings to the service manager, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket = env.get("NOTIFY_SOCKET", "")
        """``$NOTIFY_SOCKET`` as given (empty when unset)."""
        self.address = _address(self.socket)
        self.watchdog_interval = _watchdog_interval(env) if self.address is not None else None
        """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or None: no pings."""
        self.last_error: OSError | None = None

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram; False if none could be sent."""
        if self.address is None or not assignments:
            return False
        payload = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(payload, self.address)
        except OSError as exc:
            self.last_error = exc
            return False
        self.last_error = None
        return True

    def ready(self, status: str) -> bool:
        """Start-up (or a reload) is complete."""
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        """A reload begins; ``READY=1`` ends it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> bool:
        """Shutdown begins."""
        return self.send("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> bool:
        """A one-line description of the current state, shown by ``systemctl status``."""
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        """Tell the watchdog the service is alive."""
        return self.send("WATCHDOG=1")


def _address(value: str) -> str | bytes | None:
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()  # an abstract socket
    if value.startswith("/"):
        return value
    return None  # unset, or a kind of address this daemon does not speak (vsock)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2 / 1_000_000
