"""Splitting driver-buffer samples at step edges: a local segment-power fit, pure math.

A driver buffer sample is the mean power of the ~20 ms *tile* before its timestamp. Integrated
as it is, a tile that holds a step edge spreads its joules evenly over both sides, so a step
at a higher power than the gaps around it loses on average ``2 x 3.3 ms x (step - gap power)``
to them: -5 % for a 100 ms step at 450 W between 100 W gaps, -40 % for a 10 ms one.

Where step edges are known, :class:`EdgeModel` fits, around each tile that holds an edge, a
power that is constant per segment (the spans between edges): every tile's mean is the
overlap-weighted mean of the segment powers it covers. Segments of one label (a phase such
as ``train``, or ``""`` for time outside steps) share a level, and each segment deviates from it
with a ridge penalty, so a 5 ms step inside one tile is resolved from the steps and gaps beside
it; segments longer than a tile are fixed by their own tiles. The tile's *measured* joules are
then split among its pieces in proportion to fitted power x duration, so every tile keeps its
energy: totals, the counter anchoring and additivity are untouched, only where inside a tile
the joules go changes. Powers are clipped at zero, so the cumulative energy stays monotone.

**Edge response.** Power need not jump at the recorded edge: on ``h200-square-wave`` (a 150 ms
load / 150 ms idle square wave with exact edges) the buffer behaves as if power changed
2.3 ms after each edge (quartiles 1.3-3.7 ms, rises and falls alike), as a short ramp or a
clock offset would. The model measures that delay from the tiles that hold one edge between
two edge-free tiles at different levels, keeps the median of the last ones, and moves the
power edges by it (from 0 until enough edges were seen; clamped to -5..+10 ms).

A tile's split depends only on the samples within ``window_s`` of it and on the edges there,
so a timeline that finalizes a span only once samples and edges reach ``window_s`` past it gets
the same split fed live or from a recording.

Example:
    >>> model = EdgeModel()
    >>> model.add([(0.050, "train"), (0.055, "")], until=1.0)
    >>> ts = [0.02 * i for i in range(8)]  # tiles of 20 ms; 100 W, then one holding a 5 ms step
    >>> watts = [100.0, 100.0, 100.0, 200.0, 100.0, 100.0, 100.0, 100.0]
    >>> cum = [0.0]
    >>> for i in range(1, 8):
    ...     cum.append(cum[-1] + watts[i] * 0.02)
    >>> t, e = model.split(ts, cum, 3)  # the tile (0.04, 0.06]
    >>> [round(x, 3) for x in t]
    [0.05, 0.055]
    >>> round((e[1] - e[0]) / 0.005, -1)  # the step's 5 ms carry ~500 W, not the tile's 200 W
    500.0
"""

from __future__ import annotations

import bisect
import math
import operator
import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import Any

import numpy as np

from lightning_watt.energy.edge_rows import TIME, EdgeRow, edge_rows, paired_times

#: A tile longer than this is a hole the timeline bridges, not a 20 ms mean: never split.
_MAX_TILE_S = 0.1
#: Edge-response samples kept, and how many are needed before the delay is applied.
_DELAY_KEEP = 101
_DELAY_MIN = 15
_DELAY_RANGE = (-0.005, 0.010)
#: Boundaries closer than this are one boundary (a step's end and the next one's start,
#: stamped microseconds apart). Not more: a 1 ms gap merged into the step before it took
#: its joules from the steps of that label (-8 % on 5 ms steps after such a gap).
_MIN_SEGMENT_S = 0.0005
#: Weight of the pull of each label's level toward the window's mean power, relative to the
#: ridge: only there to keep a window that cannot tell its levels apart solvable. Any more
#: shrinks the contrast between steps and gaps (at 0.1: -3 % on 5 ms steps in aggregate).
_LEVEL_PRIOR = 1e-3


def _ridge_solve(
    a: np.ndarray, means: np.ndarray, one_hot: np.ndarray, per_level: np.ndarray, ridge: float
) -> np.ndarray:
    """Segment powers ``s`` minimising ``|a s - means|^2 + ridge * sum_k (s_k - L_level(k))^2
    + ridge * (segments pinned at zero) * L^2 + prior * sum_l (L_l - mean(means))^2`` over
    ``s`` and the levels ``L`` (``one_hot``: each free segment's level; ``per_level``: every
    segment of each level, pinned ones too; ``prior = ridge * _LEVEL_PRIOR**2``): the least
    squares the tiles, ridges and priors pose, in closed form.

    A window usually has a few tiles and many segments, so ``a a^T + ridge`` (tiles x tiles)
    is what gets solved (Woodbury), then the few levels; a dense least-squares solve of the
    whole system took 340 µs per tile at 1.5 ms steps, this a fraction. Where tiles outnumber
    segments, the normal equations in segments and levels are solved instead.
    """
    prior = ridge * _LEVEL_PRIOR**2
    n_tiles, n_free = a.shape
    if n_tiles > n_free + len(per_level):
        # More tiles than unknowns (a replay faster than real time packs thousands of tiles
        # into a window): the normal equations in the segments and levels are the smaller.
        n_lev = len(per_level)
        system = np.zeros((n_free + n_lev, n_free + n_lev))
        system[:n_free, :n_free] = a.T @ a
        system[np.arange(n_free), np.arange(n_free)] += ridge
        system[:n_free, n_free:] = -ridge * one_hot
        system[n_free:, :n_free] = -ridge * one_hot.T
        system[n_free:, n_free:] = np.diag(ridge * per_level + prior)
        rhs = np.concatenate((a.T @ means, np.full(n_lev, prior * float(means.mean()))))
        return np.linalg.solve(system, rhs)[:n_free]
    gram = a @ a.T
    gram[np.diag_indices_from(gram)] += ridge
    # One factorisation for the two right-hand sides: the tile means and a's level sums.
    a_levels = a @ one_hot
    solved = np.linalg.solve(gram, np.column_stack((means, a_levels)))
    base = a.T @ solved[:, 0]  # the segment powers with every level at zero
    coupling = one_hot - a.T @ solved[:, 1:]  # how they move per unit of each level
    system = np.diag(ridge * per_level + prior) - ridge * (one_hot.T @ coupling)
    levels = np.linalg.solve(system, prior * float(means.mean()) + ridge * (one_hot.T @ base))
    return base + coupling @ levels


def _unwrapped_gesv() -> Any:
    """LAPACK's gesv without np.linalg.solve's wrapping: 1.4 µs, not 6.6 (a fit is 15-30). It is
    numpy's private gufunc, so it is used only if it solves a known system right here; any
    other numpy gets the public ``np.linalg.solve``."""
    try:
        from numpy.linalg import _umath_linalg

        gesv = _umath_linalg.solve1
        probe = gesv(np.array([[2.0, 1.0], [1.0, 3.0]]), np.array([3.0, 5.0]), signature="dd->d")
        if np.allclose(probe, [0.8, 1.4], rtol=0, atol=1e-12):
            return gesv
    except Exception:  # pragma: no cover - numpy moved or changed it
        pass
    return None  # pragma: no cover


_gesv: Any = _unwrapped_gesv()

#: Level numbers, compared with each segment's level to make its one-hot row.
_LEVELS = np.arange(16)


def _solve(system: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``np.linalg.solve(system, rhs)`` for one small float64 system. The fit's systems are
    nonsingular by construction; a singular one (NaN input) gives NaN (and numpy's
    RuntimeWarning), and the tile is then not split."""
    if _gesv is None:  # pragma: no cover
        try:
            return np.linalg.solve(system, rhs)
        except np.linalg.LinAlgError:  # singular: NaN, as the unwrapped gesv gives
            return np.full(rhs.shape, np.nan)
    return _gesv(system, rhs, signature="dd->d")


def _level_fit(
    design: np.ndarray, n_tiles: int, rhs: np.ndarray, ridge: float, pinned: np.ndarray | None
) -> np.ndarray | None:
    """:func:`_ridge_solve` as one bordered system in the tiles' residual weights ``y`` and the
    levels ``L``: ``(a a^T + ridge) y + (a H) L = means`` and
    ``ridge (a H)^T y - (ridge pinned + prior) L = -prior mean(means)``; the free segments'
    powers are ``[y; L] [a; H^T]``. Equal to the Woodbury form (eliminate ``y``, then ``L``)
    up to rounding, in one small solve and two products: a window at 1.5 ms steps is ~6 tiles,
    ~80 segments and one or two levels, where numpy's per-call cost, not arithmetic, is the
    fit's time.

    ``design``: (tiles + levels) x free segments, ``a`` over ``H^T`` (the segments' one-hot
    levels); ``rhs``: the right-hand side, the tile means then ``-prior mean(means)`` per
    level (the same in every round of a fit); ``pinned``: segments pinned
    at zero per level (``None``: none). ``None`` where tiles outnumber the unknowns
    (:func:`_ridge_solve` then solves the smaller system).
    """
    n, n_free = design.shape
    n_lev = n - n_tiles
    if n_tiles > n_free + n_lev:
        return None
    system = np.empty((n, n))
    np.matmul(design[:n_tiles], design.T, out=system[:n_tiles])  # [a a^T | a H]
    np.multiply(system[:n_tiles, n_tiles:].T, ridge, out=system[n_tiles:, :n_tiles])
    system[n_tiles:, n_tiles:] = _prior_block(n_lev, ridge)
    diagonal = system.ravel()[:: n + 1]
    diagonal[:n_tiles] += ridge
    if pinned is not None:
        diagonal[n_tiles:] -= ridge * pinned
    return _solve(system, rhs) @ design


#: ``-I * prior`` per (levels, ridge): the levels' prior block, made once, not per fit.
_PRIOR_SCALED: dict[tuple[int, float], np.ndarray] = {}


def _prior_block(n_lev: int, ridge: float) -> np.ndarray:
    block = _PRIOR_SCALED.get((n_lev, ridge))
    if block is None:
        block = -np.eye(n_lev) * (ridge * _LEVEL_PRIOR**2)
        if len(_PRIOR_SCALED) < 64:
            _PRIOR_SCALED[(n_lev, ridge)] = block
    return block


class EdgeModel:
    """Step edges of one device and the local fit that splits buffer tiles at them.

    Args:
        window_s: samples within this much of a tile (each side) inform its split.
        ridge: how strongly a segment's power is pulled to its label's level (per tile-mean
            equation of weight one); small, so segments longer than a tile follow their data.
        delay_s: a fixed edge response delay; ``None`` measures it (see the module docstring).
    """

    def __init__(
        self, *, window_s: float = 0.045, ridge: float = 0.05, delay_s: float | None = None
    ) -> None:
        self.window_s = window_s
        self.ridge = ridge
        self.fixed_delay = delay_s
        self.times: list[float] = []
        self.labels: list[str] = []
        self.until = -math.inf
        self._delays: deque[float] = deque(maxlen=_DELAY_KEEP)
        self._delay_median: float | None = None  # delay_s, until a new sample comes
        # Splits already made, by tile end: a tile that straddles two counter windows is split
        # once, so both windows see one shape and the delay learns from each tile once.
        self._cache: dict[float, tuple[list[float], list[float]]] = {}
        self.tiles_split = 0

    @property
    def active(self) -> bool:
        """Whether edges were ever given (then the timeline waits for :attr:`until`)."""
        return self.until > -math.inf

    @property
    def delay_s(self) -> float:
        """The edge response delay in use (seconds)."""
        if self.fixed_delay is not None:
            return self.fixed_delay
        if len(self._delays) < _DELAY_MIN:
            return 0.0
        if self._delay_median is None:  # the median of 101 samples, once per new sample
            median = statistics.median(self._delays)
            self._delay_median = min(max(median, _DELAY_RANGE[0]), _DELAY_RANGE[1])
        return self._delay_median

    def add(self, edges: Iterable[tuple[float, str]], until: float) -> None:
        """Edges ``(t, label)``: from ``t`` on, power belongs to a segment labelled ``label``
        (a phase for a step start, ``""`` for a step end). ``until``: every edge up to this time
        has now been given."""
        times, labels = self.times, self.labels
        for t, label in edges:
            if not math.isfinite(t):
                continue
            if times and t >= times[-1]:
                # In order (as a live meter hands them): what the general case below does at
                # the end of the list, without a search and an insert.
                if t - times[-1] < _MIN_SEGMENT_S:
                    times[-1], labels[-1] = t, label
                else:
                    times.append(t)
                    labels.append(label)
                continue
            i = bisect.bisect_right(times, t)
            if i and t - times[i - 1] < _MIN_SEGMENT_S:
                # One boundary stamped twice (a step's end and the next one's start): the
                # later stamp says what follows.
                if i == len(times) or times[i] - t >= _MIN_SEGMENT_S:
                    times[i - 1], labels[i - 1] = t, label
                continue
            if i < len(times) and times[i] - t < _MIN_SEGMENT_S:
                continue
            times.insert(i, t)
            labels.insert(i, label)
        if until > self.until:
            self.until = until

    def drop_before(self, t: float) -> None:
        """Forget edges before ``t`` (keeping the last one, which labels what follows)."""
        i = bisect.bisect_left(self.times, t) - 1
        if i > 16:
            del self.times[:i], self.labels[:i]

    # ------------------------------------------------------------------ fit
    def split(
        self, ts: Sequence[float], cum: Sequence[float], i: int
    ) -> tuple[list[float], list[float]]:
        """Knots inside tile ``i`` (``(ts[i-1], ts[i]]``, joules ``cum[i] - cum[i-1]``): the
        shifted edges in it and the cumulative energy there. Empty when nothing is split."""
        if i <= 0 or i >= len(ts):
            return [], []
        key = ts[i]
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if len(self._cache) > 256:
            self._cache.clear()
        out = self._split(ts, cum, i)
        self._cache[key] = out
        return out

    def _split(
        self, ts: Sequence[float], cum: Sequence[float], i: int
    ) -> tuple[list[float], list[float]]:
        t0, t1 = ts[i - 1], ts[i]
        if not 0 < t1 - t0 <= _MAX_TILE_S:
            return [], []
        delay = self.delay_s
        times = self.times
        if bisect.bisect_left(times, t1 - delay) <= bisect.bisect_right(times, t0 - delay):
            return [], []  # no shifted edge inside the tile
        self._measure_delay(ts, cum, i)
        # The neighbourhood: whole tiles within window_s of this one.
        lo = bisect.bisect_left(ts, t0 - self.window_s)
        hi = bisect.bisect_right(ts, t1 + self.window_s) - 1
        lo = max(lo, 1)
        while lo < i and not 0 < ts[lo] - ts[lo - 1] <= _MAX_TILE_S:
            lo += 1
        while hi > i and not 0 < ts[hi] - ts[hi - 1] <= _MAX_TILE_S:
            hi -= 1
        a, b = ts[lo - 1], ts[hi]
        e_lo = bisect.bisect_right(times, a - delay)
        e_hi = bisect.bisect_left(times, b - delay)
        # The segment bounds: a, the shifted edges in (a, b), b. Built as a list, searched
        # with bisect and converted once: numpy's element-wise fill, add and two searchsorted
        # calls on a ~100-element array cost more than the arithmetic (the same floats).
        inner = times[e_lo:e_hi]
        if delay:
            inner = [x + delay for x in inner]
        bounds = [a, *inner, b]
        labels = self.labels
        seg_labels = [labels[e_lo - 1] if e_lo > 0 else "", *labels[e_lo:e_hi]]
        power = self._fit(ts, cum, lo, hi, np.array(bounds), seg_labels)
        # Split this tile's measured joules by fitted power x overlap, over the segments that
        # overlap it (the window holds a hundred at 1 ms steps).
        e0, energy = cum[i - 1], cum[i] - cum[i - 1]
        k_first = max(0, bisect.bisect_right(bounds, t0) - 1)
        k_last = min(len(bounds) - 1, bisect.bisect_left(bounds, t1))
        # The pieces' ends: the tile's own, and the bounds strictly inside it (edges at least
        # _MIN_SEGMENT_S apart), so no piece is empty and none needs clipping.
        ends = bounds[k_first : k_last + 1]
        ends[0], ends[-1] = t0, t1
        weights = [
            p * (x1 - x0)
            for p, x0, x1 in zip(power[k_first:k_last].tolist(), ends, ends[1:], strict=False)
        ]
        total = sum(weights)
        if total <= 0 or energy < 0 or not math.isfinite(total):
            return [], []
        self.tiles_split += 1
        # min(1.0, q) without a call per piece (the same float: q, or 1.0 where q >= 1).
        shares = [x / total for x in accumulate(weights[:-1])]
        out_e = [e0 + energy * (q if q < 1.0 else 1.0) for q in shares]
        return ends[1:-1], out_e

    def _fit(
        self,
        ts: Sequence[float],
        cum: Sequence[float],
        lo: int,
        hi: int,
        bounds: np.ndarray,
        seg_labels: list[str],
    ) -> np.ndarray:
        """Non-negative segment powers for tiles ``lo..hi`` (segments between ``bounds``):
        least squares on the tile means, each segment pulled to its label's level, each level
        very weakly to the mean power; a negative power is pinned at zero and the rest refitted
        (a small active-set NNLS)."""
        n_seg = len(seg_labels)
        # One label (back-to-back steps) is the common case: counted at C speed, no set.
        one_level = seg_labels.count(seg_labels[0]) == n_seg
        names = {seg_labels[0]} if one_level else set(seg_labels)
        n_lev = len(names)
        t_arr = np.array(ts[lo - 1 : hi + 1])
        c_arr = np.array(cum[lo - 1 : hi + 1])
        n_tiles = len(t_arr) - 1
        dt = t_arr[1:] - t_arr[:-1]
        # The tile means go straight into the right-hand side, made once for every round.
        rhs = np.empty(n_tiles + n_lev)
        means = rhs[:n_tiles]
        np.subtract(c_arr[1:], c_arr[:-1], out=means)
        means /= dt
        rhs[n_tiles:] = -(self.ridge * _LEVEL_PRIOR**2) * (float(np.add.reduce(means)) / n_tiles)
        # Each tile's overlap with each segment, as a share of the tile: the bounds clipped to
        # each tile, differenced. Segments along rows: numpy's loops run over the long axis.
        design = np.empty((n_tiles + n_lev, n_seg))
        clipped = np.maximum(bounds, t_arr[:-1, None])
        np.minimum(clipped, t_arr[1:, None], out=clipped)
        a = design[:n_tiles]
        np.subtract(clipped[:, 1:], clipped[:, :-1], out=a)
        a /= dt[:, None]
        # Under a: each segment's one-hot level (the labels in sorted order).
        if n_lev == 1:
            design[n_tiles] = 1.0
        else:
            index = {label: k for k, label in enumerate(sorted(names))}
            level_of = np.fromiter(map(index.__getitem__, seg_labels), np.intp, n_seg)
            levels = _LEVELS[:n_lev, None] if n_lev <= len(_LEVELS) else np.arange(n_lev)[:, None]
            np.equal(level_of, levels, out=design[n_tiles:], casting="unsafe")
        fitted = _level_fit(design, n_tiles, rhs, self.ridge, None)
        if fitted is None:
            return self._pinned_fit(design, n_tiles, means, rhs, None)
        if np.minimum.reduce(fitted) >= 0:
            return fitted
        return self._pinned_fit(design, n_tiles, means, rhs, fitted)

    def _pinned_fit(
        self,
        design: np.ndarray,
        n_tiles: int,
        means: np.ndarray,
        rhs: np.ndarray,
        fitted: np.ndarray | None,
    ) -> np.ndarray:
        """:meth:`_fit` past its first solve (``fitted``; ``None`` where tiles outnumber the
        unknowns): negative powers are pinned at zero and the rest refitted, up to four
        rounds (a small active-set NNLS)."""
        n_seg = design.shape[1]
        first = 0
        if fitted is not None:
            # The first round, with every segment free: the powers are the fit's own.
            negative = fitted < 0
            if not negative.any():  # NaN, not negative: the first round's result
                return np.maximum(fitted, 0.0)
            free = ~negative
            pinned = np.add.reduce(design[n_tiles:, negative], axis=1)
            fitted = _level_fit(design[:, free], n_tiles, rhs, self.ridge, pinned)
            first = 1
        else:
            free = np.ones(n_seg, dtype=bool)
        power = np.zeros(n_seg)
        for round_ in range(first, 4):
            if fitted is None:  # more tiles than unknowns: the normal equations
                one_hot = design[n_tiles:].T
                fitted = _ridge_solve(
                    design[:n_tiles, free], means, one_hot[free], one_hot.sum(axis=0), self.ridge
                )
            power = np.zeros(n_seg)
            power[free] = fitted
            negative = power < 0
            if round_ == 3 or not negative.any():
                break  # the last round's powers stand, negative or not: no refit to make
            free ^= negative  # pinned segments are at zero, so every negative one is free
            # Counts of pinned segments per level: sums of ones, exact in any order.
            pinned = np.add.reduce(design[n_tiles:, ~free], axis=1)
            fitted = _level_fit(design[:, free], n_tiles, rhs, self.ridge, pinned)
        return np.maximum(power, 0.0)

    def _measure_delay(self, ts: Sequence[float], cum: Sequence[float], i: int) -> None:
        """One edge-response sample from tile ``i`` if it holds one recorded edge between two
        edge-free tiles at clearly different levels."""
        if self.fixed_delay is not None or i < 2 or i + 1 >= len(ts):
            return
        times = self.times
        # Cheapest test first: at short steps the tile holds many edges.
        edge_at = bisect.bisect_right(times, ts[i - 1])
        if bisect.bisect_left(times, ts[i]) - edge_at != 1:
            return
        spans = [(ts[j - 1], ts[j]) for j in (i - 1, i, i + 1)]
        if not all(0 < b - a <= _MAX_TILE_S for a, b in spans):
            return
        if bisect.bisect_left(times, spans[0][1]) != bisect.bisect_right(times, spans[0][0]):
            return
        if bisect.bisect_left(times, spans[2][1]) != bisect.bisect_right(times, spans[2][0]):
            return
        means = [(cum[j] - cum[j - 1]) / (ts[j] - ts[j - 1]) for j in (i - 1, i, i + 1)]
        step = means[2] - means[0]
        if abs(step) < max(10.0, 0.2 * max(means)):
            return
        edge = times[edge_at]
        x = min(1.0, max(0.0, (means[1] - means[0]) / step))  # tile fraction at the new level
        self._delays.append((spans[1][1] - edge) - x * (spans[1][1] - spans[1][0]))
        self._delay_median = None


def _row_order(row: EdgeRow) -> tuple[float, bool]:
    return row[4], row[1] == "start"


def edges_from_steps(steps: Iterable[object]) -> list[tuple[float, str]]:
    """``(t, label)`` boundaries from step edges (objects with ``phase``, ``edge`` and ``t``,
    such as :class:`~lightning_watt.energy.trace.StepEdge`): the label of the time after each
    edge is the phase of a step covering it, ``""`` outside steps. An end closes the latest
    open start of its phase (indices are not used: Lightning numbers a train step's end with
    the next global step), so one step's end stamped a little after the next one's start does
    not label the next step as a gap. An end with no open start ends what it can: the time
    after it has the label of what is still open, ``""`` if nothing.

    Where phases overlap (a start stamped before the previous phase's end), the time belongs
    to the newer phase, and the boundary is put halfway between the two stamps: both mark one
    instant, and jittered stamps (a generator's, or a host clock's) overlap as often as they
    leave a hole between them. Once overlaps show that jitter (a tenth of the changes or more,
    at least 8), a hole with nothing open that is no longer than the longest overlap (plus
    10 %) is closed the same way, at its middle. Exact stamps (CUDA events) do not overlap,
    so real gaps between steps stay, however short. The jitter is judged as a live meter can
    (see :class:`StepBoundaries`, which converts edges handed in batches to the same result).

    Example:
        >>> from lightning_watt.energy.trace import StepEdge
        >>> edges_from_steps([
        ...     StepEdge("train", "start", 0, 1.0), StepEdge("train", "end", 1, 1.2),
        ...     StepEdge("train", "start", 1, 1.25), StepEdge("train", "end", 2, 1.4),
        ... ])
        [(1.0, 'train'), (1.2, ''), (1.25, 'train'), (1.4, '')]
    """
    return StepBoundaries().add(steps, until=math.inf)[0]


#: Phases overlapping longer than this are nested (a loop inside another), not jittered stamps.
_MAX_OVERLAP_S = 0.010
#: The longest hole ever closed as jitter: a boundary this far behind the edges known so far
#: can no longer move (a later edge cannot close a hole or an overlap with it).
_SETTLE_S = 1.1 * _MAX_OVERLAP_S
#: Overlaps needed, and their share of the changes, before stamps count as jittered.
_JITTER_MIN = 8
#: From the first overlap, boundaries are held back (their jitter not yet judged) until this
#: many overlaps show jitter, this many changes of open phases passed, or this long: then the
#: edges held are placed with what those showed, each later one with what the edges before it
#: show. A hole before the first overlap stays: 100 back-to-back jittered steps and gaps keep
#: 0.7 ``""`` slivers on average where judging all edges at once kept 0.2 (uniform jitter;
#: normal: 2.4 against 0.4); the step-accuracy suite's bias is unchanged (to 0.01 %).
_WARMUP_OVERLAPS = 32
_WARMUP_CHANGES = 128
_WARMUP_S = 2.0


class StepBoundaries:
    """:func:`edges_from_steps` for edges handed in batches (a live meter gets them at each
    sync): phases still open, overlaps and holes straddling a batch cut, and the stamps'
    jitter carry over, so any split of the edges gives the boundaries of one batch. A boundary
    is handed out once no later edge can move it (edges more than ``1.1 x`` 10 ms past it are
    known), so each call returns only final boundaries and how far they are complete.

    Example:
        >>> from lightning_watt.energy.trace import StepEdge
        >>> conv = StepBoundaries()
        >>> conv.add([StepEdge("train", "start", 0, 1.0), StepEdge("train", "end", 1, 1.2)], 1.205)
        ([(1.0, 'train')], 1.1999999999999997)
        >>> conv.add([StepEdge("train", "start", 1, 1.21)], until=math.inf)  # 1.2 was not final
        ([(1.2, ''), (1.21, 'train')], inf)
    """

    def __init__(self) -> None:
        # Edges handed over but later than ``until``: processed once ``until`` passes them.
        self._later: list[EdgeRow] = []
        # Edges counted for the jitter but not yet placed (the warm-up).
        self._held: list[tuple[float, bool, str]] = []
        self._warm = False
        self._first_t = math.nan
        self._first_change = 0
        # The jitter so far: phases open by their stamps, overlaps and changes.
        self._stamp_open: list[tuple[str, float]] = []
        self._overlaps = 0
        self._longest = 0.0
        self._changes = 0
        # Placement: open phases as placed, oldest first; boundaries, the first ``_sent`` out.
        self._opened: list[tuple[str, float]] = []
        self._out: list[tuple[float, str]] = []
        self._sent = 0
        self.until = -math.inf

    def add(self, steps: Iterable[object], until: float) -> tuple[list[tuple[float, str]], float]:
        """Edges (as for :func:`edges_from_steps`), every one up to ``until`` now given.
        Returns the boundaries now final, and the time up to which every boundary has been
        returned (at most ``until``)."""
        return self.add_rows(edge_rows(steps), until)

    def add_rows(
        self, rows: Sequence[EdgeRow], until: float
    ) -> tuple[list[tuple[float, str]], float]:
        """:meth:`add` for edges as :data:`EdgeRow` tuples, the books' own form (a live meter's
        refresher hands ~80 a sync, 10 times a second: no attribute read or conversion per
        edge, and no sort when they come in order, as they do)."""
        if until > self.until:
            self.until = until
        times = list(map(TIME, rows))
        if (
            not self._later
            and times
            and all(map(operator.lt, times, times[1:]))  # NaN fails it too
            and math.isfinite(times[0])
            and math.isfinite(times[-1])
        ):
            # In order, no tie, nothing held over: sorting would change nothing.
            cut = bisect.bisect_right(times, self.until)
            self._later = list(rows[cut:])
            taken = rows[:cut] if cut < len(rows) else rows
            if taken and taken[0][1] != "start" and self._stamp_open:
                self._take(taken[:1])  # the end of a step a batch cut left open
                taken = taken[1:]
            if not self._take_steps(taken):
                self._take(taken)
        else:
            events = self._later + [r for r in rows if math.isfinite(r[4])]
            # At one instant an end comes first (whichever batch brought it), then a start.
            events.sort(key=_row_order)
            cut = bisect.bisect_right(events, self.until, key=TIME)
            self._later = events[cut:]
            self._take(events[:cut])
        final = math.isinf(self.until) and self.until > 0
        if final and not self._warm:
            self._end_warmup()
        out, sent = self._out, self._sent
        # Edges still to be placed come after ``until``, or are held from the held one's time.
        placed_until = min(self.until, self._held[0][0]) if self._held else self.until
        settled = (
            len(out)
            if final
            else bisect.bisect_left(out, placed_until - _SETTLE_S, sent, key=lambda x: x[0])
        )
        new = out[sent:settled]
        # The last boundary handed out stays: a later one is compared with it.
        if settled > 1:
            del out[: settled - 1]
            settled = 1
        self._sent = settled
        complete = self.until
        if len(out) > settled:
            complete = min(complete, math.nextafter(out[settled][0], -math.inf))
        if self._held:
            complete = min(complete, math.nextafter(self._held[0][0], -math.inf))
        return new, complete

    def _take_steps(self, rows: Sequence[EdgeRow]) -> bool:
        """:meth:`_take` in bulk for the common case, if it is one (returns whether): nothing
        open, no overlap ever seen (so no jitter, no hole to close), and steps of one phase
        that each start and end in turn (:func:`paired_times`). Each edge is then a boundary,
        labelled the phase at a start and ``""`` at an end, as :meth:`_place` would make it."""
        if self._overlaps or self._stamp_open or self._opened:
            return False
        times = paired_times(rows)
        out = self._out
        if times is None or (out and (out[-1][0] >= times[0] or out[-1][1] != "")):
            return False
        phase = rows[0][0]
        labels = [phase, ""] * (len(rows) // 2)
        if len(rows) % 2:
            labels.append(phase)
            self._stamp_open.append((phase, times[-1]))
            self._opened.append((phase, times[-1]))
        out.extend(zip(times, labels, strict=True))
        self._changes += len(rows)
        return True

    def _take(self, rows: Sequence[EdgeRow]) -> None:
        """Count and place edges up to ``until``, in order."""
        stamps, opened, out = self._stamp_open, self._opened, self._out
        for phase, edge, _, _, t in rows:
            opens = edge == "start"
            if not self._overlaps:
                # The common case, inlined (no overlap ever seen, so no jitter and no hole to
                # close): a step starts with nothing open, or the only open one ends. What
                # _count and then _place do there.
                if opens:
                    if not stamps and not opened:
                        stamps.append((phase, t))
                        opened.append((phase, t))
                        self._changes += 1
                        _emit(out, t, phase)
                        continue
                elif (
                    len(stamps) == 1 == len(opened)
                    and stamps[0][0] == phase
                    and opened[0][0] == phase
                ):
                    stamps.clear()
                    opened.clear()
                    self._changes += 1
                    _emit(out, t, "")
                    continue
            self._count(t, opens, phase)
            if self._warm or not self._overlaps:
                # Stamps that never overlapped (CUDA events, a host clock read in order) are
                # placed at once: only an overlap, a hint of jitter, starts the warm-up.
                self._place(t, opens, phase)
                continue
            self._held.append((t, opens, phase))
            if len(self._held) == 1:
                self._first_t, self._first_change = t, self._changes
            if (
                (self._jittered() and self._overlaps >= _WARMUP_OVERLAPS)
                or self._changes - self._first_change >= _WARMUP_CHANGES
                or t - self._first_t >= _WARMUP_S
            ):
                self._end_warmup()

    def _jittered(self) -> bool:
        return self._overlaps >= _JITTER_MIN and 10 * self._overlaps >= self._changes

    def _end_warmup(self) -> None:
        self._warm = True
        held, self._held = self._held, []
        hole = self._hole()
        for event in held:
            self._place(*event, hole=hole)

    def _hole(self) -> float:
        """The longest hole with nothing open that is closed as jitter."""
        return 1.1 * self._longest if self._jittered() else 0.0

    def _count(self, t: float, opens: bool, phase: str) -> None:
        """The jitter: how long phases overlapped by their stamps (a start before the open
        phase's end), and how many times the set of open phases changed."""
        opened = self._stamp_open
        if opens:
            opened.append((phase, t))
            self._changes += 1
            return
        k = _last_open(opened, phase)
        if k < 0:
            return
        del opened[k]
        self._changes += 1
        if k < len(opened) and t - opened[-1][1] <= _MAX_OVERLAP_S:
            self._overlaps += 1
            self._longest = max(self._longest, t - opened[-1][1])

    def _place(self, t: float, opens: bool, phase: str, hole: float | None = None) -> None:
        out, opened = self._out, self._opened
        if opens:
            if hole is None:
                hole = self._hole()
            if not opened and out and out[-1][1] == "" and 0 < t - out[-1][0] <= hole:
                # A hole between two phases no longer than the stamps' jitter: one instant.
                t = 0.5 * (out.pop()[0] + t)
            opened.append((phase, t))
            label = phase
        else:
            k = _last_open(opened, phase)
            if k >= 0:
                del opened[k]
            if 0 <= k < len(opened):
                # The older phase of an overlap ended: the newer one began halfway between.
                newer, began = opened[-1]
                if out and out[-1][0] == began and t - began <= _MAX_OVERLAP_S:
                    middle = 0.5 * (began + t)
                    out[-1] = (middle, out[-1][1])
                    opened[-1] = (newer, middle)
                return
            label = opened[-1][0] if opened else ""
        _emit(out, t, label)


def _emit(out: list[tuple[float, str]], t: float, label: str) -> None:
    """The time from ``t`` on is ``label``: a new boundary, or the label of one at or after
    ``t`` (edges at one instant) replaced."""
    if out and out[-1][0] >= t:
        out[-1] = (out[-1][0], label)
    elif not out or out[-1][1] != label:
        out.append((t, label))


def _last_open(opened: list[tuple[str, float]], phase: str) -> int:
    for k in range(len(opened) - 1, -1, -1):
        if opened[k][0] == phase:
            return k
    return -1
