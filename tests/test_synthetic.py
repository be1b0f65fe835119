"""The synthetic trace generator: its readings follow the documented semantics, and the fused
timeline recovers its known per-step energy."""

from __future__ import annotations

import functools
import itertools
import math
import statistics

import numpy as np
import pytest

from lightning_watt.energy.readings import AVERAGE_W, BUFFER_W, COUNTER_J, INSTANT_W
from lightning_watt.energy.trace import FORMAT
from lightning_watt.testing.synthetic import DT, SyntheticRun, synthetic_run

SEEDS = (0, 1, 2)


@functools.cache
def run(seed: int, **kwargs: float) -> SyntheticRun:
    return synthetic_run(seed=seed, **kwargs)


def of_kind(r: SyntheticRun, kind: str) -> list[tuple[float, float]]:
    return [(x.t, x.value) for x in r.trace.samples if x.kind == kind]


# --------------------------------------------------------------------------- the truth
def test_same_seed_same_run_and_different_seeds_differ() -> None:
    a, b = synthetic_run(seed=5, duration_s=4.0), synthetic_run(seed=5, duration_s=4.0)
    assert a.trace == b.trace
    assert np.array_equal(a.power_W, b.power_W)
    assert synthetic_run(seed=6, duration_s=4.0).trace != a.trace


def test_truth_is_the_integral_of_the_millisecond_signal() -> None:
    r = run(0)
    assert len(r.power_W) == round(r.duration / DT)
    assert (r.power_W >= 0).all()
    assert r.true_energy(0.0, r.duration) == pytest.approx(float(r.power_W.sum()) * DT)
    # Inside one millisecond, energy is linear: half of it at the midpoint.
    i = 12_345
    assert r.true_energy(i * DT, (i + 0.5) * DT) == pytest.approx(r.power_W[i] * DT / 2)
    assert r.true_energy(-1.0, 0.0) == 0.0  # clamped to the signal


def test_segments_tile_the_busy_part_with_exact_energies() -> None:
    r = run(1)
    steps = r.steps
    assert all(s0.end <= s1.start + 1e-12 for s0, s1 in itertools.pairwise(steps))
    for s in steps:
        assert s.energy_J == pytest.approx(r.true_energy(s.start, s.end), rel=1e-12)
    train = r.train_steps
    lengths = [round(s.duration / DT) for s in train]
    assert min(lengths) >= 5 and max(lengths) <= 300
    assert max(lengths) / min(lengths) > 5  # varying lengths
    powers = [s.mean_power_W for s in train]
    assert max(powers) - min(powers) > 150.0  # different power levels
    assert any(s.phase == "idle" for s in steps)  # idle stretches between blocks
    assert r.trace.fit_window == (train[0].start, train[-1].end)


def test_step_edges_carry_gpu_and_host_times() -> None:
    r = run(1)
    edges = r.trace.steps
    assert len(edges) == 2 * len(r.steps)
    for seg, start, end in zip(r.steps, edges[::2], edges[1::2], strict=True):
        assert (start.phase, start.edge, start.index) == (seg.phase, "start", seg.index)
        assert (end.edge, end.t) == ("end", seg.end)
        assert start.t_gpu == seg.start
        assert start.t_host == pytest.approx(seg.start - 0.004)  # hooks run ahead of the GPU


# --------------------------------------------------------------------------- the readings
def test_counter_is_whole_millijoules_of_the_truth_at_each_update() -> None:
    r = run(0)
    counter = of_kind(r, COUNTER_J)
    origin = counter[0][1] - math.floor(r.energy_at(counter[0][0]) * 1000 + 1e-9) / 1000
    assert origin == pytest.approx(123_456.789)
    gaps = np.diff([t for t, _ in counter])
    assert gaps == pytest.approx(0.1)
    for t, value in counter:
        assert value * 1000 == pytest.approx(round(value * 1000), abs=1e-6)
        assert value == pytest.approx(origin + math.floor(r.energy_at(t) * 1000 + 1e-9) / 1000)


def test_counter_delay_stamps_late_but_keeps_the_value() -> None:
    on_time = of_kind(run(2), COUNTER_J)
    late = of_kind(run(2, counter_delay_s=0.03), COUNTER_J)
    n = min(len(on_time), len(late))
    assert [v for _, v in late[:n]] == [v for _, v in on_time[:n]]
    assert [t for t, _ in late[:n]] == pytest.approx([t + 0.03 for t, _ in on_time[:n]])


def test_buffer_is_the_mean_of_the_20_ms_before_each_sample() -> None:
    r = run(0)
    buffer = of_kind(r, BUFFER_W)
    assert np.diff([t for t, _ in buffer]) == pytest.approx(0.02)
    for t, w in buffer[::37]:
        assert w == pytest.approx(r.true_energy(t - 0.02, t) / 0.02)


def test_fields_at_each_update() -> None:
    r = run(0)
    for t, w in of_kind(r, INSTANT_W)[::11]:
        assert w == r.power_W[math.ceil(t / DT - 1e-9) - 1]
    for t, w in of_kind(r, AVERAGE_W)[::11]:
        lo = max(0.0, t - 1.0)
        assert w == pytest.approx(r.true_energy(lo, t) / (t - lo))


def test_trace_is_a_valid_watt_trace() -> None:
    r = run(0, duration_s=5.0)
    trace = r.trace
    assert trace.meta["format"] == FORMAT
    assert trace.meta["synthetic"]["seed"] == 0
    assert [x.t for x in trace.samples] == sorted(x.t for x in trace.samples)
    assert trace.kinds == sorted([AVERAGE_W, BUFFER_W, COUNTER_J, INSTANT_W])
    assert synthetic_run(seed=0, duration_s=5.0, kinds={COUNTER_J}).trace.kinds == [COUNTER_J]


def test_invalid_arguments() -> None:
    for kwargs in (
        {"kinds": {"volts"}},
        {"kinds": {"usage_W"}},  # a real kind, but not one this generator makes
        {"duration_s": 1.5},  # shorter than the idle ends
        {"step_ms": (0, 10)},
        {"counter_interval_s": 0.0},
        {"buffer_interval_s": -0.02},
        {"counter_delay_s": -0.1},
        {"jitter_dist": "cauchy"},
    ):
        with pytest.raises(ValueError):
            synthetic_run(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("dist", ["uniform", "normal"])
def test_jitter_moves_stamps_within_its_bound_and_not_the_values(dist: str) -> None:
    """Buffer values stay the means of the true 20 ms windows; only their stamps move, within
    ``jitter_s`` (a Gaussian of half that deviation, clipped, for ``"normal"``)."""
    kw = {"duration_s": 4.0, "kinds": {BUFFER_W}}
    exact = of_kind(synthetic_run(seed=2, **kw), BUFFER_W)  # type: ignore[arg-type]
    noisy = of_kind(synthetic_run(seed=2, jitter_s=0.004, jitter_dist=dist, **kw), BUFFER_W)  # type: ignore[arg-type]
    moved = np.asarray([b[0] - a[0] for a, b in zip(exact, noisy, strict=True)])
    assert [a[1] for a in exact] == [b[1] for b in noisy]
    assert np.abs(moved).max() <= 0.004 + 1e-12
    # Uniform: standard deviation 4/sqrt(3) = 2.3 ms; normal: 2 ms (a little less, clipped).
    expected = 0.004 / math.sqrt(3) if dist == "uniform" else 0.002
    assert float(moved.std()) == pytest.approx(expected, rel=0.15)


# --------------------------------------------------------------------------- recovery
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kinds", [None, frozenset({COUNTER_J, BUFFER_W})])
def test_timeline_recovers_steps_and_totals(seed: int, kinds: frozenset[str] | None) -> None:
    r = run(seed)
    tl = r.trace.timeline(kinds)
    start, end = r.trace.fit_window
    total = tl.energy_between(start, end)["gpu0"]
    assert total == pytest.approx(r.true_energy(start, end), rel=0.001)
    errors = [
        abs(tl.energy_between(s.start, s.end)["gpu0"] / s.energy_J - 1.0)
        for s in r.train_steps
        if s.duration >= 0.02 - 1e-9
    ]
    assert len(errors) > 50
    assert statistics.median(errors) < 0.05
    assert tl.gaps(start, end) == []


@pytest.mark.parametrize("seed", SEEDS)
def test_timeline_with_late_counter_readings_keeps_totals(seed: int) -> None:
    r = run(seed, counter_delay_s=0.003)
    start, end = r.trace.fit_window
    total = r.trace.timeline().energy_between(start, end)["gpu0"]
    assert total == pytest.approx(r.true_energy(start, end), rel=0.001)
