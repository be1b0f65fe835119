"""``lightning-watt report`` on long traces: time and peak memory for 6 h and 24 h runs.

Writes synthetic single-GPU recordings into a temporary folder, in the layout the meter
records (watt-trace v1.1): samples at the real rates (energy counter every 100 ms, driver
buffer samples every 20 ms, instant and 1 s average power fields every 100 ms: 80 rows a
second) and step edges at about 1.7 ms steps (host and GPU times, jittered, with a validation
block every 20 minutes), plus the fit's summary beside the trace, as the callback leaves a run
directory. Then runs the report on each in a fresh subprocess, in turn:

* ``table``: ``lightning-watt report RUN --no-plots`` (table and report.json),
* ``plots``: the same with the four per-run plots,
* ``trace only``: the trace given on its own (no summary: every number comes from the
  trace, through the report's energy engine; ``--trace-only`` to include it),
* ``baseline``: the same with another checkout's code (``--baseline PATH``), for a before and
  after measured in one run,

and prints wall time and peak RSS (``getrusage`` of the child) against the targets (10 s, 20 s,
500 MB), and the size of the files. Variants are interleaved per repetition.

``--agreement`` instead compares the report's two engines for a trace alone
(:mod:`lightning_watt.report.trace_energy`: the fused timeline and the vectorised path) on
every case of :mod:`lightning_watt.testing.trace_cases` and on a synthetic run of
``--agreement-hours`` (the same generator), with the time each took.

Usage::

    python benchmarks/report_scale.py                 # 6 h and 24 h, 1 repetition
    python benchmarks/report_scale.py --hours 1 6 --repeats 3 --trace-only
    python benchmarks/report_scale.py --agreement --agreement-hours 6
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

from lightning_watt.energy.trace import COMPACT_PER_S, COMPACT_STEPS_HEADER, FORMAT_V1_1  # noqa: E402

STEP_S = 0.0017
TARGETS = {"table": 10.0, "plots": 20.0, "trace only": 10.0, "baseline": 10.0}
TARGET_RSS_MB = 500.0

# Peak RSS from /proc (VmHWM): getrusage's ru_maxrss survives exec on Linux, so a child would
# report the parent's peak (this script holds an hour of generated rows at a time).
_CHILD = """
import resource, sys, time
sys.path.insert(0, {repo!r})
from lightning_watt.report.cli import main
t0 = time.perf_counter()
code = main({argv!r})
wall = time.perf_counter() - t0
try:
    with open("/proc/self/status") as fh:
        rss = next(int(x.split()[1]) for x in fh if x.startswith("VmHWM")) / 1024
except OSError:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"RESULT {{code}} {{wall:.3f}} {{rss:.1f}}")
"""


def _samples_hour(rng: np.random.Generator, t0: float, acc0: float) -> tuple[bytes, float]:
    """One hour of samples: power is a blocky workload (a new level every few seconds)."""
    n_buf = 3600 * 50
    tb = t0 + (np.arange(n_buf) + 1) * 0.02
    levels = rng.uniform(150, 650, size=3600 // 4 + 1)
    power = levels[((tb - t0) // 4).astype(int)] + rng.normal(0, 15, n_buf)
    power = np.clip(power, 0, None)
    tc = t0 + (np.arange(3600 * 10) + 1) * 0.1
    energy = acc0 + np.cumsum(power * 0.02)
    counter = np.round(energy[4::5], 3)
    inst = power[4::5]
    avg = np.convolve(power, np.ones(50) / 50, mode="full")[:n_buf][4::5]
    jitter = rng.uniform(0.0005, 0.003, size=len(tc))
    t = np.concatenate((tb, tc + jitter, tc + jitter + 2e-5, tc + jitter + 4e-5))
    code = np.concatenate(
        (np.zeros(n_buf, int), np.ones(len(tc), int), np.full(len(tc), 2), np.full(len(tc), 3))
    )
    val = np.concatenate((power, counter, inst, avg))
    order = np.argsort(t, kind="stable")
    names = ("gpu0,buffer_W", "gpu0,counter_J", "gpu0,instant_W", "gpu0,average_W")
    lines = [
        f"{t:.6f},{names[c]},{v:.3f}\n"
        for t, c, v in zip(
            t[order].tolist(), code[order].tolist(), val[order].tolist(), strict=True
        )
    ]
    return "".join(lines).encode(), float(energy[-1])


def _steps_hour(rng: np.random.Generator, first: bool) -> bytes:
    """One hour of 1.7 ms steps as the meter's recorder writes them (compact layout, runs of
    steps within 4 ms merged: spans of 3 steps), with a 30 s validation block every 20 minutes;
    host times jitter by tens of us, the GPU trails by 4-12 ms. The lag wanders slowly (a
    random walk kept in 4-12 ms), so GPU times stay in order, as a GPU finishes work in the
    order it was queued (lags drawn afresh per edge put ends before their starts)."""
    per_span = 3
    n = int(3600 / (STEP_S * per_span))
    units = COMPACT_PER_S
    busy = np.round(rng.normal(STEP_S * per_span - 1e-4, 40e-6, n) * units).astype(np.int64)
    idle = np.round(np.abs(rng.normal(1e-4, 10e-6, n)) * units).astype(np.int64)
    dh = np.empty(2 * n, dtype=np.int64)
    dh[0::2], dh[1::2] = idle, busy
    walk = np.cumsum(rng.normal(0.0, 2e-6, 2 * n)) + rng.uniform(0.004, 0.012)
    walk = 0.008 + np.abs((walk - 0.004) % 0.016 - 0.008) - 0.004  # reflected into 4-12 ms
    lead = np.round(walk * units).astype(np.int64)
    dg = np.maximum(dh + np.diff(lead, prepend=lead[0]), 0)
    phase_col = [""] * (2 * n)
    per_block = int(1200 / (STEP_S * per_span))
    for k in range(0, n, per_block):
        phase_col[2 * k] = "train"
        v = k + per_block - int(30 / (STEP_S * per_span))
        if 0 < v < n:
            phase_col[2 * v] = "val"
            if v + 1 < n:
                phase_col[2 * (v + 1)] = "val"
    letters = ["s", "e"] * n
    dindex = [0, per_span] * n
    rows = [
        f"{p},{e},{i},{h},{g}\n"
        for p, e, i, h, g in zip(phase_col, letters, dindex, dh.tolist(), dg.tolist(), strict=True)
    ]
    if first:
        rows[0] = f"train,s,0,{5 * units},{5 * units + int(lead[0])}\n"
    return "".join(rows).encode()


def write_run(directory: Path, hours: int, seed: int = 0) -> Path:
    """A run directory with ``watt_trace.*`` (v1.1, compact steps) and ``watt_summary.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    prefix = directory / "watt_trace"
    acc = 1000.0
    with gzip.open(f"{prefix}.samples.csv.gz", "wb", compresslevel=1) as fs:
        fs.write(b"t,device,kind,value\n")
        with gzip.open(f"{prefix}.steps.csv.gz", "wb", compresslevel=1) as fe:
            fe.write((",".join(COMPACT_STEPS_HEADER) + "\n").encode())
            for h in range(hours):
                text, end = _samples_hour(rng, 3600.0 * h, acc)
                fs.write(text)
                fe.write(_steps_hour(rng, h == 0))
                energy_j, acc = end - 1000.0, end
    meta = {
        "format": FORMAT_V1_1,
        "description": f"synthetic {hours} h single-GPU run (benchmarks/report_scale.py)",
        "fit_start": 5.0,
        "fit_end": 3600.0 * hours - 1.0,
        "meter_stop": 3600.0 * hours,
        "complete": True,
    }
    (directory / "watt_trace.meta.json").write_text(json.dumps(meta), encoding="utf-8")
    summary = {
        "format": "lightning-watt summary v1",
        "stage": "fit",
        "run_name": f"synthetic-{hours}h",
        "prefix": "watt/",
        "interrupted": False,
        "duration_s": meta["fit_end"] - meta["fit_start"],
        "energy_J": energy_j,
        "energy_kWh": energy_j / 3.6e6,
        "phases_J": {"train": energy_j * 0.9, "val": energy_j * 0.05, "gap": energy_j * 0.05},
        "outside_steps_share": 0.05,
        "mean_power_W": energy_j / (3600.0 * hours),
        "peak_power_W": 700.0,
        "devices": [{"name": "gpu0", "method": "synthetic [counter+buffer_W]"}],
        "methods": ["counter+buffer_W"],
        "epochs": [],
        "estimated": False,
        "replay": None,
        "score": {},
    }
    (directory / "watt_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return directory


def measure(argv: list[str], repo: Path = REPO) -> tuple[int, float, float]:
    """Exit code, wall seconds and peak RSS (MB) of one report in a fresh interpreter, with the
    package of the checkout ``repo``."""
    code = _CHILD.format(repo=str(repo), argv=argv)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=REPO
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            rc, wall, rss = line.split()[1:]
            return int(rc), float(wall), float(rss)
    raise RuntimeError(f"report failed: {out.stderr[-2000:]}")


def agreement(hours: int) -> None:
    """The vectorised engine against the fused timeline, case by case (percent)."""
    from lightning_watt.energy.trace_columns import load_columns
    from lightning_watt.testing.trace_cases import agreement_cases, compare_engines

    with tempfile.TemporaryDirectory() as tmp:
        cases = agreement_cases(tmp)
        if hours:
            run = write_run(Path(tmp) / "synthetic", hours)
            cases[f"synthetic {hours} h (this script's)"] = lambda: load_columns(run / "watt_trace")
        print(f"{'case':<36} {'total':>9} {'phase':>9} {'curve':>9} {'device':>9} {'s':>6}")
        for name, make in cases.items():
            cols = make()
            t0 = time.perf_counter()
            got = compare_engines(cols)
            took = time.perf_counter() - t0
            print(
                f"{name:<36} "
                + " ".join(f"{100 * got[k]:>+8.4f}%" for k in ("total", "phase", "curve", "device"))
                + f" {took:>6.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, nargs="+", default=[6, 24])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--trace-only", action="store_true", help="also the trace on its own")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout: its report on the trace alone runs too, interleaved (before/after)",
    )
    parser.add_argument("--agreement", action="store_true", help="compare the two engines")
    parser.add_argument("--agreement-hours", type=int, default=6)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} cpus")
    if args.agreement:
        agreement(args.agreement_hours)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for hours in args.hours:
            t0 = time.perf_counter()
            run = write_run(Path(tmp) / f"run{hours}h", hours)
            sizes = {p.name: p.stat().st_size / 1e6 for p in sorted(run.iterdir()) if p.is_file()}
            print(
                f"\n{hours} h run written in {time.perf_counter() - t0:.0f} s: "
                + ", ".join(f"{k} {v:.1f} MB" for k, v in sizes.items())
            )
            out = Path(tmp) / "out"
            variants = {
                "table": ["report", str(run), "-o", str(out), "--no-plots", "-q"],
                "plots": ["report", str(run), "-o", str(out), "-q", "--dpi", "80"],
            }
            if args.trace_only:
                bare = Path(tmp) / f"trace{hours}h"  # the same trace, no summary beside it
                bare.mkdir()
                for f in run.glob("watt_trace.*"):
                    os.link(f, bare / f.name)
                variants["trace only"] = ["report", str(bare), "-o", str(out), "--no-plots", "-q"]
                if args.baseline:
                    variants["baseline"] = variants["trace only"]
            results: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
            for _ in range(args.repeats):
                for name, argv in variants.items():
                    repo = args.baseline if name == "baseline" else REPO
                    rc, wall, rss = measure(argv, repo)
                    if rc != 0:
                        raise SystemExit(f"{name}: exit status {rc}")
                    results[name].append((wall, rss))
            print(f"{'variant':<11} {'wall s (min..max)':>20} {'target':>7} {'peak RSS MB':>12}")
            for name, got in results.items():
                walls = [w for w, _ in got]
                rss = max(r for _, r in got)
                print(
                    f"{name:<11} {np.median(walls):>8.1f} ({min(walls):.1f}..{max(walls):.1f})"
                    f" {TARGETS[name]:>7.0f} {rss:>8.0f} / {TARGET_RSS_MB:.0f}"
                )
            if "baseline" in results:
                pairs = zip(results["baseline"], results["trace only"], strict=True)
                ratios = [b / t for (b, _), (t, _) in pairs]
                print(
                    f"trace alone, baseline / this checkout: {np.median(ratios):.1f}x "
                    f"({min(ratios):.1f}..{max(ratios):.1f}), paired per repetition"
                )


if __name__ == "__main__":
    main()
