"""Finding runs on disk: which directories are runs, and which of their files describe the fit.

A run directory is what the callback writes into the Lightning logger's ``log_dir``: TensorBoard
event files and/or a CSVLogger ``metrics.csv``, the fit's summary and a watt-trace v1 recording.
Any one of them is enough. File names come from :mod:`lightning_watt.schema`: ``watt_summary.json``
and ``watt_trace[.rankN]`` for the fit, ``watt_summary_<stage>.json`` and ``watt_trace_<stage>``
for other stages (never read as the fit), and a ``.<tag>`` after the stem for a callback with a
non-default logging prefix (``watt_summary.gpu.json``). A path given on the command line may be a
run directory, a log root above several of them (searched recursively), or one file of a run or
of a watt-trace recording.

Example:
    >>> parse_summary_name("watt_summary_test.gpu.json")
    FileName(stage='test', tag='gpu', rank=None)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from lightning_watt.energy.trace import trace_prefix
from lightning_watt.report.errors import ReportError, RunNotFoundError
from lightning_watt.schema import STAGES, SUMMARY_STEM, TRACE_STEM, summary_file

METRICS_NAME = "metrics.csv"
EVENTS_PREFIX = "events.out.tfevents."
#: The fit's summary of the default prefix.
SUMMARY_NAME = summary_file("fit")
_TRACE_FILES = (".meta.json", ".samples.csv.gz", ".steps.csv.gz")

#: What a run directory is recognised by; quoted in errors so a user knows what was looked for.
LOOKED_FOR = (
    f"TensorBoard event files ({EVENTS_PREFIX}*), a CSVLogger {METRICS_NAME}, "
    f"{SUMMARY_NAME} or a watt-trace recording ({TRACE_STEM}.meta.json)"
)


class FileName(NamedTuple):
    """What a summary or trace file name says: its stage, prefix tag (``""`` for the default
    prefix) and rank (``None`` for a single-process trace and for summaries)."""

    stage: str
    tag: str
    rank: int | None


class RunLocation(NamedTuple):
    """Where one run lives: its directory, the event files that belong to it (including those in
    event-only subdirectories), its fit summary and the prefix of its fit trace, if any.
    ``tag``: the prefix tag of the summary and trace read; ``other_tags``: tags of other
    callbacks' fit files in the same directory (not read)."""

    path: Path
    event_files: tuple[Path, ...]
    metrics_csv: Path | None
    summary: Path | None
    trace: str | None
    tag: str = ""
    other_tags: tuple[str, ...] = ()


_STAGE = "|".join(re.escape(s) for s in STAGES if s != "fit")
# The characters schema.prefix_tag keeps. A tag never reads as a rank: ``.rank1`` is rank 1.
_TAG = r"(?!rank\d+\.)[A-Za-z0-9_-]+"
_SUMMARY_RE = re.compile(
    rf"^{re.escape(SUMMARY_STEM)}(?:_(?P<stage>{_STAGE}))?(?:\.(?P<tag>{_TAG}))?\.json$"
)
_TRACE_META_RE = re.compile(
    rf"^{re.escape(TRACE_STEM)}(?:_(?P<stage>{_STAGE}))?(?:\.(?P<tag>{_TAG}))?"
    r"(?:\.rank(?P<rank>\d+))?\.meta\.json$"
)


def _file_name(match: re.Match[str] | None) -> FileName | None:
    if match is None:
        return None
    rank = match.groupdict().get("rank")
    return FileName(
        match["stage"] or "fit", match["tag"] or "", None if rank is None else int(rank)
    )


def parse_summary_name(name: str) -> FileName | None:
    """Stage and tag of a summary file name written by the callback, else ``None``."""
    return _file_name(_SUMMARY_RE.match(name))


def parse_trace_name(prefix: str) -> FileName | None:
    """Stage, tag and rank of a watt-trace prefix's name written by the callback, else
    ``None`` (a recording named otherwise: a standalone one)."""
    return _file_name(_TRACE_META_RE.match(Path(prefix).name + ".meta.json"))


def is_run_trace(prefix: str) -> bool:
    """Whether a watt-trace prefix is a fit's recording in a run directory."""
    found = parse_trace_name(prefix)
    return found is not None and found.stage == "fit"


def standalone(loc: RunLocation) -> bool:
    """A recording given on its own (not a run directory's fit trace): named after it."""
    return loc.trace is not None and not is_run_trace(loc.trace)


def _natural_key(text: str) -> list[Any]:
    # version_10 sorts after version_9, as people number runs.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _markers(
    directory: Path, names: Iterable[str], prefer_tag: str | None = None
) -> dict[str, Any]:
    names = set(names)
    events = sorted(
        (directory / n for n in names if n.startswith(EVENTS_PREFIX)), key=lambda p: p.name
    )
    summaries: dict[str, str] = {}
    traces: dict[str, list[tuple[int, str]]] = {}
    other_stages: list[str] = []
    for n in sorted(names):
        found = parse_summary_name(n)
        if found is not None:
            if found.stage == "fit":
                summaries[found.tag] = n
            else:
                other_stages.append(n)
            continue
        if not n.endswith(".meta.json"):
            continue
        found = parse_trace_name(n[: -len(".meta.json")])
        if found is not None:
            if found.stage == "fit":
                rank = -1 if found.rank is None else found.rank
                traces.setdefault(found.tag, []).append((rank, n[: -len(".meta.json")]))
            else:
                other_stages.append(n)
    tags = set(summaries) | set(traces)
    # One callback's files per run: the asked-for tag, else the default prefix's, else the
    # first in name order. Another callback's files would mix two sets of measurements.
    if prefer_tag is not None and prefer_tag in tags:
        tag = prefer_tag
    else:
        tag = "" if "" in tags or not tags else min(tags)
    # The rank-less trace, else the lowest rank's.
    trace = min(traces[tag])[1] if tag in traces else None
    return {
        "events": events,
        "csv": directory / METRICS_NAME if METRICS_NAME in names else None,
        "summary": directory / summaries[tag] if tag in summaries else None,
        "trace": str(directory / trace) if trace is not None else None,
        "tag": tag,
        "other_tags": tuple(sorted(tags - {tag})),
        "other_stages": other_stages,
    }


def _location(directory: Path, marks: dict[str, Any]) -> RunLocation:
    return RunLocation(
        directory,
        tuple(marks["events"]),
        marks["csv"],
        marks["summary"],
        marks["trace"],
        marks["tag"],
        marks["other_tags"],
    )


def _is_run(marks: dict[str, Any]) -> bool:
    return bool(marks["events"] or marks["csv"] or marks["summary"] or marks["trace"])


def _location_for_dir(directory: Path, prefer_tag: str | None = None) -> RunLocation:
    return _location(directory, _markers(directory, os.listdir(directory), prefer_tag))


def _location_for_file(path: Path) -> RunLocation:
    name = path.name
    if name.endswith(_TRACE_FILES):
        prefix = trace_prefix(path)
        found = parse_trace_name(prefix)
        if found is not None and found.stage == "fit":
            # One file of a run's own trace: report the whole run directory.
            return _location_for_dir(path.parent, prefer_tag=found.tag)
        return RunLocation(path.parent, (), None, None, prefix)
    found = parse_summary_name(name)
    if found is not None:
        loc = _location_for_dir(path.parent, prefer_tag=found.tag)
        if found.stage != "fit" and not (loc.event_files or loc.metrics_csv or loc.summary):
            raise ReportError(
                f"{path}: the summary of a {found.stage} stage; the report covers a fit "
                f"({summary_file('fit')}), and this directory holds none"
            )
        return loc
    if name.startswith(EVENTS_PREFIX) or name == METRICS_NAME:
        return _location_for_dir(path.parent)
    raise ReportError(f"{path}: not a run file; a RUN is a directory or one of {LOOKED_FOR}")


def find_runs(paths: Iterable[str | os.PathLike[str]]) -> list[RunLocation]:
    """Run locations under the given paths, in path order then natural order of directories.

    A directory holding run files is a run; a subdirectory of a run that holds only event files
    (TensorBoard writes hparams and some plugins that way) belongs to that run. Hidden
    directories are skipped. Summaries and traces of other stages (validate, test, predict,
    tune) do not make a run: the report is about fits.

    Raises:
        RunNotFoundError: a path does not exist.
        ReportError: a path holds no runs at all (the message says what was looked for).
    """
    found: list[RunLocation] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise RunNotFoundError(
                f"{path}: no such file or directory; a RUN is a run directory (holding "
                f"{LOOKED_FOR}) or a log root above such directories"
            )
        if path.is_file():
            loc = _location_for_file(path)
            trace = loc.trace if standalone(loc) else None
            key = Path(trace).resolve() if trace is not None else loc.path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(loc)
            continue
        before = len(found)
        runs_here: dict[Path, dict[str, Any]] = {}
        other_stages: list[str] = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=_natural_key)
            here = Path(dirpath)
            marks = _markers(here, filenames)
            other_stages.extend(marks["other_stages"])
            if not _is_run(marks):
                continue
            only_events = not (marks["csv"] or marks["summary"] or marks["trace"])
            parent = next((p for p in here.parents if p in runs_here), None)
            if only_events and parent is not None:
                runs_here[parent]["events"].extend(marks["events"])
                continue
            runs_here[here] = marks
        for directory, marks in runs_here.items():
            if directory.resolve() in seen:
                continue
            seen.add(directory.resolve())
            found.append(_location(directory, marks))
        if len(found) == before and not runs_here:
            hint = ""
            if other_stages:
                shown = ", ".join(sorted(set(other_stages))[:3])
                hint = f" Found only files of other stages ({shown}); the report covers fits."
            raise ReportError(
                f"{path}: no runs found; looked (recursively) for {LOOKED_FOR}. Point at a "
                f"Lightning log_dir such as lightning_logs/version_0, or a folder above it.{hint}"
            )
    return found


#: Told how many bytes were read, for progress bars.
Advance = Callable[[int], None]


def file_size(path: Path | str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def trace_data_files(prefix: str) -> list[str]:
    """The files of a recording that a read goes through (the meta file is negligible)."""
    return [prefix + s for s in (".samples.csv.gz", ".steps.csv.gz")]


def location_bytes(loc: RunLocation) -> int:
    """Bytes a read of this run goes through (for progress bars)."""
    files: list[Path | str] = [*loc.event_files]
    if loc.metrics_csv:
        files.append(loc.metrics_csv)
    if loc.trace:
        files.extend(trace_data_files(loc.trace))
    return sum(file_size(f) for f in files)
