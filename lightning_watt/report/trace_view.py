"""Curves and spans derived from a run's watt-trace: phase blocks, power and cumulative energy
over time, and the fit's energy per phase. :class:`TraceView` is mixed into
:class:`~lightning_watt.report.rundata.RunData`, whose ``trace`` it reads.

Example:
    >>> from lightning_watt.energy.trace import bundled_trace, load_trace
    >>> view = TraceView(load_trace(bundled_trace("h100-mlp")))
    >>> sorted({span.phase for span in view.phase_spans()})
    ['gap', 'train', 'val']
"""

from __future__ import annotations

import itertools
import math
from functools import cached_property
from typing import Any

from lightning_watt.energy.readings import J_PER_KWH, POWER_KINDS
from lightning_watt.energy.trace import Trace
from lightning_watt.report.series import PhaseSpan

#: Holes in raw power samples up to this long are bridged in plots, as the energy timeline
#: bridges them (its default ``max_gap``); longer ones stay visible as breaks in the line.
_BRIDGE_S = 1.0


def _bridge(values: list[float], max_bins: int) -> list[float]:
    """Fill runs of NaN no longer than ``max_bins`` by linear interpolation between their
    neighbours (a poller that paused for 300 ms did not see zero or unknown power).

    Example:
        >>> nan = float("nan")
        >>> _bridge([1.0, nan, 3.0, nan, nan, nan, 7.0], max_bins=2)[:3]
        [1.0, 2.0, 3.0]
    """
    out = list(values)
    i, n = 0, len(out)
    while i < n:
        if not math.isnan(out[i]):
            i += 1
            continue
        j = i
        while j < n and math.isnan(out[j]):
            j += 1
        if i > 0 and j < n and j - i <= max_bins:
            a, b = out[i - 1], out[j]
            for k in range(i, j):
                out[k] = a + (b - a) * (k - i + 1) / (j - i + 1)
        i = j
    return out


class TraceView:
    """What a report draws from one watt-trace (``None``: no trace, every curve empty)."""

    trace: Trace | None

    def __init__(self, trace: Trace | None = None) -> None:
        self.trace = trace

    @cached_property
    def _timeline(self) -> Any:
        assert self.trace is not None
        return self.trace.timeline()

    @property
    def has_trace(self) -> bool:
        return self.trace is not None and bool(self.trace.samples)

    @property
    def time_origin(self) -> float:
        """Trace time of the fit's start: plots put 0 s there."""
        return self.trace.fit_window[0] if self.trace is not None else 0.0

    def _trace_energy_J(self, t0: float, t1: float) -> float:
        return float(sum(self._timeline.energy_between(t0, t1).values()))

    def step_spans(self) -> list[PhaseSpan]:
        """Every step of the trace as a span (``start`` edge to the next ``end`` edge of the same
        phase), in time order."""
        if self.trace is None:
            return []
        open_at: dict[str, float] = {}
        spans: list[PhaseSpan] = []
        for edge in sorted(self.trace.steps, key=lambda e: e.t):
            if edge.edge == "start":
                open_at[edge.phase] = edge.t
            elif edge.phase in open_at:
                start = open_at.pop(edge.phase)
                if edge.t > start:
                    spans.append(PhaseSpan(edge.phase, start, edge.t))
        spans.sort(key=lambda s: s.start)
        return spans

    def phase_spans(self, merge_s: float | None = None) -> list[PhaseSpan]:
        """Steps merged into blocks for shading, plus the ``gap`` blocks of the fit that no step
        covers; holes shorter than ``merge_s`` (default: 1/200 of the fit, at least 50 ms) are
        absorbed, since they would be thinner than a line on the plot."""
        if self.trace is None:
            return []
        fit0, fit1 = self.trace.fit_window
        if merge_s is None:
            merge_s = max(0.05, (fit1 - fit0) / 200)
        blocks: list[PhaseSpan] = []
        for span in self.step_spans():
            last = blocks[-1] if blocks else None
            if last is not None and last.phase == span.phase and span.start - last.end <= merge_s:
                blocks[-1] = PhaseSpan(last.phase, last.start, max(last.end, span.end))
            else:
                blocks.append(span)
        gaps: list[PhaseSpan] = []
        cursor = fit0
        for block in sorted(blocks, key=lambda b: b.start):
            if block.start - cursor > merge_s:
                gaps.append(PhaseSpan("gap", cursor, block.start))
            cursor = max(cursor, block.end)
        if blocks and fit1 - cursor > merge_s:
            gaps.append(PhaseSpan("gap", cursor, fit1))
        return sorted(blocks + gaps, key=lambda b: b.start)

    def power_over_time(
        self, bin_s: float | None = None, max_points: int = 2000
    ) -> tuple[list[float], dict[str, list[float]], dict[str, str]]:
        """Mean power (W) per device in equal bins over the whole trace:
        ``(bin centres relative to the fit start, {device: watts}, {device: source})``.

        A device with raw power samples gets their mean per bin (NaN where a bin has none, so
        holes show); the source is that kind, e.g. ``buffer_W``. Only a device with nothing
        but a counter gets the fused timeline's energy per bin (source ``counter_J``). Raw
        samples give the shape because a counter reading can be up to one 100 ms update old:
        differencing it over short bins moves joules between neighbours and draws spikes that
        never happened, while totals (the cumulative plot, the table) stay counter-exact.
        Bins default to 1/``max_points`` of the trace, at least 100 ms.
        """
        if not self.has_trace:
            return [], {}, {}
        assert self.trace is not None
        t0, t1 = self.trace.span
        if bin_s is None:
            bin_s = max(0.1, (t1 - t0) / max_points)
        n = max(1, math.ceil((t1 - t0) / bin_s))
        origin = self.time_origin
        centres = [t0 + (i + 0.5) * bin_s - origin for i in range(n)]
        raw = self.raw_power()
        out: dict[str, list[float]] = {}
        sources: dict[str, str] = {}
        for name in self._timeline.devices:
            if name in raw:
                kind, ts, ws = raw[name]
                # Trailing averages describe the past, as the timeline reads them.
                shift = 0.5 if kind == "average_W" else 0.0
                sums, counts = [0.0] * n, [0] * n
                for t, w in zip(ts, ws, strict=True):
                    i = int((t - shift + origin - t0) / bin_s)
                    if 0 <= i < n:
                        sums[i] += w
                        counts[i] += 1
                means = [s / c if c else math.nan for s, c in zip(sums, counts, strict=True)]
                out[name] = _bridge(means, max_bins=int(_BRIDGE_S / bin_s))
                sources[name] = kind
            else:
                dev = self._timeline.device(name)
                cum = [dev.energy_at(t0 + i * bin_s) for i in range(n + 1)]
                first, last = dev.start, dev.horizon
                # Outside the counter's readings the energy is unknown, not zero watts.
                out[name] = [
                    (b - a) / bin_s
                    if first <= t0 + i * bin_s and t0 + (i + 1) * bin_s <= last
                    else math.nan
                    for i, (a, b) in enumerate(itertools.pairwise(cum))
                ]
                sources[name] = "counter_J"
        return centres, out, sources

    def raw_power(self) -> dict[str, tuple[str, list[float], list[float]]]:
        """The best raw power kind per device, as recorded: ``{device: (kind, t, watts)}`` with
        ``t`` relative to the fit start."""
        return self._raw_power

    @cached_property
    def _raw_power(self) -> dict[str, tuple[str, list[float], list[float]]]:
        if not self.has_trace:
            return {}
        assert self.trace is not None
        origin = self.time_origin
        by_dev: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
        for r in self.trace.samples:
            if r.kind not in POWER_KINDS:
                continue
            ts, ws = by_dev.setdefault(r.device, {}).setdefault(r.kind, ([], []))
            ts.append(r.t - origin)
            ws.append(r.value)
        out: dict[str, tuple[str, list[float], list[float]]] = {}
        for dev, kinds in sorted(by_dev.items()):
            kind = min(kinds, key=POWER_KINDS.index)
            out[dev] = (kind, *kinds[kind])
        return out

    def energy_over_time(self, points: int = 1000) -> tuple[list[float], dict[str, list[float]]]:
        """Cumulative kWh per device from the fit start, over the fit window:
        ``(seconds since fit start, {device: kWh})``."""
        if not self.has_trace:
            return [], {}
        assert self.trace is not None
        fit0, fit1 = self.trace.fit_window
        ts = [fit0 + (fit1 - fit0) * i / points for i in range(points + 1)]
        out: dict[str, list[float]] = {}
        for name in self._timeline.devices:
            dev = self._timeline.device(name)
            e0 = dev.energy_at(fit0)
            out[name] = [(dev.energy_at(t) - e0) / J_PER_KWH for t in ts]
        return [t - fit0 for t in ts], out

    @cached_property
    def _trace_phases_J(self) -> dict[str, float] | None:
        if not self.has_trace:
            return None
        assert self.trace is not None
        fit0, fit1 = self.trace.fit_window
        total = self._trace_energy_J(fit0, fit1)
        phases = {"train": 0.0, "val": 0.0}
        for span in self.step_spans():
            if span.phase in phases:
                s, e = max(span.start, fit0), min(span.end, fit1)
                if e > s:
                    phases[span.phase] += self._trace_energy_J(s, e)
        # Like the callback: anything in the fit but in no train/val step (stalls too) is gap.
        phases["gap"] = max(0.0, total - phases["train"] - phases["val"])
        phases["total"] = total
        return phases
