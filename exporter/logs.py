"""structlog set-up: JSON lines when not on a terminal, readable key=value on one."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

__all__ = ["configure", "get", "printable"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def _front(_logger: object, _name: str, event: structlog.typing.EventDict
           ) -> structlog.typing.EventDict:
    """Put ts, level and event first, then the rest in the order they were bound."""
    head = {k: event.pop(k) for k in ("ts", "level", "event") if k in event}
    head.update(event)
    return head


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route structlog to ``stream`` (stderr) at ``level``; ``fmt`` is auto, json or logfmt."""
    out = stream or sys.stderr
    if fmt == "auto":
        fmt = "logfmt" if out.isatty() else "json"
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.processors.LogfmtRenderer(
            key_order=["ts", "level", "event"], drop_missing=True
        )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            _front,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger bound to a component name."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(component=name)
    return logger


def printable(text: str, limit: int = 200) -> str:
    """``text`` safe for a log line: control and unprintable characters escaped, at most
    ``limit`` characters of it kept (upstream answers may be binary or huge)."""
    cut = text[:limit]
    if not cut.isprintable():
        cut = repr(cut)[1:-1]
    return cut[:limit] + "..." if len(text) > limit or len(cut) > limit else cut
