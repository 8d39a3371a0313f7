"""The cost recording rules: what the GPUs cost per hour and per million generated tokens,
per node, per model and for the fleet; GPU utilisation over 1h and 24h; the cost of a busy
GPU-hour; and, with the knob ``cost_compare_hourly_price``, the utilisation above which a
flat-rate alternative is cheaper.

Prices come from the daemon's ``inference_node_gpu_hourly_cost`` (absent for a GPU with no
price). Tokens are those of the engines that run on priced GPUs (joined through
``inference_node_gpu_engine_info``); a GPU serving several engine endpoints splits its cost
evenly over them. Every division keeps only denominators above 0: no tokens, no price or an
idle GPU leaves the figure absent, never Inf or NaN.
"""

from __future__ import annotations

from .base import Ctx, Rule

COST = "inference_node_gpu_hourly_cost"
ENGINE_INFO = "inference_node_gpu_engine_info"

NODE_COST = "instance:inference_node_gpu_hourly_cost:sum"
ENDPOINT_COST = "instance_endpoint:inference_node_gpu_hourly_cost:sum"
ENDPOINT_TOKENS = "instance_endpoint_model:inference_node_gpu_generation_tokens:rate"
NODE_TOKENS = "instance:inference_node_gpu_generation_tokens:rate"
MODEL_COST = "model:inference_node_gpu_hourly_cost:sum"
MODEL_TOKENS = "model:inference_node_gpu_generation_tokens:rate"
FLEET_COST = "job:inference_node_gpu_hourly_cost:sum"
FLEET_TOKENS = "job:inference_node_gpu_generation_tokens:rate"
PER_MILLION = "{level}:inference_node_gpu_cost_per_million_tokens:ratio"
UTILIZATION = "instance_gpu:inference_node_gpu_utilization_ratio:avg_over_time{window}"
UTILIZATION_WINDOWS = ("1h", "24h")
BUSY_HOUR_COST = "instance_gpu:inference_node_gpu_cost_per_busy_hour:ratio"
BREAK_EVEN = "instance_gpu:inference_node_gpu_compare_break_even_utilization:ratio"
CHEAPER = "instance_gpu:inference_node_gpu_compare_cheaper:bool"


def recording(c: Ctx) -> list[Rule]:
    """Every cost rule, each after the recorded series it reads."""
    return _tokens(c) + _per_million(c) + _utilization(c) + _compare(c)


def _tokens(c: Ctx) -> list[Rule]:
    """The hourly cost and the generated tokens per second per node, engine endpoint, model
    and fleet."""
    gpu, endpoint = c.by("job, instance, gpu, uuid"), c.by("job, instance, engine, endpoint")
    single = f"count by ({endpoint}) ({ENDPOINT_TOKENS}) == 1"
    return [
        {"record": NODE_COST,
         "expr": f"sum by ({c.by('job, instance, currency')}) ({COST}{c.sel()})"},
        {"record": ENDPOINT_COST,
         "expr": f"sum by ({c.by('job, instance, engine, endpoint, currency')}) (\n"
                 f"    {ENGINE_INFO}{c.sel()}\n  * on ({gpu}) group_left (currency)\n"
                 f"    (\n        {COST}{c.sel()}\n      / on ({gpu}) group_left ()\n"
                 f"        count by ({gpu}) ({ENGINE_INFO}{c.sel()})\n    )\n)"},
        # Only the engines on priced GPUs: their tokens are what the cost buys.
        {"record": ENDPOINT_TOKENS,
         "expr": f"sum by ({c.by('job, instance, engine, endpoint, model')}) (\n"
                 f"    rate(inference_node_engine_generation_tokens_total{c.sel()}"
                 f"[{c.s['rate_range']}])\n  and on ({endpoint})\n    {ENDPOINT_COST}\n)"},
        {"record": NODE_TOKENS,
         "expr": f"sum by ({c.by('job, instance')}) ({ENDPOINT_TOKENS})"},
        # Per model, the endpoints that serve one model: an endpoint serving several
        # (Triton) has no share of its cost per model to tell, so it is left out.
        {"record": MODEL_COST,
         "expr": f"sum by ({c.by('job, model, currency')}) (\n    {ENDPOINT_COST}\n"
                 f"  * on ({endpoint}) group_left (model)\n"
                 f"    count by ({c.by('job, instance, engine, endpoint, model')}) (\n"
                 f"      {ENDPOINT_TOKENS} and on ({endpoint}) {single}\n    )\n)"},
        {"record": MODEL_TOKENS,
         "expr": f"sum by ({c.by('job, model')}) (\n"
                 f"  {ENDPOINT_TOKENS} and on ({endpoint}) {single}\n)"},
        {"record": FLEET_COST, "expr": f"sum by ({c.by('job, currency')}) ({NODE_COST})"},
        {"record": FLEET_TOKENS, "expr": f"sum by ({c.by('job')}) ({NODE_TOKENS})"},
    ]


def _per_million(c: Ctx) -> list[Rule]:
    """Currency units per million generated tokens: the hourly cost over the tokens an hour
    generates at the current rate, only where tokens are generated."""
    return [{
        "record": PER_MILLION.format(level=level),
        "expr": f"  1e6 * {cost}\n/ on ({c.by(labels)}) group_left ()\n"
                f"  (3600 * ({tokens} > 0))",
    } for level, labels, cost, tokens in (
        ("instance", "job, instance", NODE_COST, NODE_TOKENS),
        ("model", "job, model", MODEL_COST, MODEL_TOKENS),
        ("job", "job", FLEET_COST, FLEET_TOKENS))]


def _utilization(c: Ctx) -> list[Rule]:
    """Each GPU's mean utilisation over 1h and 24h, and its cost per busy hour: the hourly
    cost over the 24h utilisation (an idle GPU has none)."""
    gpu = c.by("job, instance, gpu, uuid")
    rules: list[Rule] = [{
        "record": UTILIZATION.format(window=w),
        "expr": f"avg_over_time(inference_node_gpu_utilization_ratio{c.sel()}[{w}])",
    } for w in UTILIZATION_WINDOWS]
    rules.append({
        "record": BUSY_HOUR_COST,
        "expr": f"  {COST}{c.sel()}\n/ on ({gpu}) group_left ()\n"
                f"  ({UTILIZATION.format(window='24h')} > 0)",
    })
    return rules


def _compare(c: Ctx) -> list[Rule]:
    """With ``cost_compare_hourly_price`` set: paying the GPU's price for its busy hours
    only (P x utilisation per hour) against the alternative's flat price A per hour. The
    alternative is cheaper above the utilisation A / P; 1 where the 24h utilisation is
    above it."""
    alternative = c.s["cost_compare_hourly_price"]
    if not alternative:
        return []
    return [
        {"record": BREAK_EVEN, "expr": f"{alternative} / {COST}{c.sel()}"},
        {"record": CHEAPER,
         "expr": f"  {BREAK_EVEN}\n< bool on ({c.by('job, instance, gpu, uuid')})"
                 f" group_left ()\n  {UTILIZATION.format(window='24h')}"},
    ]
