"""Gzip CSV text in bounded chunks, split into fields with numpy: the low level of
:mod:`lightning_watt.energy.trace_columns`. Nothing here knows what a column means; a chunk
it cannot vouch for is left to the caller's per-row parser.

Example:
    >>> f = _fields(b"1,gpu0,-25\\n30,cpu,7\\n", 3)
    >>> _ints(f, [0, 2]).tolist(), f.strings(1, 1)[0]
    ([[1, -25], [30, 7]], [b'cpu', b'gpu0'])
"""

from __future__ import annotations

import csv
import io
import queue
import threading
import warnings
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_watt.energy.trace import TraceFormatError

#: Decompressed text handed to one vectorised parse (bounded memory whatever the run length).
CHUNK_BYTES = 2 << 20
_NUMERIC = np.zeros(256, dtype=bool)
_NUMERIC[list(b"0123456789.eE+-")] = True


class GzipText:
    """The complete lines of a gzip text file in chunks. A stream cut short (a crash, a
    recording still being written) ends at its last complete line and sets :attr:`truncated`.

    Example:
        >>> import gzip, tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.csv.gz"
        >>> p.write_bytes(gzip.compress(b"a\\nb\\nc\\n")[:-12])  # cut inside the stream
        14
        >>> src = GzipText(p); text = b"".join(c for _, c in src.chunks())
        >>> src.truncated, b"a\\nb\\nc\\n".startswith(text), text.endswith(b"\\n")
        (True, True, True)
    """

    def __init__(self, path: Path, chunk_bytes: int | None = None) -> None:
        self.path = path
        self.chunk_bytes = chunk_bytes or CHUNK_BYTES
        self.truncated = False

    def _open(self) -> io.BufferedReader:
        if self.path.is_dir():
            raise TraceFormatError(f"{self.path}: is a directory, not a watt-trace file")
        if not self.path.exists():
            raise FileNotFoundError(f"watt-trace file missing: {self.path}")
        try:
            return open(self.path, "rb")
        except OSError as err:
            raise TraceFormatError(f"{self.path}: cannot be read ({err})") from None

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        """``(line number of the chunk's first line, whole lines)`` pairs. Reading and
        decompressing run a chunk or two ahead on a helper thread: zlib releases the GIL, so
        they overlap the caller's parsing."""
        items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=2)
        stop = threading.Event()

        def put(item: tuple[str, Any]) -> bool:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False  # the reader was abandoned

        def produce() -> None:
            try:
                for chunk in self._read_chunks():
                    if not put(("chunk", chunk)):
                        return
                put(("end", None))
            except BaseException as err:  # handed to the reader, raised there
                put(("error", err))

        threading.Thread(target=produce, name="lightning-watt-gunzip", daemon=True).start()
        try:
            while True:
                kind, item = items.get()
                if kind == "chunk":
                    yield item
                elif kind == "error":
                    raise item
                else:
                    return
        finally:
            stop.set()

    def _read_chunks(self) -> Iterator[tuple[int, bytes]]:
        lineno, pending = 1, b""
        with self._open() as fh:
            d = zlib.decompressobj(31)
            fed = False
            while block := fh.read(max(1024, min(1 << 18, self.chunk_bytes // 8))):
                while block:
                    try:
                        out = d.decompress(block)
                    except zlib.error as err:
                        where = lineno + pending.count(b"\n")
                        raise TraceFormatError(
                            f"{self.path}:{where}: not a readable gzip text file ({err})"
                        ) from None
                    fed = True
                    block = b""
                    if d.eof:
                        # Several gzip members one after another read as one text.
                        block, d, fed = d.unused_data, zlib.decompressobj(31), False
                    pending += out
                    if len(pending) >= self.chunk_bytes:
                        cut = pending.rfind(b"\n") + 1
                        if cut:
                            yield lineno, pending[:cut]
                            lineno += pending.count(b"\n", 0, cut)
                            pending = pending[cut:]
            if fed:
                self.truncated = True
                pending = pending[: pending.rfind(b"\n") + 1]
            elif pending and not pending.endswith(b"\n"):
                pending += b"\n"
        if pending:
            yield lineno, pending


def _csv_rows(path: Path, lineno: int, data: bytes) -> Iterator[tuple[int, list[str]]]:
    """``(line number, row)`` of a chunk, read by the csv module; its errors (a stray carriage
    return) become :class:`TraceFormatError` naming the line."""
    reader = csv.reader(io.StringIO(_decode(path, lineno, data)))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            where = lineno + max(reader.line_num - 1, 0)
            raise TraceFormatError(f"{path}:{where}: not a CSV row ({err})") from None
        yield lineno + reader.line_num - 1, row


def _decode(path: Path, lineno: int, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        where = lineno + data.count(b"\n", 0, err.start)
        raise TraceFormatError(f"{path}:{where}: not a readable gzip text file ({err})") from None


def _data_chunks(
    source: GzipText, headers: Collection[tuple[str, ...]]
) -> tuple[tuple[str, ...], Iterator[tuple[int, bytes]]]:
    """The header found (one of ``headers``) and the chunks of data rows after it."""
    it = source.chunks()
    first = next(it, None)
    got: list[str] | None = None
    rest = b""
    lineno = 2
    if first is not None:
        _, data = first
        end = data.find(b"\n") + 1
        got = next((row for _, row in _csv_rows(source.path, 1, data[:end])), None)
        rest = data[end:]
    found = tuple(c.strip() for c in got) if got is not None else None
    if found is None or found not in headers:
        want = " or ".join(repr(",".join(h)) for h in headers)
        raise TraceFormatError(f"{source.path}:1: header must be {want}, got {got!r}")

    def chunks() -> Iterator[tuple[int, bytes]]:
        if rest:
            yield lineno, rest
        yield from it

    return found, chunks()


@dataclass
class _Fields:
    """Byte offsets of every field of every row of one chunk: ``start[k]``, ``end[k]``."""

    arr: np.ndarray
    start: list[np.ndarray]
    end: list[np.ndarray]

    @property
    def rows(self) -> int:
        return len(self.start[0])

    def strings(self, first: int, last: int) -> tuple[list[bytes], np.ndarray]:
        """The distinct texts spanning fields ``first..last`` (commas included) and each row's
        index into them, without a Python object per row."""
        lo, hi = self.start[first], self.end[last]
        width = int((hi - lo).max(initial=0))
        if width == 0:
            return [b""], np.zeros(self.rows, dtype=np.intp)
        offs = np.arange(width, dtype=np.int32)
        take = np.minimum(lo.astype(np.int32)[:, None] + offs, len(self.arr) - 1)
        grid = np.where(offs < (hi - lo)[:, None], self.arr[take], 0).astype(np.uint8)
        uniq, inverse = np.unique(grid.view(f"S{width}").ravel(), return_inverse=True)
        return [bytes(u) for u in uniq], inverse.ravel()

    def numbers(self, cols: list[int]) -> np.ndarray | None:
        """The numeric fields ``cols`` as floats, shape ``(rows, len(cols))``; ``None`` when any
        field is empty or holds anything but a plain decimal number."""
        mark = np.zeros(len(self.arr) + 1, dtype=np.int8)
        for k in cols:
            if np.any(self.end[k] <= self.start[k]):
                return None
            # Distinct positions within one field column: plain fancy assignment is exact.
            mark[self.start[k]] += 1
            mark[self.end[k]] -= 1
        # Fields never overlap: the running sum is 0 or 1, and int8 keeps it small.
        inside = np.cumsum(mark[:-1], dtype=np.int8).view(bool)
        if not _NUMERIC[self.arr[inside]].all():
            return None
        buf = self.arr.copy()
        buf[~inside] = 32
        text = buf.tobytes()
        del buf
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                values = np.fromstring(text, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
        if values.size != self.rows * len(cols):
            return None
        return values.reshape(self.rows, len(cols))


def _ints(f: _Fields, cols: list[int]) -> np.ndarray | None:
    """The integer fields ``cols`` (an optional ``-`` then up to 15 digits), shape
    ``(rows, len(cols))``: Horner's rule over the fields' digits, right-aligned, one place at a
    time for every row at once (deltas are a few digits: a few passes), no text parser.
    ``None`` when any field is anything else (the caller falls back)."""
    starts = np.stack([f.start[k] for k in cols], axis=1).ravel()
    ends = np.stack([f.end[k] for k in cols], axis=1).ravel()
    if not len(starts):
        return np.zeros((0, len(cols)), dtype=np.int64)
    lengths = ends - starts
    if lengths.min() < 1 or lengths.max() > 16:
        return None
    negative = f.arr[starts] == 45
    digits = lengths - negative
    if digits.min() < 1 or digits.max() > 15:  # below 10**15: exact in int64 and float64
        return None
    value = np.zeros(len(starts), dtype=np.int64)
    bad = np.zeros(len(starts), dtype=bool)
    for back in range(int(digits.max()), 0, -1):  # the most significant place first
        has = digits >= back
        byte = f.arr[np.where(has, ends - back, 0)].astype(np.int64) - 48
        bad |= has & ((byte < 0) | (byte > 9))
        value = value * 10 + np.where(has, byte, 0)
    if bad.any():
        return None
    return np.where(negative, -value, value).reshape(-1, len(cols))


def _fields(data: bytes, ncols: int) -> _Fields | None:
    """Split a chunk of whole lines into fields; ``None`` when it is not plain CSV with
    ``ncols`` columns on every line (quotes, a lone carriage return, a wrong count). Lines
    may end in ``\\r\\n`` (the bundled traces do), as the csv module reads them."""
    # Quotes need the csv module; NUL would vanish from the fixed-width texts of strings().
    # (Byte membership is a memchr: a tenth of an array comparison.)
    if b'"' in data or b"\0" in data:
        return None
    arr = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(arr == 10)
    line_end = newlines
    returns = np.flatnonzero(arr == 13) if b"\r" in data else newlines[:0]
    if len(returns):
        if len(returns) != len(newlines) or np.any(returns + 1 != newlines):
            return None
        line_end = returns
    commas = np.flatnonzero(arr == 44)
    n = len(newlines)
    if len(commas) != n * (ncols - 1):
        return None
    grid = commas.reshape(n, ncols - 1)
    line_start = np.concatenate(([0], newlines[:-1] + 1))
    if n and (np.any(grid[:, 0] < line_start) or np.any(grid[:, -1] > line_end)):
        return None
    starts = [line_start, *(grid[:, k] + 1 for k in range(ncols - 1))]
    ends = [*(grid[:, k] for k in range(ncols - 1)), line_end]
    return _Fields(arr, starts, ends)
