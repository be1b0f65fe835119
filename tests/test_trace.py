"""watt-trace v1: lossless round trips, and errors on bad input that name the file and line."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_watt.energy.readings import Reading
from lightning_watt.energy.trace import (
    FORMAT,
    StepEdge,
    Trace,
    TraceFormatError,
    TraceWriter,
    bundled_trace,
    load_trace,
    trace_prefix,
)
from lightning_watt.testing.synthetic import synthetic_run

BUNDLED = ("h100-mlp", "h200-mlp-stall", "h200-square-wave")

GOOD_SAMPLES = [
    "t,device,kind,value",
    "0.0,gpu0,counter_J,1000.0",
    "0.01,gpu0,instant_W,150.5",
    "0.02,gpu0,buffer_W,151.0",
    "0.1,gpu0,counter_J,1015.0",
]
GOOD_STEPS = [
    "phase,edge,index,t_host,t_gpu",
    "train,start,0,0.01,0.012",
    "train,end,0,0.05,",
]
GOOD_META: dict[str, Any] = {"format": FORMAT, "fit_start": 0.0, "fit_end": 0.1}


def _write_gz(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
        fh.write("".join(line + "\n" for line in lines))


def write_trace(
    prefix: Path,
    samples: list[str] | None = None,
    steps: list[str] | None = None,
    meta: dict[str, Any] | str | None = None,
) -> tuple[Path, Path, Path]:
    """Write the three files of a trace by hand (so they can be wrong) and return their paths."""
    paths = (
        Path(f"{prefix}.samples.csv.gz"),
        Path(f"{prefix}.steps.csv.gz"),
        Path(f"{prefix}.meta.json"),
    )
    _write_gz(paths[0], GOOD_SAMPLES if samples is None else samples)
    _write_gz(paths[1], GOOD_STEPS if steps is None else steps)
    meta = GOOD_META if meta is None else meta
    paths[2].write_text(meta if isinstance(meta, str) else json.dumps(meta), encoding="utf-8")
    return paths


def _decompressed(path: str) -> bytes:
    with gzip.open(path, "rb") as fh:
        return fh.read()


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_trace_round_trip_is_lossless(name: str, tmp_path: Path) -> None:
    first = load_trace(bundled_trace(name))
    assert first.samples and first.steps
    assert first.meta["format"] == FORMAT
    second = load_trace(first.save(tmp_path / name))
    assert second == first  # samples, steps and meta, float for float
    third_prefix = second.save(tmp_path / "again")
    # Saving is deterministic too: the same content byte for byte.
    for suffix in (".samples.csv.gz", ".steps.csv.gz"):
        assert _decompressed(third_prefix + suffix) == _decompressed(str(tmp_path / name) + suffix)
    assert load_trace(third_prefix) == first


def test_synthetic_trace_round_trip_is_lossless(tmp_path: Path) -> None:
    trace = synthetic_run(seed=7, duration_s=6.0).trace
    loaded = load_trace(trace.save(tmp_path / "synthetic"))
    assert loaded == trace
    assert load_trace(loaded.save(tmp_path / "again")) == trace


_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
# Every float the format accepts: times within 1e10 s, counters within 1e18 J.
_times = st.floats(min_value=-1e10, max_value=1e10)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    times=st.lists(_times, min_size=1, max_size=20),
    watts=st.lists(st.floats(min_value=0.0, max_value=1e6), min_size=20, max_size=20),
    counter=st.floats(min_value=-1e18, max_value=1e18),
)
def test_any_float_round_trips(
    tmp_path: Path, times: list[float], watts: list[float], counter: float
) -> None:
    ts = sorted(times)
    samples = [Reading(t, "gpu0", "instant_W", w) for t, w in zip(ts, watts, strict=False)]
    samples.append(Reading(ts[-1], "gpu1", "counter_J", counter))  # counters may be negative
    trace = Trace(samples, [StepEdge("val", "end", 3, ts[0], None)], {"format": FORMAT, "x": [1]})
    assert load_trace(trace.save(tmp_path / "h")) == trace


def test_load_accepts_any_of_the_three_paths(tmp_path: Path) -> None:
    samples, steps, meta = write_trace(tmp_path / "run")
    expected = load_trace(tmp_path / "run")
    for path in (samples, steps, meta):
        assert trace_prefix(path) == str(tmp_path / "run")
        assert load_trace(path) == expected
    assert expected.steps[1].t_gpu is None
    assert expected.steps[1].t == expected.steps[1].t_host
    assert expected.steps[0].t == 0.012


def test_bundled_trace_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(ValueError, match="h200-mlp-stall"):
        bundled_trace("h300-imaginary")


def test_trace_writer_flush_leaves_a_readable_file(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "live")
    writer.write_samples(
        [Reading(0.0, "gpu0", "counter_J", 5.0), Reading(0.1, "gpu0", "counter_J", 6.0)]
    )
    writer.write_steps([StepEdge("train", "start", 0, 0.05, 0.06)])
    writer.flush()
    # Still open (as after a crash): what was flushed reads back.
    partial = load_trace(tmp_path / "live")
    assert [r.value for r in partial.samples] == [5.0, 6.0]
    assert len(partial.steps) == 1
    writer.write_samples([Reading(0.2, "gpu0", "counter_J", 7.0)])
    writer.close()
    assert [r.value for r in load_trace(tmp_path / "live").samples] == [5.0, 6.0, 7.0]


def test_counter_energy_skips_resets_and_interpolates() -> None:
    samples = [
        Reading(0.0, "gpu0", "counter_J", 100.0),
        Reading(1.0, "gpu0", "counter_J", 200.0),
        Reading(2.0, "gpu0", "counter_J", 10.0),  # reset: not -190 J
        Reading(3.0, "gpu0", "counter_J", 110.0),
    ]
    trace = Trace(samples)
    assert trace.counter_energy("gpu0", 0.0, 3.0) == pytest.approx(200.0)
    assert trace.counter_energy("gpu0", 0.5, 1.0) == pytest.approx(50.0)
    assert trace.counter_energy("gpu0", -5.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="gpu1"):
        trace.counter_energy("gpu1", 0.0, 1.0)
    with pytest.raises(ValueError, match="unknown"):
        list(trace.select({"volts"}))


# --------------------------------------------------------------------------- bad input
def _samples_with(line: str, at: int = 3) -> list[str]:
    rows = list(GOOD_SAMPLES)
    rows.insert(at - 1, line)
    return rows


@pytest.mark.parametrize(
    ("line", "lineno", "words"),
    [
        ("0.05,gpu0,volts,12.0", 3, "unknown kind 'volts'"),
        ("abc,gpu0,instant_W,100.0", 3, "not a number"),
        ("0.05,gpu0,instant_W,lots", 3, "not a number"),
        ("0.05,gpu0,instant_W,nan", 3, "not finite"),
        ("0.05,gpu0,instant_W,-3.0", 3, "negative power"),
        ("0.05,gpu0,instant_W", 3, "expected 4 columns"),
        ("0.05,gpu 0,instant_W,1.0", 3, "invalid device"),
        ("0.015,gpu0,instant_W,100.0", 5, "not sorted"),  # after the row at t=0.02
    ],
)
def test_bad_samples_name_file_and_line(tmp_path: Path, line: str, lineno: int, words: str) -> None:
    samples_path, _, _ = write_trace(tmp_path / "bad", samples=_samples_with(line, lineno))
    with pytest.raises(TraceFormatError) as err:
        load_trace(tmp_path / "bad")
    message = str(err.value)
    assert f"{samples_path}:{lineno}" in message
    assert words in message


@pytest.mark.parametrize("which", ["samples", "steps"])
def test_wrong_header_names_file_and_line_1(tmp_path: Path, which: str) -> None:
    bad_header = ["time,device,kind,value", *GOOD_SAMPLES[1:]]
    paths = write_trace(
        tmp_path / "bad",
        samples=bad_header if which == "samples" else None,
        steps=["phase,edge,index,t_host"] if which == "steps" else None,
    )
    path = paths[0] if which == "samples" else paths[1]
    with pytest.raises(TraceFormatError, match="header") as err:
        load_trace(tmp_path / "bad")
    assert f"{path}:1" in str(err.value)


def test_empty_samples_file_is_a_header_error(tmp_path: Path) -> None:
    samples_path, _, _ = write_trace(tmp_path / "bad", samples=[])
    with pytest.raises(TraceFormatError) as err:
        load_trace(tmp_path / "bad")
    assert f"{samples_path}:1" in str(err.value)


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ("train,middle,0,0.1,0.1", "edge must be one of"),
        ("train,start,zero,0.1,0.1", "index is not an integer"),
        ("train,start,0,soon,0.1", "not a number"),
        (",start,0,0.1,0.1", "empty phase"),
        ("train,start,0,0.1", "expected 5 columns"),
    ],
)
def test_bad_steps_name_file_and_line(tmp_path: Path, row: str, words: str) -> None:
    _, steps_path, _ = write_trace(tmp_path / "bad", steps=[*GOOD_STEPS, row])
    with pytest.raises(TraceFormatError) as err:
        load_trace(tmp_path / "bad")
    assert f"{steps_path}:4" in str(err.value)
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("meta", "lineno", "words"),
    [
        ({"format": "watt-trace v2"}, 1, "format must be 'watt-trace v1'"),
        ({"description": "no format"}, 1, "format must be"),
        ("[1, 2]", 1, "expected a JSON object"),
        ('{\n "format": "watt-trace v1",\n "fit_start": oops\n}', 3, "invalid JSON"),
    ],
)
def test_bad_meta_names_file_and_line(
    tmp_path: Path, meta: dict[str, Any] | str, lineno: int, words: str
) -> None:
    _, _, meta_path = write_trace(tmp_path / "bad", meta=meta)
    with pytest.raises(TraceFormatError) as err:
        load_trace(tmp_path / "bad")
    assert f"{meta_path}:{lineno}" in str(err.value)
    assert words in str(err.value)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_missing_file_is_named(tmp_path: Path, index: int) -> None:
    paths = write_trace(tmp_path / "partial")
    paths[index].unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_trace(tmp_path / "partial")
    assert str(paths[index]) in str(err.value)


def test_not_gzip_is_a_format_error_naming_the_file(tmp_path: Path) -> None:
    samples_path, _, _ = write_trace(tmp_path / "plain")
    samples_path.write_text("\n".join(GOOD_SAMPLES), encoding="utf-8")  # forgot to compress
    with pytest.raises(TraceFormatError) as err:
        load_trace(tmp_path / "plain")
    assert f"{samples_path}:1" in str(err.value)


def test_trace_properties() -> None:
    trace = load_trace(bundled_trace("h200-mlp-stall"))
    assert trace.devices == ["gpu0"]
    assert trace.kinds == ["average_W", "buffer_W", "counter_J", "instant_W"]
    start, end = trace.fit_window
    assert trace.span[0] <= start < end <= trace.span[1]
    assert all(r.kind == "buffer_W" for r in trace.select({"buffer_W"}))
    empty = Trace([])
    assert empty.span == (0.0, 0.0)
    assert empty.fit_window == (0.0, 0.0)
    assert math.isfinite(trace.counter_energy("gpu0", start, end))
