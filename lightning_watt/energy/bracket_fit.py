"""Where a counter's update grid can lie, from the counter's own reads: pure math.

A counter that updates on a grid ``phase + k * period`` and is read at times ``a < b`` says
something about the grid only when ``b - a`` is under a period:

* the value changed: a grid point lies in ``(a, b]``;
* the value did not: none does.

(Reads a period or more apart always straddle a grid point: a change says nothing, and no
change means a missed update, which is ignored.) Each such *bracket*, widened (changed) or
narrowed (unchanged) by a jitter margin, admits an arc of phases. :func:`fit_brackets` counts,
for every (period, phase) cell near the nominal period, the brackets it violates, and returns
the centroid of the cells weighted by their odds against the best (a violation, from a missed
update or a stamp jittered across an update, costs 5.6 bits), if the cells within one
violation of the best span one narrow arc of phases and the brackets carry enough evidence
(``min_bits``) that the counter keeps to that grid rather than irregular reads fitting one by
chance.

Brackets are informative only where reads land on both sides of updates: a poll that is not
locked to the counter at exactly one period (the meter's alternating gaps, a reader faster
than the counter, read-time jitter around the update, catch-up reads after a stall, a slowly
drifting counter period). A poll locked at one period a few ms after each update admits every
phase between its reads: the arc is wide, and :func:`fit_brackets` says so by returning
``None``. Cost: about 0.4 ms for 300 reads (31 periods x 400 phases).

Example:
    >>> import numpy as np
    >>> # Updates at 0.037 + k * 0.1; reads every 62 ms sweep their phase.
    >>> t = np.arange(0.0, 20.0, 0.062)
    >>> acc = np.floor((t - 0.037) / 0.1)
    >>> fit = fit_brackets(t, acc, np.zeros(len(t), dtype=int), end=20.0)
    >>> fit is not None and abs((fit.phase_s - 0.037 + 0.05) % 0.1 - 0.05) < 0.002
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Relative period offsets tried around the nominal period (counters measured 99.9-100.07 ms):
#: 1e-4 apart, so a 30 s window's far end is placed within 1.5 ms by the nearest one.
PERIOD_OFFSETS: tuple[float, ...] = tuple(k * 1e-4 for k in range(-15, 16))

#: What a violated bracket costs a fit's evidence: log2 of the odds (about 1 in 50) that a read
#: stamp is jittered across an update or an update is missed.
_VIOLATION_BITS = 5.6


@dataclass(frozen=True)
class BracketFit:
    """The grid that read brackets pin down.

    Attributes:
        period_s: the fitted update period.
        phase_s: one grid point (a time near the window's end); the grid is
            ``phase_s + k * period_s``.
        width_s: width of the arc of phases that violate no more brackets than this one: the
            grid is within half of it, if the counter keeps to a grid.
        violations: brackets the grid violates.
        brackets: informative brackets in the window.
        bits: evidence for the grid: ``-log2`` of the chance that a grid at a random phase
            satisfies the brackets this one does, less a penalty per violation.
    """

    period_s: float
    phase_s: float
    width_s: float
    violations: int
    brackets: int
    bits: float


def fit_brackets(
    t: np.ndarray,
    acc: np.ndarray,
    series: np.ndarray,
    end: float,
    *,
    period_s: float = 0.1,
    resolution_s: float = 0.00025,
    margin_s: float = 0.002,
    max_width_s: float = 0.03,
    max_violation_share: float = 0.1,
    min_bits: float = 20.0,
) -> BracketFit | None:
    """Fit a grid to the brackets of consecutive reads ``(t[i], t[i + 1]]``.

    Args:
        t: read times, increasing (reads that repeat their neighbours' value on both sides
            may be left out: they add nothing).
        acc: the counter's accumulated value at each read.
        series: increases at each counter reset; brackets across a reset are ignored.
        end: phases are measured back from here (the newest read), so a period error moves
            the window's far end only.
        period_s: the nominal period.
        resolution_s: phase resolution.
        margin_s: how far a read stamp or an update may stray from where the grid puts it
            (measured: updates scatter ~2 ms around their grid).
        max_width_s: a wider arc of consistent phases is not an answer (``None``).
        max_violation_share: more violations than this share of the brackets mean the
            counter does not keep to a grid near ``period_s`` (``None``).
        min_bits: the evidence (``BracketFit.bits``) a fit needs. About 14 bits are spent
            choosing among the periods and phases tried: the rest is the margin against a
            grid that fits irregular reads by chance.

    Returns:
        The fit, or ``None`` where the reads do not pin the grid.
    """
    if len(t) < 3:
        return None
    changed = acc[1:] != acc[:-1]
    # Each bracket widened (changed) or narrowed (unchanged) by the margin, so that a stamp
    # or an update that jitters across its edge does not count against the true grid.
    pad = np.where(changed, margin_s, -margin_s)
    a, b = t[:-1] - pad, t[1:] + pad
    width = b - a
    periods = period_s * (1.0 + np.asarray(PERIOD_OFFSETS))
    useful = (series[1:] == series[:-1]) & (width > 0) & (width < periods.min())
    n = int(useful.sum())
    if n < 3:
        return None
    a, b, width, changed = a[useful], b[useful], width[useful], changed[useful]
    n_changed = int(changed.sum())
    bins = max(8, round(period_s / resolution_s))
    # Bracket (a, b] holds a grid point end - phi + k * P  <=>  phi in [end - b, end - a) mod P.
    # In bins of the phase as a fraction of P; each arc is +1 (changed) or -1 (not) on its bins.
    start = ((end - b)[None, :] % periods[:, None]) / periods[:, None] * bins
    span = width[None, :] / periods[:, None] * bins
    first = np.ceil(start - 0.5).astype(np.int64)
    stop = np.ceil(start + span - 0.5).astype(np.int64)  # exclusive, below 2 * bins
    sign = np.where(changed, 1.0, -1.0)
    rows = np.arange(len(periods))[:, None] * (2 * bins + 1)
    diff = np.zeros(len(periods) * (2 * bins + 1))
    np.add.at(diff, (rows + first).ravel(), np.broadcast_to(sign, first.shape).ravel())
    np.add.at(diff, (rows + stop).ravel(), -np.broadcast_to(sign, stop.shape).ravel())
    cover = np.cumsum(diff.reshape(len(periods), 2 * bins + 1), axis=1)[:, : 2 * bins]
    violations = n_changed - (cover[:, :bins] + cover[:, bins:])
    least = float(violations.min())
    if least > max_violation_share * n:
        return None
    # The answer is the centroid of every (period, phase) weighted by its odds against the
    # best (each further violation 2**-_VIOLATION_BITS): a slightly wrong period that stays
    # consistent by moving the phase, or one lucky cell that dodges a missed update, is not
    # favoured over the region around the truth. The uncertainty is the arc of phases at most
    # one violation worse than the best.
    rows, cells = np.nonzero(violations <= least + 1)
    arc_bins, first_bin = _smallest_arc(np.bincount(cells, minlength=bins) > 0)
    odds = np.exp2(-_VIOLATION_BITS * (violations[rows, cells] - least))
    period = float(np.average(periods[rows], weights=odds))
    arc_s = arc_bins * period / bins
    if arc_s > max_width_s:
        return None
    middle = first_bin + float(np.average((cells - first_bin) % bins, weights=odds)) + 0.5
    grid = end - middle / bins * period
    holds = np.floor((b - grid) / period) > np.floor((a - grid) / period)
    # Evidence that the counter keeps to this grid rather than the reads fitting one by chance:
    # a bracket a random phase would satisfy with probability q gives -log2(q) bits; a violated
    # one costs _VIOLATION_BITS (the odds of a jittered stamp or a missed update).
    chance = np.where(changed, width / period, 1.0 - width / period)
    bits = float(-np.log2(np.clip(chance[holds == changed], 1e-6, 1.0)).sum())
    bits -= _VIOLATION_BITS * int(least)
    if bits < min_bits:
        return None
    return BracketFit(
        period_s=period,
        phase_s=float(grid),
        width_s=arc_s,
        violations=int(least),
        brackets=n,
        bits=bits,
    )


def _smallest_arc(mask: np.ndarray) -> tuple[int, int]:
    """``(length, first bin)`` of the smallest circular arc holding every set bin of ``mask``
    (at least one is set)."""
    on = np.flatnonzero(mask)
    size = len(mask)
    if len(on) == 1:
        return 1, int(on[0])
    gaps = np.diff(np.append(on, on[0] + size))  # gap after each set bin, wrapping around
    i = int(np.argmax(gaps))
    return size - int(gaps[i]) + 1, int(on[(i + 1) % len(on)])
