"""Where a trace's sample columns live while a report reads them: in memory for a short trace,
in anonymous temporary files past :data:`SPILL_ROWS` rows, read back a block at a time. A
report's passes over a long trace then hold a block, not the run: a day of one GPU's samples
is 124 MB of columns, a node-day of eight GPUs a gigabyte.

The files are unnamed (deleted when closed or when the process ends) and hold the columns as
raw numbers, 20 bytes a row; reading a block back costs a copy from the page cache. Where they
cannot be written (a full or read-only temporary directory), the columns stay in memory.

Example:
    >>> import numpy as np
    >>> store = SampleStore(spill_rows=4)
    >>> for lo in range(0, 10, 3):
    ...     t = np.arange(lo, min(lo + 3, 10), dtype=float)
    ...     store.append(t, np.zeros(len(t), np.int32), 2 * t)
    >>> store.finish()
    >>> store.spilled, store.rows, store.span, store.used_codes()
    (True, 10, (0.0, 9.0), [0])
    >>> [len(t) for t, _, _ in store.blocks(4)], store.arrays()[2].tolist()[-1]
    ([4, 4, 2], 18.0)
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

#: Rows kept in memory before the columns move to temporary files: about 36 MB, 7 h of one
#: GPU's samples at the meter's 80 rows a second.
SPILL_ROWS = 2_000_000
_DTYPES: tuple[np.dtype[Any], ...] = (
    np.dtype(np.float64),
    np.dtype(np.int32),
    np.dtype(np.float64),
)


class SampleStore:
    """Columns ``t`` (float64), ``code`` and ``value`` (float64), appended chunk by chunk in
    time order, then read whole (:meth:`arrays`) or a block at a time (:meth:`blocks`)."""

    def __init__(self, spill_rows: int = SPILL_ROWS) -> None:
        self.spill_rows = spill_rows
        self.rows = 0
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        # Unnamed temporary files, closed (and so deleted) by _close or at exit.
        self._files: list[Any] | None = None
        self._first = self._last = 0.0
        self._counts = np.zeros(0, dtype=np.int64)

    @classmethod
    def from_arrays(cls, t: np.ndarray, code: np.ndarray, value: np.ndarray) -> SampleStore:
        """A store over columns already in memory (kept as they are)."""
        store = cls(spill_rows=len(t) + 1)
        store.append(t, code, value)
        store._arrays = (t, code, value)
        store._parts = []
        return store

    @property
    def spilled(self) -> bool:
        """Whether the columns are in temporary files (else in memory)."""
        return self._files is not None

    @property
    def span(self) -> tuple[float, float]:
        """Times of the first and last row (``(0.0, 0.0)`` when empty)."""
        return (self._first, self._last)

    def used_codes(self) -> list[int]:
        """The codes any row holds, in order."""
        return np.flatnonzero(self._counts).tolist()

    def append(self, t: np.ndarray, code: np.ndarray, value: np.ndarray) -> None:
        if not len(t):
            return
        if not self.rows:
            self._first = float(t[0])
        self._last = float(t[-1])
        self.rows += len(t)
        counts = np.bincount(code)
        if len(counts) > len(self._counts):
            counts[: len(self._counts)] += self._counts
            self._counts = counts
        else:
            self._counts[: len(counts)] += counts
        part = (t, code, value)
        if self._files is not None:
            try:
                self._write(part)
            except OSError as err:  # the disk filled up: what was written comes back
                self._parts = [self._read(0, self.rows - len(t)), part]
                self._stay_in_memory(err)
            return
        self._parts.append(part)
        if self.rows > self.spill_rows:
            self._spill()

    def _spill(self) -> None:
        try:
            self._files = [
                tempfile.TemporaryFile(prefix="lightning-watt-")  # noqa: SIM115 (kept open)
                for _ in _DTYPES
            ]
            for part in self._parts:
                self._write(part)
        except OSError as err:
            self._stay_in_memory(err)
            return
        self._parts = []

    def _stay_in_memory(self, err: OSError) -> None:
        self._close()
        self.spill_rows = 2**62  # never try again
        warnings.warn(
            f"lightning-watt: cannot write temporary files ({err}); the trace's samples stay "
            "in memory (about 18 bytes a row).",
            RuntimeWarning,
            stacklevel=4,
        )

    def _write(self, part: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        assert self._files is not None
        for fh, column, dtype in zip(self._files, part, _DTYPES, strict=True):
            fh.write(np.ascontiguousarray(column, dtype=dtype).tobytes())

    def _close(self) -> None:
        for fh in self._files or []:
            fh.close()
        self._files = None

    def finish(self) -> None:
        """Done appending: in-memory parts become single columns (column by column, each
        column's pieces freed as it is joined), files are flushed."""
        if self._files is not None:
            for fh in self._files:
                fh.flush()
            return
        if self._arrays is not None and not self._parts:
            return
        columns = [list(col) for col in zip(*self._parts, strict=True)]
        self._parts = []
        if not columns:
            columns = [[np.zeros(0, dtype=d)] for d in _DTYPES]
        joined = []
        for k in range(3):
            joined.append(np.concatenate(columns[k]))
            columns[k] = []
        t, code, value = joined
        # Codes index the (device, kind) names: a few dozen at most in any real trace.
        self._arrays = (t, code.astype(np.int16 if len(self._counts) < 2**15 else np.int32), value)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The whole columns (read into memory once from spilled files, then kept)."""
        if self._arrays is None:
            self.finish()
        if self._arrays is None:
            self._arrays = self._read(0, self.rows)
            self._close()
        return self._arrays

    def blocks(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(t, code, value)`` of ``rows`` rows at a time, in order."""
        if self._files is None and self._arrays is None:
            self.finish()
        for lo in range(0, self.rows, rows):
            hi = min(self.rows, lo + rows)
            if self._arrays is not None:
                t, code, value = self._arrays
                yield t[lo:hi], code[lo:hi], value[lo:hi]
            else:
                yield self._read(lo, hi)

    def _read(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert self._files is not None
        out = []
        for fh, dtype in zip(self._files, _DTYPES, strict=True):
            column = np.empty(hi - lo, dtype=dtype)
            fh.seek(lo * dtype.itemsize)
            if fh.readinto(column.view(np.uint8)) != column.nbytes:
                raise OSError("lightning-watt: a temporary sample file was cut short")
            out.append(column)
        return out[0], out[1], out[2]


__all__ = ["SPILL_ROWS", "SampleStore"]
