"""``WattCallback``: per-step energy in any Lightning run, on one GPU or many nodes.

Thin glue around the framework-free parts: an :class:`~lightning_watt.meter.EnergyMeter` per
process (one background thread), a :class:`~lightning_watt.step_clock.StepClock` marking step
edges as CUDA events (no sync), and an :class:`~lightning_watt.ledger.EnergyLedger` cutting the
run into train steps, validation steps and gaps whose energies add up to the devices' total.

Example:
    >>> import lightning as L
    >>> from lightning_watt import WattCallback
    >>> trainer = L.Trainer(callbacks=[WattCallback()], max_epochs=1)  # doctest: +SKIP
    >>> trainer.fit(model)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_watt.context import pop_energy_provider, push_energy_provider
from lightning_watt.distributed import (
    all_gather_objects,
    barrier,
    ownership_weights,
    sum_across_ranks,
)
from lightning_watt.ledger import GAP, EnergyFn, EnergyLedger
from lightning_watt.meter import EnergyMeter
from lightning_watt.readings import J_PER_KWH
from lightning_watt.sources import EnergySource, ReplaySource, default_sources
from lightning_watt.step_clock import StepClock
from lightning_watt.summary import build_summary, render_summary
from lightning_watt.trace import StepEdge, bundled_trace, load_trace

if TYPE_CHECKING:  # pragma: no cover
    from lightning_watt.functional import GQIForm

_FORMS = ("guarded", "paper")


def _is_form(form: str) -> TypeGuard[GQIForm]:
    """Whether ``form`` names a Green Quotient Index form (narrows ``str`` to ``GQIForm``)."""
    return form in _FORMS


def _resolve_trace(name_or_prefix: str) -> str:
    if os.path.exists(name_or_prefix + ".meta.json"):
        return name_or_prefix
    try:
        return bundled_trace(name_or_prefix)
    except ValueError:
        raise ValueError(
            f"replay: {name_or_prefix!r} is neither a watt-trace prefix (PREFIX.meta.json not "
            "found) nor a bundled trace ('h100-mlp', 'h200-mlp-stall', 'h200-square-wave')"
        ) from None


class WattCallback(Callback):
    """Measures the energy of every step and logs it to the Trainer's loggers.

    With no arguments it measures the GPUs the strategy trains on through NVML, the CPU through
    RAPL (or a clearly labelled estimate where RAPL is not readable), logs under ``watt/`` at the
    Trainer's ``log_every_n_steps``, and prints a summary at the end of each stage.

    Args:
        log_every_n_steps: logging cadence in train steps; ``None`` follows the Trainer's.
        prefix: prefix of every logged key (``watt/`` groups them in TensorBoard).
        per_device: also log power per device (``watt/power_W/<device>``) of rank zero.
        progress_bar: show power and kWh in the progress bar.
        sources: explicit energy sources (overrides auto-detection).
        replay: a watt-trace prefix or bundled trace name (or one per rank) to replay instead of
            measuring: shows on a CPU machine what a recorded GPU run looks like, and is
            labelled as a replay everywhere.
        replay_speed: trace seconds per wall second for ``replay``.
        record: write what was read as watt-trace v1 next to the logs (``watt_trace.*``).
        summary: print the end-of-stage summary and write ``watt_summary.json``.
        score_from: name of an accuracy the module logs (e.g. ``"val_acc"``, in [0, 1]); the
            Green Quotient Index of it and the cumulative kWh is logged as ``watt/gqi`` at each
            validation epoch end, ready for ``EarlyStopping(monitor="watt/gqi", mode="max")``.
        alpha, beta, form: the score's parameters (defaults 5, 10, ``"guarded"``).
        target_accuracy: log ``watt/target_kWh`` when ``score_from`` first reaches it.
        carbon_intensity, region, pue, price_per_kwh, currency: carbon and cost, see
            :class:`lightning_watt.carbon.CarbonModel`.
    """

    def __init__(
        self,
        *,
        log_every_n_steps: int | None = None,
        prefix: str = "watt/",
        per_device: bool = False,
        progress_bar: bool = True,
        sources: list[EnergySource] | None = None,
        replay: str | list[str] | None = None,
        replay_speed: float = 1.0,
        record: bool = True,
        summary: bool = True,
        score_from: str | None = None,
        alpha: float = 5.0,
        beta: float = 10.0,
        form: str = "guarded",
        target_accuracy: float | None = None,
        carbon_intensity: float | None = None,
        region: str | None = None,
        pue: float = 1.0,
        price_per_kwh: float | None = None,
        currency: str = "USD",
    ) -> None:
        super().__init__()
        if log_every_n_steps is not None and (
            not isinstance(log_every_n_steps, int) or log_every_n_steps < 1
        ):
            raise ValueError(
                f"log_every_n_steps must be a positive integer or None, got {log_every_n_steps!r}"
            )
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string such as 'watt/', got {prefix!r}")
        if sources is not None and not all(isinstance(s, EnergySource) for s in sources):
            raise ValueError("sources must be a list of EnergySource instances, or None")
        if sources is not None and replay is not None:
            raise ValueError("sources and replay are exclusive: pass one of them")
        replays = [replay] if isinstance(replay, str) else list(replay or [])
        self._replay = [_resolve_trace(r) for r in replays]
        if not (isinstance(replay_speed, (int, float)) and replay_speed > 0):
            raise ValueError(f"replay_speed must be a number > 0, got {replay_speed!r}")
        if not _is_form(form):
            raise ValueError(f"form must be one of {_FORMS}, got {form!r}")
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if target_accuracy is not None and not (0.0 < target_accuracy <= 1.0):
            raise ValueError(
                f"target_accuracy must be in (0, 1] (a fraction, not a percentage), got "
                f"{target_accuracy!r}"
            )
        if target_accuracy is not None and score_from is None:
            raise ValueError("target_accuracy needs score_from: the logged accuracy to watch")
        self._carbon = self._make_carbon(carbon_intensity, region, pue, price_per_kwh, currency)
        self.log_every_n_steps = log_every_n_steps
        self.prefix = prefix
        self.per_device = per_device
        self.progress_bar = progress_bar
        self._sources = sources
        self.replay_speed = float(replay_speed)
        self.record = record
        self.summary = summary
        self.score_from = score_from
        self.alpha, self.beta = float(alpha), float(beta)
        self.form: GQIForm = form
        self.target_accuracy = target_accuracy
        # Resumable totals of earlier segments (from a checkpoint).
        self._offset: dict[str, Any] = {
            "energy_J": 0.0,
            "phases_J": {},
            "steps": {},
            "epochs": {},
            "epoch_steps": {},
        }
        self._target_kwh: float | None = None
        self._reset_stage_state()
        self.last_summary: dict[str, Any] | None = None

    @staticmethod
    def _make_carbon(intensity, region, pue, price, currency):
        if intensity is None and region is None and price is None and pue == 1.0:
            return None
        from lightning_watt.carbon import CarbonModel

        return CarbonModel(
            carbon_intensity=intensity,
            region=region,
            pue=pue,
            price_per_kwh=price,
            currency=currency,
        )

    def _reset_stage_state(self) -> None:
        self._meter: EnergyMeter | None = None
        self._clock: StepClock | None = None
        self._ledger: EnergyLedger | None = None
        self._weights: dict[str, float] = {}
        self._stage: str | None = None
        self._world_size = 1
        self._run_dir = Path(".")
        self._epoch = 0
        self._steps_logged = 0
        self._epoch_loop: Any = None
        self._reduced_epochs: dict[int, dict[str, float]] = {}  # all ranks, at epoch ends
        self._last_tick: tuple[float, float, float] | None = None
        self._run_kwh = 0.0  # all ranks, since the first segment, at the last reduction
        self._warned_no_accuracy = False
        self._warned_score = False
        self._provider_pushed = False

    # ------------------------------------------------------------------ lifecycle
    def _sources_for(self, trainer: pl.Trainer) -> tuple[list[EnergySource], dict[str, str]]:
        if self._sources is not None:
            return list(self._sources), {}
        rank = trainer.global_rank
        if self._replay:
            trace = load_trace(self._replay[rank % len(self._replay)])
            # Replay from where the recorded fit started (not its idle lead-in), looping.
            first, last = trace.span
            start = min(max(float(trace.meta.get("fit_start", first)), first), last - 1.0)
            source = ReplaySource(
                trace,
                start=start,
                speed=self.replay_speed,
                loop=True,
                uuid_prefix=f"rank{rank}",
                name=os.path.basename(self._replay[rank % len(self._replay)]),
            )
            return [source], {}
        root = trainer.strategy.root_device
        return default_sources(gpu_devices=[root.index or 0] if root.type == "cuda" else None)

    def _log_dir(self, trainer: pl.Trainer) -> Path:
        # trainer.log_dir broadcasts from rank zero: a collective, so every rank asks it here, in
        # setup, and the answer is kept for the end of the stage (where only rank zero writes).
        log_dir = trainer.log_dir if trainer.loggers else None
        return Path(log_dir or trainer.default_root_dir)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._meter is not None:
            self._stop(trainer)
        self._reset_stage_state()
        self._stage = stage
        self._world_size = trainer.world_size
        sources, skipped = self._sources_for(trainer)
        self._run_dir = self._log_dir(trainer)
        record = None
        if self.record:
            suffix = "" if stage == "fit" else f"_{stage}"
            if trainer.world_size > 1:
                suffix += f".rank{trainer.global_rank}"
            record = str(self._run_dir / f"watt_trace{suffix}")
        meter = EnergyMeter(sources, record=record)
        meter.start()
        self._unavailable = {**skipped, **meter.unavailable}
        if not meter.devices:
            rank_zero_warn(
                "lightning-watt: nothing to measure on this machine ("
                + "; ".join(f"{k}: {v}" for k, v in self._unavailable.items())
                + "). Training continues; energy is logged as 0."
            )
        self._meter = meter
        root = trainer.strategy.root_device
        self._clock = StepClock(meter.now, root if root.type == "cuda" else None)
        self._ledger = EnergyLedger(start=meter.started_at or meter.now())
        keys_by_rank = all_gather_objects([d.key for d in meter.devices])
        weights = ownership_weights(keys_by_rank, trainer.global_rank)
        self._weights = {d.name: w for d, w in zip(meter.devices, weights, strict=True)}
        push_energy_provider(self._energy_kwh_provider)
        self._provider_pushed = True

    def _stop(self, trainer: pl.Trainer) -> None:
        if self._provider_pushed:
            pop_energy_provider(self._energy_kwh_provider)
            self._provider_pushed = False
        if self._meter is not None:
            self._meter.stop()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stop(trainer)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._stop(trainer)

    # ------------------------------------------------------------------ energy helpers
    def _weighted(self, joules: dict[str, float]) -> float:
        return sum(self._weights.get(d, 1.0) * j for d, j in joules.items())

    def _energy_fn(self, times: list[float], provisional: bool) -> EnergyFn:
        """Joules over [t0, t1] for the ledger, from cumulative energies fetched in one batch
        under one lock (the ledger asks for back-to-back intervals, all at ``times``).

        Final: the meter's finalized energy. Provisional: measured up to the meter's horizon,
        then the latest power held (readings arrive up to 0.5 s after the fact). Differences of
        one cumulative function keep the attribution exactly additive either way.
        """
        meter = self._meter
        assert meter is not None
        horizon = meter.horizon if provisional else math.inf
        held = self._weighted(meter.power()) if provisional and math.isfinite(horizon) else 0.0

        def batch(ts: list[float]) -> list[float]:
            clamped = [min(t, horizon) for t in ts]
            values = meter.energy_at_many(clamped, provisional=provisional)
            return [
                self._weighted(v) + held * (t - c)
                for t, c, v in zip(ts, clamped, values, strict=True)
            ]

        known = dict(zip(times, batch(times), strict=True))

        def cumulative(t: float) -> float:
            e = known.get(t)
            if e is None:
                e = known[t] = batch([t])[0]
            return e

        return lambda t0, t1: cumulative(t1) - cumulative(t0)

    def _provisional_energy(self, t0: float, t1: float) -> float:
        """Best current estimate of the (weighted) joules over [t0, t1]."""
        return self._energy_fn([t0, t1], provisional=True)(t0, t1)

    @property
    def energy_kwh(self) -> float:
        """Cumulative kWh of the run (all ranks, earlier segments included). Fresh in a single
        process; in a multi-process run, as of the last reduction (log step or epoch end)."""
        return self._energy_kwh_provider()

    @property
    def carbon(self) -> Any:
        """The :class:`~lightning_watt.carbon.CarbonModel` in use, or ``None``."""
        return self._carbon

    def _note_run_energy(self, segment_j: float) -> None:
        """Record the all-rank energy of a reduction. Live estimates hold the latest power over
        readings not yet arrived; when the readings come in lower, the cumulative energy must
        not step back (a dipping kWh curve, a score that rises on no work), so it is held until
        the measurement passes it. The end-of-stage summary uses final energies only."""
        kwh = (self._offset["energy_J"] + segment_j) / J_PER_KWH
        self._run_kwh = max(self._run_kwh, kwh)

    def _energy_kwh_provider(self) -> float:
        if self._world_size > 1:
            return self._run_kwh
        return self._local_cumulative_kwh()

    def _local_cumulative_kwh(self) -> float:
        meter = self._meter
        if meter is None or meter.started_at is None:
            return self._offset["energy_J"] / J_PER_KWH
        joules = self._provisional_energy(meter.started_at, meter.now())
        return (self._offset["energy_J"] + joules) / J_PER_KWH

    def _preview(self, until: float) -> EnergyLedger:
        """The ledger advanced to ``until`` with provisional energy (this one left as is)."""
        ledger = self._ledger
        assert ledger is not None
        return ledger.preview(until, self._energy_fn(ledger.times_until(until), provisional=True))

    def _sync_edges(self, wait: bool = False) -> None:
        """Move resolved edges into the ledger (and the recording); attribute final energy."""
        assert self._clock is not None and self._ledger is not None and self._meter is not None
        meter, ledger = self._meter, self._ledger
        edges = self._clock.resolve(wait=wait)
        if edges:
            ledger.add_edges((e.phase, e.edge, e.index, e.epoch, e.t) for e in edges)
            if meter.recording:
                meter.record_steps(
                    [StepEdge(e.phase, e.edge, e.index, e.t_host, e.t_gpu) for e in edges]
                )
        until = meter.finalized_until
        first_pending = self._clock.first_pending_host()
        if first_pending is not None:
            until = min(until, first_pending)
        ledger.advance(until, self._energy_fn(ledger.times_until(until), provisional=False))

    # ------------------------------------------------------------------ hooks: edges
    def _mark(self, trainer: pl.Trainer, phase: str, edge: str, index: int) -> None:
        if self._clock is not None:
            self._clock.mark(phase, edge, index, trainer.current_epoch)

    def _eval_phase(self, trainer: pl.Trainer) -> str:
        if trainer.sanity_checking:
            return "sanity"
        if trainer.testing:
            return "test"
        return "val"

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._clock is not None and trainer.current_epoch > 0:
            self._clock.reanchor()
        # Resolved once per epoch, not per step: Lightning's properties walk several objects
        # each time, which was most of the hooks' ~20 us.
        self._epoch = trainer.current_epoch
        self._epoch_loop = trainer.fit_loop.epoch_loop

    def _global_step(self, trainer: pl.Trainer) -> int:
        loop = self._epoch_loop
        return loop.global_step if loop is not None else trainer.global_step

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._clock is not None:
            self._clock.mark("train", "start", self._global_step(trainer), self._epoch)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._clock is not None:
            self._clock.mark("train", "end", self._global_step(trainer), self._epoch)
        if self._should_log(trainer):
            self._log_tick(trainer, pl_module)

    @override
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._mark(trainer, self._eval_phase(trainer), "start", batch_idx)

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._mark(trainer, self._eval_phase(trainer), "end", batch_idx)

    @override
    def on_test_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._mark(trainer, "test", "start", batch_idx)

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._mark(trainer, "test", "end", batch_idx)

    @override
    def on_predict_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._mark(trainer, "predict", "start", batch_idx)

    @override
    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._mark(trainer, "predict", "end", batch_idx)

    # ------------------------------------------------------------------ hooks: logging
    def _should_log(self, trainer: pl.Trainer) -> bool:
        loop = self._epoch_loop
        if self.log_every_n_steps is None:
            # Set on the Trainer by Lightning's LoggerConnector, so its class does not declare it
            # (unused-ignore: a Lightning release that declares it would make this ignore moot).
            every: int = trainer.log_every_n_steps  # type: ignore[attr-defined,unused-ignore]
            if loop is None or every == 0:
                return bool(trainer._logger_connector.should_update_logs)
            # Lightning's own rule (LoggerConnector.should_update_logs), without the walk to it.
            return (loop._batches_that_stepped + 1) % every == 0 or trainer.should_stop
        step = self._global_step(trainer)
        return (step + 1) % self.log_every_n_steps == 0 or step == 0

    def _log(self, pl_module: pl.LightningModule, values: dict[str, float], **kw: Any) -> None:
        with warnings.catch_warnings():
            # Values are already reduced across ranks (identical everywhere): Lightning's advice
            # to add sync_dist would only cost another collective per key.
            warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
            for key, value in values.items():
                # A CPU tensor: Lightning keeps a logged tensor where it is, and reading it back
                # (.item(), every batch for some results) must never wait for the GPU.
                cpu = torch.tensor(float(value), dtype=torch.float64)
                pl_module.log(self.prefix + key, cpu, sync_dist=False, **kw)

    def _log_tick(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        meter, ledger = self._meter, self._ledger
        if meter is None or ledger is None or meter.started_at is None:
            return
        self._sync_edges()
        cum = self._provisional_energy(meter.started_at, meter.now())
        # Power over the last interval from measured energy only (no held-power guesses): the
        # interval ends at the newest reading; without a new reading, the last value stands.
        horizon = meter.horizon
        last_t, last_j, power = self._last_tick or (meter.started_at, 0.0, 0.0)
        if math.isfinite(horizon) and horizon > last_t + 1e-3:
            measured = self._weighted(meter.energy_between(meter.started_at, horizon))
            power = (measured - last_j) / (horizon - last_t)
            self._last_tick = (horizon, measured, power)
        # Steps of this interval, with the newest readings (finalized energy lags by up to the
        # buffer's 0.5 s drain; a short logging interval would otherwise see no finished step).
        view = self._preview(meter.now())
        new_steps = view.steps.get("train", 0) - self._steps_logged
        steps = view.step_energies[-new_steps:] if new_steps > 0 else []
        self._steps_logged = view.steps.get("train", 0)
        ledger.take_step_energies()  # already in the view: keeps the list short
        step_j = sum(j for _, j in steps) / len(steps) if steps else float("nan")
        has_step = 1.0 if steps else 0.0
        total_cum, total_power, total_step, ranks_with_steps = sum_across_ranks(
            [cum, power, 0.0 if math.isnan(step_j) else step_j, has_step], pl_module.device
        )
        self._note_run_energy(total_cum)
        values = {"energy_kWh": self._run_kwh, "power_W": total_power}
        if ranks_with_steps > 0:
            # Ranks step together: the job's energy per step is the sum of the ranks' shares.
            values["step_J"] = total_step * trainer.world_size / ranks_with_steps
        values.update(self._carbon_values(self._run_kwh))
        if self.per_device and trainer.is_global_zero:
            values.update({f"power_W/{name}": w for name, w in meter.power().items()})
        # One row straight to the loggers (as Lightning's ThroughputMonitor does), and the values
        # into callback_metrics for monitors: pl_module.log costs ~0.4 ms per key, and on_step
        # values reach loggers only at the Trainer's own cadence.
        keyed = {self.prefix + k: float(v) for k, v in values.items()}
        # Annotated dict[str, Tensor], but Lightning's loggers take plain floats as well.
        trainer._logger_connector.log_metrics(keyed)  # type: ignore[arg-type]
        callback_metrics = getattr(trainer._logger_connector, "_callback_metrics", None)
        if isinstance(callback_metrics, dict):
            callback_metrics.update(
                {k: torch.tensor(v, dtype=torch.float64) for k, v in keyed.items()}
            )
        if self.progress_bar and trainer.progress_bar_callback is not None:
            # Plain floats straight into the bar's dict, updated once per tick: values logged with
            # prog_bar=True are converted with .item() on every batch.
            bar = getattr(trainer._logger_connector, "_progress_bar_metrics", None)
            if isinstance(bar, dict):
                bar.update({"W": round(total_power, 1), "kWh": float(f"{self._run_kwh:.4g}")})

    def _carbon_values(self, kwh: float) -> dict[str, float]:
        if self._carbon is None:
            return {}
        out = {"co2e_kg": self._carbon.co2e_kg(kwh)}
        cost = self._carbon.cost(kwh)
        if cost is not None:
            out["cost"] = cost
        return out

    def _epoch_phases(self, epoch: int) -> dict[str, float]:
        """This rank's (weighted) joules per phase in ``epoch``, provisional for the newest."""
        meter, ledger = self._meter, self._ledger
        assert meter is not None and ledger is not None
        self._sync_edges()
        now = meter.now()
        view = self._preview(now) if now > ledger.cursor else ledger
        ep = view.epochs.get(epoch)
        return dict(ep.phases) if ep else {}

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._meter is None or self._meter.started_at is None:
            return
        phases = self._epoch_phases(trainer.current_epoch)
        cum = self._provisional_energy(self._meter.started_at, self._meter.now())
        train, val, gap, total = sum_across_ranks(
            [
                phases.get("train", 0.0),
                phases.get("val", 0.0),
                phases.get(GAP, 0.0) + phases.get("sanity", 0.0),
                cum,
            ],
            pl_module.device,
        )
        self._note_run_energy(total)
        self._reduced_epochs[trainer.current_epoch] = {"train": train, "val": val, GAP: gap}
        self._log(
            pl_module,
            {
                "epoch_train_J": train,
                "epoch_val_J": val,
                "epoch_gap_J": gap,
                "epoch_kWh": self._run_kwh,
            },
            on_step=False,
            on_epoch=True,
        )

    def _current_accuracy(self, trainer: pl.Trainer) -> float | None:
        assert self.score_from is not None
        value = None
        try:
            # The epoch aggregate of this validation, computed before Lightning publishes it
            # to callback_metrics (which happens after on_validation_epoch_end).
            value = trainer._logger_connector.metrics["callback"].get(self.score_from)
        except Exception:
            value = None
        if value is None:
            value = trainer.callback_metrics.get(self.score_from)
        if value is None:
            return None
        return float(value.item() if isinstance(value, torch.Tensor) else value)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._meter is None or self._meter.started_at is None:
            return
        cum = self._provisional_energy(self._meter.started_at, self._meter.now())
        (total,) = sum_across_ranks([cum], pl_module.device)
        self._note_run_energy(total)
        if self.score_from is None:
            return
        accuracy = self._current_accuracy(trainer)
        if accuracy is None:
            if not self._warned_no_accuracy:
                self._warned_no_accuracy = True
                rank_zero_warn(
                    f"lightning-watt: score_from={self.score_from!r} was not logged by the module "
                    f"in validation; logged keys: {sorted(trainer.callback_metrics)}"
                )
            return
        from lightning_watt.functional import green_quotient_index

        try:
            score = float(
                green_quotient_index(
                    accuracy, self._run_kwh, alpha=self.alpha, beta=self.beta, form=self.form
                )
            )
        except ValueError as err:
            # An accuracy logged in percent, or the paper's form below 1 kWh: say why once,
            # log NaN (so monitors see "no score"), never stop the fit.
            self._warn_score_once(f"lightning-watt: watt/gqi is NaN: {err}")
            score = float("nan")
        values = {"gqi": score}
        reached = self.target_accuracy is not None and accuracy >= self.target_accuracy
        if reached and self._target_kwh is None:
            self._target_kwh = self._run_kwh
        if self._target_kwh is not None:
            values["target_kWh"] = self._target_kwh
        self._log(pl_module, values, on_step=False, on_epoch=True, prog_bar=False)

    def _warn_score_once(self, message: str) -> None:
        if not self._warned_score:
            self._warned_score = True
            rank_zero_warn(message)

    # ------------------------------------------------------------------ end of a stage
    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module)

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module)

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        meter, ledger, clock = self._meter, self._ledger, self._clock
        if meter is None or ledger is None or clock is None or not meter.running:
            return
        edges = clock.resolve(wait=True)
        if edges:
            ledger.add_edges((e.phase, e.edge, e.index, e.epoch, e.t) for e in edges)
            meter.record_steps(
                [StepEdge(e.phase, e.edge, e.index, e.t_host, e.t_gpu) for e in edges]
            )
        # fit_end is written by meter.stop(): the recording then spans what the summary counts.
        meter.set_trace_meta(fit_start=meter.started_at, stage=self._stage)
        meter.stop()
        self._stop(trainer)
        assert meter.started_at is not None
        end = meter._stopped_at or meter.now()
        ledger.advance(end, self._energy_fn(ledger.times_until(end), provisional=False))
        totals = meter.energy_between(meter.started_at, end)
        peaks = meter.peak_power()
        methods = meter.methods()
        sources = meter.source_descriptions()
        duration = end - meter.started_at
        local = {
            "rank": trainer.global_rank,
            "duration_s": duration,
            "devices": [
                {
                    "name": d.name,
                    "rank": trainer.global_rank,
                    "uuid": d.key,
                    "label": d.label,
                    "energy_J": totals.get(d.name, 0.0),
                    "counted": self._weights.get(d.name, 1.0) > 0,
                    "mean_power_W": totals.get(d.name, 0.0) / duration if duration > 0 else 0.0,
                    "peak_power_W": peaks.get(d.name, 0.0),
                    "method": (methods.get(d.name) or ["none"])[0],
                    "methods": methods.get(d.name, []),
                    "source": sources.get(d.name, ""),
                    "estimated": d.estimated,
                }
                for d in meter.devices
            ],
            "phases_J": dict(ledger.phases),
            "steps": dict(ledger.steps),
            "epochs": {e: dict(ep.phases) for e, ep in ledger.epochs.items()},
            "epoch_steps": {e: ep.train_steps for e, ep in ledger.epochs.items()},
            "gaps": [(g.device, g.start, g.end, g.reason) for g in meter.gaps()],
            "errors": meter.errors,
            "unavailable": self._unavailable,
        }
        gathered = all_gather_objects(local)
        try:
            if trainer.is_global_zero:
                self._write_summary(trainer, gathered)
        finally:
            # Ranks leave the stage together: a rank that ran ahead to teardown and exit while
            # rank zero still wrote the summary aborted the gloo process group (seen 2 in 8).
            barrier()

    def _write_summary(self, trainer: pl.Trainer, gathered: list[dict[str, Any]]) -> None:
        summary = build_summary(
            gathered,
            stage=self._stage or "fit",
            offset=self._offset if self._stage == "fit" else None,
            carbon=self._carbon,
            score={
                "monitor": self.score_from,
                "alpha": self.alpha,
                "beta": self.beta,
                "form": self.form,
                "final": _metric(trainer, self.prefix + "gqi"),
                "target_accuracy": self.target_accuracy,
                "target_kWh": self._target_kwh,
            },
            replay=[os.path.basename(p) for p in self._replay] or None,
            world_size=trainer.world_size,
            epoch_metrics=self._epoch_metrics,
            run_name=str(getattr(trainer.logger, "name", "") or ""),
        )
        self.last_summary = summary
        if self.summary:
            log_dir = self._run_dir
            log_dir.mkdir(parents=True, exist_ok=True)
            name = (
                "watt_summary.json" if self._stage == "fit" else f"watt_summary_{self._stage}.json"
            )
            (log_dir / name).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
            rank_zero_info(render_summary(summary))

    @property
    def _epoch_metrics(self) -> dict[int, dict[str, float]]:
        return getattr(self, "_metrics_by_epoch", {})

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit" or self._stage == "fit":
            store = self.__dict__.setdefault("_metrics_by_epoch", {})
            # The module's own metrics of this epoch; our epoch energies are in the row already
            # (and callback_metrics still holds the previous epoch's at this point).
            store[trainer.current_epoch] = {
                k: float(v)
                for k, v in trainer.callback_metrics.items()
                if _scalar(v) and k not in ("W", "kWh") and not k.startswith(self.prefix + "epoch_")
            }
        if self._stage == "validate":
            self._finish(trainer, pl_module)

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        """Cumulative energy, steps, phase and per-epoch totals of every segment so far, all
        ranks. In a multi-process run the totals are those of the last reduction (the latest
        epoch end or log step); energy after the last epoch end is kept as ``unattributed``."""
        prior = self._offset
        state: dict[str, Any] = {
            "version": 1,
            "energy_J": prior["energy_J"],
            "phases_J": dict(prior["phases_J"]),
            "steps": dict(prior["steps"]),
            "epochs": {e: dict(ph) for e, ph in prior["epochs"].items()},
            "epoch_steps": dict(prior["epoch_steps"]),
            "target_kWh": self._target_kwh,
        }
        meter, ledger = self._meter, self._ledger
        if meter is None or ledger is None or meter.started_at is None:
            return state
        if self._world_size > 1:
            epochs = self._reduced_epochs
            segment_j = self._run_kwh * J_PER_KWH - prior["energy_J"]
            steps = ledger.steps  # ranks step together
            epoch_steps = {e: ep.train_steps for e, ep in ledger.epochs.items()}
            phases = _sum_dicts(epochs.values())
            phases["unattributed"] = max(0.0, segment_j - sum(phases.values()))
        else:
            self._sync_edges()
            until = meter.now() if meter.running else (meter._stopped_at or meter.now())
            view = self._preview(until)
            epochs = {e: ep.phases for e, ep in view.epochs.items()}
            segment_j = view.total()
            steps, phases = view.steps, view.phases
            epoch_steps = {e: ep.train_steps for e, ep in view.epochs.items()}
        state["energy_J"] += segment_j
        state["phases_J"] = _sum_dicts([state["phases_J"], phases])
        state["steps"] = _sum_dicts([state["steps"], steps])
        state["epoch_steps"] = _sum_dicts([state["epoch_steps"], epoch_steps])
        for e, ph in epochs.items():
            state["epochs"][e] = _sum_dicts([state["epochs"].get(e, {}), ph])
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != 1:
            rank_zero_warn("lightning-watt: unknown checkpoint state version; starting from 0 J")
            return
        self._offset = {
            "energy_J": float(state_dict["energy_J"]),
            "phases_J": dict(state_dict.get("phases_J", {})),
            "steps": dict(state_dict.get("steps", {})),
            "epochs": {int(e): dict(ph) for e, ph in state_dict.get("epochs", {}).items()},
            "epoch_steps": {int(e): n for e, n in state_dict.get("epoch_steps", {}).items()},
        }
        self._target_kwh = state_dict.get("target_kWh")
        self._run_kwh = self._offset["energy_J"] / J_PER_KWH


def _sum_dicts(dicts: Any) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or (
        isinstance(value, torch.Tensor) and value.numel() == 1
    )


def _metric(trainer: pl.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


__all__: Sequence[str] = ["WattCallback"]
