"""watt-trace v1.1: compact step edges, flushes on a cadence, atomic metadata, partial traces
after a kill, and load-time checks of every meta field and value."""

from __future__ import annotations

import gzip
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

from lightning_watt.energy.readings import Reading
from lightning_watt.energy.trace import (
    FORMAT,
    FORMAT_V1_1,
    StepEdge,
    Trace,
    TraceFormatError,
    TraceWriter,
    load_trace,
)
from lightning_watt.energy.trace_columns import load_columns

SAMPLES = [Reading(0.1 * i, "gpu0", "counter_J", 1000.0 + 30.0 * i) for i in range(20)]


def _write(prefix: Path, **kwargs: Any) -> TraceWriter:
    writer = TraceWriter(prefix, **kwargs)
    writer.write_samples(SAMPLES)
    return writer


# --------------------------------------------------------------------------- compact steps
def test_compact_steps_round_trip_at_10_us(tmp_path: Path) -> None:
    edges = [
        StepEdge("train", "start", 0, 5.000004, 5.0081),
        StepEdge("train", "end", 1, 5.0101, None),  # GPU time unknown
        StepEdge("val", "start", 0, 5.02, 5.03),
        StepEdge("val", "end", 7, 5.05, 5.051),  # an index jump
        StepEdge("train", "start", 1, -2.5, -2.49),  # times may go back (another clock)
    ]
    with TraceWriter(tmp_path / "c", merge_steps_s=0) as writer:
        writer.write_steps(edges[:2])
        writer.flush()  # deltas continue across flushes
        writer.write_steps(edges[2:])
    got = load_trace(tmp_path / "c").steps
    assert [(e.phase, e.edge, e.index) for e in got] == [(e.phase, e.edge, e.index) for e in edges]
    for want, e in zip(edges, got, strict=True):
        assert abs(e.t_host - want.t_host) <= 5e-6
        assert (e.t_gpu is None) == (want.t_gpu is None)
        if want.t_gpu is not None:
            assert e.t_gpu is not None and abs(e.t_gpu - want.t_gpu) <= 5e-6
    with gzip.open(tmp_path / "c.steps.csv.gz", "rt") as fh:
        assert fh.readline().strip() == "phase,edge,dindex,dt_host_10us,dt_gpu_10us"


def test_v1_layout_stays_lossless_and_readable(tmp_path: Path) -> None:
    edge = StepEdge("train", "start", 3, 0.1 + 0.2, math.pi)
    Trace(SAMPLES, [edge], {"format": FORMAT}).save(tmp_path / "v1")
    assert load_trace(tmp_path / "v1").steps == [edge]
    assert load_trace(tmp_path / "v1").meta["format"] == FORMAT


def _steps(step_s: float, n: int) -> list[StepEdge]:
    out = []
    for i in range(n):
        t = 1.0 + i * step_s
        out += [StepEdge("train", "start", i, t, t + 0.006)]
        out += [StepEdge("train", "end", i + 1, t + 0.9 * step_s, t + 0.9 * step_s + 0.006)]
    return out


@pytest.mark.parametrize(("step_s", "merged"), [(0.001, True), (0.0017, True), (0.01, False)])
def test_fast_steps_merge_into_spans_that_keep_the_count(
    tmp_path: Path, step_s: float, merged: bool
) -> None:
    edges = _steps(step_s, 200)
    with TraceWriter(tmp_path / "m") as writer:  # default merge_steps_s = 4 ms
        for i in range(0, len(edges), 30):  # handed over in batches, as the callback does
            writer.write_steps(edges[i : i + 30])
    got = load_trace(tmp_path / "m").steps
    assert (len(got) < len(edges)) == merged
    # Spans alternate start/end, cover the same time, and their indices add up to every step.
    assert [e.edge for e in got] == ["start", "end"] * (len(got) // 2)
    assert got[0].t_host == pytest.approx(edges[0].t_host, abs=1e-5)
    assert got[-1].t_host == pytest.approx(edges[-1].t_host, abs=1e-5)
    assert sum(e.index - s.index for s, e in zip(got[::2], got[1::2], strict=True)) == 200
    spans = zip(got[::2], got[1::2], strict=True)
    assert all(e.t_host - s.t_host < 0.004 + step_s for s, e in spans)


def test_writer_rejects_bad_arguments(tmp_path: Path) -> None:
    for kwargs, name in [
        ({"steps_layout": "zip"}, "steps_layout"),
        ({"compresslevel": 11}, "compresslevel"),
        ({"compresslevel": True}, "compresslevel"),
        ({"flush_every_s": 0}, "flush_every_s"),
        ({"merge_steps_s": -1.0}, "merge_steps_s"),
        ({"merge_steps_s": math.nan}, "merge_steps_s"),
    ]:
        with pytest.raises(ValueError, match=name):
            TraceWriter(tmp_path / "x", **kwargs)


def test_non_finite_edges_are_dropped_and_counted(tmp_path: Path) -> None:
    with TraceWriter(tmp_path / "n", merge_steps_s=0) as writer:
        writer.write_steps(
            [StepEdge("train", "start", 0, math.nan, None), StepEdge("train", "end", 1, 2.0)]
        )
        assert writer.dropped_steps == 1
    assert [e.edge for e in load_trace(tmp_path / "n").steps] == ["end"]


# --------------------------------------------------------------------------- kills
def test_the_writer_flushes_by_itself_on_a_cadence(tmp_path: Path) -> None:
    writer = _write(tmp_path / "live", flush_every_s=0.05)
    time.sleep(0.06)
    writer.write_steps([StepEdge("train", "start", 0, 0.5, 0.51)])  # past the cadence: flushed
    # Never closed, as after SIGKILL: what was written before the flush reads back.
    trace = load_trace(tmp_path / "live")
    assert trace.samples == SAMPLES
    assert len(trace.steps) == 1
    assert trace.partial and trace.partial_reason is not None
    assert "never closed" in trace.partial_reason
    writer.close()
    closed = load_trace(tmp_path / "live")
    assert not closed.partial and closed.meta["complete"] is True
    assert closed.meta["format"] == FORMAT_V1_1


def test_a_truncated_stream_loads_and_says_it_is_partial(tmp_path: Path) -> None:
    with _write(tmp_path / "cut") as writer:
        writer.write_samples([Reading(5.0 + i, "gpu0", "buffer_W", 300.0) for i in range(500)])
    path = tmp_path / "cut.samples.csv.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    trace = load_trace(tmp_path / "cut")
    assert trace.partial and "samples file stops mid-stream" in (trace.partial_reason or "")
    assert trace.samples[: len(SAMPLES)] == SAMPLES
    assert 0 < len(trace.samples) < len(SAMPLES) + 500
    cols = load_columns(tmp_path / "cut", lazy=True)
    assert not cols.partial_status(load=False)[0]  # the meta alone says closed
    assert cols.partial  # reading the samples finds the cut


def test_metadata_is_replaced_atomically_and_no_temporary_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = _write(tmp_path / "a")
    writer.flush()
    before = (tmp_path / "a.meta.json").read_text()

    def full_disk(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    writer.meta["fit_start"] = 1.0
    with pytest.raises(OSError, match="No space"):
        writer.flush()
    assert (tmp_path / "a.meta.json").read_text() == before  # the old file, whole
    monkeypatch.undo()
    writer.abandon()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.meta.json",
        "a.samples.csv.gz",
        "a.steps.csv.gz",
    ]


# --------------------------------------------------------------------------- meta checks
@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("fit_start", math.nan, "finite"),
        ("fit_start", "abc", "must be a number"),
        ("fit_end", True, "must be a number"),
        ("fit_end", math.inf, "finite"),
        ("meter_stop", 1e300, "finite"),
        ("complete", "yes", "true or false"),
    ],
)
def test_bad_meta_fields_fail_at_load_naming_file_and_field(
    tmp_path: Path, field: str, value: Any, words: str
) -> None:
    Trace(SAMPLES, [], {"format": FORMAT, "fit_start": 0.0, "fit_end": 1.0}).save(tmp_path / "m")
    meta_path = tmp_path / "m.meta.json"
    meta = json.loads(meta_path.read_text())
    meta[field] = value
    meta_path.write_text(json.dumps(meta))  # json writes NaN and Infinity as Python reads them
    with pytest.raises(TraceFormatError, match=words) as err:
        load_trace(tmp_path / "m")
    assert str(meta_path) in str(err.value) and repr(field) in str(err.value)


def test_fit_end_before_fit_start_is_an_error(tmp_path: Path) -> None:
    Trace(SAMPLES, [], {"format": FORMAT, "fit_start": 2.0, "fit_end": 1.0}).save(tmp_path / "m")
    with pytest.raises(TraceFormatError, match="'fit_end'"):
        load_trace(tmp_path / "m")


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ("0.5,gpu0,instant_W,1e308", "above"),
        ("0.5,gpu0,counter_J,1e300", "beyond"),
        ("1e11,gpu0,instant_W,1.0", "out of range"),
    ],
)
def test_impossible_values_are_rejected(tmp_path: Path, row: str, words: str) -> None:
    Trace(SAMPLES[:2], [], {"format": FORMAT}).save(tmp_path / "v")
    with gzip.open(tmp_path / "v.samples.csv.gz", "wt") as fh:
        fh.write(f"t,device,kind,value\n0.0,gpu0,counter_J,5.0\n{row}\n")
    with pytest.raises(TraceFormatError, match=words) as err:
        load_trace(tmp_path / "v")
    assert "v.samples.csv.gz:3" in str(err.value)


def test_a_directory_is_a_format_error_not_an_os_error(tmp_path: Path) -> None:
    Trace(SAMPLES, [], {"format": FORMAT}).save(tmp_path / "d")
    (tmp_path / "d.samples.csv.gz").unlink()
    (tmp_path / "d.samples.csv.gz").mkdir()
    with pytest.raises(TraceFormatError, match="is a directory"):
        load_trace(tmp_path / "d")
    (tmp_path / "e.meta.json").mkdir()
    with pytest.raises(TraceFormatError, match="is a directory"):
        load_trace(tmp_path / "e")
    (tmp_path / "run").mkdir()
    with pytest.raises(TraceFormatError, match="is a directory; expected a watt-trace prefix"):
        load_trace(tmp_path / "run")


def test_two_threads_write_and_flush_at_once(tmp_path: Path) -> None:
    import threading

    writer = TraceWriter(tmp_path / "t", flush_every_s=0.001, merge_steps_s=0)
    edges = [StepEdge("train", "start" if i % 2 == 0 else "end", i, i * 1e-3) for i in range(4000)]

    def samples() -> None:
        for i in range(2000):
            writer.write_samples([Reading(i * 1e-3, "gpu0", "instant_W", 100.0)])
            writer.meta[f"fact{i % 50}"] = i  # set_trace_meta from another thread

    thread = threading.Thread(target=samples)
    thread.start()
    for i in range(0, len(edges), 10):
        writer.write_steps(edges[i : i + 10])
    thread.join()
    writer.close()
    trace = load_trace(tmp_path / "t")
    assert len(trace.samples) == 2000 and len(trace.steps) == 4000
    assert not trace.partial
