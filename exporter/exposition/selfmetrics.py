"""The daemon's own series: its build, and each source's polls, errors and answers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from exporter.exposition.family import Spec
from exporter.exposition.lines import Families, labelstr
from exporter.snapshot import SourceState

__all__ = ["render"]

_SRC = ("collector", "source")
BUILD_INFO = Spec("inference_node_exporter_build_info", "gauge",
                  "Build information of the exporter; always 1.", ("version", "python_version"))
COLLECTOR_UP = Spec("inference_node_exporter_collector_up", "gauge",
                    "1 if the source's last poll succeeded, else 0.", _SRC)
POLL_DURATION = Spec("inference_node_exporter_collector_poll_duration_seconds", "gauge",
                     "Wall-clock duration of the source's last poll.", _SRC)
LAST_SUCCESS = Spec("inference_node_exporter_collector_last_success_timestamp_seconds",
                    "gauge", "Unix time of the source's last successful poll.", _SRC)
POLLS = Spec("inference_node_exporter_collector_polls_total", "counter",
             "Polls of the source, successful or not.", _SRC)
ERRORS = Spec("inference_node_exporter_collector_errors_total", "counter",
              "Failed polls of the source by reason.", (*_SRC, "reason"))
MALFORMED_LINES = Spec("inference_node_exporter_collector_malformed_lines_total", "counter",
                       "Upstream lines that could not be parsed and were skipped.", _SRC)
DROPPED_SERIES = Spec(
    "inference_node_exporter_collector_dropped_series_total", "counter",
    "Upstream label sets dropped because the source exceeded its series limit.", _SRC)
RESPONSE_BYTES = Spec("inference_node_exporter_collector_response_bytes", "gauge",
                      "Size of the source's last response body.", _SRC)
PARSER_CACHE = Spec(
    "inference_node_exporter_collector_parser_cache_bytes", "gauge",
    "Bytes (estimated) the source's parser caches hold; emptied past 4 MiB, so a hostile"
    " upstream cannot grow them.", _SRC)
RENDER_ERRORS = Spec(
    "inference_node_exporter_render_errors_total", "counter",
    "Failures while rendering a source's metrics for a scrape (the scrape still answers).",
    ("collector",))


def render(build: str, states: Iterable[SourceState],
           render_errors: Mapping[str, int]) -> Families:
    """The self-metrics: ``build`` is the build info's labels, rendered."""
    f = Families()
    f.add(BUILD_INFO.name, build, 1.0)
    for s in states:
        labels = labelstr(collector=s.collector, source=s.source)
        f.add(COLLECTOR_UP.name, labels, 1.0 if s.up else 0.0)
        f.add(POLL_DURATION.name, labels, s.duration)
        if s.last_success is not None:
            f.add(LAST_SUCCESS.name, labels, s.last_success)
        f.add(POLLS.name, labels, float(s.polls))
        for reason, count in sorted(s.errors.items()):
            f.add(ERRORS.name, f"{labels},{labelstr(reason=reason)}", float(count))
        f.add(MALFORMED_LINES.name, labels, float(s.malformed_lines))
        f.add(DROPPED_SERIES.name, labels, float(s.dropped_series))
        if s.response_bytes is not None:
            f.add(RESPONSE_BYTES.name, labels, float(s.response_bytes))
        if s.cache_bytes is not None:
            f.add(PARSER_CACHE.name, labels, float(s.cache_bytes))
    for collector, count in sorted(render_errors.items()):
        f.add(RENDER_ERRORS.name, labelstr(collector=collector), float(count))
    return f
