"""The PromQL the report runs: every figure's query, written once, so that a test can run
the same PromQL directly and compare."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.canary.record import HISTOGRAMS as CANARY_HISTOGRAMS
from exporter.collectors.dcgm import DRAM_ACTIVE
from exporter.collectors.environment import BALLOON_INFLATED
from exporter.collectors.gpu_readings import THROTTLE_REASON
from exporter.collectors.host import CPU_STEAL, PRESSURE_STALLED
from exporter.derive.attribution import MEMORY_PRESSURE
from exporter.derive.engine_state import REQUESTS_WAITING
from exporter.derive.platform import FOREIGN_PROCESSES
from exporter.latency import by_key

__all__ = ["CANARY", "DRIVERS", "NODE", "USER", "Driver", "Q"]

NODE = "cluster, job, instance"
"""The labels that name a node (``cluster`` is empty where the targets have none)."""
USER = {key: by_key(key).family for key in ("ttft", "itl", "e2e")}
"""User traffic's latency histograms, as the daemon re-exports them."""
CANARY = {key: CANARY_HISTOGRAMS[key].name for key in ("ttft", "itl", "e2e")}


@dataclass(frozen=True, slots=True)
class Driver:
    """A signal that may move with the P99, and how it is read over time:
    ``<agg> by (<node>[, model]) (<fn>(<metric>{<selector>,<matchers>}[<window>]))``."""

    key: str
    title: str
    agg: str
    fn: str
    metric: str
    matchers: str = ""
    per_model: bool = False
    """Whether it is read per model (else per node)."""
    per_gpu: bool = False
    """Whether it is a GPU's signal, also read per GPU to name the one that moves most."""


DRIVERS: tuple[Driver, ...] = (
    Driver("cpu_steal", "CPU steal", "max", "avg_over_time",
           CPU_STEAL.name),
    Driver("gpu_throttling", "GPU clocks held down", "max", "avg_over_time",
           THROTTLE_REASON.name,
           'reason!~"gpu_idle|applications_clocks_setting|display_clock_setting"', per_gpu=True),
    Driver("dram_active", "GPU memory bandwidth (DRAM active)", "avg", "avg_over_time",
           DRAM_ACTIVE.name, per_gpu=True),
    Driver("gpu_memory_pressure", "GPU memory pressure", "max", "max_over_time",
           MEMORY_PRESSURE.name, per_gpu=True),
    Driver("host_memory_stall", "Host memory pressure (stalled time)", "max", "rate",
           PRESSURE_STALLED.name, 'resource="memory"'),
    Driver("balloon", "Memory balloon inflating", "sum", "rate",
           BALLOON_INFLATED.name),
    Driver("foreign_gpu_processes", "Foreign GPU processes", "sum", "max_over_time",
           FOREIGN_PROCESSES.name, per_gpu=True),
    Driver("queue_depth", "Queue depth", "sum", "avg_over_time",
           REQUESTS_WAITING.name, per_model=True),
)


class Q:
    """The queries, for one selector (label matchers without braces)."""

    def __init__(self, matchers: str) -> None:
        self.s = matchers

    def sel(self, extra: str = "") -> str:
        parts = [p for p in (self.s, extra) if p]
        return "{" + ",".join(parts) + "}"

    def engines(self, rng: str) -> str:
        """Each node and model with user-traffic latency in the range."""
        return (f"count by ({NODE}, model) (last_over_time({USER['ttft']}_count{self.sel()}"
                f"[{rng}]))")

    def quantile_over_range(self, family: str, q: float, rng: str) -> str:
        """The ``q`` quantile of every observation in the range, per node and model."""
        return (f"histogram_quantile({q:g}, sum by ({NODE}, model, le) (increase("
                f"{family}_bucket{self.sel()}[{rng}])))")

    def quantile_over_time(self, family: str, q: float, window: str) -> str:
        """The ``q`` quantile of each window's observations, per node and model; absent
        for a window without any."""
        return (f"histogram_quantile({q:g}, sum by ({NODE}, model, le) (rate("
                f"{family}_bucket{self.sel()}[{window}])))"
                f" and on ({NODE}, model) sum by ({NODE}, model) (rate("
                f"{family}_count{self.sel()}[{window}])) > 0")

    def driver(self, d: Driver, window: str, by_gpu: bool = False) -> str:
        """The signal per node (and model, or GPU)."""
        by = f"{NODE}, model" if d.per_model else f"{NODE}, gpu" if by_gpu else NODE
        return f"{d.agg} by ({by}) ({d.fn}({d.metric}{self.sel(d.matchers)}[{window}]))"

    def environment(self, rng: str) -> str:
        return f"last_over_time(inference_node_environment_info{self.sel()}[{rng}])"

    def tokens(self, rng: str) -> str:
        """Tokens generated in the range, per node and model."""
        return (f"sum by ({NODE}, model) (increase("
                f"inference_node_engine_generation_tokens_total{self.sel()}[{rng}]))")

    def gpus(self, rng: str) -> str:
        return f"count by ({NODE}) (last_over_time(inference_node_gpu_info{self.sel()}[{rng}]))"

    def utilisation(self, rng: str) -> str:
        return (f"avg by ({NODE}) (avg_over_time(inference_node_gpu_utilization_ratio"
                f"{self.sel()}[{rng}]))")

    def hourly_cost(self, rng: str) -> str:
        """The node's GPUs' price per hour, averaged over the range."""
        return (f"sum by ({NODE}, currency) (avg_over_time(inference_node_gpu_hourly_cost"
                f"{self.sel()}[{rng}]))")

    def priced_gpus(self, rng: str) -> str:
        return (f"count by ({NODE}) (last_over_time(inference_node_gpu_hourly_cost"
                f"{self.sel()}[{rng}]))")
