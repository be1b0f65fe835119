"""A hand-over of step edges skips the timeline's advance when it would finalize nothing (the
power reaches no further than the edges already did), as does a counter read too recent to
place: the knots, final and provisional, are those of a timeline that makes every advance's
pass, after every hand-over and drain of a feed paced as the books' refresher and the NVML
buffer are (seed 0) or of a random live feed."""

from __future__ import annotations

import functools
import math

import pytest
from live_feed import feed_live

from lightning_watt.energy.segment_fit import StepBoundaries
from lightning_watt.energy.timeline import DeviceTimeline, EnergyTimeline
from lightning_watt.testing.synthetic import step_suite_run


@functools.cache
def short_run():
    """4 s of 10 ms steps with gaps, 2 ms jitter on readings and on step edges."""
    return step_suite_run(10, 1, edge_jitter_s=0.002, duration_s=4.0)


def _force_advances(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timelines of devices named ``forced-...`` make every advance's pass, as before any skip
    (a hand-over's or a counter read's): what a skipped one would have done. Others advance as
    the library does."""
    advance = DeviceTimeline.advance

    def forced_or_not(self: DeviceTimeline) -> None:
        if self.name.startswith("forced"):
            self._advance(final=False)
            self._settled = self._version
        else:
            advance(self)

    monkeypatch.setattr(DeviceTimeline, "advance", forced_or_not)


def _assert_same_knots(skipping: EnergyTimeline, forced: EnergyTimeline) -> None:
    for name in skipping.devices:
        assert skipping.device(name).knots() == forced.device("forced-" + name).knots()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_skipped_advances_change_no_knot(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    add_edges = DeviceTimeline.add_edges
    skipped = []

    def counted(self: DeviceTimeline, edges: list, until: float) -> None:
        add_edges(self, edges, until)
        if not self.name.startswith("forced"):
            skipped.append(self._settled == self._version)  # its advance will be skipped

    monkeypatch.setattr(DeviceTimeline, "add_edges", counted)
    _force_advances(monkeypatch)
    trace = short_run().trace
    skipping, forced = EnergyTimeline(), EnergyTimeline()
    to_skipping, to_forced = StepBoundaries(), StepBoundaries()

    def hand(batch: list, until: float) -> None:
        skipping.add_edges(*to_skipping.add(batch, until))
        forced.add_edges(*to_forced.add(batch, until))

    def add(chunk: list) -> None:
        skipping.add(chunk)
        forced.add([r._replace(device="forced-" + r.device) for r in chunk])

    def check() -> None:
        _assert_same_knots(skipping, forced)

    edges = sorted(trace.steps, key=lambda e: e.t)
    if seed:
        feed_live(trace.samples, edges, hand, lambda e: e.t, seed, add, check)
    else:
        # As the books hand them: edges every 0.1 s, readings drained every 0.5 s.
        samples, k, e, t = trace.samples, 0, 0, trace.samples[0].t
        hand([], t)
        while k < len(samples) or e < len(edges):
            t += 0.1
            if round((t - samples[0].t) / 0.1) % 5 == 0:
                drained = k
                while k < len(samples) and samples[k].t <= t:
                    k += 1
                add(samples[drained:k])
            handed = e
            while e < len(edges) and edges[e].t <= t - 0.005:
                e += 1
            hand(edges[handed:e], t - 0.005)
            check()
        hand([], math.inf)
    skipping.flush()
    forced.flush()
    check()
    assert any(skipped) and not all(skipped)  # both kinds of hand-over happened
    if not seed:
        assert sum(skipped) > len(skipped) / 2  # most hand-overs come between drains


@pytest.mark.parametrize(
    ("power_kinds", "drain_s", "counter_late_s"),
    [(("buffer_W",), 0.5, 0.0), ((), 0.5, 0.0), (("buffer_W",), 0.02, 0.2)],
    ids=["nvml", "counter-alone", "late-counter"],
)
def test_counter_reads_between_drains_change_no_knot(
    monkeypatch: pytest.MonkeyPatch,
    power_kinds: tuple[str, ...],
    drain_s: float,
    counter_late_s: float,
) -> None:
    """As a live NVML meter feeds it: each counter read alone (10 a second), the buffer's
    samples drained every 0.5 s, edges handed every 0.1 s; or a counter alone (RAPL); or power
    every 20 ms and counter values arriving 0.2 s late (a slow driver call), placeable at once.
    A counter read too recent to place skips its advance (``_counter_waits``); every knot, at
    every step of the feed, is that of a timeline that makes every advance's pass."""
    waits = DeviceTimeline._counter_waits
    waited = []

    def noted(self: DeviceTimeline, t: float) -> bool:
        out = waits(self, t)
        if not self.name.startswith("forced"):
            waited.append(out)
        return out

    _force_advances(monkeypatch)
    monkeypatch.setattr(DeviceTimeline, "_counter_waits", noted)
    trace = short_run().trace
    skipping, forced = EnergyTimeline(), EnergyTimeline()
    to_skipping, to_forced = StepBoundaries(), StepBoundaries()
    counters = [r for r in trace.samples if r.kind == "counter_J"]
    power = [r for r in trace.samples if r.kind in power_kinds]
    edges = sorted(trace.steps, key=lambda e: e.t)

    def add(chunk: list) -> None:
        skipping.add(chunk)
        forced.add([r._replace(device="forced-" + r.device) for r in chunk])
        _assert_same_knots(skipping, forced)

    def hand(batch: list, until: float) -> None:
        skipping.add_edges(*to_skipping.add(batch, until))
        forced.add_edges(*to_forced.add(batch, until))

    # Events in time order: (time, order, what); a buffer sample arrives at the drain after it.
    events = [(r.t + counter_late_s, 1, [r]) for r in counters]
    t0, end = trace.samples[0].t, trace.samples[-1].t + 0.5
    k, t = 0, t0
    while t < end:
        t += drain_s
        drained = k
        while k < len(power) and power[k].t <= t:
            k += 1
        events.append((t, 2, power[drained:k]))
    e, t = 0, t0
    hand([], t0)
    handovers = []
    while t < end:
        t += 0.1
        handed = e
        while e < len(edges) and edges[e].t <= t - 0.005:
            e += 1
        handovers.append((t, 0, (edges[handed:e], t - 0.005)))
    for _, order, what in sorted(events + handovers, key=lambda x: (x[0], x[1])):
        if order == 0:
            hand(*what)
        else:
            add(what)
    hand([], math.inf)
    skipping.flush()
    forced.flush()
    _assert_same_knots(skipping, forced)
    if power_kinds and not counter_late_s:
        assert sum(waited) >= len(counters) // 4  # most reads between drains wait for power
    if counter_late_s:
        assert not all(waited)  # most late reads are placeable at once
