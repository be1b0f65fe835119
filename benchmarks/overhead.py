"""Overhead of ``WattCallback`` on training throughput, in its batch hooks and in a log tick.

One process, one run, because machines are noisy. The same ``Trainer.fit`` runs in these
arms, interleaved ``arm 1, arm 2, ..., arm 1, arm 2, ...`` so that drifts of the machine hit
every arm alike:

* at the Trainer's default ``log_every_n_steps=50``: no energy callback (``off``), a callback
  that does nothing (``null``: what Lightning's dispatch of any callback costs, and the noise
  floor), ``WattCallback`` replaying ``h200-mlp-stall`` with the defaults the README names
  (``record=True``, ``summary=True``; ``on``) and the same with ``record=False``;
* the same ``off`` / ``on`` / ``on, no record`` at ``log_every_n_steps=10`` and ``1`` (the
  Trainer's and the callback's cadence both).

The replayed source makes the meter thread really poll channels and feed the timeline while
the model trains, and with ``record=True`` the trace (samples and step edges) is written. It
serves what a live NVML source reads from an H200 (the energy counter and the driver's power
buffer: ``ReplaySource.of_fit(..., kinds=LIVE_NVML_KINDS)``), not the power fields the recording
also holds at 10 ms, which NVML reads only as the buffer's fallback (serving them too costs the
meter thread ~2-3 ms of CPU a second more, a quarter of its time; ``--all-kinds`` does).

The model is an MLP whose batch is calibrated so a train step (Lightning's loop included) takes
about ``--step-ms`` (1.5 ms) on this CPU; the actual step time is measured and printed.

Reported, per arm against ``off`` at the same cadence:

* steps/s of the timed part of each fit (after ``--skip`` warm steps): the median over
  repetitions of the per-repetition ratio ``on/off`` (paired, as the arms ran next to each
  other), with the lowest and highest ratio, and best-of (the fastest ``on`` fit over the
  fastest ``off`` fit: other tenants of a shared machine only ever slow a fit down); the ``off``
  runs' own spread and the ``null`` arm say what this machine resolves at all;
* the CPU time per step of the whole process (all threads: the meter's and the books'
  included), which resists other tenants' load better than wall time;
* a log tick on the training thread (``perf_counter`` around ``_log_tick``, every tick of
  ``--timed-repeats`` further fits of each ``on`` arm, after the interleaved repetitions; the
  throughput arms run ``WattCallback`` itself, as users run it, because the timing wrappers
  cost the training thread ~11 µs a step at ``log_every_n_steps=1``): p50 / p99 / max, split
  into the books' part (``log_values``: the cached numbers and the all-rank reduction) and the
  loggers' (``_deliver``: Lightning's ``log_metrics``, ``callback_metrics``), against the
  targets p50 <= 100 µs, p99 <= 1 ms;
* the training thread's CPU time in a tick (``time.thread_time``): where the wall time's p99
  is far above it, the tick waited (for the GIL, or for a core of a loaded machine);
* the batch hooks of a step without a tick (start + end), p50 / p99;
* the books' refreshes (resolving edges, booking them, recording them, the live provisional
  numbers; on the meter's thread between its reads, or on the refresher's own while the
  meter's is stuck): how long a refresh takes (p50 / p99, wall time, GIL waits included) and
  their CPU time as a share of one core, next to the rest of the background threads'.

On a machine with CUDA, the arms at ``log_every_n_steps`` 50 and 1 are run a second time on the
GPU at about ``--gpu-step-ms`` (10 ms) per step with the default sources (NVML for the GPU,
RAPL or an estimate for the CPU) instead of a replay.

Usage::

    python benchmarks/overhead.py                 # 6 repetitions of 1500 steps per arm
    python benchmarks/overhead.py --repeats 10    # more repetitions, tighter ratios
    python benchmarks/overhead.py --cadences 1    # only the arms at log_every_n_steps=1
    python benchmarks/overhead.py --logger tensorboard  # a Trainer's default logger, not CSV
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))  # run from a checkout

import lightning
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_watt.integration.callback import WattCallback
from lightning_watt.sources.replay import LIVE_NVML_KINDS, ReplaySource

TARGET_RATIO = {1: 0.97}  # steps/s with the callback over without, per log_every_n_steps
TARGET_TICK_P50_US = 100.0
TARGET_TICK_P99_US = 1000.0
WIDTH = {"cpu": 256, "cuda": 2048}
DEPTH = {"cpu": 2, "cuda": 4}
TRACE = "h200-mlp-stall"


@dataclass(frozen=True)
class Arm:
    """One configuration: ``kind`` is ``off``, ``null`` or ``on``; ``every`` is the Trainer's
    (and the callback's) ``log_every_n_steps``."""

    kind: str
    every: int
    record: bool = True
    isolation: str = "auto"  # WattCallback(isolation=...): "thread" keeps the meter in-process

    @property
    def name(self) -> str:
        label = self.kind if self.record or self.kind != "on" else "on, no record"
        if self.isolation == "thread":
            label += ", threads"
        return f"{label} @{self.every}"


ARMS = (
    Arm("off", 50),
    Arm("null", 50),
    Arm("on", 50),
    Arm("on", 50, record=False),
    Arm("on", 50, isolation="thread"),
    Arm("off", 10),
    Arm("on", 10),
    Arm("on", 10, record=False),
    Arm("off", 1),
    Arm("null", 1),
    Arm("on", 1),
    Arm("on", 1, record=False),
    Arm("on", 1, isolation="thread"),
)


# ---------------------------------------------------------------------------- the workload
class _SameBatch(Dataset):
    """``n`` times the same ready-made batch (no collation: the step is the model's)."""

    def __init__(self, width: int, batch: int, n: int, device: torch.device) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, width, generator=g).to(device)
        self.y = torch.randint(0, 10, (batch,), generator=g).to(device)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


class _MLP(pl.LightningModule):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class _LoopTimer(Callback):
    """Times the train loop from the start of step ``skip`` to the end of training (wall and
    process CPU time)."""

    def __init__(self, skip: int, cuda: bool) -> None:
        self.skip, self.cuda = skip, cuda
        self.t0 = self.t1 = self.cpu0 = self.cpu1 = math.nan
        self.step0 = self.steps = 0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.skip and math.isnan(self.t0):
            self.t0, self.step0 = self._now(), trainer.global_step
            self.cpu0 = time.process_time()

    def on_train_end(self, trainer, pl_module) -> None:
        self.t1 = self._now()
        self.cpu1 = time.process_time()
        self.steps = trainer.global_step - self.step0

    @property
    def step_s(self) -> float:
        return (self.t1 - self.t0) / self.steps

    @property
    def cpu_step_s(self) -> float:
        return (self.cpu1 - self.cpu0) / self.steps


class _Null(Callback):
    """A callback that does nothing: what Lightning's dispatch of any callback costs."""


class _RowOnly(Callback):
    """Logs a fixed row of three numbers (our keys' shape, no energy) at each train step, as
    ``WattCallback`` does at ``log_every_n_steps=1``: what the loggers charge for a row."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        row = {"row/energy_kWh": 1e-5, "row/power_W": 300.0, "epoch": trainer.current_epoch}
        for logger in trainer.loggers:
            logger.log_metrics(row, step=trainer.global_step)


# ---------------------------------------------------------------------------- instrumentation
def _schedstat_s(task: str) -> float:
    """CPU seconds of one thread, ``/proc/<pid>/task/<tid>`` (Linux: schedstat in ns), else
    NaN."""
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open(f"{task}/schedstat") as fh,
    ):
        return int(fh.read().split()[0]) / 1e9
    return math.nan


def _thread_cpu_s(native_id: int | None) -> float:
    """CPU seconds of one thread of this process, else NaN."""
    return _schedstat_s(f"/proc/self/task/{native_id}")


def _process_cpu_s(pid: int | None) -> float:
    """CPU seconds of every thread of another process (the meter's helper), else NaN."""
    if pid is None:
        return math.nan
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return math.nan
    return sum(_schedstat_s(f"/proc/{pid}/task/{task}") for task in tasks)


def _private_bytes(pid: int | None) -> float:
    """Private (unshared) memory of another process, bytes (Linux ``smaps_rollup``), or NaN."""
    if pid is None:
        return math.nan
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return math.nan
    return float(total)


def _replay(all_kinds: bool) -> ReplaySource:
    """The replayed H200, as ``WattCallback(replay=TRACE)`` makes it; with the kinds a live NVML
    source reads unless ``all_kinds``."""
    return ReplaySource.of_fit(
        TRACE, uuid_prefix="rank0", kinds=None if all_kinds else LIVE_NVML_KINDS
    )


class TimedWattCallback(WattCallback):
    """``WattCallback`` with ``perf_counter`` around its train batch hooks, its log tick and
    the tick's two parts (two clock reads per hook: ~0.1 µs), and its refresher timed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plain: list[float] = []  # start + end hooks of steps without a tick
        # per tick: whole tick, log_values, _deliver, the loggers' own log_metrics (and save),
        # the training thread's CPU time in the tick
        self.ticks: list[tuple[float, float, float, float, float]] = []
        self.refreshes: list[float] = []
        # per refresh: its CPU seconds, and the thread that made it (the meter's, or the
        # refresher's own while the meter's thread was stuck)
        self.refresh_cpu: list[tuple[float, str]] = []
        self.refresher_cpu_s = self.meter_cpu_s = self.train_wall_s = math.nan
        #: CPU seconds of the meter's helper process during training (NaN: threads).
        self.helper_cpu_s = math.nan
        #: The helper's private memory at the end of training, bytes (NaN: threads): pages
        #: the training process wrote after the fork, whose old copies the helper keeps.
        self.helper_private_b = math.nan
        #: Wall seconds of the stage's setup (the meter started: forked, or a thread).
        self.setup_s = math.nan
        self._start_dt = math.nan
        self._parts = [0.0, 0.0, 0.0]
        self._cpu0 = (0.0, 0.0, 0.0, 0.0)

    def setup(self, trainer, pl_module, stage) -> None:
        t0 = perf_counter()
        super().setup(trainer, pl_module, stage)
        self.setup_s = perf_counter() - t0
        books = self._books.stage
        assert books is not None
        refresher = getattr(books, "_refresher", None)  # None: a version without one
        if refresher is not None:
            refresh = getattr(books, "_refresh_in_background", books.refresh)
            times, cpu = self.refreshes, self.refresh_cpu

            def timed_refresh() -> Any:
                t0, c0 = perf_counter(), time.thread_time()
                out = refresh()
                times.append(perf_counter() - t0)
                cpu.append((time.thread_time() - c0, threading.current_thread().name))
                return out

            refresher._work = timed_refresh
        log_values = self._books.log_values

        def timed_log_values() -> Any:
            t0 = perf_counter()
            out = log_values()
            self._parts[0] = perf_counter() - t0
            return out

        self._books.log_values = timed_log_values  # type: ignore[method-assign]
        for logger in trainer.loggers:
            self._time_logger(logger)

    def _time_logger(self, logger: Any) -> None:
        log_metrics = logger.log_metrics

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = perf_counter()
            try:
                return log_metrics(*args, **kwargs)
            finally:
                self._parts[2] += perf_counter() - t0

        logger.log_metrics = timed

    def _refresher_thread(self) -> int | None:
        refresher = getattr(self._books.stage, "_refresher", None)
        thread = refresher._thread if refresher is not None else None
        return thread.native_id if thread is not None else None

    def _meter_thread(self) -> int | None:
        stage = self._books.stage
        thread = getattr(getattr(stage, "meter", None), "_thread", None)
        return thread.native_id if thread is not None else None

    def _helper(self) -> int | None:
        return getattr(self._books.stage, "_pid", None)

    def on_train_start(self, trainer, pl_module) -> None:
        self._cpu0 = (
            _thread_cpu_s(self._refresher_thread()),
            _thread_cpu_s(self._meter_thread()),
            perf_counter(),
            _process_cpu_s(self._helper()),
        )

    def on_train_end(self, trainer, pl_module) -> None:
        self.refresher_cpu_s = _thread_cpu_s(self._refresher_thread()) - self._cpu0[0]
        self.meter_cpu_s = _thread_cpu_s(self._meter_thread()) - self._cpu0[1]
        self.helper_cpu_s = _process_cpu_s(self._helper()) - self._cpu0[3]
        self.helper_private_b = _private_bytes(self._helper())
        self.train_wall_s = perf_counter() - self._cpu0[2]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        t0 = perf_counter()
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._start_dt = perf_counter() - t0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = len(self.ticks)
        t0 = perf_counter()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if len(self.ticks) == n:
            self.plain.append(self._start_dt + perf_counter() - t0)

    def _log_tick(self, trainer) -> None:
        self._parts = [0.0, 0.0, 0.0]  # a tick that logs no row delivers nothing
        c0 = time.thread_time()
        t0 = perf_counter()
        super()._log_tick(trainer)
        t1 = perf_counter()
        self.ticks.append((t1 - t0, *self._parts, time.thread_time() - c0))

    def _deliver(self, trainer, keyed, step, epoch, save) -> None:
        t0 = perf_counter()
        super()._deliver(trainer, keyed, step, epoch, save)
        self._parts[1] = perf_counter() - t0


# ---------------------------------------------------------------------------- one fit
@dataclass
class Fit:
    arm: Arm
    step_s: float
    cpu_step_s: float
    #: The arm's ``TimedWattCallback`` in a timed fit (its ticks' numbers), else ``None``.
    cb: TimedWattCallback | None = None


@dataclass
class Variant:
    name: str
    device: torch.device
    width: int
    depth: int
    arms: tuple[Arm, ...]
    make_on: Callable[[Arm, bool], WattCallback]  # (arm, timed): timed -> TimedWattCallback
    batch: int = 0
    fits: list[Fit] = field(default_factory=list)
    logger: str = "csv"  # every arm's Trainer logs to one of LOGGERS

    def make_logger(self, root: str) -> Logger:
        return LOGGERS[self.logger](root, name="run")


#: The loggers a run can use: CSV (cheap, the default here) or TensorBoard (what a Trainer
#: picks by default where tensorboard is installed, as lightning-watt installs it).
LOGGERS: dict[str, Callable[..., Logger]] = {"csv": CSVLogger, "tensorboard": TensorBoardLogger}


def _fit(variant: Variant, batch: int, steps: int, skip: int, arm: Arm, timed: bool = False) -> Fit:
    """One fit of ``arm``; ``timed``: with ``TimedWattCallback`` (an ``on`` arm's ticks
    timed; its throughput is not the callback's, the wrappers cost a few µs a step)."""
    cuda = variant.device.type == "cuda"
    timer = _LoopTimer(skip, cuda)
    callbacks: list[Callback] = [timer]
    cb: WattCallback | None = None
    if arm.kind == "on":
        cb = variant.make_on(arm, timed)
        callbacks.append(cb)
    elif arm.kind == "null":
        callbacks.append(_Null())
    train_mlp(variant, batch, steps, arm.every, callbacks)
    return Fit(
        arm, timer.step_s, timer.cpu_step_s, cb if isinstance(cb, TimedWattCallback) else None
    )


def train_mlp(
    variant: Variant, batch: int, steps: int, every: int, callbacks: list[Callback]
) -> None:
    """One ``Trainer.fit`` of the benchmark's MLP for ``steps`` steps of ``batch``, logging
    every ``every`` steps, with ``callbacks``; its logs go to a temporary folder."""
    cuda = variant.device.type == "cuda"
    torch.manual_seed(0)
    model = _MLP(variant.width, variant.depth)
    data = DataLoader(_SameBatch(variant.width, batch, steps + 1, variant.device), batch_size=None)
    with tempfile.TemporaryDirectory(prefix="watt-overhead-") as tmp:
        trainer = pl.Trainer(
            accelerator="gpu" if cuda else "cpu",
            devices=[variant.device.index or 0] if cuda else 1,
            max_steps=steps,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            log_every_n_steps=every,
            logger=variant.make_logger(tmp),
            default_root_dir=tmp,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=callbacks,
        )
        gc.collect()
        trainer.fit(model, data)


def _calibrate(variant: Variant, target_s: float, skip: int) -> int:
    """Batch size for a step of about ``target_s``: step time is affine in the batch."""
    small, large = (16, 256) if variant.device.type == "cpu" else (256, 2048)
    n = 150 if variant.device.type == "cpu" else 40
    off = Arm("off", 50)
    _fit(variant, small, skip + n, skip, off)  # warm-up (allocator, kernels, imports)

    def step_s(batch: int) -> float:
        return min(_fit(variant, batch, skip + n, skip, off).step_s for _ in range(3))

    t_small, t_large = step_s(small), step_s(large)
    slope = max((t_large - t_small) / (large - small), 1e-12)
    batch = round(small + (target_s - t_small) / slope)
    if batch < 1:
        print(
            f"  note: Lightning's loop alone takes {1e3 * t_small:.2f} ms a step here (batch "
            f"{small}), more than the {1e3 * target_s:.1f} ms asked: batch 1"
        )
    return max(1, min(batch, 1 << 16))


# ---------------------------------------------------------------------------- reporting
def _pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _ok(good: bool) -> str:
    return "ok" if good else "MISSED"


def _report_throughput(variant: Variant) -> None:
    by_arm = {
        arm: [f for f in variant.fits if f.arm == arm and f.cb is None] for arm in variant.arms
    }
    print(
        f"  {'arm':18} {'steps/s':>8} {'vs off: paired median [min, max], best-of':>46}"
        f" {'CPU/step':>9} {'vs off':>8}"
    )
    for arm in variant.arms:
        fits = by_arm[arm]
        off = by_arm[Arm("off", arm.every)]
        rate = statistics.median(1 / f.step_s for f in fits)
        cpu = statistics.median(f.cpu_step_s for f in fits)
        if arm.kind == "off":
            spread = (max(1 / f.step_s for f in fits) - min(1 / f.step_s for f in fits)) / rate
            print(
                f"  {arm.name:18} {rate:8.1f} {'(off runs span ' + f'{100 * spread:.1f} %)':>46}"
                f" {1e3 * cpu:6.3f} ms"
            )
            continue
        ratios = [o.step_s / f.step_s for o, f in zip(off, fits, strict=True)]
        best = min(o.step_s for o in off) / min(f.step_s for f in fits)
        d_cpu = statistics.median(
            f.cpu_step_s - o.cpu_step_s for o, f in zip(off, fits, strict=True)
        )
        target = TARGET_RATIO.get(arm.every) if arm.kind == "on" and arm.record else None
        verdict = ""
        if target is not None:
            verdict = f"   target >= {target:.2f}x: {_ok(statistics.median(ratios) >= target)}"
        print(
            f"  {arm.name:18} {rate:8.1f} {statistics.median(ratios):13.3f}x "
            f"[{min(ratios):.3f}, {max(ratios):.3f}] best {best:.3f}x {1e3 * cpu:6.3f} ms "
            f"{1e6 * d_cpu:+6.1f} µs{verdict}"
        )
    off = by_arm[next(a for a in variant.arms if a.kind == "off")]
    print(
        f"  a step takes {1e3 * statistics.median(f.step_s for f in off):.2f} ms without the "
        "callback; 'null' and the off runs' span are the noise: ratios within them are not "
        "resolved by this run"
    )


def _report_ticks(variant: Variant) -> None:
    us = 1e6
    print(
        "  on the training thread (µs, all repetitions): a tick is log_values (books: cached "
        "numbers, reduction) + _deliver (rows to the loggers, callback_metrics); "
        "'ours' is the tick less the loggers' own log_metrics (which the CSV logger's flush of "
        "every buffered row, each 100th step, falls in); 'CPU' is the training thread's CPU "
        "time in the whole tick: wall time above it is waiting (for the GIL, or descheduled); "
        "'rows': ticks that logged a row (while rows outpace the books' refreshes, one that "
        "would repeat the last is not logged)"
    )
    print(
        f"  {'arm':18} {'ticks':>6} {'rows':>6} {'tick p50':>9} {'p99':>7} {'max':>7}"
        f" {'books p50':>10}"
        f" {'deliver p50':>12} {'log_metrics p50/p99':>20} {'ours p50/p99':>14}"
        f" {'CPU p50/p99':>13}"
        f" {'plain step hooks p50/p99':>25}"
    )
    for arm in variant.arms:
        timed = [f.cb for f in variant.fits if f.arm == arm and f.cb is not None]
        if not timed:
            continue
        ticks = [t for cb in timed for t in cb.ticks]
        whole = [t[0] for t in ticks]
        loggers = [t[3] for t in ticks]
        ours = [t[0] - t[3] for t in ticks]
        cpu = [t[4] for t in ticks]
        plain = [p for cb in timed for p in cb.plain]
        verdict = _ok(
            _pct(ours, 50) * us <= TARGET_TICK_P50_US and _pct(ours, 99) * us <= TARGET_TICK_P99_US
        )
        books = us * _pct([t[1] for t in ticks], 50)
        publish = us * _pct([t[2] for t in ticks], 50)
        print(
            f"  {arm.name:18} {len(ticks):6} {sum(t[2] > 0 for t in ticks):6} "
            f"{us * _pct(whole, 50):9.1f} "
            f"{us * _pct(whole, 99):7.0f} {us * max(whole, default=math.nan):7.0f} "
            f"{books:10.1f} {publish:12.1f} "
            f"{us * _pct(loggers, 50):11.1f} / {us * _pct(loggers, 99):6.0f} "
            f"{us * _pct(ours, 50):6.1f} / {us * _pct(ours, 99):5.0f} "
            f"{us * _pct(cpu, 50):5.0f} / {us * _pct(cpu, 99):5.0f} "
            f"{us * _pct(plain, 50):14.1f} / {us * _pct(plain, 99):6.1f}   {verdict}"
        )
    timed = [f.cb for f in variant.fits if f.cb is not None]
    refreshes = [r for cb in timed for r in cb.refreshes]

    def share(cpu_s: Callable[[TimedWattCallback], float]) -> str:
        cpu = [cpu_s(cb) / cb.train_wall_s for cb in timed if cb.train_wall_s > 0]
        if not cpu or any(math.isnan(c) for c in cpu):
            return "unknown (no /proc)"
        return f"{100 * statistics.median(cpu):.2f} % of one core"

    def refresh_cpu(cb: TimedWattCallback) -> float:
        return sum(c for c, _ in cb.refresh_cpu)

    by_thread = collections.Counter(name for cb in timed for _, name in cb.refresh_cpu)
    print(
        f"  books' refreshes: p50 {us * _pct(refreshes, 50):.0f} µs, p99 "
        f"{us * _pct(refreshes, 99):.0f} µs (wall, GIL waits included; n={len(refreshes)}, by "
        f"thread {dict(by_thread)}); their CPU time {share(refresh_cpu)} during training; the "
        f"rest of the background threads' (the meter's replay polling, timeline and recording "
        f"of samples; the refresher's watchdog) "
        f"{share(lambda cb: cb.meter_cpu_s - refresh_cpu(cb) + cb.refresher_cpu_s)}"
    )
    helpers = [
        cb.helper_cpu_s / cb.train_wall_s
        for cb in timed
        if cb.train_wall_s > 0 and not math.isnan(cb.helper_cpu_s)
    ]
    if helpers:
        private = [cb.helper_private_b for cb in timed if not math.isnan(cb.helper_private_b)]
        print(
            f"  the meter's helper process (isolation 'auto' here: its meter, books and "
            f"refreshes, none of them on the training process's GIL): "
            f"{100 * statistics.median(helpers):.2f} % of one core during training (not in "
            "'CPU/step' above, which is the training process's); its private memory at the "
            f"end of training p50 {statistics.median(private) / 2**20:.1f} MB"
        )
    for isolation in ("auto", "thread"):
        setups = [
            cb.setup_s
            for f in variant.fits
            if (cb := f.cb) is not None and f.arm.isolation == isolation
        ]
        if setups:
            print(
                f"  a stage's start (WattCallback.setup, the meter started), isolation "
                f"{isolation!r}: p50 {1e3 * statistics.median(setups):.1f} ms, max "
                f"{1e3 * max(setups):.1f} ms"
            )
    print(
        f"  targets (ours): tick p50 <= {TARGET_TICK_P50_US:.0f} µs and p99 <= "
        f"{TARGET_TICK_P99_US / 1e3:.0f} ms"
    )


# ---------------------------------------------------------------------------- the thread alone
BLOCK = 8  # steps per block of the in-fit comparison


class _Blocks(Callback):
    """Swaps the callbacks the Trainer dispatches to every ``BLOCK`` steps, cycling through
    ``arms``, and records the training thread's CPU time (``time.thread_time``) of each step
    by arm. One fit: the model's memory, the machine's load and the background threads (the
    meter's and the books', running throughout) are the same for every arm, which separate
    fits are not (their CPU time per step differed by ±100 µs on this machine). The first step
    of each block is dropped. Must be the last callback."""

    def __init__(self, arms: dict[str, list[Callback]], skip: int) -> None:
        self.arms, self.names, self.skip = arms, list(arms), skip
        self.per_step: dict[str, list[float]] = {name: [] for name in arms}
        self.segment: dict[str, list[int]] = {name: [] for name in arms}  # which third of the fit
        self._others = [cb for cbs in arms.values() for cb in cbs]
        self._arm: str | None = None
        self._i = 0
        self._last = math.nan
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.thread_time()
        if self._arm is not None and trainer.global_step > self.skip and self._i % BLOCK != 1:
            self.per_step[self._arm].append(now - self._last)
            self.segment[self._arm].append(3 * trainer.global_step // (self.steps + 1))
        if self._i % BLOCK == 0:
            self._arm = self.names[(self._i // BLOCK) % len(self.names)]
            kept = [cb for cb in trainer.callbacks if cb is not self and cb not in self._others]
            trainer.callbacks = [*kept, *self.arms[self._arm], self]
        self._i += 1
        self._last = time.thread_time()  # this hook's own bookkeeping is no arm's


def _dispatch_us(trainer: pl.Trainer, arms: dict[str, list[Callback]]) -> dict[str, float]:
    """CPU µs of one ``_call_callback_hooks`` (a hook no callback here overrides) with each
    arm's callbacks, and of its parts for one callback."""
    from lightning.pytorch.trainer import call

    def per_call(fn: Callable[[], object], n: int = 2000) -> float:
        best = math.inf
        for _ in range(5):
            t0 = time.thread_time()
            for _ in range(n):
                fn()
            best = min(best, (time.thread_time() - t0) / n)
        return 1e6 * best

    saved = trainer.callbacks
    out = {}
    try:
        for name, callbacks in arms.items():
            trainer.callbacks = list(callbacks)
            out[name] = per_call(
                lambda: call._call_callback_hooks(trainer, "on_before_zero_grad", None)
            )
    finally:
        trainer.callbacks = saved
    watt = arms["WattCallback"][0]
    profiler = trainer.profiler

    def profiled() -> None:
        with profiler.profile("[Callback]x.on_before_zero_grad"):
            pass

    out["profiler context"] = per_call(profiled)
    out["state_key"] = per_call(lambda: watt.state_key)
    hook = "on_before_zero_grad"  # Lightning looks each hook up by name
    out["getattr"] = per_call(lambda: getattr(watt, hook))
    return out


class _HookCount(Callback):
    def __init__(self) -> None:
        self.calls = 0

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_") and name.endswith(("_start", "_end", "backward", "step", "grad")):
            object.__setattr__(self, "calls", object.__getattribute__(self, "calls") + 1)
        return object.__getattribute__(self, name)


def _thread_alone(variant: Variant, args: argparse.Namespace) -> None:
    """The training thread's CPU per step with ``WattCallback``, a do-nothing callback and
    none, in blocks of one fit at ``log_every_n_steps=1``; Lightning's dispatch measured apart;
    the background threads' CPU per step."""
    steps, skip = args.block_steps, args.skip
    watt = WattCallback(sources=[_replay(args.all_kinds)])
    hooks = {"start": 0.0}
    direct: list[float] = []
    start, end = watt.on_train_batch_start, watt.on_train_batch_end

    def timed_start(*a: Any) -> None:
        t0 = time.thread_time()
        start(*a)
        hooks["start"] = time.thread_time() - t0

    def timed_end(*a: Any) -> None:
        t0 = time.thread_time()
        end(*a)
        direct.append(hooks["start"] + time.thread_time() - t0)

    watt.on_train_batch_start = timed_start  # type: ignore[method-assign]
    watt.on_train_batch_end = timed_end  # type: ignore[method-assign]
    arms: dict[str, list[Callback]] = {
        "WattCallback": [watt],
        "do-nothing": [_Null()],
        "a row a step": [_RowOnly()],
        "none": [],
    }
    blocks = _Blocks(arms, skip)
    blocks.steps = steps
    counter = _HookCount()
    dispatch: dict[str, float] = {}
    threads: dict[str, float] = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            books = watt._books.stage
            assert books is not None
            self.helper = getattr(books, "_pid", None)  # the books in a helper process
            if self.helper is not None:
                self.ids = ()
                self.cpu0 = [_process_cpu_s(self.helper)]
                return
            refresher = books._refresher  # type: ignore[union-attr]
            assert refresher is not None
            self.ids = (refresher._thread.native_id, books.meter._thread.native_id)  # type: ignore[union-attr]
            self.cpu0 = [_thread_cpu_s(i) for i in self.ids]

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == skip:
                counter.calls = 0
            elif trainer.global_step == skip + 1:
                dispatch["hooks a step"] = counter.calls
                dispatch.update(_dispatch_us(trainer, {"none": [], **arms}))

        def on_train_end(self, trainer, pl_module) -> None:
            done = trainer.global_step
            if self.helper is not None:
                threads["helper"] = (_process_cpu_s(self.helper) - self.cpu0[0]) / done
                return
            for name, i, c0 in zip(("refresher", "meter"), self.ids, self.cpu0, strict=True):
                threads[name] = (_thread_cpu_s(i) - c0) / done

    model = _MLP(variant.width, variant.depth)
    data = DataLoader(
        _SameBatch(variant.width, variant.batch, steps + 1, variant.device), batch_size=None
    )
    with tempfile.TemporaryDirectory(prefix="watt-overhead-") as tmp:
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_steps=steps, limit_val_batches=0,
            num_sanity_val_steps=0, log_every_n_steps=1, logger=variant.make_logger(tmp),
            default_root_dir=tmp, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[Probe(), counter, watt, blocks],
        )  # fmt: skip
        gc.collect()
        trainer.fit(model, data)
    us = 1e6
    base = statistics.median(blocks.per_step["none"])

    def added(name: str) -> str:
        values, segment = blocks.per_step[name], blocks.segment[name]
        none, none_seg = blocks.per_step["none"], blocks.segment["none"]
        thirds = [
            statistics.median(v for v, g in zip(values, segment, strict=True) if g == k)
            - statistics.median(v for v, g in zip(none, none_seg, strict=True) if g == k)
            for k in range(3)
            if k in segment and k in none_seg
        ]
        return (
            f"{us * (statistics.median(values) - base):+.1f} µs [thirds of the fit: "
            + ", ".join(f"{us * t:+.1f}" for t in thirds)
            + "]"
        )

    n = dispatch.get("hooks a step", math.nan)
    step_ms = 1e3 * base
    print(
        f"  the training thread alone: one fit of {steps} steps at log_every_n_steps=1, blocks of "
        f"{BLOCK} steps cycling through the arms; CPU time (time.thread_time) per step, median "
        f"of ~{len(blocks.per_step['none'])} steps an arm"
    )
    print(f"    no callback           {us * base:8.1f} µs a step")
    print(f"    do-nothing callback   {added('do-nothing')}")
    print(
        f"    a row a step          {added('a row a step')} (a callback logging three numbers "
        "per step, no energy: the loggers' price of a row, dispatch included)"
    )
    print(
        f"    WattCallback          {added('WattCallback')}; in its two batch hooks (the tick "
        f"included) p50 {us * _pct(direct, 50):.1f} µs, mean {us * statistics.mean(direct):.1f} µs"
    )
    print(
        f"    Lightning's dispatch, measured apart (CPU µs per hook call, warm): no callback "
        f"{dispatch['none']:.2f}, do-nothing {dispatch['do-nothing']:.2f}, WattCallback "
        f"{dispatch['WattCallback']:.2f}; of one callback's share its profiler context "
        f"{dispatch['profiler context']:.2f}, state_key {dispatch['state_key']:.2f}, getattr "
        f"{dispatch['getattr']:.2f}; {n:.0f} hooks a step: "
        f"{n * (dispatch['do-nothing'] - dispatch['none']):.1f} µs a step for any callback"
    )
    if "helper" in threads:
        print(
            f"    the meter's helper process: {us * threads['helper']:.1f} µs of CPU per step "
            "(its own process and GIL: nothing the training thread waits for)"
        )
    else:
        print(
            f"    background threads' CPU per step: the refresher's own thread (its watchdog) "
            f"{us * threads['refresher']:.1f} µs, the meter's (its reads and the books' "
            f"refreshes) {us * threads['meter']:.1f} µs (each holds the GIL that long; a "
            "training thread that wants it meanwhile waits: wall time, not in the CPU times "
            "above)"
        )
    print(
        f"    the target (0.97x at these {step_ms:.2f} ms steps) leaves "
        f"{0.03 / 0.97 * step_ms * 1e3:.0f} µs a step for everything the callback adds, on "
        "the training thread and off it"
    )


# ---------------------------------------------------------------------------- main
def _machine() -> str:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ""
    with contextlib.suppress(OSError):
        load = f", load average {os.getloadavg()[0]:.1f}"
    return (
        f"CPU {model}, {os.cpu_count()} logical cores ({usable} usable{load}); Python "
        f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} "
        f"intra-op threads), lightning {lightning.__version__}"
    )


def _run_variant(variant: Variant, args: argparse.Namespace, target_s: float) -> None:
    t_start = time.monotonic()
    print(f"\n== {variant.name}")
    variant.logger = args.logger
    variant.batch = args.batch or _calibrate(variant, target_s, args.skip)
    print(
        f"  model: MLP {variant.width} x {variant.depth} hidden + 10 out, batch {variant.batch} "
        f"({'given' if args.batch else f'calibrated for {1e3 * target_s:.1f} ms/step'}); "
        f"{args.steps} steps a fit, timed after "
        f"{args.skip}; {args.repeats} interleaved repetitions of {len(variant.arms)} arms "
        f"(WattCallback as users run it), then {args.timed_repeats} of the 'on' arms with its "
        f"hooks and ticks timed; logger: {variant.logger}"
    )
    for _ in range(args.repeats):
        for arm in variant.arms:
            variant.fits.append(_fit(variant, variant.batch, args.steps, args.skip, arm))
    for _ in range(args.timed_repeats):
        for arm in variant.arms:
            if arm.kind == "on":
                variant.fits.append(
                    _fit(variant, variant.batch, args.steps, args.skip, arm, timed=True)
                )
    _report_throughput(variant)
    _report_ticks(variant)
    if variant.device.type == "cpu" and args.block_steps:
        _thread_alone(variant, args)
    print(f"  ({time.monotonic() - t_start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=1500,
        help="train steps per fit (a stage's start, the helper's fork included, is not timed "
        "in them: it is reported apart)",
    )
    parser.add_argument("--repeats", type=int, default=6, help="fits per arm (>= 3)")
    parser.add_argument(
        "--timed-repeats",
        type=int,
        default=2,
        help="further fits per 'on' arm with the ticks timed (>= 1; not in the throughput)",
    )
    parser.add_argument(
        "--skip",
        type=int,
        default=200,
        help="warm steps not timed per fit (the first steps after the helper's fork take its "
        "copy-on-write page faults)",
    )
    parser.add_argument("--step-ms", type=float, default=1.5, help="CPU step time to aim for")
    parser.add_argument("--gpu-step-ms", type=float, default=10.0, help="GPU step time to aim for")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: least noisy)"
    )
    parser.add_argument("--no-gpu", action="store_true", help="skip the CUDA variant")
    parser.add_argument(
        "--no-cpu",
        action="store_true",
        help="skip the CPU variant (benchmarks/gpu_check.sh: only the GPU arms, in its time)",
    )
    parser.add_argument(
        "--all-kinds",
        action="store_true",
        help="replay the recording's power fields too (a live NVML source reads only the "
        "counter and the buffer where the buffer works)",
    )
    parser.add_argument(
        "--logger",
        choices=sorted(LOGGERS),
        default="csv",
        help="the Trainer's logger in every arm (tensorboard: a Trainer's default)",
    )
    parser.add_argument(
        "--block-steps", type=int, default=3000, help="steps of the in-fit blocks (0: skip them)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="batch size instead of calibrating one (the same steps across runs to compare)",
    )
    parser.add_argument(
        "--cadences",
        default="50,10,1",
        help="log_every_n_steps values whose arms run (comma-separated; of 50, 10, 1)",
    )
    args = parser.parse_args()
    try:
        cadences = {int(c) for c in args.cadences.split(",")}
    except ValueError:
        cadences = set()
    if not cadences or not cadences <= {a.every for a in ARMS}:
        parser.error(f"--cadences must name some of 50, 10, 1, got {args.cadences!r}")
    arms = tuple(a for a in ARMS if a.every in cadences)
    if args.batch < 0:
        parser.error(f"--batch must be 0 (calibrate) or a batch size, got {args.batch}")
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")
    if args.timed_repeats < 1:
        parser.error("--timed-repeats must be at least 1")
    if args.steps < args.skip + 50:
        parser.error(f"--steps must be at least --skip + 50 = {args.skip + 50}")
    torch.set_num_threads(args.threads)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*(num_workers|LeafSpec|log_every_n_steps).*")

    t_start = time.monotonic()
    print("lightning-watt callback overhead (benchmarks/overhead.py)")
    print(f"machine: {_machine()}")

    def replayed(arm: Arm, timed: bool) -> WattCallback:
        kind = TimedWattCallback if timed else WattCallback
        return kind(sources=[_replay(args.all_kinds)], record=arm.record, isolation=arm.isolation)

    if not args.no_cpu:
        served = "every recorded kind" if args.all_kinds else "counter + buffer, as NVML reads"
        _run_variant(
            Variant(
                f"CPU, replayed H200 trace ({TRACE}; {served})",
                torch.device("cpu"),
                WIDTH["cpu"],
                DEPTH["cpu"],
                arms,
                replayed,
            ),
            args,
            args.step_ms / 1e3,
        )
    if torch.cuda.is_available() and not args.no_gpu:
        device = torch.device("cuda", torch.cuda.current_device())
        _run_variant(
            Variant(
                f"GPU {torch.cuda.get_device_name(device)}, live NVML (default sources)",
                device,
                WIDTH["cuda"],
                DEPTH["cuda"],
                tuple(a for a in arms if a.every in (1, 50)),
                lambda arm, timed: (TimedWattCallback if timed else WattCallback)(
                    record=arm.record, isolation=arm.isolation
                ),
            ),
            args,
            args.gpu_step_ms / 1e3,
        )
    else:
        print("\n(no CUDA device: the GPU variant with NVML was not run)")
    print(f"\ntotal {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
