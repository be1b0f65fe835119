"""Accuracy of the energy timeline, per kind of reading, on real and synthetic traces.

Real traces (the bundled H100/H200 recordings): the reference is the hardware's own integral,
the energy counter interpolated between its readings (:meth:`Trace.counter_energy`). For each
set of kinds a GPU might offer, the script fuses only those kinds and reports

* ``fit %``: the error of the whole fit's energy,
* ``1 s interp %``: the median absolute error over fixed 1 s windows of the fit, against the
  counter interpolated linearly between its readings (the reference the tests use),
* ``1 s upd %``: the median absolute error over windows of ten counter updates (about 1 s),
  from one first reading of a new counter value to another. Where the counter is read in a
  tight loop (``h200-square-wave``, ``h100-mlp``) these edges are the update instants to within
  a few ms, so this is the sharper reference; where it is polled every 100 ms
  (``h200-mlp-stall``) an edge may lag its update by up to 100 ms, so it is the noisier one.
  Readings that include the counter equal it at these edges by construction (0 %).

Synthetic traces (:func:`lightning_watt.testing.synthetic.synthetic_run`, several seeds): the
reference
is the exact truth, so the script also reports the median absolute error per training step,
for steps of 20 ms and longer (``step>=20ms med %``) and for all steps (``all steps med %``).

Usage::

    python benchmarks/accuracy.py
    python benchmarks/accuracy.py --seeds 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))  # run from a checkout

from lightning_watt.energy.readings import AVERAGE_W, BUFFER_W, COUNTER_J, INSTANT_W
from lightning_watt.energy.trace import Trace, bundled_trace, load_trace
from lightning_watt.testing.synthetic import synthetic_run

KIND_SETS: list[tuple[str, frozenset[str] | None]] = [
    ("all (fused)", None),
    ("counter+buffer", frozenset({COUNTER_J, BUFFER_W})),
    ("counter+instant", frozenset({COUNTER_J, INSTANT_W})),
    ("counter", frozenset({COUNTER_J})),
    ("buffer", frozenset({BUFFER_W})),
    ("instant", frozenset({INSTANT_W})),
    ("average", frozenset({AVERAGE_W})),
]
REAL = ("h100-mlp", "h200-mlp-stall", "h200-square-wave")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.3f}"


def _abs_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.3f}"


def _windows(start: float, end: float, width: float) -> list[tuple[float, float]]:
    n = int((end - start) // width)
    return [(start + i * width, start + (i + 1) * width) for i in range(n)]


def _median_rel_error(
    estimate: Callable[[float, float], float],
    truth: Callable[[float, float], float],
    spans: list[tuple[float, float]],
) -> float | None:
    errors = []
    for a, b in spans:
        ref = truth(a, b)
        if ref > 0:
            errors.append(abs(estimate(a, b) / ref - 1.0))
    return statistics.median(errors) if errors else None


def _counter_windows(
    trace: Trace, updates_per_window: int = 10
) -> dict[tuple[float, float], float]:
    """Windows between counter updates (the first reading of each new value) and their exact
    energy, inside the fit. The trace's first reading is no update: its value is as of one up
    to a period before it."""
    start, end = trace.fit_window
    updates: list[tuple[float, float]] = []
    previous = None
    for r in trace.samples:
        if r.device == "gpu0" and r.kind == COUNTER_J:
            if previous is not None and r.value != previous and start <= r.t <= end:
                updates.append((r.t, r.value))
            previous = r.value
    out = {}
    for (t0, v0), (t1, v1) in zip(
        updates[::updates_per_window], updates[updates_per_window::updates_per_window], strict=False
    ):
        if v1 > v0:
            out[(t0, t1)] = v1 - v0
    return out


def real_table() -> None:
    print("Real traces: error against the energy counter")
    header = (
        f"{'trace':<18} {'kinds':<16} {'fit J':>9} {'fit %':>8} {'1 s interp %':>12} "
        f"{'1 s upd %':>10} {'methods'}"
    )
    print(header)
    print("-" * len(header))
    for name in REAL:
        trace = load_trace(bundled_trace(name))
        start, end = trace.fit_window
        ref = trace.counter_energy("gpu0", start, end)
        windows = _counter_windows(trace)

        def counter(a: float, b: float, windows: dict = windows) -> float:
            return windows[(a, b)]

        def interpolated(a: float, b: float, trace: Trace = trace) -> float:
            return trace.counter_energy("gpu0", a, b)

        for label, kinds in KIND_SETS:
            if kinds is not None and not kinds <= set(trace.kinds):
                continue
            tl = trace.timeline(kinds)

            def energy(a: float, b: float, tl=tl) -> float:
                return tl.energy_between(a, b)["gpu0"]

            total = energy(start, end)
            fixed = _median_rel_error(energy, interpolated, _windows(start, end, 1.0))
            win = _median_rel_error(energy, counter, list(windows))
            methods = ", ".join(tl.methods()["gpu0"][:2])
            print(
                f"{name:<18} {label:<16} {total:9.1f} {_pct(total / ref - 1):>8} "
                f"{_abs_pct(fixed):>12} {_abs_pct(win):>10} {methods}"
            )
        print(f"{'':<18} {'(counter)':<16} {ref:9.1f}   ({len(windows)} windows of 10 updates)")
    print()


def synthetic_table(seeds: int) -> None:
    print(
        f"Synthetic traces ({seeds} seeds, 30 s each): error against the exact truth "
        "(median over seeds of each statistic)"
    )
    header = (
        f"{'variant':<22} {'kinds':<16} {'fit %':>8} {'|fit| max %':>11} {'1 s med %':>10} "
        f"{'step>=20ms med %':>17} {'all steps med %':>16}"
    )
    print(header)
    print("-" * len(header))
    for variant, kwargs in (
        ("counter at update", {}),
        ("counter read 30 ms late", {"counter_delay_s": 0.03}),
    ):
        runs = [synthetic_run(seed=s, **kwargs) for s in range(seeds)]  # type: ignore[arg-type]
        for label, kinds in KIND_SETS:
            fits, wins, long_steps, all_steps = [], [], [], []
            for run in runs:
                tl = run.trace.timeline(kinds)
                start, end = run.trace.fit_window

                def energy(a: float, b: float, tl=tl) -> float:
                    return tl.energy_between(a, b)["gpu0"]

                fits.append(energy(start, end) / run.true_energy(start, end) - 1.0)
                wins.append(
                    _median_rel_error(energy, run.true_energy, _windows(start, end, 1.0)) or 0.0
                )
                steps = run.train_steps
                long_steps.append(
                    _median_rel_error(
                        energy,
                        run.true_energy,
                        [(s.start, s.end) for s in steps if s.duration >= 0.02 - 1e-9],
                    )
                    or 0.0
                )
                all_steps.append(
                    _median_rel_error(energy, run.true_energy, [(s.start, s.end) for s in steps])
                    or 0.0
                )
            print(
                f"{variant:<22} {label:<16} {_pct(statistics.median(fits)):>8} "
                f"{_abs_pct(max(abs(f) for f in fits)):>11} "
                f"{_abs_pct(statistics.median(wins)):>10} "
                f"{_abs_pct(statistics.median(long_steps)):>17} "
                f"{_abs_pct(statistics.median(all_steps)):>16}"
            )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="synthetic runs per row")
    args = parser.parse_args()
    wall = time.perf_counter()
    real_table()
    synthetic_table(args.seeds)
    print(f"(measured in one run, {time.perf_counter() - wall:.1f} s)")


if __name__ == "__main__":
    main()
