"""Fast, bounded-memory reading of watt-trace files: gzip text decoded in chunks, each chunk
parsed with numpy into columns (no Python object per row), step edges streamed chunk by chunk.

The per-row Python parser in :mod:`lightning_watt.energy.trace` stays the reference: a chunk
the vectorised path cannot vouch for (a quote, a stray character, a bad value) is parsed again
by it, so errors keep naming the file, the line and the column exactly as before.

Example:
    >>> from lightning_watt.energy.trace import bundled_trace
    >>> cols = load_columns(bundled_trace("h200-mlp-stall"))
    >>> cols.devices, cols.partial, len(cols.t) > 10_000
    (['gpu0'], False, True)
    >>> sum(len(c) for c in cols.step_chunks()) == len(cols.steps)
    True
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_watt.energy import arrow_chunks
from lightning_watt.energy import trace as _trace
from lightning_watt.energy.csv_chunks import (
    GzipText,
    _csv_rows,
    _data_chunks,
    _fields,
    _ints,
)
from lightning_watt.energy.readings import COUNTER_J, KINDS, POWER_KINDS, Reading
from lightning_watt.energy.sample_store import SPILL_ROWS, SampleStore
from lightning_watt.energy.trace import (
    COMPACT_PER_S,
    COMPACT_STEPS_HEADER,
    COMPACT_UNIT_S,
    MAX_ABS_TIME_S,
    MAX_COUNTER_J,
    MAX_POWER_W,
    SAMPLES_HEADER,
    STEPS_HEADER,
    StepEdge,
    Trace,
    TraceFormatError,
)
from lightning_watt.energy.unmeasured import RecordedTimeline, UnmeasuredSpan

_EDGE_LETTERS = {"s": ("start", True), "e": ("end", True), "S": ("start", False)}
_EDGE_LETTERS["E"] = ("end", False)
_LETTER_OK = np.zeros(256, dtype=bool)
_LETTER_START = np.zeros(256, dtype=bool)
_LETTER_GPU = np.zeros(256, dtype=bool)
for _letter, (_edge, _gpu) in _EDGE_LETTERS.items():
    _LETTER_OK[ord(_letter)] = True
    _LETTER_START[ord(_letter)] = _edge == "start"
    _LETTER_GPU[ord(_letter)] = _gpu


# --------------------------------------------------------------------------- samples
@dataclass
class _SampleState:
    names: list[tuple[str, str]] = field(default_factory=list)
    codes: dict[bytes, int] = field(default_factory=dict)
    last_t: float = -math.inf


def _sample_chunk_fast(
    state: _SampleState, data: bytes
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A chunk's columns by the vectorised paths (pyarrow's reader where installed, else numpy
    field splitting), or ``None`` for the reference parser."""
    got = arrow_chunks.read_chunk(
        data, SAMPLES_HEADER, floats=("t", "value"), labels=("device", "kind")
    )
    if got is not None:
        return _checked_samples(
            state,
            got.floats["t"],
            got.floats["value"],
            [d.encode() for d in got.labels["device"][0]],
            got.labels["device"][1],
            [k.encode() for k in got.labels["kind"][0]],
            got.labels["kind"][1],
        )
    f = _fields(data, 4)
    if f is None:
        return None
    nums = f.numbers([0, 3])
    if nums is None:
        return None
    texts, inverse = f.strings(1, 2)
    return _checked_samples(state, nums[:, 0], nums[:, 1], texts, inverse)


def _checked_samples(
    state: _SampleState,
    t: np.ndarray,
    value: np.ndarray,
    texts: list[bytes],
    inverse: np.ndarray,
    kinds: list[bytes] | None = None,
    kind_of: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Codes for a chunk's rows and the reference parser's checks on its columns, or ``None``
    where a row fails one (the reference parser then names it). Labels come as ``texts`` (each
    ``device,kind``) with each row's index, or as devices and ``kinds`` indexed apart."""
    if kinds is not None and kind_of is not None:
        # Pairs of a few devices and kinds: one index per pair present.
        pair = inverse.astype(np.int64) * len(kinds) + kind_of
        # Counted, not sorted: the pairs are a handful of small integers.
        present = np.flatnonzero(np.bincount(pair)) if len(pair) else pair
        lookup = np.zeros(len(texts) * len(kinds), dtype=np.int64)
        lookup[present] = np.arange(len(present))
        inverse = lookup[pair]
        texts = [texts[p // len(kinds)] + b"," + kinds[p % len(kinds)] for p in present.tolist()]
    local = np.empty(len(texts), dtype=np.int32)
    power = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        if text not in state.codes:
            try:
                device, kind = text.decode("ascii").split(",")
            except (UnicodeDecodeError, ValueError):
                return None
            if kind not in KINDS or not _trace._DEVICE_RE.match(device):
                return None
            state.codes[text] = len(state.names)
            state.names.append((device, kind))
        local[i] = state.codes[text]
        power[i] = state.names[local[i]][1] != COUNTER_J
    code = local[inverse]
    is_power = power[inverse]
    ok = (
        np.isfinite(t).all()
        and np.isfinite(value).all()
        and (np.abs(t) <= MAX_ABS_TIME_S).all()
        and (value[is_power] >= 0).all()
        and (value[is_power] <= MAX_POWER_W).all()
        and (np.abs(value[~is_power]) <= MAX_COUNTER_J).all()
        and (len(t) == 0 or (t[0] >= state.last_t and (np.diff(t) >= 0).all()))
    )
    if not ok:
        return None
    if len(t):
        state.last_t = float(t[-1])
    return t, code, value


def _sample_chunk_slow(
    state: _SampleState, path: Path, lineno: int, data: bytes
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference parser on one chunk: raises the exact error, or returns its columns."""
    ts: list[float] = []
    codes: list[int] = []
    values: list[float] = []
    parse = _trace._sample_parser(state.last_t)
    for row_no, row in _csv_rows(path, lineno, data):
        r = parse(f"{path}:{row_no}", _trace._checked_row(path, row_no, row, SAMPLES_HEADER))
        key = (r.device, r.kind)
        text = f"{r.device},{r.kind}".encode()
        if text not in state.codes:
            state.codes[text] = len(state.names)
            state.names.append(key)
        ts.append(r.t)
        codes.append(state.codes[text])
        values.append(r.value)
    if ts:
        state.last_t = ts[-1]
    return np.array(ts, dtype=float), np.array(codes, dtype=np.int32), np.array(values, float)


def read_sample_store(path: Path) -> tuple[list[tuple[str, str]], SampleStore, bool]:
    """``(names, store, truncated)``: the samples' columns in a :class:`SampleStore` (moved to
    temporary files past :data:`SPILL_ROWS` rows), ``names[code]`` each code's (device, kind)."""
    source = GzipText(path)
    _, chunks = _data_chunks(source, [SAMPLES_HEADER])
    state = _SampleState()
    store = SampleStore(SPILL_ROWS)
    for lineno, data in chunks:
        got = _sample_chunk_fast(state, data)
        store.append(*(got if got is not None else _sample_chunk_slow(state, path, lineno, data)))
    store.finish()
    return state.names, store, source.truncated


# --------------------------------------------------------------------------- steps
@dataclass
class StepChunk:
    """Step edges of one chunk as columns: ``phases[phase[i]]``, ``start[i]`` (else an end
    edge), ``index``, ``t_host`` and ``t_gpu`` (NaN where unknown)."""

    phases: list[str]
    phase: np.ndarray
    start: np.ndarray
    index: np.ndarray
    t_host: np.ndarray
    t_gpu: np.ndarray

    def __len__(self) -> int:
        return len(self.t_host)

    @property
    def t(self) -> np.ndarray:
        """Each edge's best time: the GPU's when known, else the host's."""
        return np.where(np.isnan(self.t_gpu), self.t_host, self.t_gpu)

    def edges(self) -> list[StepEdge]:
        gpu = [None if math.isnan(g) else g for g in self.t_gpu.tolist()]
        return [
            StepEdge(self.phases[p], "start" if s else "end", i, h, g)
            for p, s, i, h, g in zip(
                self.phase.tolist(),
                self.start.tolist(),
                self.index.tolist(),
                self.t_host.tolist(),
                gpu,
                strict=True,
            )
        ]

    @classmethod
    def from_edges(cls, edges: list[StepEdge]) -> StepChunk:
        phases: dict[str, int] = {}
        codes = [phases.setdefault(e.phase, len(phases)) for e in edges]
        return cls(
            list(phases),
            np.array(codes, dtype=np.int32),
            np.array([e.edge == "start" for e in edges], dtype=bool),
            np.array([e.index for e in edges], dtype=np.int64),
            np.array([e.t_host for e in edges], dtype=float),
            np.array([math.nan if e.t_gpu is None else e.t_gpu for e in edges], dtype=float),
        )


@dataclass
class _CompactState:
    """What the compact layout's deltas are relative to: the previous row."""

    phase: str | None = None
    index: int = 0
    host: int = 0
    gpu: int = 0
    #: False once host deltas were skipped (``times`` mode): ``host`` is then unknown.
    host_known: bool = True


class _HostUnknown(Exception):
    """A row without a GPU time after host times were skipped: read again in full."""


#: What a compact chunk decodes: every column; host times only (plots); each edge's best time
#: only (the GPU's, and the host's only where a row has no GPU time; indices left 0).
_MODES = ("all", "host", "times")


def _compact_chunk_fast(state: _CompactState, data: bytes, mode: str = "all") -> StepChunk | None:
    f = _fields(data, 5)
    if f is None or np.any(f.end[1] - f.start[1] != 1):
        return None
    letter = f.arr[f.start[1]]
    start_of, gpu_of = _LETTER_START[letter], _LETTER_GPU[letter]
    if not _LETTER_OK[letter].all():
        return None
    skip_host = mode == "times" and bool(gpu_of.all())
    if mode == "times" and not skip_host and not state.host_known:
        raise _HostUnknown
    # Columns not decoded are neither parsed nor checked: left as 0 / unknown.
    cols = {"all": [2, 3, 4], "host": [3], "times": [4] if skip_host else [3, 4]}[mode]
    got = _ints(f, cols)
    if got is None:
        return None
    ints = np.zeros((f.rows, 3), dtype=np.int64)
    ints[:, [c - 2 for c in cols]] = got
    # The phase is written only where it changes: few rows hold one.
    named = np.flatnonzero(f.end[0] > f.start[0])
    phases: list[str] = []
    row_phase = np.full(f.rows, -1, dtype=np.int32)
    bounds = zip(f.start[0][named].tolist(), f.end[0][named].tolist(), strict=True)
    for row, (a, b) in zip(named.tolist(), bounds, strict=True):
        try:
            phase = data[a:b].decode("utf-8")
        except UnicodeDecodeError:
            return None
        if phase not in phases:
            phases.append(phase)
        row_phase[row] = phases.index(phase)
    if row_phase[0] < 0:
        if state.phase is None:
            return None
        if state.phase not in phases:
            phases.append(state.phase)
        row_phase[0] = phases.index(state.phase)
    # Forward fill: an empty phase repeats the previous row's.
    pos = np.where(row_phase >= 0, np.arange(len(row_phase)), 0)
    row_phase = row_phase[np.maximum.accumulate(pos)]
    has_gpu = gpu_of

    def running(start: int, col: int, decoded: bool) -> np.ndarray:
        """The column's running total from ``start`` (constant when it was not decoded)."""
        if not decoded:
            return np.full(f.rows, start, dtype=np.int64)
        return start + np.cumsum(ints[:, col] if col != 2 else np.where(has_gpu, ints[:, 2], 0))

    index = running(state.index, 0, 2 in cols)
    host = running(state.host, 1, 3 in cols)
    gpu = running(state.gpu, 2, 4 in cols)
    if not (np.abs(host) * COMPACT_UNIT_S <= MAX_ABS_TIME_S).all():
        return None
    if not (np.abs(gpu) * COMPACT_UNIT_S <= MAX_ABS_TIME_S).all():
        return None
    state.phase = phases[row_phase[-1]]
    state.index, state.host, state.gpu = int(index[-1]), int(host[-1]), int(gpu[-1])
    if mode == "host":
        has_gpu = np.zeros_like(has_gpu)
    if skip_host:
        state.host_known = False
    return StepChunk(
        phases,
        row_phase.astype(np.int32),
        start_of,
        index,
        np.full(f.rows, math.nan) if skip_host else host / COMPACT_PER_S,
        np.where(has_gpu, gpu / COMPACT_PER_S, math.nan),
    )


def parse_compact_row(state: _CompactState, where: str, row: list[str]) -> StepEdge:
    """One row of the compact steps layout (the reference for the vectorised path)."""
    phase, letter = row[0], row[1]
    if phase:
        state.phase = phase
    elif state.phase is None:
        raise TraceFormatError(f"{where}: empty phase on the first row")
    if letter not in _EDGE_LETTERS:
        raise TraceFormatError(f"{where}: edge must be one of {sorted(_EDGE_LETTERS)}: {letter!r}")
    edge, has_gpu = _EDGE_LETTERS[letter]
    deltas = []
    for text, column in zip(row[2:], COMPACT_STEPS_HEADER[2:], strict=True):
        try:
            value = int(text)
        except ValueError:
            raise TraceFormatError(f"{where}: {column} is not an integer: {text!r}") from None
        if abs(value) >= 2**52:
            raise TraceFormatError(f"{where}: {column} is out of range: {text!r}")
        deltas.append(value)
    state.index += deltas[0]
    state.host += deltas[1]
    if has_gpu:
        state.gpu += deltas[2]
    for units, column in ((state.host, "t_host"), (state.gpu, "t_gpu")):
        if abs(units) * COMPACT_UNIT_S > MAX_ABS_TIME_S:
            raise TraceFormatError(f"{where}: {column} out of range (|t| > {MAX_ABS_TIME_S:g} s)")
    return StepEdge(
        state.phase,
        edge,
        state.index,
        state.host / COMPACT_PER_S,
        state.gpu / COMPACT_PER_S if has_gpu else None,
    )


def _slow_steps(
    path: Path, lineno: int, data: bytes, header: tuple[str, ...], parse: Callable[..., StepEdge]
) -> StepChunk:
    edges = [
        parse(f"{path}:{n}", _trace._checked_row(path, n, row, header))
        for n, row in _csv_rows(path, lineno, data)
    ]
    return StepChunk.from_edges(edges)


class StepReader:
    """Streams a steps file (either layout) as :class:`StepChunk` s; ``truncated`` is set once
    a cut-off stream has been read to its end. ``host_only``: in the compact layout, decode
    only the host times (a third of the work; indices 0, GPU times unknown), for plots.
    ``times_only``: decode only what each edge's best time needs (the GPU times, and host
    times only where a row has none; indices 0, ``t_host`` NaN where not decoded), for the
    energy per phase; a trace that mixes rows with and without GPU times costs a second read."""

    def __init__(
        self,
        path: Path,
        chunk_bytes: int | None = None,
        host_only: bool = False,
        times_only: bool = False,
    ) -> None:
        self.path = path
        self.chunk_bytes = chunk_bytes
        self.host_only = host_only
        self.times_only = times_only
        self.truncated = False

    def __iter__(self) -> Iterator[StepChunk]:
        mode = "host" if self.host_only else "times" if self.times_only else "all"
        yielded = 0
        while True:
            try:
                # After a restart, the chunks already given are decoded again but not given.
                for n, chunk in enumerate(self._chunks(mode)):
                    if n >= yielded:
                        yielded += 1
                        if len(chunk):
                            yield chunk
                return
            except _HostUnknown:
                mode = "all"

    def _chunks(self, mode: str) -> Iterator[StepChunk]:
        source = GzipText(self.path, self.chunk_bytes)  # None: csv_chunks.CHUNK_BYTES
        header, chunks = _data_chunks(source, (STEPS_HEADER, COMPACT_STEPS_HEADER))
        state = _CompactState()
        for lineno, data in chunks:
            if header == COMPACT_STEPS_HEADER:
                saved = _CompactState(**vars(state))
                got = _compact_chunk_fast(state, data, mode)
                if got is None:
                    if mode == "times" and not saved.host_known:
                        raise _HostUnknown
                    state = saved
                    got = _slow_steps(
                        self.path,
                        lineno,
                        data,
                        header,
                        functools.partial(parse_compact_row, state),
                    )
                    if mode == "host":
                        # GPU deltas were never summed in this mode: their totals are unknown.
                        got.t_gpu[:] = math.nan
            else:
                got = _slow_steps(self.path, lineno, data, header, _trace._parse_step)
            yield got
        self.truncated = source.truncated


# --------------------------------------------------------------------------- the trace
#: Rows of a trace one pass over a series holds at a time (:meth:`TraceColumns.series_blocks`).
SERIES_BLOCK_ROWS = 1 << 20
_Samples = tuple[list[tuple[str, str]], SampleStore]


class TraceColumns:
    """A watt-trace held as columns: samples in a :class:`SampleStore` (numpy arrays, about 18
    bytes a row; past :data:`SPILL_ROWS` rows in temporary files, read back a block at a time
    by :meth:`sample_blocks`), step edges streamed from disk on demand (:meth:`step_chunks`),
    never all held at once. ``t``, ``code`` and ``value`` give the whole columns (read into
    memory on first use); passes over a long trace use :meth:`sample_blocks`.

    ``partial`` (with ``partial_reason``) says the recording was cut off: a killed run, a
    stream that stops mid-way, a recording never closed. ``loader``: read the samples on
    first use instead (a report whose numbers all come from the run's summary never needs
    them); it returns the columns and whether the stream stopped short.
    """

    def __init__(
        self,
        names: list[tuple[str, str]],
        t: np.ndarray,
        code: np.ndarray,
        value: np.ndarray,
        meta: dict[str, Any],
        steps_source: StepReader | list[StepEdge] | None = None,
        partial: bool = False,
        partial_reason: str | None = None,
        loader: Callable[[], tuple[_Samples, bool]] | None = None,
    ) -> None:
        self._samples: _Samples = (names, SampleStore.from_arrays(t, code, value))
        self.meta = meta
        self.steps_source: StepReader | list[StepEdge] = (
            steps_source if steps_source is not None else []
        )
        self._partial = (partial, partial_reason)
        self._loader = loader

    def _loaded(self) -> _Samples:
        if self._loader is not None:
            loader, self._loader = self._loader, None
            self._samples, truncated = loader()
            if truncated:
                reasons = [r for r in (self._partial[1], "the samples file stops mid-stream") if r]
                self._partial = (True, "; ".join(reasons))
        return self._samples

    @property
    def loaded(self) -> bool:
        """Whether the samples have been read (always, unless loaded lazily and unused)."""
        return self._loader is None

    @property
    def names(self) -> list[tuple[str, str]]:
        """``(device, kind)`` of each sample code."""
        return self._loaded()[0]

    @property
    def t(self) -> np.ndarray:
        return self._loaded()[1].arrays()[0]

    @property
    def code(self) -> np.ndarray:
        return self._loaded()[1].arrays()[1]

    @property
    def value(self) -> np.ndarray:
        return self._loaded()[1].arrays()[2]

    @property
    def rows(self) -> int:
        """How many sample rows the trace holds."""
        return self._loaded()[1].rows

    def sample_blocks(
        self, rows: int = SERIES_BLOCK_ROWS
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(t, code, value)`` of ``rows`` sample rows at a time, in order: a pass that holds
        one block whatever the run's length."""
        return self._loaded()[1].blocks(rows)

    @property
    def partial(self) -> bool:
        self._loaded()
        return self._partial[0]

    def partial_status(self, load: bool = True) -> tuple[bool, str | None]:
        """``(partial, reason)``; with ``load=False`` as far as known without reading the
        samples (the meta says whether the recording was closed)."""
        if load:
            self._loaded()
        return self._partial

    @property
    def partial_reason(self) -> str | None:
        self._loaded()
        return self._partial[1]

    @classmethod
    def from_trace(cls, trace: Trace) -> TraceColumns:
        names: dict[tuple[str, str], int] = {}
        code = [names.setdefault((r.device, r.kind), len(names)) for r in trace.samples]
        return cls(
            list(names),
            np.array([r.t for r in trace.samples], dtype=float),
            np.array(code, dtype=np.int32),
            np.array([r.value for r in trace.samples], dtype=float),
            trace.meta,
            list(trace.steps),
            trace.partial,
            trace.partial_reason,
        )

    @property
    def samples(self) -> list[Reading]:
        """Every sample as a :class:`Reading` (materialised: for small traces and tests)."""
        return list(self.readings())

    def readings(self, kinds: Collection[str] | None = None) -> Iterator[Reading]:
        names = self.names
        wanted = [i for i, (_, k) in enumerate(names) if kinds is None or k in kinds]
        for t, code, value in self.sample_blocks(100_000):
            m = np.isin(code, wanted)
            for tt, c, v in zip(t[m].tolist(), code[m].tolist(), value[m].tolist(), strict=True):
                yield Reading(tt, names[c][0], names[c][1], v)

    def _used(self) -> list[int]:
        """The codes any row holds (counted as the rows were read)."""
        return self._loaded()[1].used_codes()

    @property
    def devices(self) -> list[str]:
        return sorted({self.names[c][0] for c in self._used()})

    @property
    def kinds(self) -> list[str]:
        return sorted({self.names[c][1] for c in self._used()})

    @property
    def span(self) -> tuple[float, float]:
        """Times of the first and last sample (``(0.0, 0.0)`` without samples)."""
        return self._loaded()[1].span

    @property
    def fit_window(self) -> tuple[float, float]:
        return _trace.recorded_window(self.meta, self.span)

    @property
    def unmeasured_spans(self) -> list[UnmeasuredSpan]:
        """:attr:`Trace.unmeasured_spans <lightning_watt.energy.trace.Trace.unmeasured_spans>`."""
        return _trace.unmeasured_spans(self.meta)

    def unmeasured(
        self, t0: float = -math.inf, t1: float = math.inf
    ) -> dict[str, dict[str, float | str]]:
        """:meth:`Trace.unmeasured <lightning_watt.energy.trace.Trace.unmeasured>`."""
        return _trace.unmeasured_of(self.meta, self.span, t0, t1)

    def series(self, device: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """``(t, value)`` of one device and kind."""
        pieces = list(self.series_blocks(device, kind))
        if not pieces:
            return np.zeros(0), np.zeros(0)
        return np.concatenate([t for t, _ in pieces]), np.concatenate([v for _, v in pieces])

    def series_blocks(
        self, device: str, kind: str, rows: int = SERIES_BLOCK_ROWS
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """:meth:`series` in time order, in pieces taken from ``rows`` rows of the trace at a
        time: what a pass over one kind holds is bounded by ``rows``, not by the run."""
        if (device, kind) not in self.names:
            return
        c = self.names.index((device, kind))
        for t, code, value in self.sample_blocks(rows):
            mask = code == c
            if mask.any():
                yield t[mask], value[mask]

    def series_span(self, device: str, kind: str) -> tuple[float, float] | None:
        """Times of the first and last row of one device and kind (``None``: no such row)."""
        if (device, kind) not in self.names:
            return None
        first = last = None
        for t, _ in self.series_blocks(device, kind):
            first = float(t[0]) if first is None else first
            last = float(t[-1])
        return None if first is None or last is None else (first, last)

    def power_kinds(self) -> dict[str, str]:
        """The best raw power kind per device (``{device: kind}``), as the report draws it."""
        found: dict[str, list[str]] = {}
        for c in self._used():
            device, kind = self.names[c]
            if kind in POWER_KINDS:
                found.setdefault(device, []).append(kind)
        return {d: min(ks, key=POWER_KINDS.index) for d, ks in sorted(found.items())}

    def step_chunks(self, host_only: bool = False, times_only: bool = False) -> Iterator[StepChunk]:
        """Step edges in chunks (streamed from disk for a loaded trace); ``host_only`` may
        skip decoding GPU times and indices, ``times_only`` everything but each edge's best
        time (see :class:`StepReader`)."""
        if isinstance(self.steps_source, list):
            if self.steps_source:
                yield StepChunk.from_edges(self.steps_source)
            return
        source = self.steps_source
        if host_only or times_only:
            source = StepReader(source.path, source.chunk_bytes, host_only, times_only)
        yield from source

    @property
    def steps(self) -> list[StepEdge]:
        """Every step edge (materialised: for small traces and tests)."""
        return [e for chunk in self.step_chunks() for e in chunk.edges()]

    def timeline(self, kinds: Collection[str] | None = None, **timeline_kwargs: Any) -> Any:
        """The fused :class:`EnergyTimeline`, fed in half-second chunks as the live meter is,
        with the recording's estimates for spans no sample covers (:meth:`Trace.timeline`)."""
        timeline = RecordedTimeline(self.unmeasured_spans, **timeline_kwargs)
        _trace.feed_timeline(timeline, self.readings(kinds))
        return timeline


def load_columns(prefix: str | os.PathLike[str], lazy: bool = False) -> TraceColumns:
    """Read a trace into columns (samples parsed at once, steps left on disk to stream).

    The meta, and the headers of both data files, are checked here, so a wrong file fails at
    load time; ``lazy`` leaves the samples to be parsed on first use (their errors then raise
    there)."""
    samples_path, steps_path, meta_path = _trace._paths(_trace.trace_prefix(prefix))
    if Path(prefix).is_dir() and not meta_path.exists():
        raise TraceFormatError(
            f"{prefix}: is a directory; expected a watt-trace prefix (PREFIX.meta.json, "
            "PREFIX.samples.csv.gz, PREFIX.steps.csv.gz) or one of its files"
        )
    meta = _trace._read_meta(meta_path)
    steps = StepReader(steps_path)
    # Read the header (and the first chunk) now: a wrong steps file fails at load time.
    _data_chunks(GzipText(steps_path, 1 << 16), (STEPS_HEADER, COMPACT_STEPS_HEADER))
    partial, reason = _trace._partial(meta, samples_truncated=False)

    def load() -> tuple[_Samples, bool]:
        names, store, truncated = read_sample_store(samples_path)
        return (names, store), truncated

    empty = np.zeros(0)
    cols = TraceColumns(
        [], empty, empty.astype(np.int32), empty, meta, steps, partial, reason, load
    )
    if lazy:
        _data_chunks(GzipText(samples_path, 1 << 16), [SAMPLES_HEADER])
    else:
        cols._loaded()
    return cols
