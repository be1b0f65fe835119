"""Step edges handed over in batches (a live meter gets them at each sync) become the same
boundaries, and the same per-step energies, as all of them converted at once: phases open at a
cut, overlaps and holes of jittered stamps straddling it, and the jitter judged so far carry
over (``StepBoundaries``)."""

from __future__ import annotations

import functools
import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from live_feed import feed_live

from lightning_watt.energy.segment_fit import StepBoundaries, edges_from_steps
from lightning_watt.energy.timeline import EnergyTimeline
from lightning_watt.energy.trace import StepEdge
from lightning_watt.testing.synthetic import step_suite_run

PHASES = ("train", "val", "gap")


def jittered_edges(seed: int, n: int, jitter_s: float, gap_s: float) -> list[StepEdge]:
    """``n`` back-to-back phases of 2-30 ms (now and then a real gap of up to ``gap_s``
    between them), every stamp moved by up to ``jitter_s``: ends after the next start
    (overlaps) as often as before it (holes), as on a host clock."""
    rng = random.Random(seed)
    edges, t = [], 1.0
    for k in range(n):
        phase = rng.choice(PHASES)
        length = rng.uniform(0.002, 0.03)
        for edge, at in (("start", t), ("end", t + length)):
            edges.append(StepEdge(phase, edge, k, at + rng.uniform(-jitter_s, jitter_s)))
        t += length + (rng.uniform(0.0, gap_s) if rng.random() < 0.3 else 0.0)
    return edges


def in_batches(
    edges: list[StepEdge], untils: list[float], early: float, seed: int
) -> list[tuple[list[StepEdge], float]]:
    """Batches as a meter gets them: at each ``until``, every edge up to it not yet handed
    over, in the order they were marked, plus (with probability ``early``) some later ones."""
    rng = random.Random(seed)
    left = list(edges)
    out = []
    for until in [*sorted(untils), math.inf]:
        batch = [e for e in left if e.t <= until or rng.random() < early]
        left = [e for e in left if e not in batch]
        out.append((batch, until))
    return out


def convert(batches: list[tuple[list[StepEdge], float]]) -> list[tuple[float, str]]:
    """Boundaries from batches; checks on the way that each call's ``complete`` time is honest:
    no boundary at or before it comes later."""
    conv, out, known = StepBoundaries(), [], -math.inf
    for batch, until in batches:
        new, complete = conv.add(batch, until)
        assert all(t > known for t, _ in new), "a boundary came after it was declared complete"
        assert known <= complete <= until
        known = complete
        out.extend(new)
    assert known == math.inf
    return out


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 400),
    jitter_s=st.sampled_from([0.0, 0.0005, 0.002, 0.004]),
    gap_s=st.sampled_from([0.0, 0.003, 0.05]),
    cuts=st.lists(st.floats(0.0, 1.0), max_size=12),
    early=st.sampled_from([0.0, 0.1]),
)
def test_any_split_into_batches_gives_the_boundaries_of_one_batch(
    seed: int, n: int, jitter_s: float, gap_s: float, cuts: list[float], early: float
) -> None:
    edges = jittered_edges(seed, n, jitter_s, gap_s)
    lo = min(e.t for e in edges)
    hi = max(e.t for e in edges)
    untils = [lo + c * (hi - lo) for c in cuts]
    whole = edges_from_steps(edges)
    assert convert(in_batches(edges, untils, early, seed)) == whole
    assert all(a[0] < b[0] for a, b in itertools.pairwise(whole))


def test_a_cut_inside_an_overlap_or_a_hole_is_merged_as_in_one_batch() -> None:
    """The cases the batch cut broke: the end of a step whose start came in the batch before
    (it used to leave the step open, or label the next one a gap), an overlap whose newer start
    was handed before the cut and the older end after it, and a jitter hole across it."""
    edges = jittered_edges(3, 300, 0.002, 0.0)
    whole = edges_from_steps(edges)
    for cut in (e.t for e in edges[200:260]):  # every cut in a stretch well past the warm-up
        batches = [
            ([e for e in edges if e.t <= cut], cut),
            ([e for e in edges if e.t > cut], math.inf),
        ]
        assert convert(batches) == whole
        # Before: each batch converted on its own.
        old = [b for batch, _ in batches for b in edges_from_steps(batch)]
        assert len(old) >= len(whole)


@functools.cache
def hostile_run():
    """20 s of 10 ms steps with gaps, 2 ms jitter on readings and on step edges."""
    return step_suite_run(10, 0, edge_jitter_s=0.002)


@functools.cache
def short_run():
    """The same, 4 s long."""
    return step_suite_run(10, 1, edge_jitter_s=0.002, duration_s=4.0)


def live_timeline(per_batch, run=None, seed: int = 1) -> EnergyTimeline:
    """A run (the hostile one) fed as a live meter gets it (drains and edge ticks drawn from
    ``seed``), each batch of step edges turned into boundaries by ``per_batch(batch, until)``."""
    trace = (run or hostile_run()).trace
    live = EnergyTimeline()
    edges = sorted(trace.steps, key=lambda e: e.t)

    def hand(batch: list[StepEdge], until: float) -> None:
        live.add_edges(*per_batch(batch, until))

    feed_live(trace.samples, edges, hand, lambda e: e.t, seed, live.add)
    live.flush()
    return live


def test_live_edges_in_batches_give_the_energies_of_the_whole_recording() -> None:
    run = hostile_run()
    whole = run.trace.timeline(edges=True)
    conv = StepBoundaries()
    live = live_timeline(conv.add)
    steps = run.train_steps
    assert len(steps) > 500
    for s in steps:
        assert live.energy_between(s.start, s.end)["gpu0"] == pytest.approx(
            whole.energy_between(s.start, s.end)["gpu0"], rel=1e-9, abs=1e-9
        )
    # Before, each batch on its own: steps at a cut lost or gained joules.
    old = live_timeline(lambda batch, until: (edges_from_steps(batch), until))
    moved = [
        abs(
            old.energy_between(s.start, s.end)["gpu0"]
            - whole.energy_between(s.start, s.end)["gpu0"]
        )
        for s in steps
    ]
    assert max(moved) > 0.01


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_any_live_batching_gives_the_energies_of_one_batch(seed: int) -> None:
    run = short_run()
    whole = run.trace.timeline(edges=True)
    live = live_timeline(StepBoundaries().add, run, seed)
    for s in run.train_steps:
        assert live.energy_between(s.start, s.end)["gpu0"] == pytest.approx(
            whole.energy_between(s.start, s.end)["gpu0"], rel=1e-9, abs=1e-9
        )
