"""Property tests of the trace reader: whatever bytes a trace's files hold (random rows,
corrupted or truncated gzip, bad metadata), loading either succeeds or raises
:class:`TraceFormatError`, never another exception; and the vectorised parser reads exactly
what the per-row reference parser reads, row for row and error for error."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import math
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lightning_watt.energy import arrow_chunks
from lightning_watt.energy import trace as trace_mod
from lightning_watt.energy.trace import (
    FORMAT,
    FORMAT_V1_1,
    SAMPLES_HEADER,
    StepEdge,
    TraceFormatError,
    TraceWriter,
    load_trace,
)
from lightning_watt.energy.trace_columns import load_columns

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
GOOD_SAMPLES = "t,device,kind,value\n0.0,gpu0,counter_J,10.0\n0.02,gpu0,buffer_W,300.5\n"
GOOD_STEPS = "phase,edge,index,t_host,t_gpu\ntrain,start,0,0.01,0.012\ntrain,end,1,0.05,\n"

_number_text = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-1e12, max_value=1e12).map(lambda x: f"{x:.6f}"),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["", "-", ".", "1e", "1.2.3", "+5", " 1", "1 ", "0x10", "1_0", "nan", "-0"]),
    # Texts Arrow's reader treats as null or reads its own way (the fast path must refuse
    # them or read them as Python's float does).
    st.sampled_from(["NA", "null", "N/A", "NaN", "inf", "Infinity", "1E5", "+.5", ".5", "5."]),
)
_field = st.one_of(
    _number_text,
    st.sampled_from(["gpu0", "gpu1", "cpu", "gpu 0", "", "train", "start", "end", "s", "E"]),
    st.sampled_from(["counter_J\x00", "gpu0\x00", "\x00", "buffer_W\r"]),
    st.sampled_from(["counter_J", "buffer_W", "instant_W", "average_W", "volts"]),
    st.text(max_size=6),
)
_row = st.lists(_field, min_size=0, max_size=6).map(lambda cells: ",".join(cells))


@pytest.fixture(params=["arrow", "numpy"])
def sample_reader(request: Any, monkeypatch: Any) -> str:
    """Samples read by pyarrow's reader (where installed) or by the numpy fallback: both
    must read exactly what the reference parser reads."""
    if request.param == "arrow" and not arrow_chunks.available():
        pytest.skip("pyarrow is not installed")
    monkeypatch.setattr(arrow_chunks, "ENABLED", request.param == "arrow")
    return str(request.param)


def _reference_samples(text: str, path: Path) -> list[tuple[float, str, str, float]]:
    """The per-row parser over the whole text: the behaviour the fast path must match."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        if header is None or tuple(c.strip() for c in header) != SAMPLES_HEADER:
            raise TraceFormatError("header")
        parse = trace_mod._sample_parser(-math.inf)
        out = []
        for row in reader:
            lineno = reader.line_num
            checked = trace_mod._checked_row(path, lineno, row, SAMPLES_HEADER)
            r = parse(f"{path}:{lineno}", checked)
            out.append((r.t, r.device, r.kind, r.value))
    except csv.Error as err:
        raise TraceFormatError(f"{path}:{reader.line_num}: not a CSV row ({err})") from None
    return out


def _write(prefix: Path, samples: bytes, steps: bytes | None = None, meta: Any = None) -> None:
    Path(f"{prefix}.samples.csv.gz").write_bytes(samples)
    Path(f"{prefix}.steps.csv.gz").write_bytes(
        gzip.compress(GOOD_STEPS.encode()) if steps is None else steps
    )
    meta = {"format": FORMAT} if meta is None else meta
    Path(f"{prefix}.meta.json").write_text(
        meta if isinstance(meta, str) else json.dumps(meta), encoding="utf-8"
    )


def _load_both(prefix: Path) -> tuple[Any, Any]:
    """``load_trace`` and a full read of the columns (steps streamed): each a result or the
    TraceFormatError it raised. Any other exception fails the test."""
    results = []
    for load in (
        lambda: [(r.t, r.device, r.kind, r.value) for r in load_trace(prefix).samples],
        lambda: _columns_rows(prefix),
    ):
        try:
            results.append(load())
        except TraceFormatError as err:
            results.append(err)
    return results[0], results[1]


def _columns_rows(prefix: Path) -> list[tuple[float, str, str, float]]:
    cols = load_columns(prefix)
    for _ in cols.step_chunks():
        pass
    return [(r.t, r.device, r.kind, r.value) for r in cols.samples]


@SETTINGS
@given(rows=st.lists(_row, max_size=8))
def test_random_sample_rows_read_as_the_reference_parser_reads_them(
    tmp_path: Path, rows: list[str], sample_reader: str
) -> None:
    text = GOOD_SAMPLES + "".join(r + "\n" for r in rows)
    _write(tmp_path / "r", gzip.compress(text.encode()))
    try:
        expected: Any = _reference_samples(text, tmp_path / "r.samples.csv.gz")
    except TraceFormatError as err:
        expected = err
    got, cols = _load_both(tmp_path / "r")
    if isinstance(expected, TraceFormatError):
        assert isinstance(got, TraceFormatError) and isinstance(cols, TraceFormatError)
        # The same line is named: the fast path hands a chunk it cannot vouch for to the
        # reference parser.
        assert str(got).split(": ")[0] == str(cols).split(": ")[0]
    else:
        assert got == expected and cols == expected


@SETTINGS
@given(
    n=st.integers(0, 3000),
    cut=st.floats(0.0, 1.0),
    flip=st.one_of(st.none(), st.tuples(st.floats(0.0, 1.0), st.integers(1, 255))),
)
def test_truncated_or_corrupted_gzip_never_raises_anything_else(
    tmp_path: Path, n: int, cut: float, flip: tuple[float, int] | None
) -> None:
    rows = "".join(f"{0.04 + i * 0.02:.6f},gpu0,buffer_W,{300 + i % 7}.25\n" for i in range(n))
    data = bytearray(gzip.compress((GOOD_SAMPLES + rows).encode(), compresslevel=1))
    data = data[: max(0, int(len(data) * cut))] if cut < 1.0 else data
    if flip is not None and data:
        data[min(len(data) - 1, int(len(data) * flip[0]))] ^= flip[1]
    _write(tmp_path / "g", bytes(data))
    got, cols = _load_both(tmp_path / "g")
    assert isinstance(got, (list, TraceFormatError))
    assert isinstance(cols, (list, TraceFormatError))
    if isinstance(got, list):
        # Whatever loads is a prefix of what was written, row for row.
        want = _reference_samples(GOOD_SAMPLES + rows, tmp_path / "g")
        if flip is None:
            assert got == want[: len(got)]
        else:
            assume(got == want[: len(got)])  # a flipped bit may still decode to other digits
        assert cols == got


_meta_value = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**30), 10**30),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)


@SETTINGS
@given(
    fields=st.dictionaries(
        st.sampled_from(
            ["fit_start", "fit_end", "meter_stop", "complete", "format", "unmeasured", "other"]
        ),
        _meta_value,
        max_size=5,
    ),
    raw=st.one_of(st.none(), st.binary(max_size=30), st.text(max_size=30)),
)
def test_bad_meta_is_a_format_error_at_load_time(
    tmp_path: Path, fields: dict[str, Any], raw: bytes | str | None
) -> None:
    prefix = tmp_path / "m"
    _write(prefix, gzip.compress(GOOD_SAMPLES.encode()), meta={"format": FORMAT, **fields})
    if raw is not None:
        path = Path(f"{prefix}.meta.json")
        if isinstance(raw, bytes):
            path.write_bytes(raw)
        else:
            path.write_text(raw, encoding="utf-8")
    try:
        trace = load_trace(prefix)
    except TraceFormatError:
        return
    fit0, fit1 = trace.fit_window  # what loaded is usable: finite, ordered
    assert math.isfinite(fit0) and math.isfinite(fit1)
    assert trace.meta["format"] in (FORMAT, FORMAT_V1_1)


_edge = st.builds(
    StepEdge,
    st.sampled_from(["train", "val", "sanity", "x-y"]),
    st.sampled_from(["start", "end"]),
    st.integers(-(10**6), 10**9),
    st.floats(-1e6, 1e6),
    st.one_of(st.none(), st.floats(-1e6, 1e6)),
)


@SETTINGS
@given(edges=st.lists(_edge, max_size=40), cuts=st.lists(st.integers(0, 40), max_size=3))
def test_compact_steps_round_trip_and_match_the_reference(
    tmp_path: Path, edges: list[StepEdge], cuts: list[int]
) -> None:
    with TraceWriter(tmp_path / "s", merge_steps_s=0) as writer:
        writer.write_samples([])
        last = 0
        for cut in sorted(cuts):
            writer.write_steps(edges[last:cut])
            last = max(last, cut)
        writer.write_steps(edges[last:])
    got = load_trace(tmp_path / "s").steps
    assert len(got) == len(edges)
    for want, e in zip(edges, got, strict=True):
        assert (e.phase, e.edge, e.index) == (want.phase, want.edge, want.index)
        assert abs(e.t_host - want.t_host) <= 5.1e-6
        assert (e.t_gpu is None) == (want.t_gpu is None)
    # The vectorised chunks and the per-row reference decode the same file identically.
    fast = [x for chunk in load_columns(tmp_path / "s").step_chunks() for x in chunk.edges()]
    assert fast == got


@SETTINGS
@given(rows=st.lists(_row, max_size=6), header=st.booleans())
def test_random_compact_step_rows_raise_only_format_errors(
    tmp_path: Path, rows: list[str], header: bool
) -> None:
    head = "phase,edge,dindex,dt_host_10us,dt_gpu_10us\n" if header else ""
    text = head + "train,s,0,100,120\n" + "".join(r + "\n" for r in rows)
    _write(
        tmp_path / "k",
        gzip.compress(GOOD_SAMPLES.encode()),
        steps=zlib.compress(text.encode()) if not header else gzip.compress(text.encode()),
        meta={"format": FORMAT_V1_1, "complete": True},
    )
    with contextlib.suppress(TraceFormatError):
        load_trace(tmp_path / "k")


_valid_row = st.tuples(
    st.floats(0, 1e9),
    st.sampled_from(["gpu0", "gpu1", "cpu.pkg-0"]),
    st.sampled_from(["counter_J", "buffer_W", "instant_W", "average_W", "estimate_W"]),
    st.floats(0, 1e6),
    st.sampled_from([repr, lambda x: f"{x:.6f}", lambda x: f"{x:.3e}"]),
)


@SETTINGS
@given(
    rows=st.lists(_valid_row, max_size=30),
    bad=st.one_of(st.none(), st.tuples(st.integers(0, 30), _row)),
)
def test_valid_rows_read_exactly_and_a_bad_one_is_named(
    tmp_path: Path, rows: list[Any], bad: tuple[int, str] | None, sample_reader: str
) -> None:
    rows = sorted(rows, key=lambda r: r[0])
    lines = [f"{fmt(t)},{d},{k},{fmt(v)}" for t, d, k, v, fmt in rows]
    if bad is not None:
        lines.insert(min(bad[0], len(lines)), bad[1])
    text = "t,device,kind,value\n" + "".join(x + "\n" for x in lines)
    _write(tmp_path / "v", gzip.compress(text.encode()))
    try:
        expected: Any = _reference_samples(text, tmp_path / "v.samples.csv.gz")
    except TraceFormatError as err:
        expected = err
    got, cols = _load_both(tmp_path / "v")
    if isinstance(expected, TraceFormatError):
        assert str(got) == str(cols)
        assert str(got).split(": ")[0] == str(expected).split(": ")[0]
    else:
        assert got == expected and cols == expected


def test_real_and_recorded_files_take_the_vectorised_path(
    tmp_path: Path, monkeypatch: Any, sample_reader: str
) -> None:
    from lightning_watt.energy import trace_columns
    from lightning_watt.energy.trace import bundled_trace
    from lightning_watt.testing.synthetic import synthetic_run

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("fell back to the per-row parser")

    synthetic_run(seed=3, duration_s=60.0).trace.save(tmp_path / "syn")  # repr floats
    with TraceWriter(tmp_path / "rec", merge_steps_s=0) as writer:
        writer.write_steps(
            [StepEdge("train", "start", 0, 0.25, 0.26), StepEdge("train", "end", 1, 0.5)]
        )
    monkeypatch.setattr(trace_columns, "_sample_chunk_slow", refuse)
    if sample_reader == "arrow":  # Arrow vouches for every chunk: numpy is never asked
        split = trace_columns._fields
        monkeypatch.setattr(
            trace_columns, "_fields", lambda data, n: refuse() if n == 4 else split(data, n)
        )
    monkeypatch.setattr(
        trace_columns,
        "_slow_steps",
        lambda *a: refuse() if a[3][2] == "dindex" else trace_columns.StepChunk.from_edges([]),
    )
    for prefix in (bundled_trace("h100-mlp"), tmp_path / "syn"):
        assert len(load_columns(prefix).t) > 1000
    assert len([e for c in load_columns(tmp_path / "rec").step_chunks() for e in c.edges()]) == 2
