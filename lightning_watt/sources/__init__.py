"""Readers of hardware energy and power, and the interface they share."""

from __future__ import annotations

from lightning_watt.sources.base import (
    Channel,
    ChannelLost,
    Clock,
    EnergySource,
    SourceUnavailable,
)
from lightning_watt.sources.estimate import EstimateSource
from lightning_watt.sources.nvml import MigEnergyWarning, NvmlSource, nvml_status
from lightning_watt.sources.rapl import RaplSource, rapl_status
from lightning_watt.sources.replay import ReplaySource

__all__ = [
    "Channel",
    "ChannelLost",
    "Clock",
    "EnergySource",
    "EstimateSource",
    "MigEnergyWarning",
    "NvmlSource",
    "RaplSource",
    "ReplaySource",
    "SourceUnavailable",
    "default_sources",
    "nvml_status",
    "rapl_status",
]


def default_sources(
    gpu_devices: list[int] | None = None,
) -> tuple[list[EnergySource], dict[str, str]]:
    """The sources this machine offers, best first, and the reasons others were left out.

    NVML for the GPUs (``gpu_devices``: torch CUDA indices, default the current device), RAPL for
    CPU packages and DRAM; where RAPL is unavailable, a CPU estimate clearly labelled as such.
    """
    chosen: list[EnergySource] = []
    skipped: dict[str, str] = {}
    ok, reason = nvml_status()
    if ok:
        chosen.append(NvmlSource(devices=gpu_devices))
    else:
        skipped["nvml"] = reason
    ok, reason = rapl_status()
    if ok:
        chosen.append(RaplSource())
    else:
        skipped["rapl"] = reason
        chosen.append(EstimateSource())
    return chosen, skipped
