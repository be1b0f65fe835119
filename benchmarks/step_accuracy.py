"""Per-step energy accuracy: counter clock recovery and edge-aware attribution, before/after.

Four measurements, all in one run:

1. **Synthetic suite, per step duration** (5-200 ms steps, gaps at another power, the counter
   polled on an unlocked ~100 ms clock so its staleness drifts over 0-100 ms, 20 ms buffer
   means, 2 ms jitter on every reading's timestamp, 2 missed counter updates; ``--seeds``
   runs of 20 s each): median and p90 per-step error, aggregate bias of all steps and of all
   gaps, and the fit's total against the truth, for

   * ``before``: counter values at their read times, buffer samples spread evenly at their
     stamps as read (as ``EnergyTimeline(recover_clock=False)`` without snapping does);
   * ``clock``: values at their recovered update instants;
   * ``clock+edges``: and buffer samples split at the step edges, at their stamps as read;
   * ``+snap``: and buffer stamps snapped onto the driver's regular clock where they are
     noisy around it (``energy/sample_grid.py``; the default).

1b. **Generator variants** the suite does not draw: other jitter amounts and distributions,
   step and gap powers, gap lengths, noise, jitter on the step edges too; the aggregate bias
   of 5, 10 and 15 ms steps (``--variant-seeds`` runs each), with the default fusion.

2. **Counter increment vs buffer integral** on ``h200-mlp-stall`` (counter polled every
   ~115 ms): the median mismatch of each counter increment with the buffer's integral over the
   span it covers, with the span taken between read times or between recovered instants.

3. **Thinned reads on real traces** whose counter was read in a tight loop
   (``h200-square-wave``, ``h100-mlp``): the reads are thinned to one per 100 ms, as a live
   meter polls, and the energy over windows between true update instants (pinned by the tight
   loop) is compared with the counter's own increments: 100 ms windows (one update) and 1 s
   windows (ten).

4. **Cost**: CPU time of the timeline per hour of run (one GPU: counter every ~100 ms, buffer
   every 20 ms, 20 steps a second), and the time to finalize a backlog of 20 000 and 200 000
   buffer samples at once (linear if the ratio is ~10).

Usage::

    python benchmarks/step_accuracy.py
    python benchmarks/step_accuracy.py --seeds 5
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))  # run from a checkout


from lightning_watt.energy.readings import BUFFER_W, COUNTER_J, Reading
from lightning_watt.energy.segment_fit import edges_from_steps
from lightning_watt.energy.timeline import EnergyTimeline
from lightning_watt.energy.trace import Trace, bundled_trace, feed_timeline, load_trace
from lightning_watt.testing.synthetic import step_suite_run, thinned_counter_reads

DURATIONS_MS = (5, 10, 20, 50, 100, 200)
VARIANTS: dict[str, dict[str, bool]] = {
    "before": {"recover_clock": False, "edges": False, "snap": False},
    "clock": {"recover_clock": True, "edges": False, "snap": False},
    "clock+edges": {"recover_clock": True, "edges": True, "snap": False},
    "+snap": {"recover_clock": True, "edges": True, "snap": True},
}
#: Generator variants for section 1b: (label, step_suite_run overrides).
GENERATOR_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("suite (2 ms uniform stamp jitter)", {}),
    ("no stamp jitter", {"jitter_s": 0.0}),
    ("1 ms uniform", {"jitter_s": 0.001}),
    ("5 ms uniform", {"jitter_s": 0.005}),
    ("normal, sd 1 ms (2 ms bound)", {"jitter_dist": "normal"}),
    ("normal, sd 2.5 ms (5 ms bound)", {"jitter_dist": "normal", "jitter_s": 0.005}),
    ("gaps at 50 W", {"gap_W": 50.0}),
    ("gaps at 200 W, steps 300-500 W", {"gap_W": 200.0, "levels_W": (300.0, 500.0)}),
    ("steps 120-250 W, gaps 60 W", {"levels_W": (120.0, 250.0), "gap_W": 60.0}),
    ("gaps 0-10 ms", {"gap_ms": (0, 10)}),
    ("gaps 1-3 ms", {"gap_ms": (1, 3)}),
    ("gaps 5-50 ms", {"gap_ms": (5, 50)}),
    ("noise 40 W per ms", {"noise_W": 40.0}),
    (
        "buffer phase 13.3 ms, polls 97.7 ms",
        {"buffer_phase_s": 0.0133, "counter_read_interval_s": 0.0977},
    ),
    ("edges jittered 0.5 ms (uniform)", {"edge_jitter_s": 0.0005}),
    ("edges jittered 1 ms (uniform)", {"edge_jitter_s": 0.001}),
    ("edges jittered 2 ms (uniform)", {"edge_jitter_s": 0.002}),
]


def fuse(trace: Trace, recover_clock: bool, edges: bool, snap: bool = True) -> EnergyTimeline:
    """The trace fused as ``Trace.timeline`` does, with the buffer stamps snapped or not."""
    devices = sorted({r.device for r in trace.samples})
    tl = EnergyTimeline(devices=devices, recover_clock=recover_clock)
    if not snap:
        for name in devices:
            tl.device(name).stamps = None
    if edges:
        tl.add_edges(edges_from_steps(trace.steps), until=math.inf)
    feed_timeline(tl, trace.samples)
    return tl


def synthetic_table(seeds: int) -> None:
    print(
        f"1. Synthetic suite ({seeds} seeds x 20 s per duration): per-step error against the "
        "exact truth"
    )
    header = (
        f"{'step':>6} {'variant':<12} {'median %':>9} {'p90 %':>8} {'steps bias %':>13} "
        f"{'gaps bias %':>12} {'total %':>9}"
    )
    print(header)
    print("-" * len(header))
    for step_ms in DURATIONS_MS:
        runs = [step_suite_run(step_ms, s) for s in range(seeds)]
        for label, options in VARIANTS.items():
            errors, totals = [], []
            got = {"train": 0.0, "gap": 0.0}
            true = {"train": 0.0, "gap": 0.0}
            for run in runs:
                tl = fuse(run.trace, **options)

                def energy(a: float, b: float, tl: EnergyTimeline = tl) -> float:
                    return tl.energy_between(a, b)["gpu0"]

                for s in run.steps:
                    if s.phase in got:
                        e = energy(s.start, s.end)
                        got[s.phase] += e
                        true[s.phase] += s.energy_J
                        if s.phase == "train":
                            errors.append(abs(e / s.energy_J - 1))
                a, b = run.trace.fit_window
                totals.append(energy(a, b) / run.true_energy(a, b) - 1)
            print(
                f"{step_ms:>4}ms {label:<12} {100 * statistics.median(errors):9.2f} "
                f"{100 * float(np.percentile(errors, 90)):8.2f} "
                f"{100 * (got['train'] / true['train'] - 1):+13.2f} "
                f"{100 * (got['gap'] / true['gap'] - 1):+12.2f} "
                f"{100 * statistics.median(totals):+9.3f}"
            )
    print()


def variants_table(seeds: int) -> None:
    print(
        f"1b. Generator variants ({seeds} seeds x 20 s each): aggregate bias of all steps, "
        "default fusion"
    )
    header = f"{'variant':<38} {'5 ms':>8} {'10 ms':>8} {'15 ms':>8}"
    print(header)
    print("-" * len(header))
    for label, overrides in GENERATOR_VARIANTS:
        cells = []
        for step_ms in (5, 10, 15):
            got = true = 0.0
            for seed in range(100, 100 + seeds):
                run = step_suite_run(step_ms, seed, **overrides)
                tl = fuse(run.trace, recover_clock=True, edges=True)
                for s in run.train_steps:
                    got += tl.energy_between(s.start, s.end)["gpu0"]
                    true += s.energy_J
            cells.append(f"{100 * (got / true - 1):+7.2f}%")
        print(f"{label:<38} {' '.join(cells)}")
    print()


def _clock_history(trace: Trace, recover_clock: bool) -> list[tuple[float, float, str]]:
    tl = EnergyTimeline(devices=["gpu0"], recover_clock=recover_clock)
    tl.device("gpu0").clock.history = []
    tl.add(trace.samples)
    tl.flush()
    return tl.device("gpu0").clock.history


def increment_vs_buffer() -> None:
    print("2. h200-mlp-stall: counter increment vs buffer integral over the same span")
    trace = load_trace(bundled_trace("h200-mlp-stall"))
    bt = np.asarray([r.t for r in trace.samples if r.kind == BUFFER_W])
    bw = np.asarray([r.value for r in trace.samples if r.kind == BUFFER_W])
    cum = np.concatenate(([0.0], np.cumsum(bw[1:] * np.diff(bt))))
    value = {r.t: r.value for r in trace.samples if r.kind == COUNTER_J}
    a, b = trace.fit_window
    for label, recover in (("read times", False), ("recovered instants", True)):
        history = _clock_history(trace, recover)
        t = np.asarray([h[0] for h in history])
        u = np.asarray([h[1] for h in history])
        v = np.asarray([value[x] for x in t])
        d_counter = np.diff(v)
        d_buffer = np.diff(np.interp(u, bt, cum))
        # One update per span (reads 100-150 ms apart), inside the fit.
        keep = (u[:-1] >= a) & (u[1:] <= b) & (np.diff(t) < 0.15) & (d_buffer > 0)
        mismatch = np.abs(d_counter[keep] / d_buffer[keep] - 1)
        print(
            f"   spans between {label:<19}: median {100 * float(np.median(mismatch)):.2f} %, "
            f"p90 {100 * float(np.percentile(mismatch, 90)):.1f} % ({int(keep.sum())} spans)"
        )
    print()


def thinned_table() -> None:
    print("3. Real traces, counter reads thinned to one per 100 ms: energy between true updates")
    header = f"{'trace':<18} {'variant':<12} {'100 ms med %':>13} {'1 s med %':>10}  how"
    print(header)
    print("-" * len(header))
    for name in ("h200-square-wave", "h100-mlp"):
        trace = load_trace(bundled_trace(name))
        readings, updates = thinned_counter_reads(trace)
        counter = [(r.t, r.value) for r in trace.samples if r.kind == COUNTER_J]
        ct = np.asarray([c[0] for c in counter])
        cv = np.asarray([c[1] for c in counter])
        a, b = trace.fit_window
        inside = [x for x in updates if a + 2.0 <= x <= b]

        def true_energy(x: float, y: float, ct: np.ndarray = ct, cv: np.ndarray = cv) -> float:
            return float(cv[np.searchsorted(ct, y)] - cv[np.searchsorted(ct, x)])

        for label, recover in (("before", False), ("clock", True)):
            tl = EnergyTimeline(recover_clock=recover)
            tl.add(readings)
            tl.flush()

            def med(
                apart: int,
                tl: EnergyTimeline = tl,
                inside: list[float] = inside,
                true_energy: Callable[[float, float], float] = true_energy,
            ) -> float:
                errs = [
                    abs(tl.energy_between(x, y)["gpu0"] / true_energy(x, y) - 1)
                    for x, y in zip(inside, inside[apart:], strict=False)
                    if true_energy(x, y) > 0
                ]
                return 100 * statistics.median(errs)

            how = tl.notes()["gpu0"][0].replace("counter updates anchored by ", "")
            print(f"{name:<18} {label:<12} {med(1):13.2f} {med(10):10.3f}  {how}")
    print()


def _live_run(seconds: float, steps_per_s: float) -> tuple[list[Reading], list[tuple[float, str]]]:
    """One GPU for ``seconds``: counter polled every 102.3 ms, 20 ms buffer samples stamped
    with 2 ms of jitter (so the stamp snapping works as on the suite), steps."""
    rng = np.random.default_rng(0)
    step = 1.0 / steps_per_s
    readings = [
        Reading(0.1023 * i, "gpu0", COUNTER_J, 45.0 * i + float(rng.uniform(0, 5)))
        for i in range(int(seconds / 0.1023))
    ]
    readings += [
        Reading(
            0.02 * i + float(rng.uniform(-0.002, 0.002)),
            "gpu0",
            BUFFER_W,
            450.0 if (0.02 * i) % step < 0.7 * step else 120.0,
        )
        for i in range(int(seconds / 0.02))
    ]
    readings.sort(key=lambda r: r.t)
    edges: list[tuple[float, str]] = []
    for k in range(int(seconds * steps_per_s)):
        edges += [(k * step, "train"), (k * step + 0.7 * step, "")]
    return readings, edges


def _cpu_per_hour(options: dict[str, bool], seconds: float = 300.0) -> float:
    readings, edges = _live_run(seconds, steps_per_s=20.0)
    tl = EnergyTimeline(devices=["gpu0"], recover_clock=options["recover_clock"])
    if not options["snap"]:
        tl.device("gpu0").stamps = None
    chunk_s, i, t = 0.5, 0, 0.0
    start = time.process_time()
    if options["edges"]:
        tl.add_edges([], until=0.0)
    while i < len(readings):
        t += chunk_s
        j = i
        while j < len(readings) and readings[j].t <= t:
            j += 1
        tl.add(readings[i:j])
        if options["edges"]:
            tl.add_edges([e for e in edges if t - chunk_s < e[0] <= t], until=t)
        i = j
    tl.flush()
    return (time.process_time() - start) * 3600.0 / seconds


def cost_table(repeats: int) -> None:
    print(f"4. Cost (CPU seconds per hour of run, median of {repeats} interleaved repeats)")
    per_hour: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for _ in range(repeats):
        for label, options in VARIANTS.items():
            per_hour[label].append(_cpu_per_hour(options))
    base = statistics.median(per_hour["before"])
    for label, values in per_hour.items():
        m = statistics.median(values)
        spread = (max(values) - min(values)) / m if m else 0.0
        print(
            f"   {label:<12} {m:6.2f} s/h ({100 * m / 3600:.3f} % of a core), "
            f"{1000 * m / 3600 * 2.5:.2f} ms per 50-step log tick at 20 steps/s, "
            f"x{m / base:.2f} of before (spread {100 * spread:.0f} %)"
        )
    sizes = (400.0, 4000.0)  # 20 000 and 200 000 buffer samples
    took = []
    for seconds in sizes:
        readings, _ = _live_run(seconds, steps_per_s=20.0)
        tl = EnergyTimeline()
        start = time.perf_counter()
        tl.add(readings)
        tl.flush()
        took.append(time.perf_counter() - start)
    print(
        f"   backlog finalized at once: 20 000 samples {took[0]:.2f} s, 200 000 samples "
        f"{took[1]:.2f} s (x{took[1] / took[0]:.1f} for 10x the data)"
    )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="synthetic runs per duration")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the cost runs")
    parser.add_argument(
        "--variant-seeds", type=int, default=2, help="runs per generator variant and duration"
    )
    args = parser.parse_args()
    wall = time.perf_counter()
    sections: list[Callable[[], None]] = [
        lambda: synthetic_table(args.seeds),
        lambda: variants_table(args.variant_seeds),
        increment_vs_buffer,
        thinned_table,
        lambda: cost_table(args.repeats),
    ]
    for section in sections:
        section()
    print(f"(measured in one run, {time.perf_counter() - wall:.1f} s)")


if __name__ == "__main__":
    main()
