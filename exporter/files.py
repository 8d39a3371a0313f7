"""Reading small settings files safely: never block on a FIFO or device, never read a huge file."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["DEFAULT_LIMIT", "FileError", "read_regular"]

DEFAULT_LIMIT = 1024 * 1024
"""1 MiB: far above any real settings file."""


class FileError(OSError):
    """The file cannot be used; ``str()`` is a short reason such as "no such file or
    directory" or "not a regular file (a FIFO)", without the path: callers add it, e.g.
    ``f"{path}: cannot read it: {exc}"``."""

    def __str__(self) -> str:
        return self.strerror or "unreadable"


def read_regular(path: Path, limit: int = DEFAULT_LIMIT) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes.

    It is opened with ``O_NONBLOCK`` so that a FIFO or a device never blocks the caller,
    then checked with ``fstat`` (the opened file, not the name, so no race). Raises
    :class:`FileError` with a one-line reason for anything else, including OS errors.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise FileError(exc.errno or errno.EIO, _reason(exc)) from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise FileError(errno.EINVAL, str(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileError(errno.EINVAL, f"not a regular file ({_kind(st.st_mode)})")
        if st.st_size > limit:
            raise FileError(errno.EFBIG, f"too large ({st.st_size} bytes; at most {limit})")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(65536, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # grew while being read
                raise FileError(errno.EFBIG, f"too large (more than {limit} bytes)")
        return b"".join(chunks)
    except FileError:
        raise
    except OSError as exc:
        raise FileError(exc.errno or errno.EIO, _reason(exc)) from None
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a file"
