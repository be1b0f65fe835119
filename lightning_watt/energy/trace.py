"""Reading and writing watt-trace v1: the format lightning-watt records, replays and shares.

Three files share a prefix: ``PREFIX.samples.csv.gz`` (``t,device,kind,value``, sorted by
``t``), ``PREFIX.steps.csv.gz`` (``phase,edge,index,t_host,t_gpu``) and ``PREFIX.meta.json``
(``"format": "watt-trace v1"`` plus free-form facts about the run).

``watt-trace v1.1`` (what the meter records) extends v1 in two ways, and every v1 file still
reads: the steps file may use the compact layout (header ``phase,edge,dindex,dt_host_10us,
dt_gpu_10us``: each row holds differences from the row before, times in units of 10 us, an
empty phase repeats the previous one, edge ``s``/``e`` or ``S``/``E`` when the GPU time is
unknown), and a recording that was closed says ``"complete": true`` in its meta; one without
it was cut off (:attr:`Trace.partial`).

A v1.1 meta may also hold ``"unmeasured"``: the spans its meter could not measure, as a list of
``{"device", "since", "until", "watts", "reason", "basis", "in_samples"}`` (times on the trace
clock; ``until`` ``null`` while the span was still open, a recording cut off then: it ends with
the recording). ``in_samples: true``: the estimate is in the samples as ``estimate_W`` readings
(a device that stopped being measured); ``false``: no sample covers the span (a device whose
data began late) and readers add ``watts * (until - since)`` to the device's energy, as
:meth:`Trace.timeline` and the report do (:mod:`~lightning_watt.energy.unmeasured`). A reader
that predates the field counts such a span as zero joules, as the recording's readings alone
say; a recording without it was measured throughout.

Example:
    >>> from lightning_watt.energy.trace import bundled_trace, load_trace
    >>> trace = load_trace(bundled_trace("h200-mlp-stall"))
    >>> round(sum(trace.timeline().energy_between(*trace.fit_window).values()))
    8362
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from lightning_watt._files import atomic_write_text
from lightning_watt.energy.readings import COUNTER_J, KINDS, Reading
from lightning_watt.energy.timeline import _interp
from lightning_watt.energy.unmeasured import (
    META_KEY,
    RecordedTimeline,
    UnmeasuredSpan,
    summarise_unmeasured,
)
from lightning_watt.schema import TRACE_FORMAT

FORMAT = TRACE_FORMAT
#: The extension written by :class:`TraceWriter` with the compact steps layout.
FORMAT_V1_1 = TRACE_FORMAT + ".1"
FORMATS = (FORMAT, FORMAT_V1_1)
SAMPLES_HEADER = ("t", "device", "kind", "value")
STEPS_HEADER = ("phase", "edge", "index", "t_host", "t_gpu")
COMPACT_STEPS_HEADER = ("phase", "edge", "dindex", "dt_host_10us", "dt_gpu_10us")
#: Time unit of the compact steps layout: 10 us (an integer count per second, so that
#: ``units / COMPACT_PER_S`` is the float nearest the time written).
COMPACT_PER_S = 100_000
COMPACT_UNIT_S = 1 / COMPACT_PER_S
#: Values no real recording holds; beyond them energies overflow or lose all precision.
MAX_ABS_TIME_S = 1e10
MAX_POWER_W = 1e7
MAX_COUNTER_J = 1e18
#: Meta fields the format defines: finite seconds on the trace clock.
META_TIMES = ("fit_start", "fit_end", "meter_stop")
EDGES = ("start", "end")
_DEVICE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")
_DATA_DIR = Path(__file__).parent.parent / "data"
_Row = TypeVar("_Row")


class TraceFormatError(ValueError):
    """A watt-trace file that does not follow the format; the message names file and line."""


class StepEdge(NamedTuple):
    """One step edge: ``phase`` (``train``, ``val``, ...), ``edge`` (``start``/``end``),
    ``index``, the host time of the hook and the GPU time it resolved to (``None`` if unknown)."""

    phase: str
    edge: str
    # The field shadows tuple.index(); the name is part of the format (STEPS_HEADER) and public.
    index: int  # type: ignore[assignment]
    t_host: float
    t_gpu: float | None = None

    @property
    def t(self) -> float:
        """The best time for this edge: the GPU's when known, else the host's."""
        return self.t_host if self.t_gpu is None else self.t_gpu


#: Characters of step lines held before they are compressed anyway (a flush comes first at
#: any step rate below ~50 kHz).
_STEPS_HELD_MAX = 1 << 20

#: A step edge as a plain tuple in :class:`StepEdge`'s field order (a StepEdge is one).
StepRow = tuple[str, str, int, float, "float | None"]


def _paths(prefix: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    p = str(prefix)
    return Path(p + ".samples.csv.gz"), Path(p + ".steps.csv.gz"), Path(p + ".meta.json")


def trace_prefix(path: str | os.PathLike[str]) -> str:
    """The prefix of a trace given its prefix or the path of any one of its three files."""
    p = str(path)
    for suffix in (".samples.csv.gz", ".steps.csv.gz", ".meta.json"):
        if p.endswith(suffix):
            return p[: -len(suffix)]
    return p


def bundled_trace(name: str) -> str:
    """Prefix of a real GPU trace shipped with the package (``h100-mlp``, ``h200-mlp-stall``,
    ``h200-square-wave``), for replays and demos on machines without a GPU."""
    available = sorted(p.name[: -len(".meta.json")] for p in _DATA_DIR.glob("*.meta.json"))
    if name not in available:
        raise ValueError(f"bundled_trace: unknown name {name!r}; available: {available}")
    return str(_DATA_DIR / name)


def _parse_float(text: str, where: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceFormatError(f"{where}: column {column!r} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise TraceFormatError(f"{where}: column {column!r} is not finite: {text!r}")
    return value


def _checked_row(path: Path, lineno: int, row: list[str], header: tuple[str, ...]) -> list[str]:
    if len(row) != len(header):
        raise TraceFormatError(
            f"{path}:{lineno}: expected {len(header)} columns {','.join(header)}, got {row}"
        )
    return row


def _sample_parser(last_t: float) -> Callable[[str, list[str]], Reading]:
    """The reference parser of one samples row (rows must not go back in time)."""

    def parse(where: str, row: list[str]) -> Reading:
        nonlocal last_t
        t = _parse_float(row[0], where, "t")
        device, kind = row[1], row[2]
        value = _parse_float(row[3], where, "value")
        if not _DEVICE_RE.match(device):
            raise TraceFormatError(f"{where}: invalid device name {device!r}")
        if kind not in KINDS:
            raise TraceFormatError(
                f"{where}: unknown kind {kind!r}; accepted kinds: {sorted(KINDS)}"
            )
        if kind != COUNTER_J and value < 0:
            raise TraceFormatError(f"{where}: negative power {value} W for kind {kind!r}")
        if abs(t) > MAX_ABS_TIME_S:
            raise TraceFormatError(f"{where}: column 't' out of range (|t| > {MAX_ABS_TIME_S:g} s)")
        if kind != COUNTER_J and value > MAX_POWER_W:
            raise TraceFormatError(f"{where}: power {value} W above {MAX_POWER_W:g} W")
        if kind == COUNTER_J and abs(value) > MAX_COUNTER_J:
            raise TraceFormatError(f"{where}: counter {value} J beyond {MAX_COUNTER_J:g} J")
        if t < last_t:
            raise TraceFormatError(f"{where}: rows are not sorted by t ({t} after {last_t})")
        last_t = t
        return Reading(t, device, kind, value)

    return parse


def _parse_step(where: str, row: list[str]) -> StepEdge:
    phase, edge = row[0], row[1]
    if not phase:
        raise TraceFormatError(f"{where}: empty phase")
    if edge not in EDGES:
        raise TraceFormatError(f"{where}: edge must be one of {EDGES}, got {edge!r}")
    try:
        index = int(row[2])
    except ValueError:
        raise TraceFormatError(f"{where}: index is not an integer: {row[2]!r}") from None
    t_host = _parse_float(row[3], where, "t_host")
    t_gpu = _parse_float(row[4], where, "t_gpu") if row[4].strip() else None
    for t, column in ((t_host, "t_host"), (t_gpu, "t_gpu")):
        if t is not None and abs(t) > MAX_ABS_TIME_S:
            raise TraceFormatError(f"{where}: {column} out of range (|t| > {MAX_ABS_TIME_S:g} s)")
    return StepEdge(phase, edge, index, t_host, t_gpu)


def read_json_object(path: Path, error: type[Exception]) -> dict[str, Any]:
    """A JSON file holding one object (watt-trace meta, a summary); ``error`` names the file
    and line of what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise error(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
    if not isinstance(data, dict):
        raise error(f"{path}:1: expected a JSON object")
    return data


def _read_meta(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise TraceFormatError(f"{path}: is a directory, not a watt-trace meta file")
    if not path.exists():
        raise FileNotFoundError(f"watt-trace file missing: {path}")
    try:
        meta = read_json_object(path, TraceFormatError)
    except (OSError, UnicodeDecodeError) as err:
        raise TraceFormatError(f"{path}: cannot be read ({err})") from None
    if meta.get("format") not in FORMATS:
        accepted = " or ".join(repr(f) for f in FORMATS)
        raise TraceFormatError(f"{path}:1: format must be {accepted}, got {meta.get('format')!r}")
    for key in META_TIMES:
        if key not in meta:
            continue
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TraceFormatError(f"{path}: field {key!r} must be a number, got {value!r}")
        if not math.isfinite(value) or abs(value) > MAX_ABS_TIME_S:
            raise TraceFormatError(
                f"{path}: field {key!r} must be finite seconds (|t| <= {MAX_ABS_TIME_S:g}), "
                f"got {value!r}"
            )
    if "fit_start" in meta and "fit_end" in meta and meta["fit_end"] < meta["fit_start"]:
        raise TraceFormatError(
            f"{path}: field 'fit_end' ({meta['fit_end']}) is before 'fit_start' "
            f"({meta['fit_start']})"
        )
    if "complete" in meta and not isinstance(meta["complete"], bool):
        raise TraceFormatError(f"{path}: field 'complete' must be true or false")
    unmeasured_spans(meta, where=str(path))
    return meta


def _meta_number(value: object, where: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TraceFormatError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _parse_span(item: object, where: str) -> UnmeasuredSpan:
    if not isinstance(item, dict):
        raise TraceFormatError(f"{where} must be an object, got {item!r}")
    device = item.get("device")
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise TraceFormatError(f"{where}: invalid device name {device!r}")
    since = _meta_number(item.get("since"), f"{where}: 'since'")
    until = _meta_number(item.get("until"), f"{where}: 'until'", allow_none=True)
    watts = _meta_number(item.get("watts"), f"{where}: 'watts'")
    assert since is not None and watts is not None
    if abs(since) > MAX_ABS_TIME_S or (until is not None and abs(until) > MAX_ABS_TIME_S):
        raise TraceFormatError(f"{where}: times out of range (|t| > {MAX_ABS_TIME_S:g} s)")
    if until is not None and until < since:
        raise TraceFormatError(f"{where}: 'until' ({until}) is before 'since' ({since})")
    if not 0.0 <= watts <= MAX_POWER_W:
        raise TraceFormatError(f"{where}: 'watts' must be in [0, {MAX_POWER_W:g}], got {watts}")
    texts = [item.get("reason", ""), item.get("basis", "")]
    if not all(isinstance(x, str) for x in texts):
        raise TraceFormatError(f"{where}: 'reason' and 'basis' must be text")
    in_samples = item.get("in_samples")
    if not isinstance(in_samples, bool):
        raise TraceFormatError(f"{where}: 'in_samples' must be true or false, got {in_samples!r}")
    return UnmeasuredSpan(
        device,
        since,
        watts,
        str(texts[0]),
        str(texts[1]),
        math.inf if until is None else until,
        in_samples,
    )


def unmeasured_spans(meta: dict[str, Any], where: str = "meta") -> list[UnmeasuredSpan]:
    """The spans a recording's meter could not measure (the meta's ``unmeasured`` field, see
    the module); ``[]`` for a recording measured throughout, or one that predates the field.
    A malformed field raises :class:`TraceFormatError` naming ``where``.

    Example:
        >>> unmeasured_spans({"format": FORMAT_V1_1})
        []
    """
    found = meta.get(META_KEY)
    if found is None:
        return []
    if not isinstance(found, list):
        raise TraceFormatError(f"{where}: field {META_KEY!r} must be a list, got {found!r}")
    return [_parse_span(item, f"{where}: {META_KEY}[{i}]") for i, item in enumerate(found)]


def _meter_stop(meta: dict[str, Any]) -> float | None:
    """The meta's ``meter_stop`` (trace clock) when it is a number; ``None`` for a killed run."""
    stop = meta.get("meter_stop")
    if isinstance(stop, (int, float)) and not isinstance(stop, bool):
        return float(stop)
    return None


def measurement_end(meta: dict[str, Any], span: tuple[float, float]) -> float:
    """Where a recording's measurement ended on the trace clock: its meter's stop, else (a
    killed run) its last sample, or the end of a span it closed, if later (samples reach the
    file 3 s late: a run killed early may have none)."""
    stop = _meter_stop(meta)
    if stop is not None:
        return stop
    closed = [s.until for s in unmeasured_spans(meta) if math.isfinite(s.until)]
    return max([span[1], *closed]) if closed else span[1]


def recorded_window(meta: dict[str, Any], span: tuple[float, float]) -> tuple[float, float]:
    """``(fit_start, fit_end)`` when recorded, else the meter's own window ``[0, meter_stop]``
    (what its ``total()`` covered), else (a killed run, another producer) the span of the
    samples, from an earlier unmeasured span's start (a late start) when it has one."""
    start, end = span
    stop = _meter_stop(meta)
    if stop is not None and stop >= 0:
        start, end = 0.0, stop
    else:
        spans = unmeasured_spans(meta)
        if spans:
            start = min(start, min(s.since for s in spans))
    return (float(meta.get("fit_start", start)), float(meta.get("fit_end", end)))


def unmeasured_of(
    meta: dict[str, Any], span: tuple[float, float], t0: float, t1: float
) -> dict[str, dict[str, float | str]]:
    """:meth:`Trace.unmeasured` for a recording's meta and sample span."""
    return summarise_unmeasured(unmeasured_spans(meta), t0, t1, measurement_end(meta, span))


def _partial(meta: dict[str, Any], samples_truncated: bool) -> tuple[bool, str | None]:
    """Whether a recording was cut off, and how that shows."""
    reasons = []
    if samples_truncated:
        reasons.append("the samples file stops mid-stream")
    if meta.get("format") == FORMAT_V1_1 and meta.get("complete") is not True:
        reasons.append("the recording was never closed (a killed run, or one still running)")
    return (bool(reasons), "; ".join(reasons) or None)


def feed_timeline(timeline: Any, readings: Iterable[Reading]) -> None:
    """Feed time-ordered readings to an :class:`EnergyTimeline` in half-second chunks, as the
    live meter does (so pending data stays small and the timeline sees what a meter would),
    then flush it.

    Example:
        >>> from lightning_watt.energy.timeline import EnergyTimeline
        >>> tl = EnergyTimeline()
        >>> feed_timeline(tl, [Reading(t, "gpu0", "instant_W", 100.0) for t in (0.0, 1.0, 2.0)])
        >>> tl.energy_between(0.0, 2.0)
        {'gpu0': 200.0}
    """
    chunk: list[Reading] = []
    chunk_end = -math.inf
    for r in readings:
        if r.t > chunk_end and chunk:
            timeline.add(chunk)
            chunk = []
        if not chunk:
            chunk_end = r.t + 0.5
        chunk.append(r)
    timeline.add(chunk)
    timeline.flush()


def _fmt(x: float) -> str:
    # repr is the shortest text that parses back to the same float: lossless round trips.
    return repr(float(x))


@dataclass
class Trace:
    """A recorded run: raw readings, step edges and metadata.

    ``fit_window`` is ``(meta["fit_start"], meta["fit_end"])`` when recorded, else a meter's
    own window ``(0, meta["meter_stop"])``, else the span of the samples (see
    :func:`recorded_window`). ``partial``: the recording was cut off (a killed run);
    ``partial_reason`` says how that shows.
    """

    samples: list[Reading]
    steps: list[StepEdge] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=lambda: {"format": FORMAT})
    partial: bool = False
    partial_reason: str | None = None

    @property
    def devices(self) -> list[str]:
        return sorted({r.device for r in self.samples})

    @property
    def kinds(self) -> list[str]:
        return sorted({r.kind for r in self.samples})

    @property
    def span(self) -> tuple[float, float]:
        if not self.samples:
            return (0.0, 0.0)
        return (self.samples[0].t, self.samples[-1].t)

    @property
    def fit_window(self) -> tuple[float, float]:
        return recorded_window(self.meta, self.span)

    @property
    def unmeasured_spans(self) -> list[UnmeasuredSpan]:
        """The spans the recording's meter could not measure (see the module)."""
        return unmeasured_spans(self.meta)

    def unmeasured(
        self, t0: float = -math.inf, t1: float = math.inf
    ) -> dict[str, dict[str, float | str]]:
        """Per device, the estimated joules and seconds of ``[t0, t1]`` the recording's meter
        could not measure, why, and what the estimate rests on: what its
        :meth:`~lightning_watt.energy.meter.EnergyMeter.unmeasured` said (``{}`` when every
        device was measured throughout)."""
        return unmeasured_of(self.meta, self.span, t0, t1)

    def select(self, kinds: Collection[str] | None = None) -> Iterator[Reading]:
        """The samples of the given kinds (all when ``None``)."""
        if kinds is None:
            return iter(self.samples)
        unknown = set(kinds) - KINDS
        if unknown:
            raise ValueError(f"kinds: unknown {sorted(unknown)}; accepted: {sorted(KINDS)}")
        wanted = frozenset(kinds)
        return (r for r in self.samples if r.kind in wanted)

    def timeline(
        self, kinds: Collection[str] | None = None, edges: bool = False, **timeline_kwargs: Any
    ):
        """Fuse the samples (optionally only ``kinds``) into an :class:`EnergyTimeline`, through
        the same code the live meter uses. ``edges=True`` also hands it the step edges, so
        buffer samples holding an edge are split by segment (``EnergyTimeline.add_edges``).
        Its energies hold the recording's estimates for spans no sample covers (a late start),
        as the meter's did (:class:`~lightning_watt.energy.unmeasured.RecordedTimeline`)."""
        timeline = RecordedTimeline(self.unmeasured_spans, **timeline_kwargs)
        if edges:
            from lightning_watt.energy.segment_fit import edges_from_steps

            timeline.add_edges(edges_from_steps(self.steps), until=math.inf)
        feed_timeline(timeline, self.select(kinds))
        return timeline

    def counter_energy(self, device: str, t0: float, t1: float) -> float:
        """The hardware's own integral over ``[t0, t1]``: the counter interpolated linearly
        between its readings at both ends, resets skipped (never negative)."""
        ts, acc = [], []
        total, prev = 0.0, None
        for r in self.samples:
            if r.device != device or r.kind != COUNTER_J:
                continue
            if prev is not None and r.value >= prev:
                total += r.value - prev
            prev = r.value
            ts.append(r.t)
            acc.append(total)
        if not ts:
            raise ValueError(f"device: {device!r} has no {COUNTER_J} readings in this trace")
        return _interp(ts, acc, t1) - _interp(ts, acc, t0)

    def save(self, prefix: str | os.PathLike[str]) -> str:
        """Write the three files (steps in the lossless v1 layout); returns the prefix."""
        with TraceWriter(prefix, steps_layout="v1") as writer:
            writer.write_samples(self.samples)
            writer.write_steps(self.steps)
            writer.meta.update(self.meta)
        return str(prefix)


def load_trace(prefix: str | os.PathLike[str]) -> Trace:
    """Read a watt-trace v1 (or v1.1) recording from its prefix (or the path of one of its
    files). Every value is checked here: a bad file raises :class:`TraceFormatError` naming
    the file, the line and the field. A recording cut off by a crash loads up to its last
    complete row, with :attr:`Trace.partial` set."""
    from lightning_watt.energy.trace_columns import StepReader, load_columns

    cols = load_columns(prefix)
    assert isinstance(cols.steps_source, StepReader)
    steps = [e for chunk in cols.steps_source for e in chunk.edges()]
    partial, reason = cols.partial, cols.partial_reason
    if cols.steps_source.truncated:
        partial = True
        reason = "; ".join(filter(None, [reason, "the steps file stops mid-stream"]))
    return Trace(cols.samples, steps, cols.meta, partial, reason)


class TraceWriter:
    """Streams a watt-trace recording to disk, so a crash leaves a readable file.

    Samples must be written in time order. ``flush()`` makes everything written so far
    readable, and the writer flushes by itself at least every ``flush_every_s`` seconds of
    writes, so a killed run loses at most that much; ``close()`` writes the final metadata
    (with ``"complete": true``). The metadata file is replaced atomically.

    ``steps_layout``: ``"compact"`` (the default; ``watt-trace v1.1``: deltas in units of
    10 us) or ``"v1"`` (every float in full, lossless: 40-80 MB an hour at 1.7 ms steps).
    Thread-safe: the meter's thread and the training thread may write.

    ``merge_steps_s`` (compact layout only): consecutive steps of one phase that start within
    this many seconds of the first are written as one span, from the first start to the last
    end (the end's ``index`` keeps the count); slower steps keep every edge. The default 4 ms
    keeps a recording near 4-5 MB an hour however short the steps (1 ms or 1.7 ms: 12-19 MB
    unmerged); ``0`` keeps every edge.

    Example:
        >>> import tempfile
        >>> prefix = tempfile.mkdtemp() + "/run"
        >>> with TraceWriter(prefix) as w:
        ...     w.write_steps([StepEdge("train", "start", 0, 0.5, 0.504)])
        >>> load_trace(prefix).steps[0].t_gpu, load_trace(prefix).partial
        (0.504, False)
    """

    def __init__(
        self,
        prefix: str | os.PathLike[str],
        steps_layout: str = "compact",
        compresslevel: int = 6,
        flush_every_s: float = 2.0,
        merge_steps_s: float = 0.004,
    ) -> None:
        if steps_layout not in ("compact", "v1"):
            raise ValueError(f"steps_layout: must be 'compact' or 'v1', got {steps_layout!r}")
        if isinstance(compresslevel, bool) or compresslevel not in range(10):
            raise ValueError(f"compresslevel: must be an int 0..9, got {compresslevel!r}")
        if isinstance(flush_every_s, bool) or not (
            isinstance(flush_every_s, (int, float)) and 0 < flush_every_s < math.inf
        ):
            raise ValueError(f"flush_every_s: must be a positive number, got {flush_every_s!r}")
        if isinstance(merge_steps_s, bool) or not (
            isinstance(merge_steps_s, (int, float)) and 0 <= merge_steps_s < math.inf
        ):
            raise ValueError(f"merge_steps_s: must be a number >= 0, got {merge_steps_s!r}")
        samples_path, steps_path, self._meta_path = _paths(prefix)
        samples_path.parent.mkdir(parents=True, exist_ok=True)
        self.prefix = str(prefix)
        self._compact = steps_layout == "compact"
        self.meta: dict[str, Any] = {"format": FORMAT_V1_1 if self._compact else FORMAT}
        self._level = compresslevel
        self._flush_every = float(flush_every_s)
        self._lock = threading.Lock()
        self._samples = self._open(samples_path, SAMPLES_HEADER)
        self._steps = self._open(
            steps_path, COMPACT_STEPS_HEADER if self._compact else STEPS_HEADER
        )
        self._closed = False
        self._last_flush = time.monotonic()
        # The compact layout's previous row: phase, index and times in 10 us units.
        self._prev: tuple[str | None, int, int, int] = (None, 0, 0, 0)
        #: Step edges not written: a time that is not finite or beyond ``MAX_ABS_TIME_S``.
        self.dropped_steps = 0
        self._merge_s = float(merge_steps_s) if self._compact else 0.0
        # A run of consecutive steps of one phase being merged: its first start, its latest
        # end, and a start after that end not yet known to belong to the run.
        self._run: list[StepRow | None] = [None, None, None]
        self._origin = 0.0  # subtracted from step times (write_steps)
        # Step lines not yet compressed, and their length: zlib releases the GIL, so each
        # compress call costs the books' refresher a handover of it back from the training
        # thread (~60 µs of CPU on a 2-core VM); lines are compressed at each flush instead.
        self._steps_text: list[str] = []
        self._steps_held = 0

    def _open(self, path: Path, header: tuple[str, ...]) -> gzip.GzipFile:
        fh = gzip.GzipFile(path, "wb", compresslevel=self._level, mtime=0)
        fh.write((",".join(header) + "\n").encode())
        return fh

    def write_samples(self, readings: Iterable[Reading]) -> None:
        lines = [f"{_fmt(r.t)},{r.device},{r.kind},{_fmt(r.value)}\n" for r in readings]
        with self._lock:
            self._samples.write("".join(lines).encode())
        self._maybe_flush()

    def write_steps(self, edges: Iterable[StepRow], origin: float = 0.0) -> None:
        """Append step edges: :class:`StepEdge` objects, or plain tuples in its field order.
        ``origin``: subtracted from their times (a meter's start; the same at every call)."""
        with self._lock:
            self._origin = origin
            if self._compact:
                text = self._compact_lines(self._merged(edges) if self._merge_s else edges)
            else:
                text = self._v1_lines(edges, origin)
            self._steps_text.append(text)
            self._steps_held += len(text)
            if self._steps_held >= _STEPS_HELD_MAX:
                self._write_steps_text()
        self._maybe_flush()

    def _write_steps_text(self) -> None:
        """Compress the step lines held so far (deflate's output is the same however its
        input is cut, so holding them changes no byte of the file)."""
        if self._steps_text:
            text, self._steps_text, self._steps_held = "".join(self._steps_text), [], 0
            self._steps.write(text.encode())

    def _merged(self, edges: Iterable[StepRow]) -> list[StepRow]:
        """The edges to write once fast steps are merged (see ``merge_steps_s``)."""
        out: list[StepRow] = []
        first, end, pending = self._run
        origin, merge_s = self._origin, self._merge_s
        # Fields by position, not name: a plain tuple has none, and it is ~2x faster.
        for e in edges:
            phase = e[0]
            if e[1] == "start":
                if (
                    first is not None
                    and end is not None
                    and pending is None
                    and phase == first[0]
                    and (e[3] - origin) - (first[3] - origin) < merge_s
                ):
                    pending = e
                    continue
                if first is not None:
                    out.append(first)
                    if end is not None:
                        out.append(end)
                    if pending is not None:
                        out.append(pending)
                first, end, pending = e, None, None
            elif pending is not None and phase == pending[0]:
                end, pending = e, None
            elif first is not None and end is None and pending is None and phase == first[0]:
                end = e
            else:
                out.extend(x for x in (first, end, pending) if x is not None)
                first, end, pending = None, None, None
                out.append(e)
        self._run = [first, end, pending]
        return out

    def _release_run(self) -> None:
        """Write the run of steps being merged (before a flush or the close)."""
        held = [x for x in self._run if x is not None]
        self._run = [None, None, None]
        if held:
            self._steps_text.append(self._compact_lines(held))
        self._write_steps_text()

    @staticmethod
    def _v1_lines(edges: Iterable[StepRow], origin: float) -> str:
        return "".join(
            f"{phase},{edge},{index},{_fmt(t_host - origin)},"
            f"{'' if t_gpu is None else _fmt(t_gpu - origin)}\n"
            for phase, edge, index, t_host, t_gpu in edges
        )

    def _compact_lines(self, edges: Iterable[StepRow]) -> str:
        phase, index, host, gpu = self._prev
        scale, origin = COMPACT_PER_S, self._origin
        lines = []
        for p, edge, i, t_host, t_gpu in edges:
            t_host -= origin
            if t_gpu is not None:
                t_gpu -= origin
            # Not finite (abs(NaN) <= x is false too) or beyond the format's range: dropped.
            if not (
                abs(t_host) <= MAX_ABS_TIME_S and (t_gpu is None or abs(t_gpu) <= MAX_ABS_TIME_S)
            ):
                self.dropped_steps += 1
                continue
            h = round(t_host * scale)
            if t_gpu is None:
                letter, g = edge[0].upper(), gpu
            else:
                letter, g = edge[0], round(t_gpu * scale)
            lines.append(f"{'' if p == phase else p},{letter},{i - index},{h - host},{g - gpu}\n")
            phase, index, host, gpu = p, i, h, g
        self._prev = (phase, index, host, gpu)
        return "".join(lines)

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        """Make everything written so far readable (the gzip streams and the metadata)."""
        with self._lock:
            if self._closed:
                return
            self._last_flush = time.monotonic()
            self._release_run()
            self._samples.flush()
            self._steps.flush()
            self._write_meta()

    def _write_meta(self) -> None:
        # A copy first (one C-level step under the GIL): another thread may add a fact
        # (set_trace_meta) while this one serialises.
        meta = dict(self.meta)
        # Rewritten at every flush (every 2 s): atomic, not fsynced.
        atomic_write_text(
            self._meta_path, json.dumps(meta, indent=1, sort_keys=False) + "\n", durable=False
        )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._release_run()
            self._samples.close()
            self._steps.close()
            if self._compact:
                self.meta["complete"] = True
            self._write_meta()

    def abandon(self) -> None:
        """Stop writing after a failure (a full disk): close what can be closed, never raise,
        and leave no temporary file behind. What was flushed before stays readable."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fh in (self._samples, self._steps):
                with contextlib.suppress(Exception):
                    fh.close()
            with contextlib.suppress(OSError):
                for tmp in self._meta_path.parent.glob(f"{self._meta_path.name}.*.tmp"):
                    tmp.unlink(missing_ok=True)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
