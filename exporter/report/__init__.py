"""The variance report: ``inference-node-exporter report`` reads the daemon's series from
Prometheus over a range and documents each node's latency, what tracks it and what it costs.

:mod:`~exporter.report.promapi` asks Prometheus, :mod:`~exporter.report.span` chooses the
range and its step, :mod:`~exporter.report.figures` computes every figure,
:mod:`~exporter.report.stats` holds the statistics, :mod:`~exporter.report.write` writes
``report.json`` and ``report.md``, and :mod:`~exporter.report.cli` is the command.
"""
