"""lightning-watt: per-step GPU and CPU energy, and the energy-penalised Green Quotient Index,
for PyTorch Lightning.

The layers, in the order data flows:

* :mod:`lightning_watt.sources`: readers of hardware (NVML, RAPL, a replay, an estimate).
* :mod:`lightning_watt.energy`: readings become joules (timeline, live meter, watt-trace).
* :mod:`lightning_watt.attribution`: joules are cut into steps, epochs, stages and runs
  (step clock, ledger, books, :class:`EnergyAccountant`), without Lightning.
* :mod:`lightning_watt.integration`: Lightning callbacks (:class:`WattCallback`, budgets).
* :mod:`lightning_watt.score`: the Green Quotient Index, its metric, carbon and cost.
* :mod:`lightning_watt.report`: runs on disk read back, tables and plots.

:mod:`lightning_watt.schema` names every logged key, file and format; private Lightning and
torchmetrics state is read only in :mod:`lightning_watt._compat`.

Example:
    >>> import lightning as L
    >>> from lightning_watt import WattCallback
    >>> trainer = L.Trainer(callbacks=[WattCallback()])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_watt.energy.meter import EnergyMeter
from lightning_watt.energy.readings import DeviceInfo, Reading
from lightning_watt.energy.timeline import EnergyTimeline, Gap
from lightning_watt.energy.trace import Trace, bundled_trace, load_trace
from lightning_watt.score.carbon import CarbonModel
from lightning_watt.sources import (
    EnergySource,
    EstimateSource,
    NvmlSource,
    RaplSource,
    ReplaySource,
    SourceUnavailable,
)

if TYPE_CHECKING:
    from lightning_watt.attribution.accountant import EnergyAccountant
    from lightning_watt.integration.budget import EnergyBudget, EnergyBudgetWarning
    from lightning_watt.integration.callback import WattCallback
    from lightning_watt.score.functional import accuracy_per_kwh, green_quotient_index
    from lightning_watt.score.metrics import GreenQuotientIndex

__version__ = "0.1.0"

# Lightning and torchmetrics load only when these are first used: `import lightning_watt` stays
# light for plain-PyTorch users of EnergyMeter and for the report command.
_LAZY = {
    "EnergyAccountant": "lightning_watt.attribution.accountant",
    "WattCallback": "lightning_watt.integration.callback",
    "EnergyBudget": "lightning_watt.integration.budget",
    "EnergyBudgetWarning": "lightning_watt.integration.budget",
    "GreenQuotientIndex": "lightning_watt.score.metrics",
    "green_quotient_index": "lightning_watt.score.functional",
    "accuracy_per_kwh": "lightning_watt.score.functional",
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
