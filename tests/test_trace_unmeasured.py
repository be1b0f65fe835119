"""A meter's unmeasured spans in its recording: a trace read alone (``Trace``, the report)
counts and shows what the live meter counted and showed, a late start included; old traces
and replays are unchanged.

``FakeLateSource`` (from ``test_meter``) is a fake (no hardware): a device at a constant 200 W
whose reader delivers nothing for the first ``late_s`` seconds, then a reading every 50 ms.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import pytest
from test_meter import FakeLateSource

from lightning_watt import EnergyMeter, ReplaySource
from lightning_watt.energy.readings import ESTIMATE_W, INSTANT_W, Reading
from lightning_watt.energy.trace import (
    FORMAT_V1_1,
    Trace,
    TraceFormatError,
    bundled_trace,
    load_trace,
)
from lightning_watt.energy.trace_columns import load_columns
from lightning_watt.energy.unmeasured import UnmeasuredSpan, summarise_unmeasured
from lightning_watt.report import RunData
from lightning_watt.report.cli import main as report_main


def _late_recording(tmp_path: Path, late_s: float = 1.2, run_s: float = 2.8):
    prefix = str(tmp_path / "late")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        meter = EnergyMeter([FakeLateSource(late_s=late_s)], record=prefix).start()
        time.sleep(run_s)
        meter.stop()
    return meter, prefix


@pytest.fixture(scope="module")
def late(tmp_path_factory: pytest.TempPathFactory):
    return _late_recording(tmp_path_factory.mktemp("late"))


def _same_unmeasured(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, span in expected.items():
        assert got[name]["energy_J"] == pytest.approx(span["energy_J"], rel=1e-6)
        assert got[name]["seconds"] == pytest.approx(span["seconds"], rel=1e-6)
        assert (got[name]["reason"], got[name]["basis"]) == (span["reason"], span["basis"])


def test_a_late_start_is_in_the_recording_and_counted_by_the_trace_alone(late) -> None:
    """Before: the trace held only the readings, so its energy lacked the first 1.2 s (-43 %
    here) and nothing in it said the span was unmeasured."""
    meter, prefix = late
    start, end = meter.started_at, meter.stopped_at
    assert start is not None and end is not None
    trace = load_trace(prefix)
    assert not trace.partial
    (span,) = trace.meta["unmeasured"]
    assert span["device"] == "fake0" and span["since"] == 0.0 and span["in_samples"] is False
    assert 1.2 <= span["until"] < 1.5 and span["until"] <= trace.span[0] + 1e-9
    # The trace's window holds the span; its energies and unmeasured spans are the meter's.
    assert trace.fit_window == (0.0, end - start) == (0.0, trace.meta["meter_stop"])
    timeline = trace.timeline()
    windows = [(0.0, end - start), (0.5, 1.0), (0.5, end - start - 0.2), (1.5, end - start)]
    assert trace.unmeasured(0.0, 1.0)  # and none from 1.5 s on
    for a, b in windows:
        live = meter.energy_between(start + a, start + b)["fake0"]
        assert timeline.energy_between(a, b)["fake0"] == pytest.approx(live, rel=1e-6)
        _same_unmeasured(trace.unmeasured(a, b), meter.unmeasured(start + a, start + b))
    times = [0.0, 0.7, span["until"], end - start]
    at = timeline.energy_at_many(times)["fake0"]
    assert at == [timeline.energy_at(t)["fake0"] for t in times]
    assert at[1] == pytest.approx(0.7 * span["watts"], rel=1e-9)
    assert at[-1] == pytest.approx(200.0 * (end - start), rel=0.03)
    # The device timeline itself is the readings alone (the replay's counter rests on it).
    assert timeline.device("fake0").energy_at(0.7) == 0.0


@pytest.mark.parametrize("engine", ["timeline", "vectorised"])
def test_the_report_of_the_trace_alone_counts_and_shows_the_late_start(late, engine) -> None:
    meter, prefix = late
    start = meter.started_at
    assert start is not None
    run = RunData("late", Path(prefix), trace=load_columns(prefix))
    run.force_engine = engine
    fit0, fit1 = run.columns.fit_window
    live = meter.energy_between(start + fit0, start + fit1)["fake0"]
    assert run.energy_kWh * 3.6e6 == pytest.approx(live, rel=1e-6 if engine == "timeline" else 1e-3)
    assert run.energy_source == "trace"
    (gone,) = meter.unmeasured(start + fit0, start + fit1).values()
    assert run.unmeasured_kWh * 3.6e6 == pytest.approx(float(gone["energy_J"]), rel=1e-6)
    assert run.unmeasured_reasons == [f"fake0: {gone['reason']}"]
    assert any(note.startswith("UNMEASURED") for note in run.notes)
    # The phases add up to the total, the estimate included; so does the cumulative curve.
    assert sum(run.phases_J.values()) == pytest.approx(run.energy_kWh * 3.6e6, rel=1e-9)
    _, curves = run.energy_over_time(points=50)
    assert curves["fake0"][-1] == pytest.approx(run.energy_kWh, rel=1e-3)


def test_the_report_command_on_the_trace_alone(late, tmp_path, capsys) -> None:
    meter, prefix = late
    out = tmp_path / "report"
    assert report_main(["report", prefix + ".meta.json", "-o", str(out), "--no-plots"]) == 0
    (row,) = json.loads((out / "report.json").read_text())["runs"]
    (gone,) = meter.unmeasured().values()
    assert row["unmeasured_kWh"] * 3.6e6 == pytest.approx(float(gone["energy_J"]), rel=1e-6)
    assert "first" in row["unmeasured"][0]
    assert "estimate for devices that stopped being measured or began late" in (
        capsys.readouterr().err
    )


def test_a_killed_run_keeps_the_late_start_decided_before_the_kill(tmp_path) -> None:
    """No clean stop: the meta the writer last flushed (every 2 s; flushed here at once) holds
    the span decided by then; the reader loads the cut-off trace and shows it."""
    prefix = str(tmp_path / "killed")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        meter = EnergyMeter([FakeLateSource(late_s=1.1)], record=prefix).start()
        try:
            deadline = time.monotonic() + 10.0
            while not meter.unmeasured() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert meter._writer is not None
            meter._writer.flush()  # what its 2 s timer does
            trace = load_trace(prefix)  # read while the run goes on: as after a kill
            live = meter.unmeasured(meter.started_at, meter.started_at + 1.0)
        finally:
            meter.stop()
    assert trace.partial and "never closed" in (trace.partial_reason or "")
    (span,) = trace.unmeasured_spans
    assert span.in_samples is False and math.isfinite(span.until)
    _same_unmeasured(trace.unmeasured(0.0, 1.0), live)
    # Samples are held 3 s for ordering: none may be on disk yet (no device to charge then),
    # else the span's energy is the estimate.
    got = trace.timeline().energy_between(0.0, 1.0)
    assert got in ({}, {"fake0": pytest.approx(float(live["fake0"]["energy_J"]), rel=1e-6)})


def test_an_open_span_of_a_killed_run_ends_with_its_samples() -> None:
    """A device lost before a kill: its span was still open (``until`` null); its estimate is
    in the samples (not added again) and it ends with the recording."""
    samples = [Reading(float(t), "gpu0", INSTANT_W, 100.0) for t in range(3)]
    samples += [Reading(float(t), "gpu0", ESTIMATE_W, 100.0) for t in range(2, 6)]
    lost = UnmeasuredSpan("gpu0", 2.0, 100.0, "GPU is lost", "its mean power").to_meta()
    trace = Trace(samples, meta={"format": FORMAT_V1_1, "unmeasured": [lost]})
    assert lost["until"] is None
    assert trace.unmeasured()["gpu0"]["seconds"] == 3.0
    assert trace.unmeasured()["gpu0"]["energy_J"] == 300.0
    # Counted once: the readings' own 500 J, nothing added on top.
    assert trace.timeline().energy_between(0.0, 5.0)["gpu0"] == pytest.approx(500.0)


def test_a_replay_of_a_late_start_serves_readings_only(late, tmp_path) -> None:
    """Replay plays readings; the recorded estimate is no reading and is not replayed (a
    replay cannot start before the first sample), so nothing is counted twice: the replaying
    meter's data begins at its start and it estimates nothing."""
    _, prefix = late
    trace = load_trace(prefix)
    with pytest.raises(ValueError, match="start must lie in the recording"):
        ReplaySource(trace, start=0.0)
    source = ReplaySource(trace)
    assert source.start == trace.span[0]
    with EnergyMeter([source], record=str(tmp_path / "again")) as meter:
        time.sleep(1.0)
    assert meter.unmeasured() == {}
    start, end = meter.started_at, meter.stopped_at
    assert meter.energy_between(start, end)["fake0"] == pytest.approx(200.0 * (end - start), 0.1)
    assert "unmeasured" not in load_trace(tmp_path / "again").meta


def test_old_traces_have_no_unmeasured_spans_and_keep_their_numbers() -> None:
    for name in ("h100-mlp", "h200-mlp-stall", "h200-square-wave"):
        trace = load_trace(bundled_trace(name))
        assert trace.unmeasured_spans == [] and trace.unmeasured() == {}
        assert type(trace.timeline()).__name__ == "RecordedTimeline"
        assert trace.fit_window == (trace.meta["fit_start"], trace.meta["fit_end"])
    trace = load_trace(bundled_trace("h200-mlp-stall"))
    assert round(sum(trace.timeline().energy_between(*trace.fit_window).values())) == 8362


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("unmeasured", {"device": "gpu0"}, "must be a list"),
        ("unmeasured", ["x"], "must be an object"),
        ("device", "bad name", "invalid device name"),
        ("since", "0", "'since' must be a finite number"),
        ("until", -1.0, "'until' \\(-1.0\\) is before 'since'"),
        ("watts", -5.0, "'watts' must be in"),
        ("watts", math.inf, "'watts' must be a finite number"),
        ("in_samples", None, "'in_samples' must be true or false"),
        ("reason", 3, "'reason' and 'basis' must be text"),
    ],
)
def test_a_malformed_unmeasured_field_names_the_file_and_field(
    tmp_path, field, value, message
) -> None:
    span = UnmeasuredSpan("gpu0", 0.0, 10.0, "late", "after", 1.0, False).to_meta()
    Trace([Reading(1.0, "gpu0", INSTANT_W, 10.0)], meta={"format": FORMAT_V1_1}).save(
        tmp_path / "t"
    )
    meta = json.loads((tmp_path / "t.meta.json").read_text())
    meta["unmeasured"] = value if field == "unmeasured" else [{**span, field: value}]
    (tmp_path / "t.meta.json").write_text(json.dumps(meta))
    with pytest.raises(TraceFormatError, match=message) as err:
        load_trace(tmp_path / "t")
    assert "t.meta.json" in str(err.value)


def test_a_saved_trace_keeps_its_spans() -> None:
    spans = [
        UnmeasuredSpan("gpu0", 0.0, 10.0, "late", "after", 1.5, False),
        UnmeasuredSpan("gpu0", 4.0, 20.0, "lost", "before", 6.0, True),
    ]
    meta = {"format": FORMAT_V1_1, "unmeasured": [s.to_meta() for s in spans]}
    trace = Trace([Reading(float(t), "gpu0", INSTANT_W, 10.0) for t in range(2, 7)], meta=meta)
    assert trace.unmeasured_spans == spans
    assert trace.unmeasured() == summarise_unmeasured(spans, -math.inf, math.inf, 6.0)
    assert trace.unmeasured()["gpu0"]["reason"] == "late; lost"
    assert trace.fit_window == (0.0, 6.0)


def test_a_device_never_measured_is_in_the_recording_once(tmp_path) -> None:
    """No reading at all: one span to the end, its estimate in the samples (``in_samples``),
    so the trace alone counts it once and reports it as the meter did."""
    prefix = str(tmp_path / "never")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        meter = EnergyMeter([FakeLateSource(late_s=100.0)], record=prefix).start()
        time.sleep(0.5)
        meter.stop()
    trace = load_trace(prefix)
    (span,) = trace.unmeasured_spans
    assert span.in_samples and span.until == trace.meta["meter_stop"]
    start, end = meter.started_at, meter.stopped_at
    _same_unmeasured(trace.unmeasured(), meter.unmeasured())
    live = meter.energy_between(start, end)["fake0"]
    assert trace.timeline().energy_between(*trace.fit_window)["fake0"] == pytest.approx(live)
