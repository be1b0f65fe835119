"""Trainer features (contract 5, 12): each fit keeps the invariants (keys logged, no step logged
twice, monotone energy, phases that add up, the run rule, files in the run's directory)."""

from __future__ import annotations

import json

import pytest
from compat.checks import FIT_KEYS, SCORED_FIT_KEYS, check_stage, logged, read_rows
from compat.scenarios import (
    IterableClassifier,
    ManualClassifier,
    StagedClassifier,
    TwoOptimizerClassifier,
    trainer,
    watt,
)
from helpers import rows_on_any_machine
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_watt.integration.callback import WattCallback

NO_VAL_KEYS = ("energy_kWh", "power_W", "step_J", "epoch_train_J", "epoch_kWh")

# id: (model class, Trainer arguments, keys the fit logs with score_from="val_acc")
PATHS = {
    "manual_optimization": (ManualClassifier, {}, SCORED_FIT_KEYS),
    "two_optimizers_manual": (TwoOptimizerClassifier, {}, SCORED_FIT_KEYS),
    "gradient_clip_val": (StagedClassifier, {"gradient_clip_val": 0.5}, SCORED_FIT_KEYS),
    "val_check_interval_half": (StagedClassifier, {"val_check_interval": 0.5}, SCORED_FIT_KEYS),
    "check_val_every_2_epochs": (
        StagedClassifier, {"check_val_every_n_epoch": 2}, SCORED_FIT_KEYS,
    ),
    "max_steps": (StagedClassifier, {"max_steps": 12, "max_epochs": -1}, SCORED_FIT_KEYS),
    "max_time": (StagedClassifier, {"max_time": {"seconds": 2}, "max_epochs": -1}, NO_VAL_KEYS),
    "iterable_dataset": (IterableClassifier, {}, SCORED_FIT_KEYS),
    "limit_val_batches_0": (StagedClassifier, {"limit_val_batches": 0}, NO_VAL_KEYS),
    "no_sanity_check": (StagedClassifier, {"num_sanity_val_steps": 0}, SCORED_FIT_KEYS),
    "bf16_mixed": (StagedClassifier, {"precision": "bf16-mixed"}, SCORED_FIT_KEYS),
}  # fmt: skip


@pytest.mark.parametrize("path", list(PATHS))
def test_trainer_path_keeps_the_invariants(tmp_path, path):
    model_cls, kw, keys = PATHS[path]
    cb = watt(score_from="val_acc")
    tr = trainer(tmp_path, [cb], **kw)
    tr.fit(model_cls())
    s = check_stage(tr, cb, "fit", keys=keys, min_ticks=2)
    assert s["steps"]["train"] > 0
    if path != "two_optimizers_manual":  # there Lightning counts both optimizers' steps
        assert s["steps"]["train"] == tr.global_step
    assert [e["epoch"] for e in s["epochs"]] == list(range(len(s["epochs"])))


def test_boring_model(tmp_path):
    cb = watt()
    tr = trainer(tmp_path, [cb], limit_train_batches=16)
    tr.fit(BoringModel())
    # 16 ticks of ~2 ms steps outpace the books' refreshes: how many rows repeat the one
    # before (and are not logged) depends on the machine's pace (see rows_on_any_machine).
    s = check_stage(tr, cb, "fit", keys=FIT_KEYS, min_ticks=rows_on_any_machine(32 // 2))
    assert s["steps"]["train"] == tr.global_step == 32


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    cb = watt()
    tr = trainer(tmp_path, [cb], accumulate_grad_batches=4, limit_train_batches=16)
    tr.fit(StagedClassifier())
    assert tr.global_step == 8
    s = check_stage(tr, cb, "fit", keys=FIT_KEYS, min_ticks=2)
    assert s["steps"]["train"] == tr.global_step
    assert sum(row["train_steps"] for row in s["epochs"]) == tr.global_step
    rows = read_rows(tr)
    energy_steps = [step for step, _ in logged(rows, "watt/energy_kWh")]
    loss_steps = [step for step, _ in logged(rows, "train_loss")]
    assert energy_steps == sorted(set(energy_steps)), energy_steps
    assert loss_steps == sorted(set(loss_steps)), loss_steps
    assert len(energy_steps) <= len(loss_steps) + 1, (energy_steps, loss_steps)


@pytest.mark.parametrize("watt_first", [True, False], ids=["watt_first", "watt_last"])
def test_early_stopping_and_checkpoint_on_gqi(tmp_path, watt_first):
    cb = watt(score_from="val_acc")
    stop = EarlyStopping(monitor="watt/gqi", mode="max", patience=5, strict=True)
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="watt/gqi", mode="max")
    callbacks = [cb, stop, best] if watt_first else [stop, best, cb]
    tr = trainer(tmp_path, callbacks, max_epochs=3, enable_checkpointing=True)
    tr.fit(StagedClassifier())
    check_stage(tr, cb, "fit", keys=SCORED_FIT_KEYS)
    scores = [v for _, v in logged(read_rows(tr), "watt/gqi")]
    assert len(scores) == 3
    assert float(stop.best_score) == pytest.approx(max(scores), rel=1e-6)
    assert float(best.best_model_score) == pytest.approx(max(scores), rel=1e-6)
    assert (tmp_path / "ckpt").is_dir() and best.best_model_path


CLI_CONFIG = """\
model: {{step_sleep: 0.004}}
trainer:
  accelerator: cpu
  max_epochs: 2
  limit_train_batches: 8
  log_every_n_steps: 2
  enable_progress_bar: false
  enable_model_summary: false
  enable_checkpointing: false
  default_root_dir: {root}
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {root}, name: cli}}
  callbacks:
    - class_path: lightning_watt.WattCallback
      init_args: {{replay: h200-mlp-stall, score_from: val_acc}}
"""


def test_lightning_cli(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CLI_CONFIG.format(root=json.dumps(str(tmp_path))), encoding="utf-8")
    cli = LightningCLI(StagedClassifier, args=["fit", "--config", str(config)])
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, WattCallback)]
    s = check_stage(cli.trainer, cb, "fit", keys=SCORED_FIT_KEYS, min_ticks=4)
    assert s["steps"]["train"] == cli.trainer.global_step == 16
    assert (tmp_path / "cli" / "version_0" / "watt_summary.json").is_file()
