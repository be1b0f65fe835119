"""Lightning's Tuner before a fit (contract 3): the tuner's trial runs are reported as their own
stage "tune", never leak NaN/inf, and the fit that follows starts its own run.

Repeated: the original failure (NaN in the score or the summary) showed in 6 of 15 runs."""

from __future__ import annotations

import math

import pytest
from compat.checks import (
    SCORED_FIT_KEYS,
    check_files,
    check_stage,
    check_summary,
    epoch_numbers,
    run_dir_of,
)
from compat.scenarios import TunableClassifier, trainer, watt
from lightning.pytorch.tuner import Tuner


def _tune(tr, model, how: str) -> None:
    tuner = Tuner(tr)
    if how == "lr_find":
        tuner.lr_find(model, num_training=20)
    else:
        tuner.scale_batch_size(model, init_val=16, max_trials=3, steps_per_trial=3)


@pytest.mark.parametrize("repeat", range(3))
@pytest.mark.parametrize("how", ["lr_find", "scale_batch_size"])
def test_tuner_then_fit(tmp_path, how, repeat):
    cb = watt(score_from="val_acc")
    tr = trainer(tmp_path, [cb])
    model = TunableClassifier()
    _tune(tr, model, how)
    tuned = check_summary(cb.last_summary, "tune")
    check_files(run_dir_of(tr), "tune", tuned, record=False)

    tr.fit(model)
    s = check_stage(tr, cb, "fit", keys=SCORED_FIT_KEYS)
    gqi = float(tr.callback_metrics["watt/gqi"])
    assert math.isfinite(gqi) and gqi > 0, gqi
    # The fit is a run of its own: none of the tuner's energy, epochs from 0.
    assert epoch_numbers(s)[0] == 0, epoch_numbers(s)
    # Its own span's energy only (the other run's would be several times more). Not a strict
    # bound: the peak is the highest power reading, and a 0.1 s fit can end between readings.
    assert s["energy_J"] < 1.5 * s["duration_s"] * s["peak_power_W"], s["energy_J"]
    assert s["energy_J"] == pytest.approx(s["duration_s"] * s["mean_power_W"], rel=1e-6)


@pytest.mark.parametrize("how", ["callback", "tuner"])
def test_a_tuners_trial_steps_are_their_own_phase(tmp_path, how):
    from lightning.pytorch.callbacks import LearningRateFinder

    cb = watt(score_from="val_acc")
    model = TunableClassifier()
    if how == "callback":
        # LearningRateFinder as a callback: its trials run inside the fit, which then goes on.
        tr = trainer(tmp_path, [cb, LearningRateFinder(num_training_steps=20)])
        tr.fit(model)
        s = check_stage(tr, cb, "fit", keys=SCORED_FIT_KEYS)
    else:
        tr = trainer(tmp_path, [cb])
        Tuner(tr).lr_find(model, num_training=20)
        s = check_summary(cb.last_summary, "tune")
    assert s["steps"]["tune"] == 1 and s["phases_J"]["tune"] > 0, s["phases_J"]
    assert "train" not in s["steps"] or s["steps"]["train"] == tr.global_step
    rows = s["epochs"]
    for row in rows:  # a row's three energies add up to its epoch's share of the total
        assert row["train_J"] + row["val_J"] + row["gap_J"] > 0
    assert sum(r["train_J"] + r["val_J"] + r["gap_J"] for r in rows) == pytest.approx(
        s["energy_J"], rel=1e-9
    )
