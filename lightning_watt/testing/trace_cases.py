"""Recorded traces of every shape a report meets, and how far the report's two energy engines
(:mod:`lightning_watt.report.trace_energy`) are apart on each: for tests and
``benchmarks/report_scale.py --agreement``.

The cases: the three bundled real GPU traces; a killed run (a recording never closed, its
samples stream cut mid-way, the counter polled on its own clock so reads are 0-100 ms stale);
power fields only (the counter rows removed); CPU devices (RAPL package and DRAM counters
read every 0.5 s, no power, and a CPU estimate); a GPU lost mid-run and estimated from there
(as the meter records an unmeasured device); a counter lost while power goes on; two GPUs
replayed side by side (two bundled traces as ``gpu0`` and ``gpu1``).

Example:
    >>> cols = power_only_case()
    >>> "counter_J" in cols.kinds
    False
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lightning_watt.energy.readings import COUNTER_J, ESTIMATE_W, Reading
from lightning_watt.energy.trace import StepEdge, Trace, TraceWriter, bundled_trace, load_trace
from lightning_watt.energy.trace_columns import TraceColumns, load_columns
from lightning_watt.testing.synthetic import synthetic_run

BUNDLED = ("h100-mlp", "h200-mlp-stall", "h200-square-wave")


def bundled_case(name: str) -> TraceColumns:
    return load_columns(bundled_trace(name))


def killed_run_case(folder: str | Path | None = None, seed: int = 3) -> TraceColumns:
    """A synthetic minute recorded by :class:`TraceWriter` and never closed (flushed only):
    the samples stream stops mid-way and the meta has no ``complete``."""
    run = synthetic_run(seed=seed, duration_s=60.0, counter_read_interval_s=0.1)
    prefix = Path(folder or tempfile.mkdtemp()) / "killed"
    writer = TraceWriter(prefix, merge_steps_s=0)
    writer.meta.update(run.trace.meta)
    writer.write_samples(run.trace.samples)
    writer.write_steps(run.trace.steps)
    writer.flush()  # what a kill leaves: flushed, never closed
    return load_columns(prefix)


def power_only_case() -> TraceColumns:
    """``h200-mlp-stall`` without its counter: power fields and the driver buffer only."""
    trace = load_trace(bundled_trace("h200-mlp-stall"))
    samples = [r for r in trace.samples if r.kind != COUNTER_J]
    return TraceColumns.from_trace(Trace(samples, trace.steps, trace.meta))


def cpu_case(seed: int = 5) -> TraceColumns:
    """Two minutes of a CPU run: RAPL package and DRAM counters (joules, unwrapped, as the
    RAPL source emits them) read every 0.5 s, an estimated CPU every second, and host-only
    step edges (no GPU times)."""
    rng = np.random.default_rng(seed)
    ms = np.arange(120_000) / 1000
    # A busy/idle pattern: 2-8 s blocks at 20-95 W on the package, DRAM a fifth of it.
    level = np.repeat(rng.uniform(20, 95, 40), 3000)[: len(ms)]
    package = level + rng.normal(0, 3, len(ms)).clip(-10, 10)
    cum = np.cumsum(package) / 1000
    samples: list[Reading] = []
    for i, t in enumerate(np.arange(0.25, 120, 0.5)):
        j = int(t * 1000)
        samples.append(Reading(float(t), "cpu0", COUNTER_J, 5000.0 + float(cum[j])))
        samples.append(Reading(float(t) + 1e-4, "dram0", COUNTER_J, 80.0 + float(cum[j]) / 5))
        if i % 2 == 0:
            samples.append(Reading(float(t) + 2e-4, "cpu1", ESTIMATE_W, float(level[j]) * 0.8))
    steps: list[StepEdge] = []
    t = 2.0
    for k in range(200):
        phase = "val" if k % 20 >= 17 else "train"
        length = float(rng.uniform(0.2, 0.6))
        steps.append(StepEdge(phase, "start", k, t))
        steps.append(StepEdge(phase, "end", k, t + length))
        t += length + float(rng.uniform(0.005, 0.05))
    meta = {"format": "watt-trace v1", "fit_start": 1.0, "fit_end": min(t + 1.0, 119.0)}
    return TraceColumns.from_trace(Trace(samples, steps, meta))


def lost_gpu_case(seed: int = 6, lost_at: float = 25.0) -> TraceColumns:
    """A GPU lost mid-run: its counter and power stop at ``lost_at`` and, as the meter records
    an unmeasured device, an estimate of its mean power follows from its last reading, then
    every 0.5 s to the end."""
    run = synthetic_run(seed=seed, duration_s=40.0)
    kept = [r for r in run.trace.samples if r.t < lost_at]
    watts = run.true_energy(lost_at - 5.0, lost_at) / 5.0
    last = max(r.t for r in kept)
    estimates = [
        Reading(float(t), "gpu0", ESTIMATE_W, watts)
        for t in (last, *np.arange(lost_at + 0.5, 40.0, 0.5))
    ]
    return TraceColumns.from_trace(Trace([*kept, *estimates], run.trace.steps, run.trace.meta))


def counter_lost_case(seed: int = 8, lost_at: float = 20.0) -> TraceColumns:
    """The counter stops at ``lost_at`` (its reader failed) while the power readers go on."""
    run = synthetic_run(seed=seed, duration_s=60.0, counter_read_interval_s=0.1)
    kept = [r for r in run.trace.samples if r.kind != COUNTER_J or r.t < lost_at]
    return TraceColumns.from_trace(Trace(kept, run.trace.steps, run.trace.meta))


def two_gpu_case() -> TraceColumns:
    """``h200-mlp-stall`` as ``gpu0`` and ``h100-mlp`` as ``gpu1``, side by side on one clock
    (what a replay of both records), with the first trace's steps and fit window."""
    a = load_trace(bundled_trace("h200-mlp-stall"))
    b = load_trace(bundled_trace("h100-mlp"))
    renamed = [Reading(r.t, "gpu1", r.kind, r.value) for r in b.samples]
    samples = sorted([*a.samples, *renamed], key=lambda r: r.t)
    return TraceColumns.from_trace(Trace(samples, a.steps, a.meta))


def agreement_cases(folder: str | Path | None = None) -> dict[str, Callable[[], TraceColumns]]:
    """Every case by name, built on demand."""
    cases: dict[str, Callable[[], TraceColumns]] = {
        name: functools.partial(bundled_case, name) for name in BUNDLED
    }
    cases["killed run"] = lambda: killed_run_case(folder)
    cases["power fields only"] = power_only_case
    cases["CPU: RAPL counters, estimate"] = cpu_case
    cases["GPU lost, then estimated"] = lost_gpu_case
    cases["counter lost, power goes on"] = counter_lost_case
    cases["two GPUs replayed"] = two_gpu_case
    return cases


def compare_engines(cols: TraceColumns) -> dict[str, float]:
    """How far the vectorised engine is from the fused timeline on ``cols``: ``total`` (relative
    difference of the fit's total), ``phase`` (the largest difference of one phase's joules, as
    a share of the total), ``curve`` (the largest difference of cumulative energy on a
    200-point grid over the fit, as a share of the total) and ``device`` (the largest relative
    difference of one device's total)."""
    from lightning_watt.report.trace_energy import trace_numbers
    from lightning_watt.report.trace_view import _SpanStream

    grid = np.linspace(*cols.fit_window, 201)
    exact = trace_numbers(cols, _SpanStream(cols), "timeline", grid)
    fast = trace_numbers(cols, _SpanStream(cols, times_only=True), "vectorised", grid)
    total = exact.total_J
    phases = set(exact.phases_J) | set(fast.phases_J)
    curve = sum(fast.grid_J[d] for d in fast.grid_J) - sum(exact.grid_J[d] for d in exact.grid_J)
    return {
        "total": fast.total_J / total - 1,
        "phase": max(abs(fast.phases_J.get(p, 0) - exact.phases_J.get(p, 0)) for p in phases)
        / total,
        "curve": float(np.abs(curve).max()) / total,
        "device": max(
            abs(fast.device_J[d] / exact.device_J[d] - 1) if exact.device_J[d] else 0.0
            for d in exact.device_J
        ),
    }
