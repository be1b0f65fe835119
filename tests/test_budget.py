"""EnergyBudget: stopping at an energy or carbon budget, and forecasting the planned run.

The fits run on the CPU with a replayed H200 trace (about 100 to 400 W), so a budget of
1.2e-4 kWh (432 J) is reached after a couple of seconds of training.
"""

from __future__ import annotations

import csv
import math
import threading
import warnings
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
from helpers import TinyClassifier, csv_trainer, fit_spawned
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import CSVLogger

from lightning_watt.integration.budget import EnergyBudget, EnergyBudgetWarning
from lightning_watt.integration.callback import WattCallback

BUDGET_KWH = 1.2e-4


def _trainer(tmp_path, callbacks, **kw) -> pl.Trainer:
    kw.setdefault("max_epochs", 100)
    return csv_trainer(tmp_path, callbacks, enable_checkpointing=False, **kw)


def _rows(trainer: pl.Trainer) -> list[dict[str, str]]:
    with open(f"{trainer.log_dir}/metrics.csv") as fh:
        return list(csv.DictReader(fh))


def _column(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    return [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key)]


def _watt(**kw) -> WattCallback:
    return WattCallback(replay="h200-mlp-stall", replay_speed=2.0, record=False, **kw)


# ---------------------------------------------------------------------- real fits
@pytest.mark.parametrize("budget_first", [True, False], ids=["budget-first", "watt-first"])
def test_budget_stops_the_run_near_the_budget(tmp_path, budget_first):
    watt = _watt()
    budget = EnergyBudget(max_kwh=BUDGET_KWH)
    callbacks = [budget, watt] if budget_first else [watt, budget]
    trainer = _trainer(tmp_path, callbacks)
    with pytest.warns(EnergyBudgetWarning, match=r"over the budget max_kwh=0\.00012"):
        trainer.fit(TinyClassifier(step_sleep=0.005))

    # Stopped by the budget, long before max_epochs.
    assert budget.stopped and trainer.should_stop
    assert trainer.current_epoch < 100
    assert budget.stop_reason is not None
    assert budget.stop_reason.startswith("max_kwh=0.00012 reached at ")
    # The decision was taken on the first check at or past the budget.
    assert budget.stopped_at_kwh >= BUDGET_KWH
    assert budget.stopped_at_kwh < 1.3 * BUDGET_KWH
    # The final measured energy: at the budget, or a little above it (the step and the
    # validation Lightning runs on an early stop). It can land a little *below* when the meter's
    # held-power estimate at the decision (readings arrive up to 0.5 s late) ran high.
    final = watt.last_summary["energy_kWh"]
    assert 0.85 * BUDGET_KWH <= final <= 1.3 * BUDGET_KWH

    # The forecast of the planned 100 epochs is logged at each epoch end, over the budget from
    # the first epoch on (hence the warning above).
    forecasts = _column(_rows(trainer), "watt/forecast_kWh")
    assert [e for e, _ in forecasts] == list(range(len(forecasts)))
    assert forecasts and all(f > BUDGET_KWH for _, f in forecasts)
    assert budget.forecast_basis == "epochs"


def test_forecast_per_epoch_is_logged_without_stopping(tmp_path):
    watt = _watt()
    budget = EnergyBudget(max_kwh=1.0)  # far above anything a CPU test spends
    trainer = _trainer(tmp_path, [watt, budget], max_epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EnergyBudgetWarning)
        # Steps of a few ms, so every epoch spans real readings (a sub-ms epoch can end before
        # the meter's first reading arrives, and then measures nothing yet).
        trainer.fit(TinyClassifier(step_sleep=0.005))
    assert not budget.stopped and budget.stop_reason is None
    assert trainer.current_epoch == 3  # ran every planned epoch

    rows = _rows(trainer)
    forecasts = dict(_column(rows, "watt/forecast_kWh"))
    energies = dict(_column(rows, "watt/epoch_kWh"))
    assert sorted(forecasts) == [0, 1, 2]
    for epoch, forecast in forecasts.items():
        # energy so far / epochs done x max_epochs (read a moment after the WattCallback's own
        # epoch total, hence the tolerance).
        assert forecast == pytest.approx(energies[epoch] / (epoch + 1) * 3, rel=0.05)
    # The last forecast is the run's energy itself, as estimated live (the final summary counts
    # only measured readings; in a 1.5 s run the live held-power estimate can differ by ~15 %).
    assert forecasts[2] == pytest.approx(watt.last_summary["energy_kWh"], rel=0.3)


def test_forecast_per_step_when_max_steps_is_set(tmp_path):
    watt = _watt()
    budget = EnergyBudget(max_kwh=1.0)
    # 16 train batches per epoch; 40 steps end inside the third epoch.
    trainer = _trainer(tmp_path, [budget, watt], max_epochs=None, max_steps=40)
    trainer.fit(TinyClassifier(step_sleep=0.005))
    assert budget.forecast_basis == "steps"
    assert trainer.global_step == 40
    rows = _rows(trainer)
    forecasts = dict(_column(rows, "watt/forecast_kWh"))
    energies = dict(_column(rows, "watt/epoch_kWh"))
    # Epochs 0 and 1 end after 16 and 32 steps; epoch 2 is cut at step 40 (and still ends).
    assert sorted(forecasts) == [0, 1, 2]
    for epoch, steps in ((0, 16), (1, 32), (2, 40)):
        assert forecasts[epoch] == pytest.approx(energies[epoch] / steps * 40, rel=0.05)
    assert budget.forecast_kwh == pytest.approx(forecasts[2])


def test_missing_watt_callback_is_a_clear_error(tmp_path):
    trainer = _trainer(tmp_path, [EnergyBudget(max_kwh=1.0)], max_epochs=1)
    with pytest.raises(MisconfigurationException, match="add WattCallback to the Trainer's"):
        trainer.fit(TinyClassifier())


def test_carbon_budget_needs_a_carbon_model(tmp_path):
    trainer = _trainer(tmp_path, [_watt(), EnergyBudget(max_kg_co2e=1.0)], max_epochs=1)
    with pytest.raises(MisconfigurationException, match=r"carbon_intensity=.*region="):
        trainer.fit(TinyClassifier())
    # The meter the WattCallback started at its setup is stopped by the failed fit.
    assert not [t for t in threading.enumerate() if t.name == "lightning-watt-meter"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "needs a budget"),
        ({"max_kwh": 0}, "max_kwh"),
        ({"max_kwh": -1.0}, "max_kwh"),
        ({"max_kwh": math.inf}, "max_kwh"),
        ({"max_kwh": math.nan}, "max_kwh"),
        ({"max_kwh": "1"}, "max_kwh"),
        ({"max_kwh": True}, "max_kwh"),
        ({"max_kg_co2e": 0.0}, "max_kg_co2e"),
        ({"max_kwh": 1.0, "max_kg_co2e": -2}, "max_kg_co2e"),
        ({"max_kwh": 1.0, "warn_forecast": "yes"}, "warn_forecast"),
        ({"max_kwh": 1.0, "check_every_n_steps": 0}, "check_every_n_steps"),
        ({"max_kwh": 1.0, "check_every_n_steps": 1.5}, "check_every_n_steps"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EnergyBudget(**kwargs)


# ---------------------------------------------------------------------- logic, without a fit
class _Module:
    """Stands in for the LightningModule: the budget logs through the WattCallback."""


def _ddp_watt(kwh: float = 0.0, **kw) -> WattCallback:
    """A WattCallback as it stands on any rank of a 2-process run between reductions."""
    watt = WattCallback(**kw)
    watt._books.world_size = 2
    watt._books.run.kwh = kwh
    # What the callback would log, recorded instead of sent to a Trainer's loggers.
    watt.logged = {}  # type: ignore[attr-defined]
    watt._publish = lambda trainer, values, save=False: watt.logged.update(  # type: ignore[method-assign]
        {watt.prefix + k: float(v) for k, v in values.items()}
    )
    return watt


def _fake_trainer(watt, **kw) -> SimpleNamespace:
    base = {
        "callbacks": [watt],
        "should_stop": False,
        "current_epoch": 0,
        "global_step": 0,
        "max_epochs": 10,
        "max_steps": -1,
        "estimated_stepping_batches": 100,
    }
    return SimpleNamespace(**{**base, **kw})


def test_ranks_decide_from_the_reduced_energy_only(monkeypatch):
    import torch.distributed as dist

    def forbidden(*a, **k):
        raise AssertionError("EnergyBudget must not run a collective in a batch hook")

    monkeypatch.setattr(dist, "all_reduce", forbidden)
    monkeypatch.setattr(dist, "broadcast", forbidden)
    watt = _ddp_watt(0.5)
    budget = EnergyBudget(max_kwh=1.0, check_every_n_steps=2)
    trainer = _fake_trainer(watt)
    budget.setup(trainer, None, "fit")
    for i in range(4):
        budget.on_train_batch_end(trainer, None, None, None, i)
    assert not trainer.should_stop
    watt._books.run.kwh = 1.0  # the next reduction reaches the budget, on every rank alike
    budget.on_train_batch_end(trainer, None, None, None, 4)
    assert not trainer.should_stop  # batch 5: not a check
    budget.on_train_batch_end(trainer, None, None, None, 5)
    assert trainer.should_stop
    assert budget.stop_reason == "max_kwh=1 reached at 1 kWh"
    assert budget.stopped_at_kwh == 1.0


def test_carbon_budget_stops_with_pue_applied():
    watt = _ddp_watt(0.0, carbon_intensity=500.0, pue=1.5)  # 0.75 kg per device kWh
    budget = EnergyBudget(max_kg_co2e=0.3)
    trainer = _fake_trainer(watt)
    budget.setup(trainer, None, "fit")
    watt._books.run.kwh = 0.39
    budget.on_train_batch_end(trainer, None, None, None, 0)
    assert not trainer.should_stop
    watt._books.run.kwh = 0.4  # 0.4 x 1.5 x 0.5 = 0.3 kg
    budget.on_train_batch_end(trainer, None, None, None, 1)
    assert trainer.should_stop
    assert budget.stop_reason.startswith("max_kg_co2e=0.3 reached at 0.3 kg CO2e (0.4 kWh)")


def test_forecast_warns_once_and_names_when_the_budget_is_reached():
    watt = _ddp_watt(0.2)
    budget = EnergyBudget(max_kwh=1.0)
    trainer = _fake_trainer(watt, max_epochs=10)
    module = _Module()
    budget.setup(trainer, module, "fit")
    with pytest.warns(EnergyBudgetWarning) as record:
        budget.on_train_epoch_end(trainer, module)  # 0.2 kWh/epoch x 10 = 2 kWh > 1 kWh
    assert watt.logged["watt/forecast_kWh"] == pytest.approx(2.0)
    message = str(record[0].message)
    assert "2 kWh" in message and "max_kwh=1" in message and "around epoch 5" in message
    # Once: later epochs update the forecast without warning again.
    trainer.current_epoch, watt._books.run.kwh = 1, 0.42
    with warnings.catch_warnings():
        warnings.simplefilter("error", EnergyBudgetWarning)
        budget.on_train_epoch_end(trainer, module)
    assert watt.logged["watt/forecast_kWh"] == pytest.approx(2.1)
    assert budget.state_dict()["warned"] is True


def test_forecast_with_carbon_budget_logs_and_warns_in_kg():
    watt = _ddp_watt(0.1, carbon_intensity=400.0)
    budget = EnergyBudget(max_kwh=5.0, max_kg_co2e=0.2)
    trainer = _fake_trainer(watt, max_epochs=None, max_steps=1000, global_step=100)
    trainer.estimated_stepping_batches = 1000
    module = _Module()
    budget.setup(trainer, module, "fit")
    with pytest.warns(EnergyBudgetWarning, match=r"0\.4 kg CO2e.*max_kg_co2e=0\.2.*step 500"):
        budget.on_train_epoch_end(trainer, module)  # 1 kWh forecast: under 5 kWh, 0.4 kg over
    assert budget.forecast_basis == "steps"
    assert watt.logged["watt/forecast_kWh"] == pytest.approx(1.0)
    assert watt.logged["watt/forecast_co2e_kg"] == pytest.approx(0.4)


def test_no_warning_when_disabled_or_within_budget_or_unbounded():
    for kwargs, trainer_kw in [
        ({"warn_forecast": False}, {}),
        ({}, {"max_epochs": 2}),  # 0.2 x 2 = 0.4 kWh < 1 kWh
        ({}, {"max_epochs": -1}),  # unbounded: nothing to forecast
    ]:
        watt = _ddp_watt(0.2)
        budget = EnergyBudget(max_kwh=1.0, **kwargs)
        trainer = _fake_trainer(watt, **trainer_kw)
        module = _Module()
        budget.setup(trainer, module, "fit")
        with warnings.catch_warnings():
            warnings.simplefilter("error", EnergyBudgetWarning)
            budget.on_train_epoch_end(trainer, module)
        if trainer_kw.get("max_epochs") == -1:
            assert watt.logged == {} and budget.forecast_kwh is None
        else:
            assert "watt/forecast_kWh" in watt.logged


def test_state_dict_round_trip_and_resume_with_a_larger_budget():
    watt = _ddp_watt(1.0)
    budget = EnergyBudget(max_kwh=1.0)
    trainer = _fake_trainer(watt)
    budget.setup(trainer, None, "fit")
    budget.on_train_batch_end(trainer, None, None, None, 0)
    state = budget.state_dict()
    assert state["stopped"] is True and state["stopped_at_kwh"] == 1.0

    restored = EnergyBudget(max_kwh=1.0)
    restored.load_state_dict(state)
    assert restored.stopped and restored.stop_reason == budget.stop_reason
    # Resumed with a larger budget: the (cumulative) energy is under it, training goes on.
    larger = EnergyBudget(max_kwh=2.0)
    larger.load_state_dict(state)
    trainer = _fake_trainer(watt)
    larger.setup(trainer, None, "fit")
    larger.on_train_batch_end(trainer, None, None, None, 0)
    assert not trainer.should_stop
    # Resumed with the same budget: stops at the first check.
    trainer = _fake_trainer(watt)
    restored.setup(trainer, None, "fit")
    restored.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.should_stop


def test_state_key_tells_budgets_apart():
    assert EnergyBudget(max_kwh=1.0).state_key != EnergyBudget(max_kwh=2.0).state_key
    assert repr(EnergyBudget(max_kwh=1.0)) == "EnergyBudget(max_kwh=1.0)"


def test_energy_is_read_from_the_cumulative_total_of_a_single_process():
    # One process: energy_kwh is fresh (here, no meter yet: the restored offset of a resume).
    watt = WattCallback()
    watt._books.run.kwh = 0.7
    budget = EnergyBudget(max_kwh=0.5)
    trainer = _fake_trainer(watt)
    budget.setup(trainer, None, "fit")
    budget.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.should_stop and budget.stopped_at_kwh == pytest.approx(0.7)


# ---------------------------------------------------------------------- two real processes
class _RecordStop(pl.Callback):
    """Writes where each rank stopped (the budget object itself lives in the spawned ranks)."""

    def __init__(self, directory) -> None:
        self.directory = directory

    def on_fit_end(self, trainer, pl_module) -> None:
        budget = next(c for c in trainer.callbacks if isinstance(c, EnergyBudget))
        (self.directory / f"rank{trainer.global_rank}.txt").write_text(
            f"{trainer.global_step} {trainer.current_epoch} {budget.stopped} "
            f"{budget.stopped_at_kwh!r}"
        )


@pytest.mark.slow
def test_all_ranks_stop_at_the_same_step(tmp_path):
    # Two processes replaying different GPUs (an H200 and an H100): their energies differ, the
    # budget is on their sum, and both ranks must leave the loop together (or DDP would hang).
    budget = 1.5e-4
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=50,
        callbacks=[
            EnergyBudget(max_kwh=budget),
            WattCallback(replay=["h200-mlp-stall", "h100-mlp"], record=False),
            _RecordStop(tmp_path),
        ],
        logger=CSVLogger(tmp_path, name="ddp"),
        log_every_n_steps=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    fit_spawned(trainer, TinyClassifier(step_sleep=0.01))
    ranks = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert ranks[0] == ranks[1]  # same step, same epoch, same decision, same energy read
    step, epoch, stopped, stopped_at = ranks[0]
    assert stopped == "True" and int(epoch) < 50 and int(step) > 0
    assert budget <= float(stopped_at) < 1.5 * budget
