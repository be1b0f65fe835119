"""The sample store: columns kept in memory or moved to temporary files past a row count give
the same rows, blocks, span and codes; a report reads a long trace a block at a time with the
same numbers; a temporary directory that cannot be written keeps the columns in memory."""

from __future__ import annotations

import errno
import tempfile
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_watt.energy import sample_store as store_mod
from lightning_watt.energy import trace_columns
from lightning_watt.energy.sample_store import SampleStore
from lightning_watt.energy.trace import bundled_trace
from lightning_watt.energy.trace_columns import load_columns
from lightning_watt.report.trace_view import TraceView, _SpanStream


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), max_size=12),
    spill_rows=st.integers(0, 120),
    block=st.integers(1, 50),
)
def test_blocks_and_arrays_hold_exactly_the_rows_appended(
    sizes: list[int], spill_rows: int, block: int
) -> None:
    rng = np.random.default_rng(len(sizes) * 1000 + spill_rows)
    store = SampleStore(spill_rows=spill_rows)
    parts = []
    start = 0.0
    for n in sizes:
        t = start + np.cumsum(rng.uniform(0, 1, n))
        start = float(t[-1]) if n else start
        part = (t, rng.integers(0, 5, n).astype(np.int32), rng.normal(300, 50, n))
        parts.append(part)
        store.append(*part)
    store.finish()
    expected = [np.concatenate([p[k] for p in parts] or [np.zeros(0)]) for k in range(3)]
    rows = sum(sizes)
    assert store.rows == rows
    assert store.spilled == (rows > spill_rows)
    blocks = list(store.blocks(block))
    assert [len(b[0]) for b in blocks] == [min(block, rows - lo) for lo in range(0, rows, block)]
    for k in range(3):
        got = np.concatenate([b[k] for b in blocks] or [np.zeros(0)])
        np.testing.assert_array_equal(got, expected[k])
        np.testing.assert_array_equal(store.arrays()[k], expected[k])
    assert store.used_codes() == sorted(set(expected[1].astype(int).tolist()))
    assert store.span == ((float(expected[0][0]), float(expected[0][-1])) if rows else (0.0, 0.0))


def test_a_temporary_directory_that_cannot_be_written_keeps_the_columns_in_memory(
    monkeypatch: Any,
) -> None:
    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    store = SampleStore(spill_rows=3)
    with pytest.warns(RuntimeWarning, match="cannot write temporary files"):
        for lo in range(0, 10, 2):
            t = np.arange(lo, lo + 2, dtype=float)
            store.append(t, np.ones(2, np.int32), t * 3)
    store.finish()
    assert not store.spilled and store.rows == 10
    np.testing.assert_array_equal(store.arrays()[2], np.arange(10) * 3.0)


def test_a_spilled_trace_reports_the_same_numbers_as_one_in_memory(monkeypatch: Any) -> None:
    prefix = bundled_trace("h200-mlp-stall")
    kept = load_columns(prefix)
    monkeypatch.setattr(trace_columns, "SPILL_ROWS", 5_000)
    spilled = load_columns(prefix)
    assert spilled._loaded()[1].spilled and not kept._loaded()[1].spilled
    assert spilled.rows == kept.rows > 5_000
    assert spilled.span == kept.span and spilled.devices == kept.devices

    def numbers(cols: Any) -> Any:
        view = TraceView(cols)
        view.force_engine = "vectorised"
        return view.trace_numbers(points=50), view.power_bins(), view.power_envelope(200)

    (a, bins_a, env_a), (b, bins_b, env_b) = numbers(kept), numbers(spilled)
    assert a.total_J == b.total_J and a.phases_J == b.phases_J
    np.testing.assert_array_equal(bins_a[1]["gpu0"], bins_b[1]["gpu0"])
    assert env_a == env_b
    for kind in ("counter_J", "buffer_W"):
        for x, y in zip(kept.series("gpu0", kind), spilled.series("gpu0", kind), strict=True):
            np.testing.assert_array_equal(x, y)
    # A pass over the spilled trace reads it a block at a time: the whole columns are never
    # read back into memory.
    assert spilled._loaded()[1]._arrays is None
    assert sum(len(p) for p, _, _ in _SpanStream(spilled, times_only=True)) > 0


def test_spill_rows_default_keeps_short_traces_in_memory() -> None:
    cols = load_columns(bundled_trace("h100-mlp"))
    assert cols.rows < store_mod.SPILL_ROWS and not cols._loaded()[1].spilled


def test_a_disk_that_fills_up_while_spilling_keeps_every_row(monkeypatch: Any) -> None:
    store = SampleStore(spill_rows=3)
    store.append(np.arange(4.0), np.zeros(4, np.int32), np.arange(4.0))
    assert store.spilled
    real = store._write
    calls = []

    def fill_up(part: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # the first column of this part is written, then the disk is full
            store._files[0].write(part[0].tobytes())
            raise OSError(errno.ENOSPC, "No space left on device")
        real(part)

    monkeypatch.setattr(store, "_write", fill_up)
    with pytest.warns(RuntimeWarning, match="cannot write temporary files"):
        for lo in range(4, 12, 4):
            store.append(np.arange(lo, lo + 4.0), np.ones(4, np.int32), np.arange(lo, lo + 4.0))
    store.finish()
    assert not store.spilled and store.rows == 12 and store.used_codes() == [0, 1]
    np.testing.assert_array_equal(store.arrays()[0], np.arange(12.0))
    np.testing.assert_array_equal(store.arrays()[1], [0] * 4 + [1] * 8)
