"""lightning-watt: per-step GPU and CPU energy, and the energy-penalised Green Quotient Index,
for PyTorch Lightning.

Example:
    >>> import lightning as L
    >>> from lightning_watt import WattCallback
    >>> trainer = L.Trainer(callbacks=[WattCallback()])  # doctest: +SKIP
"""

from __future__ import annotations

from lightning_watt.meter import EnergyMeter
from lightning_watt.readings import DeviceInfo, Reading
from lightning_watt.sources import EnergySource, ReplaySource, SourceUnavailable
from lightning_watt.timeline import EnergyTimeline, Gap
from lightning_watt.trace import Trace, bundled_trace, load_trace

__version__ = "0.1.0"

__all__ = [
    "DeviceInfo",
    "EnergyMeter",
    "EnergySource",
    "EnergyTimeline",
    "Gap",
    "Reading",
    "ReplaySource",
    "SourceUnavailable",
    "Trace",
    "__version__",
    "bundled_trace",
    "load_trace",
]
