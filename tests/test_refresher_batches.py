"""The books' refresher's bulk paths give exactly what their per-edge loops give (the edges a
timeline keeps), on hostile edges: stamps microseconds apart, out of order, ties, not finite."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_watt.energy.segment_fit import _MIN_SEGMENT_S, EdgeModel

# Gaps around the boundary merge threshold, as a step's end and the next start are stamped.
_GAPS = st.sampled_from(
    [0.0, 1e-6, _MIN_SEGMENT_S / 2, _MIN_SEGMENT_S, _MIN_SEGMENT_S * 1.01, 0.0015, 0.02]
)


@st.composite
def edge_times(draw: st.DrawFn, start: float = 1.0) -> list[float]:
    """Mostly increasing times, sometimes stepping back or not finite."""
    t, out = start, []
    for _ in range(draw(st.integers(0, 40))):
        t += draw(_GAPS)
        out.append(t)
    if out and draw(st.booleans()):
        i = draw(st.integers(0, len(out) - 1))
        out[i] = draw(st.sampled_from([math.nan, math.inf, -math.inf, out[i] - 0.01, 0.5]))
    return out


@settings(max_examples=300, deadline=None)
@given(data=st.data(), before=edge_times(), until=st.floats(0.0, 3.0))
def test_edge_model_bulk_keeps_what_the_loop_keeps(
    data: st.DataObject, before: list[float], until: float
) -> None:
    kept = [t for t in before if math.isfinite(t)]
    # Mostly after the edges given before (as a live meter hands them), sometimes not.
    start = (kept[-1] if kept else 1.0) + data.draw(st.sampled_from([-0.01, 0.0, 1.0]))
    batch = data.draw(edge_times(start=start))
    labels = ["train" if i % 2 == 0 else "" for i in range(len(batch))]
    bulk, loop = EdgeModel(), EdgeModel()
    for model in (bulk, loop):
        model.add(iter([(t, "train") for t in kept]), until=0.5)
    edges = list(zip(batch, labels, strict=True))
    bulk.add(edges, until)  # a list: the bulk path where it applies
    loop.add(iter(edges), until)  # an iterator: the loop, edge by edge
    assert bulk.times == loop.times
    assert bulk.labels == loop.labels
    assert bulk.until == loop.until
