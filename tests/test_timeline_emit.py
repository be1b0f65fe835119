"""``DeviceTimeline._emit`` on arrays (32 knots or more) against its loop: the same knots and
energies, bit for bit, for knots out of order, repeated, behind the finalized part, and
energies that dip (rounding in the power integral)."""

from __future__ import annotations

import math
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_watt.energy.timeline import DeviceTimeline


def _loop(kt: array, ke: array, ts: list[float], es: list[float]) -> None:
    for t, e in zip(ts, es, strict=True):
        if kt and t <= kt[-1]:
            continue
        kt.append(t)
        ke.append(max(e, ke[-1]) if ke else e)


def knots(min_size: int) -> st.SearchStrategy[list[tuple[float, float]]]:
    time, joules = st.floats(-1.0, 100.0), st.floats(0.0, 1e4)
    return st.lists(st.tuples(time, joules), min_size=min_size, max_size=120)


@settings(max_examples=200)
@given(before=knots(0), batch=knots(32), drift=st.booleans())
def test_emitting_many_knots_equals_the_loop(
    before: list[tuple[float, float]], batch: list[tuple[float, float]], drift: bool
) -> None:
    if drift:  # mostly rising, as a window's knots are, with a few steps back
        batch = sorted(batch)
        batch = [(t, e - (1e-12 if i % 7 == 3 else 0.0)) for i, (t, e) in enumerate(batch)]
    tl = DeviceTimeline("gpu0")
    want_t, want_e = array("d"), array("d")
    for t, e in sorted(before):
        _loop(want_t, want_e, [t], [e])
    tl._kt.extend(want_t)
    tl._ke.extend(want_e)
    ts, es = [t for t, _ in batch], [e for _, e in batch]
    tl._emit(ts, es, "counter_J", 0.0, 1.0)
    _loop(want_t, want_e, ts, es)
    assert tl._kt.tobytes() == want_t.tobytes()
    assert tl._ke.tobytes() == want_e.tobytes()
    assert math.isclose(tl.seconds_by_method["counter_J"], 1.0)
