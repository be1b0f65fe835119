"""Loggers (contract 10): files once, in the run's directory of the first logger; no logger at
all; a wandb-like logger whose runs share a save_dir and differ by a string version."""

from __future__ import annotations

import json

import pytest
from compat.checks import FIT_KEYS, SCORED_FIT_KEYS, check_stage, watt_files
from compat.scenarios import FakeWandbLogger, StagedClassifier, plain_trainer, watt
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@pytest.mark.parametrize("csv_first", [True, False], ids=["csv_first", "tensorboard_first"])
def test_csv_and_tensorboard_together(tmp_path, csv_first):
    csv_logger, tb = CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")
    loggers = [csv_logger, tb] if csv_first else [tb, csv_logger]
    cb = watt(score_from="val_acc")
    tr = plain_trainer(tmp_path, [cb], logger=loggers)
    tr.fit(StagedClassifier())
    first = tmp_path / ("csv" if csv_first else "tb") / "version_0"
    check_stage(tr, cb, "fit", keys=SCORED_FIT_KEYS, run_dir=first)
    assert {p.parent for p in watt_files(tmp_path)} == {first}
    assert len(list(tmp_path.rglob("watt_summary*.json"))) == 1
    events = EventAccumulator(tb.log_dir)
    events.Reload()
    assert {"watt/energy_kWh", "watt/gqi", "watt/epoch_kWh"} <= set(events.Tags()["scalars"])


def test_without_a_logger(tmp_path):
    root = tmp_path / "root"
    cb = watt(score_from="val_acc")
    tr = plain_trainer(root, [cb], logger=False)
    tr.fit(StagedClassifier())
    s = check_stage(tr, cb, "fit", keys=("energy_kWh", "gqi"), run_dir=root)
    assert {p.parent for p in watt_files(tmp_path)} == {root}
    assert s["steps"]["train"] == tr.global_step == 16


def test_wandb_like_runs_keep_their_own_directory(tmp_path):
    save_dir = tmp_path / "wandb"
    summaries = {}
    for run_id in ("run-a", "run-b"):
        cb = watt()
        logger = FakeWandbLogger(save_dir, "proj", run_id)
        tr = plain_trainer(tmp_path, [cb], logger=logger)
        tr.fit(StagedClassifier())
        run_dir = save_dir / "proj" / run_id
        summaries[run_id] = check_stage(tr, cb, "fit", keys=FIT_KEYS, run_dir=run_dir)
    for run_id, s in summaries.items():
        written = json.loads((save_dir / "proj" / run_id / "watt_summary.json").read_text())
        assert written == json.loads(json.dumps(s)), run_id  # each run's own, not overwritten
    assert {p.parent for p in watt_files(tmp_path)} == {save_dir / "proj" / r for r in summaries}
