"""``EnergyAccountant``: the energy of a training loop, per step, per epoch and per run.

One object per training process. It owns the stage's meter, step edges and ledger
(:class:`~lightning_watt.attribution.books.StageBooks`), the run's cumulative books across stages
and
checkpoints (:class:`~lightning_watt.attribution.books.RunBooks`), and the reductions across ranks
(``torch.distributed`` when it is initialised, as by DDP, FSDP or Fabric; nothing otherwise).
It knows nothing of Lightning: ``WattCallback`` maps Lightning's hooks onto it, and a Fabric or
plain PyTorch loop calls it directly.

Example:
    >>> import time
    >>> from lightning_watt import EnergyMeter, ReplaySource, bundled_trace
    >>> books = EnergyAccountant()
    >>> replay = ReplaySource(bundled_trace("h200-mlp-stall"), start=10.0)
    >>> books.begin("fit", EnergyMeter([replay]))
    >>> for step in range(3):
    ...     books.mark("train", "start", step, epoch=0)
    ...     time.sleep(0.05)  # loss.backward(); optimizer.step()
    ...     books.mark("train", "end", step, epoch=0)
    >>> summary = books.finish()
    >>> summary["steps"]["train"], summary["energy_J"] > 0
    (3, True)
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_watt.attribution.books import (
    STATE_VERSION,
    RunBooks,
    RunTotals,
    StageBooks,
    StageRecord,
    sum_dicts,
)
from lightning_watt.attribution.distributed import (
    all_gather_objects,
    distributed_ready,
    host_group,
    ownership_weights,
    sum_across_ranks,
)
from lightning_watt.attribution.helper_process import (
    ProcessBooks,
    helper_unavailable,
    open_books,
)
from lightning_watt.attribution.ledger import GAP, gap_joules
from lightning_watt.attribution.step_clock import StepClock
from lightning_watt.attribution.summary import (
    MEASURED_IN_HELPER,
    MEASURED_IN_THREADS,
    build_summary,
)
from lightning_watt.energy.meter import EnergyMeter
from lightning_watt.energy.readings import J_PER_KWH, DeviceInfo
from lightning_watt.validate import one_of

#: Seconds an epoch or validation end waits for the meter's synchronous read.
MEASURE_TIMEOUT_S = 0.5
#: Seconds a score waits for a meter that has delivered no reading at all yet: a score on
#: 0 kWh is +inf, which early stopping takes for "stop".
FIRST_READING_TIMEOUT_S = 5.0
#: Seconds a checkpoint waits for the energy up to its moment to become final.
SETTLE_TIMEOUT_S = 0.6

#: Where a stage's meter and books run: ``"process"``, a helper process forked when the stage
#: begins (see :mod:`~lightning_watt.attribution.helper_process`); ``"thread"``, threads of the
#: training process; ``"auto"``, the helper wherever it can run (Linux, host-time step edges,
#: sources declared safe in a forked process), threads elsewhere.
ISOLATIONS = ("auto", "process", "thread")

Reduce = Callable[[Sequence[float], "torch.device | None"], list[float]]
Gather = Callable[[Any], list[Any]]


@dataclass(frozen=True)
class LogValues:
    """One log row's numbers, all ranks: the run's cumulative kWh, the mean power since the
    previous row, and the mean joules per train step booked since (``None``: no step; the
    books are brought up to date every 25-100 ms off the training thread, so a row counts the
    steps that ended up to then)."""

    energy_kWh: float
    power_W: float
    step_J: float | None


@dataclass(frozen=True)
class EpochValues:
    """One train epoch's joules, all ranks: train steps, validation steps, everything else
    (data loading, checkpoints, the sanity check), and the run's kWh at its end."""

    train_J: float
    val_J: float
    gap_J: float
    energy_kWh: float
    #: The estimated part of the stage's energy so far, all ranks (see ``unmeasured_J``).
    unmeasured_kWh: float = 0.0


class EnergyAccountant:
    """The energy books of a training process, reduced across ranks where there are several.

    Args:
        reduce: sums a short list of floats across ranks (default: one ``all_reduce``).
        gather: every rank's object as a list (default: ``all_gather_object``).
        isolation: where a stage's meter and books run, one of :data:`ISOLATIONS` (default
            ``"auto"``: a helper process where it can run, else threads; ``"process"`` warns
            once where it cannot and uses threads).

    The stage's work is cut by :meth:`mark`; :meth:`log_values`, :meth:`epoch_end` and
    :meth:`measured_kwh` are collectives (every rank calls them together), :meth:`mark` and
    :attr:`energy_kwh` are not. :meth:`mark` and :meth:`log_values` cost the calling thread
    microseconds: a stage's books are kept up to date in a helper process (see
    :mod:`~lightning_watt.attribution.helper_process`) or by the meter's thread (see
    :class:`~lightning_watt.attribution.refresher.Refresher`), as ``isolation`` says.
    """

    def __init__(
        self,
        reduce: Reduce = sum_across_ranks,
        gather: Gather = all_gather_objects,
        isolation: str = "auto",
    ):
        self.reduce = reduce
        self.gather = gather
        self.isolation = one_of("isolation", isolation, ISOLATIONS)
        self._said_isolation = False
        self.run = RunBooks()
        self.stage: StageBooks | ProcessBooks | None = None
        self.stage_name: str | None = None
        self.stage_id = ""
        self.world_size = 1
        self.rank = 0
        self._device: torch.device | None = None
        self._local = True  # one process and the default reduction: a sum is the values
        self._reduced_epochs: dict[int, dict[str, float]] = {}
        self._epoch_kwh: tuple[int, float] | None = None  # (epoch, kWh) measured at its end
        # The last row of one process: (tick, run's kWh, run's energy before the stage), values.
        self._last_values: tuple[tuple[Any, float, float], LogValues] | None = None

    # ------------------------------------------------------------------ a stage
    def begin(
        self,
        stage: str,
        meter: EnergyMeter,
        device: torch.device | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        written: Iterable[torch.Tensor] = (),
    ) -> None:
        """Start measuring a stage (``"fit"`` starts a run; see :class:`RunBooks`).
        ``device``: the CUDA device whose stream marks step edges (``None``: host time).
        ``written``: tensors training will write (the model's parameters and buffers); a
        helper process (see :data:`ISOLATIONS`) drops its share of their CPU memory, which it
        would otherwise keep a copy of, page by page, as training writes it."""
        if self.stage is not None:
            self.abort()
        self._device = device
        self.rank, self.world_size = rank, world_size
        cuda = device if device is not None and device.type == "cuda" else None
        self._local = (
            world_size == 1 and self.reduce is sum_across_ranks and not distributed_ready()
        )
        if self.reduce is sum_across_ranks:
            # Under NCCL its gloo group is made here, by every rank together, not in a log row.
            host_group(device)

        def weights_of(devices: list[DeviceInfo]) -> dict[str, float]:
            # Every rank's device keys (a collective): a device shared by ranks counts once.
            weights = ownership_weights(self.gather([d.key for d in devices]), rank)
            return {d.name: w for d, w in zip(devices, weights, strict=True)}

        books: StageBooks | ProcessBooks | None = self._open_helper(
            meter, cuda, weights_of, written
        )
        if books is None:
            if not meter.running:
                meter.start()
            books = StageBooks(meter, StepClock(meter.now, cuda), weights_of(meter.devices))
        self.stage = books
        self.stage_name = stage
        self.stage_id = uuid.uuid4().hex
        self._reduced_epochs = {}
        self._epoch_kwh = None
        self.run.begin(stage)

    def _open_helper(
        self,
        meter: EnergyMeter,
        cuda: torch.device | None,
        weights_of: Callable[[list[DeviceInfo]], dict[str, float]],
        written: Iterable[torch.Tensor] = (),
    ) -> ProcessBooks | None:
        """The stage's books in a helper process, or ``None`` for threads (see
        :data:`ISOLATIONS`). A helper that cannot start (no memory to fork) leaves the stage
        to threads, as where it cannot run (warned about once with ``isolation="process"``);
        the meter's own start errors are raised as on a thread."""
        if self.isolation == "thread":
            return None
        host_time = cuda is None or not torch.cuda.is_available()
        why = helper_unavailable(meter, host_time)
        if why is None:
            try:
                return open_books(meter, weights_of, _cpu_storages(written))
            except (OSError, ImportError) as err:  # no memory to fork, no sem_open
                why = f"the helper process could not start ({err})"
        if self.isolation == "process" and not self._said_isolation:
            self._said_isolation = True
            warnings.warn(
                f"lightning-watt: isolation='process' is not possible here ({why}); the meter "
                "and the books run on threads of the training process.",
                RuntimeWarning,
                stacklevel=4,
            )
        return None

    def mark(self, phase: str, edge: str, index: int, epoch: int | None) -> None:
        """A step edge, now: ``phase`` (``train``, ``val``, ...), ``edge`` (``start``/``end``).
        Cheap (a CUDA event or the host clock): call it in every step."""
        if self.stage is not None:
            self.stage.mark(phase, edge, index, epoch)

    def new_epoch(self) -> None:
        """Pin the GPU's timeline to the meter clock again (one synchronisation)."""
        if self.stage is not None:
            self.stage.clock.reanchor()

    def abort(self) -> None:
        """Stop measuring without closing the books (an exception ended the stage)."""
        if self.stage is not None:
            self.stage.abort()
            self.stage = None

    # ------------------------------------------------------------------ the run's energy
    @property
    def energy_kwh(self) -> float:
        """The run's cumulative kWh, all ranks: fresh in one process, as of the last reduction
        in several, final once a stage has ended."""
        if self.stage is not None and self.world_size == 1:
            self.run.note(self.stage.energy_j())
        return self.run.kwh

    def _sum(self, values: Sequence[float]) -> list[float]:
        return self.reduce(values, self._device)

    def measured_kwh(self, first_reading: bool = True, epoch_end: int | None = None) -> float:
        """Read every source now, then reduce: the run's kWh resting on measurements. With
        ``first_reading``, wait for a meter that has not delivered any reading yet. With
        ``epoch_end``, the value every caller at that train epoch's end gets (the first one
        measures), so a forecast and the logged ``epoch_kWh`` agree."""
        marked = self._epoch_kwh
        if epoch_end is not None and marked is not None and marked[0] == epoch_end:
            return marked[1]
        kwh = self._measure(first_reading)
        if epoch_end is not None:
            self._epoch_kwh = (epoch_end, kwh)
        return kwh

    def _measure(self, first_reading: bool) -> float:
        stage = self.stage
        assert stage is not None, "measured_kwh: no stage begun"
        stage.measure_now(MEASURE_TIMEOUT_S)
        meter = stage.meter
        if first_reading and meter.devices and math.isinf(meter.horizon):
            deadline = time.monotonic() + FIRST_READING_TIMEOUT_S
            while math.isinf(meter.horizon) and time.monotonic() < deadline:
                time.sleep(0.01)
                stage.measure_now(MEASURE_TIMEOUT_S)
        (stage_j,) = self._sum([stage.energy_j()])
        return self.run.note(stage_j)

    @property
    def rows_outpace_refreshes(self) -> bool:
        """Whether this process's log rows come faster than its books are refreshed (then most
        rows repeat the one before; see ``books.BUSY_INTERVAL_S``)."""
        stage = self.stage
        return stage is not None and stage.busy

    def repeated_values(self) -> LogValues | None:
        """The last :meth:`log_values` again, when a row now would carry the same numbers
        while rows outpace the books' refreshes (counted as a row, as :meth:`log_values`
        would); ``None``: ask :meth:`log_values`. One process only: several must reduce in
        every row. A quick path for ``log_every_n_steps=1``, where most rows repeat."""
        last = self._last_values
        stage = self.stage
        if last is None or stage is None or not self._local:
            return None
        (tick, kwh, before), values = last
        run = self.run
        if kwh != run.kwh or before != run.before_stage_J or not stage.repeat_tick(tick):
            return None
        return values

    def log_values(self) -> LogValues:
        """The numbers of a log row (a collective)."""
        stage = self.stage
        assert stage is not None, "log_values: no stage begun"
        tick = stage.tick()
        if self._local:  # called at every step at log_every_n_steps=1: no reduction to make
            run = self.run
            key = (tick, run.kwh, run.before_stage_J)
            last = self._last_values
            if last is not None and last[0][0] is tick and last[0][1:] == key[1:]:
                return last[1]  # the same tick on the same run's books: the same row
            step = float(tick.step_J) if tick.steps else None
            values = LogValues(run.note(float(tick.energy_J)), float(tick.power_W), step)
            self._last_values = (key, values)
            return values
        stage_j, power, step_j, ranks_with_steps = self._sum(
            [tick.energy_J, tick.power_W, tick.step_J if tick.steps else 0.0, float(tick.steps > 0)]
        )
        # Ranks step together: the job's energy per step is the sum of the ranks' shares.
        per_step = step_j * self.world_size / ranks_with_steps if ranks_with_steps else None
        return LogValues(self.run.note(stage_j), power, per_step)

    def epoch_end(self, epoch: int) -> EpochValues:
        """Joules of a train epoch by phase, measured (every source is read first)."""
        stage = self.stage
        assert stage is not None, "epoch_end: no stage begun"
        stage.measure_now(MEASURE_TIMEOUT_S)
        phases = stage.epoch_phases(epoch)
        train, val, gap, stage_j, unmeasured_j = self._sum(
            [
                phases.get("train", 0.0),
                phases.get("val", 0.0),
                gap_joules(phases),
                stage.energy_j(),
                stage.unmeasured_j(),
            ]
        )
        self._reduced_epochs[epoch] = {"train": train, "val": val, GAP: gap}
        kwh = self.run.note(stage_j)
        if self._epoch_kwh is not None and self._epoch_kwh[0] == epoch:
            kwh = self._epoch_kwh[1]  # what an earlier caller at this epoch end was told
        self._epoch_kwh = (epoch, kwh)
        return EpochValues(train, val, gap, kwh, unmeasured_j / J_PER_KWH)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, epoch: int) -> dict[str, Any]:
        """The run's books up to now, all ranks, for a checkpoint. In one process every source
        is read until the energy up to now is final (at most ``SETTLE_TIMEOUT_S``). In several,
        the stage's totals are those of the last reduction (no collective here: a checkpoint
        may be saved on one rank); energy after the last epoch end is ``unattributed``."""
        segment = RunTotals()
        stage = self.stage
        if stage is not None and self.world_size > 1:
            segment_j = self.run.kwh * J_PER_KWH - self.run.before_stage_J
            phases = sum_dicts(self._reduced_epochs.values())
            phases["unattributed"] = max(0.0, segment_j - sum(phases.values()))
            steps, epoch_steps = stage.step_counts()  # ranks step together
            segment = RunTotals(
                energy_J=sum(phases.values()),
                phases_J=phases,
                steps=steps,
                epochs={e: dict(ph) for e, ph in self._reduced_epochs.items()},
                epoch_steps=epoch_steps,
            )
        elif stage is not None:
            now = stage.meter.now()
            stage.settle(now, SETTLE_TIMEOUT_S)
            segment = stage.totals(epoch, until=now)
        return {
            "version": STATE_VERSION,
            "stage_id": self.stage_id,
            **self.run.checkpoint(segment).to_state(),
            "target_kWh": self.run.target_kwh,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> str | None:
        """Continue the run a checkpoint holds, after :meth:`begin`. A checkpoint taken
        earlier in this very stage (a tuner rolling back its trial steps) changes nothing.
        Returns why the state was not used, or ``None``."""
        if state.get("version") not in (1, STATE_VERSION):
            return f"unknown state version {state.get('version')!r}"
        if self.stage is not None and state.get("stage_id") == self.stage_id:
            return None
        try:
            totals = RunTotals.from_state(state)
        except (KeyError, TypeError, ValueError) as err:
            return f"unusable energy state ({err})"
        target = state.get("target_kWh")
        self.run.restore(totals, float(target) if isinstance(target, (int, float)) else None)
        return None

    # ------------------------------------------------------------------ the end
    def finish(
        self,
        stage: str | None = None,
        epoch: int = 0,
        *,
        interrupted: bool = False,
        unavailable: Mapping[str, str] | None = None,
        **summary: Any,
    ) -> dict[str, Any]:
        """Close the stage's books with final energy and merge every rank's: the summary
        (see :func:`~lightning_watt.attribution.summary.build_summary`, which takes ``summary``'s
        extra
        fields). ``stage`` names it (default: the stage begun; ``"tune"`` keeps it out of the
        run). ``interrupted``: ranks may be out of step, so nothing is gathered."""
        books = self.stage
        assert books is not None, "finish: no stage begun"
        self.stage = None
        label = stage or self.stage_name or "fit"
        alone = interrupted or self.world_size == 1
        local, error = self._close(books, epoch, label, dict(unavailable or {}), alone)
        # A rank whose books failed still joins the gather, with nothing: the other ranks wait
        # in it, and a rank that skipped it would leave them there (a deadlock).
        sent = [local] if interrupted else self.gather(local)
        gathered: list[dict[str, Any]] = [g for g in sent if g is not None]
        if not gathered:
            assert error is not None
            raise error
        offset = self.run.offset if self.stage_name == "fit" else None
        merged = build_summary(
            gathered,
            stage=label,
            offset=offset.to_state() if offset else None,
            world_size=self.world_size,
            interrupted=interrupted,
            **summary,
        )
        merged["run_energy_J"] = self.run.end(label, merged["segment_energy_J"])
        return merged

    def _close(
        self,
        books: StageBooks | ProcessBooks,
        epoch: int,
        label: str,
        unavailable: dict[str, str],
        alone: bool,
    ) -> tuple[dict[str, Any] | None, Exception | None]:
        """This rank's closed books; with other ranks to gather with (not ``alone``), a failure
        to close them is warned about and returned instead of raised (see :meth:`finish`)."""
        try:
            record = books.finish(epoch=epoch, meta={"stage": label})
            where = MEASURED_IN_HELPER if isinstance(books, ProcessBooks) else MEASURED_IN_THREADS
            return _rank_record(record, self.rank, unavailable, where), None
        except Exception as err:
            if alone:
                raise
            # Its meter and refresher threads must not outlive the stage; the warning below
            # says what failed.
            with contextlib.suppress(Exception):
                books.abort()
            warnings.warn(
                f"lightning-watt: rank {self.rank} could not close its energy books ({err!r}); "
                "its devices are left out of the stage's summary.",
                RuntimeWarning,
                stacklevel=3,
            )
            return None, err


def _cpu_storages(tensors: Iterable[torch.Tensor]) -> list[tuple[int, int]]:
    """``(address, bytes)`` of each distinct CPU storage behind ``tensors``."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
            continue
        try:
            storage = tensor.untyped_storage()
            address, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # meta, sparse, or a tensor subclass
            continue
        if address and size:
            seen[address] = max(seen.get(address, 0), size)
    return list(seen.items())


def _rank_record(
    record: StageRecord,
    rank: int,
    unavailable: dict[str, str],
    measured_in: str = MEASURED_IN_THREADS,
) -> dict[str, Any]:
    """One rank's stage, as :func:`~lightning_watt.attribution.summary.build_summary` merges it.
    ``measured_in``: where its meter and books ran (:data:`MEASURED_IN_HELPER` or
    :data:`MEASURED_IN_THREADS`)."""
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
        "measured_in": measured_in,
    }


__all__ = ["EnergyAccountant", "EpochValues", "LogValues"]
