"""Synthetic GPU power traces with exactly known energy, for tests, benchmarks and examples.

Real traces (:func:`lightning_watt.energy.trace.bundled_trace`) have no ground truth finer than the
hardware counter's 100 ms updates. :func:`synthetic_run` builds a power signal whose energy is
known to the millisecond, then derives from it the readings a GPU driver would give, with the
semantics the real H100/H200 readers were measured to have:

* **Truth.** Power is piecewise constant on a 1 ms grid: ``power_W[i]`` is the power over
  ``[i * 1 ms, (i + 1) * 1 ms)``. The run is an idle stretch, then *blocks* of training steps
  (each block has its own power level and typical step length, drawn from 5-300 ms; steps in a
  block vary around both, as consecutive steps of one workload do), sometimes separated by idle
  stretches (phase ``"idle"``, like a checkpoint stall), then idle again. Gaussian noise is
  added per millisecond and power is clipped at zero.
* ``counter_J``: the cumulative energy counter updates every ``counter_interval_s`` (100 ms);
  its value at an update is ``origin + floor(true cumulative energy in mJ) / 1000`` (whole
  millijoules, as NVML reports). Each reading is **stamped at the update instant** plus
  ``counter_delay_s`` (default 0: a poller that pins every update, like the tight read loop of
  the ``h200-square-wave`` trace). With a delay, the value read is still the one of the last
  update: the reading is late, not the energy.
* ``buffer_W``: one driver-buffer sample every ``buffer_interval_s`` (20 ms), whose value is the
  **mean power of the 20 ms before its timestamp**, the semantics
  :class:`~lightning_watt.energy.timeline.EnergyTimeline` assumes for this kind.
* ``instant_W``: at each counter update instant, the power of the millisecond just before it.
* ``average_W``: at each counter update instant, the mean power of the trailing 1 s (of what
  exists, at the very start).

Step edges are written with ``t_gpu`` at the exact boundary and ``t_host`` ``host_lead_s``
earlier (Lightning's hooks run ahead of the GPU).

Harder variants, as a live meter sees real hardware (all off by default):

* ``gap_ms``: every training step is followed by a gap (phase ``"gap"``) at ``gap_W``, as data
  loading between short steps is; with ``step_ms=(d, d)`` every step lasts ``d`` ms.
* ``counter_read_interval_s``: the counter is *polled* on the reader's own clock instead of
  at its updates, so each read returns the last update's value and its staleness drifts over
  0-100 ms (``1.0`` gives 1 Hz reads).
* ``jitter_s``: every reading's timestamp (counter reads, buffer samples) is off by up to
  that much (uniform), while values follow the true instants; ``edge_jitter_s`` does the same
  to the steps' GPU times (CUDA events are microsecond-exact, so it defaults to 0);
  ``jitter_dist="normal"`` draws both from a Gaussian of half that standard deviation instead,
  clipped at the bound.
* ``missed_updates``: that many counter updates do not happen (the next carries both);
  ``counter_reset_at_s``: the counter restarts from zero at that time (a driver reload).

Example:
    >>> from lightning_watt.testing.synthetic import synthetic_run
    >>> run = synthetic_run(seed=1)
    >>> trace = run.trace
    >>> sorted(trace.kinds)
    ['average_W', 'buffer_W', 'counter_J', 'instant_W']
    >>> truth = run.true_energy(*trace.fit_window)
    >>> fused = trace.timeline().energy_between(*trace.fit_window)["gpu0"]
    >>> abs(fused / truth - 1) < 1e-3
    True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_watt.energy.readings import AVERAGE_W, BUFFER_W, COUNTER_J, INSTANT_W, Reading
from lightning_watt.energy.trace import FORMAT, StepEdge, Trace
from lightning_watt.validate import finite_number, positive_number

#: Resolution of the true power signal (seconds).
DT = 0.001
#: Distributions of timestamp jitter :func:`synthetic_run` can draw.
_JITTER_DISTS = ("uniform", "normal")
#: The kinds :func:`synthetic_run` can emit.
GENERATED_KINDS = frozenset({COUNTER_J, BUFFER_W, INSTANT_W, AVERAGE_W})

__all__ = [
    "DT",
    "GENERATED_KINDS",
    "SyntheticRun",
    "SyntheticStep",
    "step_suite_run",
    "synthetic_run",
    "thinned_counter_reads",
]


@dataclass(frozen=True)
class SyntheticStep:
    """One segment of the true signal: a training step (``phase="train"``) or an idle stretch
    (``phase="idle"``), with its exact energy in joules."""

    phase: str
    index: int
    start: float
    end: float
    energy_J: float

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def mean_power_W(self) -> float:
        return self.energy_J / self.duration if self.duration > 0 else 0.0


@dataclass
class SyntheticRun:
    """A synthetic recording and the truth it was made from.

    Attributes:
        trace: the readings and step edges, as a watt-trace v1
        :class:`~lightning_watt.energy.trace.Trace`.
        steps: every segment (train steps and idle stretches), in time order.
        power_W: the true power, one value per millisecond from ``t = 0``.
        device: the device name used in the trace.

    Example:
        >>> run = synthetic_run(seed=0, duration_s=4.0)
        >>> run.true_energy(0.0, 1.0) > 0
        True
    """

    trace: Trace
    steps: list[SyntheticStep]
    power_W: np.ndarray
    device: str = "gpu0"

    def __post_init__(self) -> None:
        # Cumulative joules at every millisecond boundary: E(i * DT) = _cum[i].
        self._cum = np.concatenate(([0.0], np.cumsum(self.power_W * DT)))

    @property
    def duration(self) -> float:
        """Length of the true signal in seconds."""
        return len(self.power_W) * DT

    @property
    def train_steps(self) -> list[SyntheticStep]:
        """The training steps only (no idle stretches)."""
        return [s for s in self.steps if s.phase == "train"]

    def energy_at(self, t: float | np.ndarray) -> float | np.ndarray:
        """Exact cumulative joules from ``t = 0`` to ``t`` (clamped to the signal)."""
        tt = np.clip(np.asarray(t, dtype=float), 0.0, self.duration)
        i = np.minimum((tt / DT).astype(np.int64), len(self.power_W) - 1)
        e = self._cum[i] + self.power_W[i] * (tt - i * DT)
        return float(e) if e.ndim == 0 else e

    def true_energy(self, t0: float, t1: float) -> float:
        """Exact joules over ``[t0, t1]``."""
        return float(self.energy_at(t1)) - float(self.energy_at(t0))


def _segments(
    rng: np.random.Generator,
    n_ms: int,
    idle_before_ms: int,
    idle_after_ms: int,
    step_ms: tuple[int, int],
    levels_W: tuple[float, float],
    idle_W: float,
    steps_per_block: tuple[int, int],
    idle_stretch_prob: float,
    idle_stretch_ms: tuple[int, int],
    gap_ms: tuple[int, int] | None = None,
    gap_W: float = 70.0,
) -> list[tuple[str, int, int, float]]:
    """``(phase, start_ms, end_ms, level_W)`` segments covering the busy middle of the run."""
    segs: list[tuple[str, int, int, float]] = []
    t = idle_before_ms
    busy_end = n_ms - idle_after_ms
    lo_ms, hi_ms = step_ms
    while t < busy_end:
        # One block: a workload with its own power level and typical step length.
        level = rng.uniform(*levels_W)
        typical = math.exp(rng.uniform(math.log(lo_ms), math.log(hi_ms)))
        for _ in range(int(rng.integers(steps_per_block[0], steps_per_block[1] + 1))):
            length = round(float(np.clip(typical * rng.uniform(0.7, 1.3), lo_ms, hi_ms)))
            if t + length > busy_end:
                break
            segs.append(("train", t, t + length, level * rng.uniform(0.9, 1.1)))
            t += length
            if gap_ms is not None:
                gap = int(rng.integers(gap_ms[0], gap_ms[1] + 1))
                if gap and t + gap <= busy_end:
                    segs.append(("gap", t, t + gap, gap_W * rng.uniform(0.9, 1.1)))
                    t += gap
        else:
            if rng.random() < idle_stretch_prob:
                length = int(rng.integers(idle_stretch_ms[0], idle_stretch_ms[1] + 1))
                if t + length <= busy_end:
                    segs.append(("idle", t, t + length, idle_W))
                    t += length
            continue
        break
    return segs


def synthetic_run(
    seed: int = 0,
    *,
    duration_s: float = 30.0,
    idle_before_s: float = 1.0,
    idle_after_s: float = 1.0,
    idle_W: float = 70.0,
    levels_W: tuple[float, float] = (150.0, 650.0),
    step_ms: tuple[int, int] = (5, 300),
    steps_per_block: tuple[int, int] = (5, 40),
    idle_stretch_prob: float = 0.2,
    idle_stretch_ms: tuple[int, int] = (200, 1500),
    noise_W: float = 15.0,
    counter_interval_s: float = 0.1,
    counter_phase_s: float = 0.0437,
    counter_delay_s: float = 0.0,
    counter_origin_J: float = 123_456.789,
    buffer_interval_s: float = 0.02,
    buffer_phase_s: float = 0.0071,
    kinds: Collection[str] | None = None,
    device: str = "gpu0",
    host_lead_s: float = 0.004,
    gap_ms: tuple[int, int] | None = None,
    gap_W: float | None = None,
    counter_read_interval_s: float | None = None,
    jitter_s: float = 0.0,
    edge_jitter_s: float = 0.0,
    missed_updates: int = 0,
    counter_reset_at_s: float | None = None,
    jitter_dist: str = "uniform",
) -> SyntheticRun:
    """Build a synthetic run with known per-step energy (see the module docstring).

    Args:
        seed: for the random generator; the same arguments give the same run.
        duration_s: length of the signal, idle stretches included.
        idle_before_s, idle_after_s: idle power at both ends (outside the fit window).
        idle_W: power when idle.
        levels_W: range of the blocks' mean power levels.
        step_ms: range of step lengths in milliseconds (whole milliseconds).
        steps_per_block: range of the number of steps sharing one level and typical length.
        idle_stretch_prob: chance that a block is followed by an idle stretch.
        idle_stretch_ms: range of an idle stretch's length.
        noise_W: standard deviation of the per-millisecond Gaussian noise.
        counter_interval_s, counter_phase_s: the counter (and power fields) update at
            ``counter_phase_s + k * counter_interval_s``.
        counter_delay_s: how long after an update its counter reading is stamped.
        counter_origin_J: the counter's arbitrary origin (whole millijoules).
        buffer_interval_s, buffer_phase_s: driver-buffer samples at
            ``buffer_phase_s + k * buffer_interval_s``, each the mean of the interval before.
        kinds: only emit these kinds (default all four).
        device: the device name of the readings.
        host_lead_s: how much earlier than the GPU the host stamps each step edge.
        gap_ms: range of the gap after each training step (``None``: steps back to back).
        gap_W: power in those gaps (default ``idle_W``).
        counter_read_interval_s: poll the counter at this period on the reader's clock
            (``None``: one read per update, ``counter_delay_s`` after it).
        jitter_s: every reading's timestamp is off by a uniform error of at most this.
        edge_jitter_s: the same for the step edges' ``t_gpu``.
        missed_updates: counter updates that do not happen (chosen at random).
        counter_reset_at_s: the counter restarts from zero at this time.
        jitter_dist: ``"uniform"`` (within the bound) or ``"normal"`` (standard deviation
            half the bound, clipped at it) for ``jitter_s`` and ``edge_jitter_s``.

    Returns:
        A :class:`SyntheticRun`: the trace, the segments with their exact energies, the signal.

    Example:
        >>> run = synthetic_run(seed=3, duration_s=3.0, kinds={"counter_J", "buffer_W"})
        >>> run.trace.kinds
        ['buffer_W', 'counter_J']
    """
    wanted = frozenset(GENERATED_KINDS if kinds is None else kinds)
    unknown = wanted - GENERATED_KINDS
    if unknown:
        raise ValueError(
            f"kinds: cannot generate {sorted(unknown)}; choose from {sorted(GENERATED_KINDS)}"
        )
    if not duration_s > idle_before_s + idle_after_s >= 0:
        raise ValueError("duration_s must exceed idle_before_s + idle_after_s")
    if not (1 <= step_ms[0] <= step_ms[1]):
        raise ValueError(f"step_ms must be (lo, hi) with 1 <= lo <= hi, got {step_ms!r}")
    # Checked, not converted: the arguments go into the meta as given.
    positive_number("counter_interval_s", counter_interval_s, unit="seconds")
    positive_number("buffer_interval_s", buffer_interval_s, unit="seconds")
    finite_number("counter_delay_s", counter_delay_s, minimum=0.0, unit="seconds")
    finite_number("noise_W", noise_W, minimum=0.0, unit="W")
    # Jitter must not reorder one kind's samples (buffer samples are 20 ms apart).
    finite_number("jitter_s", jitter_s, minimum=0.0, maximum=0.005, unit="seconds")
    finite_number("edge_jitter_s", edge_jitter_s, minimum=0.0, maximum=0.005, unit="seconds")
    if jitter_dist not in _JITTER_DISTS:
        raise ValueError(f"jitter_dist: unknown {jitter_dist!r}; accepted: {list(_JITTER_DISTS)}")
    if counter_read_interval_s is not None:
        positive_number("counter_read_interval_s", counter_read_interval_s, unit="seconds")
    if gap_ms is not None and not (0 <= gap_ms[0] <= gap_ms[1]):
        raise ValueError(f"gap_ms must be (lo, hi) with 0 <= lo <= hi, got {gap_ms!r}")

    # Every argument goes into the meta, so a recording says how to make it again.
    params = {
        "seed": seed,
        "duration_s": duration_s,
        "idle_before_s": idle_before_s,
        "idle_after_s": idle_after_s,
        "idle_W": idle_W,
        "levels_W": list(levels_W),
        "step_ms": list(step_ms),
        "steps_per_block": list(steps_per_block),
        "idle_stretch_prob": idle_stretch_prob,
        "idle_stretch_ms": list(idle_stretch_ms),
        "noise_W": noise_W,
        "counter_interval_s": counter_interval_s,
        "counter_phase_s": counter_phase_s,
        "counter_delay_s": counter_delay_s,
        "counter_origin_J": counter_origin_J,
        "buffer_interval_s": buffer_interval_s,
        "buffer_phase_s": buffer_phase_s,
        "kinds": sorted(wanted),
        "device": device,
        "host_lead_s": host_lead_s,
        "gap_ms": None if gap_ms is None else list(gap_ms),
        "gap_W": gap_W,
        "counter_read_interval_s": counter_read_interval_s,
        "jitter_s": jitter_s,
        "edge_jitter_s": edge_jitter_s,
        "missed_updates": missed_updates,
        "counter_reset_at_s": counter_reset_at_s,
        "jitter_dist": jitter_dist,
    }
    rng = np.random.default_rng(seed)
    n_ms = round(duration_s / DT)
    segs = _segments(
        rng,
        n_ms,
        round(idle_before_s / DT),
        round(idle_after_s / DT),
        step_ms,
        levels_W,
        idle_W,
        steps_per_block,
        idle_stretch_prob,
        idle_stretch_ms,
        gap_ms,
        idle_W if gap_W is None else gap_W,
    )
    level = np.full(n_ms, idle_W)
    for _, a, b, watts in segs:
        level[a:b] = watts
    power = np.clip(level + rng.normal(0.0, noise_W, n_ms), 0.0, None)

    # The run object first: its exact energy function derives every reading below.
    run = SyntheticRun(Trace([]), [], power, device)
    steps: list[SyntheticStep] = []
    per_phase: dict[str, int] = {}  # train steps count 0, 1, 2, ... like global_step
    for phase, a, b, _ in segs:
        index = per_phase.get(phase, 0)
        per_phase[phase] = index + 1
        steps.append(SyntheticStep(phase, index, a * DT, b * DT, run.true_energy(a * DT, b * DT)))
    run.steps = steps
    hostile = _Hostile(
        np.random.default_rng([seed, 1]),
        counter_read_interval_s,
        jitter_s,
        missed_updates,
        counter_reset_at_s,
        edge_jitter_s,
        jitter_dist,
    )
    run.trace = Trace(
        _readings(
            run,
            wanted,
            counter_interval_s,
            counter_phase_s,
            counter_delay_s,
            counter_origin_J,
            buffer_interval_s,
            buffer_phase_s,
            hostile,
        ),
        _edges(steps, host_lead_s, hostile),
        _meta(steps, duration_s, params),
    )
    return run


@dataclass
class _Hostile:
    """The imperfections of a real reader (see the module docstring); all off by default."""

    rng: np.random.Generator
    read_interval_s: float | None = None
    jitter_s: float = 0.0
    missed_updates: int = 0
    reset_at_s: float | None = None
    edge_jitter_s: float = 0.0
    jitter_dist: str = "uniform"

    def jitter(self, times: np.ndarray, amount: float | None = None) -> np.ndarray:
        amount = self.jitter_s if amount is None else amount
        if amount <= 0:
            return times
        if self.jitter_dist == "normal":
            return times + np.clip(self.rng.normal(0.0, amount / 2, len(times)), -amount, amount)
        return times + self.rng.uniform(-amount, amount, len(times))


def _readings(
    run: SyntheticRun,
    wanted: frozenset[str],
    counter_interval_s: float,
    counter_phase_s: float,
    counter_delay_s: float,
    counter_origin_J: float,
    buffer_interval_s: float,
    buffer_phase_s: float,
    hostile: _Hostile | None = None,
) -> list[Reading]:
    hostile = hostile or _Hostile(np.random.default_rng(0))
    dev, end = run.device, run.duration
    out: list[Reading] = []
    updates = np.arange(counter_phase_s, end + 1e-12, counter_interval_s)
    updates = updates[updates > 0]
    if COUNTER_J in wanted:
        out.extend(
            _counter_reads(
                run, updates, counter_delay_s, counter_origin_J, counter_phase_s, hostile
            )
        )
    if INSTANT_W in wanted:
        # The millisecond that ends at (or contains) the update instant.
        idx = np.clip(np.ceil(updates / DT - 1e-9).astype(np.int64) - 1, 0, len(run.power_W) - 1)
        out.extend(
            Reading(float(u), dev, INSTANT_W, float(run.power_W[i]))
            for u, i in zip(updates, idx, strict=True)
        )
    if AVERAGE_W in wanted:
        lo = np.maximum(updates - 1.0, 0.0)
        avg = (np.asarray(run.energy_at(updates)) - np.asarray(run.energy_at(lo))) / (updates - lo)
        out.extend(
            Reading(float(u), dev, AVERAGE_W, float(w)) for u, w in zip(updates, avg, strict=True)
        )
    if BUFFER_W in wanted:
        stamps = np.arange(buffer_phase_s, end + 1e-12, buffer_interval_s)
        stamps = stamps[stamps >= buffer_interval_s]
        before = np.asarray(run.energy_at(stamps - buffer_interval_s))
        means = (np.asarray(run.energy_at(stamps)) - before) / buffer_interval_s
        recorded = hostile.jitter(stamps)
        out.extend(
            Reading(float(s), dev, BUFFER_W, float(w)) for s, w in zip(recorded, means, strict=True)
        )
    # Stable sort: at equal times the kinds keep the order above, so the trace is reproducible.
    out.sort(key=lambda r: r.t)
    return out


def _counter_reads(
    run: SyntheticRun,
    updates: np.ndarray,
    delay_s: float,
    origin_J: float,
    phase_s: float,
    hostile: _Hostile,
) -> list[Reading]:
    """The counter's readings: whole millijoules at each update (some missed, maybe a reset),
    read at each update (plus ``delay_s``) or polled on the reader's own clock."""
    end = run.duration
    happened = np.ones(len(updates), dtype=bool)
    if hostile.missed_updates:
        # Interior updates only, so the first and last values still bracket the run.
        k = min(hostile.missed_updates, max(0, len(updates) - 2))
        happened[1 + hostile.rng.choice(len(updates) - 2, size=k, replace=False)] = False
    real = updates[happened]
    energy = np.asarray(run.energy_at(real))
    origin_mj = np.full(len(real), float(round(origin_J * 1000.0)))
    if hostile.reset_at_s is not None:
        # A restart from zero: later values count from the energy at the reset.
        after = real >= hostile.reset_at_s
        origin_mj[after] = -math.floor(float(run.energy_at(hostile.reset_at_s)) * 1000.0)
    values = (origin_mj + np.floor(energy * 1000.0 + 1e-9)) / 1000.0
    if hostile.read_interval_s is None:
        reads = real + delay_s
        shown = np.arange(len(real))
    else:
        # The reader's own clock, unlocked from the counter's: reads start mid-period.
        reads = np.arange(phase_s / 3 + hostile.read_interval_s, end, hostile.read_interval_s)
        shown = np.searchsorted(real, reads, side="right") - 1
        reads, shown = reads[shown >= 0], shown[shown >= 0]
    stamps = hostile.jitter(reads)
    return [
        Reading(float(t), run.device, COUNTER_J, float(values[i]))
        for t, r, i in zip(stamps, reads, shown, strict=True)
        if r <= end
    ]


def _edges(
    steps: Sequence[SyntheticStep], host_lead_s: float, hostile: _Hostile | None = None
) -> list[StepEdge]:
    edges: list[StepEdge] = []
    for s in steps:
        edges.append(StepEdge(s.phase, "start", s.index, s.start - host_lead_s, s.start))
        edges.append(StepEdge(s.phase, "end", s.index, s.end - host_lead_s, s.end))
    if hostile is not None and hostile.edge_jitter_s > 0:
        t_gpu = hostile.jitter(
            np.asarray([e.t_gpu for e in edges], dtype=float), hostile.edge_jitter_s
        )
        edges = [e._replace(t_gpu=float(t)) for e, t in zip(edges, t_gpu, strict=True)]
    return edges


def _meta(
    steps: Sequence[SyntheticStep], duration_s: float, params: dict[str, Any]
) -> dict[str, Any]:
    train = [s for s in steps if s.phase == "train"]
    fit = (train[0].start, train[-1].end) if train else (0.0, duration_s)
    return {
        "format": FORMAT,
        "description": "synthetic run from lightning_watt.testing.synthetic.synthetic_run "
        "(1 ms piecewise-constant power with known per-step energy)",
        "gpu": "synthetic",
        "fit_start": fit[0],
        "fit_end": fit[1],
        "sources": {
            COUNTER_J: "floor(true cumulative mJ) at each 100 ms update, stamped at the update "
            "(plus counter_delay_s)",
            BUFFER_W: "mean power of the 20 ms before each timestamp",
            INSTANT_W: "power of the millisecond before each 100 ms update",
            AVERAGE_W: "mean power of the trailing 1 s at each 100 ms update",
        },
        "synthetic": params,
    }


def step_suite_run(step_ms: int, seed: int, **overrides: Any) -> SyntheticRun:
    """One run of the known-truth step-accuracy suite (issue 13): 20 s of ``step_ms`` steps
    between gaps of 0-30 ms (or up to the step's length) at 100 W, steps at 250-650 W with
    idle stretches, the counter polled every 102.3 ms (its staleness drifting over 0-100 ms),
    2 ms of jitter on every reading's timestamp and two missed counter updates. Shared by
    ``tests/test_step_accuracy.py`` and ``benchmarks/step_accuracy.py``, so both judge the
    same runs. ``overrides`` replace any of these :func:`synthetic_run` arguments (other
    jitter, powers, gaps), for the variants the suite is also checked on.

    Example:
        >>> run = step_suite_run(50, seed=0)
        >>> round(run.trace.span[1] - run.trace.span[0])
        20
        >>> step_suite_run(10, seed=0, jitter_dist="normal").trace.meta["synthetic"]["jitter_dist"]
        'normal'
    """
    args: dict[str, Any] = {
        "duration_s": 20.0,
        "step_ms": (step_ms, step_ms),
        "gap_ms": (0, max(30, step_ms)),
        "gap_W": 100.0,
        "levels_W": (250.0, 650.0),
        "idle_stretch_prob": 0.1,
        "counter_read_interval_s": 0.1023,
        "jitter_s": 0.002,
        "missed_updates": 2,
        "kinds": {COUNTER_J, BUFFER_W},
    }
    args.update(overrides)
    return synthetic_run(seed=seed, **args)


def thinned_counter_reads(trace: Trace, every: float = 0.1) -> tuple[list[Reading], list[float]]:
    """A trace whose counter was read in a tight loop (``h200-square-wave``: a read every
    ~3 ms), with the counter reads thinned to one per ``every`` seconds (the first read at or
    after each poll, as a live meter reads it) and every other reading kept; and the true
    update instants: the middle of each bracket under 12 ms in which the value changed.

    Example:
        >>> from lightning_watt.energy.trace import bundled_trace, load_trace
        >>> readings, updates = thinned_counter_reads(load_trace(bundled_trace("h200-square-wave")))
        >>> len(updates) > 100
        True
    """
    counter = [r for r in trace.samples if r.kind == COUNTER_J]
    updates = [
        0.5 * (a.t + b.t)
        for a, b in itertools.pairwise(counter)
        if b.value != a.value and b.t - a.t < 0.012
    ]
    kept: list[Reading] = []
    due = counter[0].t if counter else math.inf
    for r in counter:
        if r.t >= due:
            kept.append(r)
            due += every
    others = [r for r in trace.samples if r.kind != COUNTER_J]
    return sorted(kept + others, key=lambda r: r.t), updates
