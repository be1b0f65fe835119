"""Recovering when a cumulative energy counter actually updated, from its reads: pure math.

The NVML energy counter updates on its own clock, about every 100 ms; a read returns the value
of the last update, so a value stamped at its read time is 0-100 ms stale, and the staleness
drifts when the reader's poll and the counter's clock are not locked. :class:`CounterClock`
estimates each new value's update instant ``u`` from what the reads themselves say:

* **Bracket.** A value change between two reads brackets the update: it happened in
  ``(lo, t]`` (``lo`` the previous read, ``t`` this one). A bracket narrower than
  ``tight_s`` (a reader in a tight loop) pins it: ``u`` is its middle.
* **Grid aligned with power.** Otherwise the updates are modelled as a regular grid
  ``phi + k * P`` (period and phase fitted over the last ``window_s`` seconds, refitted every
  ``refit_every`` updates, so drift is tracked): each read returns the counter at the last grid
  point before it, and the grid is chosen so that counter increments match the driver buffer's
  integral between those grid points (L1, over at least 20 updates). Where power varies, a
  wrong phase moves joules visibly. A fit is used only if read times miss the buffer by over
  1 % and the fit misses by at most 0.6x that; a refit that jumps the phase must clearly beat
  the previous grid. A read within a few ms of a grid point is given to the update (this one
  or the one before) whose power integral matches its increment.
* **Grid fitted to read brackets.** Without a grid aligned with power (no buffer, or before
  its first fit), the grid the reads' own brackets pin down over the last
  ``bracket_window_s`` (:mod:`~lightning_watt.energy.bracket_fit`: reads under a period apart
  say an update happened between them, or did not), where they do: a poll whose gaps sweep
  the update's phase (the meter's alternating schedule), jitter or stalls that land reads on
  both sides of updates. Each value goes to the grid point inside its bracket. The note says
  so, and how tightly the brackets pin the grid.
* **Read time.** Otherwise (no buffer and a poll locked to the counter's period, reads 1 s
  apart, an irregular counter, flat power, a period far from ``period_s``) ``u`` is the read
  time, as before; :attr:`CounterClock.counts` and :meth:`CounterClock.describe` say how often.

**Warm-up.** Until the first fit, values read about one update apart with a buffer present
wait for it (at most ``warmup_s``) and are then placed on the grid it found; otherwise the
switch from stale read times to the recovered clock would move the lag's joules (up to one
update of power) into one window and shift every total that starts before it. Meanwhile
energy is not final past them (the provisional energy uses them at their read times). A
device's first value is placed at its read time by the timeline, unless power began over an
update before it (a stalled start, bridged by power): then it waits too (``first``), so that
the bridge ends at its update instant and its staleness is not counted twice.

**Ties.** On flat power every phase inside the read brackets fits exactly; the fit takes the
middle of those phases, at the period nearest nominal, so float rounding (which differs
between a live meter's monotonic seconds and its recording's) never chooses. Where the phase
is, flat power cannot tell; that it stays put is what keeps each value a whole number of
periods from its neighbours (else one window gains or loses an update's joules): values wait
(up to twice ``warmup_s``) until the arc of exact grids is a few ms wide, a refit keeps the
grid in force, or the exact one nearest it, a value the grid contradicts refits it at once,
and a tight bracket takes the grid's point inside it rather than its own middle.

A value's ``u`` depends only on reads up to its own read time and buffer samples up to
``t + lookahead_s``, and values are resolved in order, so a timeline fed live, in any chunking,
resolves every value as a replay of its recording does. Missed updates, doubled values and
jittered read times cost accuracy only where they are, and a ``u`` outside its bracket (or
not after the previous value's) is refused for the read time.

Example:
    >>> clock = CounterClock()
    >>> clock.add_read(0.000, 0.0, 0)
    >>> clock.add_read(0.004, 1.0, 0)  # changed within 4 ms: the update is pinned
    >>> u, how = clock.resolve(0.004, 0.000)
    >>> round(u, 3), how
    (0.002, 'bracket')
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import numpy as np

from lightning_watt.energy.bracket_fit import BracketFit, fit_brackets
from lightning_watt.energy.readings import BUFFER_W

#: Power kinds a grid can be aligned against. Only the driver buffer: the power fields update
#: on their own 100 ms clock (measured: 0-50 ms off the counter's), so a grid aligned to them
#: inherits their lag (on thinned ``h100-mlp`` reads it made 100 ms windows worse, 4.2 % vs
#: 2.9 % at read times).
ALIGN_KINDS: tuple[str, ...] = (BUFFER_W,)
#: How an update instant was obtained.
BRACKET, GRID, READ_GRID, READ_TIME = "bracket", "grid", "grid fitted to read brackets", "read time"

#: Relative period offsets searched around the nominal period (counters measured 99.9-100.07 ms).
_PERIOD_OFFSETS = (-1.5e-3, -0.75e-3, 0.0, 0.75e-3, 1.5e-3)
#: Their order of preference among equally good fits: nominal first, longer before shorter.
_BY_NOMINAL = sorted(range(len(_PERIOD_OFFSETS)), key=lambda i: (abs(_PERIOD_OFFSETS[i]), -i))
#: Phase resolution of the coarse search (seconds) and of the refinement around its best.
_COARSE_PHASE_S = 0.002
_FINE_PHASE_S = 0.00025
#: A fit is used only if its mismatch is at most this fraction of read-time anchoring's ...
_MAX_RELATIVE_MISMATCH = 0.6
#: ... and read-time anchoring must miss by this much (else it has nothing to fix) ...
_MIN_READ_TIME_MISMATCH = 0.01
#: ... and the increments it explains are this many updates (a second of data at least).
_MIN_UPDATES = 20
#: A refit that moves the phase by more than this must clearly beat the previous grid.
_PHASE_JUMP_S = 0.003
#: A first grid chosen among equally good ones (flat power) whose arc of such grids is wider
#: than this is not used while values may wait (the warm-up): the arc narrows as reads sweep
#: the updates' phase (to ~4 ms within 2-4 s at the meter's 80/124 ms poll), and every later
#: move of the grid shifts one window by the move (a 40 ms arc's middle was 16 ms off).
_MAX_TIED_ARC_S = 0.006
_UNSETTLED_WAIT = 2.0
#: How far (in fine phase steps) a flat-power refit looks around the grid in force for one that
#: still explains every increment, before it takes the middle of all such grids.
_NEAR_STEPS = 20
#: Grid points this close outside a bracket are still candidates for its update.
_SLACK_S = 0.004
#: A grid point up to this far after a read is a candidate too, clipped onto the read, for
#: power to weigh against the points before it: a grid fitted to power smeared over 20 ms
#: buffer samples (edges on the counter's updates) can run 5-9 ms late, and a read 3 ms after
#: an update then saw no grid point before it but the previous one: a whole update's joules
#: a period early (a 0.6 s square wave's cycle 7 % over).
_LATE_S = 0.010
#: Fits whose mismatches differ by less than this explain the increments equally well (flat
#: power leaves a whole arc of phases at zero): float rounding, which depends on how far the
#: clock's times are from zero (a live meter's monotonic seconds, a recording's from its
#: start), must not choose among them. Rounding moves mismatches by ~1e-11.
_TIE = 1e-9
#: A fit this close explains the increments exactly: flat power (real power misses by 1e-2 and
#: more). Well above rounding: at a monotonic clock's 1.5e6 s, an exact grid scores ~1e-9.
_EXACT = 1e-6


class _Cumulative:
    """The running integral of one power kind at its sample times (a private copy: the
    timeline drops samples it has finalized, the clock needs a window of them)."""

    __slots__ = ("cum", "interval", "t", "w")

    def __init__(self, interval: bool) -> None:
        self.interval = interval
        self.t: list[float] = []
        self.w: list[float] = []
        self.cum: list[float] = []

    def append(self, t: float, w: float) -> None:
        if self.t:
            if t <= self.t[-1]:
                return
            dt = t - self.t[-1]
            inc = w * dt if self.interval and dt <= 0.1 else 0.5 * (w + self.w[-1]) * dt
            self.cum.append(self.cum[-1] + inc)
        else:
            self.cum.append(0.0)
        self.t.append(t)
        self.w.append(w)

    def covers(self, a: float, b: float) -> bool:
        return bool(self.t) and self.t[0] <= a and self.t[-1] >= b

    def trim(self, t: float) -> None:
        i = bisect.bisect_left(self.t, t)
        if i > 16:  # once per fit: a window's worth of data is copied a second at most
            del self.t[:i], self.w[:i], self.cum[:i]


def _grid_point_before(t: float, period: float, phase: float) -> float:
    """The newest point of the grid ``phase + k * period`` at or before ``t``."""
    return phase + period * math.floor((t - phase) / period)


def _nearest_tied(
    periods: tuple[float, ...],
    phase: float,
    rt: np.ndarray,
    mismatch: Callable[[np.ndarray], np.ndarray],
    best: float,
) -> tuple[float, float] | None:
    """``(period, phase)`` of the grid through a point nearest ``phase`` (within
    :data:`_NEAR_STEPS` fine steps) that explains the increments as well as the best fit does,
    if any; of equally near ones (counted in steps, so rounding does not choose), the one at
    the first of ``periods``, the earlier."""
    steps = np.arange(-_NEAR_STEPS, _NEAR_STEPS + 1)
    near = phase + steps * _FINE_PHASE_S
    per = np.repeat(np.asarray(periods), len(steps))
    pha = np.tile(near, len(periods))
    grids = pha[:, None] + per[:, None] * np.floor((rt[None, :] - pha[:, None]) / per[:, None])
    ok = (mismatch(grids) <= best + _TIE).reshape(len(periods), len(steps))
    distance = np.where(ok, np.abs(steps)[None, :], _NEAR_STEPS + 1)
    row, col = np.unravel_index(int(np.argmin(distance)), distance.shape)  # row-major: first
    if distance[row, col] > _NEAR_STEPS:
        return None
    return periods[row], float(near[col])


def _canonical_best(scores: np.ndarray) -> int:
    """The flat index of the best cell of ``scores`` (periods x phases), the same whatever the
    rounding: among the periods with a cell within :data:`_TIE` of the best, the one nearest
    the nominal period (the middle row; the longer before the shorter); in its row, the middle
    of the longest run of tied phases (phases wrap around). Where one cell is best by more
    than the tie, that cell, as ``np.argmin`` gives it."""
    tied = scores <= scores.min() + _TIE
    n_phases = scores.shape[1]
    middle = scores.shape[0] // 2
    row = min(np.flatnonzero(tied.any(axis=1)), key=lambda r: (abs(r - middle), -r))
    return int(row) * n_phases + _middle_of_run(tied[row], circular=True)


def _middle_of_ties(scores: np.ndarray) -> int:
    """The middle of the longest run of scores within :data:`_TIE` of the best (where one is
    best by more, that one): a choice rounding cannot flip."""
    return _middle_of_run(scores <= scores.min() + _TIE, circular=False)


def _middle_of_run(mask: np.ndarray, circular: bool) -> int:
    """The middle index of the longest run of set entries of ``mask`` (at least one set; the
    first of equally long runs; a run may wrap around the end when ``circular``)."""
    n = len(mask)
    if circular and mask.all():
        return (n - 1) // 2
    # Runs are read from just after an unset entry, so that a wrapping run is read whole.
    shift = int(np.flatnonzero(~mask)[-1]) + 1 if circular else 0
    best_start, best_len, start = 0, 0, None
    for i in range(n + 1):
        on = i < n and bool(mask[(i + shift) % n])
        if on and start is None:
            start = i
        elif not on and start is not None:
            if i - start > best_len:
                best_start, best_len = start, i - start
            start = None
    return (best_start + (best_len - 1) // 2 + shift) % n


class CounterClock:
    """Estimates the update instants of one device's cumulative counter. See the module
    docstring for the method.

    Args:
        period_s: the nominal update period (NVML: 100 ms).
        window_s: seconds of reads and power a grid is fitted over.
        refit_every: updates between two fits (a fit costs about a millisecond).
        tight_s: a bracket this narrow pins its update without a fit.
        lookahead_s: power after a read that its resolution may use (one buffer window and
            some); the timeline resolves a value only once power reaches that far.
        warmup_s: how long the first values may wait for the first fit (only while power
            varies, so that one is coming; energy is not final past them meanwhile); twice
            that for a narrow arc of exact grids on flat power.
        bracket_window_s: seconds of reads a grid is fitted to brackets over (longer than
            ``window_s``: brackets that say anything come rarer than power does; a fit costs
            about 0.4 ms with 300 reads).
    """

    def __init__(
        self,
        *,
        period_s: float = 0.1,
        window_s: float = 10.0,
        refit_every: int = 8,
        tight_s: float = 0.012,
        lookahead_s: float = 0.03,
        warmup_s: float = 3.0,
        bracket_window_s: float = 30.0,
    ) -> None:
        self.period_s = period_s
        self.window_s = window_s
        self.refit_every = refit_every
        self.tight_s = tight_s
        self.lookahead_s = lookahead_s
        self.warmup_s = warmup_s
        self.bracket_window_s = bracket_window_s
        # Reads that carry information: each value change and the read just before it.
        self._rt: list[float] = []
        self._racc: list[float] = []
        self._rseries: list[int] = []
        self._prev: tuple[float, float, int] | None = None  # the last read, not yet kept
        self._power: dict[str, _Cumulative] = {}
        # (period, phase, fitted at) of the grid aligned with power, and of the one the read
        # brackets alone pin down; the first is used where both exist.
        self._fit: tuple[float, float, float] | None = None
        self._read_fit: tuple[float, float, float] | None = None
        self._since_fit = 0
        self._tied = False  # the grid aligned with power was one of many that fit (flat power)
        self._tied_arc = 0.0  # ... over an arc of phases this wide (seconds)
        self._attempts = 0
        self._varying = False  # read times miss the power: a fit is worth waiting for
        self._warm_start: float | None = None
        self._last: tuple[float, float] | None = None  # (u, acc) of the last value placed
        self._scale = 1.0  # counter joules per power-integral joule, from the last fit
        self.counts: dict[str, int] = {BRACKET: 0, GRID: 0, READ_GRID: 0, READ_TIME: 0}
        self.last_fit: dict[str, float] = {}
        self.last_read_fit: BracketFit | None = None
        #: Set to a list to keep every ``(read time, update instant, how)`` (diagnostics).
        self.history: list[tuple[float, float, str]] | None = None

    # ------------------------------------------------------------------ ingest
    def add_power(self, kind: str, t: float, w: float) -> None:
        """One power sample (``t`` as the timeline stores it: a buffer sample ends its window)."""
        if kind not in ALIGN_KINDS:
            return
        series = self._power.get(kind)
        if series is None:
            series = self._power[kind] = _Cumulative(kind == BUFFER_W)
        series.append(t, w)

    def add_read(self, t: float, acc: float, series: int) -> None:
        """One counter read, in time order: ``acc`` is the counter's accumulated joules (resets
        excluded) and ``series`` increases at each reset."""
        prev = self._prev
        if prev is not None and (acc != prev[1] or series != prev[2]):
            if not self._rt or self._rt[-1] < prev[0]:
                self._keep(*prev)
            self._keep(t, acc, series)
        elif prev is None:
            self._keep(t, acc, series)
        self._prev = (t, acc, series)

    def _keep(self, t: float, acc: float, series: int) -> None:
        self._rt.append(t)
        self._racc.append(acc)
        self._rseries.append(series)

    # ------------------------------------------------------------------ resolve
    def resolve(self, t: float, lo: float, *, first: bool = False) -> tuple[float, str] | None:
        """The update instant of the value first read at ``t`` (the previous read at ``lo``,
        ``-inf`` for none), and how it was found; ``None`` while it waits for the first fit
        (see :meth:`place`). Call in time order, once power has reached ``t + lookahead_s``
        (or will not). ``first``: the device's first value, after power that began over an
        update before it (a stalled start): it waits for the first fit with the values after
        it (a timeline places a first value at its read time otherwise), and does not count
        towards the refits, which the values after it schedule as they would without it."""
        if first:
            if self._unsettled():
                return None
            placed = self._on_grid(t, lo)
            if placed is None and self._fit is None and self._power:
                return None
            return placed if placed is not None else self.place(t, lo)
        if t - lo <= self.tight_s:
            if self._waiting(t):
                # Values wait for the first fit: resolved now, this one would have them placed
                # before it, at their read times.
                return None
            current = self._current(t)
            if self._tied and current is not None and current[2] == GRID:
                # On flat power the grid in force satisfies every bracket so far (or is
                # refitted until it does): its point inside this one keeps the value a whole
                # number of periods from its neighbours, where the bracket's middle would be
                # up to half its width off them.
                placed = self._on_grid(t, lo)
                if placed is not None:
                    return placed
            self.counts[BRACKET] += 1
            return 0.5 * (lo + t), BRACKET
        # Until the first fit, every other value is a chance to fit (for a while: flat power
        # may never fit); then every refit_every.
        unfit = (self._fit or self._read_fit) is None or self._unsettled()
        eager = unfit and self._attempts < 4 * _MIN_UPDATES
        if self._since_fit >= (2 if eager else self.refit_every):
            self._refit(t)
            self._attempts += 1
            self._since_fit = 0
        self._since_fit += 1
        unsettled = self._unsettled()
        placed = None if unsettled else self._on_grid(t, lo)
        if placed is not None:
            return placed
        # Before the first fit, while power varies (so a fit is coming), values wait for it
        # (up to warmup_s) instead of taking their read time: the later switch from stale
        # read times to the recovered clock would move the lag's joules into one window and
        # shift every total that starts before it.
        if (self._fit is None or unsettled) and self._power and t - lo < 2 * self.period_s:
            if self._warm_start is None:
                self._warm_start = t
            if t - self._warm_start < self._warm_limit(unsettled):
                return None
        if unsettled:  # no narrower arc came in the warm-up: its middle beats read times
            placed = self._on_grid(t, lo)
            if placed is not None:
                return placed
        self.counts[READ_TIME] += 1
        return t, READ_TIME

    def _waiting(self, t: float) -> bool:
        """Whether values are waiting for a first (or a narrower) fit at ``t``."""
        start = self._warm_start
        return (
            start is not None
            and t - start < self._warm_limit(self._unsettled())
            and (self._fit is None or self._unsettled())
            and bool(self._power)
        )

    def _warm_limit(self, unsettled: bool) -> float:
        """How long values may wait: twice the warm-up for a narrower arc of tied grids."""
        return self.warmup_s * (_UNSETTLED_WAIT if unsettled else 1.0)

    def _unsettled(self) -> bool:
        """Whether the grid aligned with power is a first one, chosen among equally good grids
        over an arc wider than :data:`_MAX_TIED_ARC_S` (values wait for a narrower one)."""
        return self._fit is not None and self._last is None and self._tied_arc > _MAX_TIED_ARC_S

    def place(self, t: float, lo: float) -> tuple[float, str]:
        """Place a value that waited for the first fit: on its grid, or at its read time when
        none came."""
        tight = t - lo <= self.tight_s
        # No refit here: these values precede the one whose resolution placed them. A tight
        # bracket pins its value better than a grid does, but for one among equally good
        # grids (flat power), as in resolve().
        placed = None if tight and not self._tied else self._on_grid(t, lo, retry=False)
        if placed is not None:
            return placed
        if tight:
            self.counts[BRACKET] += 1
            return 0.5 * (lo + t), BRACKET
        self.counts[READ_TIME] += 1
        return t, READ_TIME

    def _current(self, t: float) -> tuple[float, float, str] | None:
        """``(period, phase, how)`` of the grid in force at ``t``: the one aligned with power,
        else the one fitted to read brackets; ``None`` while neither is fresh."""
        for fit, how in ((self._fit, GRID), (self._read_fit, READ_GRID)):
            if fit is not None and self._fresh(fit, t):
                return fit[0], fit[1], how
        return None

    def _on_grid(self, t: float, lo: float, retry: bool = True) -> tuple[float, str] | None:
        current = self._current(t)
        if current is None:
            return None
        period, phase, how = current
        # Grid points within a few ms of the bracket count: read stamps and the fitted phase
        # are that uncertain. Two candidates (a read close to an update) are told apart by
        # which one makes this increment match the power integral since the last value.
        top = _grid_point_before(t + _SLACK_S, period, phase)
        # Without a previous read of the same series (the first value, a reset) the value is
        # the one of the last update before the read.
        options: tuple[float, ...] = (top, top - period) if math.isfinite(lo) else (top,)
        if how == GRID and math.isfinite(lo) and top + period <= t + _LATE_S:
            options += (top + period,)
        if how == READ_GRID:
            # That grid satisfies the brackets: the grid point inside this one is the update
            # (no power to tell two candidates apart; a clipped one would be a period off).
            options = tuple(c for c in options if lo < c <= t) or options
        candidates = [min(max(c, lo + 1e-6), t) for c in options if lo - _SLACK_S < c]
        candidates = [c for c in candidates if lo < c <= t]
        # With no power to weigh two candidates by (the first value placed on a grid, power
        # that begins after the last value), the grid point inside the bracket, not one a few
        # ms outside it clipped onto its edge.
        inside = [c for c in options if lo < c <= t]
        u = None
        if candidates:
            fallback = inside[0] if inside else candidates[0]
            u = candidates[0] if len(candidates) == 1 else self._likelier(candidates, t, fallback)
        if how == GRID and self._tied and retry and self._contradicted(u, options, t, lo):
            # A grid chosen among equally good ones (flat power) that this value contradicts
            # (its read has cut the arc of grids that explain every increment): refit at once.
            # Placed on it, or at its read time, the value would carry a period too many or
            # too few (600 W or 150 W on one window of flat 300 W), and so would every value
            # until the scheduled refit.
            self._refit(t)
            self._since_fit = 1
            return self._on_grid(t, lo, retry=False)
        if u is None:
            return None
        self.counts[how] += 1
        self._last = (u, self._acc_at(t))
        return u, how

    def _contradicted(
        self, u: float | None, options: tuple[float, ...], t: float, lo: float
    ) -> bool:
        """Whether the grid misplaces a value: no grid point inside its bracket ``(lo, t]``
        (one only near it would be clipped onto its edge), or the increment since the last
        value, placed at ``u``, misses the power integral over the same span by over a
        quarter (a period too many or too few)."""
        if u is None or not any(lo < c <= t for c in options):
            return True
        last = self._last
        power = next((s for k in ALIGN_KINDS if (s := self._power.get(k)) and s.t), None)
        if last is None or power is None or not power.covers(last[0], u):
            return False
        d_counter = self._acc_at(t) - last[1]
        d_power = self._scale * float(
            np.interp(u, power.t, power.cum) - np.interp(last[0], power.t, power.cum)
        )
        return abs(d_counter - d_power) > 0.25 * max(d_counter, d_power)

    def estimate(self, t: float, lo: float) -> float | None:
        """Where the current fit would place a value read at ``t`` (previous read at ``lo``):
        the newest grid point in ``(lo, t]``, or ``None`` without a fit. Changes nothing, so
        provisional (live) numbers can use it without moving the final ones."""
        current = self._current(t)
        if current is None:
            return None
        period, phase, _ = current
        top = _grid_point_before(t, period, phase)
        return top if lo < top <= t else None

    def _acc_at(self, t: float) -> float:
        i = bisect.bisect_right(self._rt, t) - 1
        return self._racc[i] if i >= 0 else 0.0

    def _likelier(self, candidates: list[float], t: float, fallback: float) -> float:
        """The candidate whose power integral since the previous value best matches the
        counter's increment (``fallback`` when there is nothing to compare)."""
        last = self._last
        power = next((s for k in ALIGN_KINDS if (s := self._power.get(k)) and s.t), None)
        if last is None or power is None or not power.covers(last[0], max(candidates)):
            return fallback
        d_counter = self._acc_at(t) - last[1]
        i_last = float(np.interp(last[0], power.t, power.cum))
        scale = self._scale
        errors = [
            abs(d_counter - scale * (float(np.interp(c, power.t, power.cum)) - i_last))
            for c in candidates
        ]
        return candidates[errors.index(min(errors))]

    def _refit(self, t: float) -> None:
        self._trim(t)
        self._refit_power(t)
        if not self._fresh(self._fit, t):  # the read grid is the fallback: fitted when needed
            self._refit_reads(t)

    def _fresh(self, fit: tuple[float, float, float] | None, t: float) -> bool:
        """Whether a fit made at ``fit[2]`` still holds at ``t`` (the period drifts)."""
        return fit is not None and abs(t - fit[2]) <= 3 * self.window_s

    def _refit_reads(self, t: float) -> None:
        """The grid the read brackets of the last ``bracket_window_s`` pin down, if they do
        (:mod:`~lightning_watt.energy.bracket_fit`); a window that does not keeps the last one."""
        i0 = bisect.bisect_left(self._rt, t - self.bracket_window_s)
        i1 = bisect.bisect_right(self._rt, t)
        fit = fit_brackets(
            np.asarray(self._rt[i0:i1]),
            np.asarray(self._racc[i0:i1]),
            np.asarray(self._rseries[i0:i1]),
            t,
            period_s=self.period_s,
        )
        if fit is not None:
            self._read_fit = (fit.period_s, fit.phase_s, t)
            self.last_read_fit = fit

    def _refit_power(self, t: float) -> None:
        # The best power kind reaching this read; early in a run the window is what exists.
        power = next((s for k in ALIGN_KINDS if (s := self._power.get(k)) and s.covers(t, t)), None)
        if power is None:
            return
        a = max(t - self.window_s, power.t[0] + 0.1)
        i0 = bisect.bisect_left(self._rt, a)
        i1 = bisect.bisect_right(self._rt, t)
        if i1 - i0 < _MIN_UPDATES // 4:
            return
        rt = np.asarray(self._rt[i0:i1])
        same = np.diff(np.asarray(self._rseries[i0:i1])) == 0
        d_counter = np.diff(np.asarray(self._racc[i0:i1]))[same]
        total = float(d_counter.sum())
        if total <= 0:
            return
        j1 = bisect.bisect_right(power.t, t + self.lookahead_s)
        j0 = max(0, bisect.bisect_left(power.t, a - 0.2) - 1)
        pt, pc = np.asarray(power.t[j0:j1]), np.asarray(power.cum[j0:j1])

        def mismatch(grids: np.ndarray) -> np.ndarray:
            """L1 mismatch of counter increments vs scaled power integrals, per candidate row."""
            d_power = np.diff(np.interp(grids, pt, pc), axis=-1)[..., same]
            scale = total / np.maximum(d_power.sum(axis=-1, keepdims=True), 1e-12)
            return np.abs(d_counter - scale * d_power).sum(axis=-1) / total

        base = float(mismatch(rt[None, :])[0])
        # Read times that already explain the increments (flat power, a locked reader) leave
        # nothing to recover; with a few updates that tells whether a fit is worth waiting for.
        self._varying = base > _MIN_READ_TIME_MISMATCH
        if np.count_nonzero(d_counter) < _MIN_UPDATES:
            return
        periods = self.period_s * (1.0 + np.asarray(_PERIOD_OFFSETS))
        phases = np.arange(0.0, self.period_s, _COARSE_PHASE_S)
        # Phases are measured from t, so a period error moves the far end of the window only.
        per, pha = np.meshgrid(periods, phases, indexing="ij")
        per, pha = per.ravel(), pha.ravel()
        ref = t - pha
        grids = ref[:, None] + per[:, None] * np.floor((rt[None, :] - ref[:, None]) / per[:, None])
        scores = mismatch(grids)
        by_cell = scores.reshape(len(periods), len(phases))
        best = _canonical_best(by_cell)
        tied_cells = int(np.count_nonzero(by_cell[best // len(phases)] <= by_cell.min() + _TIE))
        p_best = float(per[best])
        fine = pha[best] + np.arange(-_COARSE_PHASE_S, _COARSE_PHASE_S + 1e-12, _FINE_PHASE_S)
        ref = t - fine
        grids = ref[:, None] + p_best * np.floor((rt[None, :] - ref[:, None]) / p_best)
        fine_scores = mismatch(grids)
        k = _middle_of_ties(fine_scores)
        score = float(fine_scores[k])
        # Flat power: several grids explain the increments exactly, or one does (an arc of them
        # narrower than the fine step). Real power never fits exactly (noise: 1e-2 and up).
        tied = score <= _EXACT or int(np.count_nonzero(fine_scores <= score + _TIE)) > 1
        if tied and score > _EXACT:
            # A plateau of equal misfits (flat power) whose exact grids, in an arc narrower
            # than the coarse step, the coarse search stepped over: look at every fine phase.
            # Its own names: ``ref`` and ``k`` must stay the fine search's unless this finds
            # an exact grid (once they did not: a near-exact fit took the phase k fine steps
            # back from ``t``, wherever the fine search had found it; half a period off on a
            # square wave).
            every = t - np.arange(0.0, self.period_s, _FINE_PHASE_S)
            per_2d, ref_2d = np.meshgrid(periods, every, indexing="ij")
            all_per, all_ref = per_2d.ravel(), ref_2d.ravel()
            grids = all_ref[:, None] + all_per[:, None] * np.floor(
                (rt[None, :] - all_ref[:, None]) / all_per[:, None]
            )
            all_scores = mismatch(grids)
            if float(all_scores.min()) <= _EXACT:
                cell = _canonical_best(all_scores.reshape(len(periods), len(every)))
                p_best, score, ref, k = (
                    float(all_per[cell]),
                    float(all_scores[cell]),
                    all_ref,
                    cell,
                )
        self.last_fit = {"period_s": p_best, "mismatch": score, "read_time_mismatch": base}
        if not (self._varying and score <= _MAX_RELATIVE_MISMATCH * base):
            return  # a rejected fit leaves the last good one in force (flat power says nothing)
        period, phase = p_best, float(ref[k])
        previous = self._fit
        nearest = None
        if tied:
            # Flat power: a whole arc of grids explains every increment exactly. The nominal
            # period's, if it has one near the middle (the coarse search can miss a narrow arc
            # there, and an off period drifts out of it within seconds); once values sit on a
            # grid, the one in force, or the one nearest it: the middle of the (narrower) arc
            # would move the values after this one by the difference, a window's joules.
            by_nominal = tuple(float(p) for p in periods[_BY_NOMINAL])
            if previous is not None and self._last is not None:
                p0, ph0, _ = previous
                here = ph0 + p0 * math.floor((t - ph0) / p0)  # its point at t, where it matters
                nearest = _nearest_tied(by_nominal, here, rt, mismatch, score)
            else:
                nearest = _nearest_tied(by_nominal, phase, rt, mismatch, score)
        if nearest is not None:
            period, phase = nearest
        elif previous is not None:
            # Tracking, with hysteresis: a phase that jumps (a regular step pattern can alias a
            # shifted grid) must clearly beat the previous grid on the same window.
            p0, ph0, _ = previous
            old_grid = ph0 + p0 * np.floor((rt - ph0) / p0)
            jump = (phase - ph0) % p_best
            jump = min(jump, p_best - jump)
            old = float(mismatch(old_grid[None, :])[0])
            if jump > _PHASE_JUMP_S and old <= 1.2 * score + _TIE:
                return
        self._fit = (period, phase, t)
        self._tied = tied
        self._tied_arc = tied_cells * _COARSE_PHASE_S if tied else 0.0
        grid = phase + period * np.floor((rt - phase) / period)
        d_power = float(np.diff(np.interp(grid, pt, pc))[same].sum())
        if d_power > 0:
            self._scale = min(2.0, max(0.5, total / d_power))

    def _trim(self, t: float) -> None:
        """Drop what no fit at ``t`` or later needs: reads beyond the longer window, power
        beyond the power fit's (50 buffer samples a second: the bulk of the memory)."""
        i = bisect.bisect_left(self._rt, t - max(self.window_s, self.bracket_window_s) - 1.0)
        if i > 16:
            del self._rt[:i], self._racc[:i], self._rseries[:i]
        for s in self._power.values():
            s.trim(t - self.window_s - 1.0)

    def memory_bytes(self) -> int:
        """About what the kept window of reads and power costs (8 bytes a number)."""
        reads = len(self._rt) * 3
        power = sum(len(s.t) * 3 for s in self._power.values())
        return (reads + power) * 8

    # ------------------------------------------------------------------ report
    def describe(self) -> str:
        """How the update instants were found, for a summary's method notes.

        Example:
            >>> CounterClock().describe()
            'no counter updates'
        """
        n = sum(self.counts.values())
        if n == 0:
            return "no counter updates"
        parts = [f"{100 * c / n:.0f} % {how}" for how, c in self.counts.items() if c]
        note = "counter updates anchored by " + ", ".join(parts)
        fit = self.last_read_fit
        if self.counts[READ_GRID] and fit is not None:
            note += f" (read brackets pin that grid within +-{500 * fit.width_s:.0f} ms)"
        if self.counts[READ_TIME] >= 0.9 * n:
            note += " (update clock not recovered: values placed at their read time, up to one "
            note += "update late)"
        return note
