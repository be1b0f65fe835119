"""The segment fit's closed-form solve against the dense least squares it replaces: the same
segment powers for random windows of tiles, segments and levels, pinned segments included, with
few tiles or (a replay faster than real time) more tiles than segments."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_watt.energy.segment_fit import _LEVEL_PRIOR, _ridge_solve


def _dense(
    a: np.ndarray,
    means: np.ndarray,
    level_of: np.ndarray,
    free: np.ndarray,
    n_lev: int,
    ridge: float,
) -> np.ndarray:
    """The system as rows (tiles, segment ridges, level priors), solved by numpy's lstsq:
    the formulation the fit used before."""
    n_tiles, n_seg = a.shape
    rows = np.zeros((n_tiles + n_seg + n_lev, n_seg + n_lev))
    rhs = np.zeros(len(rows))
    rows[:n_tiles, :n_seg] = a
    rhs[:n_tiles] = means
    k = np.arange(n_seg)
    rows[n_tiles + k, k] = math.sqrt(ridge)
    rows[n_tiles + k, n_seg + level_of] = -math.sqrt(ridge)
    prior = math.sqrt(ridge) * _LEVEL_PRIOR
    rows[n_tiles + n_seg + np.arange(n_lev), n_seg + np.arange(n_lev)] = prior
    rhs[n_tiles + n_seg :] = prior * float(means.mean())
    cols = np.r_[free, np.ones(n_lev, dtype=bool)]
    solution = np.zeros(n_seg + n_lev)
    solution[cols] = np.linalg.lstsq(rows[:, cols], rhs, rcond=None)[0]
    return solution[:n_seg][free]


@settings(max_examples=200, deadline=None)
@given(
    n_tiles=st.integers(1, 60),
    n_seg=st.integers(1, 90),
    n_lev=st.integers(1, 3),
    seed=st.integers(0, 2**31),
    pinned=st.floats(0.0, 0.6),
    ridge=st.sampled_from([0.05, 0.5, 0.005]),
)
def test_closed_form_equals_the_dense_least_squares(
    n_tiles: int, n_seg: int, n_lev: int, seed: int, pinned: float, ridge: float
) -> None:
    rng = np.random.default_rng(seed)
    # Tiles as overlap fractions of contiguous segments (each row sums to one), like the fit's.
    cuts = np.sort(rng.uniform(0, 1, n_seg - 1))
    bounds = np.r_[0.0, cuts, 1.0]
    tiles = np.linspace(0, 1, n_tiles + 1)
    overlap = np.clip(
        np.minimum(bounds[None, 1:], tiles[1:, None])
        - np.maximum(bounds[None, :-1], tiles[:-1, None]),
        0,
        None,
    )
    a = overlap / np.diff(tiles)[:, None]
    means = rng.uniform(50, 700, n_tiles)
    level_of = rng.integers(0, n_lev, n_seg)
    free = rng.uniform(0, 1, n_seg) >= pinned
    one_hot = np.zeros((n_seg, n_lev))
    one_hot[np.arange(n_seg), level_of] = 1.0
    got = _ridge_solve(a[:, free], means, one_hot[free], one_hot.sum(axis=0), ridge)
    want = _dense(a, means, level_of, free, n_lev, ridge)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(means).max()))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_the_unwrapped_gesv_solves_as_numpy_does(n, seed):
    """The fit calls numpy's private gesv gufunc where it is present and proven at import; the
    public ``np.linalg.solve`` otherwise: the same solutions (a singular system: NaN both ways,
    so the tile is left unsplit either way)."""
    from lightning_watt.energy import segment_fit

    rng = np.random.default_rng(seed)
    system = rng.normal(size=(n, n)) + n * np.eye(n)
    rhs = rng.normal(size=n)
    assert segment_fit._gesv is not None  # this numpy has it
    fast = segment_fit._solve(system, rhs)
    np.testing.assert_allclose(fast, np.linalg.solve(system, rhs), rtol=1e-10, atol=1e-12)
    saved, segment_fit._gesv = segment_fit._gesv, None
    try:
        np.testing.assert_array_equal(segment_fit._solve(system, rhs), np.linalg.solve(system, rhs))
        assert np.isnan(segment_fit._solve(np.ones((2, 2)), np.ones(2))).all()
    finally:
        segment_fit._gesv = saved
