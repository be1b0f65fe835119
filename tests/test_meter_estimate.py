"""EnergyMeter on the CPU estimate: every sub-window of a short run gets the power reported for it.

Regression tests for "short stages on the CPU estimate: the last ~0.25 s of a stage gets 0 J".
The estimate's utilisation (and so its power) is a mean over the interval since its previous
read; a window of the run must get exactly that power over its overlap with each interval,
from the meter's start to its stop, and ``horizon``/``power()`` must say so after the first
poll. ``FakeUtilisation`` is a fake (no hardware): it plays back fixed fractions and notes
when it was asked, on the meter clock. Each test runs the meter for under a second.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable

import pytest

from lightning_watt import EnergyMeter
from lightning_watt.sources import EstimateSource

TDP, IDLE = 100.0, 0.3


def watts(u: float) -> float:
    return TDP * IDLE + u * TDP * (1.0 - IDLE)


class FakeUtilisation:
    """Plays back fixed busy fractions; ``calls`` holds (meter time, fraction) per call."""

    def __init__(self, *fractions: float) -> None:
        self._next = itertools.cycle(fractions)
        self.calls: list[tuple[float, float]] = []

    def __call__(self) -> float:
        u = next(self._next)
        self.calls.append((time.monotonic(), u))
        return u

    def expected(self, a: float, b: float) -> float:
        """Joules over [a, b]: each fraction's power over its interval (since the previous
        call; the first interval reaches back to the start, the last one on to the stop)."""
        total, prev = 0.0, -math.inf
        for i, (t, u) in enumerate(self.calls):
            end = math.inf if i == len(self.calls) - 1 else t
            total += watts(u) * max(0.0, min(b, end) - max(a, prev))
            prev = t
        return total


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    return condition()


def run(seconds: float, fake: FakeUtilisation) -> EnergyMeter:
    source = EstimateSource(cpu_tdp_w=TDP, idle_fraction=IDLE, utilisation=fake)
    with EnergyMeter([source]) as meter:
        time.sleep(seconds)
    return meter


@pytest.mark.parametrize("seconds", [0.3, 0.7])
def test_every_sub_window_gets_the_power_reported_for_it(seconds: float) -> None:
    fake = FakeUtilisation(0.2, 0.9, 0.5, 0.0, 1.0)
    meter = run(seconds, fake)
    start, stop = meter.started_at, meter.stopped_at
    assert start is not None and stop is not None
    assert len(fake.calls) >= 2
    # The stop's own read closes the last interval after the stop was asked for.
    assert fake.calls[-1][0] >= stop
    windows = [(start, stop), (start, start + 0.05), (stop - 0.05, stop), (stop - 0.1, stop)]
    windows += [(start + 0.1 * k, start + 0.1 * (k + 1)) for k in range(int(seconds / 0.1))]
    for a, b in windows:
        got = meter.energy_between(a, b)["cpu"]
        # 50 ms of 30-100 W is 1.5-5 J; the reading is stamped microseconds after the call.
        assert got == pytest.approx(fake.expected(a, b), rel=1e-3, abs=0.02), (a - start, b - a)
    assert meter.total()["cpu"] == pytest.approx(fake.expected(start, stop), rel=1e-3, abs=0.02)


def test_a_short_run_is_final_up_to_its_stop() -> None:
    fake = FakeUtilisation(0.5)
    meter = run(0.7, fake)
    start, stop = meter.started_at, meter.stopped_at
    assert start is not None and stop is not None
    assert meter.finalized_until >= stop
    assert meter.horizon >= stop
    assert meter.gaps(start, stop) == []
    final = meter.energy_between(start, stop, provisional=False)["cpu"]
    assert final == pytest.approx(watts(0.5) * (stop - start), rel=1e-3)
    assert meter.energy_between(stop - 0.2, stop)["cpu"] == pytest.approx(
        watts(0.5) * 0.2, rel=1e-3
    )


class FakeGatedUtilisation(FakeUtilisation):
    """A fake whose every call after the first waits for ``gate``: the second poll comes only
    when the test says, however late a loaded machine runs the meter thread."""

    def __init__(self, *fractions: float) -> None:
        super().__init__(*fractions)
        self.gate = threading.Event()

    def __call__(self) -> float:
        if self.calls:
            self.gate.wait(10.0)
        return super().__call__()


def test_horizon_and_power_within_the_first_poll() -> None:
    fake = FakeGatedUtilisation(0.4, 0.8)
    source = EstimateSource(cpu_tdp_w=TDP, idle_fraction=IDLE, utilisation=fake)
    with EnergyMeter([source]) as meter:
        start = meter.started_at
        assert start is not None
        assert wait_for(lambda: len(fake.calls) >= 1, 5.0)
        first = fake.calls[0][0]
        # Before the second poll (held at the gate), the first read already speaks for the
        # time since the start.
        assert wait_for(lambda: meter.horizon >= first, 5.0)
        assert len(fake.calls) == 1
        assert meter.horizon > start
        assert meter.power()["cpu"] == pytest.approx(watts(0.4))
        assert meter.energy_between(start, meter.horizon)["cpu"] > 0.0
        fake.gate.set()
        assert wait_for(lambda: len(fake.calls) >= 2, 5.0)
        second = fake.calls[1][0]
        assert wait_for(lambda: meter.horizon >= second, 5.0)
        assert meter.power()["cpu"] == pytest.approx(watts(0.8))
        horizon = meter.horizon
        assert meter.energy_between(start, horizon)["cpu"] == pytest.approx(
            fake.expected(start, horizon), rel=1e-3, abs=0.02
        )


def test_the_real_utilisation_reader_leaves_no_zero_tail() -> None:
    """The reported symptom, with this process's own CPU time as the utilisation."""
    source = EstimateSource(cpu_tdp_w=TDP, idle_fraction=IDLE, utilisation="process")
    with EnergyMeter([source]) as meter:
        end = time.monotonic() + 0.45
        while time.monotonic() < end:  # some load of our own
            sum(range(1000))
    start, stop = meter.started_at, meter.stopped_at
    assert start is not None and stop is not None
    assert meter.finalized_until >= stop
    idle = TDP * IDLE
    for a, b in [(start, start + 0.05), (stop - 0.05, stop), (start, stop)]:
        assert meter.energy_between(a, b)["cpu"] >= idle * (b - a) * (1 - 1e-6), (a - start, b)
