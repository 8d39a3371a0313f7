"""Asking an engine for the wanted samples only, where its endpoint filters faithfully.

Engines that serve their registry through prometheus_client's WSGI app under
``<metrics path>/`` answer ``name[]`` parameters with those samples alone, while the plain
path ignores parameters. Asking for 40-odd sample names instead of the whole exposition saves
the engine's API server most of the work of writing it, and the daemon most of reading it.
Whether the filtered answer is faithful is checked against a whole one, again every
:data:`RECHECK` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from urllib.parse import quote, urlsplit, urlunsplit

from structlog.typing import FilteringBoundLogger

from exporter.config import Config
from exporter.expfmt import Exposition
from exporter.fetch import Fetcher, FetchError

__all__ = ["RECHECK", "FilteredReader", "filtered_url"]

RECHECK = 600.0
"""Seconds between checks that the endpoint's filtered answer holds every wanted series."""

Series = frozenset[tuple[str, tuple[tuple[str, str], ...]]]
Read = Callable[[Fetcher], tuple[int, Exposition]]


def filtered_url(url: str, names: Iterable[str]) -> str:
    """The endpoint's URL asking for the samples ``names`` only, by ``name[]`` parameters."""
    parts = urlsplit(url)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    query = [parts.query] if parts.query else []
    query += [f"name%5B%5D={quote(name, safe='')}" for name in sorted(names)]
    return urlunsplit(parts._replace(path=path, query="&".join(query)))


def _series(exp: Exposition) -> Series:
    """Every sample's name and labels, to compare two answers regardless of values."""
    return frozenset((name, tuple(sorted(labels.items())))
                     for family in exp.families for name, labels, _v, _t in family.samples)


class FilteredReader:
    """Chooses, poll by poll, between the filtered and the whole answer."""

    def __init__(self, url: str, names: frozenset[str], cfg: Config,
                 log: FilteringBoundLogger) -> None:
        self.names = names
        self.fetcher = Fetcher(filtered_url(url, names), cfg.poll_timeout,
                               cfg.max_response_bytes)
        self.log = log
        self.filtering = False
        """Whether polls ask for the wanted samples only."""
        self._probe: Series | None = None
        """The series of the last whole answer, for the next filtered one to be checked by."""
        self._check_at = 0.0

    def _read_filtered(self, read: Read) -> tuple[int, Exposition] | None:
        """The filtered answer; None when the endpoint has no such route (a 3xx or 4xx) or
        answers it with no samples (prometheus_client's multiprocess mode)."""
        try:
            size, exp = read(self.fetcher)
        except FetchError as exc:
            if exc.status is None or exc.status >= 500:
                raise  # down, slow or failing: the whole answer would fare no better
            return None
        return (size, exp) if any(f.samples for f in exp.families) else None

    def _set_filtering(self, on: bool) -> None:
        if on != self.filtering:
            self.log.info("reading the wanted samples only" if on else
                          "reading the whole exposition: the endpoint's name[] filter is"
                          " missing or incomplete", names=len(self.names))
        self.filtering = on

    def read(self, read: Read, whole: Fetcher) -> tuple[int, Exposition]:
        """One answer, filtered when it was found to filter faithfully.

        A whole answer is read first and then every :data:`RECHECK` seconds; the poll after
        it asks for the filtered one and keeps filtering only if that holds exactly the same
        series. Each poll makes one request, two only when a filtered answer fails.
        """
        now = time.monotonic()
        probe, self._probe = self._probe, None
        if probe is not None or (self.filtering and now < self._check_at):
            got = self._read_filtered(read)
            if got is not None and (probe is None or _series(got[1]) == probe):
                self._set_filtering(True)
                return got
            self._set_filtering(False)
            self._check_at = now + RECHECK
            return read(whole)
        size, exp = read(whole)
        if now >= self._check_at:
            self._check_at = now + RECHECK
            series = _series(exp)
            self._probe = series if series else None
        return size, exp

    def close(self) -> None:
        self.fetcher.close()
