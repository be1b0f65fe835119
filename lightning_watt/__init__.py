"""lightning-watt: per-step GPU and CPU energy, and the energy-penalised Green Quotient Index,
for PyTorch Lightning.

Example:
    >>> import lightning as L
    >>> from lightning_watt import WattCallback
    >>> trainer = L.Trainer(callbacks=[WattCallback()])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_watt.carbon import CarbonModel
from lightning_watt.meter import EnergyMeter
from lightning_watt.readings import DeviceInfo, Reading
from lightning_watt.sources import (
    EnergySource,
    EstimateSource,
    NvmlSource,
    RaplSource,
    ReplaySource,
    SourceUnavailable,
)
from lightning_watt.timeline import EnergyTimeline, Gap
from lightning_watt.trace import Trace, bundled_trace, load_trace

if TYPE_CHECKING:
    from lightning_watt.accountant import EnergyAccountant
    from lightning_watt.budget import EnergyBudget, EnergyBudgetWarning
    from lightning_watt.callback import WattCallback
    from lightning_watt.functional import accuracy_per_kwh, green_quotient_index
    from lightning_watt.metrics import GreenQuotientIndex

__version__ = "0.1.0"

# Lightning and torchmetrics load only when these are first used: `import lightning_watt` stays
# light for plain-PyTorch users of EnergyMeter and for the report command.
_LAZY = {
    "EnergyAccountant": "lightning_watt.accountant",
    "WattCallback": "lightning_watt.callback",
    "EnergyBudget": "lightning_watt.budget",
    "EnergyBudgetWarning": "lightning_watt.budget",
    "GreenQuotientIndex": "lightning_watt.metrics",
    "green_quotient_index": "lightning_watt.functional",
    "accuracy_per_kwh": "lightning_watt.functional",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_watt' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "CarbonModel",
    "DeviceInfo",
    "EnergyAccountant",
    "EnergyBudget",
    "EnergyBudgetWarning",
    "EnergyMeter",
    "EnergySource",
    "EnergyTimeline",
    "EstimateSource",
    "Gap",
    "GreenQuotientIndex",
    "NvmlSource",
    "RaplSource",
    "Reading",
    "ReplaySource",
    "SourceUnavailable",
    "Trace",
    "WattCallback",
    "__version__",
    "accuracy_per_kwh",
    "bundled_trace",
    "green_quotient_index",
    "load_trace",
]
