"""Per-step energy against known truth: the harder synthetic suite, edge-aware attribution.

Every run: steps of one length (5 to 200 ms) separated by 0-30 ms (or up to one step) gaps at
another power, the counter polled on an unlocked ~100 ms clock (staleness drifting over
0-100 ms), 20 ms buffer means, 2 ms jitter on every reading's timestamp, missed counter
updates, several seeds. The thresholds are the issue's; the numbers measured when they were
set are in ``benchmarks/README.md`` (``benchmarks/step_accuracy.py``).
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st
from live_feed import feed_live

from lightning_watt.energy.segment_fit import EdgeModel, edges_from_steps
from lightning_watt.energy.timeline import EnergyTimeline
from lightning_watt.energy.trace import StepEdge, bundled_trace, load_trace
from lightning_watt.testing.synthetic import (
    step_suite_run,
)

SEEDS = (0, 1, 2)

# The runs are generated once per test session.
suite_run = functools.cache(step_suite_run)


@functools.cache
def fused(step_ms: int, seed: int, edges: bool) -> EnergyTimeline:
    return suite_run(step_ms, seed).trace.timeline(edges=edges)


def step_errors(step_ms: int, edges: bool) -> tuple[list[float], float]:
    """Relative errors of every training step over the seeds, and the aggregate bias."""
    errors, got, true = [], 0.0, 0.0
    for seed in SEEDS:
        run, tl = suite_run(step_ms, seed), fused(step_ms, seed, edges)
        for s in run.train_steps:
            e = tl.energy_between(s.start, s.end)["gpu0"]
            errors.append(e / s.energy_J - 1)
            got += e
            true += s.energy_J
    return errors, got / true - 1


@pytest.mark.parametrize(("step_ms", "limit"), [(20, 0.06), (50, 0.02), (100, 0.02), (200, 0.02)])
def test_per_step_median_error_meets_the_targets(step_ms: int, limit: float) -> None:
    errors, _ = step_errors(step_ms, edges=True)
    assert len(errors) >= 50
    assert statistics.median(abs(e) for e in errors) <= limit
    # Without the step edges the same readings miss by far more (9 % at 50 ms, 22 % at 20).
    plain, _ = step_errors(step_ms, edges=False)
    assert statistics.median(abs(e) for e in plain) > statistics.median(abs(e) for e in errors)


@pytest.mark.parametrize("step_ms", [5, 10])
def test_short_steps_keep_their_energy_in_aggregate(step_ms: int) -> None:
    """The issue's target: +-2 % for steps <= 15 ms (measured -0.67 % at 5 ms and -0.34 % at
    10 ms; -6.4 % and -2.5 % before buffer stamps were snapped to the driver's clock).
    Integrating the buffer without edges gives -53 % and -38 %."""
    _, bias = step_errors(step_ms, edges=True)
    _, plain = step_errors(step_ms, edges=False)
    assert abs(bias) <= 0.02
    assert plain < -0.3


# Variants the suite's generator does not draw by default: other jitter amounts and
# distributions, step and gap powers, gap lengths, noise, another buffer phase and poll period.
VARIANTS = [
    (5, 11, {"jitter_s": 0.001}),
    (5, 12, {"jitter_s": 0.0035}),
    (5, 13, {"jitter_s": 0.004, "jitter_dist": "normal"}),
    (10, 14, {"jitter_s": 0.005}),
    (10, 15, {"gap_W": 200.0, "levels_W": (300.0, 500.0)}),
    (5, 16, {"levels_W": (120.0, 250.0), "gap_W": 60.0}),
    (15, 17, {"gap_ms": (2, 12), "noise_W": 30.0}),
    (10, 18, {"buffer_phase_s": 0.0133, "counter_read_interval_s": 0.0977}),
]


@pytest.mark.parametrize(("step_ms", "seed", "overrides"), VARIANTS)
def test_short_step_bias_holds_across_generator_variants(
    step_ms: int, seed: int, overrides: dict[str, object]
) -> None:
    """Stamp jitter of 1-5 ms, uniform or Gaussian, is removed from the buffer; the bias that
    is left is the fit's, well within the target on every variant (measured within -1.5 %)."""
    run = step_suite_run(step_ms, seed, **overrides)
    tl = run.trace.timeline(edges=True)
    got = sum(tl.energy_between(s.start, s.end)["gpu0"] for s in run.train_steps)
    true = sum(s.energy_J for s in run.train_steps)
    assert len(run.train_steps) >= 50
    assert abs(got / true - 1) <= 0.02
    a, b = run.trace.fit_window
    assert tl.energy_between(a, b)["gpu0"] == pytest.approx(run.true_energy(a, b), rel=3e-3)


@pytest.mark.parametrize("step_ms", [5, 50])
def test_steps_plus_gaps_add_up_to_the_total_exactly(step_ms: int) -> None:
    run = suite_run(step_ms, 0)
    tl = fused(step_ms, 0, True)
    segments = [s for s in run.steps if s.phase in ("train", "gap")]
    parts = [tl.energy_between(s.start, s.end)["gpu0"] for s in segments]
    assert min(parts) >= 0.0
    # Gapless segments tile [first start, last end] exactly (where they touch).
    edges = sorted({s.start for s in segments} | {s.end for s in segments})
    pieces = [tl.energy_between(a, b)["gpu0"] for a, b in itertools.pairwise(edges)]
    whole = tl.energy_between(edges[0], edges[-1])["gpu0"]
    assert sum(pieces) == pytest.approx(whole, rel=1e-12)
    # E(t) is monotone between every pair of edges.
    values = [tl.energy_at(t)["gpu0"] for t in edges]
    assert all(b >= a for a, b in itertools.pairwise(values))


def test_edge_aware_totals_equal_the_plain_ones() -> None:
    """Splitting a buffer sample moves joules inside it, never across counter windows."""
    run = suite_run(20, 1)
    a, b = run.trace.fit_window
    plain = fused(20, 1, False).energy_between(a, b)["gpu0"]
    aware = fused(20, 1, True).energy_between(a, b)["gpu0"]
    assert aware == pytest.approx(plain, rel=2e-3)
    assert aware == pytest.approx(run.true_energy(a, b), rel=3e-3)


@pytest.mark.parametrize("seed", [3, 4])
def test_live_feeding_with_late_edges_equals_the_whole_trace(seed: int) -> None:
    """A live meter gets readings in drains and step edges later (resolved CUDA events, a log
    tick every few hundred ms): with the edges' watermark the timeline waits for them, and its
    finalized energy equals the recording's, fed whole."""
    run = suite_run(10, seed)
    trace = run.trace
    whole = trace.timeline(edges=True)
    live = EnergyTimeline()

    def check() -> None:
        if live.devices:
            assert live.finalized_until <= until_seen(live)

    feed_live(
        trace.samples,
        edges_from_steps(trace.steps),
        live.add_edges,
        lambda edge: edge[0],
        seed,
        live.add,
        check,
    )
    live.flush()
    for s in run.train_steps[::7]:
        assert live.energy_between(s.start, s.end)["gpu0"] == pytest.approx(
            whole.energy_between(s.start, s.end)["gpu0"], rel=1e-9, abs=1e-9
        )


@given(
    st.lists(st.floats(min_value=0.0005, max_value=0.03), min_size=2, max_size=40),
    st.lists(st.floats(min_value=0.0, max_value=900.0), min_size=12, max_size=12),
    st.lists(st.floats(min_value=-0.002, max_value=0.002), min_size=12, max_size=12),
)
def test_every_tile_keeps_its_joules_split_non_negative(
    spans: list[float], watts: list[float], jitter: list[float]
) -> None:
    """However the edges fall (jittered stamps, sub-millisecond segments, zero power), a
    split tile's knots lie inside it, in order, with energy rising from its start to its end:
    the split never moves joules between tiles and never makes power negative."""
    model = EdgeModel()
    t, labels, edges = 0.003, ("train", "", "val"), []
    for i, span in enumerate(spans):
        edges.append((t, labels[i % 3]))
        t += span
    model.add(edges, until=math.inf)
    ts = [0.02 * i + j for i, j in enumerate(jitter)]
    cum = [0.0]
    for i in range(1, len(ts)):
        cum.append(cum[-1] + watts[i] * (ts[i] - ts[i - 1]))
    for i in range(1, len(ts)):
        knots, energy = model.split(ts, cum, i)
        assert len(knots) == len(energy)
        points = [ts[i - 1], *knots, ts[i]]
        values = [cum[i - 1], *energy, cum[i]]
        assert all(a <= b for a, b in itertools.pairwise(points))
        assert all(a <= b + 1e-12 for a, b in itertools.pairwise(values))


def boundaries(edges: list[StepEdge]) -> list[tuple[float, str]]:
    return [(round(t, 6), label) for t, label in edges_from_steps(edges)]


def test_overlapping_phases_go_to_the_newer_one_from_halfway() -> None:
    """Jittered edges overlap: a gap's start stamped before the step's end, the next step's
    start before the gap's end. The time goes to the phase that started last (it was
    alphabetical, so every such step became a ``gap``), from halfway between the two stamps
    of the one instant. An end whose start came in an earlier batch (a live meter hands edges
    in batches) still ends its step."""
    edges = [
        StepEdge("train", "start", 0, 1.000),
        StepEdge("gap", "start", 0, 1.0048),
        StepEdge("train", "end", 1, 1.0052),
        StepEdge("train", "start", 1, 1.0149),
        StepEdge("gap", "end", 0, 1.0151),
        StepEdge("train", "end", 2, 1.020),
        StepEdge("val", "end", 0, 1.030),
    ]
    assert boundaries(edges) == [(1.0, "train"), (1.005, "gap"), (1.015, "train"), (1.02, "")]
    later_batch = [StepEdge("train", "end", 5, 2.0), StepEdge("train", "start", 5, 2.01)]
    assert boundaries(later_batch) == [(2.0, ""), (2.01, "train")]


def jittered_steps(jitter_s: float, seed: int = 0) -> list[StepEdge]:
    """Back-to-back 5 ms steps and 5 ms gaps (explicit ``gap`` phase), every stamp jittered."""
    rng = random.Random(seed)
    edges = []
    for k in range(100):
        t = 0.01 * k
        for phase, a, b in (("train", t, t + 0.005), ("gap", t + 0.005, t + 0.01)):
            edges.append(StepEdge(phase, "start", k, a + rng.uniform(-jitter_s, jitter_s)))
            edges.append(StepEdge(phase, "end", k, b + rng.uniform(-jitter_s, jitter_s)))
    return edges


def test_jittered_stamps_of_one_instant_become_one_boundary() -> None:
    """With jitter, the two stamps of each instant (one phase's end, the next one's start)
    overlap or leave a hole, as often one as the other: both close to one boundary between
    them, so no phantom ``""`` slivers are fitted, and the boundary is nearer the truth."""
    out = edges_from_steps(jittered_steps(0.002))
    assert [label for _, label in out] == ["train", "gap"] * 100 + [""]
    errors = [abs(t - 0.005 * round(t / 0.005)) for t, _ in out[:-1]]
    assert max(errors) <= 0.002
    assert statistics.mean(errors) < 0.002 / 2  # one stamp's mean error is 1 ms


def test_exact_stamps_keep_short_real_gaps() -> None:
    """Without overlaps (CUDA events), a gap of a millisecond between steps is real."""
    edges = []
    for k in range(50):
        t = 0.012 * k
        edges += [StepEdge("train", "start", k, t), StepEdge("train", "end", k + 1, t + 0.011)]
    out = edges_from_steps(edges)
    assert len(out) == 100
    assert [label for _, label in out] == ["train", ""] * 50


def until_seen(tl: EnergyTimeline) -> float:
    """How far edges are known on the timeline's device (it never finalizes past them)."""
    return min((tl.device(d).edges.until for d in tl.devices), default=float("inf"))


def test_the_edge_response_of_a_real_gpu_is_measured() -> None:
    """``h200-square-wave`` (exact edges, 150 ms load / 150 ms idle): the buffer sees power
    change a few ms after each recorded edge; the model measures and uses that delay, and
    moves energy from the idle halves to the load halves."""
    trace = load_trace(bundled_trace("h200-square-wave"))
    aware = trace.timeline(edges=True)
    model = aware.device("gpu0").edges
    assert 0.001 <= model.delay_s <= 0.006
    plain = trace.timeline()
    spans = {}
    for s in trace.steps:
        spans.setdefault((s.phase, s.index), {})[s.edge] = s.t
    load = [(d["start"], d["end"]) for (phase, _), d in spans.items() if phase == "load"]
    e_plain = sum(plain.energy_between(a, b)["gpu0"] for a, b in load)
    e_aware = sum(aware.energy_between(a, b)["gpu0"] for a, b in load)
    assert e_aware > e_plain * 1.005
