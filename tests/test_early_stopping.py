"""Early stopping and checkpointing on the Green Quotient Index (issue 5, acceptance test).

Why a score-based stop comes earlier than an accuracy-based one: the default (scale-free) score
is ``beta * acc**alpha * (R / E)**(1 / ln R) / log10 R`` with ``E`` the cumulative kWh, which
grows about linearly with the epochs, and ``R = 100 kWh``. Whatever the size of ``E``, it rises
only while ``alpha`` times the relative accuracy gain of an epoch, ``d acc / acc``, beats
``1 / ln R`` (0.22) times the relative energy growth ``d E / E`` (about ``1 / (epochs so
far)``). The model below gains ~5 % in its second epoch and then creeps up by ~0.1 % an epoch:
accuracy keeps setting (tiny) records, so ``EarlyStopping(monitor="val_acc")`` keeps going,
while the score peaks within the first epochs and then falls every epoch, so
``EarlyStopping(monitor="watt/gqi")`` stops ``patience`` epochs after the peak.

Accuracy is deterministic (seeded, CPU); energy comes from a replayed H200 trace on the wall
clock and varies from run to run, which the assertions allow for.
"""

from __future__ import annotations

import csv
import math
import time

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_watt.integration.callback import WattCallback
from lightning_watt.score.functional import green_quotient_index

PATIENCE = 2
MAX_EPOCHS = 8
STEP_S = 0.01  # 8 steps: ~0.1 s an epoch


def _separable(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] + 0.5 * x[:, 1] > 0).long())


class PlateauClassifier(pl.LightningModule):
    """A two-layer MLP with a large SGD step on linearly separable data: validation accuracy
    (1024 rows) goes 0.906, 0.954, 0.964, then creeps up by about 0.001 an epoch (0.974 after
    ten epochs): new records nearly every epoch, each far too small to pay for its energy.

    Each step sleeps ``STEP_S`` so that an epoch lasts long enough for the meter to read the
    replayed GPU a few times (a warm CPU runs this tiny model's epoch in ~10 ms)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        time.sleep(STEP_S)
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(-1) == y).float().mean(), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_separable(512, 0), batch_size=64)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_separable(1024, 1), batch_size=1024)


def _watt(**kw) -> WattCallback:
    return WattCallback(
        replay="h200-mlp-stall", replay_speed=2.0, score_from="val_acc", record=False, **kw
    )


def _fit(tmp_path, callbacks, max_epochs: int = MAX_EPOCHS) -> tuple[pl.Trainer, list[dict]]:
    pl.seed_everything(0, verbose=False)
    model = PlateauClassifier()
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        callbacks=callbacks,
        logger=CSVLogger(tmp_path, name="run"),
        max_epochs=max_epochs,
        log_every_n_steps=4,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        accelerator="cpu",
    )
    trainer.fit(model)
    with open(f"{trainer.log_dir}/metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return trainer, rows


def _per_epoch(rows: list[dict], key: str) -> list[float]:
    """The value of ``key`` at each validation epoch end, in epoch order."""
    values = {int(r["epoch"]): float(r[key]) for r in rows if r.get(key)}
    assert sorted(values) == list(range(len(values)))
    return [values[e] for e in sorted(values)]


def test_score_based_early_stopping_stops_before_accuracy_based(tmp_path):
    by_score = EarlyStopping(monitor="watt/gqi", mode="max", patience=PATIENCE)
    score_trainer, score_rows = _fit(tmp_path / "score", [by_score, _watt()])
    by_acc = EarlyStopping(monitor="val_acc", mode="max", patience=PATIENCE)
    acc_trainer, acc_rows = _fit(tmp_path / "acc", [_watt(), by_acc])

    score_epochs = score_trainer.current_epoch
    acc_epochs = acc_trainer.current_epoch
    # The score run was stopped by EarlyStopping, before max_epochs ...
    assert by_score.stopped_epoch > 0
    assert score_epochs < MAX_EPOCHS
    # ... and accuracy-based stopping with the same patience runs longer.
    assert acc_epochs > score_epochs

    # Same seeds, same accuracy: the score run saw the first epochs of the accuracy run.
    acc_curve = _per_epoch(acc_rows, "val_acc")
    score_acc = _per_epoch(score_rows, "val_acc")
    assert score_acc == acc_curve[: len(score_acc)]

    # Why it stopped: the score peaked and then fell for `patience` epochs in a row ...
    gqi = _per_epoch(score_rows, "watt/gqi")
    assert len(gqi) == score_epochs
    assert all(math.isfinite(g) and g > 0 for g in gqi)  # energy was measured from epoch 0 on
    peak = max(range(len(gqi)), key=gqi.__getitem__)
    assert peak == len(gqi) - 1 - PATIENCE
    assert all(later < gqi[peak] for later in gqi[peak + 1 :])
    # ... while accuracy had not fallen (a plateau, not a collapse) ...
    assert score_acc[-1] >= score_acc[peak] - 0.005
    # ... and kept setting small records afterwards, which is what kept the other run going.
    assert max(acc_curve[peak + 1 :]) > acc_curve[peak]


@pytest.mark.parametrize("watt_first", [True, False], ids=["watt-first", "watt-last"])
def test_checkpoint_and_early_stopping_on_the_score_in_either_order(tmp_path, watt_first):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="watt/gqi", mode="max")
    stop = EarlyStopping(monitor="watt/gqi", mode="max", patience=PATIENCE)
    watt = _watt()
    callbacks = [watt, ckpt, stop] if watt_first else [ckpt, stop, watt]
    trainer, rows = _fit(tmp_path, callbacks)

    assert stop.stopped_epoch > 0 and trainer.current_epoch < MAX_EPOCHS
    gqi = _per_epoch(rows, "watt/gqi")
    assert ckpt.best_model_score is not None
    assert float(ckpt.best_model_score) == pytest.approx(max(gqi), rel=1e-6)
    best_epoch = max(range(len(gqi)), key=gqi.__getitem__)
    saved = torch.load(ckpt.best_model_path, weights_only=False)
    assert saved["epoch"] == best_epoch
    # The summary reports the final score, as logged.
    assert watt.last_summary["score"]["final"] == pytest.approx(gqi[-1], rel=1e-6)


def test_energy_to_reach_a_target_accuracy_is_logged_once_reached(tmp_path):
    watt = _watt(target_accuracy=0.95)
    _, rows = _fit(tmp_path, [watt], max_epochs=3)
    acc = _per_epoch(rows, "val_acc")
    assert acc[0] < 0.95 <= acc[1]  # reached at the second epoch
    target = {int(r["epoch"]): float(r["watt/target_kWh"]) for r in rows if r["watt/target_kWh"]}
    assert sorted(target) == [1, 2]  # not logged before it is reached
    assert target[1] == target[2] > 0  # the energy when it was *first* reached, kept
    # It is the cumulative energy the score of that epoch was computed with.
    gqi = _per_epoch(rows, "watt/gqi")
    assert gqi[1] == pytest.approx(green_quotient_index(acc[1], target[1]), rel=1e-5)
    assert watt.last_summary["score"]["target_kWh"] == pytest.approx(target[1], rel=1e-6)
