"""The counter clock's grid does not depend on where its times sit on the float line: a live
meter's monotonic seconds (~1e5) and its recording's seconds from the start (the same instants,
translated exactly) recover the same update instants, hence the same energies.

Flat power is the hard case: every phase inside the read brackets explains the counter's
increments exactly, so the fit has a whole arc of equally good answers, and float rounding
(~1e-11 at 1e5 s, ~1e-15 near 0) used to pick among them. Before: 0.07 J apart over 6 s here,
0.5 J on a faked 9 s fit (tests/faults/test_stalls.py), 2e-4 of its energy.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lightning_watt.energy.readings import Reading
from lightning_watt.energy.timeline import EnergyTimeline
from lightning_watt.energy.trace import feed_timeline

WATTS = 300.0


def flat_power_run(
    origin: float,
    phase: float,
    seconds: float = 8.0,
    *,
    catch_up: bool = False,
    seed: int | None = None,
) -> list[Reading]:
    """A constant-power GPU as the meter reads it (monotonic times from ``origin``): 20 ms
    buffer samples, a counter updating every 100 ms at ``phase``, read 80 and 124 ms apart in
    turn (the meter's pattern) from 3 ms on, each read up to 0.4 ms late (a thread's wake-up
    jitter; it also keeps reads off the exact grid instants, which no real clock hits).
    ``catch_up``: every third read is followed by another 3-10 ms later (a tight bracket when
    an update falls between them). ``seed`` (default: the phase) draws the jitter."""
    out = [
        Reading(origin + 0.02 * k, "gpu0", "buffer_W", WATTS)
        for k in range(1, int(seconds / 0.02) + 1)
    ]
    rng = random.Random(phase if seed is None else seed)
    t, i = 0.003, 0
    while t <= seconds:
        reads = [t + rng.uniform(0.0, 0.0004)]
        if catch_up and i % 3 == 2:
            reads.append(reads[0] + rng.uniform(0.003, 0.010))
        for read in reads:
            update = math.floor((read - phase) / 0.1) * 0.1 + phase
            out.append(Reading(origin + read, "gpu0", "counter_J", 1000.0 + WATTS * update))
        t += (0.080, 0.124)[i % 2]
        i += 1
    return sorted(out, key=lambda r: r.t)


def fused(readings: list[Reading]) -> EnergyTimeline:
    timeline = EnergyTimeline()
    feed_timeline(timeline, readings)
    return timeline


@given(
    phase=st.floats(0.0, 0.0999),
    origin=st.sampled_from([72971.1238488205, 4096.0371, 1.5e6 + 0.123]),
)
def test_live_and_recorded_times_recover_the_same_grid(phase, origin):
    live = flat_power_run(origin, phase)
    # What the recording holds: times from the meter's start, exact (Sterbenz) as written.
    recorded = [Reading(r.t - origin, r.device, r.kind, r.value) for r in live]
    assert all(r.t + origin == s.t for r, s in zip(recorded, live, strict=True))
    a, b = fused(live), fused(recorded)
    clock_a, clock_b = a.device("gpu0").clock, b.device("gpu0").clock
    assert clock_a.counts == clock_b.counts and clock_a.counts["grid"] > 40
    fit_a, fit_b = clock_a._fit, clock_b._fit
    assert fit_a is not None and fit_b is not None
    assert fit_a[0] == fit_b[0]
    assert fit_a[1] - origin == pytest.approx(fit_b[1], abs=1e-9)
    for t0, t1, rel in [(0.5, 7.5, 0.01), (1.0, 2.0, 0.02), (3.05, 3.15, 0.2)]:
        live_j = a.energy_between(origin + t0, origin + t1)["gpu0"]
        recorded_j = b.energy_between(t0, t1)["gpu0"]
        assert live_j == pytest.approx(recorded_j, rel=1e-9, abs=1e-6)
        # Flat power: each span's watts, within the grid's uncertainty (a few ms of phase,
        # which refits move as brackets narrow it).
        assert recorded_j == pytest.approx(WATTS * (t1 - t0), rel=rel)
