"""The run's books without Lightning: RunTotals, RunBooks (the run rule) and StageAccountant."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lightning_watt.attribution.accountant import EnergyAccountant, _rank_record
from lightning_watt.attribution.books import RunBooks, RunTotals, StageBooks
from lightning_watt.attribution.ledger import EnergyLedger
from lightning_watt.attribution.step_clock import StepClock
from lightning_watt.energy.meter import EnergyMeter
from lightning_watt.energy.readings import J_PER_KWH
from lightning_watt.energy.trace import bundled_trace
from lightning_watt.sources import ReplaySource

joules = st.floats(min_value=0.0, max_value=1e9, allow_nan=False)
phases = st.dictionaries(st.sampled_from(["train", "val", "gap", "sanity"]), joules, max_size=4)


def _totals(ph: dict[str, float], epoch: int = 0) -> RunTotals:
    return RunTotals(
        energy_J=sum(ph.values()), phases_J=dict(ph), epochs={epoch: dict(ph)}, steps={"train": 1}
    )


@given(phases, phases, st.integers(0, 3), st.integers(0, 3))
def test_totals_add_phase_by_phase_and_keep_their_sum(a, b, ea, eb):
    total = _totals(a, ea) + _totals(b, eb)
    assert math.isclose(total.energy_J, sum(total.phases_J.values()), rel_tol=1e-9, abs_tol=1e-6)
    assert total.steps == {"train": 2}
    assert math.isclose(
        sum(sum(ph.values()) for ph in total.epochs.values()), total.energy_J, abs_tol=1e-6
    )


def test_totals_round_trip_and_refuse_nan():
    totals = _totals({"train": 3.0, "gap": 1.0}, epoch=2)
    assert RunTotals.from_state(totals.to_state()) == totals
    with pytest.raises(ValueError, match="energy_J must be a finite number >= 0"):
        RunTotals.from_state({"energy_J": float("nan")})
    with pytest.raises(ValueError, match=r"phases_J\[gap\]"):
        RunTotals.from_state({"energy_J": 1.0, "phases_J": {"gap": -1.0}})


stages = st.lists(
    st.tuples(st.sampled_from(["fit", "validate", "test", "predict", "tune"]), joules),
    min_size=1,
    max_size=8,
)


@given(stages)
def test_the_run_rule(sequence):
    """A fit starts a run, other stages add to it, a tune leaves it as it was."""
    books, expected = RunBooks(), 0.0
    for stage, segment in sequence:
        books.begin("fit" if stage == "tune" else stage)  # a tune starts as Lightning's fit
        if stage in ("fit", "tune"):
            expected = 0.0
        run = books.end(stage, segment)
        if stage != "tune":
            expected += segment
            assert run == pytest.approx(expected)
        assert books.final_J is None or books.final_J == pytest.approx(expected)
        assert books.kwh == pytest.approx(expected / J_PER_KWH)


def test_a_resumed_fit_counts_its_earlier_segments_and_holds_its_live_value():
    books = RunBooks()
    books.begin("fit")
    books.restore(_totals({"train": 70.0, "gap": 30.0}), target_kwh=1e-5)
    assert books.kwh == pytest.approx(100.0 / J_PER_KWH)
    assert books.note(50.0) == pytest.approx(150.0 / J_PER_KWH)
    assert books.note(40.0) == pytest.approx(150.0 / J_PER_KWH)  # held, never back
    saved = books.checkpoint(_totals({"train": 45.0}))
    assert saved.energy_J == pytest.approx(145.0) and saved.phases_J["train"] == 115.0
    assert books.end("fit", 48.0) == pytest.approx(148.0)
    assert books.target_kwh == 1e-5
    # A test from a checkpoint continues the run in it; the logged curve never steps back.
    books.begin("test")
    books.restore(_totals({"train": 10.0}))
    assert books.end("test", 5.0) == pytest.approx(15.0)
    assert books.logged(1.0) == 1.0 and books.logged(0.5) == 1.0


def test_sanity_energy_goes_to_the_epoch_trained_next():
    ledger = EnergyLedger(start=0.0)
    ledger.add_edges(
        [
            ("sanity", "start", 0, None, 1.0),
            ("sanity", "end", 0, None, 2.0),
            ("train", "start", 0, 5, 3.0),
            ("train", "end", 0, 5, 4.0),
        ]
    )
    ledger.advance(5.0, lambda t0, t1: 10.0 * (t1 - t0))
    assert list(ledger.epochs) == [5]
    assert ledger.epochs[5].phases == {"gap": 30.0, "sanity": 10.0, "train": 10.0}
    assert not ledger.unassigned


def test_stage_books_add_up_on_a_replayed_gpu():
    source = ReplaySource(bundled_trace("h200-mlp-stall"), start=10.0, speed=4.0)
    meter = EnergyMeter([source]).start()
    books = StageBooks(meter, StepClock(meter.now, device=None))
    books.mark("sanity", "start", 0, None)
    books.mark("sanity", "end", 0, None)
    for step in range(5):
        books.mark("train", "start", step, 0)
        time.sleep(0.02)
        books.mark("train", "end", step, 0)
    assert books.measure_now(1.0)
    tick = books.tick()
    assert tick.energy_J > 0 and tick.power_W > 0
    saved = books.totals(epoch=0)
    record = books.finish(epoch=0)
    totals = record.totals
    assert totals.steps == {"sanity": 1, "train": 5}
    assert totals.epoch_steps == {0: 5}
    assert sum(totals.phases_J.values()) == pytest.approx(totals.energy_J, rel=1e-9)
    assert sum(totals.epochs[0].values()) == pytest.approx(totals.energy_J, rel=1e-9)
    device_j = sum(d["energy_J"] for d in record.devices)
    assert totals.energy_J == pytest.approx(device_j, rel=1e-9)
    # The books saved before the end are provisional: counter values not yet placed on the
    # counter's update clock sit at their read times or where its current fit puts them, and
    # the newest power is scaled by the calibration so far. They hold no more than the final
    # books plus one counter update's joules (100 ms of the trace, a quarter of it at 4x).
    one_update_J = max(meter.peak_power().values()) * 0.1 / 4.0
    assert 0 < saved.energy_J <= totals.energy_J + one_update_J


def _replayed_accountant() -> EnergyAccountant:
    books = EnergyAccountant()
    replay = ReplaySource(bundled_trace("h200-mlp-stall"), start=10.0, speed=4.0)
    books.begin("fit", EnergyMeter([replay]))
    return books


def test_a_checkpoint_of_the_live_stage_rolls_nothing_back_and_a_foreign_one_resumes():
    books = _replayed_accountant()
    for step in range(3):
        books.mark("train", "start", step, 0)
        time.sleep(0.03)
        books.mark("train", "end", step, 0)
    own = books.state_dict(epoch=0)
    assert own["energy_J"] > 0 and own["steps"] == {"train": 3}
    # A tuner restores the checkpoint it took at its start: the stage's books stay.
    assert books.load_state_dict(own) is None
    assert books.run.offset.energy_J == 0.0
    # A checkpoint of another run (a resume) becomes the earlier segments.
    foreign = {**own, "stage_id": "another"}
    assert books.load_state_dict(foreign) is None
    assert books.run.offset.energy_J == pytest.approx(own["energy_J"])
    summary = books.finish()
    assert summary["energy_J"] == pytest.approx(own["energy_J"] + summary["segment_energy_J"])
    assert summary["steps"]["train"] == 6


def test_unusable_checkpoints_are_refused_with_a_reason():
    books = _replayed_accountant()
    assert "version" in (books.load_state_dict({"version": 99}) or "")
    bad = {"version": 2, "stage_id": "x", "energy_J": float("nan")}
    assert "energy_J must be a finite number" in (books.load_state_dict(bad) or "")
    assert books.run.offset.energy_J == 0.0
    books.abort()


def _stage_on(trace: str, rank: int, gather, reduce) -> EnergyAccountant:
    books = EnergyAccountant(reduce=reduce, gather=gather)
    meter = EnergyMeter([ReplaySource(bundled_trace(trace), start=5.0)])
    books.begin("fit", meter, rank=rank, world_size=2)
    books.mark("train", "start", 0, 0)
    time.sleep(0.05)
    books.mark("train", "end", 0, 0)
    return books


def test_a_rank_whose_books_fail_to_close_still_joins_the_gather():
    """A failure closing one rank's books must not leave the other ranks waiting in the
    gather (a deadlock at the end of training): the failing rank sends nothing and warns, and
    the summary holds the other ranks' devices."""
    sent: list = []
    peer_record: dict = {}

    def gather(local):
        if isinstance(local, list):  # begin: each rank's device keys (distinct GPUs here)
            return [local, ["another-gpu"]] if local != ["another-gpu"] else [["gpu-x"], local]
        sent.append(local)
        return [local, peer_record]

    def reduce(values, device=None):
        return list(values)

    peer = _stage_on("h100-mlp", 1, gather, reduce)
    assert peer.stage is not None
    peer_record.update(_rank_record(peer.stage.finish(epoch=0), 1, {}))
    failing = _stage_on("h200-mlp-stall", 0, gather, reduce)
    assert failing.stage is not None
    failing_meter = failing.stage.meter

    def broken(**kwargs):
        raise RuntimeError("a disk vanished")

    failing.stage.finish = broken  # type: ignore[method-assign]
    with pytest.warns(RuntimeWarning, match=r"rank 0 could not close its energy books"):
        summary = failing.finish(epoch=0)
    assert sent == [None]  # it took part in the gather, with nothing
    assert not failing_meter.running  # its threads did not outlive the stage
    assert {d["rank"] for d in summary["devices"]} == {1}
    assert summary["energy_J"] == pytest.approx(sum(peer_record["phases_J"].values()), rel=1e-9)
