"""Log ticks read cached numbers: the books' refresher thread does the bookkeeping."""

from __future__ import annotations

import itertools
import math
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_watt import EnergyMeter, ReplaySource, bundled_trace
from lightning_watt.attribution.books import BUSY_INTERVAL_S, StageBooks, paced_interval
from lightning_watt.attribution.ledger import EnergyLedger, StepSpans
from lightning_watt.attribution.refresher import Refresher
from lightning_watt.attribution.step_clock import StepClock

PHASES = ("train", "val", "sanity")


@st.composite
def edge_streams(draw):
    """Edges in time order, including the odd orders a loop can produce (an end without a
    start, a start of one phase closed by another's end, starts in a row)."""
    n = draw(st.integers(0, 40))
    t, edges = 0.0, []
    for i in range(n):
        t += draw(st.floats(0.001, 1.0))
        phase = draw(st.sampled_from(PHASES))
        edge = draw(st.sampled_from(("start", "end")))
        edges.append((phase, edge, i, 0, t))
    return edges


@settings(max_examples=200, deadline=None)
@given(edge_streams(), st.integers(1, 5))
def test_step_spans_count_and_energy_as_the_ledger_does(edges, chunks):
    """Fed in any chunks, StepSpans finds the ledger's train steps with the same joules."""
    power = lambda t: 100.0 + 40.0 * math.sin(t)  # noqa: E731

    def cumulative(t: float) -> float:
        return 100.0 * t - 40.0 * math.cos(t)

    energy = lambda t0, t1: cumulative(t1) - cumulative(t0)  # noqa: E731
    assert power(0.0) > 0
    ledger = EnergyLedger(start=0.0)
    ledger.add_edges(edges)
    ledger.advance(edges[-1][4] + 1.0 if edges else 1.0, energy)
    spans = StepSpans()
    size = max(1, len(edges) // chunks)
    taken = []
    for i in range(0, len(edges), size):
        spans.add(edges[i : i + size])
        taken += spans.take()
    assert spans.count == ledger.steps.get("train", 0) == len(taken)
    assert [energy(t0, t1) for t0, t1 in taken] == pytest.approx(
        [j for _, j in ledger.step_energies], rel=1e-9, abs=1e-9
    )


@settings(max_examples=100, deadline=None)
@given(edge_streams(), st.integers(1, 8), st.floats(0.0, 1.5))
def test_advancing_in_chunks_books_exactly_what_one_advance_does(edges, chunk, tail):
    energy = lambda t0, t1: (t1 * t1 - t0 * t0) * 50.0  # noqa: E731  (a ramp of power)
    until = (edges[-1][4] if edges else 0.0) + tail
    whole, chunked = EnergyLedger(start=0.0), EnergyLedger(start=0.0)
    whole.add_edges(edges)
    chunked.add_edges(edges)
    whole.advance(until, energy)
    while True:
        end = chunked.chunk_end(until, chunk)
        chunked.advance(end, energy)
        if end >= until:
            break
    assert chunked.phases == whole.phases and chunked.steps == whole.steps
    assert {e: ep.phases for e, ep in chunked.epochs.items()} == {
        e: ep.phases for e, ep in whole.epochs.items()
    }
    assert chunked.cursor == whole.cursor


def test_refresher_runs_until_stopped_and_survives_a_failing_work():
    calls = []

    def work():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a fault in the books")

    with pytest.warns(RuntimeWarning, match="refreshing the energy books failed"):
        worker = Refresher(work, interval_s=0.005).start()
        time.sleep(0.1)
        worker.stop()
    assert worker.errors == 1 and len(calls) > 2 and not worker.running
    n = len(calls)
    time.sleep(0.03)
    assert len(calls) == n
    with pytest.raises(ValueError, match="interval_s"):
        Refresher(work, interval_s=0.0)


def _books(refresh_s: float | None) -> StageBooks:
    meter = EnergyMeter([ReplaySource(bundled_trace("h200-mlp-stall"), start=10.0)]).start()
    deadline = time.monotonic() + 5.0
    while not meter.power() and time.monotonic() < deadline:
        time.sleep(0.01)  # the first power reading: before it a step's energy is 0 J
    return StageBooks(meter, StepClock(meter.now, device=None), refresh_s=refresh_s)


def test_a_tick_reads_the_refresh_and_never_the_meter():
    books = _books(refresh_s=0.01)
    try:
        books.mark("train", "start", 0, 0)
        time.sleep(0.02)
        books.mark("train", "end", 0, 0)
        first = books.tick()  # no step reported yet: the tick refreshes once itself
        assert first.steps == 1 and first.step_J > 0
        for step in range(1, 6):
            books.mark("train", "start", step, 0)
            time.sleep(0.02)
            books.mark("train", "end", step, 0)
        # A refresh that counted the five (every 10 ms; a loaded machine delays the thread).
        deadline = time.monotonic() + 5.0
        while books._snapshot is None or books._snapshot.steps < 6:
            assert time.monotonic() < deadline, "the refresher never counted the steps"
            time.sleep(0.005)
        # With the meter's lock held elsewhere, a tick still returns at once: it reads the
        # refresher's snapshot only.
        held = threading.Event()
        release = threading.Event()

        def hold_lock():
            with books.meter._lock:
                held.set()
                release.wait(5.0)

        holder = threading.Thread(target=hold_lock)
        holder.start()
        assert held.wait(5.0)
        t0 = time.perf_counter()
        tick = books.tick()
        elapsed = time.perf_counter() - t0
        release.set()
        holder.join()
        # A tick that waited for the lock would return only once it is released (5 s): well
        # under that is "at once" on any machine, however late a thread switch comes.
        assert elapsed < 1.0
        assert tick.steps == 5 and tick.step_J > 0 and tick.energy_J >= first.energy_J
        again = books.tick()  # no new step since: no step energy
        assert again.steps == 0 and math.isnan(again.step_J)
    finally:
        books.finish(epoch=0)


def test_books_with_and_without_the_refresher_close_the_same_way():
    """The refresher only moves work off the training thread: final totals add up exactly
    and count every step, whichever thread booked them."""
    for refresh_s in (None, 0.005):
        books = _books(refresh_s)
        for step in range(20):
            books.mark("train", "start", step, 0)
            time.sleep(0.005)
            books.mark("train", "end", step, 0)
            if step % 3 == 2:
                books.tick()
        record = books.finish(epoch=0)
        totals = record.totals
        assert totals.steps == {"train": 20} and totals.epoch_steps == {0: 20}
        assert sum(totals.phases_J.values()) == pytest.approx(totals.energy_J, rel=1e-12)
        device_j = sum(d["energy_J"] for d in record.devices)
        assert totals.energy_J == pytest.approx(device_j, rel=1e-9)
        assert books._refresher is None or not books._refresher.running


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-0.5, 0.6), min_size=1, max_size=12),
    st.sampled_from([None, 0.5]),
    st.booleans(),
)
def test_energy_fn_reads_each_time_as_the_meter_gives_it(offsets, weight, hold):
    """The books read a time past the newest reading once for all such times; each interval's
    joules are still exactly those of the meter's own cumulative energy at each time (held
    power past the newest reading), weighted per device."""
    books = _BOOKS[0]
    meter = books.meter
    books.weights = {d.name: weight for d in meter.devices} if weight is not None else {}
    books._all_counted = weight is None
    horizon = meter.horizon
    assert math.isfinite(horizon) and not meter.running
    times = sorted({horizon + o for o in offsets} | {books.started_at})
    fn = books.energy_fn(times, provisional=True, hold=hold, horizon=horizon)
    held = books.weighted(meter.power()) if hold else 0.0
    expected = [
        books.weighted(meter.energy_at_many([min(t, horizon)])[0]) + held * max(0.0, t - horizon)
        for t in times
    ]
    for (t0, e0), (t1, e1) in itertools.pairwise(zip(times, expected, strict=True)):
        assert fn(t0, t1) == e1 - e0


_BOOKS: list[StageBooks] = []


@pytest.fixture(autouse=True, scope="module")
def _shared_books():
    """Books over a meter that read for a while and stopped: its readings no longer move."""
    books = _books(refresh_s=None)
    time.sleep(0.3)
    books.meter.stop()
    _BOOKS.append(books)
    yield
    _BOOKS.pop()


def test_a_refresh_counts_new_steps_at_once_and_hands_edges_over_every_sync_s():
    """Between hand-overs (``sync_s``) a refresh still counts a new step and gives it energy;
    the ledger and the meter get its edges at the next hand-over, and the books close the same."""
    books = _books(refresh_s=None)
    try:
        books.refresh()  # a hand-over: the books are current
        books.mark("train", "start", 0, 0)
        time.sleep(0.01)
        books.mark("train", "end", 0, 0)
        snap = books.refresh(sync_s=60.0)
        assert snap.steps == 1 and snap.steps_J > 0
        assert len(books._unsynced) == 2 and not books.ledger._edges  # not handed over yet
        books.refresh()  # sync_s=0: hands them over
        assert not books._unsynced and not books._unsynced_booked
        record = books.finish(epoch=0)
        assert record.totals.steps == {"train": 1}
        assert sum(record.totals.phases_J.values()) == pytest.approx(
            record.totals.energy_J, rel=1e-12
        )
    finally:
        books.abort()


def test_a_refresh_with_nothing_new_reuses_the_last_numbers():
    books = _books(refresh_s=None)
    meter = books.meter
    try:
        meter.stop()  # no reading, no poll from here on: the meter's version stands still
        first = books.refresh()  # hands edges over (none): the meter's version moves once
        version = meter.version
        assert books.refresh(sync_s=60.0) is first and meter.version == version
        books.mark("train", "start", 0, 0)
        books.mark("train", "end", 0, 0)
        counted = books.refresh(sync_s=60.0)  # a new step: new numbers
        assert counted is not first and counted.steps == first.steps + 1
        assert books.refresh(sync_s=60.0) is counted
        assert books.refresh() is not counted  # a hand-over always refreshes
    finally:
        books.abort()


def test_ticks_of_one_snapshot_repeat_its_numbers_without_recomputing():
    """At log_every_n_steps=1 most rows read the snapshot the previous row read: the same
    energy and power, no new step, and the same objects (nothing rebuilt on the training
    thread); a new snapshot gives new numbers."""
    from lightning_watt.attribution.accountant import EnergyAccountant

    books = _books(refresh_s=3600.0)  # a refresher that never comes: snapshots as we make them
    accountant = EnergyAccountant()
    accountant.stage, accountant.stage_name = books, "fit"
    accountant.run.begin("fit")
    try:
        books.mark("train", "start", 0, 0)
        time.sleep(0.01)
        books.mark("train", "end", 0, 0)
        first = accountant.log_values()  # the stage's first step: the tick refreshes itself
        assert first.step_J is not None and first.step_J > 0
        idle = books.tick()
        assert idle.steps == 0 and math.isnan(idle.step_J) and books.tick() is idle
        again = accountant.log_values()
        assert again.step_J is None and again.energy_kWh == first.energy_kWh
        assert again.power_W == first.power_W and accountant.log_values() is again
        accountant.run.kwh += 1.0  # the run's books moved (a restored checkpoint): recomputed
        moved = accountant.log_values()
        assert moved is not again and moved.energy_kWh == accountant.run.kwh
        books.mark("train", "start", 1, 0)
        time.sleep(0.01)
        books.mark("train", "end", 1, 0)
        books.refresh()
        fresh = accountant.log_values()
        assert fresh.step_J is not None and fresh.step_J > 0
    finally:
        books.finish(epoch=0)


def _tick_for(books: StageBooks, seconds: float, every_s: float, step: int) -> int:
    """Steps of ``every_s`` (a tick each, as at log_every_n_steps=1) for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        books.mark("train", "start", step, 0)
        time.sleep(every_s)
        books.mark("train", "end", step, 0)
        books.tick()
        step += 1
    return step


def test_the_refresher_slows_down_while_rows_come_faster_than_it():
    """Rows faster than one per refresh interval (25 ms) could not all be fresh: the refresher
    then runs every 100 ms (a refresh's fixed cost, 40 times a second, was ~1 % of a core), and
    once rows come slower, about once per row (here >= 60 ms apart, whatever the machine's
    pace: at most 100 ms); the numbers stay additive throughout. The pacing counts the rows
    inside its window: n rows span at most it, n - 1 periods, and it judges from 4 rows on,
    so its period is at least 3/4 of theirs on any machine."""
    books = _books(refresh_s=0.025)
    refresher = books._refresher
    assert refresher is not None and refresher.interval_s == 0.025
    try:
        step = _tick_for(books, 0.6, 0.002, 0)
        assert refresher.interval_s == BUSY_INTERVAL_S == 0.1 and books.busy
        # Long enough for two judgements of slow rows alone (4 rows or 0.4 s each).
        step = _tick_for(books, 1.2, 0.06, step)
        assert 0.75 * 0.06 <= refresher.interval_s <= BUSY_INTERVAL_S and not books.busy
    finally:
        record = books.finish(epoch=0)
    assert record.totals.steps["train"] == step
    assert math.isclose(sum(record.totals.phases_J.values()), record.totals.energy_J, rel_tol=1e-9)


def test_a_custom_interval_is_the_shortest_while_rows_are_slow():
    books = _books(refresh_s=0.01)
    refresher = books._refresher
    assert refresher is not None
    try:
        _tick_for(books, 0.6, 0.03, 0)
        # About one refresh per row: rows >= 30 ms apart (counted in a window: >= 3/4 of
        # that, see above), never slower than 100 ms.
        assert 0.75 * 0.03 <= refresher.interval_s <= BUSY_INTERVAL_S and not books.busy
    finally:
        books.finish(epoch=0)


@settings(max_examples=500, deadline=None)
@given(
    rows=st.integers(0, 10_000),
    elapsed=st.floats(0.0, 10.0, allow_nan=False),
    shortest=st.sampled_from((0.005, 0.01, 0.025, 0.05, 0.1, 0.2)),
)
def test_paced_interval_gives_about_one_refresh_per_row_between_the_bounds(rows, elapsed, shortest):
    """Judged only over at least the longest interval and 4 rows (or 4 longest intervals);
    then busy iff rows came faster than one per ``shortest``, the interval the longest when
    busy, else the rows' period clamped to [shortest, longest]."""
    longest = max(shortest, BUSY_INTERVAL_S)
    paced = paced_interval(rows, elapsed, shortest)
    if elapsed < longest or (0 < rows < 4 and elapsed < 4 * longest):
        assert paced is None
        return
    assert paced is not None
    busy, interval = paced
    assert busy == (rows * shortest > elapsed)
    assert shortest <= interval <= longest
    if busy:
        assert interval == longest
    else:
        period = elapsed / rows if rows else math.inf
        assert interval == min(max(period, shortest), longest)
        assert interval >= period or interval == longest  # never more than one refresh a row
