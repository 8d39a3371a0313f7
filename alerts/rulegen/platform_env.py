"""Tickets about the platform under the engines (the fingerprint): a memory balloon taking
memory while the KV cache is nearly full, foreign processes on a GPU that serves an engine,
and an engine's processes allowed off its GPU's NUMA node. None of them pages."""

from __future__ import annotations

from .base import GPU, Ctx, Rule, percent


def alerts(c: Ctx) -> list[Rule]:
    s = c.s
    node = c.by("job, instance")
    gpu = c.by("job, instance, gpu, uuid")
    return [
        c.alert(
            "InferenceNodeBalloonWhileKVCacheFull",
            f"""
rate(inference_node_host_balloon_inflated_bytes_total{c.sel()}[{s['balloon_range']}])
  > 0
and on ({node})
max by ({node}) (inference_node_engine_kv_cache_usage_ratio{c.sel()})
  > {s['balloon_kv_cache_usage']}
""",
            "balloon_for", "warning",
            "The hypervisor's memory balloon takes memory while the KV cache is nearly full.",
            f"The memory balloon of {{{{ $labels.instance }}}} inflates by"
            f" {{{{ $value | humanize1024 }}}}B/s (over {s['balloon_range']}) while an engine"
            f" on it has its KV cache more than {percent(s['balloon_kv_cache_usage'])} full:"
            f" the host reclaims guest memory the engines' CPU side (KV offload, pinned"
            f" buffers) counts on, and latency varies for reasons outside the node."),
        c.alert(
            "InferenceNodeGPUForeignProcesses",
            f"""
inference_node_gpu_foreign_processes{c.sel()}
  > {s['gpu_foreign_processes']}
and on ({gpu})
inference_node_gpu_engine_info{c.sel()}
""",
            "gpu_foreign_processes_for", "warning",
            "A GPU that serves an engine runs processes of no known engine.",
            f"{GPU} runs {{{{ $value }}}} compute processes that belong to no known engine"
            f" beside the engine it serves, for {s['gpu_foreign_processes_for']}: they share"
            f" its time and memory (a GPU noisy neighbour)."),
        c.alert(
            "InferenceNodeEngineNUMAMisaligned",
            f"inference_node_engine_numa_aligned{c.sel()} == 0",
            "numa_misaligned_for", "info",
            "An engine's processes may run off the NUMA node of their GPU.",
            f"The processes of engine endpoint {{{{ $labels.endpoint }}}} on {GPU} may run"
            f" on CPUs of another NUMA node than the GPU's, for {s['numa_misaligned_for']}:"
            f" host-to-device copies and kernel launches cross the socket interconnect."),
    ]
