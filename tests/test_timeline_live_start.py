"""A live meter's timeline and its recording read back start alike: a meter reads the counter
first and drains the power buffer a moment later, so a buffer sample stamped between the
source's opening and the first counter read arrives after that read; read back, both come
in one chunk. Before: the live timeline started at the counter's first value, the recording
at the earlier sample (3e-4 of a healthy 7 s fake fit apart, 0.7 J)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lightning_watt.energy.readings import BUFFER_W, COUNTER_J, Reading
from lightning_watt.energy.timeline import EnergyTimeline
from lightning_watt.energy.trace import feed_timeline
from lightning_watt.testing.trace_cases import bundled_case

WATTS = 300.0
PAIRS = [("gpu0", COUNTER_J), ("gpu0", BUFFER_W)]


def live_and_recorded(
    first_read: float, phase: float, seconds: float = 4.0, history_from: float = 0.0
):
    """Feed a watermarked timeline as a meter does (counter every 80/124 ms from
    ``first_read``, the buffer's 20 ms samples after ``history_from`` drained every 0.5 s
    from right after that read), and a plain one the same readings in time order, as a
    recording is read back."""
    live = EnergyTimeline()
    live.mark_polled(PAIRS, 0.0)  # the readers, declared at the start
    events = [(first_read + 0.0005 + 0.5 * k, "drain") for k in range(int(seconds / 0.5))]
    t, i = first_read, 0
    while t <= seconds:
        events.append((t, "read"))
        t += (0.080, 0.124)[i % 2]
        i += 1
    recorded: list[Reading] = []
    buffer_next = math.floor(history_from / 0.02) + 1
    for when, what in sorted(events):
        if what == "read":
            update = math.floor((when - phase) / 0.1) * 0.1 + phase
            new = [Reading(when, "gpu0", COUNTER_J, 500.0 + WATTS * update)]
        else:
            new = []
            while 0.02 * buffer_next <= when:
                new.append(Reading(0.02 * buffer_next, "gpu0", BUFFER_W, WATTS))
                buffer_next += 1
        live.add(new)
        live.mark_polled([PAIRS[0] if what == "read" else PAIRS[1]], when)
        recorded.extend(new)
    live.flush()
    replay = EnergyTimeline()
    feed_timeline(replay, sorted(recorded, key=lambda r: r.t))
    return live, replay


@given(first_read=st.floats(0.0005, 0.039), phase=st.floats(0.0, 0.0999))
def test_a_buffer_sample_stamped_before_the_first_counter_read_starts_both(first_read, phase):
    live, replay = live_and_recorded(first_read, phase)
    a, b = live.device("gpu0"), replay.device("gpu0")
    assert a.start == b.start
    # The earliest sample (20 ms) starts the energy where it precedes the first read.
    assert a.start == (0.02 if first_read > 0.02 else first_read)
    for t0, t1 in [(0.0, 4.0), (0.0, 0.1), (0.5, 3.5)]:
        assert live.energy_between(t0, t1)["gpu0"] == pytest.approx(
            replay.energy_between(t0, t1)["gpu0"], rel=1e-9, abs=1e-9
        )


def test_a_stalled_start_read_counter_first_is_bridged_and_anchored_alike():
    """The meter's first reads stalled 4 s; the counter is read again before the buffer's
    drain brings its 2.4 s of history: the first value waits for that power, then for the
    clock's first fit (power began over an update before it), as read back."""
    live, replay = live_and_recorded(4.003, 0.0431, seconds=10.0, history_from=1.61)
    a, b = live.device("gpu0"), replay.device("gpu0")
    assert a.start == b.start == pytest.approx(1.62)
    assert a.clock.counts == b.clock.counts and a.clock.counts["grid"] > 40
    for t0, t1 in [(1.0, 10.0), (3.9, 4.2), (4.0, 4.1)]:
        assert live.energy_between(t0, t1)["gpu0"] == pytest.approx(
            replay.energy_between(t0, t1)["gpu0"], rel=1e-9
        )
    # 300 W on every 100 ms around the first value: not its staleness counted twice.
    for k in range(-3, 5):
        t0 = 4.003 + 0.1 * k
        assert live.energy_between(t0, t0 + 0.1)["gpu0"] == pytest.approx(30.0, rel=1e-3)


@given(first_read=st.floats(0.0005, 0.099), phase=st.floats(0.0, 0.0999))
def test_the_first_value_counts_only_what_came_after_its_read(first_read, phase):
    """The first value, at its read time, is the counter as of its last update, up to a
    period earlier: its increment to the second value spans from that update. Before, all of
    it went after the first read: at flat 300 W the run gained up to 30 J (power read before
    that value counted the stale part again) and the stretch up to the second value read up to
    ~1100 W. Now the total is off by what the clock misplaces the second value's update by
    (flat power pins its phase within a few ms), and so is the first window's power. (The
    clock finds the phase of flat power as the 80/124 ms poll sweeps it, within seconds; a
    second value at its read time would be as stale as the first, and nothing is cut.)"""
    for timeline in live_and_recorded(first_read, phase, seconds=8.0):
        start = timeline.device("gpu0").start
        for t in (0.3, 1.0, 3.0):
            assert timeline.energy_between(start, t)["gpu0"] == pytest.approx(
                WATTS * (t - start), abs=WATTS * 0.005
            )
        # Before, up to +270 % (and up to +30 % where the first read came before the first
        # buffer sample ended: that stretch had no power shape, its joules went after it).
        windows = [start + 0.05 * k for k in range(6)]
        for a, b in itertools.pairwise(windows):
            assert timeline.energy_between(a, b)["gpu0"] / (b - a) == pytest.approx(WATTS, rel=0.02)


def test_a_tight_loop_readers_first_value_is_not_counted_twice_on_real_power():
    """h200-square-wave: the buffer's history starts 2.4 s before the first counter read, whose
    value waits for a grid and, the counter being read in a tight loop (brackets only), ends
    at its read time. The 100 ms after that read read 227.7 W (the buffer: 124.8 W): the
    buffer's bridge and the first increment both counted the value's staleness."""
    cols = bundled_case("h200-square-wave")
    timeline = cols.timeline()
    first = min(r.t for r in cols.readings() if r.kind == COUNTER_J)
    buffer = [r for r in cols.readings() if r.kind == BUFFER_W and first < r.t <= first + 0.1]
    measured = sum(r.value for r in buffer) / len(buffer)
    got = timeline.energy_between(first, first + 0.1)["gpu0"] / 0.1
    assert got == pytest.approx(measured, rel=0.02)
