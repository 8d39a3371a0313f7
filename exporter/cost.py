"""What a GPU costs per hour: the ``[cost]`` settings, checked, and the price of each GPU.

A GPU's price is looked up by the name NVML reports (``NVIDIA H100 80GB HBM3``): the entry of
``gpu_hourly_prices`` with exactly that name, else ``gpu_hourly_price``, else none (the GPU's
cost series is absent). A MIG-enabled GPU is priced whole: its instances share its price.
A leaf module, like :mod:`exporter.settings`, which it builds on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from exporter.settings import ConfigError, show

__all__ = ["MAX_MODELS", "MAX_PRICE", "Pricing", "currency", "price", "prices"]

MAX_PRICE = 1e6
"""The most a GPU-hour may cost: far above any real price, low enough to catch a slip
(a price per month, or in cents, given as per hour)."""
MAX_MODELS = 256
"""The most GPU models ``gpu_hourly_prices`` may name."""
MAX_NAME = 96
"""The longest GPU name (NVML's buffer for it is 96 bytes)."""
_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True, slots=True)
class Pricing:
    """The price of a GPU-hour: one figure, per GPU model name, and their currency."""

    gpu_hourly_price: float | None = None
    """The price of a GPU whose name has no entry of its own; None: such GPUs are unpriced."""
    gpu_hourly_prices: Mapping[str, float] = field(default_factory=dict)
    """By the GPU name NVML reports, matched exactly."""
    currency: str = "USD"
    """ISO 4217 code (OpenCost's default, USD, unless set)."""

    @property
    def priced(self) -> bool:
        """Whether any GPU can have a price."""
        return self.gpu_hourly_price is not None or bool(self.gpu_hourly_prices)

    def of(self, name: str) -> float | None:
        """The hourly price of a GPU named ``name``: its own entry, else the single figure,
        else None."""
        return self.gpu_hourly_prices.get(name, self.gpu_hourly_price)

    def describe(self) -> str:
        """One line for ``--config.check``."""
        if not self.priced:
            return "not set"
        parts = [f"{n!r} {p:g}" for n, p in sorted(self.gpu_hourly_prices.items())]
        if self.gpu_hourly_price is not None:
            parts.append(f"any other GPU {self.gpu_hourly_price:g}")
        return f"{self.currency} per GPU-hour: {', '.join(parts)}"


def price(value: object, what: str) -> float:
    """A price per GPU-hour: a finite number above 0 and at most :data:`MAX_PRICE`."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"{what}: expected a price such as 2.49, got {show(value)}") \
                from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what}: expected a price such as 2.49, got {show(value)}")
    number = float(value) if abs(value) < 1e300 else math.inf
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{what}: a price must be a finite number above 0, got"
                          f" {show(value)} (leave it out for no price)")
    if number > MAX_PRICE:
        raise ConfigError(f"{what}: must be at most {MAX_PRICE:g} per GPU-hour, got"
                          f" {show(value, 24)}")
    return number


def prices(value: object, what: str) -> dict[str, float]:
    """The per-model table: GPU name (as NVML reports it) -> price per GPU-hour."""
    if not isinstance(value, dict):
        raise ConfigError(f'{what}: expected a table such as {{"NVIDIA H100 80GB HBM3" ='
                          f" 2.49}}, got {show(value)}")
    if len(value) > MAX_MODELS:
        raise ConfigError(f"{what}: at most {MAX_MODELS} GPU models, got {len(value)}")
    out: dict[str, float] = {}
    for name, each in value.items():
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME \
                or not name.isprintable() or name != name.strip():
            raise ConfigError(f"{what}: {show(name)} is not a GPU name as NVML reports it"
                              f" (printable, at most {MAX_NAME} characters, no leading or"
                              " trailing space)")
        out[name] = price(each, f"{what}.{show(name)}")
    return out


def currency(value: object, what: str) -> str:
    """An ISO 4217 currency code: three upper-case letters (USD, EUR, JPY)."""
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise ConfigError(f"{what}: expected an ISO 4217 currency code (three upper-case"
                          f" letters such as USD or EUR), got {show(value)}")
    return value
