"""The report's columnar paths against the plain ones: a trace read as columns from disk (step
edges streamed in small chunks, host times only for coarse blocks) draws the same phase blocks
and curves as the same trace held in memory."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_watt.energy import csv_chunks
from lightning_watt.energy.csv_chunks import _fields, _ints
from lightning_watt.energy.trace import TraceWriter, load_trace
from lightning_watt.energy.trace_columns import StepReader, load_columns
from lightning_watt.report.trace_view import TraceView
from lightning_watt.testing.synthetic import synthetic_run


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = synthetic_run(seed=11, duration_s=120.0)
    prefix = tmp_path_factory.mktemp("scale") / "rec"
    with TraceWriter(prefix, merge_steps_s=0) as writer:
        writer.meta.update(run.trace.meta)
        writer.write_samples(run.trace.samples)
        writer.write_steps(run.trace.steps)
    return prefix


@pytest.mark.parametrize("merge_s", [0.05, 2.0])
def test_streamed_blocks_match_the_in_memory_ones(
    recorded: Path, monkeypatch: pytest.MonkeyPatch, merge_s: float
) -> None:
    in_memory = TraceView(load_trace(recorded)).phase_spans(merge_s)
    monkeypatch.setattr(csv_chunks, "CHUNK_BYTES", 2048)  # many chunks: carries across them
    streamed = TraceView(load_columns(recorded, lazy=True)).phase_spans(merge_s)
    assert [s.phase for s in streamed] == [s.phase for s in in_memory]
    # Host times alone (merge_s >= 1 s) move a block edge by the GPU's lag at most.
    tol = 0.02 if merge_s >= 1.0 else 1e-9
    got = np.array([(s.start, s.end) for s in streamed])
    want = np.array([(s.start, s.end) for s in in_memory])
    assert np.abs(got - want).max() <= tol
    assert len(in_memory) > 3


def test_curves_and_spans_match_between_columns_and_a_loaded_trace(recorded: Path) -> None:
    plain = TraceView(load_trace(recorded))
    cols = TraceView(load_columns(recorded))
    assert cols.step_spans() == plain.step_spans()
    c1, p1, s1 = cols.power_over_time()
    c2, p2, s2 = plain.power_over_time()
    assert c1 == c2 and s1 == s2
    np.testing.assert_array_equal(np.array(p1["gpu0"]), np.array(p2["gpu0"]))
    t1, e1 = cols.energy_over_time(points=50)
    t2, e2 = plain.energy_over_time(points=50)
    assert t1 == t2 and e1 == e2
    assert cols._trace_phases_J == pytest.approx(plain._trace_phases_J, rel=1e-12)


def test_small_chunks_are_really_many(recorded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_chunks, "CHUNK_BYTES", 2048)
    chunks = list(load_columns(recorded).step_chunks())
    assert len(chunks) >= 5
    assert [e for c in chunks for e in c.edges()] == load_trace(recorded).steps


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.integers(-(10**15) + 1, 10**15 - 1).map(str),
            st.text(alphabet="0123456789-+.e a", min_size=0, max_size=17),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_integer_fields_decode_as_int_does(fields: list[str]) -> None:
    """The vectorised integer decoder gives ``int()``'s values for plain integers of up to 15
    digits, and gives up (``None``: the caller's per-row parser then names the line) on
    anything else."""
    data = "".join(f"x,{text}\n" for text in fields).encode()
    f = _fields(data, 2)
    got = _ints(f, [1]) if f is not None else None

    def plain(text: str) -> bool:
        digits = text[1:] if text.startswith("-") else text
        return digits.isdigit() and len(digits) <= 15 and digits.isascii()

    assert f is not None  # two plain fields per row: the splitter always takes them
    if all(plain(t) for t in fields):
        assert got is not None
        assert got[:, 0].tolist() == [int(t) for t in fields]
    else:
        assert got is None


def test_host_times_survive_a_chunk_the_fast_parser_refuses(tmp_path: Path) -> None:
    """In host-only mode GPU deltas are not summed; a chunk parsed row by row (here: a quoted
    phase) must then give host times, not GPU times counted from an unknown base."""
    rows = ["train,s,0,100000,100400\n"]
    rows += [f",{'e' if k % 2 else 's'},1,{300 + k},{310 + k}\n" for k in range(40)]
    rows += ['"train",e,1,500,520\n', ",s,0,30,40\n", ",e,1,400,410\n"]
    path = tmp_path / "t.steps.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("phase,edge,dindex,dt_host_10us,dt_gpu_10us\n" + "".join(rows))
    full = np.concatenate([c.t_host for c in StepReader(path, 256)])
    host = np.concatenate([c.t for c in StepReader(path, 256, host_only=True)])
    np.testing.assert_array_equal(host, full)


def test_an_abandoned_reader_stops_its_helper_thread(tmp_path: Path) -> None:
    """Decompression runs ahead on a helper thread; a reader dropped after its first chunk (a
    header check) must not leave that thread blocked behind it."""
    import threading
    import time

    from lightning_watt.energy.csv_chunks import GzipText

    path = tmp_path / "big.csv.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"".join(b"%d,gpu0,buffer_W,1.5\n" % i for i in range(200_000)))
    it = GzipText(path, 4096).chunks()
    assert next(it)[0] == 1
    del it  # closed at once: its helper sees the stop within a put's timeout

    def helpers() -> int:
        return sum(t.name == "lightning-watt-gunzip" for t in threading.enumerate())

    deadline = time.monotonic() + 5.0
    while helpers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert helpers() == 0
