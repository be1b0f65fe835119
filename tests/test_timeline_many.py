"""``energy_at_many``: many times at once give exactly what ``energy_at`` gives one at a time,
on hostile readings, with a provisional tail pending or flushed, through the loop for small
batches and numpy for large ones; bad times are refused clearly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_watt.energy import timeline as timeline_module
from lightning_watt.energy.readings import BUFFER_W, COUNTER_J, INSTANT_W, Reading
from lightning_watt.energy.timeline import VECTOR_MIN, EnergyTimeline


@st.composite
def readings(draw: st.DrawFn) -> list[Reading]:
    """A counter and power readings on one or two devices, with holes, glitches and resets."""
    out: list[Reading] = []
    for device in draw(st.lists(st.sampled_from(["gpu0", "gpu1"]), min_size=1, unique=True)):
        for kind in draw(st.lists(st.sampled_from([COUNTER_J, BUFFER_W, INSTANT_W]), min_size=1)):
            times = sorted(draw(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=60)))
            value = 0.0
            for t in times:
                if kind == COUNTER_J:
                    value += draw(st.one_of(st.floats(0.0, 300.0), st.just(-1e3)))  # a reset
                    out.append(Reading(t, device, kind, value))
                else:
                    watts = draw(st.one_of(st.floats(0.0, 700.0), st.just(math.nan)))
                    out.append(Reading(t, device, kind, watts))
    out.sort(key=lambda r: r.t)
    return out


def _queries(draw: st.DrawFn, tl: EnergyTimeline) -> list[float]:
    """Times anywhere, and exactly on knots (finalized and provisional), repeated, unsorted."""
    times = draw(st.lists(st.floats(-2.0, 12.0), max_size=20))
    times += draw(st.lists(st.sampled_from([-math.inf, math.inf, 0.0]), max_size=2))
    for name in tl.devices:
        ts, _ = tl.device(name).knots()
        if ts:
            times += draw(st.lists(st.sampled_from(ts), max_size=10))
    return draw(st.permutations(times))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), given_readings=readings(), cut=st.floats(0.0, 1.0), flush=st.booleans())
def test_many_times_equal_one_at_a_time(
    data: st.DataObject, given_readings: list[Reading], cut: float, flush: bool
) -> None:
    tl = EnergyTimeline()
    tl.add(given_readings[: int(cut * len(given_readings))])  # the rest still to come: a tail
    tl.add_edges([(2.0, "train"), (2.5, "")], until=3.0)
    if flush:
        tl.flush()
    times = _queries(data.draw, tl)
    for provisional in (True, False):
        expected = [tl.energy_at(t, provisional) for t in times]
        small = tl.energy_at_many(times, provisional)
        # The same times repeated past VECTOR_MIN go through numpy.
        reps = VECTOR_MIN // max(len(times), 1) + 1
        large = tl.energy_at_many(times * reps, provisional)
        as_array = tl.energy_at_many(np.asarray(times * reps, dtype=np.float64), provisional)
        for name in tl.devices:
            want = [e[name] for e in expected]
            # The same operations in the same order: equal floats, not merely close.
            assert small[name] == want
            assert large[name] == want * reps
            assert as_array[name] == want * reps


def test_a_long_run_through_both_paths_matches() -> None:
    """A replayed-like run of 2000 buffer samples with a counter: every millisecond of it."""
    tl = EnergyTimeline()
    rng = np.random.default_rng(3)
    energy = 0.0
    samples = []
    for i in range(2000):
        t = 0.02 * i
        watts = float(rng.uniform(100.0, 600.0))
        samples.append(Reading(t, "gpu0", BUFFER_W, watts))
        energy += watts * 0.02
        if i % 5 == 0:
            samples.append(Reading(t + 0.001, "gpu0", COUNTER_J, energy))
    tl.add(samples[:-300])  # the last 6 s are a provisional tail
    times = [0.001 * k for k in range(40_000)]
    many = tl.energy_at_many(times)["gpu0"]
    assert many == [tl.energy_at(t)["gpu0"] for t in times]
    assert tl.device("gpu0").finalized_until < times[-1]


def test_the_loop_is_used_below_vector_min(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = timeline_module._interp_many

    def counted(ts: object, ys: object, t: np.ndarray) -> np.ndarray:
        calls.append(len(t))
        return real(ts, ys, t)

    monkeypatch.setattr(timeline_module, "_interp_many", counted)
    tl = EnergyTimeline()
    tl.add([Reading(0.02 * i, "gpu0", BUFFER_W, 100.0) for i in range(50)])
    tl.energy_at_many([0.1] * (VECTOR_MIN - 1))
    assert calls == []
    tl.energy_at_many([0.1] * VECTOR_MIN)
    assert calls and sum(calls) >= VECTOR_MIN


def test_bad_times_are_refused_naming_the_argument() -> None:
    tl = EnergyTimeline()
    tl.add([Reading(0.02 * i, "gpu0", BUFFER_W, 100.0) for i in range(5)])
    with pytest.raises(ValueError, match="times"):
        tl.energy_at_many([0.0, math.nan])
    with pytest.raises(ValueError, match="times"):
        tl.energy_at_many(np.array([0.0, np.nan]))
    with pytest.raises(TypeError, match="times"):
        tl.energy_at_many([0.0, "1.0"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="times"):
        tl.energy_at_many(np.array(["1.0"]))
    with pytest.raises(TypeError, match="times"):
        tl.energy_at_many(np.array([True]))
    assert tl.energy_at_many([]) == {"gpu0": []}
    assert EnergyTimeline().energy_at_many([1.0]) == {}
