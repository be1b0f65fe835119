"""Per-rank cost of the all-rank reduction of a log interval, against the world size.

Starts 2, 4 and 8 processes (``--worlds``) on this machine, joined by ``torch.distributed``
over gloo on the CPU. Each rank replays a recorded GPU trace (``ReplaySource.of_fit``, the
bundled H200 and H100 recordings in turn, a device of its own per rank), marks ``--steps``
train steps per log interval (each a ``time.sleep`` of ``--step-ms``: no compute, so that
oversubscribed ranks still step at the same pace) and then calls
:meth:`~lightning_watt.attribution.accountant.EnergyAccountant.log_values`, the collective of
a log row, as ``WattCallback`` does at every tick.

Timed per rank and interval:

* ``reduce``: ``perf_counter`` around the reduction itself (one ``all_reduce`` of four float64
  values). A ``dist.barrier()`` just before each log row makes the ranks arrive nearly
  together; what is left of the skew is removed by taking, per log row, the shortest time any
  rank spent in it (the last rank to arrive waits for no one: its time is the collective's
  own). Reported both ways: ``own`` (that minimum) and ``paid`` (every rank's time, waits for
  late ranks included, which is what a rank's training thread loses);
* ``log_values``: the whole call on the training thread (cached numbers + the reduction);
* ``bare``: the same all_reduce alone, before the meter and the books start in the process
  (what gloo costs on this machine with nothing of ours around it);
* once per stage: ``begin`` (an ``all_gather_object`` of device keys) and ``finish`` (the final
  books of every rank gathered and merged);
* what a job whose default group is NCCL pays instead: there a log row is summed on a gloo
  group of the same ranks (no tensor on the GPU, so no wait for its queue), made once per
  process at the first stage's ``begin``: the time to make that group, and a row's reduction
  on it (``own``, as above).

With more processes than cores (8 on a 2-core machine) the ranks are descheduled in the middle
of a collective, and the timed reduction includes that: the numbers are an upper bound for a
machine with a core per rank. The script prints the cores it saw.

Then it fits ``reduce_p50 = a + b * (P - 1)`` (ring all-reduce: 2(P-1) latency-bound steps
for a vector this small) and ``a + c * log2(P)`` (a tree) over the measured world sizes, and
extrapolates both to a 64-rank, 8-node run with the assumptions printed next to the numbers.

Usage::

    python benchmarks/multiprocess.py
    python benchmarks/multiprocess.py --worlds 2 4 --intervals 100
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import sys
import tempfile
import time
import warnings
from time import perf_counter
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))  # run from a checkout

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TRACES = ("h200-mlp-stall", "h100-mlp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, world: int, port: int, args: dict[str, Any], out: str) -> None:
    """One process: join the group, run the intervals, write its timings to ``out``."""
    import json

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from lightning_watt import EnergyMeter, ReplaySource
    from lightning_watt.attribution.accountant import EnergyAccountant
    from lightning_watt.attribution.distributed import sum_across_ranks

    reduce_s: list[float] = []

    def timed_reduce(values: Any, device: Any) -> list[float]:
        t0 = perf_counter()
        out = sum_across_ranks(values, device)
        reduce_s.append(perf_counter() - t0)
        return out

    # The bare collective first, before any meter or books thread runs in this process: what
    # the same all_reduce costs here with nothing of ours around it.
    bare_s: list[float] = []
    for _ in range(args["intervals"]):
        dist.barrier()
        t0 = perf_counter()
        sum_across_ranks([1.0, 2.0, 3.0, 4.0])
        bare_s.append(perf_counter() - t0)
    # What a job whose default group is NCCL pays for the log rows' gloo group (made once, at
    # the stage's begin) and for a row's reduction on it: the same ranks, a group of their own.
    dist.barrier()
    t0 = perf_counter()
    group = dist.new_group(backend="gloo")
    group_s = perf_counter() - t0
    group_row_s: list[float] = []
    for _ in range(args["intervals"]):
        dist.barrier()
        t0 = perf_counter()
        tensor = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
        dist.all_reduce(tensor, group=group)
        tensor.tolist()
        group_row_s.append(perf_counter() - t0)
    books = EnergyAccountant(reduce=timed_reduce)
    source = ReplaySource.of_fit(TRACES[rank % len(TRACES)], uuid_prefix=f"rank{rank}")
    dist.barrier()
    t0 = perf_counter()
    books.begin("fit", EnergyMeter([source]), None, rank=rank, world_size=world)
    begin_s = perf_counter() - t0
    log_s: list[float] = []
    step = 0
    for _ in range(args["intervals"]):
        for _ in range(args["steps"]):
            books.mark("train", "start", step, 0)
            time.sleep(args["step_s"])
            books.mark("train", "end", step, 0)
            step += 1
        dist.barrier()  # arrive together: what follows is the reduction's own time
        t0 = perf_counter()
        books.log_values()
        log_s.append(perf_counter() - t0)
    dist.barrier()
    t0 = perf_counter()
    summary = books.finish()
    finish_s = perf_counter() - t0
    assert summary["steps"]["train"] == step, summary["steps"]  # ranks step together
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(
            {
                "reduce_s": reduce_s,
                "bare_s": bare_s,
                "log_s": log_s,
                "begin_s": begin_s,
                "finish_s": finish_s,
                "group_s": group_s,
                "group_row_s": group_row_s,
                "measured_in": sorted(set(summary["measured_in"].values())),
            },
            fh,
        )
    dist.destroy_process_group()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _world(world: int, args: argparse.Namespace) -> dict[str, float]:
    import json

    with tempfile.TemporaryDirectory(prefix="watt-mp-") as out:
        config = {"intervals": args.intervals, "steps": args.steps, "step_s": args.step_ms / 1e3}
        t0 = time.monotonic()
        mp.start_processes(
            _rank, args=(world, _free_port(), config, out), nprocs=world, start_method="spawn"
        )
        wall = time.monotonic() - t0
        ranks = []
        for r in range(world):
            with open(os.path.join(out, f"rank{r}.json")) as fh:
                ranks.append(json.load(fh))
    # begin and finish gather objects, not through ``reduce``: every timed reduce is a log row's.
    reduce_us = [1e6 * s for r in ranks for s in r["reduce_s"]]
    own_us = [1e6 * min(row) for row in zip(*(r["reduce_s"] for r in ranks), strict=True)]
    log_us = [1e6 * s for r in ranks for s in r["log_s"]]
    bare_us = [1e6 * min(row) for row in zip(*(r["bare_s"] for r in ranks), strict=True)]
    group_us = [1e6 * min(row) for row in zip(*(r["group_row_s"] for r in ranks), strict=True)]
    return {
        "bare_p50": _pct(bare_us, 50),
        "world": world,
        "own_p50": _pct(own_us, 50),
        "own_p90": _pct(own_us, 90),
        "reduce_p50": _pct(reduce_us, 50),
        "reduce_p90": _pct(reduce_us, 90),
        "reduce_p99": _pct(reduce_us, 99),
        "log_p50": _pct(log_us, 50),
        "log_p99": _pct(log_us, 99),
        "begin_ms": 1e3 * max(r["begin_s"] for r in ranks),
        "group_ms": 1e3 * max(r["group_s"] for r in ranks),
        "group_row_p50": _pct(group_us, 50),
        "finish_ms": 1e3 * max(r["finish_s"] for r in ranks),
        "wall_s": wall,
        "measured_in": ", ".join(sorted({m for r in ranks for m in r["measured_in"]})),
    }


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares ``y = a + b x``."""
    mx, my = statistics.mean(xs), statistics.mean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - b * mx, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--intervals", type=int, default=200, help="log rows per rank")
    parser.add_argument("--steps", type=int, default=5, help="train steps per log interval")
    parser.add_argument("--step-ms", type=float, default=2.0, help="sleep per step")
    args = parser.parse_args()
    if any(w < 2 for w in args.worlds):
        parser.error("--worlds: each world size must be at least 2")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    print("lightning-watt: the all-rank reduction per log interval (benchmarks/multiprocess.py)")
    print(
        f"machine: {cores} usable cores (load average {load:.1f}); torch {torch.__version__}, "
        f"gloo on the CPU; {args.intervals} log rows of {args.steps} steps ({args.step_ms} ms "
        "each) per rank"
    )
    rows = []
    for world in args.worlds:
        r = _world(world, args)
        rows.append(r)
        note = " (oversubscribed: more ranks than cores)" if world > (cores or 1) else ""
        print(
            f"  {world} ranks{note}: reduction own p50 {r['own_p50']:.0f} µs, p90 "
            f"{r['own_p90']:.0f} µs (the bare all_reduce alone: p50 {r['bare_p50']:.0f} µs); "
            f"paid p50 {r['reduce_p50']:.0f} µs, p90 "
            f"{r['reduce_p90']:.0f} µs, p99 {r['reduce_p99']:.0f} µs; log_values p50 "
            f"{r['log_p50']:.0f} µs, p99 {r['log_p99']:.0f} µs; once per stage: begin "
            f"{r['begin_ms']:.1f} ms, finish {r['finish_ms']:.1f} ms; under NCCL, once per "
            f"process: the rows' gloo group made in {r['group_ms']:.1f} ms, a row on it p50 "
            f"{r['group_row_p50']:.0f} µs own; meters and books in {r['measured_in']}  "
            f"({r['wall_s']:.0f} s)"
        )
    if len(rows) < 2:
        return
    worlds = [float(r["world"]) for r in rows]
    p50 = [r["own_p50"] for r in rows]
    a_ring, b_ring = _fit([w - 1 for w in worlds], p50)
    a_tree, c_tree = _fit([math.log2(w) for w in worlds], p50)
    if b_ring < 0 or c_tree < 0:
        print("  (a negative slope: the machine's noise exceeds the growth; read it as flat)")
        b_ring, c_tree = max(b_ring, 0.0), max(c_tree, 0.0)
        a_ring = a_tree = statistics.mean(p50)
    print(
        f"  fit over {', '.join(str(int(w)) for w in worlds)} ranks: own reduction p50 = "
        f"{a_ring:.0f} + {b_ring:.1f} x (P-1) µs (ring), or {a_tree:.0f} + {c_tree:.1f} x log2 P "
        "µs (tree)"
    )
    ring64, tree64 = a_ring + b_ring * 63, a_tree + c_tree * 6
    print(
        f"  64 ranks, one machine's loopback at this per-hop cost: {ring64 / 1e3:.2f} ms (ring), "
        f"{tree64 / 1e3:.2f} ms (tree) per log row"
    )
    # 8 nodes: the hops that cross nodes cost a network round trip instead of loopback.
    for hop_us in (20.0, 50.0):
        ring = a_ring + b_ring * 56 + 2 * 7 * hop_us
        tree = a_tree + c_tree * 3 + 3 * 2 * hop_us
        print(
            f"  64 ranks on 8 nodes, {hop_us:.0f} µs per inter-node hop: ~{ring / 1e3:.2f} ms "
            "(ring: 56 local hops at the fitted cost + 14 inter-node), "
            f"~{tree / 1e3:.2f} ms (tree: 3 local levels + 3 inter-node levels, 2 hops each) "
            "per log row"
        )


if __name__ == "__main__":
    main()
