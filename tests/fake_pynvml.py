"""A FAKE ``pynvml`` for tests on machines without an NVIDIA GPU. It is NOT NVIDIA's library.

It serves the handful of ``pynvml`` calls :class:`~lightning_watt.sources.nvml.NvmlSource`
makes, with the behaviour measured on real H100/H200 GPUs (driver 580.159.04, see the traces'
README): an energy counter in mJ whose value changes every 100 ms and whose read takes ~2.5 ms
(configurable; 0 by default so tests stay fast), a driver power buffer of 20 ms samples keeping
the newest 119 with ``lastSeenTimeStamp`` semantics (``NVMLError_NotFound`` when nothing is
newer, timestamps in µs on the ``time.time()`` clock), the power fields
``NVML_FI_DEV_POWER_INSTANT``/``_AVERAGE`` updating every 100 ms, ``nvmlDeviceGetPowerUsage``,
several GPUs with UUIDs, MIG instances, a GPU lost mid-run and readers that are not supported.

Exceptions, constants and ctypes structures are the real ``pynvml``'s, so code written against
the real module (``except pynvml.NVMLError_NotFound``, ``NVML_FI_DEV_POWER_INSTANT``,
``sample.sampleValue.uiVal``) runs unchanged on the fake.

Power comes from a :class:`SyntheticPower` (any ``watts(t)`` function) or a
:class:`TracePower` (a real recording: buffer samples from its ``buffer_W``, or from
``instant_W`` where it has none; the counter from its ``counter_J``; fields from its
``instant_W``/``average_W``), so the fake's values are real measurements.

Time is a :class:`SimClock` (deterministic: moves only when a test advances it, or by the
simulated latency of a counter read) or a :class:`RealClock` (for end-to-end tests with the
meter's thread).

Example:
    >>> fake = FakeNvml([FakeGpu("GPU-00000000-0000-0000-0000-000000000000",
    ...                          SyntheticPower(lambda t: 100.0))], clock=SimClock())
    >>> nvml = fake.module()
    >>> nvml.nvmlInit()
    >>> handle = nvml.nvmlDeviceGetHandleByIndex(0)
    >>> nvml.nvmlDeviceGetPowerUsage(handle)
    100000
"""

from __future__ import annotations

import bisect
import collections
import ctypes
import math
import time as _time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pynvml as _real

from lightning_watt.energy.readings import AVERAGE_W, BUFFER_W, COUNTER_J, INSTANT_W
from lightning_watt.energy.timeline import _interp
from lightning_watt.energy.trace import Trace

#: Driver buffer period and the counter/field update period measured on H100/H200.
BUFFER_PERIOD_S = 0.02
UPDATE_PERIOD_S = 0.1
#: Samples the driver's power buffer keeps (2.4 s).
BUFFER_LENGTH = 119
#: Measured median cost of one ``nvmlDeviceGetTotalEnergyConsumption`` call.
MEASURED_COUNTER_LATENCY_S = 0.0025
#: The readers the fake can fail or not support: the names NvmlSource uses.
READERS = ("counter", "buffer", "instant", "average", "usage")


# ---------------------------------------------------------------------------------- clocks
class SimClock:
    """Simulated time: a wall clock (``time.time``-like) and a monotonic one that move together,
    only when :meth:`advance`/:meth:`sleep` is called. Deterministic tests use it for both the
    fake driver and the source (``open(clock.monotonic)``, ``wall_clock=clock.time``)."""

    def __init__(self, wall: float = 1_750_000_000.0, monotonic: float = 5_000.0) -> None:
        self._wall0, self._mono0, self.elapsed = wall, monotonic, 0.0

    def time(self) -> float:
        return self._wall0 + self.elapsed

    def monotonic(self) -> float:
        return self._mono0 + self.elapsed

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds

    sleep = advance


class RealClock:
    """The real clocks, for end-to-end tests where the meter's thread runs in real time."""

    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)
    sleep = staticmethod(_time.sleep)


# ---------------------------------------------------------------------------------- power
class PowerModel(Protocol):
    """What a fake GPU draws, on driver seconds ``s`` (0 = when the fake was built)."""

    def samples(self, s: float) -> list[tuple[float, float]]:
        """The driver buffer at ``s``: ``(end time, mean watts of the 20 ms before it)``,
        oldest first, at most :data:`BUFFER_LENGTH`."""

    def counter_mJ(self, s: float) -> int: ...

    def instant_W(self, s: float) -> float: ...

    def average_W(self, s: float) -> float: ...


class SyntheticPower:
    """Power from a function of driver seconds, quantised the way the driver does.

    Time is cut into 20 ms windows; window ``k`` draws ``watts((k + 0.5) * 0.02)`` on average.
    A buffer sample is one window, stamped at its end. The counter adds up whole windows and
    updates every 100 ms, so it is the exact integral of the buffer at each update; the instant
    field is the newest window at the last update, the average field the mean of the 50 before.

    Example:
        >>> p = SyntheticPower(lambda t: 100.0)
        >>> p.counter_mJ(1.05) - p.counter_mJ(0.0)
        100000
    """

    _HISTORY = 5_000  # windows kept before s = 0 (100 s), so buffers are full from the start

    def __init__(self, watts: Callable[[float], float], *, counter_origin_J: float = 81_234.5):
        self._watts = watts
        self._origin_mJ = counter_origin_J * 1000.0
        self._cum = [0.0]  # energy (J) of windows -HISTORY .. -HISTORY+len-2
        self._k0 = -self._HISTORY

    def window_W(self, k: int) -> float:
        return max(0.0, float(self._watts((k + 0.5) * BUFFER_PERIOD_S)))

    def _energy_before(self, k: int) -> float:
        """Joules of all windows before window ``k`` (from the start of history)."""
        i = k - self._k0
        while len(self._cum) <= i:
            j = self._k0 + len(self._cum) - 1
            self._cum.append(self._cum[-1] + self.window_W(j) * BUFFER_PERIOD_S)
        return self._cum[max(i, 0)]

    @staticmethod
    def _done(s: float) -> int:
        """Windows completed by ``s`` (float noise would lose one at exact edges)."""
        return math.floor(s / BUFFER_PERIOD_S + 1e-9)

    def _updated(self, s: float) -> int:
        per = round(UPDATE_PERIOD_S / BUFFER_PERIOD_S)
        return self._done(s) // per * per

    def samples(self, s: float) -> list[tuple[float, float]]:
        n = self._done(s)
        return [((k + 1) * BUFFER_PERIOD_S, self.window_W(k)) for k in range(n - BUFFER_LENGTH, n)]

    def counter_mJ(self, s: float) -> int:
        return round(self._origin_mJ + self._energy_before(self._updated(s)) * 1000.0)

    def instant_W(self, s: float) -> float:
        return self.window_W(self._updated(s) - 1)

    def average_W(self, s: float) -> float:
        n = self._updated(s)
        return (self._energy_before(n) - self._energy_before(n - 50)) / 1.0

    def energy_J(self, s0: float, s1: float) -> float:
        """Exact joules over ``[s0, s1]`` (partial windows pro rata): the ground truth."""

        def at(s: float) -> float:
            k = math.floor(s / BUFFER_PERIOD_S)
            frac = s / BUFFER_PERIOD_S - k
            return self._energy_before(k) + frac * self.window_W(k) * BUFFER_PERIOD_S

        return at(s1) - at(s0)


class TracePower:
    """Power replayed from a real recording: driver second ``s`` is trace time ``start + s``.

    Buffer samples are the trace's ``buffer_W`` ones (the driver's own, with their jitter); a
    trace without them (``h100-mlp``) gets 20 ms samples held from ``instant_W``. The counter
    updates every 100 ms to the trace's ``counter_J`` interpolated linearly at that instant (the
    recording polled it irregularly, up to 400 ms apart; the same interpolation is
    :meth:`Trace.counter_energy`'s truth). Fields are the newest ``instant_W``/``average_W``
    reading. Outside the recording the nearest value holds.
    """

    def __init__(self, trace: Trace, device: str = "gpu0", start: float | None = None) -> None:
        def series(kind: str) -> tuple[list[float], list[float]]:
            rows = [(r.t, r.value) for r in trace.samples if r.device == device and r.kind == kind]
            return [t for t, _ in rows], [v for _, v in rows]

        self.start = trace.fit_window[0] if start is None else float(start)
        self._counter = series(COUNTER_J)
        self._instant = series(INSTANT_W)
        self._average = series(AVERAGE_W)
        if not self._counter[0] or not self._instant[0]:
            raise ValueError(f"trace: {device} needs counter_J and instant_W readings")
        bt, bw = series(BUFFER_W)
        if not bt:
            t0, t1 = trace.span
            bt = [t0 + (k + 1) * BUFFER_PERIOD_S for k in range(int((t1 - t0) / BUFFER_PERIOD_S))]
            bw = [self._at(self._instant, t - BUFFER_PERIOD_S / 2) for t in bt]
        self._buffer = (bt, bw)

    @staticmethod
    def _at(series: tuple[list[float], list[float]], t: float) -> float:
        ts, vs = series
        i = bisect.bisect_right(ts, t) - 1
        return vs[max(i, 0)]

    def samples(self, s: float) -> list[tuple[float, float]]:
        ts, ws = self._buffer
        n = bisect.bisect_right(ts, self.start + s)
        lo = max(0, n - BUFFER_LENGTH)
        return [(ts[i] - self.start, ws[i]) for i in range(lo, n)]

    def counter_mJ(self, s: float) -> int:
        updated = math.floor(s / UPDATE_PERIOD_S + 1e-9) * UPDATE_PERIOD_S
        return round(_interp(*self._counter, self.start + updated) * 1000.0)

    def instant_W(self, s: float) -> float:
        return self._at(self._instant, self.start + s)

    def average_W(self, s: float) -> float:
        if not self._average[0]:
            return self.instant_W(s)
        return self._at(self._average, self.start + s)


# ---------------------------------------------------------------------------------- GPUs
@dataclass
class FakeGpu:
    """One fake physical GPU, in NVML (PCI bus) order within :class:`FakeNvml`.

    Args:
        uuid: NVML's form, ``GPU-…``.
        power: what it draws.
        speed: CUDA's ``FASTEST_FIRST`` order key (higher first); NVML ignores it.
        counter, buffer, usage: whether that reader is supported (``counter=False`` is a
            pre-Volta GPU); ``fields``: the supported power fields (``instant``, ``average``).
        mig_mode: 1 enabled, 0 disabled, ``None`` not supported (pre-Ampere).
        mig_uuids: MIG instances (``MIG-…``) when MIG is enabled.
    """

    uuid: str
    power: PowerModel
    name: str = "NVIDIA H200"
    speed: int = 0
    counter: bool = True
    buffer: bool = True
    fields: frozenset[str] = frozenset({"instant", "average"})
    usage: bool = True
    mig_mode: int | None = 0
    mig_uuids: tuple[str, ...] = ()
    lost: bool = False
    unsupported: set[str] = field(default_factory=set)
    errors: dict[str, list[type[Exception]]] = field(default_factory=dict)


@dataclass(frozen=True)
class FakeHandle:
    """An NVML device handle: a whole GPU (``mig is None``) or one of its MIG instances."""

    gpu: int
    mig: int | None = None


def bare_uuid(uuid: str) -> str:
    """``GPU-abc``/``MIG-abc`` -> ``abc``: how torch prints a CUDA device's UUID."""
    return uuid.split("-", 1)[1] if uuid[:4] in ("GPU-", "MIG-") else uuid


def cuda_uuids(
    gpus: Sequence[FakeGpu], visible: str | None = None, order: str = "FASTEST_FIRST"
) -> list[str]:
    """The UUIDs torch reports for CUDA indices 0, 1, … (``str(props.uuid)``, no prefix),
    emulating CUDA's enumeration: ``CUDA_DEVICE_ORDER`` (``FASTEST_FIRST`` by ``speed``, or
    ``PCI_BUS_ID`` = NVML's order), then ``CUDA_VISIBLE_DEVICES`` as indices into that order or
    (unique prefixes of) ``GPU-``/``MIG-`` UUIDs; CUDA stops at the first entry it cannot
    resolve. On a MIG-enabled GPU CUDA sees its instances, not the GPU."""
    if order not in ("FASTEST_FIRST", "PCI_BUS_ID"):
        raise ValueError(f"order must be FASTEST_FIRST or PCI_BUS_ID, got {order!r}")
    positions = list(range(len(gpus)))
    if order == "FASTEST_FIRST":
        positions.sort(key=lambda i: (-gpus[i].speed, i))
    devices: list[str] = []
    for i in positions:
        g = gpus[i]
        devices.extend(g.mig_uuids if g.mig_mode == 1 and g.mig_uuids else [g.uuid])
    if visible is None:
        return [bare_uuid(u) for u in devices]
    out: list[str] = []
    for token in (t.strip() for t in visible.split(",")):
        if token.isdigit():
            if int(token) >= len(devices):
                break
            out.append(devices[int(token)])
        elif token.startswith(("GPU-", "MIG-")):
            matches = [u for u in devices if u.startswith(token)]
            if len(matches) != 1:
                break
            out.append(matches[0])
        else:
            break
    return [bare_uuid(u) for u in out]


def uuid_lookup(uuids: Sequence[str]) -> Callable[[int], str]:
    """A ``uuid_of`` for NvmlSource over :func:`cuda_uuids`' answer, failing like CUDA does."""

    def uuid_of(index: int) -> str:
        if not 0 <= index < len(uuids):
            raise RuntimeError(f"CUDA error: invalid device ordinal {index}")
        return uuids[index]

    return uuid_of


# ---------------------------------------------------------------------------------- driver
class FakeNvml:
    """The fake driver: GPUs, a clock, failure injection and a call log; :meth:`module` is the
    ``pynvml`` stand-in to put in ``sys.modules``.

    Args:
        gpus: the machine's GPUs in NVML order.
        clock: :class:`SimClock` (default) or :class:`RealClock`.
        counter_latency_s: how long a counter read takes (real GPUs: ~2.5 ms); advances a
            SimClock, sleeps on a RealClock. The value is taken mid-call.
        init_error: raised by ``nvmlInit`` (e.g. ``pynvml.NVMLError_LibraryNotFound``).
    """

    def __init__(
        self,
        gpus: Sequence[FakeGpu],
        *,
        clock: SimClock | RealClock | None = None,
        counter_latency_s: float = 0.0,
        init_error: type[Exception] | Exception | None = None,
        driver: str = "580.159.04",
        nvml_version: str = "13.580.159.04",
    ) -> None:
        self.gpus = list(gpus)
        self.clock = clock if clock is not None else SimClock()
        self.epoch = self.clock.time()
        self.counter_latency_s = counter_latency_s
        self.init_error = init_error
        self.driver = driver
        self.nvml_version = nvml_version
        self.refcount = 0
        self.calls: collections.Counter[str] = collections.Counter()
        #: What a drain with no newer sample answers: ``NVMLError_NotFound`` as the recorded
        #: drivers do; a test may set another error class, or ``None`` for an empty list.
        self.empty_drain_error: type[Exception] | None = _real.NVMLError_NotFound

    # -- test controls
    def driver_s(self) -> float:
        """Driver seconds now (0 when the fake was built)."""
        return self.clock.time() - self.epoch

    def wall_of(self, s: float) -> float:
        return self.epoch + s

    def lose(self, gpu: int) -> None:
        """The GPU falls off the bus: every later call on it raises ``NVMLError_GpuIsLost``."""
        self.gpus[gpu].lost = True

    def unsupport(self, gpu: int, reader: str) -> None:
        """From now on ``reader`` (one of :data:`READERS`) raises ``NVMLError_NotSupported``."""
        if reader not in READERS:
            raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
        self.gpus[gpu].unsupported.add(reader)

    def fail(self, gpu: int, reader: str, error: type[Exception], times: int = 1) -> None:
        """The next ``times`` calls of ``reader`` raise ``error`` (e.g. ``NVMLError_Timeout``)."""
        if reader not in READERS:
            raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
        self.gpus[gpu].errors.setdefault(reader, []).extend([error] * times)

    def module(self) -> types.ModuleType:
        """A module object that quacks like ``pynvml``, bound to this fake driver."""
        mod = types.ModuleType("pynvml", __doc__)
        for name in dir(_real):
            if name.startswith(("NVML", "c_nvml", "nvmlExceptionClass")):
                setattr(mod, name, getattr(_real, name))
        for name in dir(self):
            if name.startswith("nvml"):
                setattr(mod, name, getattr(self, name))
        mod.__fake__ = True  # type: ignore[attr-defined]
        mod.FAKE_DRIVER = self  # type: ignore[attr-defined]
        return mod

    # -- helpers
    def _call(self, name: str) -> None:
        self.calls[name] += 1
        if self.refcount <= 0:
            raise _real.NVMLError_Uninitialized()

    def _gpu(self, handle: object, reader: str | None = None, *, whole: bool = True) -> FakeGpu:
        if not isinstance(handle, FakeHandle) or not 0 <= handle.gpu < len(self.gpus):
            raise _real.NVMLError_InvalidArgument()
        gpu = self.gpus[handle.gpu]
        if gpu.lost:
            raise _real.NVMLError_GpuIsLost()
        if reader is not None:
            queued = gpu.errors.get(reader)
            if queued:
                raise queued.pop(0)()
            # Power and energy readers answer only on the whole GPU, as on real MIG setups.
            if reader in gpu.unsupported or (whole and handle.mig is not None):
                raise _real.NVMLError_NotSupported()
        return gpu

    def _now_us(self) -> int:
        return round(self.clock.time() * 1e6)

    # -- pynvml API
    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise self.init_error() if isinstance(self.init_error, type) else self.init_error
        self.refcount += 1

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")
        self.refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._call("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._call("nvmlSystemGetNVMLVersion")
        return self.nvml_version

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._call("nvmlDeviceGetHandleByIndex")
        ctypes.c_uint(index)  # the real binding's conversion: a float is a TypeError there too
        if not 0 <= index < len(self.gpus):
            raise _real.NVMLError_InvalidArgument()
        return FakeHandle(index)

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        self._call("nvmlDeviceGetUUID")
        gpu = self._gpu(handle)
        return gpu.uuid if handle.mig is None else gpu.mig_uuids[handle.mig]

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        self._call("nvmlDeviceGetName")
        gpu = self._gpu(handle)
        return gpu.name if handle.mig is None else f"{gpu.name} MIG 1g.18gb"

    def nvmlDeviceGetMigMode(self, handle: FakeHandle) -> list[int]:
        self._call("nvmlDeviceGetMigMode")
        gpu = self._gpu(handle)
        if handle.mig is not None:
            raise _real.NVMLError_InvalidArgument()
        if gpu.mig_mode is None:
            raise _real.NVMLError_NotSupported()
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceIsMigDeviceHandle(self, handle: FakeHandle) -> ctypes.c_uint:
        self._call("nvmlDeviceIsMigDeviceHandle")
        self._gpu(handle)
        # The real binding returns the ctypes object, not an int: keep that quirk.
        return ctypes.c_uint(int(handle.mig is not None))

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeHandle) -> int:
        self._call("nvmlDeviceGetMaxMigDeviceCount")
        gpu = self._gpu(handle)
        return 7 if gpu.mig_mode == 1 else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeHandle, index: int) -> FakeHandle:
        self._call("nvmlDeviceGetMigDeviceHandleByIndex")
        ctypes.c_uint(index)
        gpu = self._gpu(handle)
        if gpu.mig_mode != 1 or not 0 <= index < len(gpu.mig_uuids):
            raise _real.NVMLError_NotFound()
        return FakeHandle(handle.gpu, index)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: FakeHandle) -> FakeHandle:
        self._call("nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
        self._gpu(handle)
        if handle.mig is None:
            raise _real.NVMLError_InvalidArgument()
        return FakeHandle(handle.gpu)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        self._call("nvmlDeviceGetTotalEnergyConsumption")
        gpu = self._gpu(handle, "counter")
        if not gpu.counter:
            raise _real.NVMLError_NotSupported()
        # The value belongs to the middle of a read that takes counter_latency_s.
        self.clock.sleep(self.counter_latency_s / 2)
        value = gpu.power.counter_mJ(self.driver_s())
        self.clock.sleep(self.counter_latency_s / 2)
        return value

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        self._call("nvmlDeviceGetPowerUsage")
        gpu = self._gpu(handle, "usage")
        if not gpu.usage:
            raise _real.NVMLError_NotSupported()
        return round(gpu.power.instant_W(self.driver_s()) * 1000.0)

    def nvmlDeviceGetSamples(
        self, handle: FakeHandle, sampling_type: int, last_seen_us: int
    ) -> tuple[int, list[Any]]:
        self._call("nvmlDeviceGetSamples")
        ctypes.c_ulonglong(last_seen_us)  # as the real binding converts it: ints only
        gpu = self._gpu(handle, "buffer")
        if not gpu.buffer or sampling_type != _real.NVML_TOTAL_POWER_SAMPLES:
            raise _real.NVMLError_NotSupported()
        out = []
        for end_s, watts in gpu.power.samples(self.driver_s()):
            stamp = round(self.wall_of(end_s) * 1e6)
            if stamp <= last_seen_us:
                continue
            sample = _real.c_nvmlSample_t()
            sample.timeStamp = stamp
            sample.sampleValue.uiVal = round(watts * 1000.0)
            out.append(sample)
        if not out and self.empty_drain_error is not None:
            raise self.empty_drain_error()
        return _real.NVML_VALUE_TYPE_UNSIGNED_INT, out

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, field_ids: Sequence[int]) -> Any:
        self._call("nvmlDeviceGetFieldValues")
        gpu = self._gpu(handle)
        values = (_real.c_nvmlFieldValue_t * len(field_ids))()
        s = self.driver_s()
        readers = {
            _real.NVML_FI_DEV_POWER_INSTANT: ("instant", gpu.power.instant_W),
            _real.NVML_FI_DEV_POWER_AVERAGE: ("average", gpu.power.average_W),
        }
        for v, wanted in zip(values, field_ids, strict=True):
            # The real binding also takes (fieldId, scopeId) pairs.
            fid, v.scopeId = wanted if isinstance(wanted, tuple) else (wanted, 0)
            v.fieldId = fid
            v.timestamp = self._now_us()
            reader = readers.get(fid)
            if reader is None or reader[0] not in gpu.fields:
                v.nvmlReturn = _real.NVML_ERROR_NOT_SUPPORTED
                continue
            try:
                self._gpu(handle, reader[0])
            except _real.NVMLError as err:
                v.nvmlReturn = err.value
                continue
            v.nvmlReturn = _real.NVML_SUCCESS
            v.valueType = _real.NVML_VALUE_TYPE_UNSIGNED_INT
            v.value.uiVal = round(reader[1](s) * 1000.0)
        return values
