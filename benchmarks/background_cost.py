"""What the callback's background work costs the training thread, and what it would cost in a
helper process instead of threads.

``WattCallback``'s meter and books run on background threads of the training process: the
meter reads its sources (a replayed H200 here: the counter 10 times a second, the driver's
buffer twice), fits its timeline, and between its reads the books turn step edges into
energies. That work is about 1 % of one core, but Python threads share one GIL, so each burst
of it is time the training thread can wait for. This script runs one fit (``overhead.py``'s
MLP at about ``--step-ms`` a step, ``log_every_n_steps=50``) in five arms, interleaved:

* ``off``: no energy callback; ``null``: a callback that does nothing (Lightning's dispatch
  of any callback, and the noise floor);
* ``watt``: ``WattCallback`` replaying ``h200-mlp-stall`` with the README's defaults;
* ``thread``: the do-nothing callback plus one Python thread that wakes ``--wakes`` times a
  second and burns, in pure Python, the background CPU the ``watt`` arm's threads were
  measured to use (per second, measured first in ``--probe`` fits of the ``watt`` arm);
* ``process``: the same bursts in a forked helper process (no GIL shared with training).

Reported per arm against ``off``: the paired median of steps/s ratios with their range, the
process CPU per step (the training process only: the helper process's CPU is not in it), and
how often a second the training thread blocked (voluntary context switches: waits for the
GIL, mostly). ``thread`` minus ``process`` is what moving the same work out of the training
process would give back; ``watt`` minus ``thread`` is what our threads cost beyond their
CPU (their hooks on the training thread included).

Usage::

    python benchmarks/background_cost.py                # 20 repetitions of 300 steps an arm
    python benchmarks/background_cost.py --repeats 40   # tighter medians
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import multiprocessing
import os
import statistics
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))  # overhead.py's workload, from a checkout

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from overhead import (
    DEPTH,
    WIDTH,
    Variant,
    _calibrate,
    _LoopTimer,
    _machine,
    _replay,
    _thread_cpu_s,
    train_mlp,
)

from lightning_watt.integration.callback import WattCallback

ARMS = ("off", "null", "watt", "thread", "process")
#: overhead.py's CPU workload with a CSV logger (its callback maker is unused: arms here build
#: their own callbacks).
_VARIANT = Variant("cpu", torch.device("cpu"), WIDTH["cpu"], DEPTH["cpu"], (), make_on=None)  # type: ignore[arg-type]


def _burn(seconds: float) -> None:
    """``seconds`` of this thread's CPU in plain Python (allocations, dicts, lists: the kind
    of work the meter and the books do), holding the GIL throughout."""
    end = time.thread_time() + seconds
    junk: list[dict[str, object]] = []
    while time.thread_time() < end:
        for _ in range(50):
            junk.append({"t": len(junk), "w": [1.0, 2.0]})
        if len(junk) > 400:
            junk = []


def _burst_loop(stop: Any, wakes: float, burst_s: float) -> None:
    while not stop.wait(1.0 / wakes):
        _burn(burst_s)


class _Bursts(Callback):
    """A do-nothing callback whose fit runs periodic bursts of Python work beside it, in a
    thread of the training process or in a forked helper process."""

    def __init__(self, wakes: float, burst_s: float, in_process: bool) -> None:
        self.wakes, self.burst_s, self.in_process = wakes, burst_s, in_process
        self._worker: threading.Thread | multiprocessing.process.BaseProcess | None = None
        self._stop: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        args: tuple[Any, ...]
        if self.in_process:
            ctx = multiprocessing.get_context("fork")
            self._stop = ctx.Event()
            args = (self._stop, self.wakes, self.burst_s)
            self._worker = ctx.Process(target=_burst_loop, args=args, daemon=True)
        else:
            self._stop = threading.Event()
            args = (self._stop, self.wakes, self.burst_s)
            self._worker = threading.Thread(target=_burst_loop, args=args, daemon=True)
        self._worker.start()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop.set()
        assert self._worker is not None
        self._worker.join()


def _voluntary_switches(tid: int) -> int:
    """Voluntary context switches of one thread of this process so far (Linux; else 0)."""
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open(f"/proc/self/task/{tid}/status") as fh,
    ):
        for line in fh:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    return 0


class _Window(_LoopTimer):
    """``overhead.py``'s loop timer (wall and process CPU from step ``skip`` to the end), plus
    the training thread's blocking waits and the CPU of every other thread of the process."""

    def __init__(self, skip: int) -> None:
        super().__init__(skip, cuda=False)

    @staticmethod
    def _others() -> dict[int, float]:
        main = threading.main_thread().native_id
        return {
            t.native_id: _thread_cpu_s(t.native_id)
            for t in threading.enumerate()
            if t.native_id is not None and t.native_id != main
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.skip and math.isnan(self.t0):
            self.switches0 = _voluntary_switches(threading.main_thread().native_id or 0)
            self.others0 = self._others()
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self.switches = _voluntary_switches(threading.main_thread().native_id or 0) - self.switches0
        others = self._others()
        self.background_cpu = sum(
            cpu - self.others0[tid] for tid, cpu in others.items() if tid in self.others0
        )


@dataclass
class Fit:
    arm: str
    step_s: float
    cpu_step_s: float
    blocks_per_s: float
    background_share: float  # CPU of the process's other threads, as a share of one core


def _fit(arm: str, batch: int, steps: int, skip: int, wakes: float, burst_s: float) -> Fit:
    window = _Window(skip)
    callbacks: list[Callback] = [window]
    if arm == "null":
        callbacks.append(Callback())
    elif arm == "watt":
        callbacks.append(WattCallback(sources=[_replay(False)], isolation="thread"))
    elif arm in ("thread", "process"):
        callbacks.append(_Bursts(wakes, burst_s, in_process=arm == "process"))
    train_mlp(_VARIANT, batch, steps, 50, callbacks)
    wall = window.t1 - window.t0
    return Fit(
        arm,
        window.step_s,
        window.cpu_step_s,
        window.switches / wall,
        window.background_cpu / wall,
    )


def _report(fits: list[Fit]) -> None:
    by_arm = {arm: [f for f in fits if f.arm == arm] for arm in ARMS}
    off = by_arm["off"]
    rates = [1 / f.step_s for f in off]
    span = (max(rates) - min(rates)) / statistics.median(rates)
    print(
        f"  {'arm':8} {'steps/s':>8} {'vs off: paired median [min, max]':>34} "
        f"{'CPU/step vs off':>16} {'blocks/s':>9} {'background':>11}"
    )
    for arm in ARMS:
        runs = by_arm[arm]
        rate = statistics.median(1 / f.step_s for f in runs)
        blocks = statistics.median(f.blocks_per_s for f in runs)
        background = statistics.median(f.background_share for f in runs)
        if arm == "off":
            ratio = f"(off runs span {100 * span:.1f} %)"
            cpu = ""
        else:
            ratios = [o.step_s / f.step_s for o, f in zip(off, runs, strict=True)]
            ratio = f"{statistics.median(ratios):.3f}x [{min(ratios):.3f}, {max(ratios):.3f}]"
            pairs = zip(off, runs, strict=True)
            d_cpu = statistics.median(f.cpu_step_s - o.cpu_step_s for o, f in pairs)
            cpu = f"{1e6 * d_cpu:+.1f} µs"
        print(
            f"  {arm:8} {rate:8.1f} {ratio:>34} {cpu:>16} {blocks:9.1f} {100 * background:9.2f} %"
        )
    print(
        "  blocks/s: the training thread's voluntary context switches a second (waits for the "
        "GIL, mostly); background: CPU of the training process's other threads (the helper "
        "process's own is not counted)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="train steps per fit")
    parser.add_argument("--skip", type=int, default=20, help="warm steps not timed per fit")
    parser.add_argument("--repeats", type=int, default=20, help="fits per arm (>= 3)")
    parser.add_argument("--step-ms", type=float, default=1.5, help="CPU step time to aim for")
    parser.add_argument("--batch", type=int, default=0, help="batch size (0: calibrate)")
    parser.add_argument("--probe", type=int, default=3, help="watt fits measuring its threads")
    parser.add_argument(
        "--wakes", type=float, default=12.0, help="bursts a second of the synthetic arms"
    )
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error(f"--repeats must be at least 3, got {args.repeats}")
    if args.steps < args.skip + 50:
        parser.error(f"--steps must be at least --skip + 50 = {args.skip + 50}")
    if args.wakes <= 0:
        parser.error(f"--wakes must be positive, got {args.wakes}")
    torch.set_num_threads(1)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    start = time.monotonic()
    print("what the callback's background work costs (benchmarks/background_cost.py)")
    print(f"machine: {_machine()}")
    batch = args.batch or _calibrate(_VARIANT, args.step_ms / 1e3, args.skip)
    probes = [_fit("watt", batch, args.steps, args.skip, 1.0, 0.0) for _ in range(args.probe)]
    share = statistics.median(f.background_share for f in probes)
    burst_s = share / args.wakes
    print(
        f"  batch {batch}; the watt arm's background threads use {100 * share:.2f} % of one "
        f"core ({args.probe} fits): the synthetic arms burn {1e6 * burst_s:.0f} µs of Python "
        f"{args.wakes:g} times a second; {args.repeats} interleaved repetitions of "
        f"{len(ARMS)} arms, {args.steps} steps a fit, timed after {args.skip}"
    )
    fits = [
        _fit(arm, batch, args.steps, args.skip, args.wakes, burst_s)
        for _ in range(args.repeats)
        for arm in ARMS
    ]
    _report(fits)
    print(f"  ({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
