"""EnergyMeter.sync: every channel read once, now, on the meter thread; the caller only waits.

``FakeSlowSource`` is a fake (no hardware): one device at a constant 50 W whose reader sleeps,
fails or calls back into the meter on demand, and notes the thread of every read. Each test
keeps to about a second of wall time.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
import warnings

import fake_pynvml as fk  # tests/ is on sys.path (tests/conftest.py)
import pytest

from lightning_watt import EnergyMeter, ReplaySource
from lightning_watt.energy.counter_clock import CounterClock
from lightning_watt.energy.readings import BUFFER_W, COUNTER_J, INSTANT_W, DeviceInfo, Reading
from lightning_watt.energy.trace import bundled_trace, load_trace
from lightning_watt.sources import EstimateSource
from lightning_watt.sources.base import Channel, Clock, EnergySource
from lightning_watt.sources.nvml import NvmlSource

STALL = "h200-mlp-stall"


class FakeSlowSource(EnergySource):
    """A fake (no hardware): ``slow0`` at 50 W, read every 0.1 s by a reader that sleeps
    ``delay`` seconds, raises while ``fail`` is set and calls ``on_read`` if given."""

    name = "fake-slow"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.fail = False
        self.on_read: object = None
        self.threads: list[threading.Thread] = []
        self.read_times: list[float] = []
        self._clock: Clock = time.monotonic

    def open(self, clock: Clock) -> None:
        self._clock = clock

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo("slow0", label="a fake slow device")]

    def _read(self) -> list[Reading]:
        self.threads.append(threading.current_thread())
        self.read_times.append(self._clock())
        if self.delay:
            time.sleep(self.delay)
        if callable(self.on_read):
            self.on_read()
        if self.fail:
            raise RuntimeError("fake read error")
        return [Reading(self._clock(), "slow0", INSTANT_W, 50.0)]

    def channels(self) -> list[Channel]:
        return [Channel("slow0/power", 0.1, self._read, ("slow0",), kinds=(INSTANT_W,))]


class FakeUtilisation:
    """A fake busy fraction: 0.5 always; notes when it was asked (meter clock)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self) -> float:
        self.calls.append(time.monotonic())
        return 0.5


def estimate(fake: FakeUtilisation) -> EstimateSource:
    return EstimateSource(cpu_tdp_w=100.0, idle_fraction=0.3, utilisation=fake)  # 65 W


def timed_sync(meter: EnergyMeter, timeout: float = 1.0) -> tuple[bool, float, float]:
    """(result, seconds it took, meter time of the call)."""
    t = meter.now()
    ok = meter.sync(timeout)
    return ok, meter.now() - t, t


# --------------------------------------------------------------------------- promptly, and close
def test_sync_with_the_estimate_and_a_slow_channel_reaches_the_call() -> None:
    fake, slow = FakeUtilisation(), FakeSlowSource(delay=0.03)
    with EnergyMeter([estimate(fake), slow]) as meter:
        time.sleep(0.3)
        for _ in range(3):
            ok, took, t = timed_sync(meter)
            assert ok
            assert took < 0.03 + 0.15  # one slow read and a little
            # Both readers were read after the call: energy is final up to it, not held.
            assert meter.finalized_until >= t
            assert meter.horizon >= t
            assert fake.calls[-1] >= t and slow.read_times[-1] >= t
            # The estimate's newest interval ends at the sync's read: 65 W up to the call.
            prev = fake.calls[-2]
            assert meter.energy_between(prev, t, provisional=False)["cpu"] == pytest.approx(
                65.0 * (t - prev), rel=1e-3, abs=0.01
            )
            time.sleep(0.07)
    # Hardware is only ever read on the meter thread.
    assert slow.threads and all(th.name == "lightning-watt-meter" for th in slow.threads)
    assert threading.main_thread() not in slow.threads


#: How far power must pass a counter read before its value is placed in time, and how long
#: the first values may wait for the counter clock's first fit.
LOOKAHEAD_S = CounterClock().lookahead_s
WARMUP_S = CounterClock().warmup_s


def test_sync_with_a_replay_reaches_the_newest_recorded_readings() -> None:
    trace = load_trace(bundled_trace(STALL))
    source = ReplaySource(trace, start=20.0)
    buffer_t = [r.t for r in trace.samples if r.kind == BUFFER_W]
    counter = [(r.t, r.value) for r in trace.samples if r.kind == COUNTER_J]
    # A counter pins energy where it shows a new value (the first read of each update).
    changes = [b[0] for a, b in itertools.pairwise(counter) if b[1] > a[1]]
    with EnergyMeter([source]) as meter:
        # Until the counter clock's first fit (at most warmup_s, with power varying) counter
        # values wait to be placed, so energy is not final; after it, sync brings it up.
        time.sleep(WARMUP_S + 0.3)
        for k in range(6):
            time.sleep(0.03 * k)
            ok, took, t = timed_sync(meter)
            assert ok and took < 0.1
            now_trace = source.start + (t - source._opened) * source.speed
            newest_buffer = max(x for x in buffer_t if x <= now_trace)
            covered = max(x for x in changes if x <= newest_buffer - LOOKAHEAD_S)
            # The horizon is the newest buffer sample before the call (20 ms apart); energy
            # is final up to the last counter update those samples cover (a value is placed
            # once power reaches its read, at its update instant, up to 0.1 s before the read).
            assert meter.horizon >= source._meter_time(0, newest_buffer) - 1e-9
            assert meter.horizon >= t - 0.05
            assert meter.finalized_until >= source._meter_time(0, covered) - 0.1 - 1e-9
            # This recording read its counter 0.1-0.49 s apart.
            assert meter.finalized_until >= t - 0.5
    assert meter.errors == {}


def test_sync_with_a_fake_nvml_gpu_brings_the_buffer_to_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fake driver (tests/fake_pynvml.py, no GPU): counter updated every 100 ms and read as
    often, 20 ms buffer samples drained every 0.5 s, a square wave of 450/120 W."""
    fake = fk.FakeNvml(
        [
            fk.FakeGpu(
                "GPU-0a1b2c3d-0000-4000-8000-000000000000",
                fk.SyntheticPower(lambda t: 450.0 if (t % 0.3) < 0.15 else 120.0),
            )
        ],
        clock=fk.RealClock(),
        counter_latency_s=fk.MEASURED_COUNTER_LATENCY_S,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake.module())
    source = NvmlSource([0], uuid_of=fk.uuid_lookup(fk.cuda_uuids(fake.gpus)))
    with EnergyMeter([source]) as meter:
        # Until the counter clock's first fit (at most warmup_s, with power varying) counter
        # values wait to be placed, so energy is not final; after it, sync brings it up.
        time.sleep(WARMUP_S + 0.3)
        for k in range(8):
            time.sleep(0.013 * k)
            ok, took, t = timed_sync(meter)
            assert ok and took < 0.1
            # The newest buffer sample (the mean of the 20 ms before it) and the counter
            # changes it covers: 100 ms apart, or 200 ms where a read saw no update yet.
            assert meter.horizon >= t - 0.05
            assert meter.finalized_until >= t - 0.3
    assert meter.errors == {}
    assert "counter+buffer_W" in meter.methods()["gpu0"]


def test_concurrent_syncs_all_succeed() -> None:
    slow = FakeSlowSource(delay=0.01)
    results: list[bool] = []
    with EnergyMeter([slow]) as meter:
        time.sleep(0.15)
        threads = [
            threading.Thread(target=lambda: results.append(meter.sync(1.0))) for _ in range(4)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join(2.0)
    assert results == [True] * 4


# ------------------------------------------------------------ never stuck, never raises
def test_sync_on_a_meter_that_is_not_running_returns_false_at_once() -> None:
    meter = EnergyMeter([FakeSlowSource()])
    ok, took, _ = timed_sync(meter)
    # "At once": well under the 1 s timeout it would wait, however late a loaded machine
    # runs this thread (one lost scheduler slice is ~10 ms).
    assert not ok and took < 0.5  # never started
    meter.start()
    time.sleep(0.05)
    assert meter.sync(1.0)
    meter.stop()
    ok, took, _ = timed_sync(meter)
    assert not ok and took < 0.5  # stopped
    with EnergyMeter([]) as empty:
        ok, took, _ = timed_sync(empty)
        assert not ok and took < 0.5  # nothing to read


def test_sync_respects_its_timeout_while_a_read_is_stuck() -> None:
    slow = FakeSlowSource(delay=0.4)
    with EnergyMeter([slow]) as meter:
        time.sleep(0.05)  # the first read is in its 0.4 s sleep
        ok, took, _ = timed_sync(meter, timeout=0.1)
        assert not ok
        assert 0.09 <= took < 0.3  # not the stuck read's end, 0.4 s after it began
        ok, took, _ = timed_sync(meter, timeout=0.0)
        assert not ok and took < 0.2  # waiting for the stuck read: 0.3 s more
        slow.delay = 0.0
        # Once the stuck read returns, the thread serves the waiting syncs.
        ok, took, t = timed_sync(meter, timeout=1.0)
        assert ok and took < 0.5
        assert slow.read_times[-1] >= t


def test_a_channel_that_raises_during_sync_does_not_reach_the_caller() -> None:
    fake, slow = FakeUtilisation(), FakeSlowSource()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with EnergyMeter([estimate(fake), slow], max_consecutive_errors=5) as meter:
            time.sleep(0.15)
            slow.fail = True
            ok, took, t = timed_sync(meter)
            assert ok is False and took < 0.1  # a failed read: not a fresh measurement
            assert meter.errors.get("slow0/power", 0) >= 1
            # The other channel was read all the same.
            assert fake.calls[-1] >= t
            assert meter._timeline.device("cpu").finalized_until >= t
            slow.fail = False
            ok, _, t = timed_sync(meter)
            assert ok
            assert meter.finalized_until >= t
    assert any("slow0/power" in str(w.message) for w in caught)


def test_sync_called_on_the_meter_thread_does_not_wait_for_itself() -> None:
    slow = FakeSlowSource()
    inner: list[tuple[bool, float]] = []
    with EnergyMeter([slow]) as meter:

        def call_back() -> None:
            if not inner:
                ok, took, _ = timed_sync(meter, timeout=1.0)
                inner.append((ok, took))

        slow.on_read = call_back
        time.sleep(0.15)
    assert inner and inner[0][0] is False and inner[0][1] < 0.5  # not its 1 s timeout
