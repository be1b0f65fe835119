"""NvmlSource against a fake pynvml (tests/fake_pynvml.py): no GPU or driver needed.

Time is simulated (SimClock) everywhere except the end-to-end test with the meter's thread, so
the tests are deterministic and fast.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import math
import sys
import time
import warnings

import fake_pynvml as fk  # tests/ is on sys.path (tests/conftest.py)
import pynvml
import pytest

from lightning_watt.energy.readings import AVERAGE_W, BUFFER_W, COUNTER_J, INSTANT_W, USAGE_W
from lightning_watt.energy.timeline import EnergyTimeline
from lightning_watt.energy.trace import bundled_trace, load_trace
from lightning_watt.sources import nvml as nvml_module
from lightning_watt.sources.base import ChannelLost, SourceUnavailable
from lightning_watt.sources.nvml import (
    BUFFER_INTERVAL_S,
    COUNTER_INTERVAL_S,
    MigEnergyWarning,
    NvmlSource,
    nvml_status,
)

UUIDS = [
    "GPU-0a1b2c3d-0000-4000-8000-000000000000",
    "GPU-1a1b2c3d-1111-4111-8111-111111111111",
    "GPU-2a1b2c3d-2222-4222-8222-222222222222",
]
MIG_UUIDS = (
    "MIG-9f8e7d6c-aaaa-5aaa-9aaa-aaaaaaaaaaaa",
    "MIG-9f8e7d6c-bbbb-5bbb-9bbb-bbbbbbbbbbbb",
)


def constant(watts: float) -> fk.SyntheticPower:
    return fk.SyntheticPower(lambda t: watts)


def square(t: float) -> float:
    """150 ms of load, 150 ms idle, like the h200-square-wave trace."""
    return 450.0 if (t % 0.3) < 0.15 else 120.0


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch):
    """Put a fake driver's module in ``sys.modules["pynvml"]``; monkeypatch restores it."""

    def _install(fake: fk.FakeNvml) -> fk.FakeNvml:
        monkeypatch.setitem(sys.modules, "pynvml", fake.module())
        return fake

    return _install


def opened(
    fake: fk.FakeNvml,
    devices: object = 0,
    uuids: list[str] | None = None,
    **kwargs: object,
) -> NvmlSource:
    """An NvmlSource on the fake, seeing CUDA devices as ``uuids`` (default: CUDA's order)."""
    uuid_of = fk.uuid_lookup(uuids if uuids is not None else fk.cuda_uuids(fake.gpus))
    source = NvmlSource(devices, uuid_of=uuid_of, wall_clock=fake.clock.time, **kwargs)  # type: ignore[arg-type]
    source.open(fake.clock.monotonic)
    return source


def by_name(source: NvmlSource) -> dict:
    return {ch.name: ch for ch in source.channels()}


# ------------------------------------------------------------------------------- availability
def test_module_never_imports_pynvml_at_import_time() -> None:
    tree = ast.parse(inspect.getsource(nvml_module))
    for node in tree.body:  # only module-level statements: function bodies import lazily
        if isinstance(node, ast.Import):
            assert all(alias.name != "pynvml" for alias in node.names)
        if isinstance(node, ast.ImportFrom):
            assert node.module != "pynvml"


def test_unavailable_when_pynvml_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    ok, reason = nvml_status()
    assert not ok and "pynvml" in reason
    with pytest.raises(SourceUnavailable, match="pynvml"):
        NvmlSource([0], uuid_of=lambda i: "x").open(time.monotonic)


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (pynvml.NVMLError_LibraryNotFound, "no NVIDIA driver"),
        (pynvml.NVMLError_DriverNotLoaded, "driver not loaded"),
        (pynvml.NVMLError_Unknown, "failed to initialise"),
    ],
)
def test_unavailable_when_nvml_init_fails(install, error: type, words: str) -> None:
    install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], constant(100))], init_error=error))
    with pytest.raises(SourceUnavailable, match=words) as info:
        NvmlSource([0], uuid_of=lambda i: UUIDS[0]).open(time.monotonic)
    assert "\n" not in str(info.value)
    ok, reason = nvml_status()
    assert not ok and words in reason


def test_real_pynvml_on_this_machine_is_unavailable_not_crashing() -> None:
    ok, reason = nvml_status()
    if ok:
        pytest.skip(f"this machine has NVML: {reason}")
    assert reason and "\n" not in reason


def test_nvml_status_ok_and_balanced_init(install) -> None:
    fake = install(fk.FakeNvml([fk.FakeGpu(u, constant(100)) for u in UUIDS[:2]]))
    ok, reason = nvml_status()
    assert ok and "2 GPU(s)" in reason and "NVIDIA H200" in reason and "580.159.04" in reason
    assert fake.refcount == 0


# ------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "devices", [-1, "cpu", [0, 0], [], True, 1.5, [0, "cuda:x"], {"a": 1}, ["cuda:1", 1]]
)
def test_invalid_devices_are_rejected_at_construction(devices: object) -> None:
    with pytest.raises(ValueError, match="devices"):
        NvmlSource(devices)  # type: ignore[arg-type]


def test_valid_device_forms() -> None:
    import torch

    assert NvmlSource(3).requested_devices == (3,)
    assert NvmlSource("cuda:1").requested_devices == (1,)
    assert NvmlSource([torch.device("cuda", 2), 0]).requested_devices == (2, 0)
    assert NvmlSource(torch.device("cuda")).requested_devices == (None,)
    assert NvmlSource().requested_devices is None


@pytest.mark.parametrize("readers", [["bogus"], [], "counter", 5])
def test_invalid_readers_are_rejected(readers: object) -> None:
    with pytest.raises(ValueError, match="readers"):
        NvmlSource(0, readers=readers)  # type: ignore[arg-type]


def test_default_device_needs_cuda(install) -> None:
    install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], constant(100))]))
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SourceUnavailable, match="CUDA"):
        NvmlSource().open(time.monotonic)


# ------------------------------------------------------------------------------- probing
def test_probe_full_h200_uses_counter_and_buffer(install) -> None:
    fake = install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], constant(300))]))
    source = opened(fake)
    channels = by_name(source)
    assert list(channels) == ["gpu0/counter", "gpu0/buffer"]
    assert channels["gpu0/counter"].interval_s == COUNTER_INTERVAL_S == 0.1
    assert channels["gpu0/buffer"].interval_s == BUFFER_INTERVAL_S == 0.5
    fields = channels["gpu0/buffer"].fallback
    assert fields is not None and fields.name == "gpu0/fields" and fields.interval_s == 0.1
    assert fields.fallback is not None and fields.fallback.name == "gpu0/usage"
    assert source.describe() == {
        "gpu0": "NVML energy counter (100 ms) + driver power buffer (20 ms samples); falls "
        "back to power fields instant/average, then nvmlDeviceGetPowerUsage"
    }
    (device,) = source.devices()
    assert (device.name, device.uuid, device.label, device.kind) == (
        "gpu0",
        UUIDS[0],
        "NVIDIA H200",
        "gpu",
    )
    meta = source.metadata()
    assert meta["gpu"] == "NVIDIA H200" and meta["driver"] == "580.159.04"
    assert meta["nvml"] == "13.580.159.04"
    info = meta["devices"]["gpu0"]  # type: ignore[index]
    assert info["counter"] and info["buffer"] and info["buffer_period_ms"] == pytest.approx(20)
    assert info["fields"] == ["instant", "average"] and info["usage"]
    json.dumps(meta)  # it goes into a trace's meta.json


def test_probe_without_buffer_polls_fields(install) -> None:
    fake = install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], constant(300), buffer=False)]))
    source = opened(fake)
    channels = by_name(source)
    assert list(channels) == ["gpu0/counter", "gpu0/fields"]
    assert channels["gpu0/fields"].fallback.name == "gpu0/usage"  # type: ignore[union-attr]
    assert source.describe()["gpu0"].startswith(
        "NVML energy counter (100 ms) + power fields instant/average (100 ms)"
    )
    assert source.metadata()["devices"]["gpu0"]["missing"]["buffer"] == "Not Supported"  # type: ignore[index]


def test_pre_volta_without_counter_uses_power_alone(install) -> None:
    gpu = fk.FakeGpu(
        UUIDS[0],
        constant(80),
        name="Tesla P100",
        counter=False,
        buffer=False,
        fields=frozenset(),
        mig_mode=None,
    )
    source = opened(install(fk.FakeNvml([gpu])))
    assert list(by_name(source)) == ["gpu0/usage"]
    text = source.describe()["gpu0"]
    assert "no energy counter" in text and "nvmlDeviceGetPowerUsage" in text
    assert any("no energy counter" in note for note in source.devices()[0].notes)


def test_device_with_no_working_reader_is_unavailable(install) -> None:
    gpu = fk.FakeGpu(
        UUIDS[0], constant(80), counter=False, buffer=False, fields=frozenset(), usage=False
    )
    fake = install(fk.FakeNvml([gpu]))
    with pytest.raises(SourceUnavailable, match=r"gpu0.*no NVML reader works"):
        opened(fake)
    assert fake.refcount == 0  # open failed: NVML shut down again


def test_readers_restrict_what_is_used(install) -> None:
    fake = install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], constant(300))]))
    source = opened(fake, readers={"counter", "fields"})
    assert list(by_name(source)) == ["gpu0/counter", "gpu0/fields"]
    assert by_name(source)["gpu0/fields"].fallback is None


def test_lost_gpu_at_open_is_unavailable(install) -> None:
    fake = fk.FakeNvml([fk.FakeGpu(UUIDS[0], constant(300))])
    fake.gpus[0].errors["counter"] = [pynvml.NVMLError_GpuIsLost]
    install(fake)
    with pytest.raises(SourceUnavailable, match="GPU is lost"):
        opened(fake)


# ------------------------------------------------------------------------------- UUID mapping
def three_gpus(**kwargs: object) -> fk.FakeNvml:
    # Distinct power per physical GPU: a reading tells which GPU it came from.
    gpus = [fk.FakeGpu(u, constant(100.0 * (i + 1)), speed=i) for i, u in enumerate(UUIDS)]
    return fk.FakeNvml(gpus, **kwargs)  # type: ignore[arg-type]


def usage_of(source: NvmlSource, name: str) -> float:
    nvml = sys.modules["pynvml"]
    gpu = next(g for g in source._gpus if g.name == name)
    return nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0


def test_permuted_cuda_visible_devices_map_by_uuid(install) -> None:
    fake = install(three_gpus())
    uuids = fk.cuda_uuids(fake.gpus, visible="2,0", order="PCI_BUS_ID")
    source = opened(fake, devices=[0, 1], uuids=uuids)
    devices = {d.name: d.uuid for d in source.devices()}
    assert devices == {"gpu0": UUIDS[2], "gpu1": UUIDS[0]}
    assert usage_of(source, "gpu0") == 300.0 and usage_of(source, "gpu1") == 100.0
    meta = source.metadata()["devices"]
    assert meta["gpu0"]["nvml_index"] == 2 and meta["gpu1"]["torch_index"] == 1  # type: ignore[index]


def test_fastest_first_order_differs_from_nvml_order(install) -> None:
    fake = install(three_gpus())
    # CUDA's default order puts the fastest GPU (NVML index 2 here) first.
    source = opened(fake, devices=[0], uuids=fk.cuda_uuids(fake.gpus))
    assert source.devices()[0].uuid == UUIDS[2]


def test_uuid_form_cuda_visible_devices(install) -> None:
    fake = install(three_gpus())
    uuids = fk.cuda_uuids(fake.gpus, visible=UUIDS[1][:12])  # a unique UUID prefix
    source = opened(fake, devices=[0], uuids=uuids)
    assert source.devices()[0].uuid == UUIDS[1]
    assert usage_of(source, "gpu0") == 200.0


def test_uuid_unknown_to_nvml_is_unavailable(install) -> None:
    fake = install(three_gpus())
    with pytest.raises(SourceUnavailable, match="not among the GPUs NVML sees"):
        opened(fake, uuids=["deadbeef-0000-0000-0000-000000000000"])
    with pytest.raises(SourceUnavailable, match="invalid device ordinal"):
        opened(fake, devices=[5])


# ------------------------------------------------------------------------------- readings
def test_counter_reading_units_and_mid_call_stamp(install) -> None:
    fake = install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], constant(250))], counter_latency_s=0.0025))
    source = opened(fake)
    read = by_name(source)["gpu0/counter"].read
    fake.clock.advance(0.05)
    before = fake.clock.monotonic()
    (r0,) = read()
    assert r0.kind == COUNTER_J and r0.device == "gpu0"
    assert r0.t == pytest.approx(before + 0.00125)  # the middle of a 2.5 ms read
    assert r0.value == pytest.approx(fake.gpus[0].power.counter_mJ(fake.driver_s()) / 1000)
    fake.clock.advance(1.0)
    (r1,) = read()
    assert r1.value - r0.value == pytest.approx(250.0, rel=0.03)  # J over ~1 s at 250 W


@pytest.mark.parametrize("empty", ["NVMLError_NotFound", "NVMLError_NoData", None])
def test_an_empty_drain_is_no_error(install, empty: str | None) -> None:
    # Drivers answer a drain with nothing newer by NOT_FOUND; NO_DATA or an empty list must
    # mean the same, not a read error (repeated, those would give the buffer up for fields).
    fake = install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], constant(300))]))
    fake.empty_drain_error = None if empty is None else getattr(fk._real, empty)
    source = opened(fake)  # the probe drains the buffer too: nothing in it yet
    assert "buffer" not in source._gpus[0].missing
    read = by_name(source)["gpu0/buffer"].read
    fake.clock.advance(0.5)
    first = read()
    assert len(first) == 25 and all(r.value == pytest.approx(300.0) for r in first)
    for _ in range(3):
        assert read() == []  # nothing newer, whatever the driver answers
    fake.clock.advance(0.2)
    assert len(read()) == 10  # and the samples after it come as before


def test_buffer_drains_map_to_meter_clock_without_duplicates(install) -> None:
    fake = install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], fk.SyntheticPower(square))]))
    fake.clock.advance(3.0)  # the driver buffer is full of samples from before the run
    source = opened(fake)
    opened_at = fake.clock.monotonic()
    read = by_name(source)["gpu0/buffer"].read
    offset = fake.clock.monotonic() - fake.clock.time()
    seen = []
    for _ in range(6):
        fake.clock.advance(0.5)
        got = read()
        assert all(r.kind == BUFFER_W and r.device == "gpu0" for r in got)
        seen.extend(got)
        assert read() == []  # nothing newer: NVMLError_NotFound is no error
    ts = [r.t for r in seen]
    assert ts == sorted(set(ts))  # never a sample twice
    assert ts[0] > opened_at  # nothing from before open
    assert len(ts) == 150  # 3 s of 20 ms samples
    assert max(b - a for a, b in itertools.pairwise(ts)) == pytest.approx(0.02, abs=1e-6)
    # Each sample is stamped at its driver timestamp, on the meter clock.
    power = fake.gpus[0].power
    for r in seen:
        s = r.t - offset - fake.epoch
        k = round(s / 0.02) - 1
        assert r.value == pytest.approx(power.window_W(k), abs=1e-3)
    assert {r.value for r in seen} == {450.0, 120.0}


def test_buffer_overrun_is_counted_and_still_no_duplicates(install) -> None:
    fake = install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], constant(200))]))
    source = opened(fake)
    read = by_name(source)["gpu0/buffer"].read
    fake.clock.advance(0.5)
    first = read()
    fake.clock.advance(3.0)  # the meter thread stalled longer than the buffer holds
    second = read()
    assert len(first) == 25 and len(second) == fk.BUFFER_LENGTH
    assert second[0].t > first[-1].t
    assert source.metadata()["devices"]["gpu0"]["buffer_overruns"] == 1  # type: ignore[index]


def test_fields_and_usage_readings_in_watts(install) -> None:
    fake = install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], constant(321.5), buffer=False)]))
    source = opened(fake)
    fields = by_name(source)["gpu0/fields"]
    fake.clock.advance(2.0)
    got = {r.kind: r.value for r in fields.read()}
    assert got == {INSTANT_W: pytest.approx(321.5), AVERAGE_W: pytest.approx(321.5)}
    assert fields.fallback is not None
    (usage,) = fields.fallback.read()
    assert usage.kind == USAGE_W and usage.value == pytest.approx(321.5)


def test_one_field_unsupported_keeps_the_other(install) -> None:
    gpu = fk.FakeGpu(UUIDS[0], constant(150), buffer=False, fields=frozenset({"average"}))
    source = opened(install(fk.FakeNvml([gpu])))
    assert "power fields average" in source.describe()["gpu0"]
    assert [r.kind for r in by_name(source)["gpu0/fields"].read()] == [AVERAGE_W]


# ------------------------------------------------------------------------------- failures
def test_gpu_lost_mid_run_is_channel_lost_everywhere(install) -> None:
    fake = install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], constant(300))]))
    source = opened(fake)
    channels = by_name(source)
    fake.clock.advance(0.5)
    assert channels["gpu0/counter"].read() and channels["gpu0/buffer"].read()
    fake.lose(0)
    with pytest.raises(ChannelLost, match="GPU is lost"):
        channels["gpu0/counter"].read()
    calls = sum(fake.calls.values())
    # Its fallbacks are not worth an NVML call any more: the GPU is gone.
    fallback = channels["gpu0/buffer"]
    while fallback is not None:
        with pytest.raises(ChannelLost, match="GPU is lost"):
            fallback.read()
        fallback = fallback.fallback
    assert sum(fake.calls.values()) == calls
    assert source.metadata()["devices"]["gpu0"]["lost"]  # type: ignore[index]


def test_buffer_not_supported_mid_run_switches_to_fields(install) -> None:
    fake = install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], constant(300))]))
    buffer = by_name(opened(fake))["gpu0/buffer"]
    fake.clock.advance(0.5)
    assert buffer.read()
    fake.unsupport(0, "buffer")
    with pytest.raises(ChannelLost, match="no longer supported"):
        buffer.read()
    assert buffer.fallback is not None and buffer.fallback.name == "gpu0/fields"
    assert {r.kind for r in buffer.fallback.read()} == {INSTANT_W, AVERAGE_W}


def test_transient_errors_are_raised_for_the_meter_to_retry(install) -> None:
    fake = install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], constant(300))]))
    counter = by_name(opened(fake))["gpu0/counter"]
    fake.fail(0, "counter", pynvml.NVMLError_Timeout)
    with pytest.raises(pynvml.NVMLError_Timeout):
        counter.read()
    assert counter.read()[0].kind == COUNTER_J


class _FrozenBuffer(fk.SyntheticPower):
    """A driver whose power buffer stops filling at ``freeze`` (driver seconds)."""

    def __init__(self, freeze: float) -> None:
        super().__init__(lambda t: 200.0)
        self.freeze = freeze

    def samples(self, s: float) -> list[tuple[float, float]]:
        return super().samples(min(s, self.freeze))


def test_stale_buffer_is_channel_lost(install) -> None:
    fake = install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], _FrozenBuffer(freeze=1.0))]))
    buffer = by_name(opened(fake))["gpu0/buffer"]
    fake.clock.advance(1.0)
    assert buffer.read()
    fake.clock.advance(1.5)
    assert buffer.read() == []  # quiet, but not for long yet
    fake.clock.advance(1.0)
    with pytest.raises(ChannelLost, match="no sample"):
        buffer.read()


def test_close_is_tolerant(install) -> None:
    fake = install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], constant(300))]))
    source = opened(fake)
    source.close()
    assert fake.refcount == 0
    source.close()  # twice: nothing to do
    fake.refcount = 5
    other = opened(fake)
    fake.refcount = 0  # someone else shut NVML down: nvmlShutdown now raises
    other.close()


# ------------------------------------------------------------------------------- MIG
def mig_machine() -> fk.FakeNvml:
    return fk.FakeNvml(
        [
            fk.FakeGpu(UUIDS[0], constant(100)),
            fk.FakeGpu(UUIDS[1], constant(400), mig_mode=1, mig_uuids=MIG_UUIDS),
        ]
    )


def test_mig_instance_measures_parent_gpu_with_warning(install) -> None:
    fake = install(mig_machine())
    uuids = fk.cuda_uuids(fake.gpus, visible=MIG_UUIDS[1], order="PCI_BUS_ID")
    with pytest.warns(MigEnergyWarning, match="whole physical GPU"):
        source = opened(fake, uuids=uuids)
    (device,) = source.devices()
    assert device.uuid == UUIDS[1]  # the parent: ranks on sibling instances dedupe on it
    assert any("MIG" in note and MIG_UUIDS[1] in note for note in device.notes)
    assert "MIG" in source.describe()["gpu0"]
    fake.clock.advance(1.0)
    assert usage_of(source, "gpu0") == 400.0
    assert by_name(source)["gpu0/counter"].read()[0].kind == COUNTER_J
    assert source.metadata()["devices"]["gpu0"]["mig_uuid"] == MIG_UUIDS[1]  # type: ignore[index]


def test_two_mig_instances_of_one_gpu_are_measured_once(install) -> None:
    fake = install(mig_machine())
    uuids = fk.cuda_uuids(fake.gpus, order="PCI_BUS_ID")  # GPU0, MIG a, MIG b
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = opened(fake, devices=[1, 2], uuids=uuids)
    assert [d.name for d in source.devices()] == ["gpu1"]
    assert any("measured once" in str(w.message) for w in caught)


def test_no_mig_warning_on_plain_gpus(install) -> None:
    fake = install(three_gpus())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opened(fake, devices=[0, 1, 2])


# ------------------------------------------------------------------------------- energy
def drive(source: NvmlSource, fake: fk.FakeNvml, seconds: float) -> EnergyTimeline:
    """Run the channels on the simulated clock at their intervals, as the meter would."""
    timeline = EnergyTimeline()
    channels = source.channels()
    due = {ch.name: fake.clock.monotonic() for ch in channels}
    end = fake.clock.monotonic() + seconds
    step = 0.01
    while fake.clock.monotonic() < end:
        for ch in channels:
            if fake.clock.monotonic() >= due[ch.name] - 1e-9:
                timeline.add(ch.read())
                due[ch.name] += ch.interval_s
        fake.clock.advance(step)
    timeline.flush()
    return timeline


def test_square_wave_energy_matches_the_truth(install) -> None:
    fake = install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], fk.SyntheticPower(square))]))
    fake.clock.advance(0.063)  # reads fall between counter updates, as they do on a GPU
    source = opened(fake)
    timeline = drive(source, fake, 6.0)
    offset = fake.clock.monotonic() - fake.clock.time() + fake.epoch  # meter t -> driver s
    power = fake.gpus[0].power
    for a, b in [(1.0, 5.0), (2.05, 2.65), (3.0, 3.3)]:
        t0, t1 = fake.clock.monotonic() - 6.0 + a, fake.clock.monotonic() - 6.0 + b
        got = timeline.energy_between(t0, t1)["gpu0"]
        truth = power.energy_J(t0 - offset, t1 - offset)
        assert got == pytest.approx(truth, rel=0.02 if b - a > 1 else 0.08)
    assert timeline.methods()["gpu0"][0] == "counter+buffer_W"


def test_replay_of_a_real_trace_agrees_with_its_counter(install) -> None:
    trace = load_trace(bundled_trace("h200-mlp-stall"))
    start = 14.0
    fake = install(fk.FakeNvml([fk.FakeGpu(UUIDS[0], fk.TracePower(trace, start=start))]))
    fake.clock.advance(0.037)  # reads fall between counter updates, as they do on a GPU
    source = opened(fake)
    t_open = fake.clock.monotonic()
    timeline = drive(source, fake, 8.0)
    to_trace = start + 0.037 - t_open  # meter t -> trace t
    for a, b in [(0.5, 7.5), (2.0, 4.0)]:
        got = timeline.energy_between(t_open + a, t_open + b)["gpu0"]
        truth = trace.counter_energy("gpu0", t_open + a + to_trace, t_open + b + to_trace)
        assert got == pytest.approx(truth, rel=0.03)


# ------------------------------------------------------------------------------- with the meter
def test_meter_end_to_end_over_a_real_trace(install) -> None:
    meter_mod = pytest.importorskip("lightning_watt.energy.meter")
    trace = load_trace(bundled_trace("h200-mlp-stall"))
    start = 14.0
    fake = install(
        fk.FakeNvml(
            [fk.FakeGpu(UUIDS[0], fk.TracePower(trace, start=start))],
            clock=fk.RealClock(),
            counter_latency_s=fk.MEASURED_COUNTER_LATENCY_S,
        )
    )
    source = NvmlSource([0], uuid_of=fk.uuid_lookup(fk.cuda_uuids(fake.gpus)))
    meter = meter_mod.EnergyMeter(sources=[source])
    meter.start()
    try:
        time.sleep(1.6)
    finally:
        meter.stop()
    assert not meter.unavailable and not meter.errors
    assert "driver power buffer" in meter.describe()["gpu0"]
    # Meter clock (monotonic) -> driver seconds (wall clock since the fake began) -> trace time.
    to_trace = start + (time.time() - time.monotonic()) - fake.epoch
    t0, t1 = meter.started_at + 0.2, meter.started_at + 1.4  # type: ignore[operator]
    got = meter.energy_between(t0, t1)["gpu0"]
    truth = trace.counter_energy("gpu0", t0 + to_trace, t1 + to_trace)
    assert got == pytest.approx(truth, rel=0.05)
    total = meter.total()["gpu0"]
    assert math.isfinite(total) and total > 0
    assert fake.refcount == 0  # the meter closed the source
