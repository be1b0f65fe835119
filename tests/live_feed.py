"""Feeding a timeline as a live meter does, for the tests (no Lightning: imported by tests
that run without it)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any


def feed_live(
    samples: Sequence[Any],
    edges: Sequence[Any],
    hand: Callable[[list[Any], float], None],
    time_of: Callable[[Any], float],
    seed: int,
    add: Callable[[list[Any]], None],
    check: Callable[[], None] | None = None,
) -> None:
    """Readings and step edges as a live meter gets them: readings in drains 0.05-0.6 s apart
    (``add``), and at every other drain the edges up to a little behind it (``hand(batch,
    until)``, ``time_of`` an edge's time), the last ones with ``until=inf``; ``check()`` after
    every drain."""
    rng = random.Random(seed)
    k = e = 0
    t = samples[0].t
    hand([], t)  # a meter that will hand edges says so before any reading
    while k < len(samples) or e < len(edges):
        t += rng.uniform(0.05, 0.6)
        chunk = []
        while k < len(samples) and samples[k].t <= t:
            chunk.append(samples[k])
            k += 1
        add(chunk)
        if rng.random() < 0.5:  # edges arrive at ticks, a little behind the readings
            until = t - rng.uniform(0.0, 0.4)
            batch = []
            while e < len(edges) and time_of(edges[e]) <= until:
                batch.append(edges[e])
                e += 1
            hand(batch, until)
        if check is not None:
            check()
    hand([], math.inf)
