"""The REAL ``pynvml`` (nvidia-ml-py) against how the project calls it, and against the fake.

Every NVML test elsewhere runs on ``tests/fake_pynvml.py``, which we wrote; if it and NVIDIA's
binding disagree, those tests pass and the first GPU run fails. This file is the guard, and it
needs no GPU:

* every ``nvml*``/``NVML*`` name the project (``lightning_watt/``, ``benchmarks/``, the GPU
  tests) reads exists in the installed binding, and every call binds to its signature;
* the constants, error classes, ctypes structures and union members we rely on have the values
  and fields we assume;
* the fake exposes the same names with compatible signatures, and returns the same shapes;
* the real binding's Python wrappers, over a scripted C library (:class:`ScriptedLib`: the C
  functions they call, answered from a fake driver), drive ``NvmlSource`` and the doctor end to
  end: only the silicon is fake there, not the binding.

Run it on the GPU machine too (``benchmarks/gpu_check.sh`` does): its nvidia-ml-py may differ.
"""

from __future__ import annotations

import ast
import ctypes
import inspect
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

real = pytest.importorskip("pynvml")

import fake_pynvml as fk  # noqa: E402  (tests/ is on sys.path: tests/conftest.py)

from lightning_watt import doctor  # noqa: E402
from lightning_watt.energy.readings import AVERAGE_W, BUFFER_W, COUNTER_J, INSTANT_W  # noqa: E402
from lightning_watt.sources import nvml as nvml_source  # noqa: E402
from lightning_watt.sources.nvml import NvmlSource  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: Where pynvml is used: the package, the benchmarks, the tests that run on a real GPU.
PROJECT = sorted(
    [*ROOT.joinpath("lightning_watt").rglob("*.py"), *ROOT.joinpath("benchmarks").glob("*.py")]
)
GPU_TESTS = [ROOT / "tests" / "test_gpu.py", ROOT / "tests" / "test_doctor_gpu.py"]
#: Names a pynvml module is bound to in our code (``self.nvml``/``self._nvml`` included).
RECEIVERS = {"nvml", "pynvml", "_real"}
PREFIXES = ("nvml", "NVML", "c_nvml")


# ------------------------------------------------------------------------- what we use
def _is_receiver(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in RECEIVERS
    return isinstance(node, ast.Attribute) and node.attr in {"nvml", "_nvml"}


def _uses(paths: list[Path]) -> Iterator[tuple[str, str, int | None, tuple[str, ...]]]:
    """``(where, name, positional args or None when not called, keyword names)`` per use."""
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        called: set[int] = set()
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and _is_receiver(func.value):
                    if func.attr.startswith(PREFIXES):
                        called.add(id(func))
                        starred = any(isinstance(a, ast.Starred) for a in node.args)
                        n = None if starred else len(node.args)
                        yield where, func.attr, n, tuple(k.arg or "**" for k in node.keywords)
                elif (
                    isinstance(func, ast.Name)
                    and func.id == "getattr"
                    and len(node.args) >= 2
                    and _is_receiver(node.args[0])
                    and isinstance(node.args[1], ast.Constant)
                    and isinstance(node.args[1].value, str)
                ):
                    yield where, node.args[1].value, None, ()
            elif (
                isinstance(node, ast.Attribute)
                and _is_receiver(node.value)
                and node.attr.startswith(PREFIXES)
                and id(node) not in called
            ):
                yield where, node.attr, None, ()


PROJECT_USES = list(_uses(PROJECT))
GPU_TEST_USES = list(_uses(GPU_TESTS))
FAKE_USES = list(_uses([ROOT / "tests" / "fake_pynvml.py"]))


def test_the_scan_finds_the_calls_we_know_of() -> None:
    # The guard is only as good as its scan: it must see the calls NvmlSource is built on.
    names = {name for _, name, _, _ in PROJECT_USES}
    for known in (
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetSamples",
        "nvmlDeviceGetFieldValues",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetMigMode",
        "NVMLError_NotFound",
        "NVMLError_LibraryNotFound",  # read through getattr(nvml, "...")
        "NVML_TOTAL_POWER_SAMPLES",
    ):
        assert known in names, known
    assert any(n == 3 for _, name, n, _ in PROJECT_USES if name == "nvmlDeviceGetSamples")


@pytest.mark.parametrize(
    "uses", [PROJECT_USES, GPU_TEST_USES, FAKE_USES], ids=["project", "gpu-tests", "fake"]
)
def test_every_name_we_use_exists_in_the_real_pynvml(uses: list[Any]) -> None:
    missing = sorted({f"{name} ({where})" for where, name, _, _ in uses if not hasattr(real, name)})
    assert not missing, f"not in nvidia-ml-py {_version()}: {missing}"


@pytest.mark.parametrize("uses", [PROJECT_USES, GPU_TEST_USES], ids=["project", "gpu-tests"])
def test_every_call_binds_to_the_real_signature(uses: list[Any]) -> None:
    bad = []
    for where, name, n, keywords in uses:
        if n is None or not hasattr(real, name):
            continue
        target = getattr(real, name)
        if inspect.isclass(target):
            continue  # the error classes: checked by value below
        try:
            inspect.signature(target).bind(*[None] * n, **dict.fromkeys(keywords))
        except TypeError as err:
            bad.append(
                f"{where}: {name}({n} args, {keywords}) vs {inspect.signature(target)}: {err}"
            )
    assert not bad, bad


def _fake_module() -> Any:
    return fk.FakeNvml([fk.FakeGpu("GPU-0", fk.SyntheticPower(lambda t: 100.0))]).module()


def test_the_fake_offers_every_name_the_package_uses_with_the_real_arity() -> None:
    fake = _fake_module()
    package = [u for u in PROJECT_USES if u[0].startswith("lightning_watt")]
    missing = sorted(
        {f"{name} ({where})" for where, name, _, _ in package if not hasattr(fake, name)}
    )
    assert not missing, f"the fake lacks: {missing}"
    bad = []
    for where, name, n, keywords in package:
        if n is None or inspect.isclass(getattr(fake, name)):
            continue
        try:
            inspect.signature(getattr(fake, name)).bind(*[None] * n, **dict.fromkeys(keywords))
        except TypeError as err:
            bad.append(f"{where}: fake {name}: {err}")
    assert not bad, bad


def _positional(fn: Callable[..., Any]) -> tuple[int, int]:
    """(required, total) positional parameters."""
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return sum(p.default is p.empty for p in params), len(params)


def test_every_fake_function_is_a_real_one_with_the_same_arity() -> None:
    fake = _fake_module()
    functions = [n for n in dir(fk.FakeNvml) if n.startswith("nvml")]
    assert len(functions) >= 17
    for name in functions:
        assert hasattr(real, name), f"the fake invents {name}: nvidia-ml-py has no such function"
        assert _positional(getattr(fake, name)) == _positional(getattr(real, name)), name
    # Everything else the fake module exposes is the real binding's own object.
    for name in dir(fake):
        if name.startswith(("NVML", "c_nvml")):
            assert getattr(fake, name) is getattr(real, name), name


# ------------------------------------------------------------------------- constants and types
def test_the_constants_have_the_values_we_assume() -> None:
    assert nvml_source.POWER_FIELDS == (186, 185)
    # A binding before 12.535 lacks the names (the code uses the ids, so it still works there).
    named = (
        getattr(real, "NVML_FI_DEV_POWER_INSTANT", 186),
        getattr(real, "NVML_FI_DEV_POWER_AVERAGE", 185),
    )
    assert named == (186, 185)
    assert real.NVML_TOTAL_POWER_SAMPLES == 0
    assert real.NVML_SUCCESS == 0
    assert real.NVML_ERROR_NOT_SUPPORTED == 3
    assert real.NVML_ERROR_NOT_FOUND == 6
    assert real.NVML_ERROR_GPU_IS_LOST == 15
    assert (real.NVML_DEVICE_MIG_DISABLE, real.NVML_DEVICE_MIG_ENABLE) == (0, 1)
    assert real.NVML_VALUE_TYPE_UNSIGNED_INT == 1


def test_value_members_follow_the_value_types() -> None:
    # _sample_value picks the union member by NVML_VALUE_TYPE_*: the order must be the ABI's.
    types = {
        "DOUBLE": "dVal",
        "UNSIGNED_INT": "uiVal",
        "UNSIGNED_LONG": "ulVal",
        "UNSIGNED_LONG_LONG": "ullVal",
        "SIGNED_LONG_LONG": "sllVal",
        "SIGNED_INT": "siVal",
        "UNSIGNED_SHORT": "usVal",
    }
    members = {f[0] for f in real.c_nvmlValue_t._fields_}
    for suffix, member in types.items():
        index = getattr(real, f"NVML_VALUE_TYPE_{suffix}")
        assert nvml_source._VALUE_MEMBERS[index] == member, suffix
        assert member in members, member
    value = real.c_nvmlValue_t()
    value.uiVal = 612_345  # mW
    assert nvml_source._sample_value(real.NVML_VALUE_TYPE_UNSIGNED_INT, value) == 612_345.0


def test_the_structures_have_the_fields_we_read() -> None:
    sample = dict(real.c_nvmlSample_t._fields_)
    assert sample["timeStamp"] is ctypes.c_ulonglong  # µs, wall clock
    assert sample["sampleValue"] is real.c_nvmlValue_t
    fields = dict(real.c_nvmlFieldValue_t._fields_)
    # What NvmlSource and the doctor read (timestamp and latencyUsec are there, unused).
    for name in ("fieldId", "valueType", "nvmlReturn"):
        assert name in fields, name
    assert fields["value"] is real.c_nvmlValue_t


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("NOT_FOUND", "NotFound"),
        ("NOT_SUPPORTED", "NotSupported"),
        ("GPU_IS_LOST", "GpuIsLost"),
        ("RESET_REQUIRED", "ResetRequired"),
        ("NO_PERMISSION", "NoPermission"),
        ("LIBRARY_NOT_FOUND", "LibraryNotFound"),
        ("DRIVER_NOT_LOADED", "DriverNotLoaded"),
        ("UNINITIALIZED", "Uninitialized"),
        ("INVALID_ARGUMENT", "InvalidArgument"),
        ("TIMEOUT", "Timeout"),
    ],
)
def test_nvml_error_of_a_code_is_its_subclass(code: str, cls: str) -> None:
    # NvmlSource raises NVMLError(ret) for a failed field and its guard catches the subclass.
    value = getattr(real, f"NVML_ERROR_{code}")
    err = real.NVMLError(value)
    assert type(err) is getattr(real, f"NVMLError_{cls}")
    assert isinstance(err, real.NVMLError) and err.value == value
    assert str(err)  # from the binding's table: no library needed


def test_an_unknown_code_still_prints_without_the_library() -> None:
    assert "4242" in str(real.NVMLError(4242))


def test_nvml_status_names_the_missing_library() -> None:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        pass
    else:
        pytest.skip("libnvidia-ml is installed here")
    ok, reason = nvml_source.nvml_status()
    assert not ok and "libnvidia-ml.so.1" in reason, reason


# ------------------------------------------------------------------------- a scripted C library
class ScriptedLib:
    """The C functions of ``libnvidia-ml`` that the real binding calls, answered from a
    :class:`fake_pynvml.FakeNvml`: out-parameters written through the ``byref`` pointers the
    wrappers pass, errors returned as ``nvmlReturn_t`` codes, handles as opaque pointers."""

    def __init__(self, driver: fk.FakeNvml) -> None:
        self.driver = driver
        self.calls: list[str] = []
        self._samples: Any = None

    # -- plumbing
    @staticmethod
    def _out(arg: Any) -> Any:
        return arg._obj  # the object behind ctypes.byref(...)

    @staticmethod
    def _encode(handle: fk.FakeHandle) -> int:
        return (handle.gpu + 1) << 8 | (0 if handle.mig is None else handle.mig + 1)

    @staticmethod
    def _decode(pointer: Any) -> fk.FakeHandle:
        code = ctypes.cast(pointer, ctypes.c_void_p).value or 0
        mig = code & 0xFF
        return fk.FakeHandle((code >> 8) - 1, None if mig == 0 else mig - 1)

    def _set_handle(self, arg: Any, handle: fk.FakeHandle) -> None:
        device = self._out(arg)
        ctypes.memmove(
            ctypes.addressof(device),
            ctypes.byref(ctypes.c_void_p(self._encode(handle))),
            ctypes.sizeof(ctypes.c_void_p),
        )

    def function(self, name: str) -> Callable[..., int]:
        impl = getattr(self, "c_" + name, None)
        if impl is None:
            raise real.NVMLError(real.NVML_ERROR_FUNCTION_NOT_FOUND)

        def call(*args: Any) -> int:
            self.calls.append(name)
            try:
                impl(*args)
            except real.NVMLError as err:
                return int(err.value)
            return real.NVML_SUCCESS

        return call

    # -- the C API, one method per symbol the wrappers look up (older bindings: the aliases)
    def c_nvmlInitWithFlags(self, flags: int) -> None:
        self.driver.nvmlInit()

    def c_nvmlShutdown(self) -> None:
        self.driver.nvmlShutdown()

    def c_nvmlSystemGetDriverVersion(self, buf: Any, size: Any) -> None:
        buf.value = self.driver.nvmlSystemGetDriverVersion().encode()

    def c_nvmlSystemGetNVMLVersion(self, buf: Any, size: Any) -> None:
        buf.value = self.driver.nvmlSystemGetNVMLVersion().encode()

    def c_nvmlDeviceGetCount_v2(self, count: Any) -> None:
        self._out(count).value = self.driver.nvmlDeviceGetCount()

    def c_nvmlDeviceGetHandleByIndex_v2(self, index: Any, device: Any) -> None:
        self._set_handle(device, self.driver.nvmlDeviceGetHandleByIndex(index.value))

    def c_nvmlDeviceGetName(self, handle: Any, buf: Any, size: Any) -> None:
        buf.value = self.driver.nvmlDeviceGetName(self._decode(handle)).encode()

    def c_nvmlDeviceGetUUID(self, handle: Any, buf: Any, size: Any) -> None:
        buf.value = self.driver.nvmlDeviceGetUUID(self._decode(handle)).encode()

    def c_nvmlDeviceGetMigMode(self, handle: Any, current: Any, pending: Any) -> None:
        now, later = self.driver.nvmlDeviceGetMigMode(self._decode(handle))
        self._out(current).value, self._out(pending).value = now, later

    def c_nvmlDeviceIsMigDeviceHandle(self, handle: Any, out: Any) -> None:
        self._out(out).value = self.driver.nvmlDeviceIsMigDeviceHandle(self._decode(handle)).value

    def c_nvmlDeviceGetMaxMigDeviceCount(self, handle: Any, out: Any) -> None:
        self._out(out).value = self.driver.nvmlDeviceGetMaxMigDeviceCount(self._decode(handle))

    def c_nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: Any, out: Any) -> None:
        mig = self.driver.nvmlDeviceGetMigDeviceHandleByIndex(self._decode(handle), index.value)
        self._set_handle(out, mig)

    def c_nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: Any, out: Any) -> None:
        parent = self.driver.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self._decode(handle))
        self._set_handle(out, parent)

    def c_nvmlDeviceGetTotalEnergyConsumption(self, handle: Any, out: Any) -> None:
        self._out(out).value = self.driver.nvmlDeviceGetTotalEnergyConsumption(self._decode(handle))

    def c_nvmlDeviceGetPowerUsage(self, handle: Any, out: Any) -> None:
        self._out(out).value = self.driver.nvmlDeviceGetPowerUsage(self._decode(handle))

    def c_nvmlDeviceGetSamples(
        self, handle: Any, kind: Any, since: Any, vtype: Any, count: Any, array: Any
    ) -> None:
        # Two calls, as the C API wants: the first (array NULL) sizes, the second fills.
        if array is None:
            self._samples = self.driver.nvmlDeviceGetSamples(
                self._decode(handle), kind.value, since.value
            )
            self._out(vtype).value = self._samples[0]
            self._out(count).value = len(self._samples[1])
            return
        value_type, samples = self._samples
        n = min(self._out(count).value, len(samples))
        for i in range(n):
            array[i] = samples[i]
        self._out(vtype).value, self._out(count).value = value_type, n

    def c_nvmlDeviceGetFieldValues(self, handle: Any, n: Any, values: Any) -> None:
        array = self._out(values)
        ids = [array[i].fieldId for i in range(n.value)]
        answered = self.driver.nvmlDeviceGetFieldValues(self._decode(handle), ids)
        for i in range(n.value):
            array[i] = answered[i]

    def c_nvmlInit_v2(self) -> None:
        self.driver.nvmlInit()

    c_nvmlDeviceGetCount = c_nvmlDeviceGetCount_v2
    c_nvmlDeviceGetHandleByIndex = c_nvmlDeviceGetHandleByIndex_v2


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Callable[[fk.FakeNvml], ScriptedLib]:
    """The real pynvml, its library loader and symbol lookup answered by a ScriptedLib."""

    def install(driver: fk.FakeNvml) -> ScriptedLib:
        lib = ScriptedLib(driver)
        monkeypatch.setitem(sys.modules, "pynvml", real)
        monkeypatch.setattr(real, "_LoadNvmlLibrary", lambda: None)
        monkeypatch.setattr(real, "_nvmlGetFunctionPointer", lib.function)
        return lib

    return install


UUID = "GPU-0a1b2c3d-0000-4000-8000-000000000000"
MIG = ("MIG-9f8e7d6c-aaaa-5aaa-9aaa-aaaaaaaaaaaa",)


def _driver(**gpu: Any) -> fk.FakeNvml:
    power = fk.SyntheticPower(lambda t: 450.0 if (t % 0.3) < 0.15 else 120.0)
    return fk.FakeNvml([fk.FakeGpu(UUID, power, **gpu)], clock=fk.SimClock())


def _shape(value: Any) -> Any:
    """A value's type structure: what code written against one binding relies on."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_shape(v) for v in value[:1]))
    if isinstance(value, ctypes.Array):
        return ("array", value._type_)
    return type(value)


def test_the_real_wrappers_and_the_fake_return_the_same_shapes(scripted: Any) -> None:
    twin = _driver()
    fake = twin.module()
    scripted(_driver())
    real.nvmlInit()
    fake.nvmlInit()
    try:
        rh, fh = real.nvmlDeviceGetHandleByIndex(0), fake.nvmlDeviceGetHandleByIndex(0)
        calls: list[tuple[str, tuple[Any, ...]]] = [
            ("nvmlSystemGetDriverVersion", ()),
            ("nvmlSystemGetNVMLVersion", ()),
            ("nvmlDeviceGetCount", ()),
            ("nvmlDeviceGetName", ("h",)),
            ("nvmlDeviceGetUUID", ("h",)),
            ("nvmlDeviceGetMigMode", ("h",)),
            ("nvmlDeviceIsMigDeviceHandle", ("h",)),
            ("nvmlDeviceGetMaxMigDeviceCount", ("h",)),
            ("nvmlDeviceGetTotalEnergyConsumption", ("h",)),
            ("nvmlDeviceGetPowerUsage", ("h",)),
            ("nvmlDeviceGetSamples", ("h", real.NVML_TOTAL_POWER_SAMPLES, 0)),
            ("nvmlDeviceGetFieldValues", ("h", list(nvml_source.POWER_FIELDS))),
        ]
        for name, args in calls:
            got_real = getattr(real, name)(*[rh if a == "h" else a for a in args])
            got_fake = getattr(fake, name)(*[fh if a == "h" else a for a in args])
            assert _shape(got_real) == _shape(got_fake), name
            assert got_real == got_fake or name in (
                "nvmlDeviceIsMigDeviceHandle",  # c_uint has no value equality
                "nvmlDeviceGetSamples",
                "nvmlDeviceGetFieldValues",
            ), name
        assert isinstance(real.nvmlDeviceGetName(rh), str)  # nvidia-ml-py >= 11.515: str
        _, samples = real.nvmlDeviceGetSamples(rh, real.NVML_TOTAL_POWER_SAMPLES, 0)
        assert len(samples) == fk.BUFFER_LENGTH and isinstance(samples[0], real.c_nvmlSample_t)
        assert samples[0].sampleValue.uiVal in (120_000, 450_000)  # mW
        instant, average = real.nvmlDeviceGetFieldValues(rh, list(nvml_source.POWER_FIELDS))
        assert (instant.fieldId, instant.nvmlReturn) == (186, real.NVML_SUCCESS)
        assert instant.value.uiVal in (120_000, 450_000)
        assert (average.fieldId, average.valueType) == (185, real.NVML_VALUE_TYPE_UNSIGNED_INT)
    finally:
        real.nvmlShutdown()
        fake.nvmlShutdown()


def test_the_fake_converts_arguments_as_strictly_as_the_real_binding(scripted: Any) -> None:
    # ctypes refuses a float where the C API takes an integer: a float timestamp that the fake
    # accepted would fail every buffer drain on a GPU.
    fake = _driver().module()
    scripted(_driver())
    real.nvmlInit()
    fake.nvmlInit()
    try:
        for nvml in (real, fake):
            h = nvml.nvmlDeviceGetHandleByIndex(0)
            with pytest.raises(TypeError):
                nvml.nvmlDeviceGetSamples(h, real.NVML_TOTAL_POWER_SAMPLES, 1.75e15)
            with pytest.raises(TypeError):
                nvml.nvmlDeviceGetHandleByIndex(0.0)
            (value,) = nvml.nvmlDeviceGetFieldValues(h, [(nvml_source.POWER_FIELDS[0], 0)])
            assert (value.fieldId, value.scopeId, value.nvmlReturn) == (186, 0, 0), nvml
    finally:
        real.nvmlShutdown()
        fake.nvmlShutdown()


def test_an_empty_buffer_raises_not_found_through_the_real_wrapper(scripted: Any) -> None:
    scripted(_driver())
    real.nvmlInit()
    try:
        h = real.nvmlDeviceGetHandleByIndex(0)
        with pytest.raises(real.NVMLError_NotFound):
            real.nvmlDeviceGetSamples(h, real.NVML_TOTAL_POWER_SAMPLES, 2**63)
    finally:
        real.nvmlShutdown()


def test_nvml_source_runs_on_the_real_binding(scripted: Any) -> None:
    driver = _driver()
    clock = driver.clock
    assert isinstance(clock, fk.SimClock)
    lib = scripted(driver)
    source = NvmlSource(devices=[0], uuid_of=lambda i: fk.bare_uuid(UUID), wall_clock=clock.time)
    source.open(clock.monotonic)
    try:
        (device,) = source.devices()
        assert (device.uuid, device.label) == (UUID, "NVIDIA H200")
        meta = source.metadata()["devices"]["gpu0"]  # type: ignore[index]
        assert meta["counter"] and meta["buffer"] and meta["usage"], meta
        assert meta["fields"] == ["instant", "average"], meta
        assert meta["buffer_period_ms"] == pytest.approx(20.0)
        kinds: dict[str, list[float]] = {}
        for _ in range(12):
            clock.advance(0.1)
            for channel in source.channels():
                for reading in channel.read():
                    kinds.setdefault(reading.kind, []).append(reading.value)
        assert set(kinds) == {COUNTER_J, BUFFER_W}, set(kinds)
        assert all(w in (120.0, 450.0) for w in kinds[BUFFER_W])
        assert len(kinds[BUFFER_W]) >= 50
        assert kinds[COUNTER_J][-1] > kinds[COUNTER_J][0] > 81_000  # joules, not mJ
        (fields,) = [
            ch for ch in source.channels() if ch.name == "gpu0/buffer"
        ]  # its fallback reads the fields through the real wrapper too
        assert fields.fallback is not None
        values = [r for r in fields.fallback.read()]
        assert {r.kind for r in values} == {INSTANT_W, AVERAGE_W}
    finally:
        source.close()
    assert "nvmlDeviceGetSamples" in lib.calls and "nvmlShutdown" in lib.calls


def test_a_mig_instance_maps_to_its_parent_through_the_real_binding(scripted: Any) -> None:
    driver = _driver(mig_mode=1, mig_uuids=MIG)
    clock = driver.clock
    assert isinstance(clock, fk.SimClock)
    scripted(driver)
    source = NvmlSource(devices=[0], uuid_of=lambda i: fk.bare_uuid(MIG[0]), wall_clock=clock.time)
    with pytest.warns(nvml_source.MigEnergyWarning):
        source.open(clock.monotonic)
    try:
        meta = source.metadata()["devices"]["gpu0"]  # type: ignore[index]
        assert (meta["uuid"], meta["mig_uuid"]) == (UUID, MIG[0])
        assert meta["counter"]
    finally:
        source.close()


def test_the_doctor_runs_on_the_real_binding(scripted: Any) -> None:
    driver = _driver(fields=frozenset({"instant"}))
    clock = driver.clock
    assert isinstance(clock, fk.SimClock)
    scripted(driver)
    status, (dev,) = doctor.check_gpus(
        None, 1.0, nvml=real, clock=clock.monotonic, sleep=clock.sleep, wall=clock.time
    )
    assert status["ok"] and status["driver"] == "580.159.04", status
    works = {r.name: r for r in dev.readers if r.works}
    assert set(works) == {"counter", "buffer", "fields", "usage"}, dev.readers
    assert works["counter"].update_ms == pytest.approx(100.0, abs=5.0)
    assert works["buffer"].update_ms == pytest.approx(20.0)
    assert "only instant supported" in works["fields"].notes
    assert dev.label == "NVIDIA H200" and dev.uuid == UUID


def test_a_driver_without_power_fields_is_handled_per_field(scripted: Any) -> None:
    # Drivers before 535 know neither field id: each answers NOT_SUPPORTED, the call succeeds.
    driver = _driver(fields=frozenset(), buffer=False)
    clock = driver.clock
    assert isinstance(clock, fk.SimClock)
    scripted(driver)
    source = NvmlSource(devices=[0], uuid_of=lambda i: fk.bare_uuid(UUID), wall_clock=clock.time)
    source.open(clock.monotonic)
    try:
        meta = source.metadata()["devices"]["gpu0"]  # type: ignore[index]
        assert meta["fields"] == [] and "Not Supported" in meta["missing"]["fields"], meta
        assert meta["usage"] and "nvmlDeviceGetPowerUsage" in source.describe()["gpu0"]
    finally:
        source.close()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("nvidia-ml-py")
    except Exception:
        return "?"


def test_report_the_binding_version() -> None:
    print(f"\nnvidia-ml-py {_version()} at {real.__file__}; {time.strftime('%Y-%m-%d')}")
    assert real.__file__ and "fake" not in real.__file__
