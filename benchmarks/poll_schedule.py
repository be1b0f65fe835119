"""The counter's poll schedule: what a locked 100 ms poll and an alternating one let the counter
clock recover, on real counters.

The bundled traces whose counter was read in a tight loop (``h100-mlp``, which recorded no
power buffer, and ``h200-square-wave``, with and without its buffer) are thinned to the reads a
live meter would take: a read at each due time, the next due one schedule step later or at
once if the reader ran late (no catch-up bursts, as ``EnergyMeter`` schedules). The energy over
windows between true update instants (pinned by the tight loop) is compared with the counter's
own increments, 100 ms (one update) and 1 s (ten) apart, as in ``step_accuracy.py`` section 3.

A poll locked at the counter's period lands at one phase of it: its brackets admit every
phase, and without a buffer the values stay at their read times. Gaps alternating around the
period (the meter's default, :data:`lightning_watt.sources.nvml.COUNTER_PATTERN_S`) sweep the
update's phase, so the brackets pin it (:mod:`lightning_watt.energy.bracket_fit`), at the cost
of an update now and then that no read sees on its own.

Usage::

    python benchmarks/poll_schedule.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))  # run from a checkout

from lightning_watt.energy.readings import BUFFER_W, COUNTER_J
from lightning_watt.energy.timeline import EnergyTimeline
from lightning_watt.energy.trace import bundled_trace, load_trace
from lightning_watt.sources.nvml import COUNTER_PATTERN_S
from lightning_watt.testing.polling import meter_reads, tight_counter_run
from lightning_watt.testing.synthetic import thinned_counter_reads

SCHEDULES: dict[str, tuple[float, ...]] = {
    "locked 100": (0.1,),
    "detuned 102": (0.102,),
    "meter 80/124": COUNTER_PATTERN_S,
    "75/129": (0.075, 0.129),
    "85/119": (0.085, 0.119),
}


def median_error(
    tl: EnergyTimeline, inside: list[float], truth: tuple[np.ndarray, np.ndarray], apart: int
) -> float:
    """Median error (%) of the energy between true updates ``apart`` updates apart; the truth
    is the tight loop's counter (the value first read after each update is its value)."""
    ct, cv = truth
    errs = []
    for x, y in zip(inside, inside[apart:], strict=False):
        true = float(cv[np.searchsorted(ct, y)] - cv[np.searchsorted(ct, x)])
        if true > 0:
            errs.append(abs(tl.energy_between(x, y)["gpu0"] / true - 1))
    return 100 * statistics.median(errs)


def main() -> None:
    wall = time.perf_counter()
    header = (
        f"{'trace':<29} {'schedule':<13} {'reads':>5} {'100 ms med %':>13} {'1 s med %':>10}  how"
    )
    print(header)
    print("-" * len(header))
    for name, keep_buffer in (
        ("h100-mlp", True),
        ("h200-square-wave", True),
        ("h200-square-wave", False),
    ):
        trace = load_trace(bundled_trace(name))
        _, updates = thinned_counter_reads(trace)
        counter = [(r.t, r.value) for r in trace.samples if r.kind == COUNTER_J]
        truth = (np.asarray([c[0] for c in counter]), np.asarray([c[1] for c in counter]))
        a, b = trace.fit_window
        inside = [x for x in updates if a + 2.0 <= x <= b]
        others = [
            r for r in trace.samples if r.kind != COUNTER_J and (keep_buffer or r.kind != BUFFER_W)
        ]
        label = name if keep_buffer else f"{name} (no buffer)"
        for schedule_name, schedule in SCHEDULES.items():
            reads = meter_reads(trace.samples, schedule)
            tl = EnergyTimeline()
            tl.add(sorted(reads + others, key=lambda r: r.t))
            tl.flush()

            how = tl.notes()["gpu0"][0].replace("counter updates anchored by ", "")
            window, second = (median_error(tl, inside, truth, n) for n in (1, 10))
            print(
                f"{label:<29} {schedule_name:<13} {len(reads):>5} {window:13.2f} {second:10.3f}  "
                f"{how}"
            )
    print()
    synthetic_table()
    print(f"\n(measured in one run, {time.perf_counter() - wall:.1f} s)")


def synthetic_table(seeds: int = 6) -> None:
    """No buffer, exact truth: ``synthetic_run`` with its counter read every 3 ms (updates on
    a 100 ms grid, 2 missed, 1 ms of stamp jitter), thinned as the meter polls."""
    print(f"Synthetic, no buffer ({seeds} seeds x 30 s): median over seeds of the median error")
    header = f"{'schedule':<13} {'values at':<10} {'100 ms %':>9} {'worst seed':>11} {'1 s %':>7}"
    print(header)
    print("-" * len(header))
    rows: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for seed in range(seeds):
        run, updates = tight_counter_run(seed)
        others = [r for r in run.trace.samples if r.kind != COUNTER_J]
        for schedule_name in ("locked 100", "meter 80/124"):
            reads = meter_reads(run.trace.samples, SCHEDULES[schedule_name])
            for recover in (False, True):
                tl = EnergyTimeline(recover_clock=recover)
                tl.add(sorted(reads + others, key=lambda r: r.t))
                tl.flush()
                errors = [
                    statistics.median(
                        abs(tl.energy_between(x, y)["gpu0"] / run.true_energy(x, y) - 1)
                        for x, y in zip(updates, updates[n:], strict=False)
                    )
                    for n in (1, 10)
                ]
                rows.setdefault((schedule_name, recover), []).append((errors[0], errors[1]))
    for (schedule_name, recover), values in rows.items():
        windows = [100 * v[0] for v in values]
        seconds = [100 * v[1] for v in values]
        print(
            f"{schedule_name:<13} {'recovered' if recover else 'read time':<10} "
            f"{statistics.median(windows):9.2f} {max(windows):11.2f} "
            f"{statistics.median(seconds):7.3f}"
        )


if __name__ == "__main__":
    main()
