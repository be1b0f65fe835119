"""Counter-anchored energy of a recorded trace, vectorised and streamed: what a report needs
from a trace that has no summary, without the fused :class:`EnergyTimeline` (about 5 us a
reading in Python: 78 s for a day of one GPU).

The rules are the timeline's (:mod:`~lightning_watt.energy.timeline`), applied to whole blocks
of rows with numpy:

* every new counter value is an anchor; between two anchors of one counter series
  ``E(t) = E(a) + dC * (Ip(t) - Ip(a)) / (Ip(b) - Ip(a))``, with ``Ip`` the integral of the
  device's power readings (interval means as steps, point fields as trapezoids, ``average_W``
  half a second earlier), so every counter window's total is exact;
* the best power kind is used throughout; a lesser one fills in where every better one has
  been silent for over 2 s (a lost GPU's recorded estimate);
* before the first anchor, across a counter reset and after the last anchor, power alone,
  scaled by the counter's recent calibration (estimates as they are);
* no counter: the power integral; no power: the counter, linear between its values.

**Where it differs from the timeline.** Anchors sit at their *read* times: the counter-clock
recovery (:mod:`~lightning_watt.energy.counter_clock`), which moves each anchor 0-100 ms
earlier to the counter's update instant, is not run; and the timeline switches to a lesser
power kind across shorter holes of the best one. Totals agree within 0.1 % (both are the
counter's sum; only the two ends of the window move); energy inside spans moves by up to one
100 ms update of power at each span edge (``benchmarks/README.md`` has the measured spread).

Memory is bounded: rows are processed ``block_rows`` at a time, each device keeps one block of
windows per block still needed, and :meth:`TraceEnergy.release` drops those before a time.

Example:
    >>> from lightning_watt.energy.trace import bundled_trace
    >>> from lightning_watt.energy.trace_columns import load_columns
    >>> cols = load_columns(bundled_trace("h200-mlp-stall"))
    >>> energy = TraceEnergy.from_columns(cols)
    >>> start, end = energy.total_at(cols.fit_window)
    >>> round(float(end - start))
    8370
    >>> energy.methods()["gpu0"][0]
    'counter+buffer_W'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_watt.energy.readings import (
    AVERAGE_W,
    BUFFER_W,
    COUNTER_J,
    ESTIMATE_W,
    POWER_KINDS,
)
from lightning_watt.validate import integer

#: Rows of the trace processed at once (bounds the working memory whatever the run length).
BLOCK_ROWS = 1 << 18
#: As the timeline: trailing averages are placed half their window earlier; interval means
#: speak for at most this long before their timestamp.
_SHIFT_S = {AVERAGE_W: 0.5}
_HOLD_S = {BUFFER_W: 0.1, ESTIMATE_W: math.inf}
#: A lesser power kind fills in where the better ones have been silent this long (seconds),
#: as the timeline stops waiting for a reader.
_STALE_S = 2.0
#: The counter's calibration of power, carried where the counter is missing: decayed sums of
#: counter and power joules, each window's weight shrinking by this per later window (a time
#: constant of 200 windows, 20 s: read-time anchors make single windows 0-100 ms off, which
#: the timeline's 10-window memory, on recovered update instants, does not have to average
#: out); windows further back than the span are left out (weight below 1e-6).
_DECAY = 0.995
_DECAY_SPAN = 3000
#: Methods, as the timeline names them.
_LINEAR = "counter_J"


def _power_increments(
    t: np.ndarray, w: np.ndarray, hold: np.ndarray, prev: tuple[float, float] | None
) -> np.ndarray:
    """Joules between consecutive samples (the first relative to ``prev``), as the timeline's
    power series integrates them: ``hold`` is each sample's interval (NaN for a point field,
    integrated as a trapezoid)."""
    if prev is None:
        pt, pw = np.r_[t[:1], t[:-1]], np.r_[w[:1], w[:-1]]
    else:
        pt, pw = np.r_[prev[0], t[:-1]], np.r_[prev[1], w[:-1]]
    dt = t - pt
    trapezoid = 0.5 * (w + pw) * dt
    inc = np.where(np.isnan(hold) | (dt > hold), trapezoid, w * dt)
    # An interval mean after a longer hole speaks for its own window; the rest is bridged.
    long = dt > hold
    if long.any():
        held = hold[long] / 5
        inc[long] = w[long] * held + 0.5 * (w[long] + pw[long]) * (dt[long] - held)
    return inc


@dataclass
class _Block:
    """One device's energy over consecutive windows ``[u[j], u[j+1]]``: ``E = A[j] + K[j] *
    (Ip(x) - I0[j])`` where the power shape is used, else ``A[j] + S[j] * (x - u[j])``."""

    u: np.ndarray  # window starts, and the last window's end
    a: np.ndarray
    k: np.ndarray
    i0: np.ndarray
    slope: np.ndarray
    shaped: np.ndarray
    pt: np.ndarray  # power knots (time, cumulative joules) covering the windows
    pc: np.ndarray
    k2: np.ndarray  # estimates are not calibrated: E += K2[j] * (Ie(x) - Ie0[j])
    ie0: np.ndarray
    pe: np.ndarray  # the estimates' part of pc

    @property
    def start(self) -> float:
        return float(self.u[0])

    @property
    def end(self) -> float:
        return float(self.u[-1])

    def at(self, x: np.ndarray) -> np.ndarray:
        j = np.clip(np.searchsorted(self.u, x, side="right") - 1, 0, len(self.u) - 2)
        xc = np.clip(x, self.u[j], self.u[j + 1])
        ip = np.interp(xc, self.pt, self.pc) if len(self.pt) else xc
        shaped = self.a[j] + self.k[j] * (ip - self.i0[j])
        if self.pe.any():
            shaped = shaped + self.k2[j] * (np.interp(xc, self.pt, self.pe) - self.ie0[j])
        linear = self.a[j] + self.slope[j] * (xc - self.u[j])
        return np.where(self.shaped[j], shaped, linear)


@dataclass
class _Device:
    """The streaming state of one device (what carries from one block of rows to the next)."""

    name: str
    kinds: tuple[str, ...]  # the power kinds present, best first
    has_counter: bool
    # Power: the last sample used and the running integrals (all, estimates only); knots kept
    # from before the last anchor; each kind's latest sample (a lesser kind fills in only
    # where the better ones are silent).
    p_last: tuple[float, float] | None = None
    p_cum: float = 0.0
    e_cum: float = 0.0
    kt: np.ndarray = field(default_factory=lambda: np.zeros(0))
    kc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ke: np.ndarray = field(default_factory=lambda: np.zeros(0))
    last_seen: dict[str, float] = field(default_factory=dict)
    # Counter: the last read (t, raw), accumulated joules and series; anchors not yet closed.
    c_last: tuple[float, float] | None = None
    acc: float = 0.0
    series: int = 0
    at_t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    at_acc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    at_series: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # Energy: E at the last closed boundary, the boundary, its anchor's (acc, series).
    e: float = 0.0
    boundary: float | None = None
    b_anchor: tuple[float, int] | None = None
    sum_c: float = 0.0
    sum_p: float = 0.0
    resets: int = 0
    rate: float = 0.0  # joules per second of the last counter window
    seconds_by_method: dict[str, float] = field(default_factory=dict)
    blocks: list[_Block] = field(default_factory=list)
    done: bool = False
    first: _Block | None = None  # the device's first block (queries before it are 0 J)

    @property
    def kind(self) -> str | None:
        return self.kinds[0] if self.kinds else None

    @property
    def scale(self) -> float:
        return min(2.0, max(0.5, self.sum_c / self.sum_p)) if self.sum_p > 0 else 1.0

    # ------------------------------------------------------------------ ingest
    def add_power(self, by_kind: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """One block's power samples by kind. The best kind is always used; a lesser one only
        where every better one has been silent for over 2 s (as the timeline stops waiting
        for a reader: a lost GPU's estimate after its last measured sample)."""
        ts, ws, holds, est = [], [], [], []
        used: list[tuple[str, np.ndarray]] = []
        for kind in self.kinds:
            if kind not in by_kind:
                continue
            t, w = by_kind[kind]
            t = t - _SHIFT_S.get(kind, 0.0)
            keep = np.r_[True, t[1:] > t[:-1]]
            keep &= t > self.last_seen.get(kind, -math.inf)
            t, w = t[keep], w[keep]
            if not len(t):
                continue
            take = np.ones(len(t), bool)
            for better, bt in used:
                i = np.searchsorted(bt, t, side="right") - 1
                last = np.where(i >= 0, bt[np.maximum(i, 0)], self.last_seen.get(better, -math.inf))
                take &= t - last > _STALE_S
            used.append((kind, t))
            self.last_seen[kind] = float(t[-1])
            ts.append(t[take])
            ws.append(w[take])
            holds.append(np.full(int(take.sum()), _HOLD_S.get(kind, math.nan)))
            est.append(np.full(int(take.sum()), kind == ESTIMATE_W))
        if not ts:
            return
        t, w, hold, is_est = (np.concatenate(x) for x in (ts, ws, holds, est))
        if len(ts) > 1:
            order = np.argsort(t, kind="stable")
            t, w, hold, is_est = t[order], w[order], hold[order], is_est[order]
            keep = np.r_[True, t[1:] > t[:-1]]
            t, w, hold, is_est = t[keep], w[keep], hold[keep], is_est[keep]
        if self.p_last is not None:
            keep = t > self.p_last[0]
            t, w, hold, is_est = t[keep], w[keep], hold[keep], is_est[keep]
        if not len(t):
            return
        inc = _power_increments(t, w, hold, self.p_last)
        if self.p_last is None:
            inc[0] = 0.0
        cum = self.p_cum + np.cumsum(inc)
        ecum = self.e_cum + np.cumsum(np.where(is_est, inc, 0.0))
        self.kt, self.kc, self.ke = np.r_[self.kt, t], np.r_[self.kc, cum], np.r_[self.ke, ecum]
        self.p_last = (float(t[-1]), float(w[-1]))
        self.p_cum, self.e_cum = float(cum[-1]), float(ecum[-1])

    def add_counter(self, t: np.ndarray, raw: np.ndarray) -> None:
        keep = np.r_[True, t[1:] > t[:-1]] if len(t) else np.zeros(0, bool)
        if self.c_last is not None:
            keep &= t > self.c_last[0]
        t, raw = t[keep], raw[keep]
        if not len(t):
            return
        prev = np.r_[raw[0] if self.c_last is None else self.c_last[1], raw[:-1]]
        d = raw - prev
        new = d != 0
        if self.c_last is None:
            new[0] = True
        acc = self.acc + np.cumsum(np.where(d > 0, d, 0.0))
        series = self.series + np.cumsum(d < 0)
        self.resets += int(np.count_nonzero(d < 0))
        self.at_t = np.r_[self.at_t, t[new]]
        self.at_acc = np.r_[self.at_acc, acc[new]]
        self.at_series = np.r_[self.at_series, series[new]]
        self.c_last, self.acc, self.series = (
            (float(t[-1]), float(raw[-1])),
            float(acc[-1]),
            int(series[-1]),
        )

    # ------------------------------------------------------------------ windows
    def _ip(self, x: np.ndarray) -> np.ndarray:
        return np.interp(x, self.kt, self.kc) if len(self.kt) else np.asarray(x, dtype=float)

    def _ie(self, x: np.ndarray) -> np.ndarray:
        return np.interp(x, self.kt, self.ke) if len(self.kt) else np.zeros(len(x))

    def _count(self, method: str, seconds: float) -> None:
        self.seconds_by_method[method] = self.seconds_by_method.get(method, 0.0) + seconds

    def advance(self, final: bool) -> None:
        """Close every window the data so far determines (all of them when ``final``)."""
        if final or self.kind is None:
            power_until = math.inf
        else:
            power_until = float(self.kt[-1]) if len(self.kt) else -math.inf
        if self.boundary is None and not self._start(final):
            return
        assert self.boundary is not None
        parts: list[tuple[np.ndarray, ...]] = []
        if len(self.at_t):
            ready = int(np.searchsorted(self.at_t, power_until, side="right"))
            if ready:
                parts.append(
                    self._windows(self.at_t[:ready], self.at_acc[:ready], self.at_series[:ready])
                )
                self.at_t, self.at_acc = self.at_t[ready:], self.at_acc[ready:]
                self.at_series = self.at_series[ready:]
        # Power alone past the last counter value: at the end, all along without a counter, or
        # once the counter has been silent for over 2 s while power goes on (as the timeline).
        quiet = not self.has_counter or (
            self.c_last is not None
            and not len(self.at_t)
            and len(self.kt) > 0
            and self.kt[-1] - self.c_last[0] > _STALE_S
        )
        if (final or quiet) and len(self.kt) and self.kt[-1] > self.boundary:
            parts.append(self._power_only(float(self.kt[-1])))
        if parts:
            self._emit(parts)

    def _start(self, final: bool) -> bool:
        first_power = float(self.kt[0]) if len(self.kt) else math.inf
        if len(self.at_t):
            self.boundary = min(first_power, float(self.at_t[0]))
            if first_power >= self.at_t[0]:  # the counter's first value opens it
                self.b_anchor = (float(self.at_acc[0]), int(self.at_series[0]))
                self.at_t, self.at_acc = self.at_t[1:], self.at_acc[1:]
                self.at_series = self.at_series[1:]
            return True
        if len(self.kt) and (final or not self.has_counter):
            self.boundary = first_power
            return True
        return False

    def _power_only(self, end: float) -> tuple[np.ndarray, ...]:
        """One window from the boundary to ``end`` shaped by power alone (measured power scaled
        by the counter's last calibration, estimates as they are)."""
        assert self.boundary is not None
        a, b = self.boundary, end
        k = self.scale
        ia, ib = self._ip(np.array([a, b]))
        ea, eb = self._ie(np.array([a, b]))
        estimated = eb - ea > 0.5 * (ib - ia)
        kind = ESTIMATE_W if estimated else self.kind
        self._count(f"{kind} (no counter)" if self.has_counter else str(kind), b - a)
        self.boundary, self.b_anchor = b, None
        return (
            np.array([a]),
            np.array([k * (ib - ia) + (1 - k) * (eb - ea)]),
            np.array([k]),
            np.array([ia]),
            np.zeros(1),
            np.ones(1, bool),
            np.array([1 - k]),
            np.array([ea]),
            np.array([b]),
        )

    def _windows(
        self, ut: np.ndarray, uacc: np.ndarray, useries: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Windows from the boundary through the anchors ``ut``: ``(starts, joules, k, I0,
        slope, shaped, end)``."""
        assert self.boundary is not None
        starts = np.r_[self.boundary, ut[:-1]]
        ends = ut
        dur = ends - starts
        prev_acc = np.r_[self.b_anchor[0] if self.b_anchor else np.nan, uacc[:-1]]
        prev_series = np.r_[self.b_anchor[1] if self.b_anchor else -1, useries[:-1]]
        calibrated = prev_series == useries
        d_counter = np.where(calibrated, uacc - prev_acc, 0.0)
        ia, ib = self._ip(starts), self._ip(ends)
        ea, eb = self._ie(starts), self._ie(ends)
        d_power = ib - ia
        has_shape = self.kind is not None and len(self.kt) > 1
        with np.errstate(divide="ignore", invalid="ignore"):
            k_counter = d_counter / d_power
            rate = np.where(dur > 0, d_counter / dur, 0.0)
        good = calibrated & has_shape & (d_power > 0) & np.isfinite(k_counter)
        power_only = ~calibrated & has_shape
        k = np.where(good, k_counter, 0.0)
        if power_only.any():
            k[power_only] = self._scales(d_counter, d_power, good, power_only)
        else:
            self._scales(d_counter, d_power, good, power_only)
        shaped = good | power_only
        # No shape: the counter linearly; across a reset with no power, the last rate held.
        held = ~calibrated & ~has_shape
        slope = np.where(calibrated, rate, 0.0)
        if held.any():
            last_rate = np.r_[self.rate, rate[:-1]]
            slope[held] = last_rate[held] * self.scale
        self.rate = float(rate[calibrated][-1]) if calibrated.any() else self.rate
        # Estimates are not calibrated by the counter (in power-only windows).
        k2 = np.where(power_only, 1.0 - k, 0.0)
        joules = np.where(shaped, k * d_power + k2 * (eb - ea), slope * dur)
        joules[good] = d_counter[good]
        method = np.select([good, power_only, calibrated], [0, 1, 2], 3)
        names = (
            f"counter+{self.kind}",
            f"{self.kind} (no counter)",
            _LINEAR,
            "held power",
        )
        seconds = np.bincount(method, weights=dur, minlength=4)
        for i in np.flatnonzero(np.bincount(method, minlength=4)).tolist():
            self._count(names[i], float(seconds[i]))
        self.boundary = float(ut[-1])
        self.b_anchor = (float(uacc[-1]), int(useries[-1]))
        return starts, joules, k, ia, slope, shaped, k2, ea, ends[-1:]

    def _scales(
        self, d_counter: np.ndarray, d_power: np.ndarray, good: np.ndarray, wanted: np.ndarray
    ) -> np.ndarray:
        """The timeline's learned scale (decayed sums of counter and power joules over the
        windows that calibrated) before each ``wanted`` window; the sums after the last window
        carry over."""
        steps = good.astype(np.int64)
        c = np.where(good, d_counter, 0.0)
        p = np.where(good, d_power, 0.0)
        learned = np.r_[0, np.cumsum(steps)]
        n = len(c)
        out = []
        for j in [*np.flatnonzero(wanted).tolist(), n]:
            lo = max(0, j - _DECAY_SPAN)
            # Window i's joules decay once per calibrating window after it, up to j.
            w = _DECAY ** (learned[j] - learned[lo + 1 : j + 1])
            old = _DECAY ** float(learned[j])
            sc = old * self.sum_c + float((w * c[lo:j]).sum())
            sp = old * self.sum_p + float((w * p[lo:j]).sum())
            if j == n:
                self.sum_c, self.sum_p = sc, sp
            else:
                out.append(min(2.0, max(0.5, sc / sp)) if sp > 0 else 1.0)
        return np.array(out)

    def _emit(self, parts: list[tuple[np.ndarray, ...]]) -> None:
        starts = np.concatenate([p[0] for p in parts])
        joules = np.concatenate([p[1] for p in parts])
        end = float(parts[-1][8][0])
        a = self.e + np.r_[0.0, np.cumsum(joules)]
        u = np.r_[starts, end]
        self.e = float(a[-1])
        lo = max(0, int(np.searchsorted(self.kt, starts[0], side="right")) - 1)
        hi = int(np.searchsorted(self.kt, end, side="left")) + 1
        k, i0, slope, shaped, k2, ie0 = (
            np.concatenate([p[i] for p in parts]) for i in (2, 3, 4, 5, 6, 7)
        )
        pt, pc, pe = (x[lo:hi].copy() for x in (self.kt, self.kc, self.ke))
        self.blocks.append(_Block(u, a[:-1], k, i0, slope, shaped, pt, pc, k2, ie0, pe))
        # Power knots before the new boundary are no longer needed (keep the one before it).
        keep = max(0, int(np.searchsorted(self.kt, end, side="right")) - 1)
        self.kt, self.kc, self.ke = self.kt[keep:], self.kc[keep:], self.ke[keep:]

    # ------------------------------------------------------------------ query
    def at(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros(len(x))
        if not self.blocks:
            return out
        first, last = self.blocks[0], self.blocks[-1]
        out[x >= last.end] = last.at(np.array([last.end]))[0] if self.done else np.nan
        for block in self.blocks:
            m = (x >= block.start) & (x < block.end)
            if m.any():
                out[m] = block.at(x[m])
        # Before the first kept block: zero before the data, else a released block (caller's bug).
        early = x < first.start
        if early.any() and first is not self.first:
            out[early] = np.nan
        return out

    def covered(self, rows_until: float) -> float:
        """Energy is known up to this time (``rows_until``: the last row read so far)."""
        if self.blocks:
            return self.blocks[-1].end
        if self.boundary is None and not len(self.kt) and not len(self.at_t):
            return rows_until  # nothing read yet: 0 J up to there
        return -math.inf


class TraceEnergy:
    """The counter-anchored energy of every device of a trace, streamed from row blocks.

    Query times must not go back before a time passed to :meth:`release`; every query pulls
    as many blocks as it needs. Build one with :meth:`from_columns`.
    """

    def __init__(
        self,
        names: Sequence[tuple[str, str]],
        blocks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ) -> None:
        found: dict[str, set[str]] = {}
        for device, kind in names:
            found.setdefault(device, set()).add(kind)
        self._devices: dict[str, _Device] = {}
        for device, kinds in sorted(found.items()):
            power = tuple(k for k in POWER_KINDS if k in kinds)
            self._devices[device] = _Device(device, power, COUNTER_J in kinds)
        self._names = list(names)
        self._blocks: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]] = iter(blocks)
        self._covered = -math.inf
        self.finished = False

    @classmethod
    def from_columns(cls, cols: Any, block_rows: int | None = None) -> TraceEnergy:
        """From a :class:`~lightning_watt.energy.trace_columns.TraceColumns` (its rows in
        blocks of ``block_rows``, default :data:`BLOCK_ROWS`)."""
        block_rows = integer(
            "block_rows", BLOCK_ROWS if block_rows is None else block_rows, minimum=1
        )
        return cls(cols.names, cols.sample_blocks(block_rows))

    @property
    def devices(self) -> list[str]:
        return list(self._devices)

    def _pull(self) -> bool:
        block = next(self._blocks, None)
        if block is None:
            for dev in self._devices.values():
                dev.advance(final=True)
                dev.done = True
                if dev.blocks and dev.first is None:
                    dev.first = dev.blocks[0]
            self.finished = True
            self._covered = math.inf
            return False
        t, code, value = block
        power: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for c in np.unique(code).tolist():
            device, kind = self._names[c]
            m = code == c
            if kind == COUNTER_J:
                self._devices[device].add_counter(t[m], value[m])
            elif kind in POWER_KINDS:
                power.setdefault(device, {})[kind] = (t[m], value[m])
        for device, by_kind in power.items():
            self._devices[device].add_power(by_kind)
        for dev in self._devices.values():
            dev.advance(final=False)
            if dev.blocks and dev.first is None:
                dev.first = dev.blocks[0]
        until = float(t[-1]) if len(t) else -math.inf
        self._covered = min((d.covered(until) for d in self._devices.values()), default=math.inf)
        return True

    def _cover(self, until: float) -> None:
        while not self.finished and self._covered <= until:
            self._pull()

    def at(self, device: str, x: Iterable[float] | np.ndarray) -> np.ndarray:
        """Cumulative joules of ``device`` from its first reading at the times ``x``."""
        x = np.asarray(x, dtype=float)
        if len(x):
            self._cover(float(x.max()))
        return self._devices[device].at(x)

    def total_at(self, x: Iterable[float] | np.ndarray) -> np.ndarray:
        """Cumulative joules summed over devices at the times ``x``."""
        x = np.asarray(x, dtype=float)
        total = np.zeros(len(x))
        for name in self._devices:
            total += self.at(name, x)
        return total

    def release(self, before: float) -> None:
        """No later query goes before ``before``: blocks that end before it are dropped."""
        for dev in self._devices.values():
            while len(dev.blocks) > 1 and dev.blocks[0].end < before:
                dev.blocks.pop(0)

    def finish(self) -> None:
        """Read every remaining row, so that :meth:`methods` covers the whole trace. Blocks
        it reads are not kept: only queries at or after the last block's start still work."""
        while not self.finished:
            self._pull()
            self.release(self._covered)

    def methods(self) -> dict[str, list[str]]:
        """How each device's energy was obtained, most-used first (the timeline's names)."""
        self.finish()
        return {
            n: sorted(d.seconds_by_method, key=lambda m: -d.seconds_by_method[m])
            for n, d in self._devices.items()
        }

    def resets(self) -> dict[str, int]:
        self.finish()
        return {n: d.resets for n, d in self._devices.items() if d.resets}
