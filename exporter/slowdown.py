"""The GPU throttle reasons that slow a busy GPU down: what the alert and the dashboards
count as throttled.

``sw_power_cap`` is left out: a busy H100 sits at its power cap, which is its ordinary state,
not a fault. So are ``gpu_idle`` and the clocks an operator set on purpose.
"""

from __future__ import annotations

__all__ = ["SLOWDOWN_REASONS"]

SLOWDOWN_REASONS: tuple[str, ...] = (
    "hw_slowdown", "hw_thermal_slowdown", "sw_thermal_slowdown", "hw_power_brake_slowdown")
