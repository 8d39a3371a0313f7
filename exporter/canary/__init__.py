"""The canary: a fixed, small streaming request sent to an engine on a fixed cadence, whose
latency moves only with the platform and the load, never with the workload's mix.

:mod:`~exporter.canary.settings` reads its configuration, :mod:`~exporter.canary.probes`
runs one :class:`~exporter.canary.prober.Prober` per opted-in endpoint, and
:mod:`~exporter.canary.record` renders what they measured.
"""
