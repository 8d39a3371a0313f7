"""inference-node-exporter: one Prometheus exporter per LLM inference node."""

__version__ = "0.1.0"
