"""Snapping jittered buffer stamps onto the driver's regular clock (``energy/sample_grid.py``):
noisy stamps of a regular clock are denoised; real drivers' stamps are left as read."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lightning_watt.energy.readings import BUFFER_W
from lightning_watt.energy.sample_grid import SampleGrid
from lightning_watt.energy.trace import bundled_trace, load_trace

PERIOD = 0.02


def snapped(stamps: np.ndarray, grid: SampleGrid | None = None) -> np.ndarray:
    grid = grid or SampleGrid()
    return np.asarray([grid.snap(float(t)) for t in stamps])


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x)))


@pytest.mark.parametrize(
    ("dist", "bound"),
    [("uniform", 0.001), ("uniform", 0.002), ("uniform", 0.005), ("normal", 0.004)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_jittered_stamps_of_a_regular_clock_land_near_it(
    dist: str, bound: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    n = 1500
    true = 3.0071 + PERIOD * 1.0001 * np.arange(n)  # a driver clock 100 ppm off nominal
    if dist == "uniform":
        noise = rng.uniform(-bound, bound, n)
    else:
        noise = np.clip(rng.normal(0.0, bound / 2, n), -bound, bound)
    out = snapped(true + noise)
    settled = slice(150, None)  # after the bootstrap and the first judged stamps
    assert rms(out[settled] - true[settled]) < 0.35 * rms(noise[settled])
    assert np.all(np.diff(out) > 0)


def test_missing_and_duplicated_samples_and_a_restarted_clock() -> None:
    rng = np.random.default_rng(3)
    true = 0.0071 + PERIOD * np.arange(2000)
    keep = rng.random(len(true)) > 0.03  # 3 % of the samples never come
    first = true[keep]
    later = 0.0123 + first[-1] + 2.0 + PERIOD * np.arange(800)  # a 2 s hole, a new phase
    stamps = np.concatenate((first, later))
    noisy = stamps + rng.uniform(-0.002, 0.002, len(stamps))
    noisy = np.insert(noisy, 700, noisy[699])  # one sample delivered twice
    grid = SampleGrid()
    out = snapped(noisy, grid)
    out = np.delete(out, 700)
    noisy = np.delete(noisy, 700)
    tail = slice(len(first) + 150, None)
    assert rms(out[tail] - stamps[tail]) < 0.35 * rms(noisy[tail] - stamps[tail])
    body = slice(150, len(first))
    assert rms(out[body] - stamps[body]) < 0.35 * rms(noisy[body] - stamps[body])
    assert grid.off_grid >= 1  # the duplicate


@pytest.mark.parametrize("name", ["h200-square-wave", "h200-mlp-stall"])
def test_real_driver_stamps_are_left_as_read(name: str) -> None:
    """Real stamps are microsecond-exact; samples off the driver's clock (a few ms late on
    h200-mlp-stall, up to 10 ms on h200-square-wave under load) were taken off it, and the
    buffer matches the counter better with them as stamped."""
    trace = load_trace(bundled_trace(name))
    stamps = np.asarray([r.t for r in trace.samples if r.kind == BUFFER_W])
    grid = SampleGrid()
    assert np.array_equal(snapped(stamps, grid), stamps)
    assert grid.moved == 0
    assert grid.kept + grid.off_grid == len(stamps)
    # Through the timeline too: it snaps buffer stamps on ingestion.
    tl = trace.timeline()
    device = tl.device("gpu0").stamps
    assert device is not None and device.moved == 0


def test_an_irregular_sampler_is_never_snapped() -> None:
    rng = np.random.default_rng(5)
    stamps = np.cumsum(rng.uniform(0.008, 0.032, 2000))
    grid = SampleGrid()
    assert np.array_equal(snapped(stamps, grid), stamps)


@given(
    st.lists(st.floats(min_value=0.0, max_value=0.04), min_size=1, max_size=300),
    st.floats(min_value=-1e6, max_value=1e6),
)
def test_snapping_moves_a_stamp_at_most_a_third_of_a_period(gaps: list[float], t0: float) -> None:
    stamps = t0 + np.cumsum(gaps)
    out = snapped(stamps)
    assert np.all(np.abs(out - stamps) <= 0.35 * PERIOD + 1e-6 * (1 + abs(t0)))


def test_non_finite_stamps_pass_through_and_bad_arguments_are_named() -> None:
    grid = SampleGrid()
    assert math.isnan(grid.snap(math.nan))
    with pytest.raises(ValueError, match="period_s"):
        SampleGrid(period_s=0.0)
    with pytest.raises(ValueError, match="min_fit"):
        SampleGrid(window=10, min_fit=20)
