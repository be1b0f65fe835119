"""Resuming from a checkpoint (contract 3, 5, 6): a resumed fit continues the totals of the run
it resumes, counts nothing twice, and a later unrelated fit starts from zero again."""

from __future__ import annotations

import math

import pytest
import torch
from compat.checks import FIT_KEYS, check_logged, check_stage, epoch_numbers, read_rows
from compat.scenarios import StagedClassifier, trainer, watt
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_watt.energy.readings import J_PER_KWH

ROW_FIELDS = ("train_J", "val_J", "gap_J", "energy_kWh", "train_steps")


def _fit(tmp_path, cb, max_epochs, ckpt_path=None, **kw):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    tr = trainer(tmp_path, [cb, ckpt], max_epochs=max_epochs, enable_checkpointing=True, **kw)
    tr.fit(StagedClassifier(), ckpt_path=ckpt_path)
    return tr


def _stored_state(tmp_path) -> dict:
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    return next(v for k, v in saved["callbacks"].items() if "WattCallback" in k)


def _check_resume(tmp_path, accumulate: int, batches: int) -> None:
    kw = {"accumulate_grad_batches": accumulate, "limit_train_batches": batches}
    steps_per_epoch = batches // accumulate
    first_cb = watt()
    first_tr = _fit(tmp_path, first_cb, 2, **kw)
    first = check_stage(first_tr, first_cb, "fit", keys=FIT_KEYS)
    state = _stored_state(tmp_path)
    assert 0 < state["energy_J"] <= first["energy_J"], (state["energy_J"], first["energy_J"])

    cb = watt()
    tr = _fit(tmp_path, cb, 4, ckpt_path=tmp_path / "ckpt" / "last.ckpt", **kw)
    s = check_stage(tr, cb, "fit", keys=FIT_KEYS)
    assert epoch_numbers(s) == [0, 1, 2, 3]
    for field in ROW_FIELDS:  # the first run's epoch 0, as it was
        assert s["epochs"][0][field] == pytest.approx(first["epochs"][0][field], rel=1e-6), field
    # The resumed sanity check belongs to the new segment, not to epoch 1 of the old one.
    assert s["epochs"][1]["gap_J"] <= first["epochs"][1]["gap_J"] * (1 + 1e-6)
    assert s["energy_J"] == pytest.approx(state["energy_J"] + s["segment_energy_J"], rel=1e-9)
    assert s["steps"]["train"] == tr.global_step == 4 * steps_per_epoch
    assert sum(row["train_steps"] for row in s["epochs"]) == tr.global_step
    for rows in (read_rows(first_tr), read_rows(tr)):
        check_logged(rows, FIT_KEYS)
        assert not [r for r in rows if any(v.lower() == "nan" for v in r.values())]


def test_resume_continues_the_run(tmp_path):
    _check_resume(tmp_path, accumulate=1, batches=8)


def test_resume_under_gradient_accumulation(tmp_path):
    _check_resume(tmp_path, accumulate=4, batches=16)  # all 16 batches: 4 steps an epoch


def test_reused_callback_after_a_resume_starts_a_new_run(tmp_path):
    _fit(tmp_path, watt(), 1)
    cb = watt()
    _fit(tmp_path, cb, 2, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    resumed = cb.last_summary
    assert resumed is not None and resumed["energy_J"] > resumed["segment_energy_J"]

    tr = trainer(tmp_path / "unrelated", [cb], max_epochs=2)
    tr.fit(StagedClassifier())
    s = check_stage(tr, cb, "fit", keys=FIT_KEYS)
    # Nothing of the old run: epochs from 0, energy its own duration x mean power.
    assert epoch_numbers(s) == [0, 1]
    assert s["steps"]["train"] == tr.global_step == 16
    assert s["energy_J"] == pytest.approx(s["duration_s"] * s["mean_power_W"], rel=1e-6)
    # Its own span's energy only (the other run's would be several times more). Not a strict
    # bound: the peak is the highest power reading, and a 0.1 s fit can end between readings.
    assert s["energy_J"] < 1.5 * s["duration_s"] * s["peak_power_W"], s["energy_J"]
    assert math.isclose(cb.energy_kwh * J_PER_KWH, s["run_energy_J"], rel_tol=1e-6)


def test_resume_from_a_mid_epoch_checkpoint(tmp_path):
    # Lightning calls no epoch-start hook for the epoch a mid-epoch checkpoint resumes into:
    # its remaining steps must still be that epoch's, logged, and counted once.
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    first_tr = trainer(tmp_path, [watt(), ckpt], max_epochs=1, enable_checkpointing=True)
    first_tr.fit(StagedClassifier())
    mid = tmp_path / "ckpt" / "epoch=0-step=5.ckpt"
    assert mid.exists(), sorted(p.name for p in (tmp_path / "ckpt").iterdir())

    cb = watt()
    tr = trainer(tmp_path / "resumed", [cb], max_epochs=2)
    tr.fit(StagedClassifier(), ckpt_path=mid)
    s = check_stage(tr, cb, "fit", keys=FIT_KEYS)
    assert epoch_numbers(s) == [0, 1]
    # Lightning 2.4 repeats the batch the checkpoint was saved in (17 steps), 2.6 does not (16):
    # the books follow Lightning's own count either way.
    assert s["steps"]["train"] == tr.global_step in (16, 17)
    assert sum(row["train_steps"] for row in s["epochs"]) == tr.global_step
    assert s["epochs"][1]["train_steps"] == 8
    epoch_train = [
        (int(float(r["epoch"])), float(r["watt/epoch_train_J"]))
        for r in read_rows(tr)
        if r.get("watt/epoch_train_J")
    ]
    assert [e for e, _ in epoch_train] == [0, 1] and all(j > 0 for _, j in epoch_train)
