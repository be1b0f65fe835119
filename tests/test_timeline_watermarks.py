"""A watermark alone (a reader polled again, nothing new since the last finalizing) does not
finalize anything: ``EnergyTimeline.mark_polled`` then skips the device's advance. Checked by
feeding one real trace, channel by channel in random order with stalls, and step edges handed
late (between polls, so only a watermark's advance finalizes what they release), to two
timelines: one as the meter does, one advancing after every watermark as before. They are
finalized as far, and their knots (finalized and provisional) are the same floats, after
every poll."""

from __future__ import annotations

import random

import pytest

from lightning_watt.energy.readings import Reading
from lightning_watt.energy.timeline import DeviceTimeline, EnergyTimeline
from lightning_watt.energy.trace import bundled_trace, load_trace


@pytest.mark.parametrize("seed", [3, 4])
def test_skipping_advances_after_a_bare_watermark_finalizes_the_same(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    tr = load_trace(bundled_trace("h200-mlp-stall"))
    start = tr.span[0]
    by_kind: dict[str, list[Reading]] = {}
    for r in tr.samples:
        if r.t < start + 20.0:
            by_kind.setdefault(r.kind, []).append(r)
    steps = [(start + 0.3 + 0.007 * k, "train" if k % 5 else "") for k in range(2900)]
    rng = random.Random(seed)
    pos = dict.fromkeys(by_kind, 0)
    fed, always = EnergyTimeline(), EnergyTimeline()
    advances = [0]  # the fed timeline's advances
    advance = DeviceTimeline.advance

    def counting(self: DeviceTimeline) -> None:
        advances[0] += any(self is tl for tl in fed._devices.values())
        advance(self)

    monkeypatch.setattr(DeviceTimeline, "advance", counting)
    pairs = [("gpu0", kind) for kind in by_kind]
    t, n_edges, advanced, skipped = start, 0, 0, 0

    def poll(kinds: list[str], t: float) -> None:
        nonlocal advanced, skipped
        for kind in kinds:
            rows, out = by_kind[kind], []
            while pos[kind] < len(rows) and rows[pos[kind]].t <= t:
                out.append(rows[pos[kind]])
                pos[kind] += 1
            for tl in (fed, always):
                tl.add(out)
            before = advances[0]
            fed.mark_polled([("gpu0", kind)], t)
            always.mark_polled([("gpu0", kind)], t)
            always.device("gpu0").advance()
            if advances[0] == before:
                skipped += 1
            else:
                advanced += 1
            assert fed.finalized_until == always.finalized_until
            assert fed.device("gpu0").knots() == always.device("gpu0").knots()

    fed.add([by_kind["counter_J"][0]])
    always.add([by_kind["counter_J"][0]])
    while t < start + 21.0:
        t += 0.1
        if rng.random() < 0.05:
            t += rng.uniform(0.3, 1.0)  # the meter thread stalled
        poll(sorted(by_kind, key=lambda _: rng.random()), t)
        # Edges come between polls; the next watermarks alone finalize what they release.
        known = t - rng.uniform(0.8, 1.2)  # edges lag the data: they bound finalizing
        batch = [e for e in steps[n_edges:] if e[0] <= known]
        n_edges += len(batch)
        for tl in (fed, always):
            tl.add_edges(batch, until=known)
        poll([kind for _, kind in pairs], t + 0.001)
    # Most watermarks came with nothing new (skipped); each first one of a kind did not.
    assert skipped > 100 and advanced >= len(by_kind)
    for tl in (fed, always):
        tl.flush()
    assert fed.device("gpu0").knots() == always.device("gpu0").knots()
