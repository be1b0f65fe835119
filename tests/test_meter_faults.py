"""Faults around the measurement never end a run: a log directory that cannot be written, a disk
that fills up, an error while handling readings. Recording stops with one warning; measuring
goes on in memory; the summary is still produced."""

from __future__ import annotations

import errno
import time
import warnings

import lightning.pytorch as pl
import pytest
from helpers import TinyClassifier

from lightning_watt import EnergyMeter, ReplaySource, WattCallback, bundled_trace
from lightning_watt.energy.trace import TraceWriter


def _replay() -> ReplaySource:
    return ReplaySource(bundled_trace("h200-mlp-stall"), start=10.0, speed=2.0)


def _messages(caught: list[warnings.WarningMessage], text: str) -> list[str]:
    return [str(w.message) for w in caught if text in str(w.message)]


def test_an_unwritable_recording_path_leaves_the_meter_measuring(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meter = EnergyMeter([_replay()], record=str(blocker / "trace")).start()
        time.sleep(0.3)
        meter.stop()
    assert len(_messages(caught, "recording is off")) == 1
    assert not meter.recording
    assert sum(meter.total().values()) > 0


def test_a_full_disk_stops_recording_once_and_keeps_measuring(tmp_path, monkeypatch):
    def full(self, readings):
        raise OSError(errno.ENOSPC, "No space left on device")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meter = EnergyMeter([_replay()], record=str(tmp_path / "trace")).start()
        monkeypatch.setattr(TraceWriter, "write_samples", full)
        time.sleep(0.2)
        meter._ingest([])  # on this thread: the disk is full (rows are written in batches)
        time.sleep(0.2)
        meter.stop()
    assert len(_messages(caught, "No space left on device")) == 1
    assert not meter.recording and meter._thread is not None and not meter._thread.is_alive()
    assert sum(meter.total().values()) > 0
    assert not list(tmp_path.glob("*.tmp"))


def test_an_error_handling_readings_marks_a_gap_and_the_thread_goes_on(monkeypatch):
    meter = EnergyMeter([_replay()])
    failed = []
    original = meter._ingest

    def once(readings):
        if readings and not failed:
            failed.append(readings[0].t)
            raise RuntimeError("a bug in ingest")
        original(readings)

    monkeypatch.setattr(meter, "_ingest", once)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meter.start()
        time.sleep(0.6)
        alive = meter._thread is not None and meter._thread.is_alive()
        meter.stop()
    assert failed and alive
    assert len(_messages(caught, "a bug in ingest")) == 1
    assert any("ingest failed" in g.reason for g in meter.gaps())
    assert sum(meter.total().values()) > 0


def test_a_fit_whose_log_dir_cannot_be_written_still_ends_with_a_summary(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cb = WattCallback(replay="h200-mlp-stall")
    trainer = pl.Trainer(
        default_root_dir=blocker / "runs",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=2,
    )
    trainer.callbacks.append(cb)
    with pytest.warns(RuntimeWarning, match="recording is off"):
        trainer.fit(TinyClassifier(step_sleep=0.005))
    assert cb.last_summary is not None and cb.last_summary["energy_J"] > 0
    assert cb.last_summary["steps"]["train"] == 4
