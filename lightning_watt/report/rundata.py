"""One run as read from disk (:class:`RunData`), with the numbers a report shows.

Each number comes from the best source present: the fit's summary (the callback's own totals),
then the watt-trace (:class:`~lightning_watt.report.trace_view.TraceView`), then the logged
scalars, looked up under the run's logging prefix (:mod:`lightning_watt.report.keys`).
:class:`RunData`'s docstring has an example.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lightning_watt.energy.readings import ESTIMATE_W, J_PER_KWH
from lightning_watt.energy.trace import Trace
from lightning_watt.energy.trace_columns import TraceColumns
from lightning_watt.report.keys import LoggedKeys, resolve_prefix
from lightning_watt.report.series import EpochRow, ScalarSeries
from lightning_watt.report.trace_energy import ENGINE_NOTES
from lightning_watt.report.trace_view import TraceView


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


def _looks_lower_better(key: str) -> bool:
    return bool(re.search(r"loss|err|mse|mae|perplex", key, re.IGNORECASE))


@dataclass(eq=False)  # identity: runs are compared as objects, never field by field
class RunData(TraceView):
    """Everything read from one run, with the derived numbers a report shows.

    Numbers come from the fit's summary when present (the callback's own totals), else from
    the trace, else from the logged scalars; ``None`` when no source has them. ``prefix``: the
    logging prefix of the callback's keys; ``None`` finds it (:attr:`keys`).

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
    trace: Trace | TraceColumns | None = None
    files: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    monitor_override: str | None = None
    prefix: str | None = None

    @cached_property
    def keys(self) -> LoggedKeys:
        """The callback's logged keys in this run: under ``prefix`` when given, else the
        summary's, else one detected from the logged keys (``watt/`` when none is)."""
        if self.prefix:
            return LoggedKeys(self.prefix)
        return LoggedKeys(resolve_prefix((self.summary or {}).get("prefix"), self.scalars))

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
        if not methods and self.has_trace:
            numbers = self.trace_numbers()
            for per_device in (numbers.methods if numbers else {}).values():
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
    def unmeasured_kWh(self) -> float:
        """The estimated part of the energy: devices no reader measured any more (a lost GPU)
        or not yet (reads stuck at the start), from the summary's ``unmeasured_J``, else (no
        summary) from the trace's record of them over the fit; 0 when everything was measured."""
        if self.summary is None:
            joules = sum(float(u["energy_J"]) for u in self._trace_unmeasured.values())
        else:
            joules = self._summary_number("unmeasured_J") or 0.0
        return joules / J_PER_KWH if joules else 0.0

    @cached_property
    def _trace_unmeasured(self) -> dict[str, dict[str, float | str]]:
        """The trace's unmeasured spans over the fit (:meth:`Trace.unmeasured`)."""
        if not self.has_trace:
            return {}
        cols = self.columns
        assert cols is not None
        return cols.unmeasured(*cols.fit_window)

    @property
    def unmeasured_reasons(self) -> list[str]:
        """``rank0:gpu0: GPU is lost ...`` for each device with an unmeasured span (``gpu0:
        ...`` when they come from the trace)."""
        if self.summary is None:
            return [
                f"{name}: {u['reason'] or 'not measured'}"
                for name, u in sorted(self._trace_unmeasured.items())
                if float(u["energy_J"]) > 0
            ]
        out = []
        for d in (self.summary or {}).get("devices") or []:
            if isinstance(d, dict) and (_finite(d.get("unmeasured_J")) or 0.0) > 0:
                who = f"rank{d.get('rank', '?')}:{d.get('name', '?')}"
                out.append(f"{who}: {d.get('unmeasured_reason') or 'not measured'}")
        return out

    @property
    def interrupted(self) -> bool:
        """Whether an exception ended the fit (its numbers stop there)."""
        return (self.summary or {}).get("interrupted") is True

    @property
    def notes(self) -> list[str]:
        """Honest labels for plot titles: a replay or an estimate never looks measured, an
        interrupted fit never looks finished."""
        out: list[str] = []
        if self.interrupted:
            out.append("INTERRUPTED fit: numbers up to the interruption")
        if self.partial and self.summary is None:
            out.append(f"PARTIAL trace (a killed run?); energy from {self.energy_source}")
        if self.replay:
            out.append(f"REPLAY of trace {self.replay!r}, not measured in this run")
        if self.estimated:
            out.append("ESTIMATED power (modelled, not measured)")
        if self.unmeasured_kWh > 0:
            total = self.energy_kWh or 0.0
            share = f" ({100 * self.unmeasured_kWh / total:.0f} %)" if total > 0 else ""
            out.append(f"UNMEASURED: {self.unmeasured_kWh:.3g} kWh{share} estimated")
        return out

    # ------------------------------------------------------------------ headline numbers
    def _summary_number(self, key: str) -> float | None:
        return _finite((self.summary or {}).get(key))

    @cached_property
    def duration_s(self) -> float | None:
        """Seconds the fit took (summary, else the trace's fit window, else logged wall times)."""
        value = self._summary_number("duration_s")
        if value is not None:
            return value
        if self.columns is not None and self.has_trace:
            fit0, fit1 = self.columns.fit_window
            return fit1 - fit0
        walls = [w for s in self.scalars.values() for w in (s.wall_times or [])]
        if len(walls) >= 2:
            return max(walls) - min(walls)
        return None

    @property
    def partial(self) -> bool:
        """Whether the run's trace was cut off (a killed run): its numbers stop early. A
        trace not yet parsed (all numbers from the summary) answers from its meta."""
        if isinstance(self.trace, TraceColumns) and not self.trace.loaded:
            return self.trace.partial_status(load=False)[0]
        return bool(self.columns is not None and self.columns.partial)

    @cached_property
    def _energy(self) -> tuple[float | None, str]:
        """The fit's energy and the source it came from: the summary, else the most complete
        of the trace and the logged scalars. A trace cut off by a kill can hold seconds of a
        run whose logs went on: both are cumulative, so the larger one covers more."""
        joules = self._summary_number("energy_J")
        value = joules / J_PER_KWH if joules is not None else self._summary_number("energy_kWh")
        if value is not None:
            return value, "summary"
        # Both are cumulative, so the largest value is the latest; the epoch-end one also
        # counts what ran after the last step-level log.
        logged = [
            v
            for key in (self.keys.energy_kWh, self.keys.epoch_kWh)
            for v in (self.scalars[key].values if key in self.scalars else [])
            if math.isfinite(v)
        ]
        logged_kWh = max(logged) if logged else None
        trace_kWh = None
        if self._trace_phases_J is not None:
            trace_kWh = self._trace_phases_J["total"] / J_PER_KWH
        if trace_kWh is not None and not self.partial:
            return trace_kWh, "trace"
        reason = (self.columns.partial_reason if self.columns is not None else None) or "cut off"
        if trace_kWh is not None and (logged_kWh is None or trace_kWh >= logged_kWh):
            return trace_kWh, f"trace (partial: {reason})"
        if logged_kWh is not None:
            if trace_kWh is not None:
                return (
                    logged_kWh,
                    f"logged scalars (more complete than the partial trace: {reason})",
                )
            return logged_kWh, "logged scalars"
        return None, "none"

    @property
    def energy_kWh(self) -> float | None:
        """Total energy of the fit, all devices and ranks (resumed segments included); never
        the summary's ``run_energy_J``, which adds the run's other stages."""
        return self._energy[0]

    @property
    def energy_source(self) -> str:
        """Where :attr:`energy_kWh` came from: ``summary``, ``trace``, ``logged scalars``, or
        a partial trace / the logged scalars with why the other was not used."""
        return self._energy[1]

    @cached_property
    def mean_power_W(self) -> float | None:
        value = self._summary_number("mean_power_W")
        if value is not None:
            return value
        if self.energy_kWh is not None and self.duration_s:
            return self.energy_kWh * J_PER_KWH / self.duration_s
        series = self.scalars.get(self.keys.power_W)
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
            _, per_dev, _ = self.power_bins(bin_s=0.1, max_points=10**7)
            if per_dev:
                totals = np.sum(list(per_dev.values()), axis=0)
                finite = totals[np.isfinite(totals)]
                if len(finite):
                    return float(finite.max())
        series = self.scalars.get(self.keys.power_W)
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
        keys = [k for k in self.scalars if not self.keys.owns(k)]
        for row in self._summary_epochs():
            keys.extend(k for k in row.metrics if not self.keys.owns(k) and k not in keys)
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
        (the logged ``gqi`` is NaN where its form is undefined: such epochs are left out)."""
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
        """The final Green Quotient Index: the summary's, else the last logged ``gqi``."""
        score = (self.summary or {}).get("score")
        if isinstance(score, dict) and _finite(score.get("final")) is not None:
            return _finite(score.get("final"))
        series = self.scalars.get(self.keys.gqi)
        finite = [v for v in (series.values if series else []) if math.isfinite(v)]
        if finite:
            return finite[-1]
        by_epoch = self.metric_by_epoch(self.keys.gqi)
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
        ``epoch_*`` keys, the monitor and ``gqi``."""
        rows = self._summary_epochs()
        if rows:
            return rows
        by_epoch: dict[int, EpochRow] = {}
        fields = {
            self.keys.epoch_train_J: "train_J",
            self.keys.epoch_val_J: "val_J",
            self.keys.epoch_gap_J: "gap_J",
            self.keys.epoch_kWh: "energy_kWh",
        }
        for key, attr in fields.items():
            series = self.scalars.get(key)
            if not series:
                continue
            for epoch, value in zip(self._epochs_of(series), series.values, strict=True):
                setattr(by_epoch.setdefault(epoch, EpochRow(epoch)), attr, value)
        for metric in (self.monitor, self.keys.gqi):
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
            "energy_source": self.energy_source,
            "partial_trace": self.partial,
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
            "unmeasured_kWh": self.unmeasured_kWh,
            "unmeasured": self.unmeasured_reasons,
            "replay": self.replay,
            "interrupted": self.interrupted,
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
            # Last: every number above is computed by now, so this says whether the trace's
            # energy engine gave any of them.
            **self._engine_fields(),
        }

    def _engine_fields(self) -> dict[str, Any]:
        engine = self.energy_engine
        return {"energy_engine": engine, "energy_engine_note": ENGINE_NOTES.get(engine or "")}
