"""Finding the programs the tests need from Debian's packages (``make deps`` installs them).

A missing one fails the test that needs it, with the package to install; nothing is skipped.
"""

from __future__ import annotations

import shutil


def required(program: str, package: str) -> str:
    """The path of ``program``; fails (never skips) when it is missing."""
    path = shutil.which(program)
    if path is None:
        raise AssertionError(f"{program} not found: install Debian's {package!r} package"
                             " (make deps does it)")
    return path


def promtool() -> str:
    """The promtool binary (Debian package ``prometheus``)."""
    return required("promtool", "prometheus")
