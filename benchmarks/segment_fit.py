"""CPU time of the segment fit per buffer tile: the fast path against the implementation it
replaced (kept as the reference in ``tests/test_segment_fit_reference.py``), in one run.

Back-to-back steps of ``--step-ms`` (1.5 and 1 ms by default) with a short gap now and then
(at 120 W; or at 5 W every 4th step, where the fit pins negative powers),
on 20 ms buffer tiles with 2 % jitter (the window holds ~75 or ~110 segments and 6 tiles, as on
``h200-mlp-stall`` at those steps); every tile holds edges, so every tile is fitted. Both models
split the same tiles in interleaved rounds (``--rounds``), each round timed with
``time.thread_time``; reported per step length: µs per tile (median over rounds, with the
range) for each, the ratio of the medians, and the largest difference of the split energies
(relative to the tile's joules) with the knots' times compared exactly.

Usage::

    python benchmarks/segment_fit.py
    python benchmarks/segment_fit.py --step-ms 1.5 --rounds 15
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))  # run from a checkout
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))

from test_segment_fit_reference import ReferenceEdgeModel

from lightning_watt.energy.segment_fit import EdgeModel


def _window(
    step_s: float, gap_w: float, seconds: float, seed: int
) -> tuple[list, list[float], list[float]]:
    """Edges, tile stamps and cumulative joules: steps at ~450 W, gaps at ``gap_w``."""
    rng = np.random.default_rng(seed)
    edges: list[tuple[float, str]] = []
    t, k = 0.0, 0
    while t < seconds:
        edges.append((t, "train"))
        t += step_s * rng.uniform(0.9, 1.1)
        if k % (40 if gap_w > 50 else 4) == 3:  # now and then a gap (a dataloader stall)
            edges.append((t, ""))
            t += rng.uniform(0.001, 0.004)
        k += 1
    ts = np.cumsum(np.r_[0.0, rng.uniform(0.0196, 0.0204, int(seconds / 0.02) + 2)])
    grid = np.linspace(0.0, ts[-1], 200_001)
    where = np.searchsorted([e[0] for e in edges], grid, side="right") - 1
    watts = np.where([edges[j][1] == "train" if j >= 0 else False for j in where], 450.0, gap_w)
    watts *= rng.uniform(0.9, 1.1, len(grid))
    cum = np.r_[0.0, np.cumsum(0.5 * (watts[1:] + watts[:-1]) * np.diff(grid))]
    return edges, ts.tolist(), np.interp(ts, grid, cum).tolist()


def _split_all(model: EdgeModel, ts: list[float], cum: list[float]) -> tuple[float, list]:
    model._cache.clear()
    t0 = time.thread_time()
    out = [model.split(ts, cum, i) for i in range(1, len(ts))]
    return time.thread_time() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-ms", type=float, nargs="+", default=[1.5, 1.0])
    parser.add_argument(
        "--gap-w",
        type=float,
        nargs="+",
        default=[120.0, 5.0],
        help="gap powers: at 120 W a gap every 40 steps, below 50 W every 4 (the fit then pins "
        "negative gap powers at zero: the NNLS rounds)",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of tiles per round")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    if not args.seconds > 0 or args.rounds < 1 or not all(x > 0 for x in args.step_ms):
        parser.error("--step-ms and --seconds must be positive, --rounds at least 1")
    for step_ms, gap_w in itertools.product(args.step_ms, args.gap_w):
        edges, ts, cum = _window(step_ms / 1e3, gap_w, args.seconds, seed=int(step_ms * 1000))
        models = {"reference": ReferenceEdgeModel(), "fast": EdgeModel()}
        for model in models.values():
            model.add(edges, until=math.inf)
        costs: dict[str, list[float]] = {name: [] for name in models}
        splits: dict[str, list] = {}
        for _ in range(args.rounds):
            for name, model in models.items():
                cost, splits[name] = _split_all(model, ts, cum)
                costs[name].append(1e6 * cost / (len(ts) - 1))
        worst = 0.0
        for i, ((want_t, want_e), (got_t, got_e)) in enumerate(
            zip(splits["reference"], splits["fast"], strict=True), start=1
        ):
            assert got_t == want_t, f"tile {i}: knots differ"
            joules = cum[i] - cum[i - 1]
            worst = max([worst, *(abs(g - w) / joules for g, w in zip(got_e, want_e, strict=True))])
        med = {name: statistics.median(c) for name, c in costs.items()}
        print(
            f"{step_ms} ms steps, gaps at {gap_w:g} W, {len(ts) - 1} tiles x {args.rounds} rounds: "
            + ", ".join(
                f"{n} {med[n]:.1f} µs/tile ({min(c):.1f}-{max(c):.1f})" for n, c in costs.items()
            )
            + f"; reference/fast {med['reference'] / med['fast']:.2f}x; "
            f"energies within {worst:.1e} of a tile's joules, knots identical"
        )


if __name__ == "__main__":
    main()
