"""CPU package and DRAM energy from Linux powercap: Intel RAPL, and AMD's RAPL exposed alike.

Linux publishes each RAPL domain as a powercap zone under ``/sys/class/powercap``: top-level zones
``intel-rapl:N`` (one per CPU package, ``name`` file ``package-N``) with subzones
``intel-rapl:N:M`` (``name`` ``core``, ``uncore``, ``dram``). Since Linux 5.11 AMD Zen CPUs appear
in the same tree, and other drivers (``intel-rapl-mmio``, ``amd-rapl`` on some kernels) use other
prefixes, so zones are recognised by their ``name`` file, never by the directory name. Each zone
has ``energy_uj`` (a cumulative counter in microjoules that wraps to zero) and
``max_energy_range_uj`` (the value it wraps at).

**What is counted.** By default only ``package`` and ``dram``. A package's energy already
includes its cores (``core``, PP0) and integrated graphics/uncore (``uncore``, PP1), and ``psys``
(the whole platform, on some laptops) includes packages and DRAM; asking for those too would
count the same joules twice in any total over devices. DRAM is a separate domain on servers and
is not part of the package. Where a package is exposed twice (MSR and MMIO interfaces both
reporting ``package-0``), the first non-MMIO zone is kept.

**Devices.** ``cpu{socket}`` for packages (``cpu{socket}-die{die}`` on multi-die packages that
the kernel names ``package-S-die-D``) and ``dram{socket}`` for DRAM, kind ``counter_J``. Their
uuid is ``"{host}:rapl:package-0"`` / ``"{host}:rapl:package-0/dram"`` where ``host`` is the
kernel's boot id (see :func:`host_id`), so several ranks (or containers) on one machine count a
socket once.

**Wraparound.** The channel keeps its own unwrapped accumulator, so the joules it emits never
decrease: a drop between two reads is a wrap and adds ``max - prev + new`` (see
:func:`unwrap_delta`). A wrap is only missed if two reads are further apart than the counter
takes to wrap twice over; the counter's range is 262 143 J on most Intel parts
(``max_energy_range_uj`` = 262143328850) and 65 536 J on AMD and on Intel DRAM domains with
15.3 uJ units. At 1 kW per zone (twice the hottest current packages) those last 262 s and 65 s.
The default read interval, 0.1 s, is 650x inside the shorter one; :class:`RaplSource` refuses an
interval longer than half of it and warns when the meter thread stalled that long.

**Why 0.1 s.** The counter updates every ~1 ms, and a counter-only device is interpolated
linearly between reads, so the read interval is the time resolution of per-step CPU energy;
0.1 s matches the NVML counter's cadence so CPU and GPU steps are resolved alike. A read is
one sysfs file (a few microseconds, one MSR read on the target CPU), so ten reads a second per
zone cost well under 0.1 % of one core.

**Permissions.** Since the CVE-2020-8694 ("Platypus") fix (Linux 5.10 and stable backports,
November 2020) ``energy_uj`` is readable by root only; virtual machines usually expose no RAPL
zones at all. :func:`rapl_status` says which, and how to grant read access.

Example:
    >>> ok, reason = rapl_status("/nonexistent")
    >>> ok
    False
    >>> unwrap_delta(prev_uj=262143328000, new_uj=1000, max_range_uj=262143328850)
    1850
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lightning_watt.energy.readings import COUNTER_J, DeviceInfo, Reading
from lightning_watt.sources.base import (
    Channel,
    ChannelLost,
    Clock,
    EnergySource,
    SourceUnavailable,
)
from lightning_watt.validate import a_callable, path_like, positive_number, string_collection, text

__all__ = [
    "DEFAULT_DOMAINS",
    "DEFAULT_INTERVAL_S",
    "DEFAULT_ROOT",
    "DOMAINS",
    "MAX_ZONE_W",
    "RaplSource",
    "RaplZone",
    "host_id",
    "rapl_status",
    "unwrap_delta",
]

DEFAULT_ROOT = "/sys/class/powercap"
#: RAPL domains this source knows. Only ``package`` and ``dram`` are read by default: the others
#: overlap them (core and uncore are inside the package; psys contains package and DRAM).
DOMAINS: tuple[str, ...] = ("package", "dram", "core", "uncore", "psys")
DEFAULT_DOMAINS: tuple[str, ...] = ("package", "dram")
#: Seconds between reads of one zone (see the module docstring for why).
DEFAULT_INTERVAL_S = 0.1
#: The most power one zone is assumed able to draw, for wrap-safety arithmetic: twice the
#: hottest shipping server packages (~500 W), so the bound holds with margin.
MAX_ZONE_W = 1000.0

_PACKAGE_RE = re.compile(r"^package-(\d+)(?:-die-(\d+))?$")
_SUBZONES = ("core", "uncore", "dram")
_DEVICE_KIND = {
    "package": "cpu",
    "dram": "dram",
    "core": "cpu-core",
    "uncore": "cpu-uncore",
    "psys": "platform",
}

ReadFile = Callable[[str], str]


def _read_file(path: str) -> str:
    with open(path) as f:
        return f.read()


def host_id() -> str:
    """An id shared by every process on this machine and by no other machine.

    The kernel's boot id: unlike the hostname it is the same inside every container on a host
    (so ranks in separate containers still count a socket once) and differs between hosts that
    happen to share a hostname. Falls back to the hostname where ``/proc`` is unavailable.
    """
    with contextlib.suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        if boot:
            return f"boot-{boot}"
    return socket.gethostname()


def unwrap_delta(prev_uj: int, new_uj: int, max_range_uj: int) -> int:
    """Microjoules between two reads of a counter that wraps at ``max_range_uj``.

    A drop is one wrap: ``max_range_uj - prev_uj + new_uj`` (the convention of the kernel's own
    tools; it differs from the true count by at most one energy unit, ~15-61 uJ, per wrap). A
    previous value above the stated range means the range is wrong; the new value is then taken
    as energy since a reset rather than inventing a wrap.

    Example:
        >>> unwrap_delta(10, 25, 100), unwrap_delta(90, 5, 100)
        (15, 15)
    """
    if new_uj >= prev_uj:
        return new_uj - prev_uj
    if prev_uj > max_range_uj:
        return new_uj
    return max_range_uj - prev_uj + new_uj


@dataclass(frozen=True)
class RaplZone:
    """One powercap zone this source reads.

    ``path`` is the zone's directory; ``zone`` its ``name`` file (``package-0``, ``dram``);
    ``key`` the zone's host-unique id (``package-0/dram``); ``device`` the result key
    (``cpu0``, ``dram0``); ``max_range_uj`` where ``energy_uj`` wraps.
    """

    path: str
    zone: str
    key: str
    domain: str
    socket: int
    die: int | None
    device: str
    max_range_uj: int

    @property
    def wrap_s(self) -> float:
        """Seconds the counter takes to wrap at :data:`MAX_ZONE_W`: the longest safe gap."""
        return self.max_range_uj / 1e6 / MAX_ZONE_W


def _first_index(dirname: str) -> int:
    """The N of ``prefix:N[:M]``, for zones whose parent cannot be found (0 if none)."""
    parts = dirname.split(":")
    if len(parts) > 1 and parts[1].isdigit():
        return int(parts[1])
    return 0


class _Counter:
    """Unwraps one zone's ``energy_uj`` into monotone joules; touched by the meter thread only."""

    __slots__ = ("acc_uj", "prev_t", "prev_uj", "stalls", "warned", "wraps", "zone")

    def __init__(self, zone: RaplZone, raw_uj: int, t: float) -> None:
        self.zone = zone
        self.prev_uj = raw_uj
        self.prev_t = t
        self.acc_uj = 0
        self.wraps = 0
        self.stalls = 0
        self.warned = False

    def update(self, raw_uj: int, t: float) -> float:
        if raw_uj < self.prev_uj:
            self.wraps += 1
        if t - self.prev_t > self.zone.wrap_s:
            # More than one wrap may have passed unseen: the delta is a lower bound. The meter
            # thread only stalls this long if the process was suspended, so say so and go on.
            self.stalls += 1
            if not self.warned:
                self.warned = True
                warnings.warn(
                    f"rapl: {t - self.prev_t:.0f} s between reads of {self.zone.zone} "
                    f"({self.zone.device}), longer than the {self.zone.wrap_s:.0f} s its counter "
                    f"can take to wrap; energy over that gap may be undercounted",
                    RuntimeWarning,
                    stacklevel=2,
                )
        self.acc_uj += unwrap_delta(self.prev_uj, raw_uj, self.zone.max_range_uj)
        self.prev_uj, self.prev_t = raw_uj, t
        return self.acc_uj / 1e6


def _grant_hint(root: str) -> str:
    return (
        f"grant read access until reboot with `sudo chmod o+r {root}/intel-rapl:*/energy_uj`, "
        f"or for good with a udev rule in /etc/udev/rules.d/70-rapl.rules: "
        f'ACTION=="add", SUBSYSTEM=="powercap", RUN+="/bin/chmod o+r /sys%p/energy_uj" '
        f"(or run as root)"
    )


class RaplSource(EnergySource):
    """CPU package and DRAM energy counters from Linux powercap (RAPL).

    Args:
        root: the powercap directory (tests point it at a fake tree).
        domains: RAPL domains to read, from :data:`DOMAINS`. Default ``("package", "dram")``:
            ``core``/``uncore`` are already inside ``package`` and ``psys`` contains both, so
            adding them double-counts in any total.
        interval_s: seconds between reads of each zone (default 0.1; must stay under half the
            shortest wrap time, checked at :meth:`open`).
        host: identifies this machine in device uuids (default :func:`host_id`).
        read_file: reads a sysfs file's text (injectable so tests can simulate permission
            errors, since they run as root where ``chmod`` blocks nothing).

    Raises:
        ValueError: an unknown domain or a non-positive interval.

    Example:
        >>> import time
        >>> source = RaplSource(domains=("package",))
        >>> try:
        ...     source.open(time.monotonic)
        ... except SourceUnavailable as err:
        ...     print("no RAPL:", err)  # doctest: +ELLIPSIS
        no RAPL: ...
    """

    name = "rapl"
    helper_safe = True  # system-wide counters in files: the same in any process

    def __init__(
        self,
        root: str | os.PathLike[str] = DEFAULT_ROOT,
        domains: Sequence[str] = DEFAULT_DOMAINS,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        host: str | None = None,
        read_file: ReadFile | None = None,
    ) -> None:
        if isinstance(domains, str):
            domains = (domains,)
        domains = string_collection("domains", domains) or []
        root = path_like("root", root)
        text("host", host, allow_none=True)
        if read_file is not None:
            a_callable("read_file", read_file, "a function path -> text, or None")
        unknown = [d for d in domains if d not in DOMAINS]
        if unknown or not domains:
            raise ValueError(
                f"domains: unknown {unknown!r}; accepted: {list(DOMAINS)} "
                f"(default {list(DEFAULT_DOMAINS)})"
            )
        self.interval_s = positive_number("interval_s", interval_s, unit="seconds")
        self.root = os.fspath(root)
        self.domains: tuple[str, ...] = tuple(dict.fromkeys(domains))
        self.host = host
        self._read = read_file or _read_file
        self._zones: list[RaplZone] = []
        self._counters: dict[str, _Counter] = {}
        self._skipped: list[str] = []
        self._clock: Clock = time.monotonic
        self._hostname = socket.gethostname()

    # ------------------------------------------------------------------ discovery
    def _text(self, path: str) -> str | None:
        try:
            return self._read(path).strip()
        except OSError:
            return None

    def _package_of(self, entry: Path) -> tuple[int, int | None, str] | None:
        """The package a subzone belongs to: its real parent directory in sysfs, else the
        ``prefix:N`` zone its directory name points at."""
        candidates = [Path(os.path.realpath(entry)).parent]
        if entry.name.count(":") >= 2:
            candidates.append(entry.parent / entry.name.rsplit(":", 1)[0])
        for parent in candidates:
            text = self._text(os.path.join(parent, "name"))
            m = _PACKAGE_RE.match(text or "")
            if m:
                die = int(m.group(2)) if m.group(2) is not None else None
                return int(m.group(1)), die, text or ""
        return None

    def discover(self) -> list[RaplZone]:
        """The zones under ``root`` in the requested domains (no energy read yet).

        Raises:
            SourceUnavailable: ``root`` is not a directory.
        """
        root = Path(self.root)
        if not root.is_dir():
            where = "" if sys.platform.startswith("linux") else f" (this is {sys.platform})"
            raise SourceUnavailable(
                f"rapl: no {self.root}: RAPL needs Linux with powercap{where}; a container "
                f"without /sys or a kernel without CONFIG_POWERCAP has none"
            )
        # MMIO duplicates of a package come last so the MSR zone wins the deduplication.
        entries = sorted(root.iterdir(), key=lambda p: ("mmio" in p.name, p.name))
        zones: dict[str, RaplZone] = {}
        self._skipped = []
        for entry in entries:
            zone_name = self._text(os.path.join(entry, "name"))
            if zone_name is None:
                continue  # a control-type directory (intel-rapl) or something else
            m = _PACKAGE_RE.match(zone_name)
            if m:
                domain, sock = "package", int(m.group(1))
                die = int(m.group(2)) if m.group(2) is not None else None
                key = zone_name
            elif zone_name in _SUBZONES:
                domain = zone_name
                parent = self._package_of(entry)
                if parent is None:
                    sock, die, key = _first_index(entry.name), None, zone_name
                else:
                    sock, die, pkg = parent
                    key = f"{pkg}/{zone_name}"
            elif zone_name == "psys":
                domain, sock, die, key = "psys", _first_index(entry.name), None, "psys"
            else:
                continue
            if domain not in self.domains:
                continue
            if domain == "psys":
                device = "psys"
            else:
                prefix = "cpu" if domain == "package" else domain
                device = f"{prefix}{sock}" + ("" if die is None else f"-die{die}")
            if device in zones:
                continue
            max_text = self._text(os.path.join(entry, "max_energy_range_uj"))
            try:
                max_uj = int(max_text or "")
            except ValueError:
                self._skipped.append(f"{entry.name} ({zone_name}): no max_energy_range_uj")
                continue
            if max_uj <= 0:
                self._skipped.append(f"{entry.name} ({zone_name}): max_energy_range_uj is 0")
                continue
            zones[device] = RaplZone(
                os.fspath(entry), zone_name, key, domain, sock, die, device, max_uj
            )
        return sorted(zones.values(), key=lambda z: (DOMAINS.index(z.domain), z.socket, z.die or 0))

    # ------------------------------------------------------------------ lifecycle
    def open(self, clock: Clock) -> None:
        """Find the zones and read each counter once (the baseline energy is counted from).

        Raises:
            SourceUnavailable: no zones, or none whose ``energy_uj`` this process may read.
            ValueError: ``interval_s`` too long for a zone's wrap time.
        """
        self._clock = clock
        zones = self.discover()
        if not zones:
            extra = f"; skipped: {'; '.join(self._skipped)}" if self._skipped else ""
            raise SourceUnavailable(
                f"rapl: no RAPL zones for domains {list(self.domains)} under {self.root}: "
                f"virtual machines rarely expose RAPL; on bare metal load the driver with "
                f"`sudo modprobe intel_rapl_msr` (Intel, and AMD Zen on Linux >= 5.11){extra}"
            )
        for zone in zones:
            limit = zone.wrap_s / 2
            if self.interval_s > limit:
                raise ValueError(
                    f"interval_s={self.interval_s} is too long: {zone.zone} ({zone.device}) "
                    f"can wrap in {zone.wrap_s:.1f} s at {MAX_ZONE_W:.0f} W; use <= {limit:.1f} s"
                )
        counters: dict[str, _Counter] = {}
        denied: list[RaplZone] = []
        for zone in zones:
            path = os.path.join(zone.path, "energy_uj")
            try:
                raw = int(self._read(path).strip())
            except PermissionError:
                denied.append(zone)
                continue
            except (OSError, ValueError) as err:
                self._skipped.append(f"{os.path.basename(zone.path)} ({zone.zone}): {err}")
                continue
            counters[zone.device] = _Counter(zone, raw, clock())
        names = ", ".join(f"{os.path.basename(z.path)}/energy_uj ({z.key})" for z in denied)
        if denied:
            self._skipped.append(f"permission denied: {names}")
        if not counters:
            if denied:
                raise SourceUnavailable(
                    f"rapl: cannot read {names}: RAPL energy is readable by root only since the "
                    f"CVE-2020-8694 (Platypus) fix (Linux 5.10 and backports); "
                    f"{_grant_hint(self.root)}"
                )
            raise SourceUnavailable(
                f"rapl: no readable energy_uj under {self.root}: {'; '.join(self._skipped)}"
            )
        self._counters = counters
        self._zones = [z for z in zones if z.device in counters]

    def close(self) -> None:
        # Nothing is held open between reads; the counters stay so metadata() can still report
        # wraps and stalls after the meter stops (it records metadata after closing sources).
        pass

    # ------------------------------------------------------------------ description
    @property
    def zones(self) -> list[RaplZone]:
        """The zones being read (after :meth:`open`)."""
        return list(self._zones)

    @property
    def skipped(self) -> list[str]:
        """Zones found but not read, each with the reason (after :meth:`open`)."""
        return list(self._skipped)

    def devices(self) -> list[DeviceInfo]:
        host = self.host or host_id()
        out = []
        for z in self._zones:
            notes: tuple[str, ...] = ()
            if z.domain in ("core", "uncore"):
                notes = (f"part of cpu{z.socket}'s package energy: do not add the two",)
            elif z.domain == "psys":
                notes = ("whole platform, includes packages and DRAM: do not add them",)
            out.append(
                DeviceInfo(
                    name=z.device,
                    kind=_DEVICE_KIND[z.domain],
                    uuid=f"{host}:rapl:{z.key}",
                    label=f"RAPL {z.key} on {self._hostname}",
                    estimated=False,
                    notes=notes,
                )
            )
        return out

    def describe(self) -> dict[str, str]:
        what = {
            "package": "includes cores and uncore, not DRAM",
            "dram": "memory attached to this socket",
            "core": "cores only, part of the package",
            "uncore": "uncore/integrated graphics, part of the package",
            "psys": "whole platform",
        }
        return {
            z.device: f"RAPL energy counter {z.key} ({os.path.basename(z.path)}; {what[z.domain]})"
            for z in self._zones
        }

    def metadata(self) -> dict[str, object]:
        return {
            "rapl_root": self.root,
            "rapl_interval_s": self.interval_s,
            "rapl_zones": {
                z.device: {
                    "zone": z.key,
                    "dir": os.path.basename(z.path),
                    "max_energy_range_uj": z.max_range_uj,
                }
                for z in self._zones
            },
            "rapl_wraps": {d: c.wraps for d, c in self._counters.items()},
            "rapl_stalls": {d: c.stalls for d, c in self._counters.items()},
            "rapl_skipped": list(self._skipped),
        }

    # ------------------------------------------------------------------ reading
    def _reader(self, counter: _Counter) -> Callable[[], list[Reading]]:
        path = os.path.join(counter.zone.path, "energy_uj")
        device = counter.zone.device
        read, clock = self._read, self._clock

        def read_zone() -> list[Reading]:
            t0 = clock()
            try:
                text = read(path)
            except FileNotFoundError as err:
                raise ChannelLost(f"rapl: {path} disappeared (driver unloaded?)") from err
            t1 = clock()
            # Stamped mid-read: a sysfs read is microseconds, but the thread may be preempted.
            t = 0.5 * (t0 + t1)
            return [Reading(t, device, COUNTER_J, counter.update(int(text.strip()), t))]

        return read_zone

    def channels(self) -> list[Channel]:
        return [
            Channel(
                name=f"{c.zone.device}/rapl",
                interval_s=self.interval_s,
                read=self._reader(c),
                devices=(c.zone.device,),
                describe=f"RAPL energy counter {c.zone.key}",
                kinds=(COUNTER_J,),
            )
            for c in self._counters.values()
        ]


def rapl_status(
    root: str | os.PathLike[str] = DEFAULT_ROOT,
    domains: Sequence[str] = DEFAULT_DOMAINS,
    *,
    read_file: ReadFile | None = None,
) -> tuple[bool, str]:
    """Whether RAPL can be read here, and a line saying what or why not.

    Example:
        >>> rapl_status("/nonexistent")[0]
        False
    """
    source = RaplSource(root, domains, read_file=read_file)
    try:
        source.open(time.monotonic)
    except SourceUnavailable as err:
        return False, str(err)
    finally:
        source.close()
    found = ", ".join(f"{z.device} ({z.key})" for z in source.zones)
    skipped = f"; skipped: {'; '.join(source.skipped)}" if source.skipped else ""
    return True, f"rapl: readable under {source.root}: {found}{skipped}"
