"""The books' refresher carries step edges as plain rows and books the common case (steps that
each start and end in turn) in bulk: every bulk path gives exactly what the edge-by-edge one
gives (the same floats, boundaries, counts and file bytes), whatever the edges and batches."""

from __future__ import annotations

import bisect
import gzip
import math
import random
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_watt.attribution.books import StageBooks
from lightning_watt.attribution.ledger import EnergyLedger, StepSpans
from lightning_watt.attribution.step_clock import Edge, StepClock
from lightning_watt.energy.edge_rows import edge_rows, paired_times
from lightning_watt.energy.meter import EnergyMeter
from lightning_watt.energy.segment_fit import _MIN_SEGMENT_S, EdgeModel, StepBoundaries
from lightning_watt.energy.timeline import EnergyTimeline
from lightning_watt.energy.trace import StepEdge, TraceWriter, bundled_trace, load_trace

PHASES = ("train", "val", "sanity")


def rows_of(seed: int, n: int, odd: float, jitter: float) -> list[tuple]:
    """``n`` steps as a loop marks them: mostly train steps back to back, now and then a
    validation run, an epoch not named yet, an end or a start on its own (``odd``), host
    stamps moved by up to ``jitter`` (then ends come after the next start now and then)."""
    rng = random.Random(seed)
    rows, t, epoch = [], 1.0, None
    for k in range(n):
        if rng.random() < 0.02:
            epoch = 0 if epoch is None else epoch + 1
        phase = "train" if rng.random() < 0.8 else rng.choice(PHASES)
        length = rng.uniform(0.0005, 0.004)
        for edge, at in (("start", t), ("end", t + length)):
            if rng.random() >= odd:
                rows.append((phase, edge, k, epoch, at + rng.uniform(-jitter, jitter)))
        t += length + (rng.uniform(0.0, 0.01) if rng.random() < 0.2 else 1e-5)
    return rows


def in_batches(rows: list[tuple], cuts: int, seed: int) -> list[list[tuple]]:
    rng = random.Random(seed)
    at = sorted(rng.randrange(len(rows) + 1) for _ in range(cuts))
    return [rows[a:b] for a, b in zip([0, *at], [*at, len(rows)], strict=True)]


def energy(t0: float, t1: float) -> float:
    def cumulative(t: float) -> float:
        return 120.0 * t + 30.0 * math.sin(7.0 * t)

    return cumulative(t1) - cumulative(t0)


def ledger_state(ledger: EnergyLedger) -> tuple:
    return (
        repr(ledger.phases),
        repr(ledger.steps),
        repr({e: (ep.phases, ep.train_steps) for e, ep in ledger.epochs.items()}),
        repr(ledger.unassigned),
        repr(ledger.step_energies),
        repr((ledger.cursor, ledger._open_phase, ledger._epoch, ledger._open_energy)),
    )


no_bulk_rows = st.builds(
    rows_of,
    seed=st.integers(0, 10**6),
    n=st.integers(0, 300),
    odd=st.sampled_from([0.0, 0.0, 0.02]),
    jitter=st.sampled_from([0.0, 0.0, 0.0003]),
)


def test_paired_times_recognises_only_steps_that_start_and_end_in_turn() -> None:
    ok = [("train", "start", 0, 0, 1.0), ("train", "end", 1, 0, 2.0)]
    assert paired_times(ok) == [1.0, 2.0]
    assert paired_times([*ok, ("train", "start", 1, 0, 3.0)]) == [1.0, 2.0, 3.0]
    assert paired_times(ok[:1]) is None  # fewer than two
    assert paired_times([ok[1], ok[0]]) is None  # an end first
    assert paired_times([ok[0], ("val", "end", 1, 0, 2.0)]) is None  # another phase
    assert paired_times([ok[0], ("train", "end", 1, 0, 1.0)]) is None  # not after its start
    assert paired_times([("", "start", 0, 0, 1.0), ("", "end", 0, 0, 2.0)]) is None
    assert paired_times([ok[0], ("train", "end", 1, 0, math.nan)]) is None


@settings(max_examples=120, deadline=None)
@given(rows=no_bulk_rows, cuts=st.integers(0, 12), seed=st.integers(0, 100))
def test_the_ledger_books_steps_in_bulk_as_edge_by_edge(rows, cuts, seed) -> None:
    """Advanced in chunks at random times, the bulk booking leaves every float as the loop."""
    rng = random.Random(seed)
    bulk, each = EnergyLedger(start=0.5), EnergyLedger(start=0.5)
    bulk.add_edges(rows)
    each.add_edges(rows)
    end = max((r[4] for r in rows), default=1.0) + 0.1
    untils = [*sorted(rng.uniform(0.5, end) for _ in range(cuts)), end]
    for until in untils:
        bulk.advance(until, energy)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(EnergyLedger, "_book_steps", lambda self, n, fn: False)
        for until in untils:
            each.advance(until, energy)
    assert ledger_state(bulk) == ledger_state(each)


@settings(max_examples=120, deadline=None)
@given(rows=no_bulk_rows, cuts=st.integers(0, 12), seed=st.integers(0, 100))
def test_live_spans_in_bulk_as_edge_by_edge(rows, cuts, seed) -> None:
    bulk, each = StepSpans(), StepSpans()
    taken_bulk, taken_each = [], []
    for batch in in_batches(rows, cuts, seed):
        bulk.add(batch)
        each._add_each(batch)
        taken_bulk += bulk.take()
        taken_each += each.take()
    assert taken_bulk == taken_each and bulk.count == each.count and bulk._open == each._open


@settings(max_examples=120, deadline=None)
@given(rows=no_bulk_rows, cuts=st.integers(0, 12), seed=st.integers(0, 100))
def test_step_boundaries_in_bulk_as_edge_by_edge(rows, cuts, seed) -> None:
    """Rows handed in batches (each up to a time a little past its last edge): the same
    boundaries, completeness times and state, with or without the bulk path."""

    batches = in_batches(rows, cuts, seed)
    # Each batch brings every edge up to just before the next batch's first edge.
    untils, until = [], -math.inf
    for k in range(len(batches)):
        later = [r[4] for b in batches[k + 1 :] for r in b]
        until = max(until, math.nextafter(min(later), -math.inf) if later else 1e9)
        untils.append(until)

    def convert() -> list:
        conv, out = StepBoundaries(), []
        for batch, until in zip(batches, untils, strict=True):
            out.append(conv.add_rows(batch, until))
        out.append(conv.add_rows([], math.inf))
        return [out, conv._stamp_open, conv._opened, conv._changes, conv._overlaps]

    bulk = convert()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(StepBoundaries, "_take_steps", lambda self, rows: False)
        each = convert()
    assert bulk == each


def reference_add(times: list[float], labels: list[str], edges) -> None:
    """EdgeModel.add before its in-order path: a search and an insert for every edge."""
    for t, label in edges:
        if not math.isfinite(t):
            continue
        i = bisect.bisect_right(times, t)
        if i and t - times[i - 1] < _MIN_SEGMENT_S:
            if i == len(times) or times[i] - t >= _MIN_SEGMENT_S:
                times[i - 1], labels[i - 1] = t, label
            continue
        if i < len(times) and times[i] - t < _MIN_SEGMENT_S:
            continue
        times.insert(i, t)
        labels.insert(i, label)


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(st.floats(-0.002, 0.01), max_size=200),
    labels=st.lists(st.sampled_from(["train", "", "val"]), min_size=200, max_size=200),
    cuts=st.integers(1, 8),
)
def test_edge_model_appends_in_order_edges_as_it_inserted_them(gaps, labels, cuts) -> None:
    t, edges = 1.0, []
    for gap, label in zip(gaps, labels, strict=False):
        t += gap  # mostly in order, now and then a step back
        edges.append((t, label))
    model, times, names = EdgeModel(), [], []
    size = max(1, len(edges) // cuts)
    for i in range(0, len(edges), size):
        model.add(edges[i : i + size], until=math.inf)
        reference_add(times, names, edges[i : i + size])
    assert model.times == times and model.labels == names


def test_step_rows_are_written_as_step_edges_moved_to_the_trace_clock(tmp_path: Path) -> None:
    """Plain rows with the meter's origin give the bytes that shifted StepEdges gave, and
    lines held between flushes are all in the file once it closes."""
    rng = random.Random(3)
    origin = 1234.5
    rows, t = [], origin + 0.1
    for k in range(3000):
        gpu = None if k < 1500 else t + 0.004
        rows.append(("train" if k % 50 else "val", "start", k, t, gpu))
        t += rng.uniform(0.0005, 0.006)
        rows.append(("train" if k % 50 else "val", "end", k + 1, t, None if gpu is None else t))
        t += rng.uniform(0.0, 0.002)
    for layout, bad in (("compact", [("train", "start", 9, math.nan, None)]), ("v1", [])):
        rows_l = rows + bad  # compact: a time that is not finite is dropped, as before
        shifted = [
            StepEdge(p, e, i, th - origin, None if tg is None else tg - origin)
            for p, e, i, th, tg in rows_l
        ]
        a, b = (
            TraceWriter(tmp_path / f"a{layout}", layout),
            TraceWriter(tmp_path / f"b{layout}", layout),
        )
        for i in range(0, len(rows_l), 97):
            a.write_steps(rows_l[i : i + 97], origin=origin)
            b.write_steps(shifted[i : i + 97])
            if i % 970 == 0:
                a.flush()
                b.flush()
        a.close()
        b.close()
        steps_a = gzip.decompress((tmp_path / f"a{layout}.steps.csv.gz").read_bytes())
        assert steps_a == gzip.decompress((tmp_path / f"b{layout}.steps.csv.gz").read_bytes())
        assert a.dropped_steps == b.dropped_steps == len(bad)
        assert len(load_trace(tmp_path / f"a{layout}").steps) > 1000


def test_resolve_rows_are_the_edges_resolve_gives() -> None:
    times = iter([1.0, 2.0, 3.0])
    clock = StepClock(lambda: next(times), device=None)
    clock.mark("train", "start", 0, None)
    clock.mark("train", "end", 1, 0)
    rows = clock.resolve_rows()
    assert [Edge(*r) for r in rows] == [
        Edge("train", "start", 0, None, 1.0, None),
        Edge("train", "end", 1, 0, 2.0, None),
    ]
    clock.mark("val", "start", 0, 0)
    twin = clock.resolve()
    assert twin == [Edge("val", "start", 0, 0, 3.0, None)] and clock.pending == 0


def test_edge_rows_of_step_edges() -> None:
    edges = [StepEdge("train", "start", 0, 1.0), StepEdge("train", "end", 1, 2.0, 2.5)]
    assert edge_rows([*edges, StepEdge("val", "start", 2, math.inf)]) == [
        ("train", "start", 0, None, 1.0),
        ("train", "end", 0, None, 2.5),
    ]


def test_kept_edges_pruned_by_bisection_as_by_a_pass() -> None:
    """The timeline keeps edges for devices not heard from yet: pruning a sorted list by
    bisection keeps what the pass over it kept, and an edge out of order falls back to it."""
    readings = list(load_trace(bundled_trace("h200-square-wave")).select())[:2000]
    kept = []
    for sortedness in (True, False):
        tl = EnergyTimeline()
        t = readings[0].t
        for k, r in enumerate(readings):
            tl.add([r])
            if k % 100 == 99:
                tl.add_edges([(t + 0.01 * j, "train" if j % 2 else "") for j in range(10)], t)
                t += 0.1
                tl._edges_sorted = tl._edges_sorted and sortedness
        kept.append(list(tl._edges))
    assert kept[0] == kept[1] and 0 < len(kept[0]) < 10 * (len(readings) // 100)
    tl = EnergyTimeline()
    tl.add_edges([(2.0, "train"), (1.0, "")], until=3.0)
    assert not tl._edges_sorted


# ------------------------------------------------------------------ the books end to end
def run_books(tmp_path: Path, name: str, seconds: float, jitter: float) -> tuple:
    """A stage driven by a fake clock: steps marked, readings of a recorded H200 run fed to
    the meter's timeline as they would arrive (0.3 s late), the books refreshed every 25 ms
    and handed over every 0.1 s as the refresher does. Returns everything the books make."""
    rng = random.Random(11)
    now = [100.0]
    meter = EnergyMeter(sources=[], record=str(tmp_path / name), clock=lambda: now[0]).start()
    meter._timeline = EnergyTimeline()  # fed below, as the meter's thread would feed it
    readings = sorted(load_trace(bundled_trace("h200-mlp-stall")).select(), key=lambda r: r.t)
    readings = [r._replace(t=r.t - readings[0].t + 100.0) for r in readings]
    books = StageBooks(meter, StepClock(meter.now, device=None), refresh_s=None)
    fed, rows, t, due, epoch = 0, [], 100.0, 100.025, 0

    def mark(phase: str, edge: str, index: int, epoch: int | None, at: float) -> None:
        now[0] = at
        books.mark(phase, edge, index, epoch)

    for k in range(3):
        mark("sanity", "start", k, None, t)
        mark("sanity", "end", k, None, t + 0.002)
        t += 0.003
    n = 0
    while t < 100.0 + seconds:
        length = 0.0015 * (1 + 0.2 * rng.random())
        mark("train", "start", n, epoch, t + rng.uniform(-jitter, jitter))
        mark("train", "end", n + 1, epoch, t + 0.9 * length + rng.uniform(-jitter, jitter))
        t += length
        n += 1
        if n % 300 == 0:
            for v in range(40):
                mark("val", "start", v, epoch, t)
                mark("val", "end", v, epoch, t + 0.001)
                t += 0.0011
            epoch += 1
        if rng.random() < 0.003:
            t += rng.uniform(0.01, 0.2)  # a stall
        now[0] = t
        if t >= due:
            upto = fed
            while upto < len(readings) and readings[upto].t <= t - 0.3:
                upto += 1
            with meter._lock:
                meter._timeline.add(readings[fed:upto])
            fed = upto
            snap = books.refresh(pause_s=1e-9, sync_s=0.1)
            tick = books.tick()
            rows.append((snap.horizon, snap.energy_J, snap.steps, snap.steps_J, tick.step_J))
            due = t + 0.025
    with meter._lock:
        meter._timeline.add(readings[fed:])
    now[0] = t + 0.01
    record = books.finish(epoch=epoch)
    steps_file = gzip.decompress((tmp_path / f"{name}.steps.csv.gz").read_bytes())
    return repr(rows), repr(record.totals), steps_file, repr(books.ledger.step_energies)


@pytest.mark.parametrize("jitter", [0.0, 0.0006])
def test_the_books_make_the_same_numbers_with_or_without_bulk_paths(
    tmp_path: Path, jitter: float, monkeypatch
) -> None:
    bulk = run_books(tmp_path, "bulk", 1.5, jitter)
    with monkeypatch.context() as m:
        m.setattr(EnergyLedger, "_book_steps", lambda self, n, fn: False)
        m.setattr(StepBoundaries, "_take_steps", lambda self, rows: False)
        m.setattr(StepSpans, "add", StepSpans._add_each)
        each = run_books(tmp_path, "each", 1.5, jitter)
    assert bulk == each
    assert "train" in bulk[1] and len(bulk[2]) > 1000


def test_steps_held_while_the_recording_is_busy_are_written_in_order(tmp_path: Path) -> None:
    """record_steps(wait=False) never waits for the meter's thread: edges it could not write
    are written first at the next call, or when the meter stops."""
    now = [10.0]
    meter = EnergyMeter(sources=[], record=str(tmp_path / "run"), clock=lambda: now[0]).start()
    rows = [("train", "start" if k % 2 == 0 else "end", k // 2, 10.0 + k, None) for k in range(6)]
    with meter._writer_lock:  # another thread would hold it; an RLock lets this one in
        held = threading.Thread(target=meter.record_steps, args=(rows[:2],), kwargs={"wait": False})
        held.start()
        held.join()
    assert meter._steps_waiting == rows[:2]
    meter.record_steps(rows[2:4], wait=False)  # free now: the held ones go first
    with meter._writer_lock:
        late = threading.Thread(target=meter.record_steps, args=(rows[4:],), kwargs={"wait": False})
        late.start()
        late.join()
    now[0] = 20.0
    meter.stop()  # writes what is still held
    steps = load_trace(tmp_path / "run").steps
    assert [(s.edge, s.index, s.t_host) for s in steps] == [
        (e, i, t - 10.0) for _, e, i, t, _ in rows
    ]


def test_edges_the_meters_lock_kept_back_are_handed_with_the_next_ones() -> None:
    """The refresher never waits for the meter's lock: edges it could not hand over go with
    the next hand-over, and the meter ends up with the boundaries of an uncontended run."""

    def run(contended: bool) -> tuple:
        now = [5.0]
        meter = EnergyMeter(sources=[], clock=lambda: now[0]).start()
        books = StageBooks(meter, StepClock(meter.now, device=None), refresh_s=None)
        unhanded = []
        for batch in range(3):
            for k in range(10 * batch, 10 * batch + 10):
                now[0] = 5.0 + 0.01 * k
                books.mark("train", "start", k, 0)
                now[0] += 0.004
                books.mark("train", "end", k + 1, 0)
            now[0] += 0.02
            if contended and batch == 1:
                held, release = threading.Event(), threading.Event()

                def hold(held=held, release=release) -> None:
                    with meter._lock:
                        held.set()
                        release.wait(5.0)

                holder = threading.Thread(target=hold)
                holder.start()
                held.wait()
                hand_over = meter.add_edge_rows

                def tried(*args, original=hand_over, release=release, **kwargs):
                    # The lock is let go once the hand-over tried it, not after a fixed delay
                    # that a loaded machine could outlast before the try.
                    try:
                        return original(*args, **kwargs)
                    finally:
                        release.set()

                meter.add_edge_rows = tried  # type: ignore[method-assign]
                books.sync_edges(pause_s=1e-9)  # waits only for the ledger's energy lookup
                del meter.add_edge_rows
                holder.join()
            else:
                books.sync_edges(pause_s=1e-9)
            unhanded.append(len(books._unhanded))
        edges = list(meter._timeline._edges)
        books.finish(epoch=0)
        return unhanded, edges, dict(books.ledger.steps)

    contended, free = run(True), run(False)
    assert contended[0] == [0, 20, 0] and free[0] == [0, 0, 0]
    assert contended[1:] == free[1:] and len(free[1]) >= 59
