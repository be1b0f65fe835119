"""Curves and spans derived from a run's watt-trace: phase blocks, power and cumulative energy
over time, and the fit's energy per phase. :class:`TraceView` is mixed into
:class:`~lightning_watt.report.rundata.RunData`, whose ``trace`` it reads.

Everything here works on columns (:class:`~lightning_watt.energy.trace_columns.TraceColumns`)
and streams the step edges chunk by chunk, so memory does not grow with the run's length:
a day of 1.7 ms steps is about 100 million edges, never held at once.

Example:
    >>> from lightning_watt.energy.trace import bundled_trace, load_trace
    >>> view = TraceView(load_trace(bundled_trace("h100-mlp")))
    >>> sorted({span.phase for span in view.phase_spans()})
    ['gap', 'train', 'val']
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import cached_property

import numpy as np

from lightning_watt.energy.readings import COUNTER_J, J_PER_KWH
from lightning_watt.energy.trace import Trace, TraceFormatError
from lightning_watt.energy.trace_columns import TraceColumns
from lightning_watt.energy.unmeasured import added_joules_many
from lightning_watt.report.series import PhaseSpan
from lightning_watt.report.trace_energy import TraceNumbers, interp_many, trace_numbers

#: Holes in raw power samples up to this long are bridged in plots, as the energy timeline
#: bridges them (its default ``max_gap``); longer ones stay visible as breaks in the line.
_BRIDGE_S = 1.0


def _bridge(values: np.ndarray, max_bins: int) -> np.ndarray:
    """Fill runs of NaN no longer than ``max_bins`` by linear interpolation between their
    neighbours (a poller that paused for 300 ms did not see zero or unknown power).

    Example:
        >>> nan = float("nan")
        >>> _bridge(np.array([1.0, nan, 3.0, nan, nan, nan, 7.0]), max_bins=2)[:3].tolist()
        [1.0, 2.0, 3.0]
    """
    out = np.array(values, dtype=float)
    gap = np.isnan(out)
    if gap.all() or not gap.any():
        return out
    change = np.diff(np.r_[0, gap.astype(np.int8), 0])
    starts, ends = np.flatnonzero(change == 1), np.flatnonzero(change == -1)
    fill = (starts > 0) & (ends < len(out)) & (ends - starts <= max_bins)
    if fill.any():
        inside = np.zeros(len(out) + 1, dtype=np.int64)
        np.add.at(inside, starts[fill], 1)
        np.add.at(inside, ends[fill], -1)
        where = np.flatnonzero(np.cumsum(inside[:-1]) > 0)
        known = np.flatnonzero(~gap)
        out[where] = np.interp(where, known, out[known])
    return out


def _counter_cumulative(t: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Joules since the first counter reading, resets skipped (never negative)."""
    steps = np.diff(v)
    return np.concatenate(([0.0], np.cumsum(np.where(steps >= 0, steps, 0.0))))


def _segmented_cummax(values: np.ndarray, run: np.ndarray) -> np.ndarray:
    """The running maximum of ``values`` restarting where ``run`` (non-decreasing) changes,
    exactly: ranks, not offsets, carry the segment."""
    n = len(values)
    order = np.argsort(values, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    best = np.maximum.accumulate(run.astype(np.int64) * n + rank) - run.astype(np.int64) * n
    return values[order][best]


def _stable_order(x: np.ndarray) -> np.ndarray | slice:
    """A stable sorting order of ``x``; a plain slice when it is sorted already (the usual
    case: edges are recorded in time order), saving the sort."""
    if len(x) < 2 or bool(np.all(x[1:] >= x[:-1])):
        return slice(None)
    return np.argsort(x, kind="stable")


class _SpanStream:
    """Step spans (a ``start`` edge to the next ``end`` edge of its phase) in chunks of
    columns, with global phase codes; an open start carries over to the next chunk. Spans come
    sorted by start unless ``ordered=False`` (sums over them need no order)."""

    def __init__(
        self,
        cols: TraceColumns,
        host_only: bool = False,
        times_only: bool = False,
        ordered: bool = True,
    ) -> None:
        self.cols = cols
        self.host_only = host_only
        self.times_only = times_only
        self.ordered = ordered
        self.phases: list[str] = []
        self._ids: dict[str, int] = {}
        #: Where spans still to come may start: at the earliest start still waiting for its
        #: end, or (to within the GPU's lag) after the latest edge read so far.
        self.oldest_open = math.inf
        self.latest_edge = -math.inf

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        open_at: dict[int, float] = {}
        for chunk in self.cols.step_chunks(self.host_only, self.times_only):
            gid = np.array([self._ids.setdefault(p, len(self._ids)) for p in chunk.phases])
            self.phases = list(self._ids)
            t = chunk.t
            self.latest_edge = max(self.latest_edge, float(t.max()))
            order = _stable_order(t)
            phase = np.concatenate((list(open_at), gid[chunk.phase[order]])).astype(np.int64)
            tt = np.concatenate((list(open_at.values()), t[order]))
            start = np.concatenate((np.ones(len(open_at), bool), chunk.start[order]))
            # Within each phase, in time order: an end closes the edge before it if that is a
            # start (a later start replaces an open one; an end without a start is ignored).
            by_phase = (
                np.arange(len(tt))
                if len(tt) < 2 or bool(np.all(phase[1:] >= phase[:-1]))
                else np.lexsort((np.arange(len(tt)), phase))
            )
            p, s, ts = phase[by_phase], start[by_phase], tt[by_phase]
            pair = (p[1:] == p[:-1]) & s[:-1] & ~s[1:]
            a, b, ph = ts[:-1][pair], ts[1:][pair], p[1:][pair]
            closed_at = by_phase[1:][pair]
            keep = b > a
            a, b, ph, closed_at = a[keep], b[keep], ph[keep], closed_at[keep]
            last = np.r_[p[1:] != p[:-1], True] if len(p) else np.zeros(0, bool)
            still_open = last & s
            open_at = dict(zip(p[still_open].tolist(), ts[still_open].tolist(), strict=True))
            self.oldest_open = min(open_at.values(), default=math.inf)
            if self.ordered:
                # As a list sorted by start would be, spans built in end-edge order.
                o = _stable_order(closed_at)
                a, b, ph = a[o], b[o], ph[o]
                o = _stable_order(a)
                a, b, ph = a[o], b[o], ph[o]
            if len(a):
                yield ph, a, b


class TraceView:
    """What a report draws from one watt-trace (``None``: no trace, every curve empty)."""

    trace: Trace | TraceColumns | None

    def __init__(self, trace: Trace | TraceColumns | None = None) -> None:
        self.trace = trace

    @cached_property
    def columns(self) -> TraceColumns | None:
        """The trace as columns (a loaded :class:`Trace` is converted once). A trace read
        lazily is parsed here; if it turns out unreadable it is dropped, with a warning."""
        if self.trace is None:
            return None
        if not isinstance(self.trace, TraceColumns):
            return TraceColumns.from_trace(self.trace)
        try:
            self.trace.partial_status(load=True)
        except (TraceFormatError, OSError) as err:
            found = getattr(self, "warnings", None)
            if isinstance(found, list):
                found.append(f"trace not read ({err})")
            return None
        return self.trace

    @property
    def has_trace(self) -> bool:
        return self.columns is not None and self.columns.rows > 0

    @property
    def time_origin(self) -> float:
        """Trace time of the fit's start: plots put 0 s there."""
        return self.columns.fit_window[0] if self.columns is not None else 0.0

    #: ``timeline`` or ``vectorised`` to force an engine for the trace's energy numbers;
    #: ``None`` chooses by the trace's length (:func:`~lightning_watt.report.trace_energy.
    #: choose_engine`).
    force_engine: str | None = None

    def trace_numbers(self, points: int = 1000) -> TraceNumbers | None:
        """The fit's energy from the trace alone (every number no summary gives), in one pass
        over samples and steps; ``points``: the cumulative-energy grid over the fit."""
        if not self.has_trace:
            return None
        cached = self.__dict__.setdefault("_trace_numbers_by_points", {})
        if points not in cached:
            cols = self.columns
            assert cols is not None
            fit0, fit1 = cols.fit_window
            grid = fit0 + (fit1 - fit0) * np.arange(points + 1) / points
            spans = _SpanStream(cols, times_only=True, ordered=False)
            cached[points] = trace_numbers(cols, spans, self.force_engine, grid)
        return cached[points]

    def _span_chunks(
        self, host_only: bool = False
    ) -> Iterator[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]]:
        if self.columns is None:
            return
        stream = _SpanStream(self.columns, host_only)
        for phase, a, b in stream:
            yield stream.phases, phase, a, b

    def step_spans(self) -> list[PhaseSpan]:
        """Every step of the trace as a span (``start`` edge to the next ``end`` edge of the same
        phase), in time order. Materialised: for short traces; reports stream instead."""
        return [
            PhaseSpan(names[p], s, e)
            for names, phase, a, b in self._span_chunks()
            for p, s, e in zip(phase.tolist(), a.tolist(), b.tolist(), strict=True)
        ]

    def phase_spans(self, merge_s: float | None = None) -> list[PhaseSpan]:
        """Steps merged into blocks for shading, plus the ``gap`` blocks of the fit that no step
        covers; holes shorter than ``merge_s`` (default: 1/200 of the fit, at least 50 ms) are
        absorbed, since they would be thinner than a line on the plot."""
        if self.columns is None:
            return []
        fit0, fit1 = self.columns.fit_window
        if merge_s is None:
            merge_s = max(0.05, (fit1 - fit0) / 200)
        blocks: list[PhaseSpan] = []
        carry: tuple[int, float, float] | None = None
        names: list[str] = []
        # Blocks a second or more apart do not move visibly by the GPU's 4-12 ms lag behind the
        # host: host times alone then, a third of the decoding.
        for names, phase, a, b in self._span_chunks(host_only=merge_s >= 1.0):
            if carry is not None:
                phase = np.r_[carry[0], phase]
                a, b = np.r_[carry[1], a], np.r_[carry[2], b]
            run_break = np.r_[True, phase[1:] != phase[:-1]]
            reach = _segmented_cummax(b, np.cumsum(run_break))
            new = run_break.copy()
            new[1:] |= a[1:] - reach[:-1] > merge_s
            first = np.flatnonzero(new)
            ends = np.maximum.reduceat(b, first)
            spans = list(zip(phase[first].tolist(), a[first].tolist(), ends.tolist(), strict=True))
            carry = spans.pop()
            blocks.extend(PhaseSpan(names[p], s, e) for p, s, e in spans)
        if carry is not None:
            blocks.append(PhaseSpan(names[carry[0]], carry[1], carry[2]))
        gaps: list[PhaseSpan] = []
        cursor = fit0
        for block in sorted(blocks, key=lambda b: b.start):
            if block.start - cursor > merge_s:
                gaps.append(PhaseSpan("gap", cursor, block.start))
            cursor = max(cursor, block.end)
        if blocks and fit1 - cursor > merge_s:
            gaps.append(PhaseSpan("gap", cursor, fit1))
        return sorted(blocks + gaps, key=lambda b: b.start)

    def _counter_series(self, device: str) -> tuple[np.ndarray, np.ndarray] | None:
        assert self.columns is not None
        t, v = self.columns.series(device, COUNTER_J)
        return (t, _counter_cumulative(t, v)) if len(t) else None

    def power_over_time(
        self, bin_s: float | None = None, max_points: int = 2000
    ) -> tuple[list[float], dict[str, list[float]], dict[str, str]]:
        """:meth:`power_bins` as lists (what the plots draw)."""
        centres, watts, sources = self.power_bins(bin_s, max_points)
        return centres.tolist(), {d: w.tolist() for d, w in watts.items()}, sources

    def power_bins(
        self, bin_s: float | None = None, max_points: int = 2000
    ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, str]]:
        """Mean power (W) per device in equal bins over the whole trace:
        ``(bin centres relative to the fit start, {device: watts}, {device: source})``.

        A device with raw power samples gets their mean per bin (NaN where a bin has none, so
        holes show); the source is that kind, e.g. ``buffer_W``. Only a device with nothing
        but a counter gets the counter's energy per bin (source ``counter_J``). Raw samples
        give the shape because a counter reading can be up to one 100 ms update old:
        differencing it over short bins moves joules between neighbours and draws spikes that
        never happened, while totals (the cumulative plot, the table) stay counter-exact.
        Bins default to 1/``max_points`` of the trace, at least 100 ms.
        """
        if not self.has_trace:
            return np.zeros(0), {}, {}
        cols = self.columns
        assert cols is not None
        t0, t1 = cols.span
        if bin_s is None:
            bin_s = max(0.1, (t1 - t0) / max_points)
        n = max(1, math.ceil((t1 - t0) / bin_s))
        origin = self.time_origin
        edges = t0 + np.arange(n + 1) * bin_s
        centres = t0 + (np.arange(n) + 0.5) * bin_s - origin
        kinds = cols.power_kinds()
        out: dict[str, np.ndarray] = {}
        sources: dict[str, str] = {}
        for name in cols.devices:
            if name in kinds:
                kind = kinds[name]
                # Trailing averages describe the past, as the timeline reads them.
                shift = 0.5 if kind == "average_W" else 0.0
                sums = np.zeros(n)
                counts = np.zeros(n, dtype=np.int64)
                # A piece of the series at a time: a day of samples is never copied whole.
                for ts, ws in cols.series_blocks(name, kind):
                    # In place, in the order the scalar code used: the same bins.
                    pos = ts - origin
                    pos -= shift
                    pos += origin
                    pos -= t0
                    pos /= bin_s
                    np.trunc(pos, out=pos)
                    ok = (pos >= 0) & (pos < n)
                    if ok.all():
                        i, weights = pos.astype(np.int64), ws
                    else:
                        i, weights = pos[ok].astype(np.int64), ws[ok]
                    sums += np.bincount(i, weights=weights, minlength=n)
                    counts += np.bincount(i, minlength=n)
                with np.errstate(divide="ignore", invalid="ignore"):
                    means = np.where(counts > 0, sums / np.maximum(counts, 1), math.nan)
                out[name] = _bridge(means, max_bins=int(_BRIDGE_S / bin_s))
                sources[name] = kind
            else:
                counter = self._counter_series(name)
                if counter is None:
                    continue
                ct, acc = counter
                cum = interp_many(ct, acc, edges)
                # Outside the counter's readings the energy is unknown, not zero watts.
                known = (edges[:-1] >= ct[0]) & (edges[1:] <= ct[-1])
                out[name] = np.where(known, np.diff(cum) / bin_s, math.nan)
                sources[name] = COUNTER_J
        return centres, out, sources

    def power_envelope(
        self, bins: int
    ) -> dict[str, tuple[str, list[float], list[float], list[float]]]:
        """Min and max of the raw power samples per bin, ``bins`` equal bins between each
        device's first and last sample: ``{device: (kind, bin centres relative to the fit
        start, lows, highs)}``, bins without a sample left out. Spikes stay visible however
        many samples there are; the series is read a piece at a time, never copied whole.

        Example:
            >>> from lightning_watt.energy.trace import bundled_trace
            >>> from lightning_watt.energy.trace_columns import load_columns
            >>> view = TraceView(load_columns(bundled_trace("h200-mlp-stall")))
            >>> kind, t, lo, hi = view.power_envelope(bins=100)["gpu0"]
            >>> kind, len(t) <= 100, all(a <= b for a, b in zip(lo, hi))
            ('buffer_W', True, True)
        """
        if not self.has_trace:
            return {}
        cols = self.columns
        assert cols is not None
        origin = self.time_origin
        out: dict[str, tuple[str, list[float], list[float], list[float]]] = {}
        for device, kind in cols.power_kinds().items():
            span = cols.series_span(device, kind)
            if span is None:
                continue
            t0, t1 = span[0] - origin, span[1] - origin
            width = (t1 - t0) / bins or 1.0
            keeps, los, his = [], [], []
            for ts, ws in cols.series_blocks(device, kind):
                x = ts - origin
                x -= t0
                x /= width
                i = x.astype(np.int64)
                np.minimum(i, bins - 1, out=i)
                # Time-ordered rows: each bin is one run of samples (a bin cut by a piece
                # boundary is joined below).
                first = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
                keeps.append(i[first])
                los.append(np.minimum.reduceat(ws, first))
                his.append(np.maximum.reduceat(ws, first))
            keep, lo, hi = np.concatenate(keeps), np.concatenate(los), np.concatenate(his)
            first = np.flatnonzero(np.r_[True, keep[1:] != keep[:-1]])
            lo, hi = np.minimum.reduceat(lo, first), np.maximum.reduceat(hi, first)
            keep = keep[first]
            out[device] = (kind, (t0 + (keep + 0.5) * width).tolist(), lo.tolist(), hi.tolist())
        return out

    def energy_over_time(self, points: int = 1000) -> tuple[list[float], dict[str, list[float]]]:
        """Cumulative kWh per device from the fit start, over the fit window:
        ``(seconds since fit start, {device: kWh})``. Drawn from each device's energy counter
        (the hardware's own integral, resets skipped) where it has one, else from the trace's
        energy engine (:meth:`trace_numbers`); at screen resolution the two agree to within
        one 100 ms counter update."""
        if not self.has_trace:
            return [], {}
        cols = self.columns
        assert cols is not None
        fit0, fit1 = cols.fit_window
        ts = fit0 + (fit1 - fit0) * np.arange(points + 1) / points
        out: dict[str, list[float]] = {}
        for name in cols.devices:
            counter = self._counter_series(name)
            if counter is not None:
                at = np.r_[fit0, ts]
                # The recording's estimate for a span no sample covers counts here too.
                cum = interp_many(counter[0], counter[1], at)
                cum += added_joules_many(cols.unmeasured_spans, name, at)
            else:
                numbers = self.trace_numbers(points)
                assert numbers is not None
                cum = np.r_[0.0, numbers.grid_J.get(name, np.zeros(len(ts)))]
            out[name] = ((cum[1:] - cum[0]) / J_PER_KWH).tolist()
        return (ts - fit0).tolist(), out

    @property
    def energy_engine(self) -> str | None:
        """The engine that fused the trace's energy numbers (``timeline`` or ``vectorised``,
        see :mod:`~lightning_watt.report.trace_energy`), once any were taken from the trace;
        ``None`` while every number came from elsewhere (the summary)."""
        found = self.__dict__.get("_trace_numbers_by_points") or {}
        return next((n.engine for n in found.values()), None)

    @cached_property
    def _trace_phases_J(self) -> dict[str, float] | None:
        numbers = self.trace_numbers()
        if numbers is None:
            return None
        return {**numbers.phases_J, "total": numbers.total_J}
