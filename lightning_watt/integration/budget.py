"""``EnergyBudget``: stop a Lightning fit cleanly when it has spent its energy (or carbon) budget.

The budget reads the cumulative energy that a
:class:`~lightning_watt.integration.callback.WattCallback` in
the same Trainer measures (all ranks, earlier checkpointed segments included), so it costs no
extra measurement and no collective: the WattCallback's ``energy_kwh`` is fresh in a single
process and, in a multi-process run, the value of its last all-reduce, which is identical on
every rank, so every rank takes the same decision at the same step.

Example:
    >>> import lightning as L
    >>> from lightning_watt.integration.budget import EnergyBudget
    >>> from lightning_watt.integration.callback import WattCallback
    >>> budget = EnergyBudget(max_kwh=2.5)  # stop at 2.5 kWh (all GPUs and CPUs together)
    >>> trainer = L.Trainer(callbacks=[WattCallback(), budget], max_epochs=50)  # doctest: +SKIP
    >>> trainer.fit(model)  # doctest: +SKIP
    >>> budget.stop_reason  # doctest: +SKIP
    'max_kwh=2.5 reached at 2.5007 kWh'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_watt.integration.callback import WattCallback
from lightning_watt.validate import finite_number, positive_int

__all__: Sequence[str] = ["EnergyBudget", "EnergyBudgetWarning"]


class EnergyBudgetWarning(UserWarning):
    """Issued (once per fit) when the forecast of the planned run exceeds the budget."""


def _budget_value(name: str, value: Any) -> float | None:
    return finite_number(name, value, minimum=0.0, exclusive_minimum=True, allow_none=True)


class EnergyBudget(Callback):
    """Stops training through ``trainer.should_stop`` when an energy or carbon budget is reached,
    and forecasts the energy of the whole planned run.

    Needs a :class:`~lightning_watt.integration.callback.WattCallback` in the same Trainer's
    callbacks (in any
    position); the energy it counts is the WattCallback's cumulative kWh since the fit started,
    all ranks, earlier segments of a resumed run included.

    **Stopping.** Every ``check_every_n_steps`` train batches, and at each train epoch end, the
    budget is compared with the WattCallback's ``energy_kwh`` (a cheap read). When a budget is
    reached, ``trainer.should_stop`` is set and rank zero says which budget was reached at what
    kWh; Lightning then finishes the step (and runs the validation it runs on an early stop) and
    ends the fit as with ``EarlyStopping``, so the final energy ends up at or a little above the
    budget. ``min_epochs``/``min_steps`` of the Trainer take precedence. In a multi-process run
    the energy read is the WattCallback's last all-reduced value (refreshed at its log steps and
    at epoch ends), identical on all ranks, so the ranks stop together without a collective; the
    overshoot can then reach one WattCallback logging interval.

    **Forecast.** At each train epoch end (so from the end of the first epoch) the energy of the
    whole planned run is forecast and logged as ``watt/forecast_kWh`` (the WattCallback's
    prefix): with ``max_steps`` set, as energy per optimizer step so far x
    ``trainer.estimated_stepping_batches`` (the planned number of steps, which also honours
    ``max_epochs``); otherwise as energy per epoch so far x ``max_epochs``. With neither bounded
    (``max_epochs=-1``) nothing is forecast; ``max_time`` is not taken into account. The energy so
    far includes the start-up (sanity validation, first data loading), so early forecasts err on
    the high side. When the forecast exceeds a budget and ``warn_forecast`` is set, an
    :class:`EnergyBudgetWarning` says so once, with the epoch (or step) at which the budget will be
    reached at the current rate.

    Args:
        max_kwh: energy budget in kWh (device energy as measured, no PUE).
        max_kg_co2e: carbon budget in kg CO2e; needs a WattCallback with a carbon model
            (``carbon_intensity=`` or ``region=``), whose PUE is applied.
        warn_forecast: warn once when the forecast of the planned run exceeds a budget.
        check_every_n_steps: how often, in train batches, the budget is checked.

    Attributes:
        stopped: whether this budget stopped the run (kept in checkpoints).
        stop_reason: which budget was reached at what energy, or ``None``.
        forecast_kwh: the latest forecast in kWh, or ``None`` before the first epoch end.
        forecast_basis: ``"steps"`` or ``"epochs"``: what the latest forecast extrapolated.

    Example:
        >>> EnergyBudget(max_kwh=0.5, max_kg_co2e=0.1)
        EnergyBudget(max_kwh=0.5, max_kg_co2e=0.1)
        >>> EnergyBudget()
        Traceback (most recent call last):
        ...
        ValueError: EnergyBudget needs a budget: pass max_kwh= and/or max_kg_co2e=
    """

    def __init__(
        self,
        max_kwh: float | None = None,
        max_kg_co2e: float | None = None,
        warn_forecast: bool = True,
        check_every_n_steps: int = 1,
    ) -> None:
        super().__init__()
        self.max_kwh = _budget_value("max_kwh", max_kwh)
        self.max_kg_co2e = _budget_value("max_kg_co2e", max_kg_co2e)
        if self.max_kwh is None and self.max_kg_co2e is None:
            raise ValueError("EnergyBudget needs a budget: pass max_kwh= and/or max_kg_co2e=")
        if not isinstance(warn_forecast, bool):
            raise ValueError(f"warn_forecast must be True or False, got {warn_forecast!r}")
        self.warn_forecast = warn_forecast
        self.check_every_n_steps = positive_int("check_every_n_steps", check_every_n_steps)
        self.stopped = False
        self.stop_reason: str | None = None
        self.stopped_at_kwh: float | None = None
        self.forecast_kwh: float | None = None
        self.forecast_basis: str | None = None
        self._warned = False
        self._announced = False  # this fit's stop was announced
        self._watt: WattCallback | None = None
        self._batches = 0

    def __repr__(self) -> str:
        args = [f"max_kwh={self.max_kwh!r}"] if self.max_kwh is not None else []
        if self.max_kg_co2e is not None:
            args.append(f"max_kg_co2e={self.max_kg_co2e!r}")
        return f"EnergyBudget({', '.join(args)})"

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(max_kwh=self.max_kwh, max_kg_co2e=self.max_kg_co2e)

    # ------------------------------------------------------------------ setup
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # Set on the Trainer by Lightning's CallbackConnector, so its class does not declare it
        # (unused-ignore: a Lightning release that declares it would make this ignore moot).
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined,unused-ignore]
        watts = [c for c in callbacks if isinstance(c, WattCallback)]
        if not watts:
            raise MisconfigurationException(
                "EnergyBudget reads the energy a WattCallback measures, and the Trainer has none: "
                "add WattCallback to the Trainer's callbacks, e.g. "
                "Trainer(callbacks=[WattCallback(), EnergyBudget(...)])"
            )
        watt = watts[0]
        if self.max_kg_co2e is not None and watt.carbon is None:
            raise MisconfigurationException(
                "EnergyBudget(max_kg_co2e=...) needs a carbon model: give the WattCallback "
                "carbon_intensity= (gCO2e/kWh) or region= (e.g. WattCallback(region='DE'))"
            )
        self._watt = watt
        self._batches = 0
        self._announced = False

    # ------------------------------------------------------------------ the budget
    def _co2e_kg(self, kwh: float) -> float:
        assert self._watt is not None and self._watt.carbon is not None
        return float(self._watt.carbon.co2e_kg(kwh))

    def _reached(self, kwh: float) -> str | None:
        if not math.isfinite(kwh):
            return None
        if self.max_kwh is not None and kwh >= self.max_kwh:
            return f"max_kwh={self.max_kwh:g} reached at {kwh:.6g} kWh"
        if self.max_kg_co2e is not None:
            kg = self._co2e_kg(kwh)
            if kg >= self.max_kg_co2e:
                return (
                    f"max_kg_co2e={self.max_kg_co2e:g} reached at {kg:.6g} kg CO2e ({kwh:.6g} kWh)"
                )
        return None

    def _check(self, trainer: pl.Trainer, measure: bool = False) -> bool:
        if self._watt is None:
            return False
        # All ranks; identical on every rank in a multi-process run.
        if measure:
            kwh = self._watt.measured_energy_kwh(epoch_end=trainer.current_epoch)
        else:
            kwh = self._watt.energy_kwh
        reason = self._reached(kwh)
        if reason is None:
            return False
        trainer.should_stop = True
        if not self._announced:
            self._announced = True
            self.stopped = True
            self.stop_reason = reason
            self.stopped_at_kwh = kwh
            rank_zero_info(
                f"lightning-watt: energy budget {reason}: stopping training "
                f"(epoch {trainer.current_epoch}, step {trainer.global_step})."
            )
        return True

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._batches += 1
        if self._batches % self.check_every_n_steps == 0:
            self._check(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._watt is None:
            return
        stopping = self._check(trainer, measure=True)
        self._forecast(trainer, pl_module, warn=not stopping)

    # ------------------------------------------------------------------ the forecast
    def _plan(self, trainer: pl.Trainer) -> tuple[str, float, float] | None:
        """(basis, done, planned) in steps or epochs, or None when the run is unbounded."""
        max_steps = trainer.max_steps
        if max_steps is not None and max_steps != -1:
            try:
                planned = float(trainer.estimated_stepping_batches)
            except Exception:  # e.g. gradient accumulation that changes between epochs
                planned = float(max_steps)
            return "steps", float(trainer.global_step), planned
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 0:
            return None
        return "epochs", float(trainer.current_epoch + 1), float(max_epochs)

    def _forecast(self, trainer: pl.Trainer, pl_module: pl.LightningModule, warn: bool) -> None:
        assert self._watt is not None
        plan = self._plan(trainer)
        if plan is None:
            return
        basis, done, planned = plan
        kwh = self._watt.energy_kwh
        if done <= 0 or not math.isfinite(planned) or not math.isfinite(kwh):
            return
        per_unit = kwh / done
        forecast = per_unit * planned
        self.forecast_kwh, self.forecast_basis = forecast, basis
        values = {"forecast_kWh": forecast}
        forecast_kg = None
        if self.max_kg_co2e is not None:
            forecast_kg = self._co2e_kg(forecast)
            values["forecast_co2e_kg"] = forecast_kg
        # Identical on every rank already: logged as the WattCallback logs, with no collective.
        self._watt._publish(trainer, values)
        if not warn or not self.warn_forecast or self._warned or self._announced:
            return
        unit = "step" if basis == "steps" else "epoch"
        over = []
        if self.max_kwh is not None and forecast > self.max_kwh:
            over.append((f"{forecast:.4g} kWh", f"max_kwh={self.max_kwh:g}", self.max_kwh))
        if (
            forecast_kg is not None
            and self.max_kg_co2e is not None
            and forecast_kg > self.max_kg_co2e
        ):
            kwh_at_budget = self.max_kg_co2e / forecast_kg * forecast
            over.append(
                (f"{forecast_kg:.4g} kg CO2e", f"max_kg_co2e={self.max_kg_co2e:g}", kwh_at_budget)
            )
        if not over:
            return
        self._warned = True
        what, budget, kwh_at_budget = min(over, key=lambda o: o[2])
        at = kwh_at_budget / per_unit if per_unit > 0 else math.inf
        rank_zero_warn(
            f"lightning-watt: the planned run ({planned:.0f} {unit}s) is forecast to use {what} "
            f"({per_unit:.4g} kWh per {unit} so far x {planned:.0f}), over the budget {budget}; "
            f"at this rate the budget is reached around {unit} {math.ceil(at)}, where "
            "EnergyBudget will stop training.",
            category=EnergyBudgetWarning,
        )

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "stopped": self.stopped,
            "stop_reason": self.stop_reason,
            "stopped_at_kwh": self.stopped_at_kwh,
            "warned": self._warned,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores whether the budget already stopped the run and already warned. The decision
        to stop is always taken afresh from the (restored, cumulative) energy and this budget, so
        resuming with a larger budget continues training."""
        if state_dict.get("version") != 1:
            rank_zero_warn("lightning-watt: unknown EnergyBudget state version; ignored")
            return
        self.stopped = bool(state_dict.get("stopped", False))
        self.stop_reason = state_dict.get("stop_reason")
        self.stopped_at_kwh = state_dict.get("stopped_at_kwh")
        self._warned = bool(state_dict.get("warned", False))
