"""EnergyMeter on replayed real traces and on fake sources: accuracy, failures, recording.

The sources named ``Fake*`` here are fakes (no hardware): they exist to make channels fail,
vanish or report on demand. Each test that runs the meter keeps to 1-3 s of wall time.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from lightning_watt import EnergyMeter, EnergySource, ReplaySource, SourceUnavailable
from lightning_watt.energy.readings import (
    BUFFER_W,
    COUNTER_J,
    INSTANT_W,
    USAGE_W,
    DeviceInfo,
    Reading,
)
from lightning_watt.energy.timeline import EnergyTimeline
from lightning_watt.energy.trace import Trace, bundled_trace, load_trace
from lightning_watt.sources.base import Channel, ChannelLost, Clock

STALL = "h200-mlp-stall"


@functools.cache
def trace(name: str) -> Trace:
    return load_trace(bundled_trace(name))


@functools.cache
def full_timeline(name: str) -> EnergyTimeline:
    return trace(name).timeline()


def to_trace_time(source: ReplaySource, meter_t: float) -> float:
    """Where the replay was at meter time ``meter_t`` (no loop)."""
    return source.start + (meter_t - source._opened) * source.speed


# --------------------------------------------------------------------------- fakes
class FakeFlakySource(EnergySource):
    """A fake (no hardware): ``fake0`` at a constant 100 W through a primary channel that fails
    after ``ok_reads`` reads, with a fallback channel that always works."""

    name = "fake-flaky"

    def __init__(self, ok_reads: int = 3, error: Exception | None = None) -> None:
        self.ok_reads = ok_reads
        self.error = error or RuntimeError("fake hardware error")
        self.primary_calls = 0
        self.fallback_calls = 0
        self._clock: Clock = time.monotonic

    def open(self, clock: Clock) -> None:
        self._clock = clock

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo("fake0", label="a fake device")]

    def _primary(self) -> list[Reading]:
        self.primary_calls += 1
        if self.primary_calls > self.ok_reads:
            raise self.error
        return [Reading(self._clock(), "fake0", INSTANT_W, 100.0)]

    def _fallback(self) -> list[Reading]:
        self.fallback_calls += 1
        return [Reading(self._clock(), "fake0", USAGE_W, 100.0)]

    def channels(self) -> list[Channel]:
        fallback = Channel("fake0/fallback", 0.01, self._fallback, ("fake0",))
        return [Channel("fake0/primary", 0.01, self._primary, ("fake0",), fallback=fallback)]


class FakeMissingSource(EnergySource):
    """A fake (no hardware) whose hardware is never there."""

    name = "fake-missing"

    def open(self, clock: Clock) -> None:
        raise SourceUnavailable("fake: no such hardware on this machine")

    def devices(self) -> list[DeviceInfo]:  # pragma: no cover - never opened
        return []

    def channels(self) -> list[Channel]:  # pragma: no cover - never opened
        return []


class FakeSpySource(EnergySource):
    """A fake wrapper that passes another source through and keeps every reading it served."""

    def __init__(self, inner: EnergySource) -> None:
        self.inner = inner
        self.name = inner.name
        self.served: list[Reading] = []

    def open(self, clock: Clock) -> None:
        self.inner.open(clock)

    def devices(self) -> list[DeviceInfo]:
        return self.inner.devices()

    def describe(self) -> dict[str, str]:
        return self.inner.describe()

    def _spy(self, read: Callable[[], list[Reading]]) -> Callable[[], list[Reading]]:
        def wrapped() -> list[Reading]:
            out = list(read())
            self.served.extend(out)
            return out

        return wrapped

    def channels(self) -> list[Channel]:
        return [
            Channel(c.name, c.interval_s, self._spy(c.read), c.devices, describe=c.describe)
            for c in self.inner.channels()
        ]


# --------------------------------------------------------------------------- replay accuracy
def test_replayed_energy_matches_the_trace_timeline(tmp_path: Path) -> None:
    source = ReplaySource(bundled_trace(STALL), start=20.0)
    with EnergyMeter([source], record=str(tmp_path / "live")) as meter:
        assert meter.running
        time.sleep(2.5)
        live = meter.total()["gpu0"]
        assert live > 0.0
    assert not meter.running
    full = full_timeline(STALL)
    start = meter.started_at
    assert start is not None
    end = meter.finalized_until
    assert end - start > 2.0
    windows = [(start, end), (start + 0.3, end - 0.3)]
    windows += [(start + 0.5 * k, start + 0.5 * (k + 1)) for k in range(4)]
    # The live energy is what its own recording gives once fused: same readings, same result.
    recorded = load_trace(tmp_path / "live").timeline()
    for lo, hi in windows:
        got = meter.energy_between(lo, hi)["gpu0"]
        again = recorded.energy_between(lo - start, hi - start)["gpu0"]
        assert got == pytest.approx(again, rel=1e-6, abs=1e-6)
    # Against the whole recording it replays: 2.5 s of readings are too few to recover the
    # counter's update clock that the whole recording recovers, so a counter value may sit up
    # to one 100 ms update apart in the two, at each end of a window.
    for lo, hi in windows:
        got = meter.energy_between(lo, hi)["gpu0"]
        expected = full.energy_between(to_trace_time(source, lo), to_trace_time(source, hi))
        assert abs(got - expected["gpu0"]) <= 0.2 * meter.peak_power()["gpu0"]
    # The live total ends at the newest reading (the buffer is drained every 0.5 s, later on a
    # loaded machine); after stop() the last read brings it up to the stop. At 2.5 s it is all
    # provisional (the clock's first fit waits up to 3 s): counter values sit at their read
    # times and the newest power is scaled by the calibration so far, so it may exceed the
    # same span's final energy by at most one counter update's joules.
    one_update_J = meter.peak_power()["gpu0"] * 0.1
    assert 0.5 * meter.total()["gpu0"] <= live <= meter.total()["gpu0"] + one_update_J
    # The latest power is a real H200 reading, and the counter shaped by the buffer was used.
    assert 50.0 < meter.power()["gpu0"] < 800.0
    assert meter.peak_power()["gpu0"] >= meter.power()["gpu0"]
    assert "counter+buffer_W" in meter.describe()["gpu0"]
    assert meter.errors == {}
    assert meter.gaps(start, end) == []


def test_loop_at_double_speed_keeps_energy_consistent(tmp_path: Path) -> None:
    tr = trace(STALL)
    last = tr.span[1]
    start = last - 1.5
    source = ReplaySource(bundled_trace(STALL), start=start, speed=2.0, loop=True)
    lap = (last - start) / source.speed  # meter seconds per lap
    with EnergyMeter([source], record=str(tmp_path / "loop")) as meter:
        time.sleep(2.2)  # almost three laps
    device = meter._timeline.device("gpu0")
    assert device.resets == 0  # the loop carries the counter on
    counter = [r.value for r in load_trace(tmp_path / "loop").samples if r.kind == COUNTER_J]
    assert len(counter) > 30
    assert all(b >= a for a, b in itertools.pairwise(counter))
    # Each lap is the recorded span again, squeezed into half the time: its energy / speed.
    # Squeezed, the counter updates every 50 ms, which the counter clock (rightly) does not
    # fit: its values stay at their read times, so compare with the recording fused so too.
    full = tr.timeline(recover_clock=False)
    t0 = source._opened
    expected = 0.0
    a, b = meter.started_at, device.finalized_until
    assert a is not None and b - a > 2 * lap
    k = 0
    while t0 + k * lap < b:
        lo, hi = max(a, t0 + k * lap), min(b, t0 + (k + 1) * lap)
        if hi > lo:
            seg = full.energy_between(
                start + (lo - t0 - k * lap) * source.speed,
                start + (hi - t0 - k * lap) * source.speed,
            )
            expected += seg["gpu0"] / source.speed
        k += 1
    # Each lap adds exactly the recording's energy over [start, end] (was +3 % before the
    # replay measured its counter from its value at ``start`` and to its value at ``end``).
    assert meter.energy_between(a, b)["gpu0"] == pytest.approx(expected, rel=0.005)
    # No window around a seam is empty or negative.
    for seam in (t0 + lap, t0 + 2 * lap):
        assert meter.energy_between(seam - 0.1, seam + 0.1)["gpu0"] > 0.1 * 50.0


def test_a_replay_never_serves_its_counter_stepping_back_from_the_first_read() -> None:
    """At the fit's start of h200-mlp-stall, the first recorded read after it shows an update
    from before it: counted from the fused position at the start (fresher than any read), it
    came out at -5.3 J right after the first read's 0 J, which the timeline took for a reset
    and bridged with power, counting the energy since that update twice (+14 % on a 0.5 s
    replay). A live counter never steps back: nor does the replay."""
    source = ReplaySource.of_fit(STALL, kinds=[COUNTER_J, BUFFER_W])  # as NVML reads
    now = [1000.0]
    source.open(lambda: now[0])
    (channel,) = [c for c in source.channels() if c.kinds == (COUNTER_J,)]
    served = []
    for _ in range(40):
        now[0] += 0.05
        served += [r.value for r in channel.read()]
    assert served[0] == 0.0 and len(served) > 15
    assert all(b >= a for a, b in itertools.pairwise(served)), served[:4]


@pytest.mark.parametrize("name", ["h200-mlp-stall", "h100-mlp", "h200-square-wave"])
def test_a_looping_replays_counter_never_steps_back_at_a_seam(name: str) -> None:
    """The first read of a new lap may show an update from before the lap's start, staler than
    the last lap's last read was at its end: served as recorded, the counter stepped back by
    up to an update's joules at 36 of 60 seams tried (the timeline takes that for a reset).
    It holds instead (each lap still adds the recording's energy over the lap: see
    test_loop_at_double_speed_keeps_energy_consistent)."""
    a, b = trace(name).span
    now = [0.0]  # the meter clock, moved by hand
    for k in range(20):
        start = a + 1.0 + (b - a - 3.0) * k / 20
        source = ReplaySource(
            bundled_trace(name), start=start, loop=True, kinds=[COUNTER_J, BUFFER_W]
        )
        now[0] = 50.0
        source.open(lambda: now[0])
        (channel,) = [c for c in source.channels() if c.kinds == (COUNTER_J,)]
        served: list[float] = []
        for _ in range(400):  # 400 reads over the trace's span: laps of every length
            now[0] += 0.0025 * (b - a)
            served += [r.value for r in channel.read()]
        assert all(y >= x for x, y in itertools.pairwise(served)), (start, served[:3])
        assert served[-1] > served[len(served) // 2] > 0.0  # it carries on over the laps


# --------------------------------------------------------------------------- failures
def test_a_failing_channel_is_counted_warned_once_gapped_and_replaced() -> None:
    fake = FakeFlakySource(ok_reads=3)
    meter = EnergyMeter([fake], max_consecutive_errors=20)
    with pytest.warns(RuntimeWarning) as record, meter:
        time.sleep(0.8)
        # The training thread only ever sees numbers.
        assert meter.total()["fake0"] >= 0.0
    ours = [str(w.message) for w in record if "fake0/primary" in str(w.message)]
    # 20 failures, two warnings: the first says it retries, the last that it gave up.
    assert len(ours) == 2
    assert "retrying" in ours[0] and "switching to fake0/fallback" not in ours[0]
    assert "switching to fake0/fallback" in ours[1]
    assert meter.errors == {"fake0/primary": 20}
    assert fake.primary_calls == 3 + 20  # given up after 20 in a row: never called again
    assert fake.fallback_calls > 10  # the fallback took over
    # One gap for the whole failing stretch (not one per failure), from the last good read.
    gaps = [g for g in meter.gaps() if g.reason.startswith("fake0/primary: fake hardware error")]
    assert len(gaps) == 1
    gap = gaps[0]
    assert 0.15 < gap.duration < 0.8  # 20 failures 10 ms apart, inside a 0.8 s run
    # After the gap, the fallback measures what the primary did.
    stop = meter._stopped_at
    assert stop is not None
    assert meter.energy_between(gap.end, stop)["fake0"] == pytest.approx(
        100.0 * (stop - gap.end), rel=0.1
    )


def test_a_lost_channel_switches_to_its_fallback_at_once() -> None:
    fake = FakeFlakySource(ok_reads=2, error=ChannelLost("fake GPU fell off the bus"))
    with (
        pytest.warns(RuntimeWarning, match="switching to fake0/fallback"),
        EnergyMeter([fake]) as meter,
    ):
        time.sleep(0.3)
    assert meter.errors == {"fake0/primary": 1}
    assert fake.primary_calls == 3
    assert fake.fallback_calls > 5


def test_an_unavailable_source_is_listed_and_the_others_measure() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with EnergyMeter([FakeMissingSource(), FakeFlakySource(ok_reads=10**6)]) as meter:
            time.sleep(0.3)
    assert [str(w.message) for w in caught] == []  # an unavailable source is no reason to warn
    assert meter.unavailable == {"fake-missing": "fake: no such hardware on this machine"}
    assert [d.name for d in meter.devices] == ["fake0"]
    assert meter.total()["fake0"] > 0.0
    assert meter.errors == {}


class FakeLateSource(EnergySource):
    """A fake (no hardware): ``fake0`` at a constant 200 W whose reader delivers nothing for
    the first ``late_s`` seconds after it opens (a read stuck at the start), then a reading
    every 50 ms."""

    name = "fake-late"

    def __init__(self, late_s: float) -> None:
        self.late_s = late_s
        self._clock: Clock = time.monotonic
        self._opened = 0.0
        self.first_t: float | None = None  # the first reading's time (meter clock)

    def open(self, clock: Clock) -> None:
        self._clock = clock
        self._opened = clock()

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo("fake0", label="a fake device")]

    def _read(self) -> list[Reading]:
        now = self._clock()
        if now - self._opened < self.late_s:
            return []
        if self.first_t is None:
            self.first_t = now
        return [Reading(now, "fake0", INSTANT_W, 200.0)]

    def channels(self) -> list[Channel]:
        return [Channel("fake0/late", 0.05, self._read, ("fake0",))]


def test_a_device_measured_only_after_a_stall_at_the_start_is_estimated_there() -> None:
    """No reading for the first 1.2 s: that span is unmeasured, estimated at the power measured
    after it, reported with its reason and warned about once, as a stall that lasts to the end
    is. Before: it counted as zero joules (and nothing said so)."""
    late = FakeLateSource(late_s=1.2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meter = EnergyMeter([late]).start()
        time.sleep(2.6)
        meter.stop()
    start, end = meter.started_at, meter.stopped_at
    assert start is not None and end is not None and late.first_t is not None
    total = meter.energy_between(start, end)["fake0"]
    assert total == pytest.approx(200.0 * (end - start), rel=0.03)
    (gone,) = meter.unmeasured().values()
    # Up to the first reading, however late a loaded machine ran the read after 1.2 s.
    assert 1.2 <= float(gone["seconds"]) == pytest.approx(late.first_t - start, abs=1e-6)
    assert gone["energy_J"] == pytest.approx(200.0 * float(gone["seconds"]), rel=1e-9)
    assert "first" in str(gone["reason"]) and "after" in str(gone["basis"])
    said = [str(w.message) for w in caught if "was not measured at the start" in str(w.message)]
    assert len(said) == 1 and "200.0 W" in said[0]
    assert any("unmeasured" in g.reason and g.start == start for g in meter.gaps())
    # Additive and the same through every way of asking, inside the estimated span too.
    times = [start, start + 0.5, start + float(gone["seconds"]), end]
    at = meter.energy_at_many(times)
    for t, e in zip(times, at, strict=True):
        assert e == meter.energy_at(t)
    for a, b in itertools.pairwise(times):
        assert meter.energy_between(a, b)["fake0"] == pytest.approx(
            at[times.index(b)]["fake0"] - at[times.index(a)]["fake0"], abs=1e-9
        )
    assert at[1]["fake0"] == pytest.approx(200.0 * 0.5, rel=1e-9)
    assert meter.unmeasured(start + float(gone["seconds"]), end) == {}
    assert meter.finalized_until > start + 1.2


def test_a_device_measured_from_the_start_has_no_estimate() -> None:
    meter = EnergyMeter([FakeLateSource(late_s=0.0)]).start()
    time.sleep(1.5)
    meter.stop()
    assert meter.unmeasured() == {}
    assert meter.finalized_until > meter.started_at + 1.0


def test_a_device_never_measured_is_one_unmeasured_span() -> None:
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        meter = EnergyMeter([FakeLateSource(late_s=100.0)]).start()
        time.sleep(0.5)
        meter.stop()
    (gone,) = meter.unmeasured().values()
    assert gone["seconds"] == pytest.approx(meter.stopped_at - meter.started_at, abs=1e-6)
    assert "first" not in str(gone["reason"])  # the end's estimate, not a late start too


# --------------------------------------------------------------------------- lifecycle
def test_start_stop_and_context_manager() -> None:
    meter = EnergyMeter([FakeFlakySource(ok_reads=10**6)])
    assert meter.total() == {}
    assert not meter.running
    meter.start()
    with pytest.raises(RuntimeError, match="already started"):
        meter.start()
    time.sleep(0.2)
    meter.stop()
    meter.stop()  # harmless
    total = meter.total()
    assert total["fake0"] > 0.0
    time.sleep(0.05)
    assert meter.total() == total  # stopped: nothing more accrues
    assert meter.power() == {"fake0": 100.0}


@pytest.mark.parametrize(
    "make",
    [
        lambda: Channel("c", 0.0, list, ("gpu0",)),
        lambda: Channel("c", -0.1, list, ("gpu0",)),
        lambda: ReplaySource(bundled_trace(STALL), speed=0.0),
        lambda: ReplaySource(bundled_trace(STALL), speed=-2.0),
        lambda: ReplaySource(bundled_trace(STALL), speed=math.nan),
        lambda: ReplaySource(bundled_trace(STALL), devices={"gpu7"}),
        lambda: ReplaySource(bundled_trace(STALL), devices={"gpu7": "gpu0"}),
        lambda: ReplaySource(bundled_trace(STALL), start=-1.0),
        lambda: ReplaySource(bundled_trace(STALL), start=1e6),
        lambda: ReplaySource(bundled_trace(STALL), kinds={"volts"}),
        lambda: EnergyMeter([], max_consecutive_errors=0),
        lambda: EnergyMeter([], max_gap=-1.0),
        lambda: EnergyMeter([], max_gap=0.0),
        lambda: EnergyMeter([object()]),  # type: ignore[list-item]
    ],
)
def test_invalid_arguments_fail_at_construction(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


# --------------------------------------------------------------------------- recording
def test_recording_reads_back_as_the_same_readings(tmp_path: Path) -> None:
    # A meter clock running 4x real time: 2 s of wall time records 8 s, longer than the
    # recorder's 3 s reorder hold (meter clock), so readings are written both while held and at
    # the end. (At 10x the hold was 0.3 s of wall time: a loaded machine delays the meter
    # thread that much.) The writer's own 2 s flush is tested in test_trace_partial.
    origin = time.monotonic()

    def fast_clock() -> float:
        return 4.0 * (time.monotonic() - origin)

    spy = FakeSpySource(ReplaySource(bundled_trace(STALL), start=10.0))
    prefix = str(tmp_path / "rec")
    with EnergyMeter([spy], record=prefix, clock=fast_clock) as meter:
        time.sleep(2.0)
    recorded = load_trace(prefix)  # sorted by time, or this raises
    assert meter.started_at is not None
    served = [r._replace(t=r.t - meter.started_at) for r in spy.served]
    assert len(served) > 1000

    def key(r: Reading) -> tuple[float, str, str, float]:
        return (r.t, r.device, r.kind, r.value)

    assert sorted(recorded.samples, key=key) == sorted(served, key=key)
    assert recorded.meta["format"] == "watt-trace v1.1"  # v1 with the compact steps layout
    assert not recorded.partial
    assert recorded.meta["devices"]["gpu0"]["uuid"].startswith("replay:")
    assert set(recorded.kinds) == {"average_W", "buffer_W", "counter_J", "instant_W"}
