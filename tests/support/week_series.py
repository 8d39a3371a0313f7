"""A generated week of the daemon's series for two nodes, with its ground truth: the test
data of the variance report (``exporter/report/``). ``tests/support/week.py`` writes it as
OpenMetrics text and serves it from a real Prometheus.

Seeded and pure Python, so every run makes the same values. One sample a minute for 7 days
ending at :data:`END`; the sample at ``t`` stands for the minute ``(t - 60, t]`` (the first
lies at ``start + 60``, the last at ``end``). Both nodes serve ~300 requests a minute with a
daily pattern (highest at 14:00 UTC) and carry the same families:

* **node A** (bare metal) is steady: its latency P99 is flat with small noise, its steal ~0,
  and nothing moves together with its P99.
* **node B** (a KVM guest) has :attr:`Node.spikes`: twelve spells of 30-90 minutes of CPU
  steal (0.2-0.4 inside, ~0.01 outside) in which its user and canary latencies are 3.5-4.5
  times their usual. Its queue depth, GPU and memory signals do not track them: they follow
  the daily pattern, which the spikes sample evenly (spike ``k`` starts 5-6 h into the
  ``k``-th twelfth of the week, 14 h long, so the twelve start at twelve different even
  hours of the day), or noise, or spells placed at random at least an hour from any spike.

Latencies are lognormal; a minute's cumulative bucket counts are ``floor(n F(le) + u)``, with
one uniform ``u`` for all of its buckets, so they are cumulative and ``+Inf`` is ``n``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from typing import Literal

from exporter.canary.record import BUCKETS as CANARY_BUCKETS
from tests.vllm_sim.expected import ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS

END = int(datetime(2026, 11, 30, tzinfo=UTC).timestamp())
"""The last sample's time, 2026-11-30T00:00:00Z."""
DAYS = 7
STEP = 60
"""Seconds between samples."""
SEED = 20261130
JOB = "inference-node"
CLUSTER = "test"
MINUTE, HOUR, DAY = 60, 3600, 86400
ENGINE = {"engine": "vllm", "endpoint": "chat", "model": "llama-3-70b", "dp_rank": "0"}
CANARY = {"engine": "vllm", "endpoint": "chat", "model": "llama-3-70b"}
PROBES_PER_MINUTE = 6
CANARY_TOKENS = 16
"""Tokens each probe streams: 15 inter-token gaps."""
GPU_NAME = "NVIDIA H100 80GB HBM3"
INF = math.inf
Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True, slots=True)
class Spike:
    """A spell of steal and slow requests: the samples at ``start < t <= end``."""

    start: int
    end: int
    factor: float
    """How many times their usual the latencies are."""
    steal: float
    """The steal ratio's level."""

    def covers(self, t: float) -> bool:
        return self.start < t <= self.end


@dataclass(frozen=True, slots=True)
class Node:
    key: str
    """``a`` or ``b``."""
    instance: str
    hourly_cost: float
    """USD per GPU-hour."""
    environment: tuple[tuple[str, str], ...]
    """``inference_node_environment_info``'s labels."""
    gpu_virtualization: str
    """``inference_node_gpu_info``'s ``virtualization_mode``."""
    spikes: tuple[Spike, ...]
    gpus: int = 2

    @property
    def labels(self) -> dict[str, str]:
        """The target labels every series of the node carries."""
        return {"job": JOB, "instance": self.instance, "cluster": CLUSTER}

    def uuid(self, gpu: int) -> str:
        return f"GPU-{self.key * 2}0c2a7e-0000-4000-8000-{gpu:012d}"

    def in_spike(self, t: float) -> bool:
        return any(s.covers(t) for s in self.spikes)


@dataclass(frozen=True, slots=True)
class Week:
    """The ground truth: the range, the sample interval and the nodes with their spikes."""

    start: int
    end: int
    step: int
    seed: int
    nodes: tuple[Node, ...]

    @property
    def stamps(self) -> range:
        """Every sample's time, in seconds."""
        return range(self.start + self.step, self.end + 1, self.step)

    @property
    def samples(self) -> int:
        """Samples per series."""
        return len(self.stamps)

    def node(self, key: str) -> Node:
        (node,) = (n for n in self.nodes if n.key == key)
        return node


def generate(seed: int = SEED, end: int = END) -> Week:
    """The ground truth of the week ending at ``end`` (a whole hour); each family's
    ``series`` gives its values."""
    start = end - DAYS * DAY
    env_a = (("environment", "bare_metal"), ("virtualization", "bare_metal"),
             ("hypervisor", "none"), ("container", "none"), ("gpu_virtualization", "none"))
    env_b = (("environment", "virtual_machine"), ("virtualization", "virtual_machine"),
             ("hypervisor", "kvm"), ("container", "none"),
             ("gpu_virtualization", "passthrough"))
    return Week(start, end, STEP, seed, (
        Node("a", "node-a:19400", 2.0, env_a, "none", ()),
        Node("b", "node-b:19400", 1.2, env_b, "passthrough",
             _spikes(random.Random(f"{seed}/b/spikes"), start))))


def _spikes(rng: random.Random, start: int) -> tuple[Spike, ...]:
    twelfth = DAYS * DAY // 12
    out = []
    for k in range(12):
        begin = start + k * twelfth + 5 * HOUR + rng.randrange(60) * MINUTE
        end = begin + rng.randrange(30, 91) * MINUTE
        out.append(Spike(begin, end, round(rng.uniform(3.3, 4.3), 3),
                         round(rng.uniform(0.2, 0.4), 3)))
    return tuple(out)


# --- what drives the series ---------------------------------------------------------------


def _rng(week: Week, node: Node, stream: str) -> random.Random:
    """One generator per node and series: a series' values do not hang on the others'."""
    return random.Random(f"{week.seed}/{node.key}/{stream}")


def daily(t: float) -> float:
    """The daily pattern, -1..1, highest at 14:00 UTC."""
    return math.sin(2 * math.pi * ((t % DAY) / DAY - 8 / 24))


def requests_per_minute(week: Week, node: Node) -> list[int]:
    rng = _rng(week, node, "requests")
    return [int(300 * (1 + 0.35 * daily(t)) * rng.gauss(1, 0.04) + rng.random())
            for t in week.stamps]


def spike_factors(week: Week, node: Node) -> list[float]:
    """Each sample's latency factor: its spike's, else 1."""
    return [next((s.factor for s in node.spikes if s.covers(t)), 1.0) for t in week.stamps]


def spells(week: Week, rng: random.Random, count: int, minutes: tuple[int, int]
           ) -> list[tuple[int, int]]:
    """``count`` spells ``(start, end)`` at random, an hour or more from each other and from
    every one of node B's spikes (on either node)."""
    taken = [(s.start, s.end) for s in week.node("b").spikes]
    out: list[tuple[int, int]] = []
    while len(out) < count:
        begin = week.start + HOUR + rng.randrange((week.end - week.start) // MINUTE - 240
                                                  ) * MINUTE
        end = begin + rng.randrange(*minutes) * MINUTE
        if all(end + HOUR <= b or begin >= e + HOUR for b, e in taken):
            taken.append((begin, end))
            out.append((begin, end))
    return sorted(out)


def during(week: Week, spans: Sequence[tuple[int, int]]) -> list[int]:
    """1 for each sample inside one of ``spans``, else 0."""
    return [int(any(b < t <= e for b, e in spans)) for t in week.stamps]


# --- the series ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    labels: dict[str, str]
    """Every label, the node's target labels first."""
    values: Sequence[float]
    """One per :attr:`Week.stamps`; whole counts are ints."""


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    """The OpenMetrics family name (a counter's without ``_total``)."""
    kind: Kind
    series: Callable[[Week, Node], list[Series]]


@dataclass(frozen=True, slots=True)
class Latency:
    """A lognormal latency: its usual median, its spread, and observations per request."""

    median: float
    sigma: float
    per_request: int = 1


def histogram(week: Week, node: Node, name: str, own: dict[str, str], bounds: Sequence[float],
              latency: Latency, counts: Sequence[int]) -> list[Series]:
    """``_bucket``, ``_sum`` and ``_count`` of ``counts[i]`` requests in minute ``i``, the
    median ``latency.median`` times the spike factor and a little noise."""
    rng = _rng(week, node, name)
    ns = [n * latency.per_request for n in counts]
    mus, us = [], []
    for factor in spike_factors(week, node):
        mus.append(math.log(latency.median * factor) + rng.gauss(0, 0.05))
        us.append(rng.random())
    r = math.sqrt(2) * latency.sigma
    low, high = min(mus) - 6 * r, max(mus) + 6 * r
    labels = {**node.labels, **own}
    out = []
    for le in bounds:
        lb = math.log(le) if le != INF else INF
        if lb < low:  # F(le) is 0 for every minute
            counts_le = [0] * len(ns)
        elif lb > high:  # 1
            counts_le = list(accumulate(ns))
        else:
            erfc = math.erfc
            counts_le = list(accumulate([int(n * 0.5 * erfc((mu - lb) / r) + u)
                                         for n, mu, u in zip(ns, mus, us, strict=True)]))
        out.append(Series(f"{name}_bucket", {**labels, "le": _le(le)}, counts_le))
    mean = math.exp(latency.sigma ** 2 / 2)
    sums = [round(s, 3) for s in accumulate(n * math.exp(mu) * mean
                                            for n, mu in zip(ns, mus, strict=True))]
    return [*out, Series(f"{name}_sum", labels, sums),
            Series(f"{name}_count", labels, out[-1].values)]


def _le(bound: float) -> str:
    """As the daemon writes ``le``: ``0.25``, ``1.0``, ``+Inf``."""
    return "+Inf" if bound == INF else repr(float(bound))


def _user(name: str, bounds: Sequence[float], latency: Latency) -> Family:
    def series(week: Week, node: Node) -> list[Series]:
        return histogram(week, node, name, ENGINE, (*bounds, INF), latency,
                         requests_per_minute(week, node))
    return Family(name, "histogram", series)


def _canary(name: str, latency: Latency) -> Family:
    def series(week: Week, node: Node) -> list[Series]:
        return histogram(week, node, name, CANARY, CANARY_BUCKETS, latency,
                         [PROBES_PER_MINUTE] * week.samples)
    return Family(name, "histogram", series)


Values = Callable[[Week, Node, random.Random], Sequence[float]]


def _family(name: str, kind: Kind, own: dict[str, str], values: Values,
            per_gpu: bool = False) -> Family:
    """A family with one series per node, or per GPU."""
    sample = name + ("_total" if kind == "counter" else "")

    def series(week: Week, node: Node) -> list[Series]:
        out = []
        for gpu in range(node.gpus) if per_gpu else (None,):
            ids = {} if gpu is None else {"gpu": str(gpu), "uuid": node.uuid(gpu)}
            rng = _rng(week, node, f"{name}/{gpu}")
            out.append(Series(sample, {**node.labels, **ids, **own}, values(week, node, rng)))
        return out
    return Family(name, kind, series)


def _gauge(level: Callable[[float], float], noise: float, digits: int = 4) -> Values:
    """A ratio: ``level(t)`` plus Gaussian noise, within 0..1."""
    return lambda week, _, rng: [round(min(1.0, max(0.0, level(t) + rng.gauss(0, noise))),
                                       digits) for t in week.stamps]


def _steal(week: Week, node: Node, rng: random.Random) -> list[float]:
    base = 0.0005 if node.key == "a" else 0.01
    out = []
    for t in week.stamps:
        level = next((s.steal for s in node.spikes if s.covers(t)), None)
        x = rng.gauss(base, base * 0.3) if level is None else rng.gauss(level, 0.02)
        out.append(round(min(1.0, max(0.0, x)), 5))
    return out


def _waiting(week: Week, _: Node, rng: random.Random) -> list[int]:
    """Queue depth: the daily pattern and noise."""
    return [max(0, round(4 + 3 * daily(t) + rng.gauss(0, 1.5))) for t in week.stamps]


def _tokens(week: Week, node: Node, rng: random.Random) -> list[int]:
    return list(accumulate(round(n * rng.gauss(180, 10))
                           for n in requests_per_minute(week, node)))


def _pressure(week: Week, _: Node, rng: random.Random) -> list[float]:
    """A slow random walk around 0.3."""
    walk, out = 0.0, []
    for _t in week.stamps:
        out.append(round(min(1.0, max(0.0, 0.3 + walk)), 4))
        walk = 0.98 * walk + rng.gauss(0, 0.01)
    return out


def _spelled(count: int, minutes: tuple[int, int]) -> Values:
    """1 in ``count`` random spells, 0 elsewhere."""
    return lambda week, _, rng: during(week, spells(week, rng, count, minutes))


def _balloon(week: Week, node: Node, rng: random.Random) -> list[int]:
    """Node A's balloon never moves; node B's inflates 64 MiB a minute in a few spells."""
    if node.key == "a":
        return [0] * week.samples
    inside = during(week, spells(week, rng, 6, (5, 30)))
    return list(accumulate(64 * 2**20 * x for x in inside))


def _stalls(week: Week, node: Node) -> list[Series]:
    """Seconds stalled on memory: 0.4% of the time for some task, 0.1% for all, on average,
    exponentially distributed."""
    out = []
    for kind, share in (("some", 0.004), ("full", 0.001)):
        rng = _rng(week, node, f"stall/{kind}")
        values = [round(s, 6) for s in accumulate(week.step * share * rng.expovariate(1)
                                                  for _ in week.stamps)]
        out.append(Series("inference_node_host_pressure_stalled_seconds_total",
                          {**node.labels, "resource": "memory", "kind": kind}, values))
    return out


def _gpu_info(week: Week, node: Node) -> list[Series]:
    return [Series("inference_node_gpu_info", {
        **node.labels, "gpu": str(gpu), "uuid": node.uuid(gpu), "name": GPU_NAME,
        "driver_version": "550.54.15", "cuda_version": "12.4",
        "pci_bus_id": f"00000000:{0x18 + gpu:02X}:00.0", "mig_mode": "disabled",
        "virtualization_mode": node.gpu_virtualization}, [1] * week.samples)
        for gpu in range(node.gpus)]


def _environment(week: Week, node: Node) -> list[Series]:
    return [Series("inference_node_environment_info",
                   {**node.labels, **dict(node.environment)}, [1] * week.samples)]


FAMILIES: tuple[Family, ...] = (
    _user("inference_node_engine_time_to_first_token_seconds", TTFT_BUCKETS,
          Latency(0.12, 0.45)),
    _user("inference_node_engine_inter_token_latency_seconds", ITL_BUCKETS,
          Latency(0.035, 0.35)),
    _user("inference_node_engine_e2e_request_latency_seconds", REQUEST_LATENCY_BUCKETS,
          Latency(7.0, 0.5)),
    _canary("inference_node_canary_time_to_first_token_seconds", Latency(0.045, 0.15)),
    _canary("inference_node_canary_inter_token_latency_seconds",
            Latency(0.03, 0.2, CANARY_TOKENS - 1)),
    _canary("inference_node_canary_e2e_request_latency_seconds", Latency(0.5, 0.15)),
    _family("inference_node_canary_probes", "counter",
            {"engine": "vllm", "endpoint": "chat", "outcome": "success"},
            lambda week, _, __: list(accumulate([PROBES_PER_MINUTE] * week.samples))),
    _family("inference_node_host_cpu_steal_ratio", "gauge", {}, _steal),
    _family("inference_node_engine_requests_waiting", "gauge", ENGINE, _waiting),
    _family("inference_node_engine_generation_tokens", "counter", ENGINE, _tokens),
    _family("inference_node_gpu_utilization_ratio", "gauge", {},
            _gauge(lambda t: 0.6 + 0.25 * daily(t), 0.04), per_gpu=True),
    _family("inference_node_gpu_hourly_cost", "gauge", {"currency": "USD"},
            lambda week, node, _: [node.hourly_cost] * week.samples, per_gpu=True),
    Family("inference_node_gpu_info", "gauge", _gpu_info),
    _family("inference_node_gpu_dram_active_ratio", "gauge", {"gpu_instance": ""},
            _gauge(lambda t: 0.35 + 0.15 * daily(t), 0.03), per_gpu=True),
    _family("inference_node_gpu_memory_pressure_ratio", "gauge", {}, _pressure, per_gpu=True),
    _family("inference_node_gpu_throttle_reason", "gauge", {"reason": "sw_thermal_slowdown"},
            _spelled(5, (10, 45)), per_gpu=True),
    _family("inference_node_gpu_foreign_processes", "gauge", {}, _spelled(4, (20, 120)),
            per_gpu=True),
    _family("inference_node_host_balloon_inflated_bytes", "counter", {}, _balloon),
    Family("inference_node_host_pressure_stalled_seconds", "counter", _stalls),
    Family("inference_node_environment_info", "gauge", _environment),
)
