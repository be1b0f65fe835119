"""The books' refresher on the meter's thread: it shares the reads' wakes, and a watchdog
thread of its own takes over while the meter's thread is stuck."""

from __future__ import annotations

import threading
import time

import pytest

import lightning_watt.attribution.refresher as refresher_module
from lightning_watt import EnergyMeter
from lightning_watt.attribution.refresher import Refresher
from lightning_watt.energy import meter as meter_module
from lightning_watt.energy.readings import DeviceInfo, Reading
from lightning_watt.sources.base import Channel, EnergySource


class FakeCounter(EnergySource):
    """A FAKE energy counter (300 W) read every ``interval_s``; records when and on which
    thread it was read, and can hang one read (a driver call stuck for ``stall_s``)."""

    name = "fake-counter"

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.reads: list[float] = []
        self.stall_s = 0.0
        self.stall_after = 0

    def open(self, clock):
        self._clock = clock
        self._t0 = clock()

    def devices(self):
        return [DeviceInfo("gpu0", kind="gpu")]

    def channels(self):
        return [Channel("gpu0/counter", self.interval_s, self._read, ("gpu0",))]

    def _read(self):
        if self.stall_s and len(self.reads) == self.stall_after:
            stall, self.stall_s = self.stall_s, 0.0
            time.sleep(stall)
        t = self._clock()
        self.reads.append(t)
        return [Reading(t, "gpu0", "counter_J", 300.0 * (t - self._t0))]


class Calls:
    """Work that notes each call's time and thread."""

    def __init__(self, clock, sleep_s: float = 0.0) -> None:
        self.clock = clock
        self.sleep_s = sleep_s
        self.at: list[tuple[float, str]] = []

    def __call__(self) -> None:
        self.at.append((self.clock(), threading.current_thread().name))
        if self.sleep_s:
            time.sleep(self.sleep_s)


def _meter(source: FakeCounter) -> EnergyMeter:
    return EnergyMeter([source]).start()


def test_the_meter_runs_the_refresher_between_its_reads_sharing_their_wakes(monkeypatch):
    """A refresh due every 75 ms next to reads every 100 ms: the meter's thread runs it after a
    read (up to 30 ms late) rather than waking for it, about once per read instead of ~13
    times a second, and the refresher's own thread never needs to."""
    monkeypatch.setattr(refresher_module, "WATCHDOG_S", 5.0)  # no takeover on a slow machine
    source = FakeCounter(0.1)
    meter = _meter(source)
    work = Calls(meter.now)
    refresher = Refresher(work, interval_s=0.075, host=meter).start()
    try:
        time.sleep(1.0)
    finally:
        refresher.stop()
        meter.stop()
    reads, calls = len(source.reads), len(work.at)
    assert refresher.calls["own"] == 0
    assert {name for _, name in work.at} == {"lightning-watt-meter"}
    assert reads // 2 <= calls <= reads + 1
    # Each call came right after a read, never on a wake of its own.
    for t, _ in work.at:
        before = [r for r in source.reads if r <= t]
        assert before and t - before[-1] < 0.01


class _Due:
    def __init__(self, due: float, interval_s: float) -> None:
        self.due, self.interval_s = due, interval_s

    def next_due(self) -> float:
        return self.due

    def run_on_meter(self) -> None:
        self.due += self.interval_s


@pytest.mark.parametrize(
    ("due", "interval", "read", "wake"),
    [
        (0.175, 0.075, 0.2, 0.2),  # a read 25 ms after: shares its wake
        (0.15, 0.075, 0.2, 0.15),  # 50 ms after: a wake of its own
        (0.19, 0.01, 0.2, 0.19),  # a 10 ms period waits at most 5 ms
        (0.3, 0.1, 0.2, 0.2),  # due after the read: the read first
    ],
)
def test_a_companion_shares_a_reads_wake_within_the_slack(due, interval, read, wake):
    meter = EnergyMeter([])
    meter.add_companion(_Due(due, interval))
    assert meter._wake_at(read) == pytest.approx(wake)


def test_a_companion_runs_early_only_within_half_its_period():
    meter = EnergyMeter([])
    slow, fast = _Due(0.125, 0.1), _Due(0.107, 0.01)
    meter.add_companion(slow)
    meter.add_companion(fast)
    assert meter._companion_due(0.1) is slow  # 25 ms early: within the 30 ms slack
    assert meter._companion_due(0.09) is None  # 35 ms early: not yet
    meter.remove_companion(slow)
    assert meter._companion_due(0.1) is None  # 7 ms early, 5 ms allowed for a 10 ms period
    assert meter._companion_due(0.102) is fast
    assert meter_module._COMPANION_SLACK_S == 0.03


def test_a_stuck_meter_thread_hands_the_refreshes_to_the_watchdog_and_takes_them_back(
    monkeypatch,
):
    """A read stuck in the driver for 1.2 s: log rows must not freeze meanwhile. The
    refresher's own thread refreshes every interval once the meter's thread went WATCHDOG_S
    without, and the meter's thread takes over again after the read returns."""
    monkeypatch.setattr(refresher_module, "WATCHDOG_S", 0.2)
    source = FakeCounter(0.1)
    source.stall_s, source.stall_after = 1.2, 3
    meter = _meter(source)
    work = Calls(meter.now)
    refresher = Refresher(work, interval_s=0.05, host=meter).start()
    try:
        deadline = time.monotonic() + 5.0
        while len(source.reads) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        refresher.stop()
        meter.stop()
    stall_start, stall_end = source.reads[2], source.reads[3]
    assert stall_end - stall_start >= 1.2
    during = [name for t, name in work.at if stall_start + 0.3 < t < stall_end]
    # Every 50 ms after the first 0.2 s: ~18 calls; at least a few even on a loaded machine.
    assert len(during) >= 4 and set(during) == {"lightning-watt-books"}
    after = [name for t, name in work.at if t > stall_end + 0.3]
    assert after and after[-1] == "lightning-watt-meter"
    assert refresher.calls["own"] >= 4 and refresher.calls["host"] >= 2


def test_stop_waits_for_a_refresh_on_the_meter_thread_and_none_follows():
    source = FakeCounter(0.1)
    meter = _meter(source)
    work = Calls(meter.now, sleep_s=0.15)
    refresher = Refresher(work, interval_s=0.02, host=meter).start()
    try:
        deadline = time.monotonic() + 5.0
        while not work.at and time.monotonic() < deadline:
            time.sleep(0.005)
        refresher.stop()
        stopped = meter.now()
        n = len(work.at)
        time.sleep(0.3)
    finally:
        meter.stop()
    assert n >= 1 and work.at[-1][0] + 0.15 <= stopped + 1e-3  # the call in progress ended
    assert len(work.at) == n and not refresher.running


def test_a_call_skipped_for_the_other_thread_is_not_due_again_at_once():
    """The meter's thread must not spin on a refresh the watchdog is making."""
    meter = EnergyMeter([])
    refresher = Refresher(lambda: None, interval_s=0.05, host=meter)
    assert refresher._calling.acquire(blocking=False)  # the other thread's call
    try:
        refresher.run_on_meter()
        assert refresher.next_due() >= meter.now() + 0.04
        assert refresher.calls == {"host": 0, "own": 0}
    finally:
        refresher._calling.release()
