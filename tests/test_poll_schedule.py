"""The counter's poll schedule: gaps that alternate around the period, so brackets sweep the
counter's update phase (``lightning_watt.energy.bracket_fit``) without reading more often, and
what that buys the counter clock where there is no power buffer.

``PatternSource`` is a fake (no hardware): one device at 50 W whose channel cycles through a
pattern of intervals and notes when it was read. About a second of wall time.
"""

from __future__ import annotations

import itertools
import statistics
import time

import pytest

from lightning_watt import EnergyMeter
from lightning_watt.energy.readings import COUNTER_J, INSTANT_W, DeviceInfo, Reading
from lightning_watt.energy.timeline import EnergyTimeline
from lightning_watt.energy.trace import feed_timeline
from lightning_watt.sources.base import Channel, Clock, EnergySource
from lightning_watt.sources.nvml import COUNTER_INTERVAL_S, COUNTER_PATTERN_S
from lightning_watt.testing.polling import meter_reads, tight_counter_run


class PatternSource(EnergySource):
    """A fake: ``pat0`` at 50 W, read 30 and 90 ms apart in turn."""

    name = "fake-pattern"

    def __init__(self) -> None:
        self.read_times: list[float] = []
        self._clock: Clock = time.monotonic

    def open(self, clock: Clock) -> None:
        self._clock = clock

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo("pat0", label="a fake device")]

    def _read(self) -> list[Reading]:
        self.read_times.append(self._clock())
        return [Reading(self._clock(), "pat0", INSTANT_W, 50.0)]

    def channels(self) -> list[Channel]:
        return [
            Channel(
                "pat0/power", 0.06, self._read, ("pat0",), kinds=(INSTANT_W,), pattern=(0.03, 0.09)
            )
        ]


def test_the_meter_cycles_through_a_channels_pattern() -> None:
    source = PatternSource()
    with EnergyMeter([source]):
        time.sleep(1.0)
    gaps = [b - a for a, b in zip(source.read_times, source.read_times[1:-1], strict=False)]
    assert len(gaps) >= 8
    # Which of two consecutive gaps is the short one depends on when the schedule started;
    # the shorter of each pair and the longer one keep to the pattern (a loaded machine
    # wakes the thread a few ms late).
    pairs = list(zip(gaps[::2], gaps[1::2], strict=False))
    short = statistics.median(min(p) for p in pairs)
    long = statistics.median(max(p) for p in pairs)
    assert short == pytest.approx(0.03, abs=0.015) and long == pytest.approx(0.09, abs=0.015)
    # Alternating, not two long gaps then two short ones.
    assert sum((a < b) != (c < d) for (a, b), (c, d) in itertools.pairwise(pairs)) <= 1


def test_the_counter_is_not_read_more_often_than_its_nominal_period() -> None:
    assert statistics.mean(COUNTER_PATTERN_S) >= COUNTER_INTERVAL_S
    # Each short gap is under the period (a bracket that can miss the update), and the two
    # differ from the period by different amounts, so the phase sweeps.
    assert min(COUNTER_PATTERN_S) < COUNTER_INTERVAL_S < max(COUNTER_PATTERN_S)


def test_a_pattern_must_hold_positive_intervals() -> None:
    with pytest.raises(ValueError, match="pattern"):
        Channel("x", 0.1, list, ("x",), pattern=(0.05, 0.0))


@pytest.mark.parametrize("seed", [0, 3])
def test_the_meters_schedule_lets_the_clock_recover_without_a_buffer(seed: int) -> None:
    """Exact truth: a synthetic counter (100 ms grid, 2 missed updates, 1 ms stamp jitter) read
    every 3 ms, thinned as the meter polls; power fields only, no buffer."""
    run, updates = tight_counter_run(seed)
    a, b = run.trace.fit_window
    others = [r for r in run.trace.samples if r.kind != COUNTER_J]

    def median_error(schedule: tuple[float, ...], recover: bool) -> float:
        reads = meter_reads(run.trace.samples, schedule)
        tl = EnergyTimeline(recover_clock=recover)
        feed_timeline(tl, sorted(reads + others, key=lambda r: r.t))
        assert tl.energy_between(a, b)["gpu0"] == pytest.approx(run.true_energy(a, b), rel=5e-3)
        return statistics.median(
            abs(tl.energy_between(x, y)["gpu0"] / run.true_energy(x, y) - 1)
            for x, y in itertools.pairwise(updates)
        )

    # Measured (6 seeds): 0.06 % recovered; at read times 7.7 % (staleness sweeping 0-100 ms),
    # and 1.2 % for a poll locked at 100 ms, which leaves the clock unrecoverable.
    recovered = median_error(COUNTER_PATTERN_S, recover=True)
    assert recovered < 0.005
    assert recovered < 0.5 * median_error((COUNTER_INTERVAL_S,), recover=False)
    assert median_error(COUNTER_PATTERN_S, recover=False) > 5 * recovered


def test_meter_reads_rejects_an_empty_or_non_positive_schedule() -> None:
    with pytest.raises(ValueError, match="schedule"):
        meter_reads([], ())
    with pytest.raises(ValueError, match="schedule"):
        meter_reads([], (0.1, -0.02))
