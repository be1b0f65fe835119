"""NVIDIA GPUs through NVML: the energy counter anchors totals, the driver's power buffer shapes
energy inside each 100 ms counter step.

Per device, at :meth:`NvmlSource.open`, each NVML reader is probed once and the best are
polled on the meter thread:

=========================  ===========  =====================================================
reader                     interval     why
=========================  ===========  =====================================================
energy counter (mJ)        0.1 s        a read costs ~2.5 ms and the value changes every 100 ms
driver power buffer        0.5 s        holds 119 samples 20 ms apart (2.4 s): half-second
                                        drains never lose one and cost little
power fields instant/avg   0.1 s        only where the buffer is missing, or when it fails
``nvmlDeviceGetPowerUsage``  0.1 s      the last resort when neither of the above works
=========================  ===========  =====================================================

Devices are torch CUDA indices. They are matched to NVML handles by UUID, never by index:
CUDA and NVML number GPUs differently (``CUDA_VISIBLE_DEVICES``, ``CUDA_DEVICE_ORDER``), so an
index match would silently measure the wrong GPU. MIG instances map to their parent GPU, whose
whole energy is measured (NVML has no per-instance energy); a warning says so.

``pynvml`` is imported lazily: importing this module never fails on a machine without NVML.

Example:
    >>> from lightning_watt.sources.nvml import NvmlSource, nvml_status
    >>> ok, reason = nvml_status()
    >>> source = NvmlSource(devices=[0])
    >>> source.name
    'nvml'
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lightning_watt.energy.readings import (
    AVERAGE_W,
    BUFFER_W,
    COUNTER_J,
    INSTANT_W,
    USAGE_W,
    DeviceInfo,
    Reading,
)
from lightning_watt.sources.base import (
    Channel,
    ChannelLost,
    Clock,
    EnergySource,
    SourceUnavailable,
)

if TYPE_CHECKING:
    import torch

    DeviceSpec = int | str | torch.device

__all__ = [
    "BUFFER_INTERVAL_S",
    "COUNTER_INTERVAL_S",
    "FIELDS_INTERVAL_S",
    "POWER_FIELDS",
    "READERS",
    "USAGE_INTERVAL_S",
    "MigEnergyWarning",
    "NvmlSource",
    "nvml_status",
]

#: Counter polling: the value changes every 100 ms, so reading faster only burns 2.5 ms reads.
COUNTER_INTERVAL_S = 0.1
#: ... but the counter is read 80 and 124 ms apart in turn (102 ms on average: 2 % fewer reads),
#: not every 100 ms: a poll locked to the counter's period tells nothing of when it updates,
#: while one whose short gaps sweep the update's phase brackets it from both sides, so the
#: counter clock recovers its update instants without a power buffer
#: (:mod:`~lightning_watt.energy.bracket_fit`). Measured on real counters read in a tight loop
#: and thinned as the meter polls, 100 ms windows between true updates: h100-mlp (no buffer)
#: 5.1 % locked, 2.4 % alternating; h200-square-wave without its buffer 56 % and 2.3 %, with it
#: 1.6 % and 1.4 %.
COUNTER_PATTERN_S = (0.080, 0.124)
#: Buffer drains: 2.4 s of samples are kept, so 0.5 s leaves ~2 s for a stalled meter thread.
BUFFER_INTERVAL_S = 0.5
#: Power fields update every 100 ms: polling faster would only repeat values.
FIELDS_INTERVAL_S = 0.1
#: ``nvmlDeviceGetPowerUsage`` also updates every 100 ms.
USAGE_INTERVAL_S = 0.1
#: The NVML readers this source knows, in the order they are described.
READERS: tuple[str, ...] = ("counter", "buffer", "fields", "usage")

#: A buffer whose newest sample is this old (seconds) has stopped: its fallback takes over.
_BUFFER_STALE_S = 2.0
#: Driver buffer period assumed until samples show the real one (measured: 20 ms).
_DEFAULT_BUFFER_PERIOD_MS = 20.0
#: NVML field ids (``NVML_FI_DEV_POWER_INSTANT`` / ``_AVERAGE``; fixed by the NVML ABI). Used
#: instead of the module's names: nvidia-ml-py before 12.535 lacks them (an AttributeError, not
#: an NVMLError, would escape the probe), while an older driver answers these ids per field with
#: NOT_SUPPORTED, which the probe handles. tests/test_pynvml_api.py checks the values.
_FI_POWER_INSTANT = 186
_FI_POWER_AVERAGE = 185
#: The power fields read, instant first.
POWER_FIELDS: tuple[int, int] = (_FI_POWER_INSTANT, _FI_POWER_AVERAGE)
#: ``c_nvmlValue_t`` member per ``NVML_VALUE_TYPE_*`` (0 double, 1 uint, ... 6 ushort).
_VALUE_MEMBERS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")
_CUDA_SPEC_HELP = (
    "None (the current CUDA device), a CUDA index (int >= 0), 'cuda:N', a CUDA torch.device, "
    "or a non-empty list of those"
)


class MigEnergyWarning(UserWarning):
    """A device is a MIG instance (or on a MIG-enabled GPU): NVML has no per-instance energy, so
    the whole physical GPU is measured, including the other instances' work."""


#: A counter read slower than this (p99 measured: 16 ms) is not used: its value's instant is
#: too uncertain to anchor energy to.
_SLOW_COUNTER_READ_S = 0.05


def _import_pynvml() -> ModuleType:
    import pynvml

    return pynvml


def _init_failure(nvml: ModuleType | None, err: BaseException) -> str:
    """A one-line reason, actionable by a person, for NVML not starting."""
    if nvml is not None:
        lib_missing = getattr(nvml, "NVMLError_LibraryNotFound", ())
        not_loaded = getattr(nvml, "NVMLError_DriverNotLoaded", ())
        no_permission = getattr(nvml, "NVMLError_NoPermission", ())
        if lib_missing and isinstance(err, lib_missing):
            return "NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver on this machine"
        if not_loaded and isinstance(err, not_loaded):
            return "NVIDIA driver not loaded: NVML cannot reach any GPU"
        if no_permission and isinstance(err, no_permission):
            return "NVML refused access (insufficient permissions)"
    return f"NVML failed to initialise: {type(err).__name__}: {err}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _as_int(value: object) -> int:
    # pynvml's nvmlDeviceIsMigDeviceHandle returns a ctypes c_uint, not an int.
    return int(getattr(value, "value", value))  # type: ignore[call-overload]


def _norm_uuid(uuid: object) -> str:
    """``GPU-…``/``MIG-…``/bare, any case -> bare lower-case hex, as torch prints it."""
    text = _text(uuid).strip().lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text


def _nothing_buffered(nvml: Any) -> tuple[type[BaseException], ...]:
    """The errors ``nvmlDeviceGetSamples`` may answer a drain with when the driver holds no
    sample newer than asked: ``NOT_FOUND`` (what the drivers recorded here answer) and
    ``NO_DATA`` (NVML's code for "no data available", taken alike should a driver answer it;
    a binding without it has only the first). Neither is a failure: the next drain gets the
    samples, and a buffer that stays empty is caught by its staleness check."""
    return tuple(
        cls
        for cls in (
            getattr(nvml, "NVMLError_NotFound", None),
            getattr(nvml, "NVMLError_NoData", None),
        )
        if isinstance(cls, type)
    )


def _sample_value(value_type: int, value: Any) -> float:
    member = _VALUE_MEMBERS[value_type] if 0 <= value_type < len(_VALUE_MEMBERS) else "uiVal"
    return float(getattr(value, member))


def nvml_status() -> tuple[bool, str]:
    """Whether NVML can measure a GPU here, with a one-line reason for summaries.

    Example:
        >>> ok, reason = nvml_status()
        >>> isinstance(ok, bool) and isinstance(reason, str)
        True
    """
    try:
        nvml = _import_pynvml()
    except ImportError as err:
        return False, f"pynvml (nvidia-ml-py) is not importable: {err}"
    try:
        nvml.nvmlInit()
    except Exception as err:
        return False, _init_failure(nvml, err)
    try:
        count = int(nvml.nvmlDeviceGetCount())
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        if count == 0:
            return False, f"NVML works (driver {driver}) but sees no GPU"
        names = sorted(
            {
                _text(nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i)))
                for i in range(count)
            }
        )
        return True, f"NVML: {count} GPU(s) ({', '.join(names)}), driver {driver}"
    except Exception as err:
        return False, f"NVML started but querying GPUs failed: {type(err).__name__}: {err}"
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _parse_devices(devices: object) -> tuple[int | None, ...] | None:
    """Validate ``devices`` at construction; ``None`` entries mean "the current device"."""
    if devices is None:
        return None
    import torch

    items: Sequence[object]
    if isinstance(devices, (int, str, torch.device)):
        items = [devices]
    elif isinstance(devices, Sequence):
        items = devices
    else:
        raise ValueError(f"devices must be {_CUDA_SPEC_HELP}; got {devices!r}")
    if not items:
        raise ValueError(f"devices must be {_CUDA_SPEC_HELP}; got an empty list")
    out: list[int | None] = []
    for item in items:
        index: int | None
        if isinstance(item, bool):
            raise ValueError(f"devices must be {_CUDA_SPEC_HELP}; got {item!r}")
        if isinstance(item, int):
            index = item
        else:
            device = item
            if isinstance(item, str):
                try:
                    device = torch.device(item)
                except (RuntimeError, ValueError):
                    raise ValueError(f"devices must be {_CUDA_SPEC_HELP}; got {item!r}") from None
            if not isinstance(device, torch.device) or device.type != "cuda":
                raise ValueError(f"devices must be {_CUDA_SPEC_HELP}; got {item!r}")
            index = device.index
        if index is not None and index < 0:
            raise ValueError(f"devices must be {_CUDA_SPEC_HELP}; got negative index {item!r}")
        if index in out:
            raise ValueError(f"devices lists CUDA device {index} twice")
        out.append(index)
    return tuple(out)


def _torch_uuid(index: int) -> str:
    """The CUDA device's UUID as torch prints it (NVML's, without ``GPU-``)."""
    import torch

    return str(torch.cuda.get_device_properties(index).uuid)


@dataclass
class _Gpu:
    """What the source knows and keeps per measured device (state of its channels too)."""

    name: str
    torch_index: int
    handle: Any  # the physical GPU's NVML handle: every reading is taken on it
    uuid: str  # the physical GPU's NVML UUID ("GPU-…")
    nvml_index: int
    model: str = ""
    mig_uuid: str = ""  # the MIG instance torch runs on, when it is one
    mig_enabled: bool = False
    counter: bool = False
    buffer: bool = False
    buffer_period_ms: float | None = None
    fields: tuple[int, ...] = ()
    usage: bool = False
    missing: dict[str, str] = field(default_factory=dict)
    # Buffer drain state: newest driver timestamp taken (µs), newest meter time returned.
    last_seen_us: int = 0
    last_buffer_t: float = -math.inf
    newest_sample_wall: float = 0.0
    buffer_samples: int = 0
    buffer_overruns: int = 0
    slow_counter_reads: int = 0
    lost: str = ""

    @property
    def is_mig(self) -> bool:
        return bool(self.mig_uuid) or self.mig_enabled


class NvmlSource(EnergySource):
    """Energy of NVIDIA GPUs from NVML: counter + driver power buffer where available.

    Args:
        devices: torch CUDA devices to measure (indices, ``"cuda:N"`` or ``torch.device``);
            ``None`` means the current CUDA device, resolved at :meth:`open` (Lightning sets it
            per rank after the meter is built). Readings are named ``gpu{torch_index}``.
        readers: the NVML readers allowed, a subset of :data:`READERS` (default all), e.g.
            ``{"counter", "fields"}`` to compare methods.
        uuid_of: torch CUDA index -> that device's UUID (default
            ``str(torch.cuda.get_device_properties(i).uuid)``); tests inject one to emulate
            CUDA's device numbering without a GPU. Also settable as an attribute before ``open``.
        wall_clock: the clock driver buffer timestamps are on (``time.time``); injectable
            for simulated drivers.

    Example:
        >>> source = NvmlSource(devices=["cuda:0"], readers={"counter", "buffer", "fields"})
        >>> source.requested_devices
        (0,)
    """

    name = "nvml"
    # Not yet: NVML in a process forked from one that initialised it (torch may, and
    # ``default_sources`` probes it) has not been run on NVIDIA hardware here.
    helper_safe = False

    def __init__(
        self,
        devices: DeviceSpec | Sequence[DeviceSpec] | None = None,
        *,
        readers: Collection[str] | None = None,
        uuid_of: Callable[[int], str] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.requested_devices = _parse_devices(devices)
        if readers is None:
            self.readers = frozenset(READERS)
        else:
            if isinstance(readers, str) or not isinstance(readers, Collection):
                raise ValueError(
                    f"readers must be a collection of {list(READERS)}; got {readers!r}"
                )
            unknown = set(readers) - set(READERS)
            if unknown or not readers:
                raise ValueError(
                    f"readers must be a non-empty subset of {list(READERS)}; got {list(readers)!r}"
                )
            self.readers = frozenset(readers)
        if uuid_of is not None and not callable(uuid_of):
            raise ValueError(f"uuid_of must be a callable int -> str or None; got {uuid_of!r}")
        if not callable(wall_clock):
            raise ValueError(f"wall_clock must be a callable returning seconds; got {wall_clock!r}")
        self.uuid_of: Callable[[int], str] | None = uuid_of
        self.wall_clock = wall_clock
        self._nvml: ModuleType | None = None
        self._initialized = False
        self._clock: Clock = time.monotonic
        self._gpus: list[_Gpu] = []
        self._channels: list[Channel] = []
        self._driver = ""
        self._nvml_version = ""
        self._open_wall = 0.0

    # ------------------------------------------------------------------ lifecycle
    def open(self, clock: Clock) -> None:
        """Start NVML, map the devices to physical GPUs by UUID and probe their readers.

        Raises:
            SourceUnavailable: no pynvml, no driver, no GPU visible to torch, a device NVML
                does not see, a lost GPU, or a device no NVML reader works on.
            ValueError: a requested CUDA index that does not exist.
        """
        self._clock = clock
        self._gpus, self._channels = [], []
        try:
            nvml = _import_pynvml()
        except ImportError as err:
            raise SourceUnavailable(f"pynvml (nvidia-ml-py) is not importable: {err}") from err
        try:
            nvml.nvmlInit()
        except Exception as err:
            raise SourceUnavailable(_init_failure(nvml, err)) from err
        self._nvml, self._initialized = nvml, True
        try:
            self._driver = self._query_text(nvml.nvmlSystemGetDriverVersion)
            self._nvml_version = self._query_text(nvml.nvmlSystemGetNVMLVersion)
            self._open_wall = self.wall_clock()
            self._gpus = self._map_devices(self._resolve_indices())
            for gpu in self._gpus:
                self._probe(gpu)
            self._channels = [ch for gpu in self._gpus for ch in self._plan(gpu)]
        except BaseException:
            self.close()
            raise
        self._warn_mig()

    def close(self) -> None:
        """Shut NVML down (errors ignored: the run is over and nothing depends on it)."""
        if self._initialized and self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
        self._initialized = False

    def devices(self) -> list[DeviceInfo]:
        return [
            DeviceInfo(
                gpu.name,
                kind="gpu",
                uuid=gpu.uuid,
                label=gpu.model or "NVIDIA GPU",
                notes=self._notes(gpu),
            )
            for gpu in self._gpus
        ]

    def channels(self) -> list[Channel]:
        return list(self._channels)

    # ------------------------------------------------------------------ mapping
    @staticmethod
    def _query_text(fn: Callable[[], object]) -> str:
        try:
            return _text(fn())
        except Exception:
            return ""

    def _resolve_indices(self) -> list[int]:
        requested = self.requested_devices
        if self.uuid_of is not None and requested is not None and None not in requested:
            return [i for i in requested if i is not None]
        import torch

        if not torch.cuda.is_available():
            raise SourceUnavailable(
                "torch sees no CUDA device (CPU-only build, CUDA_VISIBLE_DEVICES empty or no "
                "GPU), so there is no GPU of this process to measure"
            )
        current = int(torch.cuda.current_device())
        indices = (
            [current] if requested is None else [current if i is None else i for i in requested]
        )
        count = torch.cuda.device_count()
        if len(set(indices)) != len(indices):
            raise ValueError(f"devices names the current CUDA device ({current}) twice")
        bad = [i for i in indices if i >= count]
        if bad:
            raise ValueError(
                f"devices: CUDA index {bad[0]} does not exist; this process sees {count} CUDA "
                f"device(s) (indices 0..{count - 1})"
            )
        return indices

    def _map_devices(self, indices: list[int]) -> list[_Gpu]:
        nvml = self._nvml
        assert nvml is not None
        uuid_of = self.uuid_of or _torch_uuid
        # NVML enumerates every GPU of the machine in PCI order, whatever CUDA shows this
        # process: map each torch device to its NVML twin through the UUID they share.
        count = int(nvml.nvmlDeviceGetCount())
        table: dict[str, tuple[Any, Any, str, int]] = {}
        parents: list[tuple[Any, int]] = []
        for i in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            table[_norm_uuid(uuid)] = (handle, None, uuid, i)
            parents.append((handle, i))
        mig_listed = False
        gpus: list[_Gpu] = []
        seen: dict[str, str] = {}
        for index in indices:
            try:
                torch_uuid = uuid_of(index)
            except Exception as err:
                raise SourceUnavailable(
                    f"cannot read the UUID of CUDA device {index}: {type(err).__name__}: {err}"
                ) from err
            key = _norm_uuid(torch_uuid)
            if key not in table and not mig_listed:
                mig_listed = True
                self._list_mig(parents, table)
            if key not in table:
                known = ", ".join(u for _, _, u, _ in table.values()) or "none"
                raise SourceUnavailable(
                    f"CUDA device {index} (UUID {torch_uuid}) is not among the GPUs NVML sees "
                    f"({known})"
                )
            handle, parent, uuid, nvml_index = table[key]
            gpu = self._physical(f"gpu{index}", index, handle, parent, uuid, nvml_index)
            if gpu.uuid in seen:
                # Two MIG instances of one GPU: both would report the same whole-GPU energy.
                warnings.warn(
                    f"lightning-watt: {gpu.name} is on the same physical GPU ({gpu.uuid}) as "
                    f"{seen[gpu.uuid]}; NVML measures whole GPUs, so it is measured once, as "
                    f"{seen[gpu.uuid]}",
                    MigEnergyWarning,
                    stacklevel=3,
                )
                continue
            seen[gpu.uuid] = gpu.name
            gpus.append(gpu)
        return gpus

    def _list_mig(self, parents: list[tuple[Any, int]], table: dict[str, Any]) -> None:
        """Add the MIG instances of MIG-enabled GPUs to ``table`` (only needed when a torch
        UUID matched no whole GPU, so normal machines never pay for it)."""
        nvml = self._nvml
        assert nvml is not None
        for parent, i in parents:
            try:
                if _as_int(nvml.nvmlDeviceGetMigMode(parent)[0]) != nvml.NVML_DEVICE_MIG_ENABLE:
                    continue
                slots = int(nvml.nvmlDeviceGetMaxMigDeviceCount(parent))
            except nvml.NVMLError:
                continue
            for j in range(slots):
                try:
                    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, j)
                    uuid = _text(nvml.nvmlDeviceGetUUID(mig))
                except nvml.NVMLError:
                    continue  # an empty slot
                table[_norm_uuid(uuid)] = (mig, parent, uuid, i)

    def _physical(
        self, name: str, index: int, handle: Any, parent: Any, uuid: str, nvml_index: int
    ) -> _Gpu:
        """The physical GPU behind a (possibly MIG) handle: the one NVML can measure."""
        nvml = self._nvml
        assert nvml is not None
        mig_uuid = ""
        if parent is None:
            try:
                is_mig = bool(_as_int(nvml.nvmlDeviceIsMigDeviceHandle(handle)))
            except nvml.NVMLError:
                is_mig = False
            if is_mig:
                parent = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
        if parent is not None:
            mig_uuid = uuid
            handle = parent
            uuid = _text(nvml.nvmlDeviceGetUUID(parent))
        try:
            mig_enabled = (
                _as_int(nvml.nvmlDeviceGetMigMode(handle)[0]) == nvml.NVML_DEVICE_MIG_ENABLE
            )
        except nvml.NVMLError:
            mig_enabled = False  # pre-Ampere GPUs have no MIG at all
        model = self._query_text(lambda: nvml.nvmlDeviceGetName(handle))
        return _Gpu(
            name,
            index,
            handle,
            uuid,
            nvml_index,
            model=model,
            mig_uuid=mig_uuid,
            mig_enabled=mig_enabled,
        )

    # ------------------------------------------------------------------ probing
    def _probe(self, gpu: _Gpu) -> None:
        """Try every allowed reader once; remember what works and why the others do not."""
        nvml = self._nvml
        assert nvml is not None
        h = gpu.handle

        def attempt(reader: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
            if reader not in self.readers:
                gpu.missing[reader] = "not requested"
                return False, None
            try:
                return True, fn()
            except nvml.NVMLError_GpuIsLost as err:
                raise SourceUnavailable(f"{gpu.name} ({gpu.uuid}): GPU is lost") from err
            except nvml.NVMLError as err:
                gpu.missing[reader] = str(err)
                return False, None

        gpu.counter, _ = attempt("counter", lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(h))

        def drain_all() -> list[Any]:
            try:
                return list(nvml.nvmlDeviceGetSamples(h, nvml.NVML_TOTAL_POWER_SAMPLES, 0)[1])
            except _nothing_buffered(nvml):
                return []  # supported, nothing buffered yet

        ok, samples = attempt("buffer", drain_all)
        if ok:
            stamps = sorted(int(s.timeStamp) for s in samples)
            steps = [b - a for a, b in itertools.pairwise(stamps) if b > a]
            newest_age = self._open_wall - stamps[-1] * 1e-6 if stamps else 0.0
            if newest_age > _BUFFER_STALE_S:
                ok = False
                gpu.missing["buffer"] = (
                    f"driver power buffer is stale (newest sample {newest_age:.1f} s old)"
                )
            elif steps:
                gpu.buffer_period_ms = statistics.median(steps) / 1000.0
        gpu.buffer = ok
        # Samples from before the source opened belong to someone else's run.
        gpu.last_seen_us = int(self._open_wall * 1e6)
        gpu.newest_sample_wall = self._open_wall

        ok, values = attempt(
            "fields",
            lambda: nvml.nvmlDeviceGetFieldValues(h, list(POWER_FIELDS)),
        )
        if ok:
            works = [v.fieldId for v in values if int(v.nvmlReturn) == nvml.NVML_SUCCESS]
            if any(int(v.nvmlReturn) == nvml.NVML_ERROR_GPU_IS_LOST for v in values):
                raise SourceUnavailable(f"{gpu.name} ({gpu.uuid}): GPU is lost")
            gpu.fields = tuple(int(f) for f in works)
            if not works:
                first = int(values[0].nvmlReturn) if len(values) else nvml.NVML_ERROR_NOT_SUPPORTED
                gpu.missing["fields"] = str(nvml.NVMLError(first))
        gpu.usage, _ = attempt("usage", lambda: nvml.nvmlDeviceGetPowerUsage(h))

    # ------------------------------------------------------------------ channels
    def _plan(self, gpu: _Gpu) -> list[Channel]:
        """The channels of one device: counter + the best power reader, the rest as fallbacks.

        One channel per device and reader, not one for all devices: a lost GPU then only
        stops its own channels (and marks gaps on itself alone), fallbacks switch per GPU, and
        each reading is stamped at its own call rather than after a sweep of 2.5 ms reads.
        """
        name = gpu.name
        usage = fields = buffer = None
        if gpu.usage:
            usage = Channel(
                f"{name}/usage",
                USAGE_INTERVAL_S,
                self._guard(gpu, "power usage", self._read_usage),
                (name,),
                describe="nvmlDeviceGetPowerUsage (100 ms)",
                kinds=(USAGE_W,),
            )
        if gpu.fields:
            fields = Channel(
                f"{name}/fields",
                FIELDS_INTERVAL_S,
                self._guard(gpu, "power fields", self._read_fields),
                (name,),
                fallback=usage,
                describe=f"power fields {self._field_names(gpu)} (100 ms)",
                kinds=(INSTANT_W, AVERAGE_W),
            )
        if gpu.buffer:
            period = gpu.buffer_period_ms or _DEFAULT_BUFFER_PERIOD_MS
            buffer = Channel(
                f"{name}/buffer",
                BUFFER_INTERVAL_S,
                self._guard(gpu, "power buffer", self._read_buffer),
                (name,),
                fallback=fields or usage,
                describe=f"driver power buffer ({period:.0f} ms samples)",
                kinds=(BUFFER_W,),
            )
        power = buffer or fields or usage
        out: list[Channel] = []
        if gpu.counter:
            out.append(
                Channel(
                    f"{name}/counter",
                    COUNTER_INTERVAL_S,
                    self._guard(gpu, "energy counter", self._read_counter),
                    (name,),
                    describe="energy counter (100 ms)",
                    kinds=(COUNTER_J,),
                    pattern=COUNTER_PATTERN_S,
                )
            )
        if power is not None:
            out.append(power)
        if not out:
            why = "; ".join(f"{r}: {m}" for r, m in gpu.missing.items())
            raise SourceUnavailable(
                f"{name} ({gpu.model or gpu.uuid}): no NVML reader works ({why})"
            )
        return out

    @staticmethod
    def _field_names(gpu: _Gpu) -> str:
        names = {_FI_POWER_INSTANT: "instant", _FI_POWER_AVERAGE: "average"}
        return "/".join(names.get(f, str(f)) for f in gpu.fields)

    def _guard(
        self, gpu: _Gpu, what: str, read: Callable[[_Gpu], list[Reading]]
    ) -> Callable[[], list[Reading]]:
        """Wrap a reader: a lost GPU or a reader gone unsupported ends the channel for good
        (the meter switches to its fallback); other NVML errors are transient and re-raised."""
        nvml = self._nvml
        assert nvml is not None
        lost_errors = (nvml.NVMLError_GpuIsLost, nvml.NVMLError_ResetRequired)

        def guarded() -> list[Reading]:
            if gpu.lost:
                raise ChannelLost(gpu.lost)
            try:
                return read(gpu)
            except lost_errors as err:
                gpu.lost = f"{gpu.name}: GPU is lost ({err}); it is not measured from here on"
                raise ChannelLost(gpu.lost) from err
            except nvml.NVMLError_NotSupported as err:
                raise ChannelLost(f"{gpu.name}: NVML {what} is no longer supported") from err

        return guarded

    def _stamped(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        # The middle of the call: a counter read takes ~2.5 ms (p99 16 ms); the value belongs
        # to the call, and its midpoint halves the worst stamping error.
        c0 = self._clock()
        value = fn()
        return 0.5 * (c0 + self._clock()), value

    def _read_counter(self, gpu: _Gpu) -> list[Reading]:
        nvml = self._nvml
        assert nvml is not None
        c0 = self._clock()
        t, mj = self._stamped(lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle))
        if self._clock() - c0 > _SLOW_COUNTER_READ_S:
            # When in a stalled call the value was taken is unknown: pinned at the call's middle
            # it could move up to half the stall's energy across the anchor (+19 % seen on a fit
            # whose first three reads took 2 s each). The next prompt read anchors instead.
            gpu.slow_counter_reads += 1
            return []
        return [Reading(t, gpu.name, COUNTER_J, int(mj) / 1000.0)]

    def _read_usage(self, gpu: _Gpu) -> list[Reading]:
        nvml = self._nvml
        assert nvml is not None
        t, mw = self._stamped(lambda: nvml.nvmlDeviceGetPowerUsage(gpu.handle))
        return [Reading(t, gpu.name, USAGE_W, int(mw) / 1000.0)]

    def _read_fields(self, gpu: _Gpu) -> list[Reading]:
        nvml = self._nvml
        assert nvml is not None
        t, values = self._stamped(
            lambda: nvml.nvmlDeviceGetFieldValues(gpu.handle, list(gpu.fields))
        )
        kinds = {_FI_POWER_INSTANT: INSTANT_W, _FI_POWER_AVERAGE: AVERAGE_W}
        out: list[Reading] = []
        failed: list[int] = []
        for v in values:
            ret = int(v.nvmlReturn)
            if ret == nvml.NVML_SUCCESS:
                watts = _sample_value(int(v.valueType), v.value) / 1000.0
                out.append(Reading(t, gpu.name, kinds[int(v.fieldId)], watts))
            else:
                failed.append(ret)
        if not out and failed:
            # Every field failed: surface it as the NVML error it is, so the guard decides
            # between lost (GPU lost, not supported) and transient (anything else).
            raise nvml.NVMLError(failed[0])
        return out

    def _read_buffer(self, gpu: _Gpu) -> list[Reading]:
        nvml = self._nvml
        assert nvml is not None
        # Driver timestamps are on the wall clock; the meter's is monotonic. Their offset is
        # measured at each drain so a wall clock stepped by NTP mid-run moves only new samples.
        c0 = self._clock()
        wall = self.wall_clock()
        offset = 0.5 * (c0 + self._clock()) - wall
        try:
            value_type, samples = nvml.nvmlDeviceGetSamples(
                gpu.handle, nvml.NVML_TOTAL_POWER_SAMPLES, gpu.last_seen_us
            )
        except _nothing_buffered(nvml):
            value_type, samples = nvml.NVML_VALUE_TYPE_UNSIGNED_INT, []  # nothing newer: fine
        period_us = (gpu.buffer_period_ms or _DEFAULT_BUFFER_PERIOD_MS) * 1000.0
        out: list[Reading] = []
        previous = gpu.last_seen_us
        for sample in sorted(samples, key=lambda s: int(s.timeStamp)):
            stamp = int(sample.timeStamp)
            if stamp <= gpu.last_seen_us:
                continue  # already returned, or from before open: never twice
            if not out and gpu.buffer_samples and stamp - previous > 3 * period_us:
                gpu.buffer_overruns += 1  # the buffer wrapped before this drain
            gpu.last_seen_us = stamp
            t = stamp * 1e-6 + offset
            if t <= gpu.last_buffer_t:
                continue  # the offset moved backwards by more than the sample spacing
            gpu.last_buffer_t = t
            watts = _sample_value(int(value_type), sample.sampleValue) / 1000.0
            out.append(Reading(t, gpu.name, BUFFER_W, watts))
        if out:
            gpu.buffer_samples += len(out)
            gpu.newest_sample_wall = gpu.last_seen_us * 1e-6
        elif wall - gpu.newest_sample_wall > _BUFFER_STALE_S:
            raise ChannelLost(
                f"{gpu.name}: the driver power buffer delivered no sample for "
                f"{wall - gpu.newest_sample_wall:.1f} s"
            )
        return out

    # ------------------------------------------------------------------ reports
    def _notes(self, gpu: _Gpu) -> tuple[str, ...]:
        notes: list[str] = []
        if gpu.is_mig:
            where = f"MIG instance {gpu.mig_uuid}" if gpu.mig_uuid else "a MIG-enabled GPU"
            notes.append(
                f"runs on {where}: NVML has no per-instance energy, so the whole physical GPU "
                f"{gpu.uuid} is measured, other instances' work included"
            )
        if not gpu.counter:
            notes.append(
                f"no energy counter ({gpu.missing.get('counter', 'unavailable')}): energy is "
                "integrated from power alone"
            )
        return tuple(notes)

    def describe(self) -> dict[str, str]:
        """How each device is measured, e.g. ``"NVML energy counter (100 ms) + driver power
        buffer (20 ms samples)"``."""
        out: dict[str, str] = {}
        channels = {ch.name: ch for ch in self._channels}
        for gpu in self._gpus:
            parts: list[str] = []
            counter = channels.get(f"{gpu.name}/counter")
            if counter is not None:
                parts.append(counter.describe)
            power = next(
                (channels[f"{gpu.name}/{r}"] for r in READERS[1:] if f"{gpu.name}/{r}" in channels),
                None,
            )
            if power is not None:
                parts.append(power.describe)
            text = "NVML " + " + ".join(parts)
            fallbacks: list[str] = []
            fb = power.fallback if power is not None else None
            while fb is not None:
                fallbacks.append(fb.describe.split(" (")[0])
                fb = fb.fallback
            if fallbacks:
                text += "; falls back to " + ", then ".join(fallbacks)
            if not gpu.counter:
                text += "; no energy counter (pre-Volta?): energy from power alone"
            if gpu.is_mig:
                text += "; MIG: whole physical GPU"
            out[gpu.name] = text
        return out

    def metadata(self) -> dict[str, object]:
        """GPU model, driver and NVML versions, and per device what was used and why not."""
        models = sorted({gpu.model for gpu in self._gpus if gpu.model})
        return {
            "gpu": models[0] if len(models) == 1 else models,
            "driver": self._driver,
            "nvml": self._nvml_version,
            "devices": {
                gpu.name: {
                    "name": gpu.model,
                    "uuid": gpu.uuid,
                    "mig_uuid": gpu.mig_uuid,
                    "mig_enabled": gpu.mig_enabled,
                    "torch_index": gpu.torch_index,
                    "nvml_index": gpu.nvml_index,
                    "counter": gpu.counter,
                    "buffer": gpu.buffer,
                    "buffer_period_ms": gpu.buffer_period_ms,
                    "fields": self._field_names(gpu).split("/") if gpu.fields else [],
                    "usage": gpu.usage,
                    "missing": dict(gpu.missing),
                    "buffer_samples": gpu.buffer_samples,
                    "buffer_overruns": gpu.buffer_overruns,
                    "slow_counter_reads": gpu.slow_counter_reads,
                    "lost": gpu.lost,
                }
                for gpu in self._gpus
            },
        }

    def _warn_mig(self) -> None:
        mig = [gpu for gpu in self._gpus if gpu.is_mig]
        if mig:
            listed = ", ".join(f"{g.name} -> GPU {g.uuid}" for g in mig)
            warnings.warn(
                f"lightning-watt: {listed} use MIG. NVML has no per-instance energy, so the whole "
                "physical GPU's energy is measured, including work of other MIG instances.",
                MigEnergyWarning,
                stacklevel=3,
            )
