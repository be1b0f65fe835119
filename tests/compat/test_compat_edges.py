"""Edge cases (contract 11): several validation dataloaders, fast_dev_run, two WattCallbacks,
and the printed summary across stages."""

from __future__ import annotations

import dataclasses
import math
import re
import time
import warnings

import pytest
from compat.checks import (
    SCORED_FIT_KEYS,
    check_stage,
    check_summary,
    epoch_numbers,
    read_rows,
    watt_files,
)
from compat.scenarios import MultiValClassifier, StagedClassifier, printed_info, trainer, watt
from lightning.pytorch.callbacks import EarlyStopping

from lightning_watt.energy.trace import bundled_trace
from lightning_watt.integration.callback import WattCallback
from lightning_watt.sources import Channel, EstimateSource, RaplSource, ReplaySource


def _fit_catching_warnings(tr, model) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.fit(model)
    return [str(w.message) for w in caught]


def test_several_val_dataloaders_score_from_one_and_say_which(tmp_path):
    cb = watt(score_from="val_acc")
    tr = trainer(tmp_path, [cb])
    messages = _fit_catching_warnings(tr, MultiValClassifier())
    check_stage(tr, cb, "fit", keys=SCORED_FIT_KEYS)
    naming = [m for m in messages if "val_acc/dataloader_idx_" in m]
    assert len(naming) == 1, naming


def test_score_from_a_named_dataloader(tmp_path):
    cb = watt(score_from="val_acc/dataloader_idx_1")
    tr = trainer(tmp_path, [cb])
    messages = _fit_catching_warnings(tr, MultiValClassifier())
    check_stage(tr, cb, "fit", keys=SCORED_FIT_KEYS)
    assert not [m for m in messages if "lightning-watt" in m and "score_from" in m], messages


def test_fast_dev_run_writes_no_files(tmp_path):
    cb = watt()
    tr = trainer(tmp_path, [cb], fast_dev_run=True)
    tr.fit(StagedClassifier())
    assert watt_files(tmp_path) == []
    s = check_summary(cb.last_summary, "fit")
    assert s["steps"]["train"] == 1


def test_two_watt_callbacks_with_one_prefix_are_refused_by_name(tmp_path):
    # Lightning checks stateful callbacks when the Trainer is built, before any hook of ours:
    # its message names the class and the state key, which the prefix sets.
    with pytest.raises(RuntimeError, match=r"WattCallback.*state_key"):
        trainer(tmp_path, [watt(), watt()])


def test_two_watt_callbacks_with_distinct_prefixes_both_measure(tmp_path):
    first, second = watt(), watt(prefix="other/")
    tr = trainer(tmp_path, [first, second])
    tr.fit(StagedClassifier())
    s1 = check_stage(tr, first, "fit")
    s2 = check_summary(second.last_summary, "fit")
    assert s2["prefix"] == "other/"
    run = tr.log_dir
    names = {p.name for p in watt_files(tmp_path)}
    assert "watt_summary.json" in names and "watt_summary.other.json" in names, names
    assert s1["energy_J"] > 0 and s2["energy_J"] > 0
    with open(f"{run}/metrics.csv") as fh:
        header = fh.readline().strip().split(",")
    assert "watt/energy_kWh" in header and "other/energy_kWh" in header


def _co2e_kg(text: str) -> float:
    line = next(ln for ln in text.splitlines() if "CO2e" in ln)
    value, unit = re.search(r"([0-9][0-9.]*(?:e-?[0-9]+)?)\s*(kg|g)\b", line).groups()
    return float(value) / (1000.0 if unit == "g" else 1.0)


def _not_measured(text: str) -> list[str]:
    """The "not measured: <source>" lines (not the estimate's "..., not measured" note)."""
    return [ln for ln in text.splitlines() if "not measured" in ln and "estimated" not in ln]


def test_printed_summary_across_stages(tmp_path, capsys):
    cb = WattCallback(
        sources=[
            RaplSource(root=tmp_path / "no-rapl"),  # unavailable: a "not measured" line
            EstimateSource(cpu_tdp_w=50.0, utilisation=lambda: 0.5),
        ],
        carbon_intensity=400.0,
    )
    tr = trainer(tmp_path, [cb])
    model = StagedClassifier()
    printed = {}
    for stage, run in (
        ("fit", lambda: tr.fit(model)),
        ("validate", lambda: tr.validate(model, verbose=False)),
        ("test", lambda: tr.test(model, verbose=False)),
    ):
        capsys.readouterr()
        with printed_info() as lines:
            run()
        printed[stage] = "\n".join(lines) + capsys.readouterr().out
        assert "lightning-watt" in printed[stage], (stage, printed[stage])
        assert "TrainerFn" not in printed[stage]
        assert "0.0000 kg" not in printed[stage], printed[stage]
        co2e = cb.last_summary["co2e_kg"]
        assert co2e > 0 and _co2e_kg(printed[stage]) == pytest.approx(co2e, rel=0.05)
    assert _not_measured(printed["fit"]), printed["fit"]
    assert not _not_measured(printed["validate"] + printed["test"])


class _StarvedReplay(ReplaySource):
    """A replayed GPU whose meter thread gets no CPU for its first ``delay`` seconds, as on a
    machine busy with other work: no reading exists when the first validation ends."""

    def __init__(self, delay: float) -> None:
        super().__init__(bundled_trace("h200-mlp-stall"), start=10.0)
        self.delay = delay

    def channels(self) -> list[Channel]:
        stalled = [False]

        def late(read):
            def first_read_late():
                if not stalled[0]:
                    stalled[0] = True
                    time.sleep(self.delay)
                return read()

            return first_read_late

        return [dataclasses.replace(c, read=late(c.read)) for c in super().channels()]


def test_early_stopping_on_the_score_survives_a_starved_meter(tmp_path):
    # The flaky example run: the first epoch's score was +inf or NaN (nothing read yet), and
    # EarlyStopping(check_finite=True) ended the fit after epoch 0, one epoch row short.
    cb = WattCallback(sources=[_StarvedReplay(delay=1.5)], score_from="val_acc", record=False)
    stop = EarlyStopping(monitor="watt/gqi", mode="max", patience=5)
    tr = trainer(tmp_path, [cb, stop], max_epochs=3, limit_train_batches=4)
    tr.fit(StagedClassifier())
    s = check_stage(tr, cb, "fit", keys=SCORED_FIT_KEYS)
    assert epoch_numbers(s) == [0, 1, 2]
    assert not stop.stopped_epoch
    scores = [float(r["watt/gqi"]) for r in read_rows(tr) if r.get("watt/gqi")]
    assert len(scores) == 3 and all(math.isfinite(v) and v > 0 for v in scores), scores
