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
    CPU packages and DRAM; where neither measures the CPU, an estimate clearly labelled as such.
    """
    chosen: list[EnergySource] = []
    skipped: dict[str, str] = {}
    try:
        from lightning_watt.sources.nvml import NvmlSource, nvml_status

        ok, reason = nvml_status()
        if ok:
            chosen.append(NvmlSource(devices=gpu_devices))
        else:
            skipped["nvml"] = reason
    except ImportError as err:
        skipped["nvml"] = f"NVML source not importable: {err}"
    cpu_measured = False
    try:
        from lightning_watt.sources.rapl import RaplSource, rapl_status

        ok, reason = rapl_status()
        if ok:
            chosen.append(RaplSource())
            cpu_measured = True
        else:
            skipped["rapl"] = reason
    except ImportError as err:
        skipped["rapl"] = f"RAPL source not importable: {err}"
    if not cpu_measured:
        try:
            from lightning_watt.sources.estimate import EstimateSource

            chosen.append(EstimateSource())
        except ImportError as err:
            skipped["estimate"] = f"estimate source not importable: {err}"
    return chosen, skipped
