"""Denoising the timestamps of a periodic sampler (the driver's 20 ms power buffer): pure math.

A driver buffer sample is the mean power of the ~20 ms before the instant the driver took it.
Where those instants form a regular clock but reach us with timestamp noise (a reader that
stamps on arrival, a clock mapping with jitter), every misplaced stamp misplaces its sample's
averaging window, and the segment fit at step edges (:mod:`~lightning_watt.energy.segment_fit`)
then attenuates short steps toward the power around them (errors in variables): with 2 ms of
uniform stamp jitter, 5 ms steps read about -4 % in aggregate. :class:`SampleGrid` fits a
local regular grid (period and phase, by least squares over the last ``window`` on-grid
stamps) and moves each stamp onto the grid fitted before it, which removes that noise to a
few tenths of a millisecond (0.27 ms rms for 2 ms uniform jitter, 1.15 ms raw).

It only moves stamps that behave like a jittered regular clock, and never far:

* a stamp further from the grid than five times the recent on-grid stamps' mean distance
  (at most ``gate_s``, 35 % of a period), or in a slot already taken (a duplicate), keeps its
  own time and stays out of the fit;
* stamps within 0.25 ms of the grid on average are left as read: real drivers stamp in
  microseconds, and a real H200 takes a sample off its clock now and then (2-5 ms late on
  ``h200-mlp-stall``, up to 10 ms under load on ``h200-square-wave``); those stamps describe
  their samples better than the grid does (snapped, the buffer matched the counter worse on
  both), and none of them is moved;
* stamps are moved only once 32 have been judged against the grid and at most 1/8 of the
  recent ones were off it; after a hole of more than a second, a run of 17 off-grid stamps or
  a quarter of the recent ones off it, the grid is fitted afresh (a restarted clock has a
  new phase), from the nominal period, letting in any stamp whose slot is unambiguous until
  the jitter's scale is known, then re-cleaning the window around its median offset.

It is causal: a stamp's correction depends only on it and the stamps before it, so a live
meter and a recording read back in time order get the same times.

Example:
    >>> import random
    >>> rng = random.Random(0)
    >>> grid = SampleGrid()
    >>> true = [0.0071 + 0.02 * k for k in range(300)]
    >>> snapped = [grid.snap(t + rng.uniform(-0.002, 0.002)) for t in true]
    >>> raw_error = 0.002 / 3**0.5  # the jitter's standard deviation
    >>> late = [abs(s - t) for s, t in zip(snapped[100:], true[100:])]
    >>> (sum(e * e for e in late) / len(late)) ** 0.5 < raw_error / 3
    True
"""

from __future__ import annotations

import math
import statistics
from collections import deque

__all__ = ["SampleGrid"]

#: The narrowest gate (seconds).
_MIN_GATE_S = 0.0005
#: Stamps whose mean distance to the grid is below this are taken as exact: real drivers
#: stamp in microseconds, and a sample off their clock was really taken off it
#: (``h200-mlp-stall``: the clock within 0.1 ms, a sample 2-5 ms late now and then; snapped,
#: its buffer matched the counter less well). Jitter this small biases nothing measurable.
_MIN_JITTER_S = 0.00025
#: Stamps judged against a known grid before it is trusted (h200-square-wave, right after a
#: re-lock, had stretches that looked regular for a few dozen samples).
_MIN_JUDGED = 32
#: The gate in mean distances to the grid: 4 sigma of Gaussian jitter, 2.5x the bound of
#: uniform jitter.
_GATE_SPREADS = 5.0


class SampleGrid:
    """Snaps the timestamps of one periodic sampler onto its locally fitted regular clock.

    Args:
        period_s: the nominal sampling period (the fit refines it, within 10 %).
        window: stamps in the least-squares fit (about 2 s of 20 ms samples).
        gate_s: the furthest a stamp may be from the grid and still be a jittered sample of
            it (default 35 % of the period; slots are ambiguous only at half of it).
        min_fit: on-grid stamps fitted before the jitter's scale is taken from them.

    Feed stamps in time order with :meth:`snap`; counts of what was done are kept in
    :attr:`moved`, :attr:`kept` and :attr:`off_grid`.
    """

    def __init__(
        self,
        *,
        period_s: float = 0.02,
        window: int = 100,
        gate_s: float | None = None,
        min_fit: int = 20,
    ) -> None:
        if not (math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"period_s must be a positive number of seconds, got {period_s!r}")
        if not 3 <= min_fit <= window:
            raise ValueError(
                f"window and min_fit must satisfy 3 <= min_fit <= window; got window={window!r}, "
                f"min_fit={min_fit!r}"
            )
        self.period_s = period_s
        self.window = window
        self.gate_s = 0.35 * period_s if gate_s is None else gate_s
        self.min_fit = min_fit
        self.moved = 0
        self.kept = 0
        self.off_grid = 0
        self._reset()

    def _reset(self) -> None:
        # On-grid stamps in the fit: (slot, time - origin), with their running sums.
        self._pts: deque[tuple[int, float]] = deque()
        self._sk = self._st = self._skk = self._skt = 0.0
        self._origin = math.nan
        self._last_slot = 0
        self._last_t = -math.inf
        # How far on-grid stamps were from the grid before joining it: the jitter's scale.
        self._miss: deque[float] = deque()
        self._miss_sum = 0.0
        self._since_clean = 0
        # Recent verdicts (True: off the grid), to tell a jittered clock from an irregular one.
        self._recent: deque[bool] = deque(maxlen=64)
        self._off_recent = 0
        self._off_run = 0

    # ------------------------------------------------------------------ the fit
    def _line(self) -> tuple[float, float]:
        """``(phase, period)`` by least squares: time of slot 0 (from the origin), spacing.
        The nominal period until the window is half full: fitted on a few jittered stamps,
        a slope is off by enough to lock the grid onto a wrong phase a second later."""
        n = len(self._pts)
        sk, st = self._sk, self._st
        period = self.period_s
        den = n * self._skk - sk * sk
        if 2 * n >= self.window and den > 0:
            fitted = (n * self._skt - sk * st) / den
            if 0.9 * period < fitted < 1.1 * period:
                period = fitted
        return (st - period * sk) / n, period

    def _spread(self) -> float:
        """Mean distance of recent on-grid stamps to the grid (NaN until known)."""
        n = len(self._miss)
        return self._miss_sum / n if n >= self.min_fit else math.nan

    def _gate(self, spread: float) -> float:
        if math.isnan(spread):
            # Until the jitter's scale is known: any stamp whose slot is unambiguous, so the
            # first fit is not biased by a gate around a grid that is not known yet either.
            return 0.5 * self.period_s
        return min(self.gate_s, max(_MIN_GATE_S, _GATE_SPREADS * spread))

    def _add(self, slot: int, x: float, miss: float) -> None:
        self._pts.append((slot, x))
        self._sk += slot
        self._st += x
        self._skk += slot * slot
        self._skt += slot * x
        self._miss.append(miss)
        self._miss_sum += miss
        if len(self._pts) > self.window:
            k, y = self._pts.popleft()
            self._sk -= k
            self._st -= y
            self._skk -= k * k
            self._skt -= k * y
        if len(self._miss) > self.window:
            self._miss_sum -= self._miss.popleft()

    def _clean(self) -> None:
        """Refit robustly (the median offset from the least-squares period), drop the points
        that are off that grid, and restart the sums from what is left. Run when the jitter's
        scale first becomes known (the first stamps were let in by the widest gate, so a few
        late ones may sit among them) and every ``window`` stamps after (the sums drift)."""
        self._since_clean = 0
        _, period = self._line()
        offsets = [x - period * k for k, x in self._pts]
        phase = statistics.median(offsets)
        gate = self._gate(statistics.median(abs(y - phase) for y in offsets) * 1.2)
        kept = [
            (k, x) for (k, x), y in zip(self._pts, offsets, strict=True) if abs(y - phase) <= gate
        ]
        misses = [abs(y - phase) for y in offsets if abs(y - phase) <= gate]
        # Slots and times from the oldest kept point, so the sums stay exact in long runs.
        k0, x0 = kept[0]
        self._origin += x0
        self._last_slot -= k0
        self._pts.clear()
        self._miss.clear()
        self._sk = self._st = self._skk = self._skt = self._miss_sum = 0.0
        for (k, x), miss in zip(kept, misses, strict=True):
            self._add(k - k0, x - x0, miss)

    def _verdict(self, off: bool) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._off_recent -= self._recent[0]
        self._recent.append(off)
        self._off_recent += off
        self._off_run = self._off_run + 1 if off else 0

    # ------------------------------------------------------------------ snapping
    def snap(self, t: float) -> float:
        """The stamp ``t`` (seconds), moved onto the grid when the grid is trusted, else ``t``."""
        if not math.isfinite(t):
            return t
        if (
            t - self._last_t > 1.0
            or self._off_run > 16
            or (
                len(self._recent) == self._recent.maxlen
                and 4 * self._off_recent > len(self._recent)
            )
        ):
            # A hole, a run off the clock (a restarted clock has a new phase), or a quarter of
            # the stamps off it (a grid locked on a wrong phase, or no regular clock at all).
            self._reset()
        self._last_t = max(self._last_t, t)
        if not self._pts:
            self._origin = t
            self._add(0, 0.0, 0.0)
            self._miss.clear()
            self._miss_sum = 0.0
            self.kept += 1
            return t
        x = t - self._origin
        phase, period = self._line()
        slot = round((x - phase) / period)
        miss = abs(x - phase - slot * period)
        spread = self._spread()
        off = slot <= self._last_slot or miss > self._gate(spread)
        if not math.isnan(spread):
            self._verdict(off)  # judged against a grid known with its jitter, not the bootstrap
        if off:
            self.off_grid += 1
            return t
        snapped = self._origin + phase + slot * period
        self._add(slot, x, miss)
        self._last_slot = slot
        self._since_clean += 1
        if (
            len(self._miss) == self.min_fit and math.isnan(spread)
        ) or self._since_clean >= self.window:
            self._clean()
            spread = self._spread()
        # Trusted only with enough points, nearly every recent stamp on the grid, and stamps
        # noisy enough around it to be worth moving. The grid is the one fitted before this
        # stamp joined it, so a stamp's own error does not pull its correction.
        recent = self._recent
        if (
            len(recent) < _MIN_JUDGED
            or 8 * self._off_recent > len(recent)
            or not spread >= _MIN_JITTER_S
        ):
            self.kept += 1
            return t
        self.moved += 1
        return snapped
