"""Finding run directories on disk and reading them into :class:`RunData`.

A run directory is what the callback writes into the Lightning logger's ``log_dir``: TensorBoard
event files and/or a CSVLogger ``metrics.csv``, ``watt_summary.json`` and a watt-trace v1
recording ``watt_trace.*``. Any one of them is enough; each number comes from the best source
present (summary, then trace, then logged scalars). A path given on the command line may be a run
directory, a log root above several of them (searched recursively), or one file of a run or of a
watt-trace recording.

Example:
    >>> import json, pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as root:
    ...     run = pathlib.Path(root) / "lightning_logs" / "version_0"
    ...     run.mkdir(parents=True)
    ...     _ = (run / "watt_summary.json").write_text(json.dumps({"energy_kWh": 0.5}))
    ...     print([(r.name, r.energy_kWh) for r in read_runs([root])])
    [('version_0', 0.5)]
"""

from __future__ import annotations

import bisect
import csv
import itertools
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from lightning_watt.readings import ESTIMATE_W, J_PER_KWH, POWER_KINDS
from lightning_watt.trace import Trace, load_trace, trace_prefix

SUMMARY_NAME = "watt_summary.json"
SUMMARY_FORMAT = "lightning-watt summary v1"
METRICS_NAME = "metrics.csv"
TRACE_NAME = "watt_trace"
EVENTS_PREFIX = "events.out.tfevents."
GQI_KEY = "watt/gqi"

#: What a run directory is recognised by; quoted in errors so a user knows what was looked for.
LOOKED_FOR = (
    f"TensorBoard event files ({EVENTS_PREFIX}*), a CSVLogger {METRICS_NAME}, "
    f"{SUMMARY_NAME} or a watt-trace recording ({TRACE_NAME}.meta.json)"
)

Advance = Callable[[int], None]


class ReportError(Exception):
    """A problem with the runs asked for (nothing found, unreadable file); the CLI prints the
    message and exits with status 2."""


class RunNotFoundError(ReportError, FileNotFoundError):
    """A path given as a run does not exist."""


# --------------------------------------------------------------------------- data classes
@dataclass
class ScalarSeries:
    """One logged key: values by global step, with wall times (TensorBoard) and epochs (CSV,
    or recovered from the logged ``epoch`` key) where known."""

    key: str
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    wall_times: list[float] | None = None
    epochs: list[int | None] | None = None

    def __len__(self) -> int:
        return len(self.values)

    def last(self) -> float | None:
        return self.values[-1] if self.values else None


class PhaseSpan(NamedTuple):
    """A span of the trace clock (seconds) spent in one phase: ``train``, ``val``, ``stall``,
    ``gap`` (inside the fit but in no step) or any phase a trace names."""

    phase: str
    start: float
    end: float


@dataclass
class EpochRow:
    """Energy and metrics of one epoch (joules per phase, cumulative kWh at its end)."""

    epoch: int
    train_J: float | None = None
    val_J: float | None = None
    gap_J: float | None = None
    energy_kWh: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class RunLocation(NamedTuple):
    """Where one run lives: its directory, the event files that belong to it (including those in
    event-only subdirectories) and the prefix of its trace, if any."""

    path: Path
    event_files: tuple[Path, ...]
    metrics_csv: Path | None
    summary: Path | None
    trace: str | None


def _finite(x: Any) -> float | None:
    """A float when ``x`` is a finite number, else ``None`` (JSON may hold nulls and NaNs)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _short_method(method: str) -> str:
    """The fusion method of a device description: the callback writes e.g. ``replay of
    h200-mlp-stall (NVIDIA H200; ...) [counter+buffer_W, gap, instant_W (no counter)]``, where
    the bracket lists the methods most used first; a table wants ``counter+buffer_W``.

    Example:
        >>> _short_method("nvml (H100; counter_J, instant_W) [counter+instant_W, gap]")
        'counter+instant_W'
    """
    m = re.search(r"\[([^\],]+)", method)
    if m:
        return m.group(1).strip()
    return re.sub(r"\s*\(.*\)\s*", " ", method).strip() or method


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


def _looks_lower_better(key: str) -> bool:
    return bool(re.search(r"loss|err|mse|mae|perplex", key, re.IGNORECASE))


@dataclass(eq=False)  # identity: runs are compared as objects, never field by field
class RunData:
    """Everything read from one run, with the derived numbers a report shows.

    Numbers come from ``watt_summary.json`` when present (the callback's own totals), else from
    the trace, else from the logged ``watt/`` scalars; ``None`` when no source has them.

    Example:
        >>> run = RunData(name="demo", path=Path("."), scalars={
        ...     "watt/energy_kWh": ScalarSeries("watt/energy_kWh", [10, 20], [0.1, 0.25]),
        ...     "val_acc": ScalarSeries("val_acc", [20], [0.9], epochs=[0])})
        >>> run.energy_kWh, run.monitor, run.best_accuracy
        (0.25, 'val_acc', 0.9)
    """

    name: str
    path: Path
    scalars: dict[str, ScalarSeries] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    trace: Trace | None = None
    files: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    monitor_override: str | None = None

    # ------------------------------------------------------------------ labelling
    @property
    def replay(self) -> str | None:
        """The trace name the energies were replayed from, or ``None`` for a measured run."""
        value = (self.summary or {}).get("replay")
        return str(value) if value else None

    @cached_property
    def method(self) -> str:
        """How energy was obtained, e.g. ``counter+buffer_W``; ``estimated`` for modelled power,
        ``logged`` when only scalars were found."""
        devices = (self.summary or {}).get("devices") or []
        methods: list[str] = []
        for dev in devices:
            if not isinstance(dev, dict):
                continue
            m = "estimated" if dev.get("estimated") else str(dev.get("method") or "")
            if m and m not in methods:
                methods.append(m)
        if not methods:
            listed = (self.summary or {}).get("methods")
            methods = [str(m) for m in listed if m] if isinstance(listed, list) else []
        if not methods and self.trace is not None and self.trace.samples:
            for per_device in self._timeline.methods().values():
                if per_device and per_device[0] not in methods:
                    # The most used method is the one that describes the run.
                    methods.append(per_device[0])
        if not methods:
            return "logged" if self.scalars else "unknown"
        short: list[str] = []
        for m in methods:
            m = "estimated" if ESTIMATE_W in m or m == "estimated" else _short_method(m)
            if m not in short:
                short.append(m)
        return ", ".join(short)

    @property
    def method_detail(self) -> str | None:
        """The devices' method descriptions in full, as the summary gives them."""
        devices = (self.summary or {}).get("devices") or []
        found = [str(d["method"]) for d in devices if isinstance(d, dict) and d.get("method")]
        return "; ".join(found) or None

    @property
    def estimated(self) -> bool:
        """Whether any device's energy was modelled rather than measured."""
        if (self.summary or {}).get("estimated") is True:
            return True
        devices = (self.summary or {}).get("devices") or []
        if any(isinstance(d, dict) and d.get("estimated") for d in devices):
            return True
        return "estimated" in self.method

    @property
    def notes(self) -> list[str]:
        """Honest labels for plot titles: a replay or an estimate never looks measured."""
        out: list[str] = []
        if self.replay:
            out.append(f"REPLAY of trace {self.replay!r}, not measured in this run")
        if self.estimated:
            out.append("ESTIMATED power (modelled, not measured)")
        return out

    # ------------------------------------------------------------------ trace helpers
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

    # ------------------------------------------------------------------ headline numbers
    def _summary_number(self, key: str) -> float | None:
        return _finite((self.summary or {}).get(key))

    @cached_property
    def duration_s(self) -> float | None:
        """Seconds the fit took (summary, else the trace's fit window, else logged wall times)."""
        value = self._summary_number("duration_s")
        if value is not None:
            return value
        if self.trace is not None and self.trace.samples:
            fit0, fit1 = self.trace.fit_window
            return fit1 - fit0
        walls = [w for s in self.scalars.values() for w in (s.wall_times or [])]
        if len(walls) >= 2:
            return max(walls) - min(walls)
        return None

    @cached_property
    def energy_kWh(self) -> float | None:
        """Total energy of the fit, all devices and ranks."""
        value = self._summary_number("energy_kWh")
        if value is None:
            joules = self._summary_number("energy_J")
            if joules is not None:
                value = joules / J_PER_KWH
        if value is not None:
            return value
        if self._trace_phases_J is not None:
            return self._trace_phases_J["total"] / J_PER_KWH
        # Both are cumulative, so the largest value is the latest; the epoch-end one also
        # counts what ran after the last step-level log.
        logged = [
            v
            for key in ("watt/energy_kWh", "watt/epoch_kWh")
            for v in (self.scalars[key].values if key in self.scalars else [])
            if math.isfinite(v)
        ]
        return max(logged) if logged else None

    @cached_property
    def mean_power_W(self) -> float | None:
        value = self._summary_number("mean_power_W")
        if value is not None:
            return value
        if self.energy_kWh is not None and self.duration_s:
            return self.energy_kWh * J_PER_KWH / self.duration_s
        series = self.scalars.get("watt/power_W")
        if series and series.values:
            return sum(series.values) / len(series.values)
        return None

    @cached_property
    def peak_power_W(self) -> float | None:
        """Highest power: the summary's, else the highest 100 ms mean of the trace (summed
        over devices), else the highest logged interval mean (which understates short peaks)."""
        value = self._summary_number("peak_power_W")
        if value is not None:
            return value
        if self.has_trace:
            _, per_dev, _ = self.power_over_time(bin_s=0.1, max_points=10**7)
            totals = [sum(ws) for ws in zip(*per_dev.values(), strict=True)]
            finite = [w for w in totals if math.isfinite(w)]
            if finite:
                return max(finite)
        series = self.scalars.get("watt/power_W")
        if series and series.values:
            return max(series.values)
        return None

    @cached_property
    def phases_J(self) -> dict[str, float] | None:
        """Joules in ``train``, ``val`` and ``gap`` (time in the fit outside any step)."""
        raw = (self.summary or {}).get("phases_J")
        if isinstance(raw, dict):
            phases = {k: v for k, v in ((k, _finite(v)) for k, v in raw.items()) if v is not None}
            if phases:
                return phases
        if self._trace_phases_J is not None:
            return {k: v for k, v in self._trace_phases_J.items() if k != "total"}
        rows = [r for r in self.epochs() if r.train_J is not None]
        if rows:
            return {
                "train": sum(r.train_J or 0.0 for r in rows),
                "val": sum(r.val_J or 0.0 for r in rows),
                "gap": sum(r.gap_J or 0.0 for r in rows),
            }
        return None

    @cached_property
    def outside_steps_share(self) -> float | None:
        """Share of the fit's energy spent outside train and val steps."""
        value = self._summary_number("outside_steps_share")
        if value is not None:
            return value
        phases = self.phases_J
        if phases:
            total = sum(phases.values())
            if total > 0:
                return phases.get("gap", 0.0) / total
        return None

    # ------------------------------------------------------------------ accuracy and score
    @cached_property
    def monitor(self) -> str | None:
        """The quality metric: ``--monitor``, else the summary's score monitor, else a logged
        key that looks like validation accuracy."""
        if self.monitor_override:
            return self.monitor_override
        score = (self.summary or {}).get("score")
        if isinstance(score, dict) and score.get("monitor"):
            return str(score["monitor"])
        keys = [k for k in self.scalars if not k.startswith("watt/")]
        for row in self._summary_epochs():
            keys.extend(k for k in row.metrics if not k.startswith("watt/") and k not in keys)
        acc = [k for k in keys if "acc" in k.lower()]
        val = [k for k in acc if "val" in k.lower()]
        if val:
            return val[0]
        return acc[0] if acc else None

    @property
    def higher_is_better(self) -> bool:
        return not (self.monitor and _looks_lower_better(self.monitor))

    def metric_by_epoch(self, key: str) -> list[tuple[int, float]]:
        """``(epoch, value)`` of one key, the last finite value of each epoch, in epoch order
        (``watt/gqi`` is NaN where its form is undefined: such epochs are left out)."""
        found: dict[int, float] = {}
        for row in self._summary_epochs():
            if key in row.metrics:
                found[row.epoch] = row.metrics[key]
        if found:
            return sorted(found.items())
        series = self.scalars.get(key)
        if not series:
            return []
        for epoch, value in zip(self._epochs_of(series), series.values, strict=True):
            if math.isfinite(value):
                found[epoch] = value
        return sorted(found.items())

    @cached_property
    def best_accuracy(self) -> float | None:
        """The best value of the monitored metric over the run (max, or min for a loss)."""
        if not self.monitor:
            return None
        values = [v for _, v in self.metric_by_epoch(self.monitor)]
        if not values:
            return None
        return max(values) if self.higher_is_better else min(values)

    @cached_property
    def final_score(self) -> float | None:
        """The final Green Quotient Index: the summary's, else the last logged ``watt/gqi``."""
        score = (self.summary or {}).get("score")
        if isinstance(score, dict) and _finite(score.get("final")) is not None:
            return _finite(score.get("final"))
        series = self.scalars.get(GQI_KEY)
        finite = [v for v in (series.values if series else []) if math.isfinite(v)]
        if finite:
            return finite[-1]
        by_epoch = self.metric_by_epoch(GQI_KEY)
        return by_epoch[-1][1] if by_epoch else None

    # ------------------------------------------------------------------ epochs
    def _epoch_steps(self) -> tuple[list[int], list[int]]:
        series = self.scalars.get("epoch")
        if not series:
            return [], []
        pairs = sorted(zip(series.steps, series.values, strict=True))
        return [p[0] for p in pairs], [int(p[1]) for p in pairs]

    def _epochs_of(self, series: ScalarSeries) -> list[int]:
        """The epoch of each value: recorded (CSV), else from the logged ``epoch`` key at the
        same step (Lightning logs it with every metric), else the value's position."""
        recorded = series.epochs
        if recorded is not None and all(e is not None for e in recorded):
            return [int(e) for e in recorded if e is not None]  # all known: filters nothing
        steps, epochs = self._epoch_steps()
        if steps:
            out = []
            for s in series.steps:
                i = bisect.bisect_right(steps, s) - 1
                out.append(epochs[max(i, 0)])
            return out
        return list(range(len(series.values)))

    def _summary_epochs(self) -> list[EpochRow]:
        rows: list[EpochRow] = []
        for i, raw in enumerate((self.summary or {}).get("epochs") or []):
            if not isinstance(raw, dict):
                continue
            metrics = raw.get("metrics")
            if not isinstance(metrics, dict):
                metrics = {}
            epoch = raw.get("epoch", i)
            rows.append(
                EpochRow(
                    epoch=int(epoch) if isinstance(epoch, (int, float)) else i,
                    train_J=_finite(raw.get("train_J")),
                    val_J=_finite(raw.get("val_J")),
                    gap_J=_finite(raw.get("gap_J")),
                    energy_kWh=_finite(raw.get("energy_kWh")),
                    metrics={
                        k: v
                        for k, v in ((k, _finite(v)) for k, v in metrics.items())
                        if v is not None
                    },
                )
            )
        return rows

    def epochs(self) -> list[EpochRow]:
        """Per-epoch energy split and metrics: the summary's, else rebuilt from the logged
        ``watt/epoch_*`` keys, the monitor and ``watt/gqi``."""
        rows = self._summary_epochs()
        if rows:
            return rows
        by_epoch: dict[int, EpochRow] = {}
        fields = {
            "watt/epoch_train_J": "train_J",
            "watt/epoch_val_J": "val_J",
            "watt/epoch_gap_J": "gap_J",
            "watt/epoch_kWh": "energy_kWh",
        }
        for key, attr in fields.items():
            series = self.scalars.get(key)
            if not series:
                continue
            for epoch, value in zip(self._epochs_of(series), series.values, strict=True):
                setattr(by_epoch.setdefault(epoch, EpochRow(epoch)), attr, value)
        for metric in (self.monitor, GQI_KEY):
            if metric and metric in self.scalars:
                for epoch, value in self.metric_by_epoch(metric):
                    by_epoch.setdefault(epoch, EpochRow(epoch)).metrics[metric] = value
        return [by_epoch[e] for e in sorted(by_epoch)]

    # ------------------------------------------------------------------ export
    def to_dict(self) -> dict[str, Any]:
        """The run's row in ``report.json``."""
        return {
            "name": self.name,
            "path": str(self.path),
            "files": self.files,
            "duration_s": self.duration_s,
            "energy_kWh": self.energy_kWh,
            "mean_power_W": self.mean_power_W,
            "peak_power_W": self.peak_power_W,
            "outside_steps_share": self.outside_steps_share,
            "phases_J": self.phases_J,
            "monitor": self.monitor,
            "best_accuracy": self.best_accuracy,
            "final_score": self.final_score,
            "method": self.method,
            "method_detail": self.method_detail,
            "estimated": self.estimated,
            "replay": self.replay,
            "co2e_kg": self._summary_number("co2e_kg"),
            "cost": self._summary_number("cost"),
            "currency": (self.summary or {}).get("currency"),
            "epochs": [
                {
                    "epoch": r.epoch,
                    "train_J": r.train_J,
                    "val_J": r.val_J,
                    "gap_J": r.gap_J,
                    "energy_kWh": r.energy_kWh,
                    "metrics": r.metrics,
                }
                for r in self.epochs()
            ],
            "warnings": self.warnings,
        }


def pareto_points(runs: Sequence[RunData]) -> tuple[list[RunData], list[tuple[float, float]]]:
    """The runs that have both an energy total and an accuracy, with their ``(kWh, accuracy)``
    points, for the Pareto view (the report's table, JSON and plot use the same selection)."""
    usable: list[RunData] = []
    points: list[tuple[float, float]] = []
    for r in runs:
        energy, accuracy = r.energy_kWh, r.best_accuracy
        if energy is not None and accuracy is not None:
            usable.append(r)
            points.append((energy, accuracy))
    return usable, points


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the points ``(energy, quality)`` no other point dominates: one dominates
    another with no more energy and no worse quality, and strictly better in one of them.

    Example:
        >>> pareto_front([(1.0, 0.80), (2.0, 0.90), (3.0, 0.85), (0.5, 0.70)])
        [0, 1, 3]
    """
    sign = 1.0 if higher_is_better else -1.0
    front = []
    for i, (e, q) in enumerate(points):
        dominated = any(
            e2 <= e and sign * q2 >= sign * q and (e2 < e or sign * q2 > sign * q)
            for j, (e2, q2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


# --------------------------------------------------------------------------- discovery
def _natural_key(text: str) -> list[Any]:
    # version_10 sorts after version_9, as people number runs.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


#: The fit's recording: ``watt_trace`` alone, or ``watt_trace.rank<N>`` per rank in a
#: multi-process job (other stages add ``_validate`` etc. and are not the fit).
_TRACE_META_RE = re.compile(rf"^{TRACE_NAME}(?:\.rank(\d+))?\.meta\.json$")


def _fit_trace(directory: Path, names: Iterable[str]) -> str | None:
    """The fit trace of a run directory: the rank-less one, else the lowest rank's."""
    ranked: list[tuple[int, str]] = []
    for name in names:
        m = _TRACE_META_RE.match(name)
        if m:
            ranked.append((-1 if m.group(1) is None else int(m.group(1)), name))
    if not ranked:
        return None
    return str(directory / min(ranked)[1][: -len(".meta.json")])


def _markers(directory: Path, names: Iterable[str]) -> dict[str, Any]:
    names = set(names)
    events = sorted(
        (directory / n for n in names if n.startswith(EVENTS_PREFIX)), key=lambda p: p.name
    )
    return {
        "events": events,
        "csv": directory / METRICS_NAME if METRICS_NAME in names else None,
        "summary": directory / SUMMARY_NAME if SUMMARY_NAME in names else None,
        "trace": _fit_trace(directory, names),
    }


def _is_run_trace(prefix: str) -> bool:
    return bool(_TRACE_META_RE.match(Path(prefix).name + ".meta.json"))


def _standalone(loc: RunLocation) -> bool:
    """A recording given on its own (not a run directory's ``watt_trace``): named after it."""
    return loc.trace is not None and not _is_run_trace(loc.trace)


def _location_for_file(path: Path) -> RunLocation:
    name = path.name
    if name.endswith((".meta.json", ".samples.csv.gz", ".steps.csv.gz")):
        prefix = trace_prefix(path)
        if _is_run_trace(prefix):
            # One file of a run's own trace: report the whole run directory.
            return _location_for_dir(path.parent)
        return RunLocation(path.parent, (), None, None, prefix)
    if name.startswith(EVENTS_PREFIX) or name in (METRICS_NAME, SUMMARY_NAME):
        return _location_for_dir(path.parent)
    raise ReportError(f"{path}: not a run file; a RUN is a directory or one of {LOOKED_FOR}")


def _location_for_dir(directory: Path) -> RunLocation:
    found = _markers(directory, os.listdir(directory))
    return RunLocation(
        directory, tuple(found["events"]), found["csv"], found["summary"], found["trace"]
    )


def find_runs(paths: Iterable[str | os.PathLike[str]]) -> list[RunLocation]:
    """Run locations under the given paths, in path order then natural order of directories.

    A directory holding run files is a run; a subdirectory of a run that holds only event files
    (TensorBoard writes hparams and some plugins that way) belongs to that run. Hidden
    directories are skipped.

    Raises:
        RunNotFoundError: a path does not exist.
        ReportError: a path holds no runs at all (the message says what was looked for).
    """
    found: list[RunLocation] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise RunNotFoundError(
                f"{path}: no such file or directory; a RUN is a run directory (holding "
                f"{LOOKED_FOR}) or a log root above such directories"
            )
        if path.is_file():
            loc = _location_for_file(path)
            trace = loc.trace if _standalone(loc) else None
            key = Path(trace).resolve() if trace is not None else loc.path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(loc)
            continue
        before = len(found)
        runs_here: dict[Path, dict[str, Any]] = {}
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=_natural_key)
            here = Path(dirpath)
            marks = _markers(here, filenames)
            if not (marks["events"] or marks["csv"] or marks["summary"] or marks["trace"]):
                continue
            only_events = not (marks["csv"] or marks["summary"] or marks["trace"])
            parent = next((p for p in here.parents if p in runs_here), None)
            if only_events and parent is not None:
                runs_here[parent]["events"].extend(marks["events"])
                continue
            runs_here[here] = marks
        for directory, marks in runs_here.items():
            if directory.resolve() in seen:
                continue
            seen.add(directory.resolve())
            found.append(
                RunLocation(
                    directory,
                    tuple(marks["events"]),
                    marks["csv"],
                    marks["summary"],
                    marks["trace"],
                )
            )
        if len(found) == before and not runs_here:
            raise ReportError(
                f"{path}: no runs found; looked (recursively) for {LOOKED_FOR}. Point at a "
                "Lightning log_dir such as lightning_logs/version_0, or a folder above it."
            )
    return found


# --------------------------------------------------------------------------- readers
def _read_events(
    files: Sequence[Path], advance: Advance | None = None
) -> tuple[dict[str, ScalarSeries], list[str]]:
    """Scalars from TensorBoard event files; several files (a resumed run) are merged, a later
    file's value winning at the same step."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    merged: dict[str, dict[int, tuple[float, float]]] = {}
    warnings: list[str] = []
    for path in files:
        try:
            acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
            acc.Reload()
        except Exception as err:  # a truncated file from a killed run must not end the report
            warnings.append(f"{path}: unreadable event file ({type(err).__name__}: {err})")
            if advance:
                advance(_size(path))
            continue
        tags = acc.Tags()
        for tag in tags.get(ea.SCALARS, []):
            dest = merged.setdefault(tag, {})
            for ev in acc.Scalars(tag):
                dest[int(ev.step)] = (float(ev.value), float(ev.wall_time))
        # Summaries written through tf.summary / tensorboard's v2 API land as scalar tensors.
        for tag in tags.get(ea.TENSORS, []):
            if tag in merged:
                continue
            values = _scalar_tensors(acc.Tensors(tag))
            if values:
                merged[tag] = values
        if advance:
            advance(_size(path))
    out: dict[str, ScalarSeries] = {}
    for tag, by_step in merged.items():
        steps = sorted(by_step)
        out[tag] = ScalarSeries(
            tag,
            steps,
            [by_step[s][0] for s in steps],
            wall_times=[by_step[s][1] for s in steps],
        )
    return out, warnings


def _scalar_tensors(events: Sequence[Any]) -> dict[int, tuple[float, float]]:
    from tensorboard.util import tensor_util

    out: dict[int, tuple[float, float]] = {}
    for ev in events:
        try:
            arr = tensor_util.make_ndarray(ev.tensor_proto)
        except Exception:
            return {}
        if arr.size != 1 or arr.dtype.kind not in "fiu":
            return {}
        out[int(ev.step)] = (float(arr.reshape(())), float(ev.wall_time))
    return out


def _read_metrics_csv(path: Path) -> dict[str, ScalarSeries]:
    """Scalars from a CSVLogger ``metrics.csv``: sparse rows, one column per key."""
    out: dict[str, ScalarSeries] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise ReportError(f"{path}:1: a CSVLogger metrics.csv needs a 'step' column")
        for lineno, row in enumerate(reader, start=2):
            try:
                step = int(float(row["step"]))
            except (TypeError, ValueError):
                raise ReportError(
                    f"{path}:{lineno}: step is not a number: {row['step']!r}"
                ) from None
            epoch_text = (row.get("epoch") or "").strip()
            epoch = int(float(epoch_text)) if epoch_text else None
            for key, text in row.items():
                if key in (None, "step") or text is None or not text.strip():
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue  # a non-numeric column (a logged string): nothing to plot
                series = out.setdefault(key, ScalarSeries(key, epochs=[]))
                series.steps.append(step)
                series.values.append(value)
                assert series.epochs is not None
                series.epochs.append(epoch)
    return out


def _read_summary(path: Path, warnings: list[str]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}:1: expected a JSON object")
    if "format" in data and data["format"] != SUMMARY_FORMAT:
        warnings.append(
            f"{path}: format {data['format']!r}, expected {SUMMARY_FORMAT!r}; read anyway"
        )
    return data


def _size(path: Path | str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def location_bytes(loc: RunLocation) -> int:
    """Bytes a read of this run goes through (for progress bars)."""
    files: list[Path | str] = [*loc.event_files]
    if loc.metrics_csv:
        files.append(loc.metrics_csv)
    if loc.trace:
        files.extend(loc.trace + s for s in (".samples.csv.gz", ".steps.csv.gz"))
    return sum(_size(f) for f in files)


def read_run(
    loc: RunLocation,
    name: str | None = None,
    monitor: str | None = None,
    advance: Advance | None = None,
) -> RunData:
    """Read one run location. ``advance`` is told how many bytes were read, for progress."""
    warnings: list[str] = []
    files: dict[str, list[str]] = {}
    scalars: dict[str, ScalarSeries] = {}
    if loc.event_files:
        scalars, event_warnings = _read_events(loc.event_files, advance)
        warnings.extend(event_warnings)
        files["tensorboard"] = [str(p) for p in loc.event_files]
    if loc.metrics_csv is not None:
        csv_scalars = _read_metrics_csv(loc.metrics_csv)
        # CSV rows know their epoch; where both loggers wrote a key the CSV's copy is kept.
        scalars.update(csv_scalars)
        files["csv"] = [str(loc.metrics_csv)]
        if advance:
            advance(_size(loc.metrics_csv))
    summary = None
    if loc.summary is not None:
        summary = _read_summary(loc.summary, warnings)
        files["summary"] = [str(loc.summary)]
    trace = None
    if loc.trace is not None:
        try:
            trace = load_trace(loc.trace)
            files["trace"] = [loc.trace]
        except (OSError, ValueError) as err:
            warnings.append(f"{loc.trace}: trace not read ({err})")
        if advance:
            advance(sum(_size(loc.trace + s) for s in (".samples.csv.gz", ".steps.csv.gz")))
    run_name = name or (summary or {}).get("run_name") or loc.path.name
    if _standalone(loc):
        run_name = name or Path(loc.trace or "").name
    return RunData(
        name=str(run_name),
        path=loc.path,
        scalars=scalars,
        summary=summary,
        trace=trace,
        files=files,
        warnings=warnings,
        monitor_override=monitor,
    )


def _names(locations: Sequence[RunLocation], summaries: Sequence[str | None]) -> list[str]:
    """Short unique names: the summary's run name (with the directory added where several runs
    share it, as every version of one Lightning logger does), else the directory relative to
    the deepest folder all runs share."""
    dirs = [loc.path.resolve() for loc in locations]
    common = Path(os.path.commonpath(dirs)) if len(dirs) > 1 else dirs[0].parent
    rels: list[str] = []
    for loc, d in zip(locations, dirs, strict=True):
        if _standalone(loc):
            rels.append(Path(loc.trace or "").name)
        else:
            rel_path = d.relative_to(common) if d != common else Path(d.name)
            rels.append(rel_path.as_posix() if str(rel_path) != "." else d.name)
    given_counts = Counter(g for g in summaries if g)
    names: list[str] = []
    for rel, given in zip(rels, summaries, strict=True):
        base = (given if given_counts[given] == 1 else f"{given} ({rel})") if given else rel
        name, n = base, 2
        while name in names:
            name, n = f"{base} #{n}", n + 1
        names.append(name)
    return names


def _peek_run_name(loc: RunLocation) -> str | None:
    if loc.summary is None:
        return None
    try:
        data = json.loads(loc.summary.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    value = data.get("run_name") if isinstance(data, dict) else None
    return str(value) if value else None


def read_runs(
    paths: Iterable[str | os.PathLike[str]],
    monitor: str | None = None,
    advance: Advance | None = None,
    locations: Sequence[RunLocation] | None = None,
) -> list[RunData]:
    """Find and read every run under ``paths`` (see :func:`find_runs`)."""
    locs = list(locations) if locations is not None else find_runs(paths)
    if not locs:
        raise ReportError(f"no runs found; looked for {LOOKED_FOR}")
    names = _names(locs, [_peek_run_name(loc) for loc in locs])
    return [read_run(loc, name, monitor, advance) for loc, name in zip(locs, names, strict=True)]
