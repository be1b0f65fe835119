"""Fusing raw readings into a cumulative energy function ``E(t)`` per device: pure math.

No threads and no I/O: the live :class:`~lightning_watt.energy.meter.EnergyMeter` and
:meth:`Trace.timeline <lightning_watt.energy.trace.Trace.timeline>` feed the same class.

How readings become energy, per device:

* **Counter anchors totals.** A cumulative counter (``counter_J``) is the hardware's own
  integral. Each new value (the first reading of it: a repeated value means no update yet, not
  zero energy) pins ``E(u)`` at its *update instant* ``u``, recovered by the
  :mod:`~lightning_watt.energy.counter_clock` (a read returns the last 100 ms update, so its
  read time is 0-100 ms late), or at its read time where that cannot be recovered
  (:meth:`EnergyTimeline.notes` says which). A drop is a reset, never negative energy: power
  bridges it. The first value sits at its read time (energy starts at once), and of its
  increment to the second only the share after that read counts: the rest was used before
  the first reading (see ``_drop_stale_start``).
* **Step edges split buffer samples** where given (:meth:`EnergyTimeline.add_edges`): a sample
  holding an edge is split by a segment-power fit (:mod:`~lightning_watt.energy.segment_fit`),
  keeping its joules.
* **Power shapes energy between anchors.** The best power kind present (driver buffer, then
  instant field, power usage, 1 s average field, estimate) is integrated into ``Ip(t)``; between
  two anchors ``a`` and ``b``, ``E = E(a) + dC * (Ip(t) - Ip(a)) / (Ip(b) - Ip(a))``. The counter
  fixes every window's total exactly; power only decides where inside it the joules went.
* **Without a counter**, the power integral is the energy (scaled by the last calibration
  factor when a counter existed and went stale).
* **Interval means**: a buffer sample is the mean power of the interval before its timestamp
  (the driver's 20 ms averaging window; a longer hole before it is bridged, not charged to it),
  and an ``estimate_W`` reading is the mean power since the previous estimate (the utilisation
  of that interval), however long it was. Either is integrated as a step: every sub-window of
  an interval gets that interval's power. **Point fields** (``instant_W``, ``usage_W``) are
  integrated as trapezoids. ``average_W`` is a trailing 1 s mean, so each value is placed half
  a second before its read time.
* ``E(t)`` is stored as piecewise-linear knots, so ``energy_between(a, b) = E(b) - E(a)`` and
  adjacent intervals add up exactly (to floating point). Times with no readings for longer than
  ``max_gap`` are reported by :meth:`EnergyTimeline.gaps`, never silently zero.

Example:
    >>> from lightning_watt.energy.readings import Reading
    >>> tl = EnergyTimeline()
    >>> tl.add([Reading(0.0, "gpu0", "instant_W", 100.0), Reading(2.0, "gpu0", "instant_W", 100.0)])
    >>> tl.flush()
    >>> tl.energy_between(0.5, 1.5)
    {'gpu0': 100.0}
"""

from __future__ import annotations

import bisect
import math
import operator
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_watt.energy.counter_clock import BRACKET, GRID, READ_GRID, READ_TIME, CounterClock
from lightning_watt.energy.readings import (
    AVERAGE_W,
    BUFFER_W,
    COUNTER_J,
    ESTIMATE_W,
    KINDS,
    POWER_KINDS,
    Reading,
)
from lightning_watt.energy.sample_grid import SampleGrid
from lightning_watt.energy.segment_fit import EdgeModel
from lightning_watt.validate import (
    boolean,
    finite_number,
    integer,
    positive_number,
    string_collection,
)

#: Trailing-average fields describe the past: shift their samples back by half the window.
_KIND_SHIFT_S = {AVERAGE_W: 0.5}
#: A buffer sample covers at most this long before its timestamp (the driver's 20 ms period,
#: with room for jitter); longer holes are bridged as gaps, not charged to the next sample.
_BUFFER_HOLD_S = 0.1
#: Kinds whose samples are the mean power of the interval before their timestamp, with the
#: longest interval one sample speaks for. An estimate is the utilisation since the previous
#: read, so it speaks for all of it.
_INTERVAL_MEAN_HOLD_S = {BUFFER_W: _BUFFER_HOLD_S, ESTIMATE_W: math.inf}
#: A reader silent this long (seconds) is not waited for: the timeline moves on without it.
_STALE_S = 2.0
#: Counter reads closer than this to the previous one are skipped (reads take milliseconds:
#: only a broken clock, or a property test, puts two within a microsecond).
_MIN_COUNTER_GAP_S = 1e-6


@dataclass(frozen=True)
class Gap:
    """A span on one device with no readings at all (or one a source marked as unmeasured)."""

    device: str
    start: float
    end: float
    reason: str = "no readings"

    @property
    def duration(self) -> float:
        return self.end - self.start


#: How a value's update instant can be placed (not its read time): see _drop_stale_start.
_UPDATE_INSTANTS = frozenset({BRACKET, GRID, READ_GRID})
#: How far (in periods) before a grid point the first read may fall and still be taken as
#: after it: the second value's recovered instant is a few ms off at worst.
_STALE_START_SLACK = 0.03


class _Anchor:
    """A new counter value: read at ``t`` (the previous read at ``lo``), its update instant
    ``u`` resolved later by the counter clock (until then ``u`` is the read time)."""

    __slots__ = ("acc", "how", "lo", "series", "t", "u")

    def __init__(self, t: float, acc: float, series: int, lo: float = -math.inf) -> None:
        self.u, self.t, self.lo, self.acc, self.series = t, t, lo, acc, series
        self.how: str | None = None  # None until resolved


class _PowerSeries:
    """Samples of one power kind, kept from a little before the finalized boundary onwards,
    with their running integral (kept as samples arrive, so finalizing is linear in the
    backlog: recomputing it per counter window was quadratic)."""

    __slots__ = ("cum", "hold", "kind", "t", "w")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.hold = _INTERVAL_MEAN_HOLD_S.get(kind)
        self.t: list[float] = []
        self.w: list[float] = []
        self.cum: list[float] = []

    @property
    def last_t(self) -> float:
        return self.t[-1] if self.t else -math.inf

    def append(self, t: float, w: float) -> None:
        ts, ws = self.t, self.w
        if not ts:
            self.cum.append(0.0)
        else:
            dt = t - ts[-1]
            hold = self.hold
            if hold is None:
                inc = 0.5 * (w + ws[-1]) * dt
            elif dt <= hold:
                inc = w * dt
            else:
                # The sample only speaks for its own window; the hole before it is bridged
                # with the mean of its neighbours (and reported as a gap if long).
                held = hold / 5
                inc = w * held + 0.5 * (w + ws[-1]) * (dt - held)
            self.cum.append(self.cum[-1] + inc)
        ts.append(t)
        ws.append(w)

    def knots(self) -> tuple[list[float], list[float]]:
        """Cumulative power integral ``Ip`` at the sample times (joules, arbitrary origin)."""
        return self.t, self.cum

    def drop_before(self, t: float) -> None:
        """Forget samples before ``t``, keeping the last one at or before it. Amortised: the
        stale head is cut once it is half the series, so a backlog is not copied per window."""
        i = bisect.bisect_right(self.t, t) - 1
        if i > 16 and 2 * i >= len(self.t):
            del self.t[:i], self.w[:i], self.cum[:i]


def _with_first_window(
    series: _PowerSeries, ts: list[float], cum: list[float]
) -> tuple[list[float], list[float]]:
    """``ts, cum`` with a knot in front for the first sample's own window: an interval mean
    (the buffer's 20 ms) speaks for the time before its stamp, as long as the next sample's
    window (the timeline starts at a first counter value read before the first buffer sample
    ends: without it, the counter's joules of that stretch would go after it)."""
    if len(series.t) < 2 or series.t[0] != ts[0]:
        return ts, cum
    window = min(series.t[1] - series.t[0], series.hold or math.inf)
    return [ts[0] - window, *ts], [cum[0] - series.w[0] * window, *cum]


def _series(x: _Anchor) -> int:
    return x.series


def _u(x: _Anchor) -> float:
    return x.u


def _usable(kind: str, t: float, value: float) -> bool:
    """A reading the timeline can use: finite numbers, and no negative power (a counter's
    origin is arbitrary, so any finite counter value is usable)."""
    try:
        if not (math.isfinite(t) and math.isfinite(value)):
            return False
    except TypeError:
        return False
    return kind == COUNTER_J or value >= 0


def _check_time(name: str, t: object) -> None:
    """A query time: a real number, not NaN (infinities mean "before/after everything")."""
    if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a time in seconds (a number), got {t!r}")
    if math.isnan(t):
        raise ValueError(f"{name} must be a time in seconds, got NaN")


def _interp(ts: Sequence[float], ys: Sequence[float], t: float) -> float:
    """Linear interpolation, clamped at both ends."""
    n = len(ts)
    if n == 0:
        return 0.0
    if t <= ts[0]:
        return ys[0]
    if t >= ts[-1]:
        return ys[-1]
    i = bisect.bisect_right(ts, t)
    t0, t1 = ts[i - 1], ts[i]
    if t1 == t0:
        return ys[i]
    y0, y1 = ys[i - 1], ys[i]
    return _within(y0 + (y1 - y0) * (t - t0) / (t1 - t0), y1, y0)


def _within(y: float, y1: float, y0: float) -> float:
    """``y`` interpolated from ``y0`` towards ``y1``, never past ``y1``: rounding of the
    product and quotient can overshoot the next knot by an ulp (45.026 before a knot of
    45.025999999999996), and a cumulative energy must not step back there."""
    if y1 >= y0:
        return y1 if y > y1 else y
    return y1 if y < y1 else y


_FIRST = operator.itemgetter(0)

#: From this many times on, :meth:`DeviceTimeline.energy_at_many` evaluates them with numpy;
#: below it, a loop over cached knots is cheaper: numpy's ~20 calls cost ~10 µs warm and
#: ~65 µs from the cold caches a thread waking every 25 ms meets, and ``searchsorted``
#: releases the GIL, which the books' refresher then waits to take back from a busy training
#: thread (~30 µs of CPU per handover on a 2-core VM). The refresher asks 130-700 times a
#: call at 1.5 ms steps: 128 here cost it ~3 µs a step more than 1024 (books_threads.py).
VECTOR_MIN = 1024


def _interp_list(ts: Sequence[float], ys: Sequence[float], times: Iterable[float]) -> list[float]:
    """:func:`_interp` at each of ``times``, the knots' ends read once."""
    n = len(ts)
    if n < 2:
        y = ys[0] if n else 0.0
        return [y for _ in times]
    first, last, y_first, y_last = ts[0], ts[-1], ys[0], ys[-1]
    bisect_right = bisect.bisect_right
    out = []
    for t in times:
        if t <= first:
            out.append(y_first)
        elif t >= last:
            out.append(y_last)
        else:  # ts[i - 1] <= t < ts[i]: never an empty interval
            i = bisect_right(ts, t)
            t0, y0, y1 = ts[i - 1], ys[i - 1], ys[i]
            out.append(_within(y0 + (y1 - y0) * (t - t0) / (ts[i] - t0), y1, y0))
    return out


def _interp_many(ts: Any, ys: Any, t: np.ndarray) -> np.ndarray:
    """:func:`_interp` at each of ``t`` (a float64 array): the same operations in the same
    order, so the same floats, in one pass instead of a Python call per time. ``ts``/``ys``:
    float64 arrays, or ``array("d")`` (read in place, not copied)."""
    n = len(ts)
    if n < 2:
        return np.full(len(t), ys[0] if n else 0.0)
    kt = np.frombuffer(ts) if isinstance(ts, array) else ts
    ke = np.frombuffer(ys) if isinstance(ys, array) else ys
    # knots[i - 1] <= t < knots[i] inside; times outside are clamped after the arithmetic.
    i = kt.searchsorted(t, "right")
    np.minimum(i, n - 1, out=i)
    np.maximum(i, 1, out=i)
    j = i - 1
    t0, y0 = kt[j], ke[j]
    # Clamped times (infinite, or between repeated end knots) may divide by zero or overflow
    # here; they are overwritten below.
    y1 = ke[i]
    with np.errstate(all="ignore"):
        out = y0 + (y1 - y0) * (t - t0) / (kt[i] - t0)
    # Never past the next knot (see _within): the same floats as the loop.
    out = np.where(y1 >= y0, np.minimum(out, y1), np.maximum(out, y1))
    after = t >= kt[-1]
    if after.any():
        out[after] = ke[-1]
    before = t <= kt[0]
    if before.any():
        out[before] = ke[0]
    return out


def _shaped(
    ts: Sequence[float], cum: Sequence[float], a: float, b: float, e0: float, k: float
) -> tuple[Sequence[float], list[float]]:
    """The knots strictly inside ``(a, b)`` of an energy that is ``e0`` at ``a`` and follows
    the power integral ``cum`` (at ``ts``) scaled by ``k``."""
    i0 = _interp(ts, cum, a)
    lo, hi = bisect.bisect_right(ts, a), bisect.bisect_left(ts, b)
    return ts[lo:hi], [e0 + k * (c - i0) for c in cum[lo:hi]]


def _window_scale(d_counter: float, d_power: float) -> float | None:
    """Counter joules per power-integral joule over one counter window; ``None`` where the
    power integral cannot shape it (zero, or so small the ratio overflows)."""
    if d_power > 0 and math.isfinite(d_counter / d_power):
        return d_counter / d_power
    return None


class DeviceTimeline:
    """The fused cumulative energy of one device. See the module docstring for the rules."""

    def __init__(
        self,
        name: str,
        *,
        calibration_window: float = 0.0,
        max_gap: float = 1.0,
        max_knots: int = 200_000,
        coarse_step: float = 1.0,
        recover_clock: bool = True,
    ) -> None:
        self.name = name
        self._recover_clock = recover_clock
        self._window = calibration_window
        self._max_gap = max_gap
        self._max_knots = max_knots
        self._coarse_step = coarse_step
        # Finalized knots of E(t): never change once written (except coarsening of old ones).
        self._kt = array("d")
        self._ke = array("d")
        self._boundary: float | None = None
        self._boundary_anchor: _Anchor | None = None
        self._power: dict[str, _PowerSeries] = {}
        # Anchors in time order: [_head, _nres) resolved and after the boundary, [_nres, ...)
        # waiting for the counter clock (which waits for power to pass their read time).
        self._anchors: list[_Anchor] = []
        self._head = 0
        self._nres = 0
        self._scan = 0
        self._first_placed = False
        self._deferred: _Anchor | None = None  # a first value resolved by the clock (see _resolve)
        # The first value, while it sits at its read time and the second is not placed (see
        # _drop_stale_start); whether any value was placed (anchors are trimmed: not _nres).
        self._stale_first: _Anchor | None = None
        self._any_placed = False
        self.clock = CounterClock()
        #: Step edges, where given: buffer tiles holding one are split by a segment-power fit.
        self.edges = EdgeModel()
        #: Buffer stamps snapped onto the buffer's regular clock where they are noisy around it
        #: (:mod:`~lightning_watt.energy.sample_grid`); ``None`` keeps them as read.
        self.stamps: SampleGrid | None = SampleGrid()
        #: Readings dropped as unusable (NaN or infinite time or value, negative power), by kind.
        self.rejected: dict[str, int] = {}
        self._counter_acc = 0.0
        self._counter_last: tuple[float, float] | None = None  # (t, raw) of the last read
        self._series = 0
        self._has_counter = False
        self._scale = 1.0  # counter/power calibration, reused where the counter is missing
        self._sum_counter = 0.0
        self._sum_power = 0.0
        self._read_times: list[float] = []  # pending reading times, for gap detection
        self._last_gap_check: float | None = None  # the latest reading time checked for gaps
        self._last_read_t = -math.inf
        self._gaps: list[Gap] = []
        self._explicit_gaps: list[Gap] = []
        self.seconds_by_method: dict[str, float] = {}
        self.resets = 0
        self._tail_cache: tuple[int, list[float], list[float]] | None = None
        # _tail()'s lists (by identity), the last finalized knot, and the knots evaluated from
        # them as lists, and as arrays once asked (see _tail_knots and _tail_arrays).
        self._tail_knots_cache: (
            tuple[
                list[float],
                tuple[float, float],
                list[float],
                list[float],
                tuple[np.ndarray, np.ndarray] | None,
            ]
            | None
        ) = None
        # Watermarks: how far each kind's reader has been polled (live meters tell us), and the
        # kinds whose reader was given up. With them, finalization waits for readers that are
        # merely late (a stalled thread) instead of guessing from data times.
        self._polled: dict[str, float] = {}
        self._retired: set[str] = set()
        self._coarse_n = 0  # leading knots already thinned to coarse_step
        self._version = 0
        self._settled = -1  # _version after the last advance (a later one would do nothing)
        # How far power let the last advance (not a flush) resolve counter values.
        self._power_until = -math.inf

    # ------------------------------------------------------------------ ingest
    def add_edges(self, edges: Iterable[tuple[float, str]], until: float) -> None:
        """Step edges ``(t, label)`` known up to ``until`` (see :class:`EdgeModel`). Once given,
        finalizing waits for edges to reach past a span, as it waits for power."""
        model = self.edges
        # Nothing new since the last advance, and the power already reached no further than
        # the edges did: finalizing stops where it stopped (the power's reach), and the new
        # edges lie past it. The timeline stays settled, so a live meter's hand-overs between
        # two drains of the power buffer (0.5 s) skip an advance that would do nothing (~75 µs
        # of the books' refresher from cold caches, 3-4 of every 5 hand-overs).
        settled = (
            self._settled == self._version
            and model.active
            and (until <= model.until or self._power_horizon() <= model.until)
        )
        model.add(edges, until)
        self._version += 1
        if settled:
            self._settled = self._version

    def add(self, kind: str, t: float, value: float) -> bool:
        """Ingest one reading; ``False`` if it was dropped as unusable (counted in
        :attr:`rejected`): a NaN or infinite time or value, or a negative power. A measurement
        glitch must not become NaN or negative joules, nor stop the run."""
        if kind not in KINDS:
            raise ValueError(f"kind: unknown {kind!r}; accepted: {sorted(KINDS)}")
        if not _usable(kind, t, value):
            self.rejected[kind] = self.rejected.get(kind, 0) + 1
            return False
        t, value = float(t), float(value)
        settled = self._settled == self._version
        self._version += 1
        if kind == COUNTER_J:
            self._add_counter(t, value)
            if settled and self._counter_waits(t):
                # A counter read (10 a second) that no advance can use before power passes
                # it: advancing now would change nothing (a pass costs ~30 µs).
                self._settled = self._version
        else:
            t = t - _KIND_SHIFT_S.get(kind, 0.0)
            if kind == BUFFER_W and self.stamps is not None:
                t = self.stamps.snap(t)
            series = self._power.get(kind)
            if series is None:
                series = self._power[kind] = _PowerSeries(kind)
            if series.t and t <= series.t[-1]:
                return True  # a duplicate or late sample: the series is already past it
            series.append(t, value)
            self.clock.add_power(kind, t, value)
            if self._boundary is not None and t < self._boundary and len(series.t) == 1:
                return True
        self._read_times.append(t)
        self._last_read_t = max(self._last_read_t, t)
        return True

    def _counter_waits(self, t: float) -> bool:
        """Whether a counter read at ``t``, added to a timeline the last advance left settled,
        leaves an advance nothing to do: the first value is placed, and this read is after
        the boundary and too recent to resolve with the power that advance had (the power
        and edges are unchanged since: any change would have unsettled it), so an advance
        would stop where the last one did."""
        b = self._boundary
        return (
            self._first_placed
            and b is not None
            and t > b
            and t + self.clock.lookahead_s > self._power_until
        )

    def _add_counter(self, t: float, raw: float) -> None:
        self._has_counter = True
        last = self._counter_last
        if last is not None and t <= last[0] + _MIN_COUNTER_GAP_S:
            # A read this close to the last says nothing new about when energy was spent (the
            # next one carries its value: the counter is cumulative), and an increment over
            # next to no time would be a power of 1e300 W and more (inf, then NaN joules).
            return
        if last is None:
            self._anchors.append(_Anchor(t, self._counter_acc, 0))
        elif raw > last[1]:
            self._counter_acc += raw - last[1]
            self._anchors.append(_Anchor(t, self._counter_acc, self._series, lo=last[0]))
        elif raw < last[1]:
            # Driver reload or wrap: the counter restarted. The energy across the drop is
            # unknown to the counter; a new series starts and power bridges the two.
            self.resets += 1
            self._series += 1
            self._anchors.append(_Anchor(t, self._counter_acc, self._series))
        self.clock.add_read(t, self._counter_acc, self._series)
        self._counter_last = (t, raw)

    def _resolve(self, power_until: float) -> None:
        """Place new counter values at their update instants once power has passed them (see
        :mod:`~lightning_watt.energy.counter_clock`); in time order, so live and replayed
        timelines resolve alike. Values the clock holds back (waiting for its first fit) sit
        in ``[_nres, _scan)`` until a later value is placed, or ``flush``."""
        anchors, clock = self._anchors, self.clock
        while self._scan < len(anchors):
            x = anchors[self._scan]
            first = not self._first_placed
            if first and self._power_unheard() and power_until != math.inf:
                break  # whether power began before it is not known yet (see _advance)
            if first and self._recover_clock and self._power_before(x.t - clock.period_s):
                # Power began over an update before the first value (the meter's first reads
                # stalled): power bridges up to that value, so it must sit at its update
                # instant, as every later one does. At its read time the bridge would also
                # count the 0-100 ms by which the value is stale (+27 J at 300 W seen).
                self._first_placed, first, self._deferred = True, False, x
            if x.t + clock.lookahead_s > power_until and not first:
                break
            self._scan += 1
            if not self._recover_clock or first:
                # The device's first value starts its energy at its read time, at once, so
                # energy is known from the first reading on whatever the clock finds later.
                self._first_placed = True
                clock.counts[READ_TIME] += 1
                self._place(x, (x.t, READ_TIME))
                continue
            placed = clock.resolve(x.t, x.lo, first=x is self._deferred)
            if placed is None:
                continue
            while self._nres < self._scan - 1:
                w = anchors[self._nres]
                self._place(w, clock.place(w.t, w.lo))
            self._place(x, placed)
        if math.isinf(power_until) and power_until > 0:  # flush: nothing more will come
            while self._nres < self._scan:
                w = anchors[self._nres]
                self._place(w, clock.place(w.t, w.lo))

    def _power_unheard(self) -> bool:
        """Whether a power reader is declared and none has delivered a sample yet."""
        return not any(s.t for s in self._power.values()) and bool(self._active_power())

    def _power_before(self, t: float) -> bool:
        """Whether power readings began before ``t``: read before it, not a trailing mean
        placed half its window earlier (every ``average_W`` series begins so)."""
        return any(
            s.t and s.t[0] + _KIND_SHIFT_S.get(s.kind, 0.0) < t for s in self._power.values()
        )

    def _place(self, x: _Anchor, placed: tuple[float, str]) -> None:
        u, how = placed
        clock = self.clock
        prev = self._anchors[self._nres - 1].u if self._nres > 0 else -math.inf
        if not prev < u <= x.t:
            clock.counts[how] -= 1
            clock.counts[READ_TIME] += 1
            u, how = x.t, READ_TIME
        x.u, x.how = u, how
        if clock.history is not None:
            clock.history.append((x.t, u, how))
        if not self._any_placed:
            self._any_placed = True
            if self._recover_clock and how == READ_TIME:
                # The device's first value at its read time: placed so at once, or a stalled
                # start's that waited for a grid in vain (a tight-loop reader: brackets only).
                self._stale_first = x
        elif self._stale_first is not None:
            first, self._stale_first = self._stale_first, None
            self._drop_stale_start(first, x)
        self._nres += 1

    def _drop_stale_start(self, first: _Anchor, second: _Anchor) -> None:
        """The first value sits at its read time, but it is the counter as of its update, up
        to a period before: the increment to the second value, placed at its update instant,
        is the energy since ``second.u - period``, not since the first read. Counted whole
        from the first read, the part before it lands between the read and the second value
        (flat 300 W, a read 73 ms stale: those 27 ms read 1100 W) and the run gains it
        (+22 J), twice where power read before the first value already counts it. Only the
        share after the first read is kept: the rest happened before the meter's first reading
        (power read then is its own). Live and replayed timelines place the second value
        alike, so both shift alike."""
        if second.how not in _UPDATE_INSTANTS or second.series != first.series:
            return  # a second value at its read time is as stale as the first: nothing to cut
        # The first value's update: the grid point through the second's at or before the first
        # read (a read may come after two updates: the increment then spans both). A read
        # within a few ms of an update is taken as after it: the second value's instant is
        # only that precise, and else a period's joules would go (30 J at 300 W).
        period = self.clock.period_s
        periods = math.ceil((second.u - first.t) / period - _STALE_START_SLACK)
        span = period * max(1, periods)
        before = first.t - (second.u - span)
        if 0.0 < before < period:
            first.acc += (second.acc - first.acc) * (before / span)

    def mark_gap(self, start: float, end: float, reason: str) -> None:
        if end > start:
            last = self._explicit_gaps[-1] if self._explicit_gaps else None
            if last is not None and last.reason == reason and start <= last.end:
                # Repeated failures of one reader extend one gap, not stack overlapping copies.
                merged = Gap(self.name, min(last.start, start), max(last.end, end), reason)
                self._explicit_gaps[-1] = merged
                return
            self._explicit_gaps.append(Gap(self.name, start, end, reason))

    def mark_polled(self, kind: str, t: float) -> bool:
        """The reader of ``kind`` has delivered everything up to ``t`` (even if nothing new).
        Returns whether finalizing may now go further than at the last :meth:`advance`:
        finalizing reads which readers exist, not how far they got, so a watermark of a kind
        seen before, with nothing else new since that advance, changes nothing."""
        settled = (
            self._settled == self._version
            and kind in self._polled
            and (kind == COUNTER_J or kind in self._power)
        )
        if kind != COUNTER_J and kind not in self._power:
            # Declared before its first sample: an empty series makes the timeline wait for it.
            self._power[kind] = _PowerSeries(kind)
        if t > self._polled.get(kind, -math.inf):
            self._polled[kind] = t
            self._version += 1
        if settled:
            self._settled = self._version
        return not settled

    def retire(self, kind: str) -> None:
        """The reader of ``kind`` is gone for good: stop waiting for it."""
        self._retired.add(kind)
        self._version += 1

    @property
    def _watermarked(self) -> bool:
        return bool(self._polled)

    # ------------------------------------------------------------------ finalize
    def _active_power(self) -> list[_PowerSeries]:
        """Power kinds still delivering, best first. With watermarks: every kind not retired.
        Without (a recording read in time order): a kind silent for long is not waited on."""
        present = [s for s in self._power.values() if s.kind not in self._retired]
        if not self._watermarked:
            present = [s for s in present if s.t]
            newest = max((s.last_t for s in present), default=-math.inf)
            present = [s for s in present if newest - s.last_t <= _STALE_S]
        return sorted(present, key=lambda s: POWER_KINDS.index(s.kind))

    def _shape_for(
        self, a: float, b: float, refine: bool = True
    ) -> tuple[str, list[float], list[float]] | None:
        """The best power kind whose samples cover ``[a, b]``, as cumulative knots (buffer
        tiles split at step edges when edges are known and ``refine``)."""
        best = None
        for s in sorted(self._power.values(), key=lambda s: POWER_KINDS.index(s.kind)):
            if len(s.t) < 2:
                continue
            if s.t[0] <= a + self._max_gap and s.t[-1] >= b - 1e-9:
                best = s
                break
            if best is None and s.t[-1] > a:
                best = s
        if best is None:
            return None
        ts, cum = best.knots()
        if refine and best.kind == BUFFER_W and self.edges.active:
            ts, cum = self._split_at_edges(ts, cum, a, b)
        if a < ts[0] and best.hold is not None:
            ts, cum = _with_first_window(best, ts, cum)
        return best.kind, ts, cum

    def _split_at_edges(
        self, ts: list[float], cum: list[float], a: float, b: float
    ) -> tuple[list[float], list[float]]:
        """The knots of the tiles spanning ``[a, b]``, with knots added inside the tiles that
        hold a step edge (:meth:`EdgeModel.split`)."""
        n = len(ts)
        i_lo = max(1, bisect.bisect_left(ts, a))
        i_hi = min(n - 1, bisect.bisect_left(ts, b))
        out_t, out_c = [ts[i_lo - 1]], [cum[i_lo - 1]]
        for i in range(i_lo, i_hi + 1):
            inner_t, inner_c = self.edges.split(ts, cum, i)
            out_t.extend(inner_t)
            out_c.extend(inner_c)
            out_t.append(ts[i])
            out_c.append(cum[i])
        return out_t, out_c

    def _power_horizon(self) -> float:
        """How far the best delivering power kind reaches: windows beyond wait for it."""
        active = self._active_power()
        if not active:
            return math.inf if not self._power or self._watermarked else -math.inf
        if not active[0].t:
            return -math.inf  # the best reader is declared but has not spoken yet: wait
        # Data time, not the watermark: a window must end inside the best kind's samples, or a
        # lesser kind that happens to cover it would be picked to shape it.
        return active[0].last_t

    def _emit(self, ts: Iterable[float], es: Iterable[float], method: str, a: float, b: float):
        ts, es = list(ts), list(es)
        if len(ts) >= 32 and len(ts) == len(es):
            self._emit_many(np.array(ts), np.array(es))
        else:
            for t, e in zip(ts, es, strict=True):
                if self._kt and t <= self._kt[-1]:
                    continue
                # Rounding in the power integral must not make E(t) dip (by 1e-15 J).
                self._kt.append(t)
                self._ke.append(max(e, self._ke[-1]) if self._ke else e)
        self.seconds_by_method[method] = self.seconds_by_method.get(method, 0.0) + (b - a)

    def _emit_many(self, t: np.ndarray, e: np.ndarray) -> None:
        """The loop of :meth:`_emit` on arrays (a window split at 1.5 ms steps emits ~130
        knots): a knot is kept if later than every one before it, its energy raised to the
        highest kept so far. The same floats."""
        kt, ke = self._kt, self._ke
        before = np.empty_like(t)
        before[0] = kt[-1] if kt else -math.inf
        np.maximum.accumulate(t[:-1], out=before[1:])
        np.maximum(before[1:], before[0], out=before[1:])
        keep = t > before
        t, e = t[keep], e[keep]
        if ke and len(e):
            e[0] = max(e[0], ke[-1])
        np.maximum.accumulate(e, out=e)
        kt.frombytes(t.tobytes())
        ke.frombytes(e.tobytes())

    def _start(self, t: float, anchor: _Anchor | None) -> None:
        self._boundary = t
        self._boundary_anchor = anchor
        self._kt.append(t)
        self._ke.append(0.0)

    def _calibrated(self, a: _Anchor, b: _Anchor, between: list[_Anchor]) -> None:
        e0 = self._ke[-1]
        d_counter = b.acc - a.acc
        shape = self._shape_for(a.u, b.u)
        if shape is not None:
            kind, ts, cum = shape
            d_power = _interp(ts, cum, b.u) - _interp(ts, cum, a.u)
            k = _window_scale(d_counter, d_power)
            if k is not None:
                inner, energies = _shaped(ts, cum, a.u, b.u, e0, k)
                self._emit([*inner, b.u], [*energies, e0 + d_counter], f"counter+{kind}", a.u, b.u)
                self._learn_scale(d_counter, d_power)
                return
        self._emit(
            [x.u for x in between] + [b.u],
            [e0 + x.acc - a.acc for x in between] + [e0 + d_counter],
            COUNTER_J,
            a.u,
            b.u,
        )

    def _learn_scale(self, d_counter: float, d_power: float) -> None:
        # An exponentially weighted ratio over the last few seconds of windows: steady enough
        # to carry the counter's calibration over a stretch where the counter is missing.
        self._sum_counter = 0.9 * self._sum_counter + d_counter
        self._sum_power = 0.9 * self._sum_power + d_power
        if self._sum_power > 0:
            self._scale = min(2.0, max(0.5, self._sum_counter / self._sum_power))

    def _hold_power(self, a: float, b: float, reason: str) -> None:
        """No reading shapes [a, b]: carry the last known power across it (reported as a gap),
        rather than counting it as zero."""
        watts = 0.0
        for s in sorted(self._power.values(), key=lambda s: POWER_KINDS.index(s.kind)):
            i = bisect.bisect_right(s.t, a) - 1
            if i >= 0:
                watts = s.w[i]
                break
        else:
            if len(self._kt) >= 2 and self._kt[-1] > self._kt[-2]:
                watts = (self._ke[-1] - self._ke[-2]) / (self._kt[-1] - self._kt[-2])
        self._emit([b], [self._ke[-1] + self._scale * watts * (b - a)], "held power", a, b)
        self._gaps.append(Gap(self.name, a, b, reason))

    def _power_only(self, a: float, b: float) -> bool:
        shape = self._shape_for(a, b)
        if shape is None:
            return False
        kind, ts, cum = shape
        # An estimate is already in joules of the device (an unmeasured device's estimate is
        # its counter-calibrated mean power): the counter's calibration of a sensor is not
        # applied to it again.
        k = 1.0 if kind == ESTIMATE_W else self._scale
        e0 = self._ke[-1]
        inner, energies = _shaped(ts, cum, a, b, e0, k)
        self._emit(
            [*inner, b],
            [*energies, e0 + k * (_interp(ts, cum, b) - _interp(ts, cum, a))],
            kind if not self._has_counter else f"{kind} (no counter)",
            a,
            b,
        )
        return True

    def _advance(self, final: bool) -> None:
        # Finalizing moves the knots the provisional tail hangs from (flush adds no reading).
        self._version += 1
        power_until = math.inf if final else self._power_horizon()
        if self.edges.active and not final:
            # A tile's split looks window_s past it, at samples and edges: both must be in.
            power_until = min(power_until, self.edges.until) - self.edges.window_s - 0.03
        if not final:
            self._power_until = power_until
        self._resolve(power_until)
        anchors = self._anchors
        if self._boundary is None:
            firsts = [s.t[0] for s in self._power.values() if s.t]
            if not final and self._power_unheard():
                # A power reader is declared but has not spoken (a live meter reads the counter
                # first, the buffer a moment later): the start, and the first counter value,
                # wait for it, so that power stamped before that value starts the energy as it
                # does when the recording is read back, where both come together.
                return
            if self._nres:
                first_anchor = anchors[0]
                if firsts and min(firsts) < first_anchor.u:
                    self._start(min(firsts), None)
                else:
                    self._start(first_anchor.u, first_anchor)
            elif firsts and (final or not self._has_counter):
                self._start(min(firsts), None)
            else:
                return
        while True:
            b = self._boundary
            assert b is not None
            n = self._nres
            head = self._head
            while head < n and anchors[head].u <= b:
                head += 1
            self._head = head
            # Why the stretch to the next anchor is bridged with power alone, if it is.
            bridge = None
            if self._boundary_anchor is not None and head < n:
                series = self._boundary_anchor.series
                # Series only grow along the list: the last anchor of this one by bisection.
                last = bisect.bisect_right(anchors, series, head, n, key=_series) - 1
                if head <= last < n - 1 and (final or anchors[last].u <= power_until):
                    # A reset follows: close this series at its last anchor.
                    self._finish_calibrated(last)
                    continue
                if last >= head:
                    ready = bisect.bisect_right(anchors, power_until, head, last + 1, key=_u)
                    end = head
                    while end < ready and anchors[end].u - b < self._window:
                        end += 1
                    if end == ready:
                        end = ready - 1 if final and ready > head else -1
                    if end >= 0:
                        self._finish_calibrated(end)
                        continue
                else:  # the first anchor after a reset
                    bridge = "counter reset, no power"
            elif self._boundary_anchor is None and head < n:
                bridge = "no power readings: last power held"
            if bridge is not None:
                nxt = anchors[head]
                if not final and nxt.u > power_until:
                    break
                if not self._power_only(b, nxt.u):
                    self._hold_power(b, nxt.u, bridge)
                self._set_boundary(nxt.u, nxt)
                continue
            # No anchor ahead: power alone, if the counter is absent or has gone quiet.
            newest_power = max((s.last_t for s in self._power.values()), default=-math.inf)
            last_anchor = anchors[-1].t if anchors else b
            if self._watermarked and COUNTER_J in self._polled:
                counter_quiet = final or COUNTER_J in self._retired
            else:
                counter_quiet = (
                    not self._has_counter or final or newest_power - last_anchor > _STALE_S
                )
            if self._nres < len(anchors) and not final:
                counter_quiet = False  # values still waiting for the clock come first
            until = newest_power
            if counter_quiet and until > b and self._power_only(b, until):
                self._set_boundary(until, None)
                continue
            break
        self._find_gaps()
        self._coarsen()

    def _finish_calibrated(self, end: int) -> None:
        start = self._boundary_anchor
        assert start is not None
        anchors = self._anchors
        x = anchors[end]
        self._calibrated(start, x, anchors[self._head : end])
        self._set_boundary(x.u, x)

    def _set_boundary(self, t: float, anchor: _Anchor | None) -> None:
        self._boundary = t
        self._boundary_anchor = anchor
        anchors = self._anchors
        head = self._head
        while head < self._nres and anchors[head].u <= t:
            head += 1
        if head > 16 and 2 * head >= len(anchors):
            # Amortised: a backlog of anchors is not copied once per window.
            del anchors[:head]
            self._nres -= head
            self._scan -= head
            head = 0
        self._head = head
        for s in self._power.values():
            s.drop_before(t - 0.25)
        self.edges.drop_before(t - 0.25)

    def _find_gaps(self) -> None:
        b = self._boundary
        if b is None or not self._read_times or min(self._read_times) > b:
            return  # nothing finalized since the last check (most calls: one per read)
        times = sorted(self._read_times)
        keep = [t for t in times if t > b]
        done = [t for t in times if t <= b]
        prev = self._last_gap_check
        for t in done:
            if prev is not None and t - prev > self._max_gap:
                self._gaps.append(Gap(self.name, prev, t))
            prev = t
        self._last_gap_check = prev
        self._read_times = keep

    def _coarsen(self) -> None:
        n = len(self._kt)
        if n <= self._max_knots:
            return
        # Old knots are thinned to coarse_step apart; E at every kept knot is unchanged, so
        # totals and additivity hold, only sub-second shape of old data is lost. Only the older
        # half of the knots not yet thinned is thinned: halving all knots, once thinned ones
        # filled half the budget (~28 h at 50 knots/s), thinned nothing, and memory and time
        # per call grew without bound.
        done = self._coarse_n
        if done > self._max_knots // 2:
            # Thinned knots fill half the budget: thin them all again, twice as sparse, so
            # recent data keeps its fine shape however long the run.
            self._coarse_step *= 2
            done = 0
        cut = done + (n - done) // 2
        kt, ke = array("d"), array("d")
        last = self._kt[done - 1] if done else -math.inf
        for i in range(done, cut):
            if self._kt[i] - last >= self._coarse_step:
                kt.append(self._kt[i])
                ke.append(self._ke[i])
                last = self._kt[i]
        self._kt[done:cut] = kt
        self._ke[done:cut] = ke
        self._coarse_n = done + len(kt)

    def advance(self) -> None:
        """Finalize whatever the readings so far determine."""
        if self._settled == self._version:
            return  # nothing changed since the last advance, which stopped where it could
        self._advance(final=False)
        self._settled = self._version  # see mark_polled

    def flush(self) -> None:
        """Finalize everything, including the not-yet-calibrated tail (end of a run)."""
        self._advance(final=True)
        self._find_gaps_all()

    def _find_gaps_all(self) -> None:
        self._read_times = [t for t in self._read_times if t > (self._boundary or -math.inf)]

    # ------------------------------------------------------------------ query
    @property
    def finalized_until(self) -> float:
        """Energy up to this time is final: later readings cannot change it."""
        return self._kt[-1] if self._kt else -math.inf

    @property
    def start(self) -> float:
        return self._kt[0] if self._kt else math.inf

    def _tail(self) -> tuple[list[float], list[float]]:
        """Provisional knots past the finalized part: through every counter value already read
        (at its update instant where resolved, else at its read time), shaped by the pending
        power between them as finalizing shapes it, then the power past the newest value,
        scaled by the counter's calibration. So the live total follows the counter as closely
        as the final one, and differs from it only by where values sit in time and by the power
        after the newest read."""
        if self._tail_cache is not None and self._tail_cache[0] == self._version:
            return self._tail_cache[1], self._tail_cache[2]
        ts: list[float] = []
        es: list[float] = []
        if self._kt:
            b, e0 = self._kt[-1], self._ke[-1]
            shape = self._shape_for(b, math.inf, refine=False)
            start = self._boundary_anchor
            values = []
            if start is not None:
                values = [
                    x for x in self._anchors[self._head :] if x.series == start.series and x.u > b
                ]
            t0, a0 = b, start.acc if start is not None else 0.0
            scale = self._scale
            for x in values:
                # A value not yet resolved sits where the clock's current fit puts it, else at
                # its read time (then its joules are late by up to one update: an underestimate).
                u = x.u if x.how is not None else self._provisional_instant(x)
                if u <= t0:
                    continue
                if shape is not None and shape[1][-1] >= u:
                    _, pts, cum = shape
                    d_power = _interp(pts, cum, u) - _interp(pts, cum, t0)
                    k = _window_scale(x.acc - a0, d_power)
                    if k is not None:
                        inner, energies = _shaped(pts, cum, t0, u, e0, k)
                        ts.extend(inner)
                        es.extend(energies)
                ts.append(u)
                es.append(e0 + x.acc - a0)
                t0, e0, a0 = u, e0 + x.acc - a0, x.acc
            if shape is not None and self._sum_power <= 0 and start is not None and t0 > b:
                # Nothing calibrated yet: the counter against the power since the boundary.
                _, pts, cum = shape
                k = _window_scale(a0 - start.acc, _interp(pts, cum, t0) - _interp(pts, cum, b))
                if k is not None and t0 <= pts[-1]:
                    scale = min(2.0, max(0.5, k))
            if shape is not None:
                kind, pts, cum = shape
                # An estimate is not a sensor the counter calibrates (as in _power_only).
                k = 1.0 if kind == ESTIMATE_W else scale
                inner, energies = _shaped(pts, cum, t0, math.inf, e0, k)
                ts.extend(inner)
                es.extend(energies)
            floor = self._ke[-1]
            for i, e in enumerate(es):  # energy never steps back, even provisionally
                es[i] = floor = max(e, floor)
        self._tail_cache = (self._version, ts, es)
        return ts, es

    def _provisional_instant(self, x: _Anchor) -> float:
        if not self._recover_clock:
            return x.t
        u = self.clock.estimate(x.t, x.lo)
        return u if u is not None else x.t

    @property
    def horizon(self) -> float:
        """The latest time energy is known for, provisionally (finalized or not)."""
        ts, _ = self._tail()
        return ts[-1] if ts else self.finalized_until

    def knots(self) -> tuple[list[float], list[float]]:
        """The times and cumulative joules that :meth:`energy_at` interpolates linearly
        between (clamped at both ends), finalized and provisional: for evaluating it at many
        times at once (a repeated time takes the later value)."""
        ts, es = self._tail()
        return [*self._kt, *ts], [*self._ke, *es]

    def energy_at(self, t: float, provisional: bool = True) -> float:
        """Cumulative joules from the first reading to ``t`` (clamped to the data)."""
        if not self._kt:
            return 0.0
        if t <= self._kt[-1] or not provisional:
            return _interp(self._kt, self._ke, t)
        ts, es = self._tail()
        if not ts:
            return self._ke[-1]
        return _interp([self._kt[-1], *ts], [self._ke[-1], *es], t)

    def energy_at_many(self, times: Sequence[float], provisional: bool = True) -> list[float]:
        """:meth:`energy_at` at each of ``times`` (numbers, no NaN; unchecked): the same
        floats, the knots and the provisional tail fetched once for all of them, and from
        :data:`VECTOR_MIN` times on evaluated with numpy."""
        n = len(times)
        if not self._kt or n == 0:
            return [0.0] * n
        last = self._kt[-1]
        if n >= VECTOR_MIN:
            return self._energy_at_array(np.asarray(times, dtype=np.float64), provisional)
        if not provisional:
            return _interp_list(self._kt, self._ke, times)
        tail_t, tail_e = self._tail_knots()
        if min(times) > last:  # the usual batch of the newest steps: all in the tail
            return _interp_list(tail_t, tail_e, times)
        # The books' live batch: the newest steps (in the tail) and the stage's start (in the
        # final knots). The final knots are looked up only for the times at or before their
        # end (both sides for every time were ~19 % of the refresher's CPU); a time's value
        # does not depend on the others, so the same floats.
        out = _interp_list(tail_t, tail_e, times)
        early = [i for i, t in enumerate(times) if t <= last]
        final = _interp_list(self._kt, self._ke, [times[i] for i in early])
        for i, e in zip(early, final, strict=True):
            out[i] = e
        return out

    def _energy_at_array(self, t: np.ndarray, provisional: bool) -> list[float]:
        last = self._kt[-1]
        if not provisional or t.max() <= last:
            return _interp_many(self._kt, self._ke, t).tolist()
        tail_t, tail_e = self._tail_arrays()
        if t.min() > last:  # the books' newest steps: all in the tail (as the loop below)
            return _interp_many(tail_t, tail_e, t).tolist()
        late = t > last
        out = _interp_many(self._kt, self._ke, t)
        out[late] = _interp_many(tail_t, tail_e, t[late])
        return out.tolist()

    def _tail_knots(self) -> tuple[list[float], list[float]]:
        """What :meth:`energy_at` interpolates past the finalized knots (the last finalized
        knot, then the provisional tail), rebuilt only when the tail or that knot changed."""
        ts, es = self._tail()
        head = (self._kt[-1], self._ke[-1])
        cached = self._tail_knots_cache
        if cached is None or cached[0] is not ts or cached[1] != head:
            cached = (ts, head, [head[0], *ts], [head[1], *es], None)
            self._tail_knots_cache = cached
        return cached[2], cached[3]

    def _tail_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_tail_knots` as arrays, for the numpy path only: built on its first use for
        a tail (two numpy calls cost ~20 µs from the cold caches of the books' refresher,
        which looks up ~35 times a refresh, in Python)."""
        tail_t, tail_e = self._tail_knots()
        cached = self._tail_knots_cache
        assert cached is not None
        if cached[4] is None:
            cached = (*cached[:4], (np.array(tail_t), np.array(tail_e)))
            self._tail_knots_cache = cached
        arrays = cached[4]
        assert arrays is not None
        return arrays

    def gaps(self, t0: float = -math.inf, t1: float = math.inf) -> list[Gap]:
        found = [g for g in (*self._gaps, *self._explicit_gaps) if g.end > t0 and g.start < t1]
        if self._kt and t0 < self.start and t0 > -math.inf:
            found.append(Gap(self.name, t0, min(self.start, t1), "before the first reading"))
        h = self.horizon
        if self._kt and t1 > h and t1 < math.inf:
            found.append(Gap(self.name, max(h, t0), t1, "after the last reading"))
        return sorted(found, key=lambda g: g.start)

    def memory_bytes(self) -> int:
        pending = sum(len(s.t) for s in self._power.values()) * 3 + len(self._read_times)
        anchors = len(self._anchors) * 88
        knots = (len(self._kt) + len(self._ke)) * 8
        return knots + pending * 8 + anchors + self.clock.memory_bytes()

    @property
    def methods(self) -> list[str]:
        return sorted(self.seconds_by_method, key=lambda m: -self.seconds_by_method[m])


class EnergyTimeline:
    """Cumulative energy per device, fused from raw readings.

    Args:
        calibration_window: shortest span (seconds) over which the counter calibrates the power
            shape. ``0`` (default) honours every counter change, so ``E`` equals the counter at
            each of its readings; longer windows let power alone place energy inside them.
        max_gap: seconds without any reading on a device after which the hole is a reported gap.
        max_knots: knots kept per device before old ones are thinned (bounds memory).
        coarse_step: spacing (seconds) old knots are thinned to.
        devices: restrict to these device names (readings of others raise ``ValueError``).
        recover_clock: place each counter value at its recovered update instant
            (:mod:`~lightning_watt.energy.counter_clock`); ``False`` keeps the read time.

    Example:
        >>> from lightning_watt.energy.trace import bundled_trace, load_trace
        >>> trace = load_trace(bundled_trace("h200-square-wave"))
        >>> tl = trace.timeline(kinds={"buffer_W"})
        >>> tl.devices
        ['gpu0']
    """

    def __init__(
        self,
        *,
        calibration_window: float = 0.0,
        max_gap: float = 1.0,
        max_knots: int = 200_000,
        coarse_step: float = 1.0,
        devices: Iterable[str] | None = None,
        recover_clock: bool = True,
    ) -> None:
        recover_clock = boolean("recover_clock", recover_clock)
        # Keyword arguments for every DeviceTimeline; each value has its parameter's type.
        self._kwargs: dict[str, Any] = {
            "calibration_window": finite_number(
                "calibration_window",
                calibration_window,
                minimum=0.0,
                maximum=60.0,
                exclusive_maximum=True,
                unit="seconds",
            ),
            "max_gap": positive_number("max_gap", max_gap, unit="seconds"),
            "max_knots": integer("max_knots", max_knots, minimum=16),
            "coarse_step": positive_number("coarse_step", coarse_step, unit="seconds"),
            "recover_clock": recover_clock,
        }
        names = None if devices is None else string_collection("devices", devices)
        self._allowed = None if names is None else frozenset(names)
        self._devices: dict[str, DeviceTimeline] = {}
        # Every edge given, for devices whose first reading comes later.
        self._edges: list[tuple[float, str]] = []
        self._edges_sorted = True  # whether they are in time order (pruned by bisection)
        self._edges_until = -math.inf
        for name in sorted(self._allowed or ()):
            self._devices[name] = DeviceTimeline(name, **self._kwargs)

    def _device(self, name: str) -> DeviceTimeline:
        tl = self._devices.get(name)
        if tl is None:
            if self._allowed is not None:
                raise ValueError(
                    f"device: unknown {name!r}; this timeline has {sorted(self._allowed)}"
                )
            tl = self._devices[name] = DeviceTimeline(name, **self._kwargs)
            if self._edges or self._edges_until > -math.inf:
                tl.add_edges(self._edges, self._edges_until)
        return tl

    def add(self, readings: Iterable[Reading]) -> None:
        """Feed readings (each device's readings of one kind in time order) and finalize what
        they determine."""
        touched: set[str] = set()
        for r in readings:
            self._device(r.device).add(r.kind, r.t, r.value)
            touched.add(r.device)
        for name in touched:
            self._devices[name].advance()

    def add_edges(self, edges: Iterable[tuple[float, str]], until: float) -> None:
        """Step edges for every device: ``(t, label)``, from ``t`` on power belongs to a segment
        ``label`` (a phase at a step start, ``""`` at its end; see
        :func:`~lightning_watt.energy.segment_fit.edges_from_steps`); every edge up to ``until``
        has been given. Buffer samples holding an edge are then split by a segment-power fit
        instead of spread evenly; finalizing waits for edges as it waits for readings.

        Example:
            >>> tl = EnergyTimeline()
            >>> tl.add_edges([(0.05, "train"), (0.055, "")], until=1.0)
            >>> tl.add([Reading(0.02 * i, "gpu0", "buffer_W", 200.0 if i == 3 else 100.0)
            ...         for i in range(10)])
            >>> tl.flush()
            >>> round(tl.energy_between(0.05, 0.055)["gpu0"], 1)  # 5 ms at 500 W, not 200 W
            2.5
        """
        self.add_boundaries([(float(t), str(label)) for t, label in edges], until)

    def add_boundaries(self, edges: list[tuple[float, str]], until: float) -> None:
        """:meth:`add_edges` for edges that are ``(float, str)`` tuples already, as a meter's
        :class:`~lightning_watt.energy.segment_fit.StepBoundaries` hands them (~1300 a second
        at 1 ms steps): not converted one by one."""
        _check_time("until", until)
        kept = self._edges
        if self._edges_sorted and edges:
            times = list(map(_FIRST, edges))
            self._edges_sorted = (not kept or times[0] >= kept[-1][0]) and all(
                map(operator.le, times, times[1:])  # NaN fails it too
            )
        kept.extend(edges)
        self._edges_until = max(self._edges_until, until)
        for tl in self._devices.values():
            tl.add_edges(edges, until)
            tl.advance()
        if self._devices:
            # Kept only for a device whose first reading is still to come.
            done = min(tl.finalized_until for tl in self._devices.values()) - 1.0
            if kept and kept[0][0] < done:
                if self._edges_sorted:
                    # In time order (as a meter hands them): a prefix, found by bisection
                    # rather than a pass over the ~2 s of edges kept at every hand-over.
                    del kept[: bisect.bisect_left(kept, done, key=_FIRST)]
                else:
                    self._edges = [e for e in kept if e[0] >= done]

    def mark_gap(self, device: str, start: float, end: float, reason: str) -> None:
        """Record that ``device`` was not measured over ``[start, end]`` (a source failed)."""
        self._device(device).mark_gap(start, end, reason)

    def mark_polled(self, pairs: Iterable[tuple[str, str]], t: float) -> None:
        """Readers of these ``(device, kind)`` pairs have delivered everything up to ``t``.

        A live meter calls this after every read, even an empty one. Energy is then finalized
        only as far as every live reader has reached, so a reader that is merely late (a
        stalled thread) is waited for instead of replaced by a worse one.
        """
        touched = set()
        for device, kind in pairs:
            if self._device(device).mark_polled(kind, t):
                touched.add(device)
        for name in touched:
            self._devices[name].advance()

    def retire(self, device: str, kind: str) -> None:
        """The reader of ``kind`` on ``device`` is gone for good: stop waiting for it."""
        tl = self._device(device)
        tl.retire(kind)
        tl.advance()

    def flush(self) -> None:
        """Finalize everything: call at the end of a run (or before reading a whole trace)."""
        for tl in self._devices.values():
            tl.flush()

    @property
    def devices(self) -> list[str]:
        return sorted(self._devices)

    def device(self, name: str) -> DeviceTimeline:
        if name not in self._devices:
            raise ValueError(f"device: unknown {name!r}; this timeline has {self.devices}")
        return self._devices[name]

    def energy_between(self, t0: float, t1: float, provisional: bool = True) -> dict[str, float]:
        """Joules per device over ``[t0, t1]``. Parts outside the data count as zero and are
        reported by :meth:`gaps`. ``provisional=False`` uses only finalized energy."""
        _check_time("t0", t0)
        _check_time("t1", t1)
        if t1 < t0:
            raise ValueError(f"energy_between: t1 ({t1}) must not be before t0 ({t0})")
        return {
            name: tl.energy_at(t1, provisional) - tl.energy_at(t0, provisional)
            for name, tl in sorted(self._devices.items())
        }

    def energy_at(self, t: float, provisional: bool = True) -> dict[str, float]:
        """Cumulative joules per device from its first reading up to ``t``."""
        _check_time("t", t)
        return {n: tl.energy_at(t, provisional) for n, tl in sorted(self._devices.items())}

    def energy_at_many(
        self, times: Sequence[float], provisional: bool = True
    ) -> dict[str, list[float]]:
        """Cumulative joules per device at each of ``times``: :meth:`energy_at` for many times
        at once (the same floats), one list per device, each device's knots looked up once
        (and from :data:`VECTOR_MIN` times on, evaluated with numpy).

        Example:
            >>> tl = EnergyTimeline()
            >>> tl.add([Reading(t, "gpu0", "buffer_W", 100.0) for t in (0.0, 0.02, 0.04)])
            >>> tl.flush()
            >>> [round(e, 6) for e in tl.energy_at_many([0.0, 0.01, 1.0])["gpu0"]]
            [0.0, 1.0, 4.0]
        """
        if isinstance(times, np.ndarray):
            if times.dtype.kind not in "fiu":
                raise TypeError(f"times must be times in seconds (numbers), got {times.dtype}")
            if times.dtype.kind == "f" and np.isnan(times).any():
                raise ValueError("times must be times in seconds, got NaN")
            times = times.astype(np.float64).reshape(-1).tolist()
        elif not all(type(t) is float for t in times) or any(t != t for t in times):
            for t in times:  # the exact complaint, for the first bad time
                _check_time("times", t)
        return self.columns(times, provisional)

    def columns(self, times: Sequence[float], provisional: bool = True) -> dict[str, list[float]]:
        """:meth:`energy_at_many` for times already known to be numbers, not NaN (the meter's
        own, ~35 a call 40 times a second: checking each cost ~7 % of the books' refresher)."""
        return {n: tl.energy_at_many(times, provisional) for n, tl in sorted(self._devices.items())}

    def gaps(self, t0: float = -math.inf, t1: float = math.inf) -> list[Gap]:
        """Spans inside ``[t0, t1]`` where a device had no readings."""
        out: list[Gap] = []
        for tl in self._devices.values():
            out.extend(tl.gaps(t0, t1))
        return sorted(out, key=lambda g: (g.start, g.device))

    @property
    def finalized_until(self) -> float:
        """Energy of every device is final up to this time."""
        return min((tl.finalized_until for tl in self._devices.values()), default=-math.inf)

    @property
    def horizon(self) -> float:
        """Energy of every device is known (provisionally) up to this time."""
        return min((tl.horizon for tl in self._devices.values()), default=-math.inf)

    @property
    def version(self) -> int:
        """Changes whenever anything a query could return may have changed (a reading, an
        edge, a poll's watermark): a caller that saw the same version may reuse its answers."""
        return sum(tl._version for tl in self._devices.values()) + len(self._devices)

    def methods(self) -> dict[str, list[str]]:
        """How each device's energy was obtained, most-used first (e.g. ``counter+buffer_W``)."""
        return {n: tl.methods for n, tl in sorted(self._devices.items())}

    def memory_bytes(self) -> int:
        return sum(tl.memory_bytes() for tl in self._devices.values())

    def rejected(self) -> dict[str, dict[str, int]]:
        """Readings dropped as unusable (NaN, infinite, negative power), per device and kind."""
        return {n: dict(tl.rejected) for n, tl in sorted(self._devices.items()) if tl.rejected}

    def notes(self) -> dict[str, list[str]]:
        """What each device's energy assumed, for a summary beside :meth:`methods`: how
        counter values were placed in time (recovered update instants or read times) and
        readings that were dropped."""
        out: dict[str, list[str]] = {}
        for name, tl in sorted(self._devices.items()):
            notes = []
            if tl._has_counter:
                notes.append(tl.clock.describe())
            if tl.rejected:
                dropped = ", ".join(f"{n} {k}" for k, n in sorted(tl.rejected.items()))
                notes.append(f"dropped unusable readings (NaN, infinite or negative): {dropped}")
            if notes:
                out[name] = notes
        return out
