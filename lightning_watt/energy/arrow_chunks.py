"""pyarrow's CSV reader on one chunk of whole lines: the fast path of
:mod:`lightning_watt.energy.trace_columns` when pyarrow is installed.

Why a library here: Arrow's reader parses and converts a chunk's floats (correctly rounded,
the same values Python's ``float`` gives) and dictionary-encodes its labels in C++, about
2.5x faster than the numpy field splitting of :mod:`lightning_watt.energy.csv_chunks` plus
``numpy.fromstring`` (6 h of one GPU's samples: 0.6 s of CPU against 1.5 s), which stays as
the fallback where pyarrow is missing.

The reader is only asked what the reference parser would read the same way: a chunk with a
quote, a NUL, a lone carriage return, a blank line, an empty field or any row Arrow rejects
gives ``None``, and the caller parses it by the slower paths, whose errors name the line.

Example (pyarrow installed, as the package requires):
    >>> got = read_chunk(b"1.5,gpu0,counter_J,7\\n2.5,gpu0,buffer_W,300.25\\n",
    ...                  ("t", "device", "kind", "value"), floats=("t", "value"),
    ...                  labels=("device", "kind"))
    >>> got.floats["value"].tolist(), got.labels["kind"][0], got.labels["kind"][1].tolist()
    ([7.0, 300.25], ['counter_J', 'buffer_W'], [0, 1])
    >>> read_chunk(b'1.5,"gpu0",counter_J,7\\n', ("t", "device", "kind", "value")) is None
    True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Off with ``LIGHTNING_WATT_ARROW=0`` (or where pyarrow is not installed): the numpy path reads
#: every chunk then. Tests switch it to compare the two paths.
ENABLED = os.environ.get("LIGHTNING_WATT_ARROW", "1") != "0"

_pa: Any = None
_csv: Any = None


def available() -> bool:
    """Whether chunks are read by pyarrow (installed, and not switched off)."""
    global _pa, _csv
    if not ENABLED:
        return False
    if _pa is None:
        try:
            import pyarrow
            import pyarrow.csv
        except ImportError:
            _pa = False
            return False
        _pa, _csv = pyarrow, pyarrow.csv
    return bool(_pa)


@dataclass
class Chunk:
    """A chunk's columns: ``floats[name]`` as numpy arrays, and
    ``labels[name] = (distinct texts, each row's index into them)``."""

    rows: int
    floats: dict[str, np.ndarray]
    labels: dict[str, tuple[list[str], np.ndarray]]


def _plain(data: bytes) -> bool:
    """Lines the csv module and Arrow split alike: no quotes or NULs, and carriage returns
    only before a newline (Arrow would end a line at a lone one). Blank lines, which Arrow
    would skip and the reference parser rejects, are kept as rows with too few columns: an
    error."""
    if b'"' in data or b"\0" in data:
        return False
    # Membership tests are memchr-fast; counting runs only where a carriage return is.
    return b"\r" not in data or data.count(b"\r") == data.count(b"\r\n")


def read_chunk(
    data: bytes,
    names: Sequence[str],
    floats: Sequence[str] = (),
    labels: Sequence[str] = (),
) -> Chunk | None:
    """Columns ``names`` of a chunk of whole lines (no header), or ``None`` when pyarrow is
    not available or the chunk is not one it reads as the reference parser would. Columns
    not named in ``floats`` or ``labels`` are skipped; an empty field in any of them gives
    ``None`` too."""
    if not data or not available() or not _plain(data):
        return None
    pa, csv = _pa, _csv
    dictionary = pa.dictionary(pa.int32(), pa.string())
    types = {n: pa.float64() for n in floats}
    types.update({n: dictionary for n in labels})
    try:
        table = csv.read_csv(
            pa.py_buffer(data),
            read_options=csv.ReadOptions(column_names=list(names), use_threads=False),
            parse_options=csv.ParseOptions(newlines_in_values=False, ignore_empty_lines=False),
            convert_options=csv.ConvertOptions(
                column_types=types,
                include_columns=[n for n in names if n in types],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
            # malloc, as numpy's arrays use: memory freed by one is reused by the other (Arrow's
            # own pool keeps what it freed, +200 MB at the peak of a day's report).
            memory_pool=pa.system_memory_pool(),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError):
        return None
    rows = table.num_rows
    lines = int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 10))
    if rows != lines + (not data.endswith(b"\n")):
        return None
    out = Chunk(rows, {}, {})
    for name in floats:
        column = table.column(name)
        if column.null_count:
            return None
        # Copies: memory of Arrow buffers kept past the table was not given back once freed
        # (+125 MB after a day's samples), numpy's own is.
        out.floats[name] = np.array(column.to_numpy())
    for name in labels:
        got = _label_column(table.column(name))
        if got is None:
            return None
        out.labels[name] = got
    return out


def _label_column(column: Any) -> tuple[list[str], np.ndarray] | None:
    """One dictionary column as (distinct texts, each row's index): Arrow gives each block of
    the chunk its own dictionary, merged here (a few labels each)."""
    if column.null_count:
        return None
    where: dict[str, int] = {}
    parts = []
    for block in column.chunks:
        local = np.array(
            [where.setdefault(s, len(where)) for s in block.dictionary.to_pylist()],
            dtype=np.int32,
        )
        parts.append(local[block.indices.to_numpy()] if len(local) else np.zeros(0, np.int32))
    index = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return list(where), index


__all__ = ["ENABLED", "Chunk", "available", "read_chunk"]
