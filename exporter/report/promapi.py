"""Prometheus' HTTP API (Thanos and Mimir speak it too): instant and range queries, bounded
in time and size, every failure one clear :class:`ReportError`."""

from __future__ import annotations

import http.client
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_BYTES", "Prometheus", "ReportError", "Sample", "Series"]

MAX_BYTES = 256 << 20
"""Largest answer read: a week of a few hundred series at the chosen step is far less."""

Labels = dict[str, str]


class ReportError(Exception):
    """What stops the report, said for the terminal."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One series' value at one instant."""

    labels: Labels
    value: float


@dataclass(frozen=True, slots=True)
class Series:
    """One series over a range: (unix time, value) points, NaN and infinities left out."""

    labels: Labels
    points: tuple[tuple[float, float], ...]


def _finite(text: object) -> float | None:
    try:
        v = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class Prometheus:
    """Queries one Prometheus-compatible API at ``url`` (``http://host:9090``, or a path
    prefix such as Mimir's ``/prometheus``)."""

    def __init__(self, url: str, timeout: float = 60.0,
                 progress: Callable[[str], None] = lambda _: None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.progress = progress
        self.queries = 0

    def _get(self, path: str, params: dict[str, str]) -> object:
        self.queries += 1
        target = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(target, headers={
            "User-Agent": "inference-node-exporter-report", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                body = answer.read(MAX_BYTES + 1)
                missing = answer.length if len(body) <= MAX_BYTES else None
        except urllib.error.HTTPError as exc:
            body = exc.read(65536)
            raise ReportError(f"Prometheus at {self.url} refused {params.get('query', path)!r}:"
                              f" HTTP {exc.code}: {_error_text(body)}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise ReportError(f"cannot reach Prometheus at {self.url}: {reason}") from None
        if missing:  # urllib returns what came of a Content-Length body cut short
            raise ReportError(f"cannot reach Prometheus at {self.url}: its answer to"
                              f" {params.get('query')!r} broke off, {missing} bytes short")
        if len(body) > MAX_BYTES:
            raise ReportError(f"Prometheus' answer to {params.get('query')!r} exceeds"
                              f" {MAX_BYTES >> 20} MiB: narrow the selector or the range")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise ReportError(f"{self.url} did not answer with Prometheus' JSON: is it a"
                              " Prometheus API URL?") from None
        if not isinstance(data, dict) or data.get("status") != "success":
            raise ReportError(f"Prometheus refused {params.get('query')!r}:"
                              f" {_error_text(body)}")
        return data.get("data")

    def check(self) -> None:
        """Fail clearly now when the URL is no Prometheus API."""
        self._get("/api/v1/query", {"query": "1"})

    def instant(self, expr: str, at: float) -> list[Sample]:
        """``expr`` at unix time ``at``: one sample per series, non-finite ones left out."""
        data = self._get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})
        out = []
        for item in _result(data, "vector"):
            pair = item.get("value")
            if not (isinstance(pair, list) and len(pair) == 2):
                raise _malformed(expr, "a sample without its [time, value]")
            value = _finite(pair[1])
            if value is not None:
                out.append(Sample(_labels(item, expr), value))
        return out

    def range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        """``expr`` from ``start`` to ``end`` every ``step`` seconds."""
        data = self._get("/api/v1/query_range", {
            "query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
        out = []
        for item in _result(data, "matrix"):
            values = item.get("values", [])
            if not isinstance(values, list) or not all(
                    isinstance(p, list) and len(p) == 2 and _finite(p[0]) is not None
                    for p in values):
                raise _malformed(expr, "a series whose values are not [time, value] pairs")
            points = tuple((float(t), v) for t, raw in values
                           if (v := _finite(raw)) is not None)
            out.append(Series(_labels(item, expr), points))
        return out


def _malformed(expr: str, what: str) -> ReportError:
    return ReportError(f"Prometheus answered {expr[:120]!r} with {what}: is the URL a"
                       " Prometheus API, not a proxy that rewrites its answers?")


def _labels(item: dict[str, Any], expr: str) -> Labels:
    metric = item.get("metric", {})
    if not (isinstance(metric, dict) and all(isinstance(v, str) for v in metric.values())):
        raise _malformed(expr, "a series whose labels are not strings")
    return dict(metric)


def _result(data: object, kind: str) -> list[dict[str, Any]]:
    if not isinstance(data, dict) or data.get("resultType") != kind:
        raise ReportError(f"Prometheus answered with no {kind} result")
    result = data.get("result")
    if not (isinstance(result, list) and all(isinstance(r, dict) for r in result)):
        raise ReportError(f"Prometheus answered with a {kind} result that is not a list of"
                          " series")
    return result


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
        if isinstance(data, dict) and data.get("error"):
            return str(data["error"])[:300]
    except (ValueError, RecursionError):
        pass
    return body[:300].decode("utf-8", "replace")
