"""Overhead of ``WattCallback`` on training throughput and inside its batch hooks.

One process, one run, because machines are noisy: the same ``Trainer.fit`` with no energy
callback (``off``), with a callback that does nothing (``null``: Lightning's cost of any
callback, and the noise floor), with ``WattCallback(replay="h200-mlp-stall", record=False,
summary=False)`` (``on``: a replayed source, so the meter thread really polls channels and feeds
the timeline while the model trains) and with a subclass that times its hooks (``timed``),
interleaved ``off, null, on, timed, off, null, ...`` so that drifts of the machine hit every arm
alike.

The model is an MLP whose batch is calibrated so a train step (Lightning's loop included) takes
about ``--step-ms`` (5 ms) on this CPU; the actual step time is measured and printed.

Reported:

* steps/s of the timed part of each fit (after ``--skip`` warm steps; setup and teardown are
  reported apart as the fixed cost of a fit), medians per arm, each arm against ``off`` (ratio
  of medians, and ``paired``: the median of the per-repetition ratios), ``on`` against the
  target of at most 2 % fewer; with the spread of the ``off`` runs and the ``null`` arm, which
  say whether 2 % is resolved at all;
* two estimates that resist a shared machine's load (other tenants change wall time by far more
  than 2 %): the median step (start to start; a step with a log tick is rarely the median) and
  the CPU time per step of the whole process (all threads, the meter's included);
* hook time (``timed`` arm): ``perf_counter`` around ``on_train_batch_start`` and
  ``on_train_batch_end``; the ends that ran a log tick (``_log_tick``, at the Trainer's
  ``log_every_n_steps``) are reported apart. p50/p99 of the plain hooks in µs, the mean per step
  with the ticks spread over all steps, against the target of at most 20 µs per step;
* what a log tick spends where (``_sync_edges``, ``StepClock.resolve``, ``EnergyLedger.advance``,
  ``EnergyMeter.energy_between``, the wait for the meter's lock, ``pl_module.log``), how long the
  meter thread holds that lock while it ingests readings (``timeline.add``), and the meter
  thread's CPU time (it competes with the training thread for the GIL). The instrumentation
  itself (a wrapped lock, ~200 ``perf_counter`` calls a tick) adds a few % to the tick's time.

On a machine with CUDA, the same is run a second time on the GPU at about ``--gpu-step-ms``
(10 ms) per step with the default sources (NVML for the GPU, RAPL or an estimate for the CPU)
instead of a replay.

Usage::

    python benchmarks/overhead.py
    python benchmarks/overhead.py --steps 400 --repeats 5   # fewer, longer fits
"""

from __future__ import annotations

import argparse
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
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))  # run from a checkout

import lightning
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_watt.attribution.ledger import EnergyLedger
from lightning_watt.integration.callback import WattCallback

TARGET_SLOWDOWN = 0.02  # at most 2 % fewer steps/s
TARGET_HOOK_US = 20.0  # at most 20 µs in the callback's batch hooks per step
ARMS = ("off", "null", "on", "timed")
WIDTH = {"cpu": 256, "cuda": 2048}
DEPTH = {"cpu": 2, "cuda": 4}


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
    """Times the train loop from the start of step ``skip`` to the end of training, and each
    step (start to next start: everything, hooks included) for a median robust to load spikes."""

    def __init__(self, skip: int, cuda: bool) -> None:
        self.skip, self.cuda = skip, cuda
        self.t0 = self.t1 = self.cpu0 = self.cpu1 = math.nan
        self.step0 = self.steps = 0
        self.starts: list[float] = []

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.skip and math.isnan(self.t0):
            self.t0, self.step0 = self._now(), trainer.global_step
            self.cpu0 = time.process_time()
        if not math.isnan(self.t0):
            self.starts.append(perf_counter())

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

    @property
    def median_step_s(self) -> float:
        return statistics.median(b - a for a, b in zip(self.starts, self.starts[1:], strict=False))


class _Null(Callback):
    """A callback that does nothing: what Lightning's dispatch of any callback costs."""


# ---------------------------------------------------------------------------- instrumentation
_ACTIVE: TimedWattCallback | None = None  # the callback whose tick is being profiled


def _charge(name: str, seconds: float) -> None:
    cb = _ACTIVE
    if cb is not None and cb._acc is not None:
        cb._acc[name] += seconds
        cb._acc[name + "#"] += 1


class _TimedLedger(EnergyLedger):
    """``advance`` timed; swapped in as the class, so ``preview``'s deepcopy stays correct."""

    def advance(self, until, energy):  # type: ignore[override]
        t0 = perf_counter()
        try:
            return super().advance(until, energy)
        finally:
            _charge("EnergyLedger.advance", perf_counter() - t0)


class _TimedLock:
    """The meter's lock: records the training thread's waits and the meter thread's holds."""

    def __init__(self, lock: Any, main_ident: int, holds: list[float]) -> None:
        self._lock, self._main, self._holds = lock, main_ident, holds
        self._since = 0.0

    def __enter__(self) -> _TimedLock:
        if threading.get_ident() == self._main:
            t0 = perf_counter()
            self._lock.acquire()
            _charge("lock wait (training thread)", perf_counter() - t0)
        else:
            self._lock.acquire()
            self._since = perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if threading.get_ident() != self._main:
            self._holds.append(perf_counter() - self._since)
        self._lock.release()


def _wrap(obj: Any, attr: str, name: str, count: Callable[[Any], int] | None = None) -> None:
    fn = getattr(obj, attr)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = perf_counter()
        out = fn(*args, **kwargs)
        _charge(name, perf_counter() - t0)
        if count is not None:
            _charge(f"{name}: items", count(out))
        return out

    setattr(obj, attr, timed)


def _thread_cpu_s(native_id: int | None) -> float:
    """CPU seconds of one thread of this process (Linux: schedstat in ns, else stat in clock
    ticks), else NaN."""
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open(f"/proc/self/task/{native_id}/schedstat") as fh,
    ):
        return int(fh.read().split()[0]) / 1e9
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/self/task/{native_id}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return math.nan


class TimedWattCallback(WattCallback):
    """``WattCallback`` with ``perf_counter`` around its train batch hooks and a breakdown of
    each log tick."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hooks: list[tuple[float, float, bool]] = []  # per step: start, end, end ticked
        self.ticks: list[dict[str, float]] = []
        self.lock_holds: list[float] = []
        self.meter_cpu_s = math.nan
        self.train_wall_s = math.nan
        self._acc: defaultdict[str, float] | None = None
        self._ticked = False
        self._start_dt = math.nan
        self._cpu0 = (0.0, 0.0)

    def setup(self, trainer, pl_module, stage) -> None:
        super().setup(trainer, pl_module, stage)
        books = self._books.stage
        assert books is not None
        meter, clock, ledger = books.meter, books.clock, books.ledger
        ledger.__class__ = _TimedLedger
        _wrap(meter, "energy_between", "EnergyMeter.energy_between")
        _wrap(clock, "resolve", "StepClock.resolve", count=len)
        _wrap(books, "sync_edges", "_sync_edges")
        _wrap(books, "energy_j", "_provisional_energy")
        meter._lock = _TimedLock(meter._lock, threading.get_ident(), self.lock_holds)

    def _meter_thread(self) -> threading.Thread | None:
        stage = self._books.stage
        return stage.meter._thread if stage is not None else None

    def on_train_start(self, trainer, pl_module) -> None:
        thread = self._meter_thread()
        self._cpu0 = (_thread_cpu_s(thread and thread.native_id), perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        thread = self._meter_thread()
        self.meter_cpu_s = _thread_cpu_s(thread and thread.native_id) - self._cpu0[0]
        self.train_wall_s = perf_counter() - self._cpu0[1]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        t0 = perf_counter()
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._start_dt = perf_counter() - t0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._ticked = False
        t0 = perf_counter()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.hooks.append((self._start_dt, perf_counter() - t0, self._ticked))

    def _log_tick(self, trainer) -> None:
        global _ACTIVE
        self._ticked = True
        self._acc = defaultdict(float)
        _ACTIVE = self
        t0 = perf_counter()
        try:
            super()._log_tick(trainer)
        finally:
            self._acc["_log_tick"] = perf_counter() - t0
            self.ticks.append(dict(self._acc))
            self._acc = None
            _ACTIVE = None

    def _publish(self, trainer, values, save=False) -> None:
        t0 = perf_counter()
        super()._publish(trainer, values, save)
        _charge("_publish (loggers + callback_metrics)", perf_counter() - t0)
        _charge("_publish (loggers + callback_metrics): items", len(values))


# ---------------------------------------------------------------------------- one fit
@dataclass
class Fit:
    arm: str
    step_s: float
    median_step_s: float
    cpu_step_s: float
    fixed_s: float  # fit() wall time outside the timed loop (setup, warm steps, teardown)
    cb: TimedWattCallback | None = None


@dataclass
class Variant:
    name: str
    device: torch.device
    width: int
    depth: int
    batch: int = 0
    make_on: Callable[[], WattCallback] = WattCallback
    make_timed: Callable[[], TimedWattCallback] = TimedWattCallback
    fits: list[Fit] = field(default_factory=list)


def _fit(variant: Variant, batch: int, steps: int, skip: int, arm: str) -> Fit:
    cuda = variant.device.type == "cuda"
    timer = _LoopTimer(skip, cuda)
    callbacks: list[Callback] = [timer]
    cb: WattCallback | None = None
    if arm == "on":
        cb = variant.make_on()
    elif arm == "timed":
        cb = variant.make_timed()
    if cb is not None:
        callbacks.append(cb)
    elif arm == "null":
        callbacks.append(_Null())
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
            logger=CSVLogger(tmp, name="run"),
            default_root_dir=tmp,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=callbacks,
        )
        gc.collect()
        t0 = perf_counter()
        trainer.fit(model, data)
        wall = perf_counter() - t0
    loop = timer.t1 - timer.t0
    timed = cb if isinstance(cb, TimedWattCallback) else None
    return Fit(arm, timer.step_s, timer.median_step_s, timer.cpu_step_s, wall - loop, timed)


def _calibrate(variant: Variant, target_s: float, skip: int) -> int:
    """Batch size for a step of about ``target_s``: step time is affine in the batch."""
    small, large = (16, 256) if variant.device.type == "cpu" else (256, 2048)
    n = 60 if variant.device.type == "cpu" else 40
    _fit(variant, small, skip + n, skip, "off")  # warm-up (allocator, kernels, imports)

    def step_s(batch: int) -> float:
        fits = [_fit(variant, batch, skip + n, skip, "off") for _ in range(2)]
        # CPU: the median step resists other tenants' load; GPU: the host runs ahead of the
        # device in a short fit, so only the mean between two synchronisations is right.
        return min(f.median_step_s if variant.device.type == "cpu" else f.step_s for f in fits)

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
    return "ok" if good else "ABOVE TARGET"


def _report_throughput(variant: Variant) -> None:
    fits = {arm: [f for f in variant.fits if f.arm == arm] for arm in ARMS}
    rate = {arm: [1.0 / f.step_s for f in fs] for arm, fs in fits.items()}
    print("  steps/s of the timed loop, per repetition (median step, ms):")
    print("  rep" + "".join(f"{arm:>16}" for arm in ARMS))
    for i in range(len(rate["off"])):
        print(
            f"  {i:>3}"
            + "".join(f"{rate[a][i]:>8.1f} ({1e3 * fits[a][i].median_step_s:.2f})" for a in ARMS)
        )

    def paired(arm: str, value: Callable[[Fit], float]) -> float:
        return statistics.median(
            value(b) - value(a) for a, b in zip(fits["off"], fits[arm], strict=True)
        )

    off_rate = statistics.median(rate["off"])
    off_step = statistics.median(f.median_step_s for f in fits["off"])
    off_cpu = statistics.median(f.cpu_step_s for f in fits["off"])
    print(
        f"  {'arm':6} {'steps/s':>8} {'vs off':>8} {'paired':>8}   {'median step':>11} "
        f"{'vs off':>10}   {'CPU/step':>8} {'vs off':>10}   fixed cost/fit"
    )
    for arm in ARMS:
        r = statistics.median(rate[arm])
        ratio = statistics.median(b / a for a, b in zip(rate["off"], rate[arm], strict=True))
        step = statistics.median(f.median_step_s for f in fits[arm])
        cpu = statistics.median(f.cpu_step_s for f in fits[arm])
        fixed = statistics.median(f.fixed_s for f in fits[arm])
        d_step = paired(arm, lambda f: f.median_step_s)
        d_cpu = paired(arm, lambda f: f.cpu_step_s)
        print(
            f"  {arm:6} {r:8.1f} {100 * (r / off_rate - 1):+7.2f}% {100 * (ratio - 1):+7.2f}%   "
            f"{1e3 * step:8.3f} ms {1e6 * d_step:+7.1f} µs   {1e3 * cpu:5.3f} ms "
            f"{1e6 * d_cpu:+7.1f} µs   {1e3 * fixed:.0f} ms"
        )
    on_rate = statistics.median(rate["on"])
    slowdown = 1.0 - on_rate / off_rate
    paired_slowdown = 1.0 - statistics.median(
        b / a for a, b in zip(rate["off"], rate["on"], strict=True)
    )
    spread = (max(rate["off"]) - min(rate["off"])) / off_rate
    print(
        f"  a step takes {1e3 / off_rate:.2f} ms without the callback (median step "
        f"{1e3 * off_step:.2f} ms, CPU {1e3 * off_cpu:.2f} ms)"
    )
    print(
        f"  on vs off: {100 * slowdown:+.2f} % fewer steps/s (paired "
        f"{100 * paired_slowdown:+.2f} %)"
        f"   target <= {100 * TARGET_SLOWDOWN:.0f} % fewer: "
        f"{_ok(max(slowdown, paired_slowdown) <= TARGET_SLOWDOWN)}"
    )
    print(
        f"  noise: the off runs' steps/s span {100 * spread:.1f} % of their median; 'null' (a "
        "callback that does nothing) shows what any callback costs plus the noise; steps/s "
        "differences within these are not resolved by this run"
    )


def _report_hooks(variant: Variant) -> None:
    timed = [f.cb for f in variant.fits if f.cb is not None]
    hooks = [h for cb in timed for h in cb.hooks]
    start = [s for s, _, _ in hooks]
    plain = [e for _, e, tick in hooks if not tick]
    ticks = [e for _, e, tick in hooks if tick]
    per_step = [s + e for s, e, tick in hooks if not tick]
    mean_all = sum(s + e for s, e, _ in hooks) / max(len(hooks), 1)
    us = 1e6

    def line(label: str, values: list[float], extra: str = "") -> None:
        print(
            f"    {label:32} p50 {us * _pct(values, 50):7.1f} µs   p99 {us * _pct(values, 99):7.1f}"
            f" µs{extra}"
        )

    print("  hook time (timed arm, all repetitions):")
    line("on_train_batch_start", start, f"   (n={len(start)})")
    line("on_train_batch_end, no tick", plain, f"   (n={len(plain)})")
    line("start + end, plain step", per_step)
    every = len(hooks) / max(len(ticks), 1)
    line(
        "on_train_batch_end with a tick",
        ticks,
        f"   max {us * max(ticks, default=math.nan):.1f} µs (n={len(ticks)}, one per "
        f"{every:.0f} steps)",
    )
    print(
        f"    {'mean per step, ticks included':32} {us * mean_all:7.1f} µs   target <= "
        f"{TARGET_HOOK_US:.0f} µs: {_ok(us * mean_all <= TARGET_HOOK_US)}   (plain step p50: "
        f"{_ok(us * _pct(per_step, 50) <= TARGET_HOOK_US)})"
    )
    _report_tick_parts([t for cb in timed for t in cb.ticks])
    holds = [h for cb in timed for h in cb.lock_holds]
    cpu = [cb.meter_cpu_s / cb.train_wall_s for cb in timed if cb.train_wall_s > 0]
    cpu_text = (
        f"{100 * statistics.median(cpu):.2f} % of one core during training"
        if cpu and not any(math.isnan(c) for c in cpu)
        else "unknown (no /proc)"
    )
    print(
        f"  meter thread: holds the lock per ingest (timeline.add) p50 {us * _pct(holds, 50):.1f}"
        f" µs, p99 {us * _pct(holds, 99):.1f} µs, max {us * max(holds, default=math.nan):.1f} µs"
        f" (n={len(holds)}); its CPU time {cpu_text}"
    )


def _report_tick_parts(ticks: list[dict[str, float]]) -> None:
    if not ticks:
        return
    rows = [
        ("_log_tick (whole tick)", "_log_tick", 0),
        ("_sync_edges", "_sync_edges", 1),
        ("StepClock.resolve", "StepClock.resolve", 2),
        ("EnergyLedger.advance", "EnergyLedger.advance", 2),
        ("_provisional_energy", "_provisional_energy", 1),
        ("EnergyMeter.energy_between (all calls)", "EnergyMeter.energy_between", 1),
        ("lock wait (training thread, all)", "lock wait (training thread)", 1),
        ("_publish (loggers + callback_metrics)", "_publish (loggers + callback_metrics)", 1),
    ]
    print(f"  what a tick spends (n={len(ticks)} ticks; µs per tick; nested parts are included):")
    print(f"    {'':44} {'mean':>8} {'p50':>8} {'p99':>8} {'calls/tick':>10}")
    for label, key, depth in rows:
        values = [t.get(key, 0.0) * 1e6 for t in ticks]
        calls = statistics.mean(t.get(key + "#", 0) for t in ticks)
        extra = ""
        if key in ("StepClock.resolve", "_publish (loggers + callback_metrics)"):
            extra = f"   ({statistics.mean(t.get(key + ': items', 0) for t in ticks):.0f} items)"
            extra = extra.replace("items", "edges" if key == "StepClock.resolve" else "keys")
        print(
            f"    {'  ' * depth + label:44} {statistics.mean(values):8.1f} {_pct(values, 50):8.1f} "
            f"{_pct(values, 99):8.1f} {calls if key != '_log_tick' else 1:10.1f}{extra}"
        )
    waits = [t.get("lock wait (training thread)", 0.0) * 1e6 for t in ticks]
    contended = sum(w > 50 for w in waits)
    print(f"    ticks that waited > 50 µs for the meter's lock: {contended} of {len(ticks)}")


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
    variant.batch = _calibrate(variant, target_s, args.skip)
    print(
        f"  model: MLP {variant.width} x {variant.depth} hidden + 10 out, batch {variant.batch} "
        f"(calibrated for {1e3 * target_s:.1f} ms/step); {args.steps} steps a fit, timed after "
        f"{args.skip}; {args.repeats} repetitions of {', '.join(ARMS)}"
    )
    for _ in range(args.repeats):
        for arm in ARMS:
            variant.fits.append(_fit(variant, variant.batch, args.steps, args.skip, arm))
    _report_throughput(variant)
    _report_hooks(variant)
    print(f"  ({time.monotonic() - t_start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=250, help="train steps per fit")
    parser.add_argument("--repeats", type=int, default=10, help="fits per arm (>= 3)")
    parser.add_argument("--skip", type=int, default=20, help="warm steps not timed per fit")
    parser.add_argument("--step-ms", type=float, default=5.0, help="CPU step time to aim for")
    parser.add_argument("--gpu-step-ms", type=float, default=10.0, help="GPU step time to aim for")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: least noisy)"
    )
    parser.add_argument("--no-gpu", action="store_true", help="skip the CUDA variant")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")
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
    print(
        f"targets: <= {100 * TARGET_SLOWDOWN:.0f} % fewer steps/s with the callback, <= "
        f"{TARGET_HOOK_US:.0f} µs in its batch hooks per step"
    )
    replay = {"replay": "h200-mlp-stall", "record": False, "summary": False}
    _run_variant(
        Variant(
            "CPU, replayed H200 trace (h200-mlp-stall)",
            torch.device("cpu"),
            WIDTH["cpu"],
            DEPTH["cpu"],
            make_on=lambda: WattCallback(**replay),
            make_timed=lambda: TimedWattCallback(**replay),
        ),
        args,
        args.step_ms / 1e3,
    )
    if torch.cuda.is_available() and not args.no_gpu:
        device = torch.device("cuda", torch.cuda.current_device())
        live = {"record": False, "summary": False}
        _run_variant(
            Variant(
                f"GPU {torch.cuda.get_device_name(device)}, live NVML (default sources)",
                device,
                WIDTH["cuda"],
                DEPTH["cuda"],
                make_on=lambda: WattCallback(**live),
                make_timed=lambda: TimedWattCallback(**live),
            ),
            args,
            args.gpu_step_ms / 1e3,
        )
    else:
        print("\n(no CUDA device: the GPU variant with NVML was not run)")
    print(f"\ntotal {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
