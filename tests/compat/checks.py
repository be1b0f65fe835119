"""The invariants every Trainer scenario must keep: the executable form of WattCallback's contract.

``check_stage(trainer, cb, stage, ...)`` runs all of them after one stage (fit, validate, test,
predict, tune) and returns the stage's summary; the parts are usable alone where a scenario has
no Trainer at hand (a DDP worker that ran in another process).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_watt.integration.callback import WattCallback

STAGES = ("fit", "validate", "test", "predict", "tune")
# Logged during a fit that logs at least once (log_every_n_steps small enough) and validates.
FIT_KEYS = (
    "energy_kWh",
    "power_W",
    "step_J",
    "epoch_train_J",
    "epoch_val_J",
    "epoch_gap_J",
    "epoch_kWh",
)
SCORED_FIT_KEYS = (*FIT_KEYS, "gqi")  # with score_from="val_acc"


# ---------------------------------------------------------------------------- where things go
def summary_name(stage: str) -> str:
    return "watt_summary.json" if stage == "fit" else f"watt_summary_{stage}.json"


def trace_prefix(stage: str) -> str:
    return "watt_trace" if stage == "fit" else f"watt_trace_{stage}"


def run_dir_of(trainer: pl.Trainer) -> Path:
    """The run's directory: the logger's save_dir/name/version (``trainer.log_dir`` for CSV and
    TensorBoard), or ``default_root_dir`` without a logger."""
    return Path(trainer.log_dir) if trainer.loggers else Path(trainer.default_root_dir)


def watt_files(root: Path) -> list[Path]:
    """Every summary or trace file under ``root``."""
    return sorted(p for p in Path(root).rglob("watt_*") if p.is_file())


# ---------------------------------------------------------------------------- logged values
def read_rows(trainer_or_path: pl.Trainer | Path | str) -> list[dict[str, str]]:
    """The rows of a CSVLogger's metrics.csv (from the Trainer's CSVLogger, or a path)."""
    if isinstance(trainer_or_path, pl.Trainer):
        csv_loggers = [lg for lg in trainer_or_path.loggers if isinstance(lg, CSVLogger)]
        assert csv_loggers, "the scenario has no CSVLogger"
        path = Path(csv_loggers[0].log_dir) / "metrics.csv"
    else:
        path = Path(trainer_or_path)
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def logged(rows: Iterable[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every row that carries ``key``, in the order they were logged."""
    out = []
    for row in rows:
        value = row.get(key)
        if value is None or value == "":
            continue
        out.append((int(float(row["step"])), float(value)))
    return out


def _rows_of(trainer: pl.Trainer) -> list[dict[str, Any]] | None:
    if any(isinstance(lg, CSVLogger) for lg in trainer.loggers):
        return read_rows(trainer)
    for lg in trainer.loggers:
        if isinstance(getattr(lg, "rows", None), list):  # scenarios.FakeWandbLogger
            return lg.rows
    return None


def check_logged(
    rows: list[dict[str, Any]],
    keys: Iterable[str] = (),
    *,
    prefix: str = "watt/",
    fit: bool = True,
    min_ticks: int = 1,
) -> list[tuple[int, float]]:
    """Every key in ``keys`` was logged; every ``watt/`` value is finite; the cumulative energy
    never steps back across all rows (every stage the logger saw) and ends above 0. In a fit the
    rows carrying ``watt/energy_kWh`` have strictly increasing steps (no step logged twice, as
    Lightning's own on-step values) and there are at least ``min_ticks`` of them.
    Returns the logged ``(step, kWh)``."""
    assert rows, "nothing was logged"
    columns = set().union(*(r.keys() for r in rows))
    missing = [prefix + k for k in keys if not logged(rows, prefix + k)]
    assert not missing, f"not logged: {missing}; logged: {sorted(columns)}"
    for key in sorted(c for c in columns if c.startswith(prefix)):
        bad = [(s, v) for s, v in logged(rows, key) if not math.isfinite(v)]
        assert not bad, f"{key} logged non-finite values {bad}"
    energy = logged(rows, prefix + "energy_kWh")
    assert energy, f"{prefix}energy_kWh never logged"
    kwh = [v for _, v in energy]
    assert all(v >= 0 for v in kwh), energy
    steps_back = [(a, b) for a, b in itertools.pairwise(energy) if b[1] < a[1]]
    assert not steps_back, f"{prefix}energy_kWh stepped back: {steps_back}"
    assert kwh[-1] > 0, energy
    if fit:
        steps = [s for s, _ in energy]
        repeated = [s for s, t in itertools.pairwise(steps) if t <= s]
        assert not repeated, f"{prefix}energy_kWh logged twice (or backwards) at steps {repeated}"
        assert len(energy) >= min_ticks, f"{len(energy)} rows with {prefix}energy_kWh: {energy}"
    return energy


# ---------------------------------------------------------------------------- the summary
def _non_finite(obj: Any, path: str = "") -> list[str]:
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [f"{path}={obj}"]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _non_finite(v, f"{path}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _non_finite(v, f"{path}[{i}]")]
    return []


def check_summary(
    summary: dict[str, Any] | None, stage: str, *, prev_run_J: float | None = None
) -> dict[str, Any]:
    """The summary's own rules: a plain-string stage, energy > 0, phases that add up exactly,
    every number finite, and ``run_energy_J``: equal to ``energy_J`` for a fit; the run's
    energy before this stage (``prev_run_J``) plus this stage's otherwise."""
    assert summary is not None, "no summary"
    assert type(summary["stage"]) is str, f"stage is {type(summary['stage'])}, not str"
    assert summary["stage"] == stage
    assert "TrainerFn" not in json.dumps(summary, default=str)
    assert not _non_finite(summary), _non_finite(summary)
    energy = summary["energy_J"]
    assert energy > 0
    assert math.isclose(sum(summary["phases_J"].values()), energy, rel_tol=1e-9), (
        summary["phases_J"],
        energy,
    )
    assert "run_energy_J" in summary, f"no run_energy_J in the {stage} summary"
    run = summary["run_energy_J"]
    if stage == "fit":
        assert run == pytest.approx(energy, rel=1e-9)
    elif prev_run_J is not None:
        assert run == pytest.approx(prev_run_J + energy, rel=1e-6), (run, prev_run_J, energy)
    assert run >= energy * (1 - 1e-9)
    return summary


def check_files(
    run_dir: Path, stage: str, summary: dict[str, Any], *, record: bool = True, world_size: int = 1
) -> None:
    """The stage's summary (and, with ``record``, its trace) lie in the run's directory; no file
    name or summary text there mentions ``TrainerFn``."""
    run_dir = Path(run_dir)
    path = run_dir / summary_name(stage)
    assert path.is_file(), f"{path.name} not in {run_dir}: {[p.name for p in watt_files(run_dir)]}"
    text = path.read_text(encoding="utf-8")
    written = json.loads(text)
    assert written["stage"] == stage
    assert written["energy_J"] == pytest.approx(summary["energy_J"], rel=1e-9)
    if record:
        ranks = [f".rank{r}" for r in range(world_size)] if world_size > 1 else [""]
        for rank in ranks:
            prefix = trace_prefix(stage) + rank
            assert list(run_dir.glob(prefix + ".*")), f"no {prefix}.* in {run_dir}"
    for p in run_dir.rglob("*"):
        assert "TrainerFn" not in p.name, p
        if p.name.startswith("watt_") and p.name.endswith(".json"):
            assert "TrainerFn" not in p.read_text(encoding="utf-8"), p


def check_stage(
    trainer: pl.Trainer,
    cb: WattCallback,
    stage: str,
    *,
    keys: Iterable[str] = (),
    prev_run_J: float | None = None,
    run_dir: Path | None = None,
    min_ticks: int = 1,
) -> dict[str, Any]:
    """All invariants after ``stage`` ran: the summary's rules, its files in the run's
    directory, the logged keys and the monotone cumulative energy. Returns the summary."""
    summary = check_summary(cb.last_summary, stage, prev_run_J=prev_run_J)
    if cb.summary:
        check_files(
            run_dir or run_dir_of(trainer),
            stage,
            summary,
            record=cb.record,
            world_size=trainer.world_size,
        )
    rows = _rows_of(trainer)
    if rows is not None:
        check_logged(
            rows, keys, prefix=cb.prefix, fit=stage == "fit", min_ticks=min_ticks if keys else 0
        )
    else:  # no logger: monitors still read the values from callback_metrics
        for key in keys:
            assert cb.prefix + key in trainer.callback_metrics, sorted(trainer.callback_metrics)
            assert math.isfinite(float(trainer.callback_metrics[cb.prefix + key]))
    return summary


def epoch_numbers(summary: dict[str, Any]) -> list[int]:
    return [row["epoch"] for row in summary["epochs"]]
