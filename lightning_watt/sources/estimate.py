"""A modelled CPU power for machines that can measure neither with NVML nor with RAPL.

Power is ``idle + utilisation x (TDP - idle)`` with ``idle = idle_fraction x TDP``: a straight
line from an idle floor to the thermal design power at full load. Every number it produces is
an **estimate**, never a measurement: readings are of kind ``estimate_W``, the device is marked
``estimated=True`` and :meth:`EstimateSource.describe` says "estimated from CPU utilisation x
TDP, not measured". Real power curves are concave (most of the rise comes in the first half of
the load) and TDP is neither a floor nor a ceiling of real draw, so expect errors of tens of per
cent; use RAPL wherever it can be read.

**Utilisation** (a fraction in [0, 1], averaged over the last interval) comes from:

* ``"system"`` (the default on Linux): busy time of all CPUs from ``/proc/stat`` deltas. This is
  what a power meter on the package would see, other processes' load included; in a container
  ``/proc/stat`` usually shows the whole host.
* ``"process"``: this process's CPU time (all threads, :func:`time.process_time`) over wall
  time x logical CPUs. It works everywhere but misses child processes such as data-loader
  workers. The default where ``/proc/stat`` cannot be read.
* any callable returning the fraction since its previous call (tests inject a fake).

**Timing**: each read returns one ``estimate_W`` reading stamped at the read, whose watts are
the mean power of the interval since the previous read (the timeline integrates the kind as
such a step, not as a point); the first read also returns one stamped at :meth:`open`, where
its interval began. So the readings cover the meter's whole run, up to the last read (the one
``stop()`` and ``sync()`` make), with nothing held or left at zero.

**Default TDP** (when ``cpu_tdp_w`` is not given): 10 W per physical core, capped at 250 W per
socket, at least 10 W. Published TDPs run from ~3.5 W/core on 96-core server parts (EPYC 9654,
360 W) through ~6-9 W/core on 32-56-core Xeons and EPYCs (205-350 W) to 10-16 W/core on
4-16-core desktop parts (65-170 W); 10 W/core is right for the small and mid-size machines this
fallback mostly runs on, and the per-socket cap keeps large servers near their real TDP (250 W,
between a 32-core 205 W and a 64-core 280 W part). Give ``cpu_tdp_w`` whenever you know it.

**Default idle fraction** 0.3: recent Xeon and EPYC packages idle at roughly a quarter to a third
of TDP with the shallow C-states data centres usually configure, and Cloud Carbon Footprint's
cloud coefficients (about 0.74 W idle against 3.5 W busy per vCPU) put it near 0.2; 0.3 leans
towards the servers this runs on.

Example:
    >>> import itertools
    >>> load = itertools.cycle([0.0, 1.0])
    >>> source = EstimateSource(cpu_tdp_w=100.0, idle_fraction=0.3, utilisation=lambda: next(load))
    >>> source.power_w(0.0), source.power_w(0.5), source.power_w(1.0)
    (30.0, 65.0, 100.0)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from lightning_watt.energy.readings import ESTIMATE_W, DeviceInfo, Reading
from lightning_watt.sources.base import Channel, Clock, EnergySource, SourceUnavailable
from lightning_watt.sources.rapl import host_id
from lightning_watt.validate import finite_number, integer, positive_int

__all__ = [
    "DEFAULT_IDLE_FRACTION",
    "DEFAULT_INTERVAL_S",
    "DEFAULT_MAX_W_PER_SOCKET",
    "DEFAULT_MIN_W",
    "DEFAULT_W_PER_CORE",
    "EstimateSource",
    "ProcStatUtilisation",
    "ProcessUtilisation",
    "UtilisationReader",
    "cpu_topology",
    "default_cpu_tdp_w",
]

#: Returns the busy fraction of the CPUs (0..1) since its previous call.
UtilisationReader = Callable[[], float]

DEFAULT_W_PER_CORE = 10.0
DEFAULT_MAX_W_PER_SOCKET = 250.0
DEFAULT_MIN_W = 10.0
DEFAULT_IDLE_FRACTION = 0.3
#: /proc/stat counts in 10 ms ticks: a quarter second gives 25 ticks per CPU, fine enough.
DEFAULT_INTERVAL_S = 0.25
_NOTE = "estimated from CPU utilisation x TDP, not measured"


def default_cpu_tdp_w(physical_cores: int, sockets: int = 1) -> float:
    """The TDP assumed when none is given: 10 W per physical core, at most 250 W per socket
    and at least 10 W (see the module docstring for why).

    Example:
        >>> default_cpu_tdp_w(8), default_cpu_tdp_w(64), default_cpu_tdp_w(128, sockets=2)
        (80.0, 250.0, 500.0)
    """
    physical_cores = positive_int("physical_cores", physical_cores)
    sockets = positive_int("sockets", sockets)
    watts = min(DEFAULT_W_PER_CORE * physical_cores, DEFAULT_MAX_W_PER_SOCKET * sockets)
    return float(max(DEFAULT_MIN_W, watts))


def cpu_topology(cpuinfo: str = "/proc/cpuinfo") -> tuple[int, int]:
    """``(physical_cores, sockets)`` of this machine, from ``/proc/cpuinfo`` where it names them,
    else ``(os.cpu_count(), 1)`` (logical CPUs: an overestimate of cores on SMT machines)."""
    cores: set[tuple[str, str]] = set()
    sockets: set[str] = set()
    try:
        phys, core = "0", None
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "physical id":
                phys = value
                sockets.add(value)
            elif key == "core id":
                core = value
            elif not key and core is not None:
                cores.add((phys, core))
                phys, core = "0", None
        if core is not None:
            cores.add((phys, core))
    except OSError:
        pass
    if cores:
        return len(cores), max(1, len(sockets))
    return max(1, os.cpu_count() or 1), 1


class ProcStatUtilisation:
    """System-wide CPU busy fraction from ``/proc/stat`` deltas (no psutil needed).

    Busy is user + nice + system + irq + softirq; idle is idle + iowait; steal (time the
    hypervisor ran someone else) counts as neither busy nor ours, only in the total. Guest time
    is already inside user and nice. The first call covers the time since construction.

    Raises:
        OSError: at construction, where ``path`` cannot be read.
    """

    def __init__(self, path: str = "/proc/stat") -> None:
        self.path = path
        self._prev = self._sample()

    def _sample(self) -> tuple[int, int]:
        with open(self.path) as f:
            fields = f.readline().split()
        if not fields or fields[0] != "cpu":
            raise OSError(f"{self.path}: first line is not the aggregate 'cpu' line")
        v = [int(x) for x in fields[1:9]] + [0] * (8 - len(fields[1:9]))
        user, nice, system, idle, iowait, irq, softirq, steal = v
        busy = user + nice + system + irq + softirq
        return busy, busy + idle + iowait + steal

    def __call__(self) -> float:
        busy, total = self._sample()
        d_busy, d_total = busy - self._prev[0], total - self._prev[1]
        self._prev = (busy, total)
        return d_busy / d_total if d_total > 0 else 0.0


class ProcessUtilisation:
    """This process's CPU time over wall time x logical CPUs, since the previous call.

    Counts every thread of this process (:func:`time.process_time`), not child processes.
    """

    def __init__(
        self,
        cpus: int | None = None,
        cpu_time: Callable[[], float] = time.process_time,
        wall: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cpus = cpus or os.cpu_count() or 1
        self._cpu_time, self._wall = cpu_time, wall
        self._prev = (cpu_time(), wall())

    def __call__(self) -> float:
        cpu, wall = self._cpu_time(), self._wall()
        d_cpu, d_wall = cpu - self._prev[0], wall - self._prev[1]
        self._prev = (cpu, wall)
        return d_cpu / (d_wall * self.cpus) if d_wall > 0 else 0.0


class EstimateSource(EnergySource):
    """Modelled CPU power: ``idle + utilisation x (TDP - idle)``, labelled estimated everywhere.

    Args:
        cpu_tdp_w: the CPUs' total thermal design power in watts (all sockets); default
            :func:`default_cpu_tdp_w` of the detected cores and sockets.
        idle_fraction: idle power as a fraction of TDP, in [0, 1); default 0.3.
        utilisation: ``"system"``, ``"process"`` or a :data:`UtilisationReader`; default
            ``"system"`` where ``/proc/stat`` is readable, else ``"process"``.
        interval_s: seconds between estimates (default 0.25).
        device: the device name in results (default ``"cpu"``: all CPUs of this machine).
        cores: physical cores for the default TDP (detected when ``None``).
        sockets: sockets for the default TDP's cap (detected when ``None``).

    Raises:
        ValueError: a parameter out of range, naming it and what it accepts.

    Example:
        >>> src = EstimateSource(cpu_tdp_w=200.0, utilisation=lambda: 0.5)
        >>> src.open(time.monotonic)
        >>> src.describe()["cpu"].startswith("estimated from CPU utilisation x TDP, not measured")
        True
        >>> src.power_w(0.5)
        130.0
    """

    name = "estimate"

    def __init__(
        self,
        cpu_tdp_w: float | None = None,
        idle_fraction: float = DEFAULT_IDLE_FRACTION,
        utilisation: str | UtilisationReader | None = None,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        device: str = "cpu",
        cores: int | None = None,
        sockets: int | None = None,
    ) -> None:
        tdp_w = finite_number(
            "cpu_tdp_w",
            cpu_tdp_w,
            minimum=0.0,
            maximum=5000.0,
            exclusive_minimum=True,
            allow_none=True,
        )
        self.idle_fraction = finite_number(
            "idle_fraction", idle_fraction, minimum=0.0, maximum=1.0, exclusive_maximum=True
        )
        if not (utilisation in (None, "system", "process") or callable(utilisation)):
            raise ValueError(
                f"utilisation must be 'system', 'process', None or a callable returning the "
                f"busy fraction since its previous call, got {utilisation!r}"
            )
        self.interval_s = finite_number(
            "interval_s", interval_s, minimum=0.0, maximum=60.0, exclusive_minimum=True
        )
        if not (isinstance(device, str) and device):
            raise ValueError(f"device must be a non-empty name, got {device!r}")
        cores = integer("cores", cores, maximum=1_000_000, allow_none=True)
        sockets = integer("sockets", sockets, maximum=1_000_000, allow_none=True)
        if tdp_w is None:
            found_cores, found_sockets = cpu_topology()
            cores = cores or found_cores
            sockets = sockets or found_sockets
            self.tdp_w = default_cpu_tdp_w(cores, sockets)
            self.tdp_source = (
                f"default {DEFAULT_W_PER_CORE:g} W x {cores} physical cores, "
                f"capped at {DEFAULT_MAX_W_PER_SOCKET:g} W x {sockets} sockets"
            )
        else:
            self.tdp_w = tdp_w
            self.tdp_source = "given"
        self.device = device
        self._utilisation_spec = utilisation
        self._reader: UtilisationReader | None = None
        self.utilisation_source = ""
        self._clock: Clock = time.monotonic
        self._prev_t = 0.0
        self._first = True

    @property
    def idle_w(self) -> float:
        return self.idle_fraction * self.tdp_w

    def power_w(self, utilisation: float) -> float:
        """The modelled power at ``utilisation`` (clamped to [0, 1]), watts."""
        u = min(1.0, max(0.0, utilisation))
        return self.idle_w + u * (self.tdp_w - self.idle_w)

    @property
    def helper_safe(self) -> bool:  # type: ignore[override]
        """System-wide utilisation reads the same in any process; this process's own CPU time
        (or a given reader, which may read it) would be the helper's there."""
        spec = self._utilisation_spec
        return spec == "system" or (spec is None and os.access("/proc/stat", os.R_OK))

    def open(self, clock: Clock) -> None:
        spec = self._utilisation_spec
        if callable(spec):
            self._reader, self.utilisation_source = spec, "given reader"
        elif spec == "process":
            self._reader = ProcessUtilisation()
            self.utilisation_source = "this process's CPU time (time.process_time)"
        else:
            try:
                self._reader = ProcStatUtilisation()
                self.utilisation_source = "system-wide, /proc/stat"
            except (OSError, ValueError) as err:
                if spec == "system":
                    raise SourceUnavailable(
                        f"estimate: system CPU utilisation unavailable ({err}); "
                        f"use utilisation='process'"
                    ) from err
                self._reader = ProcessUtilisation()
                self.utilisation_source = "this process's CPU time (no /proc/stat)"
        self._clock = clock
        self._prev_t = clock()
        self._first = True

    def _read(self) -> list[Reading]:
        assert self._reader is not None, "open() first"
        u = float(self._reader())
        if not math.isfinite(u):
            raise ValueError(f"estimate: utilisation reader returned {u!r}")
        t = self._clock()
        # The utilisation is the mean over the interval just ended, (previous read, t]: the
        # reading is stamped at its end and the timeline integrates ``estimate_W`` as the mean
        # of the interval before each timestamp, so every part of the interval gets this power
        # and the newest reading speaks up to its own read (a mid-interval stamp left the last
        # half interval at 0 J). The first read also marks where its interval began (open),
        # so the meter's start is covered too.
        watts = self.power_w(u)
        out = [Reading(t, self.device, ESTIMATE_W, watts)]
        if self._first and self._prev_t < t:
            out.insert(0, Reading(self._prev_t, self.device, ESTIMATE_W, watts))
        self._first = False
        self._prev_t = t
        return out

    def devices(self) -> list[DeviceInfo]:
        # System-wide load is the host's, shared by all ranks on it, so they count it once; a
        # process's own load (or a reader we cannot see into) is per process.
        uuid = f"{host_id()}:estimate:{self.device}"
        if not self.utilisation_source.startswith("system"):
            uuid += f":pid{os.getpid()}"
        return [
            DeviceInfo(
                name=self.device,
                kind="cpu",
                uuid=uuid,
                label=f"CPU, estimated (utilisation x {self.tdp_w:g} W TDP)",
                estimated=True,
                notes=(_NOTE,),
            )
        ]

    def channels(self) -> list[Channel]:
        return [
            Channel(
                name=f"{self.device}/estimate",
                interval_s=self.interval_s,
                read=self._read,
                devices=(self.device,),
                describe=_NOTE,
                kinds=(ESTIMATE_W,),
            )
        ]

    def describe(self) -> dict[str, str]:
        return {
            self.device: (
                f"{_NOTE} (utilisation: {self.utilisation_source or 'not opened'}; "
                f"TDP {self.tdp_w:g} W, {self.tdp_source}; idle {self.idle_fraction:.0%} of TDP)"
            )
        }

    def metadata(self) -> dict[str, object]:
        return {
            "estimate_note": _NOTE,
            "estimate_tdp_w": self.tdp_w,
            "estimate_tdp_source": self.tdp_source,
            "estimate_idle_fraction": self.idle_fraction,
            "estimate_utilisation": self.utilisation_source,
        }
