"""Properties of EnergyTimeline under hostile input: random readings (NaN, infinities, negative
power, resets, holes), random chunking, step edges and queries. No exception, E(t) monotone,
energies additive and finite; bad input dropped and counted; bad queries refused clearly."""

from __future__ import annotations

import itertools
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_watt.energy.readings import BUFFER_W, COUNTER_J, INSTANT_W, KINDS, Reading
from lightning_watt.energy.timeline import EnergyTimeline

VALUES = st.one_of(
    st.floats(0.0, 1000.0),
    st.just(math.nan),
    st.just(math.inf),
    st.just(-math.inf),
    st.floats(-500.0, -1e-3),
    st.just(0.0),
)


@st.composite
def hostile_readings(draw: st.DrawFn) -> list[Reading]:
    out: list[Reading] = []
    for device in draw(st.lists(st.sampled_from(["gpu0", "gpu1"]), min_size=1, unique=True)):
        for kind in draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=3)):
            times = sorted(
                draw(st.lists(st.floats(0.0, 20.0), min_size=1, max_size=40, unique=True))
            )
            if draw(st.booleans()):  # a hole in the middle
                times = [t for t in times if not 6.0 <= t < 11.0]
            value = 1000.0
            for t in times:
                if kind == COUNTER_J:
                    value += draw(st.one_of(st.floats(0.0, 200.0), st.just(-5e3), st.just(0.0)))
                    v = value if draw(st.integers(0, 20)) else draw(VALUES)
                else:
                    v = draw(VALUES)
                bad_t = draw(st.integers(0, 30)) == 0
                out.append(Reading(math.nan if bad_t else t, device, kind, v))
    out.sort(key=lambda r: (math.isnan(r.t), r.t))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    readings=hostile_readings(),
    chunk=st.integers(1, 60),
    points=st.lists(st.floats(-5.0, 25.0), min_size=4, max_size=4),
    with_edges=st.booleans(),
)
def test_hostile_readings_never_raise_and_energy_stays_monotone(
    readings: list[Reading], chunk: int, points: list[float], with_edges: bool
) -> None:
    tl = EnergyTimeline()
    if with_edges:
        edges = [(0.5 * k, "train" if k % 2 else "") for k in range(40)]
        tl.add_edges(edges[:10], until=5.0)
    for i in range(0, len(readings), chunk):
        tl.add(readings[i : i + chunk])
        if with_edges and i == chunk:
            tl.add_edges(edges[10:], until=math.inf)
        _check(tl, sorted(points), provisional=True)
    tl.flush()
    _check(tl, sorted(points), provisional=True)
    _check(tl, sorted(points), provisional=False)
    bad = sum(
        1
        for r in readings
        if not (math.isfinite(r.t) and math.isfinite(r.value))
        or (r.kind != COUNTER_J and r.value < 0)
    )
    assert sum(sum(k.values()) for k in tl.rejected().values()) == bad


def _check(tl: EnergyTimeline, points: list[float], provisional: bool) -> None:
    values = [tl.energy_at(t, provisional) for t in points]
    for device in tl.devices:
        series = [v[device] for v in values]
        assert all(math.isfinite(x) for x in series)
        assert all(b >= a for a, b in itertools.pairwise(series)), series
    a, b, c = points[:3]
    ab, bc, ac = (tl.energy_between(x, y, provisional) for x, y in ((a, b), (b, c), (a, c)))
    for device in ac:
        assert ac[device] == pytest.approx(ab[device] + bc[device], rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    ("kind", "t", "value"),
    [
        (INSTANT_W, 1.0, math.nan),
        (INSTANT_W, 1.0, math.inf),
        (BUFFER_W, 1.0, -100.0),
        (INSTANT_W, math.nan, 100.0),
        (COUNTER_J, 1.0, math.nan),
        (COUNTER_J, math.inf, 5.0),
    ],
)
def test_unusable_readings_are_dropped_and_counted(kind: str, t: float, value: float) -> None:
    tl = EnergyTimeline()
    tl.add([Reading(0.0, "gpu0", INSTANT_W, 100.0), Reading(t, "gpu0", kind, value)])
    tl.add([Reading(2.0, "gpu0", INSTANT_W, 100.0)])
    tl.flush()
    assert tl.rejected() == {"gpu0": {kind: 1}}
    assert tl.energy_between(0.0, 2.0)["gpu0"] == pytest.approx(200.0)
    assert "dropped unusable readings" in tl.notes()["gpu0"][-1]


def test_queries_refuse_nan_times_and_name_the_argument() -> None:
    tl = EnergyTimeline()
    tl.add([Reading(0.0, "gpu0", INSTANT_W, 100.0), Reading(2.0, "gpu0", INSTANT_W, 100.0)])
    with pytest.raises(ValueError, match="t0"):
        tl.energy_between(math.nan, 1.0)
    with pytest.raises(ValueError, match="t1"):
        tl.energy_between(0.0, math.nan)
    with pytest.raises(ValueError, match=r"^t "):
        tl.energy_at(math.nan)
    with pytest.raises(TypeError, match="t0"):
        tl.energy_between("0", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="until"):
        tl.add_edges([], until=math.nan)
    with pytest.raises(TypeError, match="recover_clock"):
        EnergyTimeline(recover_clock="yes")  # type: ignore[arg-type]
    # Infinite bounds mean "everything".
    assert tl.energy_between(-math.inf, math.inf)["gpu0"] == pytest.approx(200.0)


def _backlog(seconds: float) -> list[Reading]:
    """A live meter's readings for ``seconds``: counter every ~102 ms, buffer every 20 ms."""
    out = [
        Reading(0.1023 * i, "gpu0", COUNTER_J, 40.0 * i + 10.0 * (i % 3))
        for i in range(int(seconds / 0.1023))
    ]
    out += [
        Reading(0.02 * i, "gpu0", BUFFER_W, 300.0 + 200.0 * ((i // 7) % 2))
        for i in range(int(seconds / 0.02))
    ]
    out.sort(key=lambda r: r.t)
    return out


def test_finalizing_a_backlog_is_linear_in_its_size() -> None:
    """Regression: the pending power integral was recomputed for every counter window, so a
    backlog (a starved meter thread, a fast replay) took quadratic time to finalize. A 10x
    larger backlog (200 000 buffer samples) must take about 10x as long, not 100x; the
    absolute time is measured in benchmarks/step_accuracy.py."""
    small, large = _backlog(400.0), _backlog(4000.0)
    assert sum(r.kind == BUFFER_W for r in large) == 200_000

    def finalize(readings: list[Reading]) -> float:
        tl = EnergyTimeline()
        # This thread's CPU time, not the wall clock: other processes on a loaded machine
        # (and this one's other threads) stretch the wall time of one run and not the other's.
        t0 = time.thread_time()
        tl.add(readings)  # one drain: everything pending at once
        tl.flush()
        elapsed = time.thread_time() - t0
        assert tl.finalized_until == pytest.approx(readings[-1].t, abs=0.2)
        return elapsed

    finalize(small)  # warm up
    ratio = finalize(large) / finalize(small)
    assert ratio < 30  # quadratic: ~100
