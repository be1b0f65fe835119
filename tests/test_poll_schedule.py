"""The counter's poll schedule: gaps that alternate around the period, so brackets sweep the
counter's update phase (``lightning_watt.energy.bracket_fit``) without reading more often.

``PatternSource`` is a fake (no hardware): one device at 50 W whose channel cycles through a
pattern of intervals and notes when it was read. About a second of wall time.
"""

from __future__ import annotations

import itertools
import statistics
import time

import pytest

from lightning_watt import EnergyMeter
from lightning_watt.energy.readings import INSTANT_W, DeviceInfo, Reading
from lightning_watt.sources.base import Channel, Clock, EnergySource
from lightning_watt.sources.nvml import COUNTER_INTERVAL_S, COUNTER_PATTERN_S


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
