"""The vocabulary shared by sources, timelines, traces and the meter.

A :class:`Reading` is one raw value read from hardware (or a recording of it), stamped on the
meter's monotonic clock. Its ``kind`` says how to interpret the value; the kinds are those of the
watt-trace v1 format, plus the ones the CPU sources add.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

#: Cumulative energy counter in joules (NVML ``nvmlDeviceGetTotalEnergyConsumption`` / 1000,
#: RAPL ``energy_uj`` / 1e6). Only differences matter; a drop is a reset.
COUNTER_J = "counter_J"
#: NVML field ``NVML_FI_DEV_POWER_INSTANT``: power at the last 100 ms update, watts.
INSTANT_W = "instant_W"
#: NVML field ``NVML_FI_DEV_POWER_AVERAGE``: trailing 1 s average, watts.
AVERAGE_W = "average_W"
#: One sample of the driver's 20 ms power-sample buffer: the mean power of the 20 ms *before*
#: its timestamp (the semantics that reproduced the counter best on the H200, 2.7 % vs 5.5 %).
BUFFER_W = "buffer_W"
#: ``nvmlDeviceGetPowerUsage``: the board power the driver reports, watts.
USAGE_W = "usage_W"
#: A modelled power (utilisation x TDP), never a measurement. Always labelled "estimated".
ESTIMATE_W = "estimate_W"

POWER_KINDS: tuple[str, ...] = (BUFFER_W, INSTANT_W, USAGE_W, AVERAGE_W, ESTIMATE_W)
"""Power kinds, best first: the order in which a timeline picks the shape of energy."""

KINDS: frozenset[str] = frozenset((COUNTER_J, *POWER_KINDS))
"""Every kind a watt-trace v1 file or a source may carry."""

MEASURED_KINDS: frozenset[str] = KINDS - {ESTIMATE_W}

J_PER_KWH = 3.6e6
"""Joules in one kilowatt-hour."""


class Reading(NamedTuple):
    """One value read from one device: ``t`` on the meter clock (seconds), ``kind`` from
    :data:`KINDS`, ``value`` in the kind's unit (joules for counters, watts otherwise)."""

    t: float
    device: str
    kind: str
    value: float


@dataclass(frozen=True)
class DeviceInfo:
    """What a source knows about one device it measures.

    ``name`` is the device's key in every result (``gpu0``, ``cpu0``, ``dram0``); ``uuid``
    identifies the physical device across ranks (two ranks sharing a GPU share a uuid, so totals
    across ranks count it once); ``label`` is for people; ``estimated`` marks modelled devices.
    """

    name: str
    kind: str = "gpu"
    uuid: str = ""
    label: str = ""
    estimated: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def key(self) -> str:
        """The identity used to deduplicate devices across processes."""
        return self.uuid or self.name
