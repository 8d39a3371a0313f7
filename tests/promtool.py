"""Finding promtool, which the tests need (Debian package ``prometheus``)."""

from __future__ import annotations

import shutil


def promtool() -> str:
    """The promtool binary; fails (never skips) when it is missing."""
    path = shutil.which("promtool")
    if path is None:
        raise AssertionError("promtool not found: install Debian's 'prometheus' package"
                             " (make deps does it)")
    return path
