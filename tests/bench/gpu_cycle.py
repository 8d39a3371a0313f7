"""CPU of one poll cycle of 8 simulated H100s (NVML through nvidia-ml-py) plus the host.

Run by bench.py in a process of its own, with the simulated NVML on LD_LIBRARY_PATH.
"""

from __future__ import annotations

from pathlib import Path

from exporter import logs
from exporter.collectors.gpu import NvmlSource
from exporter.collectors.host import HostSource
from tests.bench.bench import cpu_per_call


def main() -> None:
    logs.configure("warning")
    gpu = NvmlSource(timeout=5.0, expected=8)
    host = HostSource(Path("/proc"), Path("/sys"))

    def cycle() -> None:
        gpu.poll()
        host.poll()

    cycle()
    assert gpu._nvml is not None
    before = gpu._nvml.calls
    cycle()
    calls = gpu._nvml.calls - before
    spent = cpu_per_call(cycle, 3.0)
    print(f"gpu+host poll cycle, 8 simulated H100s:      {spent * 1e3:6.2f} ms CPU"
          f" ({calls} NVML calls per cycle)")
    only_gpu = cpu_per_call(gpu.poll, 2.0)
    print(f"  of which the gpu collector:                 {only_gpu * 1e3:6.2f} ms CPU")
    only_host = cpu_per_call(host.poll, 2.0)
    print(f"  of which the host collector:                {only_host * 1e3:6.2f} ms CPU")
    gpu.close()


if __name__ == "__main__":
    main()
