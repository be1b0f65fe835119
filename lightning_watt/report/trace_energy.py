"""The fit's energy from a trace alone (no summary beside it), in one streamed pass: total and
per device, per phase, the devices' cumulative energy on a time grid, and how it was fused.

Two engines give the numbers (:attr:`TraceNumbers.engine` says which; ``report.json`` repeats
it and the report prints a note for the vectorised one):

* ``timeline``: the fused :class:`~lightning_watt.energy.timeline.EnergyTimeline`, the live
  meter's own code (counter clock recovered), for traces up to :data:`EXACT_MAX_ROWS` rows;
* ``vectorised``: :class:`~lightning_watt.energy.fast_energy.TraceEnergy`, counter-anchored at
  read times, streamed in blocks, for longer ones (8x faster than the timeline on a day of one
  GPU: what is left is parsing the files).

Example:
    >>> from lightning_watt.energy.trace import bundled_trace
    >>> from lightning_watt.energy.trace_columns import load_columns
    >>> from lightning_watt.report.trace_view import _SpanStream
    >>> cols = load_columns(bundled_trace("h200-mlp-stall"))
    >>> fast = trace_numbers(cols, _SpanStream(cols), engine="vectorised")
    >>> exact = trace_numbers(cols, _SpanStream(cols), engine="timeline")
    >>> abs(fast.total_J / exact.total_J - 1) < 1e-3, sorted(fast.phases_J)
    (True, ['gap', 'train', 'val'])
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lightning_watt.energy.fast_energy import TraceEnergy
from lightning_watt.energy.unmeasured import UnmeasuredSpan, added_joules_many

#: Traces with at most this many sample rows are fused by the timeline, as the live meter
#: fuses them: about 5 us a row, so a second at most. Short runs are where its counter-clock
#: recovery matters (a span edge moved by up to 100 ms is a larger share of a short span and
#: a short fit); longer traces take the vectorised path, whose totals agree within 0.1 %.
EXACT_MAX_ROWS = 200_000
ENGINES = ("timeline", "vectorised")
#: What each engine is, as ``report.json`` says it.
ENGINE_NOTES = {
    "timeline": "fused energy timeline (the live meter's code)",
    "vectorised": (
        "vectorised counter-anchored fusion at counter read times (counter-anchored totals "
        "within 0.1 % of the fused timeline; phase splits move by up to one 100 ms counter "
        "update per step edge)"
    ),
}
#: Phases the callback records; a trace's other labels (``stall``, ``load``) count as gap.
COUNTED_PHASES = ("train", "val", "test", "predict", "sanity", "tune")
#: Seconds the GPU times of later step chunks may precede a chunk already read.
_RELEASE_SLACK_S = 1.0


class _Energy(Protocol):
    @property
    def devices(self) -> list[str]: ...

    def at(self, device: str, x: np.ndarray) -> np.ndarray: ...

    def release(self, before: float) -> None: ...

    def methods(self) -> dict[str, list[str]]: ...


class _Spans(Protocol):
    phases: list[str]
    oldest_open: float
    latest_edge: float

    def __iter__(self) -> Any: ...


class TimelineEnergy:
    """An :class:`EnergyTimeline` behind the streamed interface (its knots, vectorised)."""

    def __init__(self, timeline: Any) -> None:
        self.timeline = timeline
        self.devices: list[str] = list(timeline.devices)
        self._knots = {}
        for name in self.devices:
            ts, es = timeline.device(name).knots()
            self._knots[name] = (np.asarray(ts, dtype=float), np.asarray(es, dtype=float))

    def at(self, device: str, x: np.ndarray) -> np.ndarray:
        return interp_many(*self._knots[device], x)

    def release(self, before: float) -> None:
        """Nothing to release: the timeline is held whole."""

    def methods(self) -> dict[str, list[str]]:
        return dict(self.timeline.methods())


class WithEstimates:
    """An engine's energies plus the recording's estimates for spans no sample covers (late
    starts: :mod:`~lightning_watt.energy.unmeasured`), which the live meter counted too."""

    def __init__(self, inner: _Energy, spans: list[UnmeasuredSpan]) -> None:
        self.inner = inner
        self.spans = spans
        self.devices: list[str] = list(inner.devices)

    def at(self, device: str, x: np.ndarray) -> np.ndarray:
        return self.inner.at(device, x) + added_joules_many(self.spans, device, x)

    def release(self, before: float) -> None:
        self.inner.release(before)

    def methods(self) -> dict[str, list[str]]:
        return self.inner.methods()


def interp_many(ts: np.ndarray, ys: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Linear interpolation clamped at both ends, at many points: the vector form of the
    energy timeline's own interpolation (a repeated knot takes the later value).

    Example:
        >>> interp_many(np.array([0.0, 1.0, 1.0, 2.0]), np.array([0.0, 1.0, 5.0, 6.0]),
        ...             np.array([-1.0, 0.5, 1.0, 1.5, 3.0])).tolist()
        [0.0, 0.5, 5.0, 5.5, 6.0]
    """
    x = np.asarray(x, dtype=float)
    if len(ts) == 0:
        return np.zeros_like(x)
    if len(ts) == 1:
        return np.full_like(x, ys[0])
    i = np.clip(np.searchsorted(ts, x, side="right"), 1, len(ts) - 1)
    t0, t1, y0, y1 = ts[i - 1], ts[i], ys[i - 1], ys[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        mid = np.where(t1 == t0, y1, y0 + (y1 - y0) * (x - t0) / (t1 - t0))
    return np.where(x <= ts[0], ys[0], np.where(x >= ts[-1], ys[-1], mid))


@dataclass
class TraceNumbers:
    """What a report takes from a trace with no summary. ``phases_J`` holds the callback's
    phases found and ``gap`` (the rest of the fit), adding up to ``total_J``; ``grid_J``
    holds each device's joules since the fit start at the times ``grid``."""

    engine: str
    total_J: float
    device_J: dict[str, float]
    phases_J: dict[str, float]
    methods: dict[str, list[str]]
    grid: np.ndarray
    grid_J: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def note(self) -> str:
        return ENGINE_NOTES[self.engine]


def choose_engine(rows: int) -> str:
    """``timeline`` up to :data:`EXACT_MAX_ROWS` sample rows, else ``vectorised``."""
    return "timeline" if rows <= EXACT_MAX_ROWS else "vectorised"


def energy_engine(cols: Any, engine: str) -> _Energy:
    """The energy of a trace's devices by ``engine`` (see :data:`ENGINES`), with the
    recording's estimates for spans no sample covers (:class:`WithEstimates`)."""
    energy: _Energy
    if engine == "timeline":
        # The device timelines' knots: the readings alone, the estimates added once below.
        energy = TimelineEnergy(cols.timeline())
    elif engine == "vectorised":
        energy = TraceEnergy.from_columns(cols)
    else:
        raise ValueError(f"engine: must be one of {ENGINES}, got {engine!r}")
    added = [s for s in getattr(cols, "unmeasured_spans", []) if not s.in_samples]
    return WithEstimates(energy, added) if added else energy


def trace_numbers(
    cols: Any,
    spans: _Spans,
    engine: str | None = None,
    grid: Iterable[float] | None = None,
) -> TraceNumbers:
    """The fit's energy numbers from ``cols`` (a
    :class:`~lightning_watt.energy.trace_columns.TraceColumns`) and its step ``spans`` (a
    stream of ``(phase codes, starts, ends)`` with ``phases``, ``oldest_open`` and
    ``latest_edge``), in one
    pass over both. ``engine``: ``None`` chooses by length (:func:`choose_engine`)."""
    engine = choose_engine(cols.rows) if engine is None else engine
    energy = energy_engine(cols, engine)
    fit0, fit1 = cols.fit_window
    grid_t = np.asarray(list(grid) if grid is not None else [], dtype=float)
    # Fixed times (the fit's ends, the grid) are evaluated as the pass reaches them.
    fixed = np.unique(np.r_[fit0, fit1, grid_t])
    fixed_J = {name: np.full(len(fixed), math.nan) for name in energy.devices}
    done = 0

    def evaluate_fixed(until: float) -> None:
        """Evaluate the fixed times before ``until``, releasing what they passed (nothing
        after ``until`` is needed before them)."""
        nonlocal done
        upto = int(np.searchsorted(fixed, until, side="left"))
        for lo in range(done, upto, 256):
            hi = min(upto, lo + 256)
            for name in energy.devices:
                fixed_J[name][lo:hi] = energy.at(name, fixed[lo:hi])
            energy.release(float(fixed[hi - 1]))
        done = max(done, upto)

    sums: dict[str, float] = {}
    for phase, a, b in spans:
        s, e = np.maximum(a, fit0), np.minimum(b, fit1)
        keep = e > s
        if keep.any():
            s, e, code = s[keep], e[keep], phase[keep]
            joules = np.zeros(len(s))
            for name in energy.devices:
                joules += energy.at(name, e) - energy.at(name, s)
            per_code = np.bincount(code, weights=joules, minlength=len(spans.phases))
            for i, value in enumerate(per_code.tolist()):
                sums[spans.phases[i]] = sums.get(spans.phases[i], 0.0) + value
        # Spans to come start at a start still open or after the edges read so far.
        before = min(spans.latest_edge, spans.oldest_open) - _RELEASE_SLACK_S
        evaluate_fixed(before)
        energy.release(before)
    evaluate_fixed(math.inf)
    i0, i1 = np.searchsorted(fixed, [fit0, fit1])
    device_J = {n: float(v[i1] - v[i0]) for n, v in fixed_J.items()}
    total = float(sum(device_J.values()))
    phases = {"train": sums.get("train", 0.0), "val": sums.get("val", 0.0)}
    phases.update({p: sums[p] for p in COUNTED_PHASES if p not in phases and sums.get(p, 0) > 0})
    # Like the callback: anything in the fit but in no counted step (stalls too) is gap.
    phases["gap"] = max(0.0, total - sum(phases.values()))
    at_grid = np.searchsorted(fixed, grid_t)
    return TraceNumbers(
        engine,
        total,
        device_J,
        phases,
        energy.methods(),
        grid_t,
        {n: v[at_grid] - v[i0] for n, v in fixed_J.items()},
    )
