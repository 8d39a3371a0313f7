"""The cost and utilisation dashboard: what the GPUs cost per hour and per million generated
tokens, per node, model and fleet, how busy they are over 1h and 24h, and what a busy
GPU-hour costs. Every figure comes from the cost recording rules of alerts/ (rulegen/cost.py)
and the daemon's ``inference_node_gpu_hourly_cost``: absent where no price is configured."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as model
from layout import Section, assemble
from panels import GREEN, Q, graph, single, thresholds, worst_bars
from queries import G, J, M, N, worst

COST = "inference_node_gpu_hourly_cost"
NODE_COST = "instance:inference_node_gpu_hourly_cost:sum"
FLEET_COST = "job:inference_node_gpu_hourly_cost:sum"
NODE_TOKENS = "instance:inference_node_gpu_generation_tokens:rate"
PER_MILLION = "{level}:inference_node_gpu_cost_per_million_tokens:ratio"
UTILIZATION = "instance_gpu:inference_node_gpu_utilization_ratio:avg_over_time{window}"
BUSY_HOUR = "instance_gpu:inference_node_gpu_cost_per_busy_hour:ratio"
PRICES = ("Prices come from the daemon's [cost] settings (--cost.gpu-hourly-price, the"
          " per-model table) in their currency; a GPU with no price counts nowhere.")


def per_million(level: str, selector: str) -> str:
    """The recorded cost per million generated tokens at ``level`` (instance, model, job)."""
    return f"{PER_MILLION.format(level=level)}{{{selector}}}"


def utilization(window: str) -> str:
    """Each selected GPU's mean utilisation over ``window`` (1h or 24h), recorded."""
    return f"{UTILIZATION.format(window=window)}{{{G}}}"


def busy_hour_cost() -> str:
    """Each selected GPU's hourly cost over its 24h utilisation, recorded."""
    return f"{BUSY_HOUR}{{{G}}}"


def cost_now() -> Section:
    """The fleet's headline cost figures."""
    return Section("Cost now", [
        single("GPU cost per hour", "What the selected job's priced GPUs cost per hour, idle"
               f" ones included, per currency. {PRICES}", "short",
               Q(f"sum by (currency) ({FLEET_COST}{{{J}}})", "{{currency}}/h"), w=6,
               decimals=2),
        single("Cost per million generated tokens",
               "The fleet's GPU cost per hour over the tokens its engines on priced GPUs"
               " generate in an hour at the current rate. Absent while nothing is generated.",
               "short", Q(per_million("job", J), "{{currency}}"), w=6, decimals=2),
        single("GPU utilisation, 24h", "Mean share of time a kernel ran, over the selected"
               " GPUs and the last 24 hours.", "percentunit",
               Q(f"avg({utilization('24h')})"), w=6,
               steps=thresholds((None, "red"), (0.3, "orange"), (0.6, "green"))),
        single("Priced GPUs", "GPUs with a price per hour; the others are left out of every"
               " cost figure.", "none", Q(f"count({COST}{{{G}}})"), w=6),
    ])


def cost_per_token() -> Section:
    """Cost per million generated tokens per node and model, and the most expensive nodes."""
    return Section("Cost per token", [
        graph("Cost per million generated tokens per node",
              "Each node's GPU cost per hour (every priced GPU, idle ones included) over the"
              " tokens its engines on priced GPUs generate in an hour. A node above the others"
              " pays for idle or slow GPUs.",
              "short", Q(per_million("instance", N), "{{instance}} ({{currency}})"),
              w=12, axis="per million tokens", node_link=True),
        graph("Cost per million generated tokens per model",
              "The cost of the GPUs that serve each model (a GPU shared by endpoints split"
              " evenly) over the model's tokens. Endpoints serving several models are left"
              " out: their cost has no share per model to tell.",
              "short", Q(per_million("model", M), "{{model}} ({{currency}})"),
              w=12, axis="per million tokens"),
        worst_bars("Most expensive nodes per token",
                   "The $topk nodes with the highest cost per million generated tokens, highest"
                   " first.", "short",
                   Q(worst(f"max by (instance) ({per_million('instance', N)})"),
                     "{{instance}}"), decimals=2),
        graph("GPU cost per hour per node",
              f"What each node's priced GPUs cost per hour. {PRICES}", "short",
              Q(f"{NODE_COST}{{{N}}}", "{{instance}} ({{currency}})"), axis="per hour"),
        graph("Tokens generated on priced GPUs",
              "Generated tokens per second of the engines that run on each node's priced"
              " GPUs: what the cost above buys.", "short",
              Q(f"{NODE_TOKENS}{{{N}}}", "{{instance}}"), axis="tokens/s"),
    ])


def cost_utilization() -> Section:
    """Utilisation over 1h and 24h, and the cost of a busy GPU-hour."""
    return Section("Utilisation", [
        graph("GPU utilisation per node, 1h and 24h",
              "The mean utilisation of each node's GPUs over the last hour and the last"
              " 24 hours. Low and flat: the node is paid for and idle.",
              "percentunit",
              Q(f"avg by (instance) ({utilization('1h')})", "{{instance}} 1h"),
              Q(f"avg by (instance) ({utilization('24h')})", "{{instance}} 24h"),
              w=12, max_val=1),
        graph("Cost per busy GPU-hour",
              "Each GPU's price per hour over its 24h utilisation: what an hour of work costs"
              " when every hour is paid for. Twice the price at 50% utilisation; absent for an"
              " idle GPU.", "short",
              Q(busy_hour_cost(), "{{instance}} GPU {{gpu}} ({{currency}})"),
              w=12, axis="per busy hour"),
        worst_bars("Most expensive busy GPU-hours",
                   "The $topk GPUs with the highest cost per busy hour: the least used for"
                   " their price, highest first.", "short",
                   Q(worst(f"max by (instance, gpu) ({busy_hour_cost()})"),
                     "{{instance}} GPU {{gpu}}"),
                   decimals=2, steps=thresholds(GREEN)),
    ])


def cost_and_utilization() -> model.Dashboard:
    """The selected nodes' GPU cost, cost per token and utilisation."""
    return assemble(
        "Inference cost and utilisation", "inference-cost-utilisation",
        "What the GPUs cost per hour and per million generated tokens (per node, model and"
        " fleet), how busy they are over 1h and 24h, and what a busy GPU-hour costs: from the"
        " cost recording rules of alerts/ and the prices of the daemon's [cost] settings.",
        [cost_now(), cost_per_token(), cost_utilization()],
        node_multi=True, gpu=True, topk=True, alert_annotation=False)
