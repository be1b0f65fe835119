"""Memory of a 24-hour run: does the energy timeline stay under 50 MB?

Feeds an :class:`~lightning_watt.energy.timeline.EnergyTimeline` what a live meter would feed it
over a
simulated day, at the default NVML rates, on a fake clock (no sleeping, no GPU): per GPU, an
energy counter read every 100 ms and the driver's 20 ms power samples drained every 0.5 s. By
default each drain's readings (5 counter reads, 25 buffer samples) go to the timeline in one
``add``; ``--per-read`` gives each counter read its own ``add``, as the meter's counter channel
does (the same knots and memory, about 2x slower to simulate). The power is a blocky
synthetic workload (a new level every 0.5-20 s, noise on every sample) whose energy is known,
so the run also checks that a day's total is still right after old knots have been thinned.

Reports, every few simulated hours: knots kept, ``memory_bytes()`` and the tracemalloc
current/peak of the whole process (the timeline plus this script's small per-chunk arrays),
against 50 MB.

Usage::

    python benchmarks/meter_memory.py            # 24 h, 1 GPU
    python benchmarks/meter_memory.py --gpus 8   # 24 h, 8 GPUs (8x longer: ~15-30 min)
    python benchmarks/meter_memory.py --hours 2  # a quick look
    python benchmarks/meter_memory.py --hours 6 --max-knots 20000  # days, in miniature
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))  # run from a checkout

from lightning_watt.energy.readings import BUFFER_W, COUNTER_J, Reading
from lightning_watt.energy.timeline import EnergyTimeline

TARGET_BYTES = 50 * 2**20
COUNTER_S = 0.1
BUFFER_S = 0.02
DRAIN_S = 0.5


def simulate(
    hours: float,
    gpus: int,
    seed: int,
    report_every_h: float,
    per_read: bool = False,
    max_knots: int = 200_000,
) -> dict[str, float]:
    """Run the simulated day; print a line per ``report_every_h``; return the final numbers."""
    rng = np.random.default_rng(seed)
    devices = [f"gpu{i}" for i in range(gpus)]
    tracemalloc.start()
    wall0 = time.perf_counter()
    timeline = EnergyTimeline(max_knots=max_knots)
    truth_mj = [0.0] * gpus  # exact energy so far (millijoules)
    origin = {d: float(rng.integers(10**6, 10**8)) for d in devices}  # arbitrary counter origins
    level = [100.0] * gpus
    level_until = [0.0] * gpus
    per_drain = round(DRAIN_S / BUFFER_S)  # 25 buffer samples per drain
    per_counter = round(COUNTER_S / BUFFER_S)  # 5 buffer periods per counter update
    n_drains = round(hours * 3600 / DRAIN_S)
    next_report = report_every_h
    header = ("sim h", "knots", "memory_bytes", "tracemalloc", "peak", "wall s")
    print("{:>6} {:>9} {:>13} {:>12} {:>10} {:>7}".format(*header))
    for drain in range(n_drains):
        t0 = drain * DRAIN_S
        for g, dev in enumerate(devices):
            if t0 >= level_until[g]:  # a new workload phase every 0.5-20 s
                level[g] = float(rng.choice([70.0, 120.0, rng.uniform(150.0, 680.0)]))
                level_until[g] = t0 + float(rng.uniform(0.5, 20.0))
            watts = np.clip(level[g] + rng.normal(0.0, 15.0, per_drain), 0.0, None)
            stamps = t0 + BUFFER_S * np.arange(1, per_drain + 1)
            cum = truth_mj[g] + np.cumsum(watts) * BUFFER_S * 1000.0
            # The counter: one read per 100 ms update, whole millijoules.
            counter = [
                Reading(float(stamps[i]), dev, COUNTER_J, origin[dev] + math.floor(cum[i]) / 1000.0)
                for i in range(per_counter - 1, per_drain, per_counter)
            ]
            # The buffer channel: the last 0.5 s of 20 ms samples in one drain.
            buffer = [
                Reading(s, dev, BUFFER_W, w)
                for s, w in zip(stamps.tolist(), watts.tolist(), strict=True)
            ]
            if per_read:
                for r in counter:  # one add per counter read, as the meter's channel does
                    timeline.add([r])
                timeline.add(buffer)
            else:
                timeline.add(counter + buffer)
            truth_mj[g] = float(cum[-1])
        sim_h = (drain + 1) * DRAIN_S / 3600
        if sim_h + 1e-9 >= next_report or drain == n_drains - 1:
            next_report += report_every_h
            current, peak = tracemalloc.get_traced_memory()
            knots = sum(len(timeline.device(d)._kt) for d in devices)
            print(
                f"{sim_h:6.1f} {knots:9d} {timeline.memory_bytes():13,d} {current:12,d} "
                f"{peak:10,d} {time.perf_counter() - wall0:7.1f}"
            )
    timeline.flush()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    end = hours * 3600
    errors = [
        timeline.energy_between(BUFFER_S, end)[d] / ((truth_mj[g]) / 1000.0) - 1.0
        for g, d in enumerate(devices)
    ]
    return {
        "memory_bytes": float(timeline.memory_bytes()),
        "tracemalloc_current": float(current),
        "tracemalloc_peak": float(peak),
        "wall_s": time.perf_counter() - wall0,
        "worst_total_error": max(abs(e) for e in errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--per-read",
        action="store_true",
        help="one add() per counter read (the live meter's call pattern; about 2x slower)",
    )
    parser.add_argument(
        "--max-knots",
        type=int,
        default=200_000,
        help="the timeline's knot budget per device; a small one shows in a few simulated hours "
        "what the default does over days (thinned knots fill half the budget after "
        "max_knots/2 seconds)",
    )
    parser.add_argument("--report-every", type=float, default=None, help="simulated hours")
    args = parser.parse_args()
    every = args.report_every or max(args.hours / 8, 0.25)
    print(
        f"simulating {args.hours:g} h on {args.gpus} GPU(s), max_knots={args.max_knots}: "
        f"counter every {COUNTER_S * 1000:g} ms, "
        f"buffer samples every {BUFFER_S * 1000:g} ms drained every {DRAIN_S:g} s"
    )
    res = simulate(args.hours, args.gpus, args.seed, every, args.per_read, args.max_knots)
    print()
    print(f"timeline memory_bytes():   {res['memory_bytes'] / 2**20:8.2f} MiB")
    print(f"tracemalloc at the end:    {res['tracemalloc_current'] / 2**20:8.2f} MiB")
    print(f"tracemalloc peak:          {res['tracemalloc_peak'] / 2**20:8.2f} MiB")
    target = TARGET_BYTES / 2**20
    print(
        f"target 50 MiB: peak is {res['tracemalloc_peak'] / TARGET_BYTES:.2f}x the target "
        f"({'within' if res['tracemalloc_peak'] <= TARGET_BYTES else 'OVER'} {target:g} MiB)"
    )
    print(f"run total vs truth:        {res['worst_total_error'] * 100:+.5f} % (worst device)")
    print(f"wall time:                 {res['wall_s']:8.1f} s")


if __name__ == "__main__":
    main()
