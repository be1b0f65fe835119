"""``WattCallback``: per-step energy in any Lightning run, on one GPU or many nodes.

Thin glue: it maps Lightning's hooks onto a :class:`~lightning_watt.accountant.StageAccountant`
(meter, step clock and ledger of one stage of one process), reduces the numbers across ranks
once per log interval, logs them, and keeps the run's books across stages and checkpoints.

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
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_watt import _lightning_private as private
from lightning_watt.accountant import (
    STATE_VERSION,
    RunBooks,
    RunTotals,
    StageAccountant,
    StageRecord,
)
from lightning_watt.context import pop_energy_provider, push_energy_provider
from lightning_watt.distributed import (
    all_gather_objects,
    barrier,
    ownership_weights,
    sum_across_ranks,
)
from lightning_watt.ledger import GAP
from lightning_watt.meter import EnergyMeter
from lightning_watt.names import DEFAULT_PREFIX, prefix_tag, stage_name, summary_file, trace_stem
from lightning_watt.readings import J_PER_KWH
from lightning_watt.sources import EnergySource, ReplaySource, default_sources
from lightning_watt.step_clock import StepClock
from lightning_watt.summary import build_summary, render_summary
from lightning_watt.trace import bundled_trace, load_trace

if TYPE_CHECKING:  # pragma: no cover
    from lightning_watt.functional import GQIForm

#: Seconds a validation or epoch end waits for the meter's synchronous read.
_MEASURE_TIMEOUT_S = 0.5
#: Seconds a validation end waits for a meter that has not delivered any reading yet.
_FIRST_READING_TIMEOUT_S = 5.0
#: Seconds a checkpoint waits for the energy up to its moment to become final.
_SETTLE_TIMEOUT_S = 0.6


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
        alpha, beta, form: the score's parameters (defaults 5, 10, ``"guarded"``).
        target_accuracy: log ``watt/target_kWh`` when ``score_from`` first reaches it.
        carbon_intensity, region, pue, price_per_kwh, currency: carbon and cost, see
            :class:`lightning_watt.carbon.CarbonModel`.
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
        form: str = "guarded",
        target_accuracy: float | None = None,
        carbon_intensity: float | None = None,
        region: str | None = None,
        pue: float = 1.0,
        price_per_kwh: float | None = None,
        currency: str = "USD",
    ) -> None:
        super().__init__()
        from lightning_watt.functional import validate_score_params

        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool)
            or not isinstance(log_every_n_steps, int)
            or log_every_n_steps < 1
        ):
            raise ValueError(
                f"log_every_n_steps must be a positive integer or None, got {log_every_n_steps!r}"
            )
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty string such as 'watt/', got {prefix!r}")
        if sources is not None and not all(isinstance(s, EnergySource) for s in sources):
            raise ValueError("sources must be a list of EnergySource instances, or None")
        if sources is not None and replay is not None:
            raise ValueError("sources and replay are exclusive: pass one of them")
        replays = [replay] if isinstance(replay, str) else list(replay or [])
        self._replay = [_resolve_trace(r) for r in replays]
        if isinstance(replay_speed, bool) or not (
            isinstance(replay_speed, (int, float)) and replay_speed > 0
        ):
            raise ValueError(f"replay_speed must be a number > 0, got {replay_speed!r}")
        self.form: GQIForm = validate_score_params(alpha=alpha, beta=beta, form=form)
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
        self.target_accuracy = target_accuracy
        self.last_summary: dict[str, Any] | None = None
        self._run = RunBooks()  # the run's energy across stages, all ranks
        self._metrics_by_epoch: dict[int, dict[str, float]] = {}
        self._pending_state: dict[str, Any] | None = None
        self._said_unavailable = False
        # Where a copy of this callback running in other processes (ddp_spawn) leaves its
        # books for this one; made when the callback is first pickled.
        self._handoff: str | None = None
        self._handoff_seen = 0.0
        self._reset_stage()

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

    def _reset_stage(self) -> None:
        self._books: StageAccountant | None = None
        self._stage: str | None = None
        self._stage_id = ""
        self._world_size = 1
        self._rank = 0
        self._run_dir = Path(".")
        self._write_files = True
        self._unavailable: dict[str, str] = {}
        self._epoch = 0
        self._epoch_loop: Any = None
        self._window: int | None = None  # global step when the open optimizer step began
        self._reduced_epochs: dict[int, dict[str, float]] = {}  # all ranks, at epoch ends
        self._warned: set[str] = set()
        self._provider_pushed = False

    @property
    @override
    def state_key(self) -> str:
        # Distinct prefixes make distinct callbacks; the default keeps older checkpoints' key.
        if self.prefix == DEFAULT_PREFIX:
            return type(self).__qualname__
        return self._generate_state_key(prefix=self.prefix)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        """Configuration and the run's books; never the live stage (a thread, CUDA events).
        A copy that runs elsewhere (ddp_spawn's workers) hands its books back through a file
        named here, read by this instance's ``energy_kwh``/``last_summary``."""
        if self._handoff is None:
            self._handoff = os.path.join(
                tempfile.gettempdir(), f"lightning-watt-{uuid.uuid4().hex}.json"
            )
        state = dict(self.__dict__)
        for key in ("_books", "_epoch_loop", "_provider_pushed"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._books = None
        self._epoch_loop = None
        self._provider_pushed = False

    def _adopt_handoff(self) -> None:
        """Take the books a copy of this callback left in another process, if newer."""
        path = self._handoff
        if path is None or self._books is not None:
            return
        try:
            mtime = os.path.getmtime(path)
        except OSError:
            return
        if mtime <= self._handoff_seen:
            return
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return
        self._handoff_seen = mtime
        if data.get("pid") == os.getpid():
            return  # left by this process (this instance, or a deep copy of it): not a handoff
        final = data.get("run_energy_J")
        offset = RunTotals.from_state(data["offset"]) if data.get("offset") else RunTotals()
        self._run = RunBooks(
            offset=offset,
            final_J=final,
            kwh=(final or 0.0) / J_PER_KWH,
            target_kwh=data.get("target_kWh"),
            stage=data.get("stage"),
        )
        self.last_summary = data.get("last_summary")

    def _write_handoff(self) -> None:
        if self._handoff is None or self._rank != 0:
            return
        data = {
            "pid": os.getpid(),
            "run_energy_J": self._run.final_J,
            "offset": self._run.offset.to_state(),
            "target_kWh": self._run.target_kwh,
            "stage": self._run.stage,
            "last_summary": self.last_summary,
        }
        with contextlib.suppress(OSError):
            tmp = self._handoff + ".tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
            os.replace(tmp, self._handoff)

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

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._books is not None:
            self._abort()
        self._reset_stage()
        name = stage_name(stage)
        self._stage = name
        self._stage_id = uuid.uuid4().hex
        self._world_size = trainer.world_size
        self._rank = trainer.global_rank
        # A fit starts a run; a checkpoint it resumes from restores the earlier segments
        # (load_state_dict, called after setup).
        self._run.begin(name)
        if name == "fit":
            self._metrics_by_epoch = {}
        # Lightning suppresses logging and checkpointing in fast_dev_run: so do we for files.
        self._write_files = not getattr(trainer, "fast_dev_run", False)
        self._run_dir = run_directory(trainer)
        tag = prefix_tag(self.prefix)
        record = None
        if self.record and self._write_files:
            stem = trace_stem(name, trainer.global_rank, trainer.world_size, tag)
            record = str(self._run_dir / stem)
        sources, skipped = self._sources_for(trainer)
        meter = EnergyMeter(sources, record=record)
        meter.start()
        self._unavailable = {**skipped, **meter.unavailable}
        if not meter.devices and not self._said_unavailable:
            rank_zero_warn(
                "lightning-watt: nothing to measure on this machine ("
                + "; ".join(f"{k}: {v}" for k, v in self._unavailable.items())
                + "). Training continues; energy is logged as 0."
            )
        root = trainer.strategy.root_device
        clock = StepClock(meter.now, root if root.type == "cuda" else None)
        keys_by_rank = all_gather_objects([d.key for d in meter.devices])
        weights = ownership_weights(keys_by_rank, trainer.global_rank)
        self._books = StageAccountant(
            meter, clock, {d.name: w for d, w in zip(meter.devices, weights, strict=True)}
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

    def _abort(self) -> None:
        """Stop measuring without closing the books (the stage ended by an exception)."""
        self._release()
        if self._books is not None:
            self._books.abort()
            self._books = None

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._books is not None:
            # A stage that ended without its end hook: a Tuner's fit, rolled back.
            self._finish(trainer, tuned=self._stage == "fit")
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

    @property
    def carbon(self) -> Any:
        """The :class:`~lightning_watt.carbon.CarbonModel` in use, or ``None``."""
        return self._carbon

    def measured_energy_kwh(self) -> float:
        """:attr:`energy_kwh` after reading every source now (a few ms, on the meter's thread):
        for moments that decide something, such as an epoch end. In a multi-process run, the
        value of the last reduction, as :attr:`energy_kwh`."""
        if self._books is not None and self._world_size == 1:
            self._books.measure_now(_MEASURE_TIMEOUT_S)
        return self._energy_kwh_provider()

    def _energy_kwh_provider(self) -> float:
        books = self._books
        if books is None:
            self._adopt_handoff()
        elif self._world_size == 1:
            self._run.note(books.energy_j())
        return self._run.kwh

    # ------------------------------------------------------------------ hooks: edges
    def _eval_phase(self, trainer: pl.Trainer) -> str:
        if trainer.sanity_checking:
            return "sanity"
        if trainer.testing:
            return "test"
        return "val"

    def _mark(self, phase: str, edge: str, index: int, epoch: int | None) -> None:
        if self._books is not None:
            self._books.mark(phase, edge, index, epoch)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._books is not None and trainer.current_epoch > 0:
            self._books.clock.reanchor()
        # Resolved once per epoch, not per step: Lightning's properties walk several objects
        # each time, which was most of the hooks' cost.
        self._epoch = trainer.current_epoch
        self._epoch_loop = trainer.fit_loop.epoch_loop
        self._window = None

    def _global_step(self, trainer: pl.Trainer) -> int:
        loop = self._epoch_loop
        return loop.global_step if loop is not None else trainer.global_step

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._books is None or self._window is not None:
            return  # a micro-batch inside an optimizer step already open
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
        books, window = self._books, self._window
        if books is None or window is None or self._global_step(trainer) == window:
            return  # accumulating: the optimizer step is not done yet
        books.mark("train", "end", window, self._epoch)
        self._window = None
        if self._should_log(trainer, window):
            self._log_tick(trainer, pl_module)

    def _close_window(self) -> None:
        """End an optimizer step left open (a loop that stopped mid-accumulation)."""
        if self._books is not None and self._window is not None:
            self._books.mark("train", "end", self._window, self._epoch)
        self._window = None

    def _should_log(self, trainer: pl.Trainer, step: int) -> bool:
        if self.log_every_n_steps is None:
            return private.should_log_now(trainer)
        return (step + 1) % self.log_every_n_steps == 0

    @override
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        phase = self._eval_phase(trainer)
        # The sanity check runs before the loop says which epoch it trains next: its energy
        # goes to that epoch (not, after a resume, to the checkpoint's).
        self._mark(phase, "start", batch_idx, None if phase == "sanity" else trainer.current_epoch)

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
        phase = self._eval_phase(trainer)
        self._mark(phase, "end", batch_idx, None if phase == "sanity" else trainer.current_epoch)

    @override
    def on_test_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._mark("test", "start", batch_idx, trainer.current_epoch)

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
        self._mark("test", "end", batch_idx, trainer.current_epoch)

    @override
    def on_predict_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._mark("predict", "start", batch_idx, trainer.current_epoch)

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
        self._mark("predict", "end", batch_idx, trainer.current_epoch)

    # ------------------------------------------------------------------ hooks: logging
    def _publish(self, trainer: pl.Trainer, values: dict[str, float], save: bool = False) -> None:
        """One row straight to every logger at Lightning's training x-axis, and the values into
        ``callback_metrics`` for monitors (EarlyStopping, ModelCheckpoint), whatever the stage
        (Lightning's ``self.log`` is not allowed in predict, and per key it costs ~0.4 ms)."""
        if "energy_kWh" in values:
            # The logged curve of one run never steps back, across stages too.
            values = {**values, "energy_kWh": self._run.logged(values["energy_kWh"])}
        keyed = {self.prefix + k: float(v) for k, v in values.items()}
        step = private.stepped_batches(trainer)
        # Lightning adds the epoch to every row it logs; rows of ours carry it too.
        row = {**keyed, "epoch": trainer.current_epoch}
        for logger in trainer.loggers:
            logger.log_metrics(row, step=step)
            if save:
                logger.save()
        private.set_callback_metrics(trainer, keyed)

    def _log_tick(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        books = self._books
        assert books is not None
        tick = books.tick()
        has_step = 1.0 if tick.steps else 0.0
        stage_j, power, step_j, ranks_with_steps = sum_across_ranks(
            [tick.energy_J, tick.power_W, 0.0 if tick.steps == 0 else tick.step_J, has_step],
            pl_module.device,
        )
        kwh = self._run.note(stage_j)
        values = {"energy_kWh": kwh, "power_W": power}
        if ranks_with_steps > 0:
            # Ranks step together: the job's energy per step is the sum of the ranks' shares.
            values["step_J"] = step_j * trainer.world_size / ranks_with_steps
        values.update(self._carbon_values(kwh))
        if self.per_device and trainer.is_global_zero:
            values.update({f"power_W/{name}": w for name, w in books.meter.power().items()})
        self._publish(trainer, values)
        if self.progress_bar and trainer.progress_bar_callback is not None:
            private.set_progress_bar_values(
                trainer, {"W": round(power, 1), "kWh": float(f"{kwh:.4g}")}
            )

    def _carbon_values(self, kwh: float) -> dict[str, float]:
        if self._carbon is None:
            return {}
        out = {"co2e_kg": self._carbon.co2e_kg(kwh)}
        cost = self._carbon.cost(kwh)
        if cost is not None:
            out["cost"] = cost
        return out

    def _measured_run_kwh(self, pl_module: pl.LightningModule) -> float:
        """Read every source now, then reduce: the run's kWh resting on measurements."""
        books = self._books
        assert books is not None
        books.measure_now(_MEASURE_TIMEOUT_S)
        if books.meter.devices and math.isinf(books.meter.horizon):
            # No reading at all yet (a meter thread starved by a busy machine): a score on
            # 0 kWh would be +inf, which EarlyStopping takes for "stop". Give it time.
            deadline = time.monotonic() + _FIRST_READING_TIMEOUT_S
            while math.isinf(books.meter.horizon) and time.monotonic() < deadline:
                time.sleep(0.01)
                books.measure_now(_MEASURE_TIMEOUT_S)
        (stage_j,) = sum_across_ranks([books.energy_j()], pl_module.device)
        return self._run.note(stage_j)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        books = self._books
        if books is None:
            return
        self._close_window()
        books.measure_now(_MEASURE_TIMEOUT_S)
        phases = books.epoch_phases(trainer.current_epoch)
        train, val, gap, stage_j = sum_across_ranks(
            [
                phases.get("train", 0.0),
                phases.get("val", 0.0),
                phases.get(GAP, 0.0) + phases.get("sanity", 0.0),
                books.energy_j(),
            ],
            pl_module.device,
        )
        kwh = self._run.note(stage_j)
        self._reduced_epochs[trainer.current_epoch] = {"train": train, "val": val, GAP: gap}
        self._publish(
            trainer,
            {"epoch_train_J": train, "epoch_val_J": val, "epoch_gap_J": gap, "epoch_kWh": kwh},
        )

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
            # Nothing measured (yet): a score would be +inf, which monitors read as "stop".
            self._warn_once(
                "no-energy",
                f"lightning-watt: no energy measured yet, so {self.prefix}gqi is not logged for "
                "this validation (see the summary's 'not measured' lines).",
            )
            return {}
        value = private.unpublished_metric(trainer, key)
        accuracy = float(value.item() if isinstance(value, torch.Tensor) else value)
        from lightning_watt.functional import green_quotient_index

        try:
            score = float(
                green_quotient_index(
                    accuracy, kwh, alpha=self.alpha, beta=self.beta, form=self.form
                )
            )
        except ValueError as err:
            # An accuracy logged in percent, or the paper's form below 1 kWh: say why once,
            # log NaN (so monitors see "no score"), never stop the fit.
            self._warn_once("score", f"lightning-watt: {self.prefix}gqi is NaN: {err}")
            score = math.nan
        values = {"gqi": score}
        reached = self.target_accuracy is not None and accuracy >= self.target_accuracy
        if reached and self._run.target_kwh is None:
            self._run.target_kwh = kwh
        if self._run.target_kwh is not None:
            values["target_kWh"] = self._run.target_kwh
        return values

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._books is None:
            return
        kwh = self._measured_run_kwh(pl_module)
        values = self._score_values(trainer, kwh)
        if self._stage != "fit":
            values = {"energy_kWh": kwh, **values}
        if values:
            self._publish(trainer, values)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._books is None:
            return
        self._publish(trainer, {"energy_kWh": self._measured_run_kwh(pl_module)})

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    # ------------------------------------------------------------------ end of a stage
    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer)
        self._publish_final(trainer)

    def _publish_final(self, trainer: pl.Trainer) -> None:
        """The stage's last row: the run's final energy, the number the summary holds."""
        if self._run.final_J is not None:
            self._publish(trainer, {"energy_kWh": self._run.final_J / J_PER_KWH}, save=True)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._stage == "fit":
            # The module's own metrics of this epoch, for the summary's epoch rows.
            self._metrics_by_epoch[trainer.current_epoch] = {
                k: float(v)
                for k, v in trainer.callback_metrics.items()
                if _scalar(v)
                and k not in ("W", "kWh")
                and not k.startswith((self.prefix + "epoch_", self.prefix + "power_W"))
            }
        if self._stage == "validate":
            self._finish(trainer)
            self._publish_final(trainer)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer)
        self._publish_final(trainer)

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer)
        self._publish_final(trainer)

    def _finish(self, trainer: pl.Trainer, tuned: bool = False, interrupted: bool = False) -> None:
        """Close the stage's books with final energy, merge ranks, write the summary.
        ``interrupted``: an exception ended the stage; ranks may be out of step, so only a
        single process writes what it has."""
        books = self._books
        if books is None:
            return
        self._release()
        self._books = None
        if interrupted and self._world_size > 1:
            books.abort()
            return
        self._close_window_of(books)
        stage = "tune" if tuned else (self._stage or "fit")
        record = books.finish(epoch=trainer.current_epoch, meta={"stage": stage})
        local = _rank_record(record, self._rank, self._unavailable)
        gathered = all_gather_objects(local)
        if interrupted:
            gathered = [local]
        try:
            segment_j = sum(
                d["energy_J"] for r in gathered for d in r["devices"] if d.get("counted", True)
            )
            offset = self._run.offset if self._stage == "fit" else None
            run_j = self._run.end(stage, segment_j)
            summary = build_summary(
                gathered,
                stage=stage,
                offset=offset.to_state() if offset else None,
                carbon=self._carbon,
                score={
                    "monitor": self.score_from,
                    "alpha": self.alpha,
                    "beta": self.beta,
                    "form": self.form,
                    "final": _metric(trainer, self.prefix + "gqi"),
                    "target_accuracy": self.target_accuracy,
                    "target_kWh": self._run.target_kwh,
                },
                replay=[os.path.basename(p) for p in self._replay] or None,
                world_size=trainer.world_size,
                epoch_metrics=self._metrics_by_epoch if stage == "fit" else None,
                run_name=str(getattr(trainer.logger, "name", "") or ""),
                run_energy_J=run_j,
                interrupted=interrupted,
                prefix=self.prefix,
            )
            self.last_summary = summary
            if trainer.is_global_zero:
                self._write_summary(summary)
                self._write_handoff()
        finally:
            # Ranks leave the stage together: a rank that ran ahead to teardown and exit while
            # rank zero still wrote the summary aborted the gloo process group.
            if not interrupted:
                barrier()

    def _close_window_of(self, books: StageAccountant) -> None:
        if self._window is not None:
            books.mark("train", "end", self._window, self._epoch)
            self._window = None

    def _write_summary(self, summary: dict[str, Any]) -> None:
        if not self.summary:
            return
        if self._write_files:
            name = summary_file(summary["stage"], prefix_tag(self.prefix))
            try:
                self._run_dir.mkdir(parents=True, exist_ok=True)
                (self._run_dir / name).write_text(
                    json.dumps(summary, indent=1) + "\n", encoding="utf-8"
                )
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
        every segment, measured (every source is read when the checkpoint is taken). In a
        multi-process run the segment's totals are those of the last reduction (the latest
        epoch end, validation end or log step); energy after the last epoch end is kept as
        ``unattributed``."""
        segment = RunTotals()
        books = self._books
        if books is not None:
            if self._world_size > 1:
                segment_j = self._run.kwh * J_PER_KWH - self._run.before_stage_J
                phases = _sum_dicts(self._reduced_epochs.values())
                phases["unattributed"] = max(0.0, segment_j - sum(phases.values()))
                local = books.ledger
                segment = RunTotals(
                    energy_J=sum(phases.values()),
                    phases_J=phases,
                    steps=dict(local.steps),  # ranks step together
                    epochs={e: dict(ph) for e, ph in self._reduced_epochs.items()},
                    epoch_steps={e: ep.train_steps for e, ep in local.epochs.items()},
                )
            else:
                now = books.meter.now()
                books.settle(now, _SETTLE_TIMEOUT_S)
                segment = books.totals(self._epoch, until=now)
        return {
            "version": STATE_VERSION,
            "stage_id": self._stage_id,
            **self._run.checkpoint(segment).to_state(),
            "target_kWh": self._run.target_kwh,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the run a checkpoint holds. A checkpoint taken earlier in this very stage
        (a Tuner rolling back its trial steps) changes nothing: the stage's books stay."""
        if state_dict.get("version") not in (1, STATE_VERSION):
            rank_zero_warn("lightning-watt: unknown checkpoint state version; starting from 0 J")
            return
        if self._books is None:
            self._pending_state = dict(state_dict)  # applied when the next stage starts
            return
        if state_dict.get("stage_id") == self._stage_id:
            return
        try:
            totals = RunTotals.from_state(state_dict)
        except (KeyError, TypeError, ValueError) as err:
            rank_zero_warn(
                f"lightning-watt: the checkpoint's energy state is unusable ({err}); the run's "
                "energy restarts from 0 J"
            )
            return
        target = state_dict.get("target_kWh")
        self._run.restore(totals, float(target) if isinstance(target, (int, float)) else None)


def _rank_record(record: StageRecord, rank: int, unavailable: dict[str, str]) -> dict[str, Any]:
    """One rank's stage, as :func:`~lightning_watt.summary.build_summary` merges it."""
    totals = record.totals
    return {
        "rank": rank,
        "duration_s": record.duration_s,
        "devices": [{**d, "rank": rank} for d in record.devices],
        "phases_J": dict(totals.phases_J),
        "steps": dict(totals.steps),
        "epochs": {e: dict(ph) for e, ph in totals.epochs.items()},
        "epoch_steps": dict(totals.epoch_steps),
        "gaps": record.gaps,
        "errors": record.errors,
        "unavailable": unavailable,
    }


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


__all__: Sequence[str] = ["WattCallback", "run_directory"]
