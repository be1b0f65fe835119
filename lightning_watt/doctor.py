"""``lightning-watt doctor``: what this machine can measure, how well, and why not.

Before a long run, one command says which devices will be measured and how: every NVIDIA GPU
NVML sees (index, name, UUID, MIG state, driver and NVML versions) with each of its readers
(energy counter, the driver's 20 ms power buffer, the power fields, ``nvmlDeviceGetPowerUsage``),
the CPU packages and DRAM through RAPL, or the CPU estimate where RAPL cannot be read. For each
reader that does not work it gives the reason and the fix a person can apply. For each reader
that does, it measures over ``--seconds`` what a read costs (median and p99) and how often its
value changes (the counter's and fields' update period, the buffer's sample spacing), and how
steady the counter's update phase is (the jitter of its update instants around a regular grid).

``--load`` (CUDA only) runs a calibrated square wave of matmul bursts and idle, records it as a
watt-trace, and compares the fused energy, each reader alone, and the energy of each burst
against the energy counter polled every few milliseconds (its update instants then known).

Exit status: 0 when at least one device is measured (a GPU reader or RAPL), 1 when nothing at
all can be measured (an estimate is not a measurement), 2 on bad arguments.

Every hardware read happens on a worker thread joined with a timeout, so a hung driver call
cannot hang the command.

Example:
    >>> report = diagnose(devices=["cpu"], seconds=0.05, rapl_root="/nonexistent")
    >>> [d.name for d in report.devices]
    ['cpu']
    >>> report.devices[0].measured, report.exit_code
    (False, 1)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import math
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

__all__ = [
    "DOCTOR_FORMAT",
    "DeviceCheck",
    "DoctorReport",
    "ReaderCheck",
    "add_arguments",
    "analyse_load",
    "diagnose",
    "main",
    "print_report",
    "report_from_json",
    "report_to_json",
    "run",
]

DOCTOR_FORMAT = "lightning-watt doctor v1"
DEFAULT_SECONDS = 3.0
#: Sleep between two rounds of reads while measuring (reads are "every few ms").
POLL_S = 0.002
#: A measurement thread that has not finished this long after its window is given up.
HANG_MARGIN_S = 10.0
GPU_READERS = ("counter", "buffer", "fields", "usage")

_FIX_DRIVER = (
    "install the NVIDIA driver (it ships libnvidia-ml.so.1) and `pip install nvidia-ml-py`; in a "
    "container, run it with the GPU exposed (`docker run --gpus all`, or the NVIDIA container "
    "toolkit)"
)
_FIX_LOST = (
    "the GPU fell off the bus: see `nvidia-smi` and `dmesg | grep -i xid`; reset it "
    "(`sudo nvidia-smi -r -i N`) or reboot"
)
_FIX_PERMISSION = (
    "run as a user allowed to query the GPU (root, or a member of the group owning /dev/nvidia*)"
)
_FIX_NO_COUNTER = (
    "none on this GPU (pre-Volta GPUs and many vGPU profiles have no energy counter): energy is "
    "integrated from power, expect errors of a few %; a Volta or newer GPU, or a passthrough "
    "GPU instead of a vGPU, has one"
)
_FIX_MIG = (
    "NVML has no per-instance energy: the whole physical GPU is measured, other instances' work "
    "included; to measure one job alone, disable MIG (`sudo nvidia-smi -i N -mig 0`) or give it "
    "the whole GPU"
)


# ------------------------------------------------------------------------------- results
@dataclass
class ReaderCheck:
    """One reader of one device: whether it works, why not and the fix, and what it costs.

    Times are milliseconds. ``update_ms`` is how often the value changed (for the buffer: the
    spacing of its samples); ``phase_jitter_ms`` the spread of the counter's update instants
    around a regular grid (p95 of the absolute residuals).
    """

    name: str
    works: bool
    why: str = ""
    fix: str = ""
    reads: int = 0
    cost_ms_p50: float | None = None
    cost_ms_p99: float | None = None
    update_ms: float | None = None
    phase_jitter_ms: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class DeviceCheck:
    """One device (``gpu0``, ``cpu0``, ``dram0``, or ``cpu`` for the estimate)."""

    name: str
    kind: str
    label: str = ""
    uuid: str = ""
    measured: bool = False
    verdict: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    readers: list[ReaderCheck] = field(default_factory=list)

    def reader(self, name: str) -> ReaderCheck | None:
        return next((r for r in self.readers if r.name == name), None)


@dataclass
class DoctorReport:
    """Everything ``lightning-watt doctor`` found; :func:`report_to_json` is its JSON form."""

    devices: list[DeviceCheck]
    nvml: dict[str, Any] = field(default_factory=dict)
    rapl: dict[str, Any] = field(default_factory=dict)
    seconds: float = DEFAULT_SECONDS
    load: dict[str, Any] | None = None
    host: dict[str, Any] = field(default_factory=dict)
    generated: str = ""
    format: str = DOCTOR_FORMAT

    @property
    def exit_code(self) -> int:
        """0 when any device is measured, 1 when nothing is (an estimate does not count)."""
        return 0 if any(d.measured for d in self.devices) else 1


def report_to_json(report: DoctorReport) -> dict[str, Any]:
    """The report as a JSON-ready dict (NaN and infinities as ``null``)."""
    data = asdict(report)
    data["exit_code"] = report.exit_code
    return _json_safe(data)


def report_from_json(data: dict[str, Any]) -> DoctorReport:
    """The inverse of :func:`report_to_json`.

    Raises:
        ValueError: not a doctor report of this format.
    """
    if not isinstance(data, dict) or data.get("format") != DOCTOR_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"not a {DOCTOR_FORMAT!r} report (format {got!r})")
    devices = []
    for d in data.get("devices", []):
        d = dict(d)
        readers = [ReaderCheck(**r) for r in d.pop("readers", [])]
        devices.append(DeviceCheck(**d, readers=readers))
    return DoctorReport(
        devices=devices,
        nvml=dict(data.get("nvml", {})),
        rapl=dict(data.get("rapl", {})),
        seconds=float(data.get("seconds", DEFAULT_SECONDS)),
        load=data.get("load"),
        host=dict(data.get("host", {})),
        generated=str(data.get("generated", "")),
        format=DOCTOR_FORMAT,
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ------------------------------------------------------------------------------- statistics
def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _costs(check: ReaderCheck, costs_s: Sequence[float]) -> None:
    check.reads = len(costs_s)
    p50, p99 = _pct(costs_s, 50), _pct(costs_s, 99)
    check.cost_ms_p50 = None if p50 is None else p50 * 1e3
    check.cost_ms_p99 = None if p99 is None else p99 * 1e3


def change_instants(series: Sequence[tuple[float, float]]) -> list[float]:
    """Times at which the value first differed from the previous read.

    Example:
        >>> change_instants([(0.0, 1), (0.1, 1), (0.2, 2), (0.3, 2), (0.4, 3)])
        [0.2, 0.4]
    """
    return [t for (_, a), (t, b) in itertools.pairwise(series) if b != a]


def update_period(instants: Sequence[float]) -> tuple[float | None, float | None]:
    """``(period, jitter)`` in seconds of a value that changes on a regular clock.

    The period is the slope of the least-squares regular grid through the change instants, each
    numbered from its gap to the previous one in median spacings (so a missed update counts as
    two periods); the jitter the p95 absolute residual of the instants around the least-squares
    regular grid, which says how precisely the update instants (the phase) are known.

    Example:
        >>> p, j = update_period([0.1 * k + 0.003 * (k % 2) for k in range(20)])
        >>> round(p, 3), round(j, 4)
        (0.1, 0.0017)
    """
    gaps = [b - a for a, b in itertools.pairwise(instants) if b > a]
    if not gaps:
        return None, None
    period = statistics.median(gaps)
    if period <= 0 or len(instants) < 3:
        return period, None
    # Each instant's update number, from its gap to the previous one (a gap of about two
    # periods is a missed update): local, so a period estimate a little off does not drift.
    ks = [0]
    for a, b in itertools.pairwise(instants):
        ks.append(ks[-1] + max(1, round((b - a) / period)))
    n = len(ks)
    mk, mt = sum(ks) / n, sum(instants) / n
    var = sum((k - mk) ** 2 for k in ks)
    slope = sum((k - mk) * (t - mt) for k, t in zip(ks, instants, strict=True)) / var
    residuals = [abs(t - (mt + slope * (k - mk))) for k, t in zip(ks, instants, strict=True)]
    return slope, _pct(residuals, 95)


def _bounded(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run ``fn`` on a daemon thread; give up after ``timeout`` seconds (a hung driver call)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=target, name=f"lightning-watt-doctor {what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{what}: a read did not return within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ------------------------------------------------------------------------------- NVML
def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_fix(nvml: ModuleType, err: BaseException) -> str:
    if isinstance(err, getattr(nvml, "NVMLError_GpuIsLost", ())):
        return _FIX_LOST
    if isinstance(err, getattr(nvml, "NVMLError_NoPermission", ())):
        return _FIX_PERMISSION
    if isinstance(err, getattr(nvml, "NVMLError_NotSupported", ())):
        return "none: this GPU or driver does not offer it; a newer driver may"
    return "retry; if it persists, update the NVIDIA driver"


class _GpuProbe:
    """Probes and measures one physical GPU through ``nvml`` (a ``pynvml`` module)."""

    def __init__(
        self,
        nvml: ModuleType,
        index: int,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        wall: Callable[[], float],
    ) -> None:
        self.nvml, self.index = nvml, index
        self.clock, self.sleep, self.wall = clock, sleep, wall
        self.handle: Any = None
        self.device = DeviceCheck(f"gpu{index}", "gpu")
        self.fields: list[int] = []

    def _fail(self, reader: str, err: BaseException) -> ReaderCheck:
        return ReaderCheck(
            reader, False, why=str(err) or type(err).__name__, fix=_nvml_fix(self.nvml, err)
        )

    def identify(self) -> None:
        nvml, dev = self.nvml, self.device
        self.handle = nvml.nvmlDeviceGetHandleByIndex(self.index)
        dev.label = _text(nvml.nvmlDeviceGetName(self.handle))
        dev.uuid = _text(nvml.nvmlDeviceGetUUID(self.handle))
        dev.info["nvml_index"] = self.index
        try:
            mode = nvml.nvmlDeviceGetMigMode(self.handle)
            current = int(getattr(mode[0], "value", mode[0]))
            dev.info["mig"] = "enabled" if current == nvml.NVML_DEVICE_MIG_ENABLE else "disabled"
        except nvml.NVMLError_GpuIsLost:
            raise
        except nvml.NVMLError:
            dev.info["mig"] = "not supported"
        if dev.info["mig"] == "enabled":
            instances: list[str] = []
            with contextlib.suppress(nvml.NVMLError):
                for j in range(int(nvml.nvmlDeviceGetMaxMigDeviceCount(self.handle))):
                    with contextlib.suppress(nvml.NVMLError):
                        mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(self.handle, j)
                        instances.append(_text(nvml.nvmlDeviceGetUUID(mig)))
            dev.info["mig_instances"] = instances

    def identify_and_probe(self) -> None:
        self.identify()
        self.probe()

    def probe(self) -> None:
        """Try each reader once (a lost GPU raises ``NVMLError_GpuIsLost``)."""
        from lightning_watt.sources.nvml import POWER_FIELDS

        nvml, h = self.nvml, self.handle
        readers: list[ReaderCheck] = []
        lost = nvml.NVMLError_GpuIsLost
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(h)
            readers.append(ReaderCheck("counter", True))
        except lost:
            raise
        except nvml.NVMLError as err:
            check = self._fail("counter", err)
            if isinstance(err, nvml.NVMLError_NotSupported):
                check.fix = _FIX_NO_COUNTER
            readers.append(check)
        try:
            with contextlib.suppress(nvml.NVMLError_NotFound):
                nvml.nvmlDeviceGetSamples(h, nvml.NVML_TOTAL_POWER_SAMPLES, 0)
            readers.append(ReaderCheck("buffer", True))
        except lost:
            raise
        except nvml.NVMLError as err:
            readers.append(self._fail("buffer", err))
        wanted = list(POWER_FIELDS)
        try:
            values = nvml.nvmlDeviceGetFieldValues(h, wanted)
            rets = [int(v.nvmlReturn) for v in values]
            if nvml.NVML_ERROR_GPU_IS_LOST in rets:
                raise lost()
            self.fields = [f for f, r in zip(wanted, rets, strict=True) if r == nvml.NVML_SUCCESS]
            if self.fields:
                check = ReaderCheck("fields", True)
                if len(self.fields) < len(wanted):
                    check.notes.append(f"only {'/'.join(self._field_names())} supported")
                readers.append(check)
            else:
                readers.append(self._fail("fields", nvml.NVMLError(rets[0])))
        except lost:
            raise
        except nvml.NVMLError as err:
            readers.append(self._fail("fields", err))
        try:
            nvml.nvmlDeviceGetPowerUsage(h)
            readers.append(ReaderCheck("usage", True))
        except lost:
            raise
        except nvml.NVMLError as err:
            readers.append(self._fail("usage", err))
        self.device.readers = readers

    def _field_names(self) -> list[str]:
        from lightning_watt.sources.nvml import POWER_FIELDS

        names = dict(zip(POWER_FIELDS, ("instant", "average"), strict=True))
        return [names[f] for f in self.fields]

    def measure(self, seconds: float) -> None:
        """Read every working reader in a loop for ``seconds``; fill costs and update periods."""
        from lightning_watt.sources.nvml import _sample_value

        nvml, h, dev = self.nvml, self.handle, self.device
        works = {r.name for r in dev.readers if r.works}
        calls: dict[str, Callable[[], Any]] = {}
        if "counter" in works:
            calls["counter"] = lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(h)
        if "fields" in works:
            fields = list(self.fields)

            def read_fields() -> tuple[float, ...]:
                values = nvml.nvmlDeviceGetFieldValues(h, fields)
                return tuple(_sample_value(int(v.valueType), v.value) for v in values)

            calls["fields"] = read_fields
        if "usage" in works:
            calls["usage"] = lambda: nvml.nvmlDeviceGetPowerUsage(h)
        series: dict[str, list[tuple[float, Any]]] = {k: [] for k in calls}
        costs: dict[str, list[float]] = {k: [] for k in [*calls, "buffer"]}
        stamps: list[int] = []
        last_seen = int(self.wall() * 1e6) - 3_000_000  # the buffer's newest 3 s: spacing only
        next_drain = self.clock()

        def drain() -> None:
            nonlocal last_seen
            c0 = self.clock()
            try:
                _, samples = nvml.nvmlDeviceGetSamples(h, nvml.NVML_TOTAL_POWER_SAMPLES, last_seen)
            except nvml.NVMLError_NotFound:
                samples = []
            except nvml.NVMLError_GpuIsLost:
                raise
            except nvml.NVMLError as err:
                failures.setdefault("buffer", []).append(str(err))
                return
            costs["buffer"].append(self.clock() - c0)
            new = sorted(int(s.timeStamp) for s in samples if int(s.timeStamp) > last_seen)
            if new:
                stamps.extend(new)
                last_seen = new[-1]

        start = self.clock()
        deadline = start + seconds
        failures: dict[str, list[str]] = {}
        while self.clock() < deadline:
            for name, call in calls.items():
                c0 = self.clock()
                try:
                    value = call()
                except nvml.NVMLError_GpuIsLost:
                    raise
                except nvml.NVMLError as err:  # transient (timeout, ...): counted, not fatal
                    failures.setdefault(name, []).append(str(err))
                    continue
                c1 = self.clock()
                costs[name].append(c1 - c0)
                series[name].append((0.5 * (c0 + c1), value))
            if "buffer" in works and self.clock() >= next_drain:
                drain()
                next_drain = self.clock() + 0.5
            self.sleep(POLL_S)
        if "buffer" in works:
            drain()
        for check in dev.readers:
            if not check.works:
                continue
            _costs(check, costs[check.name])
            failed = failures.get(check.name, [])
            if failed:
                check.notes.append(f"{len(failed)} reads failed (first: {failed[0]})")
            if check.name == "buffer":
                gaps = [b - a for a, b in itertools.pairwise(stamps) if b > a]
                if gaps:
                    check.update_ms = statistics.median(gaps) / 1e3
                    p99 = _pct(gaps, 99)
                    check.notes.append(
                        f"{len(stamps)} samples; spacing p99 {(p99 or 0) / 1e3:.1f} ms"
                    )
                    if stamps:
                        age = self.wall() - stamps[-1] * 1e-6
                        check.notes.append(f"newest sample {age * 1e3:.0f} ms old at the end")
                else:
                    # NvmlSource gives such a buffer up too (stale): its fallback is used.
                    check.works = False
                    check.why = (
                        f"the driver power buffer delivered {len(stamps)} sample(s) over the "
                        f"last {seconds + 3:g} s (stale)"
                    )
                    check.fix = "update the NVIDIA driver; the power fields are used meanwhile"
                continue
            instants = change_instants(series[check.name])
            period, jitter = update_period(instants)
            if period is None:
                check.notes.append(f"value did not change in {seconds:g} s (constant power?)")
                continue
            check.update_ms = period * 1e3
            if check.name == "counter":
                check.phase_jitter_ms = None if jitter is None else jitter * 1e3
            # A change is seen one read (plus the poll sleep) after it happened at worst.
            step = statistics.median(c for c in costs[check.name]) + POLL_S
            check.notes.append(f"update instants known to within ~{step * 1e3:.1f} ms")
        if "fields" in works:
            dev.reader("fields").notes.insert(0, "/".join(self._field_names()))  # type: ignore[union-attr]


def _verdict_gpu(dev: DeviceCheck) -> str:
    ok = {r.name: r for r in dev.readers if r.works}
    if not ok:
        why = "; ".join(f"{r.name}: {r.why}" for r in dev.readers) or dev.info.get("error", "")
        return f"{dev.name}: not measured ({why})"
    shape = next((ok[r] for r in ("buffer", "fields", "usage") if r in ok), None)

    def ms(check: ReaderCheck | None, default: float) -> float:
        return check.update_ms if check is not None and check.update_ms else default

    if "counter" in ok and shape is not None and shape.name == "buffer":
        text = f"counter + buffer: per-step energy resolved to ~{ms(shape, 20):.0f} ms"
    elif "counter" in ok and shape is not None:
        what = "power fields" if shape.name == "fields" else "power usage"
        text = f"counter + {what}: per-step energy resolved to ~{ms(shape, 100):.0f} ms"
    elif "counter" in ok:
        text = (
            f"counter only: per-step energy resolved to ~{ms(ok['counter'], 100):.0f} ms "
            "(linear between updates)"
        )
    else:
        assert shape is not None
        what = {"buffer": "buffer", "fields": "power fields", "usage": "power usage"}[shape.name]
        every = ms(shape, 20 if shape.name == "buffer" else 100)
        text = (
            f"{what} only, no energy counter: ~{every:.0f} ms resolution"
            ", totals integrated from power (expect errors of a few %)"
        )
    if dev.info.get("mig") == "enabled":
        text += "; MIG enabled: the whole physical GPU is measured, not one instance"
    return f"{dev.name}: {text}"


def check_gpus(
    indices: Sequence[int] | None,
    seconds: float,
    *,
    nvml: ModuleType | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    wall: Callable[[], float] = time.time,
) -> tuple[dict[str, Any], list[DeviceCheck]]:
    """NVML's status and one :class:`DeviceCheck` per GPU (``indices``: NVML indices, all when
    ``None``)."""
    from lightning_watt.sources.nvml import _init_failure

    status: dict[str, Any] = {"ok": False}
    if nvml is None:
        try:
            import pynvml as nvml_module

            nvml = nvml_module
        except ImportError as err:
            status.update(why=f"pynvml (nvidia-ml-py) is not importable: {err}", fix=_FIX_DRIVER)
            return status, []
    try:
        nvml.nvmlInit()
    except Exception as err:
        why = _init_failure(nvml, err)
        fix = _FIX_PERMISSION if "permission" in why else _FIX_DRIVER
        status.update(why=why, fix=fix)
        return status, []
    try:
        with contextlib.suppress(Exception):
            status["driver"] = _text(nvml.nvmlSystemGetDriverVersion())
        with contextlib.suppress(Exception):
            status["nvml_version"] = _text(nvml.nvmlSystemGetNVMLVersion())
        count = int(nvml.nvmlDeviceGetCount())
        status.update(ok=count > 0, gpus=count)
        if count == 0:
            status.update(why="NVML works but sees no GPU", fix=_FIX_DRIVER)
        wanted = list(range(count)) if indices is None else list(indices)
        devices: list[DeviceCheck] = []
        probes: list[_GpuProbe] = []
        for i in wanted:
            probe = _GpuProbe(nvml, i, clock, sleep, wall)
            dev = probe.device
            devices.append(dev)
            dev.info.update(driver=status.get("driver", ""), nvml=status.get("nvml_version", ""))
            if not 0 <= i < count:
                dev.info["error"] = f"no such GPU: NVML sees {count} (indices 0..{count - 1})"
                dev.verdict = f"{dev.name}: not measured ({dev.info['error']})"
                continue
            try:
                _bounded(probe.identify_and_probe, HANG_MARGIN_S, dev.name)
            except nvml.NVMLError_GpuIsLost:
                dev.info["error"] = "GPU is lost"
                dev.readers = [ReaderCheck(r, False, "GPU is lost", _FIX_LOST) for r in GPU_READERS]
                dev.verdict = f"{dev.name}: GPU is lost, not measured ({_FIX_LOST})"
                continue
            except Exception as err:
                dev.info["error"] = f"{type(err).__name__}: {err}"
                dev.verdict = f"{dev.name}: not measured ({dev.info['error']})"
                continue
            probes.append(probe)
        jobs: dict[str, Callable[[], None]] = {
            p.device.name: functools.partial(p.measure, seconds) for p in probes
        }
        errors = _measure_all(jobs, seconds)
        for probe in probes:
            dev = probe.device
            failure = errors.get(dev.name)
            if failure is not None:
                lost = isinstance(failure, nvml.NVMLError_GpuIsLost)
                dev.info["error"] = (
                    "GPU is lost" if lost else f"{type(failure).__name__}: {failure}"
                )
                for r in dev.readers:
                    if r.works and lost:
                        r.works, r.why, r.fix = False, "GPU is lost", _FIX_LOST
                    elif r.works:
                        r.notes.append(f"measurement failed: {dev.info['error']}")
            if dev.info.get("mig") == "enabled":
                dev.info["mig_note"] = _FIX_MIG
            dev.measured = any(r.works for r in dev.readers)
            dev.verdict = _verdict_gpu(dev)
            if dev.info.get("error") == "GPU is lost":
                dev.verdict = f"{dev.name}: GPU is lost, not measured ({_FIX_LOST})"
        return status, devices
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _measure_all(jobs: dict[str, Callable[[], None]], seconds: float) -> dict[str, BaseException]:
    """Run the measurements side by side, each bounded; the errors by job name."""
    errors: dict[str, BaseException] = {}
    results: dict[str, threading.Thread] = {}
    boxes: dict[str, dict[str, BaseException]] = {}
    for name, job in jobs.items():
        box: dict[str, BaseException] = {}

        def target(job: Callable[[], None] = job, box: dict[str, BaseException] = box) -> None:
            try:
                job()
            except BaseException as err:
                box["error"] = err

        thread = threading.Thread(target=target, name=f"lightning-watt-doctor {name}", daemon=True)
        thread.start()
        results[name], boxes[name] = thread, box
    deadline = time.monotonic() + seconds + HANG_MARGIN_S
    for name, thread in results.items():
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            errors[name] = TimeoutError(f"a read did not return within {HANG_MARGIN_S:.0f} s")
        elif "error" in boxes[name]:
            errors[name] = boxes[name]["error"]
    return errors


# ------------------------------------------------------------------------------- CPU
def check_cpu(
    seconds: float,
    *,
    rapl_root: str | None = None,
    read_file: Callable[[str], str] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[dict[str, Any], list[DeviceCheck]]:
    """RAPL's status and its devices (packages, DRAM), else the estimate's device."""
    from lightning_watt.sources.base import SourceUnavailable
    from lightning_watt.sources.rapl import DEFAULT_ROOT, RaplSource, _grant_hint

    root = rapl_root or DEFAULT_ROOT
    source = RaplSource(root, read_file=read_file)
    try:
        source.open(time.monotonic)
    except SourceUnavailable as err:
        why = str(err)
        if "readable by root" in why:
            fix = _grant_hint(root)
        elif "modprobe" in why:
            fix = (
                "on bare metal: `sudo modprobe intel_rapl_msr` (Intel, AMD Zen on Linux >= 5.11); "
                "virtual machines and most containers expose no RAPL"
            )
        else:
            fix = "RAPL needs Linux with powercap (/sys/class/powercap) on bare metal"
        return {"ok": False, "why": why, "fix": fix}, [_estimate_device(why)]
    status = {"ok": True, "root": root, "skipped": source.skipped}
    reads = {c.name.split("/")[0]: c.read for c in source.channels()}
    devices: dict[str, DeviceCheck] = {}
    for info in source.devices():
        dev = DeviceCheck(info.name, info.kind, label=info.label, uuid=info.uuid, measured=True)
        dev.readers = [ReaderCheck("counter", True)]
        devices[info.name] = dev

    def measure(name: str) -> None:
        read, check = reads[name], devices[name].readers[0]
        costs: list[float] = []
        series: list[tuple[float, float]] = []
        deadline = clock() + seconds
        while clock() < deadline:
            c0 = clock()
            (reading,) = read()
            c1 = clock()
            costs.append(c1 - c0)
            series.append((0.5 * (c0 + c1), reading.value))
            sleep(POLL_S / 4)
        _costs(check, costs)
        period, _ = update_period(change_instants(series))
        if period is None:
            check.notes.append(f"value did not change in {seconds:g} s")
        else:
            check.update_ms = period * 1e3

    jobs: dict[str, Callable[[], None]] = {n: functools.partial(measure, n) for n in devices}
    errors = _measure_all(jobs, seconds)
    for name, dev in devices.items():
        check = dev.readers[0]
        if name in errors:
            check.works, check.why = False, f"{type(errors[name]).__name__}: {errors[name]}"
            dev.measured = False
            dev.verdict = f"{name}: RAPL read failed ({check.why})"
            continue
        every = f"~{check.update_ms:.0f} ms" if check.update_ms else "the read interval"
        dev.verdict = (
            f"{name}: RAPL energy counter, per-step energy resolved to the 100 ms read interval "
            f"(counter updates every {every})"
        )
    return status, list(devices.values())


def _estimate_device(rapl_why: str) -> DeviceCheck:
    from lightning_watt.sources.estimate import EstimateSource

    source = EstimateSource()
    source.open(time.monotonic)
    (info,) = source.devices()
    how = source.describe()[info.name]
    check = ReaderCheck(
        "utilisation", True, notes=[how], fix="make RAPL readable to measure instead"
    )
    return DeviceCheck(
        info.name,
        "estimate",
        label=info.label,
        uuid=info.uuid,
        measured=False,
        verdict=f"{info.name}: estimated from utilisation, not measured (RAPL: {rapl_why})",
        info={"tdp_w": source.tdp_w, "tdp_source": source.tdp_source},
        readers=[check],
    )


# ------------------------------------------------------------------------------- load
def _truth(counter: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The counter's update instants and values from reads every few ms: a change is placed
    at the first read that saw it (known to within one read)."""
    ts, vs = [], []
    prev = None
    for t, v in counter:
        if prev is None or v != prev:
            ts.append(t)
            vs.append(v)
        prev = v
    return ts, vs


def analyse_load(
    trace: Any,
    device: str,
    counter: Sequence[tuple[float, float]],
    bursts: Sequence[tuple[float, float]],
    extra: Sequence[Any] = (),
) -> dict[str, Any]:
    """Compare a recorded load against its energy counter read every few ms.

    ``trace`` is the meter's watt-trace of the load; ``counter`` the ``(t, joules)`` of the
    tight counter poll and ``bursts`` the ``(start, end)`` of each burst, both on the trace's
    clock. Windows are snapped outwards to the counter's update instants, where the counter is
    exact: the whole load (first to last update), and each burst. Returns the fused energy, each
    reader alone (the trace's kinds one at a time, plus the kinds of ``extra``: readings polled
    beside the meter, e.g. the power fields every few ms) and the fused energy per burst, each
    with its error against the counter in %.
    """
    from lightning_watt.energy.readings import COUNTER_J, POWER_KINDS

    ts, vs = _truth(counter)
    if len(ts) < 3:
        raise ValueError("analyse_load: the counter poll saw fewer than 3 updates")
    begin, end = ts[1], ts[-1]  # ts[0] is the first read, not an update

    def snap(a: float, b: float) -> tuple[int, int] | None:
        i = max((k for k in range(1, len(ts)) if ts[k] <= a), default=None)
        j = min((k for k in range(1, len(ts)) if ts[k] >= b), default=None)
        return None if i is None or j is None or j <= i else (i, j)

    def err(x: float, ref: float) -> float:
        return (x / ref - 1.0) * 100.0 if ref > 0 else math.nan

    counter_j = vs[-1] - vs[1]
    fused = trace.timeline().energy_between(begin, end).get(device, math.nan)
    out: dict[str, Any] = {
        "device": device,
        "window_s": end - begin,
        "counter_J": counter_j,
        "counter_updates": len(ts) - 1,
        "fused_J": fused,
        "fused_error_pct": err(fused, counter_j),
        "readers": {},
        "bursts": [],
    }
    kinds = [k for k in (COUNTER_J, *POWER_KINDS) if k in trace.kinds]
    alone = {k: trace.timeline(kinds=[k]) for k in kinds}
    if extra:
        from lightning_watt.energy.trace import Trace

        polled = Trace(sorted(extra, key=lambda r: r.t))
        for kind in polled.kinds:
            if kind not in alone:
                alone[f"{kind} (polled)"] = polled.timeline(kinds=[kind])
    for kind, tl in alone.items():
        joules = tl.energy_between(begin, end).get(device, math.nan)
        out["readers"][kind] = {"J": joules, "error_pct": err(joules, counter_j)}
    fused_tl = trace.timeline()
    burst_errors: list[float] = []
    per_kind: dict[str, list[float]] = {k: [] for k in alone}
    for a, b in bursts:
        snapped = snap(a, b)
        if snapped is None:
            continue
        i, j = snapped
        truth = vs[j] - vs[i]
        got = fused_tl.energy_between(ts[i], ts[j]).get(device, math.nan)
        e = err(got, truth)
        burst_errors.append(abs(e))
        for kind, tl in alone.items():
            per_kind[kind].append(abs(err(tl.energy_between(ts[i], ts[j]).get(device, 0.0), truth)))
        out["bursts"].append(
            {
                "t0": a,
                "t1": b,
                "window": [ts[i], ts[j]],
                "counter_J": truth,
                "fused_J": got,
                "error_pct": e,
            }
        )
    out["burst_median_abs_error_pct"] = statistics.median(burst_errors) if burst_errors else None
    for kind, errs in per_kind.items():
        out["readers"][kind]["burst_median_abs_error_pct"] = (
            statistics.median(errs) if errs else None
        )
    return out


def run_load(
    prefix: str,
    *,
    cuda_index: int = 0,
    burst_s: float = 2.0,
    idle_s: float = 2.0,
    cycles: int = 3,
    size: int = 8192,
    work: Callable[[float], None] | None = None,
    uuid_of: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """On a CUDA GPU: a square wave of matmul bursts and idle, recorded as ``prefix`` (a
    watt-trace) while the counter is read every few ms; returns :func:`analyse_load`'s dict
    (plus the trace prefix). Synchronises at burst edges: this is a calibration, not training.

    ``work(seconds)`` runs one burst (default: ``size`` x ``size`` fp32 matmuls on CUDA device
    ``cuda_index``, synchronised); ``uuid_of`` maps the CUDA index to its UUID (default: torch's).
    Both are there so the plumbing can be tested without a GPU.
    """
    import pynvml

    from lightning_watt.energy.meter import EnergyMeter
    from lightning_watt.energy.readings import AVERAGE_W, COUNTER_J, INSTANT_W, USAGE_W, Reading
    from lightning_watt.energy.trace import FORMAT, StepEdge, Trace, load_trace
    from lightning_watt.sources.nvml import POWER_FIELDS, NvmlSource, _sample_value

    if work is None:
        work = _matmul_bursts(cuda_index, size)
    source = NvmlSource(devices=[cuda_index], uuid_of=uuid_of)
    meter = EnergyMeter([source], record=prefix)
    meter.start()
    device = f"gpu{cuda_index}"
    polled: list[tuple[float, float]] = []
    power: list[Reading] = []
    bursts: list[tuple[float, float]] = []
    stop = threading.Event()
    poller: threading.Thread | None = None
    nvml_up = False
    try:
        uuid = next((d.uuid for d in meter.devices if d.name == device), None)
        if uuid is None:
            raise RuntimeError(f"NVML cannot measure {device}: {meter.unavailable}")
        pynvml.nvmlInit()
        nvml_up = True
        handle = next(
            h
            for h in map(pynvml.nvmlDeviceGetHandleByIndex, range(pynvml.nvmlDeviceGetCount()))
            if _text(pynvml.nvmlDeviceGetUUID(h)) == uuid
        )
        fields = list(POWER_FIELDS)
        kinds = {fields[0]: INSTANT_W, fields[1]: AVERAGE_W}

        def poll() -> None:
            while not stop.is_set():
                with contextlib.suppress(pynvml.NVMLError):
                    c0 = meter.now()
                    mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                    t = 0.5 * (c0 + meter.now())
                    polled.append((t, int(mj) / 1000.0))
                    for v in pynvml.nvmlDeviceGetFieldValues(handle, fields):
                        if int(v.nvmlReturn) == pynvml.NVML_SUCCESS:
                            watts = _sample_value(int(v.valueType), v.value) / 1000.0
                            power.append(Reading(t, device, kinds[int(v.fieldId)], watts))
                    mw = pynvml.nvmlDeviceGetPowerUsage(handle)
                    power.append(Reading(t, device, USAGE_W, int(mw) / 1000.0))
                time.sleep(POLL_S)

        poller = threading.Thread(target=poll, name="lightning-watt-doctor counter", daemon=True)
        poller.start()
        time.sleep(idle_s)
        for c in range(cycles):
            t0 = meter.now()
            work(burst_s)
            t1 = meter.now()
            bursts.append((t0, t1))
            meter.record_steps(
                [StepEdge("load", "start", c, t0, t0), StepEdge("load", "end", c, t1, t1)]
            )
            time.sleep(idle_s)
        meter.sync()
    finally:
        stop.set()
        if poller is not None:
            poller.join(5.0)
        origin = meter.started_at or 0.0
        meter.stop()
        if nvml_up:
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()
    trace = load_trace(prefix)
    counter = [(t - origin, j) for t, j in polled]
    extra = [r._replace(t=r.t - origin) for r in power]
    result = analyse_load(
        trace, device, counter, [(a0 - origin, a1 - origin) for a0, a1 in bursts], extra
    )
    # The tight poll as a watt-trace too: replayable, and the truth the analysis used.
    poll_trace = Trace(
        sorted([Reading(t, device, COUNTER_J, j) for t, j in counter] + extra, key=lambda r: r.t),
        trace.steps,
        {
            "format": FORMAT,
            "description": "lightning-watt doctor --load: counter, fields and usage read in a "
            f"loop every ~{POLL_S * 1e3:.0f} ms beside the meter ({prefix})",
            "sources": {"counter_J": "tight loop", "instant_W": "tight loop"},
        },
    )
    result["poll_trace"] = poll_trace.save(prefix + ".poll")
    result["trace"] = prefix
    result["describe"] = meter.describe().get(device, "")
    return result


def _matmul_bursts(cuda_index: int, size: int) -> Callable[[float], None]:
    """A burst of back-to-back matmuls for ``seconds``, synchronised at both ends."""
    import torch

    cuda = torch.device("cuda", cuda_index)
    state = {"a": torch.randn(size, size, device=cuda)}
    torch.cuda.synchronize(cuda)

    def burst(seconds: float) -> None:
        torch.cuda.synchronize(cuda)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            state["a"] = (state["a"] @ state["a"]).tanh_()  # tanh keeps values finite
            torch.cuda.synchronize(cuda)

    return burst


def _load_section(prefix: str, devices: list[DeviceCheck]) -> dict[str, Any]:
    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:
        cuda = False
    if not cuda:
        return {"ran": False, "why": "--load needs CUDA: torch sees no CUDA device here"}
    try:
        result = run_load(prefix)
    except Exception as err:
        return {"ran": False, "why": f"load failed: {type(err).__name__}: {err}"}
    result["ran"] = True
    return result


# ------------------------------------------------------------------------------- diagnose
def parse_devices(tokens: Sequence[str] | None) -> tuple[list[int] | None, bool]:
    """``--devices`` values -> (NVML indices or ``None`` for all, whether to check the CPU).

    Example:
        >>> parse_devices(["0,gpu2", "cpu"]), parse_devices(None), parse_devices(["1"])
        (([0, 2], True), (None, True), ([1], False))
    """
    if not tokens:
        return None, True
    gpus: list[int] = []
    cpu = False
    for token in (t.strip().lower() for item in tokens for t in item.split(",")):
        if not token:
            continue
        if token == "cpu":
            cpu = True
            continue
        digits = token[3:] if token.startswith("gpu") else token
        if not digits.isdigit():
            raise ValueError(f"--devices: {token!r} is not a GPU index (0, gpu1) or 'cpu'")
        if int(digits) not in gpus:
            gpus.append(int(digits))
    return (gpus or ([] if cpu else None)), cpu or not gpus


def diagnose(
    devices: Sequence[str] | None = None,
    seconds: float = DEFAULT_SECONDS,
    *,
    load: bool = False,
    load_prefix: str = "watt_doctor_load",
    nvml: ModuleType | None = None,
    rapl_root: str | None = None,
    read_file: Callable[[str], str] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    wall: Callable[[], float] = time.time,
) -> DoctorReport:
    """Check every device (or ``devices``) for ``seconds`` and return the report.

    ``nvml``, ``rapl_root``, ``read_file``, ``clock``, ``sleep`` and ``wall`` are injectable
    so tests can run it against a fake driver and a fake powercap tree.
    """
    if not (isinstance(seconds, (int, float)) and 0 < seconds <= 600):
        raise ValueError(f"seconds must be in (0, 600], got {seconds!r}")
    gpu_indices, want_cpu = parse_devices(devices)
    found: list[DeviceCheck] = []
    nvml_status: dict[str, Any] = {"ok": False, "why": "not checked (--devices)"}
    if gpu_indices is None or gpu_indices:
        nvml_status, gpus = check_gpus(
            gpu_indices, seconds, nvml=nvml, clock=clock, sleep=sleep, wall=wall
        )
        found.extend(gpus)
        if not nvml_status.get("ok") and not gpus and gpu_indices:
            why = nvml_status.get("why", "NVML unavailable")
            for i in gpu_indices:  # asked for by name: say why each is not measured
                found.append(
                    DeviceCheck(
                        f"gpu{i}",
                        "gpu",
                        info={"error": why},
                        verdict=f"gpu{i}: not measured ({why})",
                    )
                )
    rapl_status: dict[str, Any] = {"ok": False, "why": "not checked (--devices)"}
    if want_cpu:
        rapl_status, cpus = check_cpu(
            seconds, rapl_root=rapl_root, read_file=read_file, clock=clock, sleep=sleep
        )
        found.extend(cpus)
    report = DoctorReport(
        devices=found,
        nvml=nvml_status,
        rapl=rapl_status,
        seconds=float(seconds),
        host={
            "hostname": platform.node(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "lightning_watt": _version(),
        },
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if load:
        report.load = _load_section(load_prefix, found)
    return report


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lightning-watt")
    except Exception:
        return "unknown"


# ------------------------------------------------------------------------------- output
def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.0f} us" if value < 1 else f"{value:.1f} ms"


def print_report(report: DoctorReport, file: TextIO | None = None) -> str:
    """The readable form: NVML and RAPL status, a table of readers per device, verdicts."""
    out = sys.stdout if file is None else file
    lines = [f"lightning-watt doctor ({report.seconds:g} s per device)"]
    nv = report.nvml
    if nv.get("ok"):
        lines.append(
            f"NVML: driver {nv.get('driver', '?')}, NVML {nv.get('nvml_version', '?')}, "
            f"{nv.get('gpus', 0)} GPU(s)"
        )
    else:
        lines.append(f"NVML: unavailable: {nv.get('why', '')}")
        if nv.get("fix"):
            lines.append(f"  fix: {nv['fix']}")
    rp = report.rapl
    if rp.get("ok"):
        lines.append(f"RAPL: readable under {rp.get('root')}")
    else:
        lines.append(f"RAPL: unavailable: {rp.get('why', '')}")
        if rp.get("fix"):
            lines.append(f"  fix: {rp['fix']}")
    header = ("device", "reader", "works", "read p50", "read p99", "updates", "phase jitter")
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for dev in report.devices:
        title = dev.name
        if dev.label:
            extra = f"; MIG {dev.info['mig']}" if dev.kind == "gpu" and "mig" in dev.info else ""
            notes.append(f"{dev.name}: {dev.label}{', ' + dev.uuid if dev.uuid else ''}{extra}")
        for r in dev.readers or [ReaderCheck("-", False, dev.info.get("error", ""))]:
            rows.append(
                (
                    title,
                    r.name,
                    "yes" if r.works else "no",
                    _ms(r.cost_ms_p50),
                    _ms(r.cost_ms_p99),
                    _ms(r.update_ms),
                    _ms(r.phase_jitter_ms),
                )
            )
            title = ""
            if not r.works and r.why:
                where = dev.name if r.name == "-" else f"{dev.name} {r.name}"
                notes.append(f"{where}: {r.why}" + (f"; fix: {r.fix}" if r.fix else ""))
            elif r.notes:
                notes.append(f"{dev.name} {r.name}: {'; '.join(r.notes)}")
        if dev.info.get("mig_note"):
            notes.append(f"{dev.name} MIG: {dev.info['mig_note']}")
    if rows:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines.append("")
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
        lines.append("  ".join("-" * w for w in widths))
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
    if notes:
        lines.append("")
        lines += notes
    if report.load is not None:
        lines.append("")
        load = report.load
        if not load.get("ran"):
            lines.append(f"load: not run: {load.get('why', '')}")
        else:
            lines.append(
                f"load ({load['window_s']:.1f} s, {load['device']}): counter "
                f"{load['counter_J']:.1f} J, fused {load['fused_error_pct']:+.3f} %; "
                f"bursts median |error| {load.get('burst_median_abs_error_pct') or math.nan:.2f} %"
            )
            for kind, r in load["readers"].items():
                lines.append(
                    f"  {kind} alone: {r['error_pct']:+.3f} % (bursts median |error| "
                    f"{r.get('burst_median_abs_error_pct') or math.nan:.2f} %)"
                )
            lines.append(f"  trace: {load['trace']}")
    lines.append("")
    lines += [f"verdict {d.verdict}" for d in report.devices]
    if report.exit_code:
        lines.append("nothing on this machine can be measured (exit status 1)")
    text = "\n".join(lines) + "\n"
    out.write(text)
    out.flush()
    return text


# ------------------------------------------------------------------------------- command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The doctor's options, for ``lightning-watt doctor`` and ``python -m``."""
    parser.add_argument(
        "--devices",
        nargs="+",
        metavar="DEV",
        help="NVML GPU indices (0, gpu1, '0,1') and/or 'cpu' (default: every GPU and the CPU)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help="how long to measure each reader (default: %(default)s)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON here")
    parser.add_argument(
        "--load",
        action="store_true",
        help="CUDA only: run a square wave of matmul bursts, record it as a watt-trace and "
        "compare fused energy, each reader and each burst against the counter",
    )
    parser.add_argument(
        "--trace",
        metavar="PREFIX",
        default=None,
        help="watt-trace prefix for --load (default: next to --json, else watt_doctor_load)",
    )


_DESCRIPTION = (
    "What this machine can measure, and how well: every GPU NVML sees and the CPU (RAPL or the "
    "estimate), each reader's cost and update period, why the others do not work and the fix. "
    "Exit status 0 when something is measured, 1 when nothing can be, 2 on bad arguments."
)


def run(args: argparse.Namespace) -> int:
    """The ``doctor`` subcommand; returns the exit status."""
    prefix = args.trace
    if prefix is None:
        prefix = str(Path(args.json).with_suffix("")) + "_load" if args.json else "watt_doctor_load"
    try:
        report = diagnose(args.devices, args.seconds, load=args.load, load_prefix=prefix)
    except ValueError as err:
        sys.stderr.write(f"lightning-watt doctor: error: {err}\n")
        return 2
    print_report(report)
    if args.json:
        path = Path(args.json)
        if path.parent != Path():
            path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(report_to_json(report), indent=1, allow_nan=False)
        path.write_text(text + "\n", encoding="utf-8")
        sys.stderr.write(f"wrote {path}\n")
    return report.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lightning_watt.doctor``: the same as ``lightning-watt doctor``."""
    parser = argparse.ArgumentParser(prog="lightning-watt doctor", description=_DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
