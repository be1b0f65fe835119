"""``WattCallback``: per-step energy in any Lightning run, on one GPU or many nodes.

Thin glue: it maps Lightning's hooks onto an
:class:`~lightning_watt.attribution.accountant.EnergyAccountant`
(the run's energy books, without Lightning), logs what it reports and writes the summary.

**The run's cumulative energy** (what ``energy_kwh``, ``watt/energy_kWh`` and the score use):
a ``fit`` starts a run, unless it resumes one from a checkpoint (``ckpt_path=``), whose earlier
segments then count. ``validate``/``test``/``predict`` run afterwards with the same callback add
to that run (a stage started from a checkpoint continues the run saved in it). A ``Tuner``'s
``lr_find``/``scale_batch_size`` rolls its work back: it is reported as its own stage, ``tune``,
and is not part of the run.

Example:
    >>> import lightning as L
    >>> from lightning_watt import WattCallback
    >>> trainer = L.Trainer(callbacks=[WattCallback()], max_epochs=1)  # doctest: +SKIP
    >>> trainer.fit(model)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_watt import _compat as private
from lightning_watt import schema as keys
from lightning_watt._files import atomic_write_text
from lightning_watt.attribution.accountant import EnergyAccountant, LogValues
from lightning_watt.attribution.context import pop_energy_provider, push_energy_provider
from lightning_watt.attribution.distributed import barrier
from lightning_watt.attribution.summary import render_summary
from lightning_watt.energy.meter import EnergyMeter
from lightning_watt.energy.readings import J_PER_KWH
from lightning_watt.integration.handoff import Handoff
from lightning_watt.schema import DEFAULT_PREFIX, prefix_tag, stage_name, summary_file, trace_stem
from lightning_watt.sources import EnergySource, ReplaySource, default_sources
from lightning_watt.sources.replay import replay_speed as checked_replay_speed
from lightning_watt.sources.replay import resolve_trace
from lightning_watt.validate import (
    boolean,
    finite_number,
    path_like,
    positive_int,
    string_collection,
    text,
)

if TYPE_CHECKING:  # pragma: no cover
    from lightning_watt.score.functional import GQIForm


def run_directory(trainer: pl.Trainer) -> Path:
    """Where a run's files go: the first logger's own directory, as ``ModelCheckpoint`` puts
    checkpoints (``save_dir/name/version``; ``log_dir`` for CSV and TensorBoard), else the
    Trainer's ``default_root_dir``. A collective: every rank must call it."""
    path = str(trainer.default_root_dir)
    if trainer.loggers:
        logger = trainer.loggers[0]
        if isinstance(logger, (CSVLogger, TensorBoardLogger)):
            path = str(logger.log_dir)
        elif logger.save_dir is not None:
            version = logger.version
            if version is None and trainer.is_global_zero:
                # A logger that names its run when the run starts (wandb): start it.
                with contextlib.suppress(Exception):
                    _ = logger.experiment  # type: ignore[attr-defined]
                version = logger.version
            version = version if isinstance(version, str) else f"version_{version}"
            path = os.path.join(logger.save_dir, str(logger.name), version)
    return Path(trainer.strategy.broadcast(path))


class WattCallback(Callback):
    """Measures the energy of every step and logs it to the Trainer's loggers.

    With no arguments it measures the GPUs the strategy trains on through NVML, the CPU through
    RAPL (or a clearly labelled estimate where RAPL is not readable), logs under ``watt/`` at the
    Trainer's ``log_every_n_steps``, and prints a summary at the end of each stage. A step is an
    optimizer step (with ``accumulate_grad_batches=k``, k batches), as in Lightning's logging.

    Args:
        log_every_n_steps: logging cadence in optimizer steps; ``None`` follows the Trainer's.
        prefix: prefix of every logged key (``watt/`` groups them in TensorBoard). Two
            callbacks in one Trainer need distinct prefixes; files of a non-default prefix
            carry it as a tag (``watt_summary.<tag>.json``).
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
            Green Quotient Index of it and the run's cumulative kWh is logged as ``watt/gqi``
            at each validation epoch end, ready for ``EarlyStopping(monitor="watt/gqi",
            mode="max")``. With several validation dataloaders, the plain name means
            dataloader 0 (``"val_acc/dataloader_idx_1"`` picks another).
        alpha, beta, form: the score's parameters (defaults 5, 10, ``"scale_free"``; also
            ``"guarded"`` and ``"paper"``), see
            :func:`~lightning_watt.score.functional.green_quotient_index`.
        reference_kwh: the scale-free form's reference energy (``None``: 100 kWh).
        target_accuracy: log ``watt/target_kWh`` when ``score_from`` first reaches it.
        carbon_intensity, region, pue, price_per_kwh, currency: carbon and cost, see
            :class:`lightning_watt.score.carbon.CarbonModel`.
        isolation: where the meter and the books run. ``"auto"`` (default): in a helper
            process forked when a stage begins, where that is possible (Linux, CPU training,
            sources that read the same in any process: RAPL, the system-wide estimate,
            replays), else on threads of the training process; ``"process"``: the same, with a
            warning where it is not possible; ``"thread"``: always threads. On threads their
            work shares the training thread's GIL: ~2-3 % of the throughput of 1.5 ms CPU
            steps, nothing measurable at 10 ms (``benchmarks/README.md``).
    """

    def __init__(
        self,
        *,
        log_every_n_steps: int | None = None,
        prefix: str = DEFAULT_PREFIX,
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
        form: str = "scale_free",
        reference_kwh: float | None = None,
        target_accuracy: float | None = None,
        carbon_intensity: float | None = None,
        region: str | None = None,
        pue: float = 1.0,
        price_per_kwh: float | None = None,
        currency: str = "USD",
        isolation: str = "auto",
    ) -> None:
        super().__init__()
        from lightning_watt.score.functional import resolve_reference_kwh, validate_score_params

        self.log_every_n_steps = positive_int(
            "log_every_n_steps", log_every_n_steps, allow_none=True
        )
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty string such as 'watt/', got {prefix!r}")
        if sources is not None and not all(isinstance(s, EnergySource) for s in sources):
            raise ValueError("sources must be a list of EnergySource instances, or None")
        if sources is not None and replay is not None:
            raise ValueError("sources and replay are exclusive: pass one of them")
        if isinstance(replay, (list, tuple)):
            replays = string_collection("replay", replay) or []
        else:
            replays = [] if replay is None else [path_like("replay", replay)]
        self._replay = [resolve_trace(r) for r in replays]
        self.replay_speed = checked_replay_speed("replay_speed", replay_speed)
        self.form: GQIForm = validate_score_params(
            alpha=alpha, beta=beta, form=form, reference_kwh=reference_kwh
        )
        self.reference_kwh = resolve_reference_kwh(form, reference_kwh)
        self.target_accuracy = finite_number(
            "target_accuracy",
            target_accuracy,
            minimum=0.0,
            exclusive_minimum=True,
            maximum=1.0,
            unit="(a fraction, not a percentage)",
            allow_none=True,
        )
        score_from = text("score_from", score_from, allow_none=True, example="'val_acc'")
        per_device = boolean("per_device", per_device)
        progress_bar = boolean("progress_bar", progress_bar)
        record = boolean("record", record)
        summary = boolean("summary", summary)
        if target_accuracy is not None and score_from is None:
            raise ValueError("target_accuracy needs score_from: the logged accuracy to watch")
        self._carbon = self._make_carbon(carbon_intensity, region, pue, price_per_kwh, currency)
        self.prefix = prefix
        self.per_device = per_device
        self.progress_bar = progress_bar
        self._sources = sources
        self.record = record
        self.summary = summary
        self.score_from = score_from
        self.alpha, self.beta = float(alpha), float(beta)
        self.last_summary: dict[str, Any] | None = None
        self._books = EnergyAccountant(isolation=isolation)
        self.isolation = self._books.isolation
        self._metrics_by_epoch: dict[int, dict[str, float]] = {}
        self._pending_state: dict[str, Any] | None = None
        self._said_unavailable = False
        self._handoff: Handoff | None = None  # made when first pickled (ddp_spawn)
        self._names: dict[str, str] = {}  # a tick's logged keys, spelled once per stage
        self._monitored = private.CallbackMetrics()
        self._reset_stage()

    @staticmethod
    def _make_carbon(intensity, region, pue, price, currency):
        from lightning_watt.score.carbon import CarbonModel

        # Built even when unused, so that its checks refuse bad carbon arguments (pue=True is
        # not 1.0) here rather than pass unseen.
        model = CarbonModel(
            carbon_intensity=intensity,
            region=region,
            pue=pue,
            price_per_kwh=price,
            currency=currency,
        )
        asked = intensity is not None or region is not None or price is not None
        return model if asked or model.pue != 1.0 else None

    def _reset_stage(self) -> None:
        self._run_dir = Path(".")
        self._write_files = True
        self._unavailable: dict[str, str] = {}
        self._epoch = 0
        self._step_of: Callable[[], int] | None = None  # cheap global step, per epoch
        self._log_now: Callable[[], bool] | None = None  # Lightning's log rule, per epoch
        self._step_axis: Callable[[], int] | None = None  # the loggers' x-axis, per epoch
        self._bar = False  # show power and kWh in a progress bar the Trainer has, per epoch
        self._bar_dict: dict[str, Any] | None = None  # the bar's dict the last tick wrote to
        self._window: int | None = None  # global step when the open optimizer step began
        self._tuning = False  # a tuner's trial steps are running (phase "tune")
        self._warned: set[str] = set()
        self._provider_pushed = False
        # The last tick's row: (the books' values, the run's logged kWh then, keyed values).
        self._last_row: tuple[LogValues, float, dict[str, float]] | None = None

    @property
    def _live(self) -> bool:
        return self._books.stage is not None

    @property
    @override
    def state_key(self) -> str:
        # Distinct prefixes make distinct callbacks; the default keeps older checkpoints' key.
        if self.prefix == DEFAULT_PREFIX:
            return type(self).__qualname__
        return self._generate_state_key(prefix=self.prefix)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        """Configuration and the run's books; never a live stage (a thread, CUDA events). A
        copy that runs in another process (ddp_spawn's workers) hands its books back."""
        if self._handoff is None:
            self._handoff = Handoff()
        state = dict(self.__dict__)
        state["_books"] = self._books.run
        # closures over this process's loop
        state["_step_of"] = state["_log_now"] = state["_step_axis"] = None
        state["_provider_pushed"] = False
        state["_monitored"] = private.CallbackMetrics()  # its tensors are this process's
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        run = state.pop("_books")
        self.__dict__.update(state)
        self._books = EnergyAccountant(isolation=self.isolation)
        self._books.run = run

    def _take_handoff(self) -> None:
        taken = self._handoff.take() if self._handoff is not None and not self._live else None
        if taken is not None:
            self._books.run, self.last_summary = taken

    def _leave_handoff(self) -> None:
        if self._handoff is not None and self._books.rank == 0:
            self._handoff.leave(self._books.run, self.last_summary)

    # ------------------------------------------------------------------ lifecycle
    def _sources_for(self, trainer: pl.Trainer) -> tuple[list[EnergySource], dict[str, str]]:
        if self._sources is not None:
            return list(self._sources), {}
        rank = trainer.global_rank
        if self._replay:
            prefix = self._replay[rank % len(self._replay)]
            replay = ReplaySource.of_fit(prefix, speed=self.replay_speed, uuid_prefix=f"rank{rank}")
            return [replay], {}
        root = trainer.strategy.root_device
        return default_sources(gpu_devices=[root.index or 0] if root.type == "cuda" else None)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._books.abort()
        self._release()
        self._reset_stage()
        name = stage_name(stage)
        if name == "fit":
            self._metrics_by_epoch = {}
        tick_keys = (keys.ENERGY_KWH, keys.POWER_W, keys.STEP_J, keys.CO2E_KG, keys.COST)
        self._names = {k: self.prefix + k for k in tick_keys}
        # Lightning writes no logs in fast_dev_run: no files of ours either.
        self._write_files = not getattr(trainer, "fast_dev_run", False)
        self._run_dir = run_directory(trainer)
        record = None
        if self.record and self._write_files:
            stem = trace_stem(
                name, trainer.global_rank, trainer.world_size, prefix_tag(self.prefix)
            )
            record = str(self._run_dir / stem)
        sources, skipped = self._sources_for(trainer)
        # Started by the books: in a helper process or on a thread (see ``isolation``).
        meter = EnergyMeter(sources, record=record)
        # A checkpoint this stage resumes from is loaded after setup (load_state_dict).
        self._books.begin(
            name,
            meter,
            trainer.strategy.root_device,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            written=[*pl_module.parameters(), *pl_module.buffers()],
        )
        started = self._books.stage.meter if self._books.stage is not None else meter
        self._unavailable = {**skipped, **started.unavailable}
        if not started.devices and not self._said_unavailable:
            rank_zero_warn(
                "lightning-watt: nothing to measure on this machine ("
                + "; ".join(f"{k}: {v}" for k, v in self._unavailable.items())
                + "). Training continues; energy is logged as 0. Run `lightning-watt doctor` "
                "to see what this machine can measure and how to fix the rest."
            )
        push_energy_provider(self._energy_kwh_provider)
        self._provider_pushed = True
        if self._pending_state is not None:
            pending, self._pending_state = self._pending_state, None
            self.load_state_dict(pending)

    def _release(self) -> None:
        if self._provider_pushed:
            pop_energy_provider(self._energy_kwh_provider)
            self._provider_pushed = False

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._live:
            # A stage that ended without its end hook: a Tuner's fit, rolled back.
            self._finish(trainer, tuned=self._books.stage_name == "fit")
        self._release()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning calls no teardown hook after an exception: what was measured is kept here.
        self._finish(trainer, interrupted=True)

    # ------------------------------------------------------------------ the run's energy
    @property
    def energy_kwh(self) -> float:
        """The run's cumulative kWh, all ranks (see the module docstring for what the run is).
        Fresh in a single process; in a multi-process run, as of the last reduction (log step,
        epoch or validation end); final once a stage has ended."""
        return self._energy_kwh_provider()

    def measured_energy_kwh(self, epoch_end: int | None = None) -> float:
        """:attr:`energy_kwh` after reading every source now (a few ms, on the meter's thread):
        for moments that decide something. ``epoch_end``: at that train epoch's end, the value
        logged as ``epoch_kWh``. In a multi-process run, the value of the last reduction, as
        :attr:`energy_kwh`."""
        if self._live and self._books.world_size == 1:
            return self._books.measured_kwh(epoch_end=epoch_end)
        return self._energy_kwh_provider()

    def _energy_kwh_provider(self) -> float:
        self._take_handoff()
        return self._books.energy_kwh

    @property
    def carbon(self) -> Any:
        """The :class:`~lightning_watt.score.carbon.CarbonModel` in use, or ``None``."""
        return self._carbon

    # ------------------------------------------------------------------ hooks: edges
    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self._books.new_epoch()
        self._enter_epoch(trainer)

    def _enter_epoch(self, trainer: pl.Trainer) -> None:
        # Resolved once per epoch, not per step: Lightning's properties walk several objects.
        self._epoch = trainer.current_epoch
        self._step_of = private.step_counter(trainer)
        self._log_now = private.log_rule(trainer)
        self._step_axis = private.step_axis(trainer)
        # Trainer.progress_bar_callback searches the callbacks on every call.
        self._bar = self.progress_bar and trainer.progress_bar_callback is not None
        self._window = None

    def _global_step(self, trainer: pl.Trainer) -> int:
        step_of = self._step_of
        return step_of() if step_of is not None else trainer.global_step

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._step_of is None:
            # A fit resumed from a mid-epoch checkpoint: Lightning calls no epoch-start hook.
            self._enter_epoch(trainer)
        if self._window is None:  # else a micro-batch inside an optimizer step already open
            self._window = self._global_step(trainer)
            self._books.mark("train", "start", self._window, self._epoch)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        window = self._window
        if window is None or self._global_step(trainer) == window:
            return  # accumulating: the optimizer step is not done yet
        self._books.mark("train", "end", window, self._epoch)
        self._window = None
        if self._live and self._should_log(trainer, window):
            self._log_tick(trainer)

    def _close_window(self) -> None:
        """End an optimizer step left open (a loop that stopped mid-accumulation)."""
        if self._window is not None:
            self._books.mark("train", "end", self._window, self._epoch)
            self._window = None

    def _should_log(self, trainer: pl.Trainer, step: int) -> bool:
        if self.log_every_n_steps is None:
            log_now = self._log_now
            return log_now() if log_now is not None else False
        return (step + 1) % self.log_every_n_steps == 0

    def _mark_eval(self, trainer: pl.Trainer, edge: str, batch_idx: int) -> None:
        # The sanity check runs before the loop says which epoch it trains next: its energy
        # goes to that epoch (not, after a resume, to the checkpoint's).
        if trainer.sanity_checking:
            self._books.mark("sanity", edge, batch_idx, None)
        else:
            self._books.mark("val", edge, batch_idx, trainer.current_epoch)

    @override
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._mark_eval(trainer, "start", batch_idx)

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
        self._mark_eval(trainer, "end", batch_idx)

    @override
    def on_test_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._books.mark("test", "start", batch_idx, trainer.current_epoch)

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
        self._books.mark("test", "end", batch_idx, trainer.current_epoch)

    @override
    def on_predict_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._books.mark("predict", "start", batch_idx, trainer.current_epoch)

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
        self._books.mark("predict", "end", batch_idx, trainer.current_epoch)

    # ------------------------------------------------------------------ hooks: logging
    def _publish(self, trainer: pl.Trainer, values: dict[str, float], save: bool = False) -> None:
        """One row straight to every logger at Lightning's training x-axis, and the values into
        ``callback_metrics`` for monitors (EarlyStopping, ModelCheckpoint), whatever the stage
        (Lightning's ``self.log`` is not allowed in predict, and per key it costs ~0.4 ms)."""
        if keys.ENERGY_KWH in values:
            # The logged curve of one run never steps back, across stages too.
            held = self._books.run.logged(values[keys.ENERGY_KWH])
            values = {**values, keys.ENERGY_KWH: held}
        prefix = self.prefix
        keyed = {prefix + k: float(v) for k, v in values.items()}
        self._deliver(trainer, keyed, private.stepped_batches(trainer), trainer.current_epoch, save)

    def _deliver(
        self, trainer: pl.Trainer, keyed: dict[str, float], step: int, epoch: int, save: bool
    ) -> None:
        # Lightning adds the epoch to every row it logs; rows of ours carry it too.
        row = {**keyed, "epoch": epoch}
        for logger in trainer.loggers:
            logger.log_metrics(row, step=step)
            if save:
                logger.save()
        self._monitored(trainer, keyed)

    def _log_tick(self, trainer: pl.Trainer) -> None:
        """A log row of a train step's tick, on the training thread: the books' cached numbers
        (:meth:`EnergyAccountant.log_values`) with the keys spelled once per stage, what
        :meth:`_publish` logs for them without its general path's copies and lookups.

        While rows come faster than the books are refreshed (``log_every_n_steps=1`` with steps
        under 25 ms: every 100 ms then, see ``books.BUSY_INTERVAL_S``), a row that would repeat
        the last one is not logged: it cost the loggers' full price for no new number (CSV
        ~28 µs a step on the training thread, TensorBoard ~200 µs). Rows then come at the steps
        where the numbers moved; monitors and the progress bar hold them at every step."""
        books = self._books
        run = books.run
        last = self._last_row
        if last is not None and last[1] == run.logged_kwh and books.repeated_values() is last[0]:
            # Nothing new since the last row while rows outpace refreshes (most rows at
            # log_every_n_steps=1): a few attribute reads, not the whole row's making.
            self._monitored(trainer, last[2])
            if self._bar and private.progress_bar_dict(trainer) is not self._bar_dict:
                self._show_on_bar(trainer, last[0])
            return
        tick = books.log_values()
        busy = books.rows_outpace_refreshes
        if last is not None and last[1] == run.logged_kwh and _same_row(tick, last[0], busy):
            # The books' same numbers as the last row: the same keyed values (every logger
            # copies a row; none is changed in place), which monitors and the progress bar
            # hold already. The tick is kept for the quick path to compare with.
            fresh, keyed = False, last[2]
            self._last_row = (tick, last[1], keyed)
        else:
            fresh, keyed = True, self._keyed(trainer, tick)
            self._last_row = (tick, run.logged_kwh, keyed)
        if fresh or not busy:
            axis = self._step_axis
            step = axis() if axis is not None else private.stepped_batches(trainer)
            self._deliver(trainer, keyed, step, self._epoch, save=False)
        else:
            self._monitored(trainer, keyed)  # unless Lightning replaced its dict: nothing
        if self._bar and (fresh or private.progress_bar_dict(trainer) is not self._bar_dict):
            self._show_on_bar(trainer, tick)  # Lightning replaces its dict, never clears it

    def _show_on_bar(self, trainer: pl.Trainer, tick: LogValues) -> None:
        bar = private.progress_bar_dict(trainer)
        bar[keys.BAR_POWER] = round(tick.power_W, 1)
        bar[keys.BAR_ENERGY] = float(f"{tick.energy_kWh:.4g}")
        self._bar_dict = bar

    def _keyed(self, trainer: pl.Trainer, tick: LogValues) -> dict[str, float]:
        """A tick's row, keyed as logged."""
        names = self._names
        kwh = tick.energy_kWh
        keyed = {
            names[keys.ENERGY_KWH]: self._books.run.logged(kwh),
            names[keys.POWER_W]: tick.power_W,
        }
        if tick.step_J is not None:
            keyed[names[keys.STEP_J]] = tick.step_J
        if self._carbon is not None:
            keyed.update({names[k]: float(v) for k, v in self._carbon_values(kwh).items()})
        stage = self._books.stage
        if self.per_device and trainer.is_global_zero and stage is not None:
            snapshot = stage.snapshot  # the newest readings, as the tick's own numbers
            power = snapshot.device_power_W if snapshot is not None else stage.meter.power()
            prefix = self.prefix + keys.DEVICE_POWER_W
            keyed.update({prefix + name: float(w) for name, w in power.items()})
        return keyed

    def _carbon_values(self, kwh: float) -> dict[str, float]:
        if self._carbon is None:
            return {}
        out = {keys.CO2E_KG: self._carbon.co2e_kg(kwh)}
        cost = self._carbon.cost(kwh)
        if cost is not None:
            out[keys.COST] = cost
        return out

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._live:
            return
        self._close_window()
        epoch = self._books.epoch_end(trainer.current_epoch)
        values = {
            keys.EPOCH_TRAIN_J: epoch.train_J,
            keys.EPOCH_VAL_J: epoch.val_J,
            keys.EPOCH_GAP_J: epoch.gap_J,
            keys.EPOCH_KWH: epoch.energy_kWh,
        }
        if epoch.unmeasured_kWh > 0:  # the same on every rank: reduced with the rest
            values[keys.UNMEASURED_KWH] = epoch.unmeasured_kWh
        self._publish(trainer, values)

    def _score_key(self, trainer: pl.Trainer) -> str | None:
        """The logged key ``score_from`` names; with several dataloaders, dataloader 0's."""
        assert self.score_from is not None
        if private.unpublished_metric(trainer, self.score_from) is not None:
            return self.score_from
        first = f"{self.score_from}/dataloader_idx_0"
        if private.unpublished_metric(trainer, first) is not None:
            self._warn_once(
                "dataloader",
                f"lightning-watt: score_from={self.score_from!r} was logged per validation "
                f"dataloader; scoring {first!r} (pass score_from='{self.score_from}"
                "/dataloader_idx_N' to choose another).",
            )
            return first
        return None

    def _score_values(self, trainer: pl.Trainer, kwh: float) -> dict[str, float]:
        if self.score_from is None:
            return {}
        key = self._score_key(trainer)
        if key is None:
            self._warn_once(
                "no-accuracy",
                f"lightning-watt: score_from={self.score_from!r} was not logged by the module "
                f"in validation; logged keys: {private.unpublished_metric_keys(trainer)}",
            )
            return {}
        if kwh <= 0.0:
            # Nothing measured: a score would be +inf, which monitors read as "stop".
            self._warn_once(
                "no-energy",
                f"lightning-watt: no energy measured, so {self.prefix}{keys.GQI} is not logged "
                "for "
                "this validation (see the summary's 'not measured' lines).",
            )
            return {}
        value = private.unpublished_metric(trainer, key)
        accuracy = float(value.item() if isinstance(value, torch.Tensor) else value)
        from lightning_watt.score.functional import green_quotient_index

        try:
            score = float(
                green_quotient_index(
                    accuracy,
                    kwh,
                    alpha=self.alpha,
                    beta=self.beta,
                    form=self.form,
                    reference_kwh=self.reference_kwh,
                )
            )
        except ValueError as err:
            # An accuracy logged in percent, or the paper's form below 1 kWh: say why once,
            # log NaN (so monitors see "no score"), never stop the fit.
            self._warn_once("score", f"lightning-watt: {self.prefix}{keys.GQI} is NaN: {err}")
            score = math.nan
        values = {keys.GQI: score}
        run = self._books.run
        reached = self.target_accuracy is not None and accuracy >= self.target_accuracy
        if reached and run.target_kwh is None:
            run.target_kwh = kwh
        if run.target_kwh is not None:
            values[keys.TARGET_KWH] = run.target_kwh
        return values

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._live:
            return
        kwh = self._books.measured_kwh()
        values = self._score_values(trainer, kwh)
        if self._books.stage_name != "fit":
            values = {keys.ENERGY_KWH: kwh, **values}
        if values:
            self._publish(trainer, values)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._live:
            self._publish(trainer, {keys.ENERGY_KWH: self._books.measured_kwh()})

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    # ------------------------------------------------------------------ end of a stage
    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._books.stage_name == "fit":
            # The module's own metrics of this epoch, for the summary's epoch rows.
            self._metrics_by_epoch[trainer.current_epoch] = {
                k: float(v)
                for k, v in trainer.callback_metrics.items()
                if _scalar(v)
                and k not in (keys.BAR_POWER, keys.BAR_ENERGY)
                and not k.startswith((self.prefix + "epoch_", self.prefix + keys.POWER_W))
            }
        elif self._books.stage_name == "validate":
            self._finish(trainer)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer)

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer)

    def _finish(self, trainer: pl.Trainer, tuned: bool = False, interrupted: bool = False) -> None:
        """Close the stage's books, merge ranks, write and print the summary, and log the
        run's final energy as the stage's last row. ``interrupted``: an exception ended the
        stage; ranks may be out of step, so only a single process writes what it has."""
        books = self._books
        if not self._live:
            return
        self._release()
        if interrupted and books.world_size > 1:
            books.abort()
            return
        self._close_window()
        try:
            summary = books.finish(
                "tune" if tuned else None,
                trainer.current_epoch,
                interrupted=interrupted,
                unavailable=self._unavailable,
                carbon=self._carbon,
                score={
                    "monitor": self.score_from,
                    "alpha": self.alpha,
                    "beta": self.beta,
                    "form": self.form,
                    "reference_kwh": self.reference_kwh,
                    "final": _metric(trainer, self.prefix + keys.GQI),
                    "target_accuracy": self.target_accuracy,
                    "target_kWh": books.run.target_kwh,
                },
                replay=[os.path.basename(p) for p in self._replay] or None,
                epoch_metrics=self._metrics_by_epoch if books.stage_name == "fit" else None,
                run_name=str(getattr(trainer.logger, "name", "") or ""),
                prefix=self.prefix,
            )
            self.last_summary = summary
            if trainer.is_global_zero:
                self._write_summary(summary)
                self._leave_handoff()
            if not (tuned or interrupted) and books.run.final_J is not None:
                final_kwh = books.run.final_J / J_PER_KWH
                self._publish(trainer, {keys.ENERGY_KWH: final_kwh}, save=True)
        finally:
            # Ranks leave the stage together: a rank that runs ahead to teardown and exits
            # while rank zero still writes the summary aborts the process group.
            if not interrupted:
                barrier()

    def _write_summary(self, summary: dict[str, Any]) -> None:
        if not self.summary:
            return
        if self._write_files:
            name = summary_file(summary["stage"], prefix_tag(self.prefix))
            try:
                self._run_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self._run_dir / name, json.dumps(summary, indent=1) + "\n")
            except OSError as err:
                rank_zero_warn(
                    f"lightning-watt: could not write {name} in {self._run_dir} ({err}); "
                    "the summary is printed below and kept in last_summary."
                )
        rank_zero_info(render_summary(summary, show_unavailable=not self._said_unavailable))
        self._said_unavailable = True

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        """The run's books up to now, all ranks: energy, steps, phase and per-epoch totals of
        every segment, measured (see :meth:`EnergyAccountant.state_dict`)."""
        return self._books.state_dict(self._epoch)

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        from lightning.pytorch.callbacks import BatchSizeFinder, LearningRateFinder

        # A tuner saves a checkpoint before the training loop starts, runs trial steps (with
        # this callback's hooks detached) and restores it: those steps are phase "tune".
        # Set on the Trainer by Lightning's CallbackConnector; its class does not declare it.
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined,unused-ignore]
        tuner = any(isinstance(c, (BatchSizeFinder, LearningRateFinder)) for c in callbacks)
        if tuner and self._live and self._step_of is None and not self._tuning:
            self._books.mark("tune", "start", 0, None)
            self._tuning = True

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the run a checkpoint holds. A checkpoint taken earlier in this very stage
        (a Tuner rolling back its trial steps) changes nothing but ends the "tune" phase."""
        if not self._live:
            self._pending_state = dict(state_dict)  # applied when the next stage starts
            return
        if self._tuning and state_dict.get("stage_id") == self._books.stage_id:
            self._books.mark("tune", "end", 0, None)
            self._tuning = False
        problem = self._books.load_state_dict(state_dict)
        if problem is not None:
            rank_zero_warn(f"lightning-watt: checkpoint {problem}; the run's energy starts at 0 J")


def _same_row(tick: LogValues, last: LogValues, busy: bool) -> bool:
    """Whether ``tick`` carries ``last``'s numbers. While rows outpace refreshes, a tick with
    no new step and the same energy and power counts as the same too: the row after each
    refresh's (the books unchanged, only no step booked since) would otherwise be logged
    again without its step's joules, a second row per refresh for no new number."""
    if tick is last or tick == last:
        return True
    return (
        busy
        and tick.step_J is None
        and tick.energy_kWh == last.energy_kWh
        and tick.power_W == last.power_W
    )


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or (
        isinstance(value, torch.Tensor) and value.numel() == 1
    )


def _metric(trainer: pl.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


__all__: Sequence[str] = ["WattCallback", "run_directory"]
