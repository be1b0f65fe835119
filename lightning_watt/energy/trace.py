"""Reading and writing watt-trace v1: the format lightning-watt records, replays and shares.

Three files share a prefix: ``PREFIX.samples.csv.gz`` (``t,device,kind,value``, sorted by
``t``), ``PREFIX.steps.csv.gz`` (``phase,edge,index,t_host,t_gpu``) and ``PREFIX.meta.json``
(``"format": "watt-trace v1"`` plus free-form facts about the run).

Example:
    >>> from lightning_watt.energy.trace import bundled_trace, load_trace
    >>> trace = load_trace(bundled_trace("h200-mlp-stall"))
    >>> round(sum(trace.timeline().energy_between(*trace.fit_window).values()))
    8362
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import math
import os
import re
import zlib
from collections.abc import Callable, Collection, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from lightning_watt.energy.readings import COUNTER_J, KINDS, Reading
from lightning_watt.energy.timeline import _interp
from lightning_watt.schema import TRACE_FORMAT

FORMAT = TRACE_FORMAT
SAMPLES_HEADER = ("t", "device", "kind", "value")
STEPS_HEADER = ("phase", "edge", "index", "t_host", "t_gpu")
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


def _open_text(path: Path) -> contextlib.closing[Generator[str, None, None]]:
    if not path.exists():
        raise FileNotFoundError(f"watt-trace file missing: {path}")
    return contextlib.closing(_lines(path))


def _lines(path: Path) -> Generator[str, None, None]:
    """The text lines of a gzip file. A stream that stops short (a recording still being
    written, or cut by a crash) ends at its last complete line instead of failing: that is
    what :meth:`TraceWriter.flush` promises."""
    lineno = 0
    with io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="") as fh:
        try:
            for line in fh:
                lineno += 1
                yield line
        except EOFError:
            return
        except (OSError, zlib.error, UnicodeDecodeError) as err:
            raise TraceFormatError(
                f"{path}:{lineno + 1}: not a readable gzip text file ({err})"
            ) from None


def _read_csv(
    path: Path, header: tuple[str, ...], parse: Callable[[str, list[str]], _Row]
) -> list[_Row]:
    """Every data row of one of the trace's CSV files, parsed by ``parse(where, row)`` (``where``
    is ``path:line``, for errors), after checking the header and each row's column count."""
    parsed: list[_Row] = []
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        got = next(reader, None)
        if got is None or tuple(c.strip() for c in got) != header:
            raise TraceFormatError(f"{path}:1: header must be {','.join(header)!r}, got {got!r}")
        for lineno, row in enumerate(reader, start=2):
            where = f"{path}:{lineno}"
            if len(row) != len(header):
                raise TraceFormatError(
                    f"{where}: expected {len(header)} columns {','.join(header)}, got {row}"
                )
            parsed.append(parse(where, row))
    return parsed


def _read_samples(path: Path) -> list[Reading]:
    last_t = -math.inf

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
        if t < last_t:
            raise TraceFormatError(f"{where}: rows are not sorted by t ({t} after {last_t})")
        last_t = t
        return Reading(t, device, kind, value)

    return _read_csv(path, SAMPLES_HEADER, parse)


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
    return StepEdge(phase, edge, index, t_host, t_gpu)


def _read_steps(path: Path) -> list[StepEdge]:
    return _read_csv(path, STEPS_HEADER, _parse_step)


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
    if not path.exists():
        raise FileNotFoundError(f"watt-trace file missing: {path}")
    meta = read_json_object(path, TraceFormatError)
    if meta.get("format") != FORMAT:
        raise TraceFormatError(f"{path}:1: format must be {FORMAT!r}, got {meta.get('format')!r}")
    return meta


def _fmt(x: float) -> str:
    # repr is the shortest text that parses back to the same float: lossless round trips.
    return repr(float(x))


@dataclass
class Trace:
    """A recorded run: raw readings, step edges and metadata.

    ``fit_window`` is ``(meta["fit_start"], meta["fit_end"])`` when recorded, else the span of
    the samples.
    """

    samples: list[Reading]
    steps: list[StepEdge] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=lambda: {"format": FORMAT})

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
        start, end = self.span
        return (float(self.meta.get("fit_start", start)), float(self.meta.get("fit_end", end)))

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
        buffer samples holding an edge are split by segment (``EnergyTimeline.add_edges``)."""
        from lightning_watt.energy.timeline import EnergyTimeline

        timeline = EnergyTimeline(**timeline_kwargs)
        if edges:
            from lightning_watt.energy.segment_fit import edges_from_steps

            timeline.add_edges(edges_from_steps(self.steps), until=math.inf)
        # Fed in half-second chunks, as the live meter feeds it, so pending data stays small.
        chunk: list[Reading] = []
        chunk_end = -math.inf
        for r in self.select(kinds):
            if r.t > chunk_end and chunk:
                timeline.add(chunk)
                chunk = []
            if not chunk:
                chunk_end = r.t + 0.5
            chunk.append(r)
        timeline.add(chunk)
        timeline.flush()
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
        """Write the three files; returns the prefix."""
        with TraceWriter(prefix) as writer:
            writer.write_samples(self.samples)
            writer.write_steps(self.steps)
            writer.meta.update(self.meta)
        return str(prefix)


def load_trace(prefix: str | os.PathLike[str]) -> Trace:
    """Read a watt-trace v1 recording from its prefix (or the path of one of its files)."""
    samples_path, steps_path, meta_path = _paths(trace_prefix(prefix))
    meta = _read_meta(meta_path)
    return Trace(_read_samples(samples_path), _read_steps(steps_path), meta)


class TraceWriter:
    """Streams a watt-trace v1 recording to disk, so a crash leaves a readable file.

    Samples must be written in time order. ``flush()`` makes everything written so far
    readable; ``close()`` writes the metadata.
    """

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        samples_path, steps_path, self._meta_path = _paths(prefix)
        samples_path.parent.mkdir(parents=True, exist_ok=True)
        self.prefix = str(prefix)
        self.meta: dict[str, Any] = {"format": FORMAT}
        self._samples = self._open(samples_path, SAMPLES_HEADER)
        self._steps = self._open(steps_path, STEPS_HEADER)
        self._closed = False

    @staticmethod
    def _open(path: Path, header: tuple[str, ...]) -> gzip.GzipFile:
        fh = gzip.GzipFile(path, "wb", mtime=0)
        fh.write((",".join(header) + "\n").encode())
        return fh

    def write_samples(self, readings: Iterable[Reading]) -> None:
        lines = [f"{_fmt(r.t)},{r.device},{r.kind},{_fmt(r.value)}\n" for r in readings]
        self._samples.write("".join(lines).encode())

    def write_steps(self, edges: Iterable[StepEdge]) -> None:
        lines = [
            f"{e.phase},{e.edge},{e.index},{_fmt(e.t_host)},"
            f"{'' if e.t_gpu is None else _fmt(e.t_gpu)}\n"
            for e in edges
        ]
        self._steps.write("".join(lines).encode())

    def flush(self) -> None:
        self._samples.flush()
        self._steps.flush()
        self._write_meta()

    def _write_meta(self) -> None:
        tmp = self._meta_path.with_suffix(".json.tmp")
        try:
            tmp.write_text(
                json.dumps(self.meta, indent=1, sort_keys=False) + "\n", encoding="utf-8"
            )
            os.replace(tmp, self._meta_path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._samples.close()
        self._steps.close()
        self._write_meta()

    def abandon(self) -> None:
        """Stop writing after a failure (a full disk): close what can be closed, never raise,
        and leave no temporary file behind. What was flushed before stays readable."""
        if self._closed:
            return
        self._closed = True
        for fh in (self._samples, self._steps):
            with contextlib.suppress(Exception):
                fh.close()
        with contextlib.suppress(OSError):
            self._meta_path.with_suffix(".json.tmp").unlink(missing_ok=True)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
