"""The counter reads a live meter would have taken from a counter read in a tight loop.

``thinned_counter_reads`` (:mod:`~lightning_watt.testing.synthetic`) keeps the first read at or
after each 100 ms due time and catches up after the recording loop stalled, which a meter does
not do; :func:`meter_reads` follows the meter's own rule: the next due time is one schedule step
later, or now if the read came late, and the schedule may cycle through several gaps
(``Channel.pattern``).

Example:
    >>> from lightning_watt.energy.readings import Reading
    >>> tight = [Reading(0.003 * i, "gpu0", "counter_J", float(i // 33)) for i in range(200)]
    >>> [round(r.t, 3) for r in meter_reads(tight, (0.08, 0.124))]
    [0.0, 0.081, 0.204, 0.285, 0.408, 0.489]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from lightning_watt.energy.readings import COUNTER_J, INSTANT_W, Reading
from lightning_watt.testing.synthetic import SyntheticRun, synthetic_run


def meter_reads(readings: Iterable[Reading], schedule: tuple[float, ...]) -> list[Reading]:
    """The counter reads among time-ordered ``readings`` that a meter polling on ``schedule``
    (seconds between reads, cycled) would have taken: the first at or after each due time.

    Raises:
        ValueError: an empty schedule or a gap that is not positive.
    """
    if not schedule or any(not gap > 0 for gap in schedule):
        raise ValueError(f"schedule: positive gaps in seconds expected, got {schedule!r}")
    gaps = itertools.cycle(schedule)
    kept: list[Reading] = []
    due = None
    for r in readings:
        if r.kind != COUNTER_J:
            continue
        if due is None or r.t >= due:
            kept.append(r)
            due = max((r.t if due is None else due) + next(gaps), r.t)
    return kept


def tight_counter_run(seed: int) -> tuple[SyntheticRun, list[float]]:
    """A 30 s ``synthetic_run`` without a power buffer (power fields only) whose counter, on a
    100 ms grid with 2 missed updates, was read every 3 ms with 1 ms of stamp jitter: thin it
    with :func:`meter_reads`. Also returns the grid's update instants inside the fit, from 3 s
    in (the truth for windows between updates).

    Example:
        >>> run, updates = tight_counter_run(0)
        >>> len(updates) > 200
        True
    """
    phase, period = 0.0437, 0.1
    run = synthetic_run(
        seed=seed,
        duration_s=30.0,
        counter_interval_s=period,
        counter_phase_s=phase,
        counter_read_interval_s=0.003,
        jitter_s=0.001,
        missed_updates=2,
        kinds={COUNTER_J, INSTANT_W},
    )
    a, b = run.trace.fit_window
    grid = (phase + period * k for k in range(int(b / period) + 1))
    updates = [u for u in grid if a + 3.0 < u < b]
    return run, updates
