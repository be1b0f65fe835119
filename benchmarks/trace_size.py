"""Size and cost of recording step edges: bytes per hour and microseconds per edge.

Writes 10 simulated minutes of step edges through :class:`TraceWriter` (the meter's recorder)
for several step lengths, layouts, gzip levels and ``merge_steps_s``, and reports the steps
file's size scaled to an hour and the writer's time per edge (format + compress, as
``write_steps`` does on whichever thread calls it). The edges are modelled on the bundled real
traces: host times jitter by tens of microseconds from step to step, and the GPU time
(``t_gpu``) trails the host by 4-12 ms, drawn afresh per edge (the real traces' lead changes
by about 2 ms from one edge to the next), so the deltas do not compress away.

Usage::

    python benchmarks/trace_size.py
    python benchmarks/trace_size.py --minutes 2 --steps-ms 1 1.7 100
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from lightning_watt.energy.trace import StepEdge, TraceWriter, load_trace


def edges(step_s: float, seconds: float, seed: int = 0) -> list[StepEdge]:
    """Train steps of about ``step_s``, with a GPU time 4-12 ms behind each host edge."""
    rng = np.random.default_rng(seed)
    n = int(seconds / step_s)
    busy = rng.normal(step_s * 0.94, max(2e-6, step_s * 0.02), n)
    idle = np.abs(rng.normal(step_s * 0.06, max(1e-6, step_s * 0.005), n))
    starts = 5.0 + np.concatenate(([0.0], np.cumsum(busy + idle)[:-1]))
    ends = starts + busy
    lead = rng.uniform(0.004, 0.012, 2 * n)
    out = []
    for i in range(n):
        s, e = float(starts[i]), float(ends[i])
        out.append(StepEdge("train", "start", i, s, s + float(lead[2 * i])))
        out.append(StepEdge("train", "end", i + 1, e, e + float(lead[2 * i + 1])))
    return out


def measure(
    batch: list[StepEdge], folder: Path, layout: str, level: int, merge: float, seconds: float
) -> tuple[float, float, int]:
    """MB per hour of the steps file, us per edge for write_steps, edges read back."""
    prefix = folder / f"{layout}-{level}-{merge}"
    writer = TraceWriter(prefix, steps_layout=layout, compresslevel=level, merge_steps_s=merge)
    t0 = time.perf_counter()
    # As the callback hands them over: a log interval's edges at a time.
    for i in range(0, len(batch), 100):
        writer.write_steps(batch[i : i + 100])
    writer.close()
    cost = (time.perf_counter() - t0) / len(batch) * 1e6
    size = os.path.getsize(f"{prefix}.steps.csv.gz")
    return size / 1e6 * 3600 / seconds, cost, len(load_trace(prefix).steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--steps-ms", type=float, nargs="+", default=[1.0, 1.7, 100.0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seconds = args.minutes * 60
    variants = [
        ("v1", 9, 0.0),  # before: every float in full, level 9
        ("v1", 6, 0.0),
        ("compact", 1, 0.0),
        ("compact", 6, 0.0),
        ("compact", 9, 0.0),
        ("compact", 6, 0.004),
        ("compact", 6, 0.01),
    ]
    print(f"{args.minutes:g} simulated minutes per case, {args.repeats} interleaved repeats")
    print(
        f"{'step':>7} {'layout':>8} {'level':>5} {'merge':>6} {'MB/h':>7} "
        f"{'us/edge (min..max)':>20} {'edges kept':>11}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for step_ms in args.steps_ms:
            batch = edges(step_ms / 1000, seconds)
            got: dict[tuple[str, int, float], list[tuple[float, float, int]]] = {}
            for _ in range(args.repeats):
                for v in variants:
                    got.setdefault(v, []).append(measure(batch, Path(tmp), *v, seconds))
            for (layout, level, merge), results in got.items():
                costs = [c for _, c, _ in results]
                mb, _, kept = results[0]
                print(
                    f"{step_ms:>5g}ms {layout:>8} {level:>5} {merge * 1000:>4g}ms {mb:>7.2f} "
                    f"{np.median(costs):>7.2f} ({min(costs):.2f}..{max(costs):.2f}) "
                    f"{kept / len(batch):>10.0%}"
                )


if __name__ == "__main__":
    main()
