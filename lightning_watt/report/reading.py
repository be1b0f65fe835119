"""Reading found runs into :class:`RunData`: each reader's part, the logging prefix, the name.

Example:
    >>> import json, pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as root:
    ...     run = pathlib.Path(root) / "lightning_logs" / "version_0"
    ...     run.mkdir(parents=True)
    ...     _ = (run / "watt_summary.json").write_text(json.dumps({"energy_kWh": 0.5}))
    ...     print([(r.name, r.energy_kWh) for r in read_runs([root])])
    [('version_0', 0.5)]
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from lightning_watt.energy.trace_columns import TraceColumns, load_columns
from lightning_watt.report.discovery import (
    LOOKED_FOR,
    Advance,
    RunLocation,
    file_size,
    find_runs,
    standalone,
    trace_data_files,
)
from lightning_watt.report.errors import ReportError
from lightning_watt.report.events import read_events
from lightning_watt.report.keys import resolve_prefix
from lightning_watt.report.metrics_csv import read_metrics_csv
from lightning_watt.report.rundata import RunData
from lightning_watt.report.series import ScalarSeries
from lightning_watt.report.summary_json import peek_run_name, read_summary


def _load_fit_trace(prefix: str, warnings: list[str], lazy: bool) -> TraceColumns | None:
    try:
        trace = load_columns(prefix, lazy=lazy)
    except (OSError, ValueError) as err:
        warnings.append(f"{prefix}: trace not read ({err})")
        return None
    stage = trace.meta.get("stage", "fit")
    if stage != "fit":
        # A Tuner's lr_find/scale_batch_size records under the fit's name, then is rolled back.
        warnings.append(f"{prefix}: recorded by the {stage} stage, not a fit; not used")
        return None
    partial, reason = trace.partial_status(load=not lazy)
    if partial:
        warnings.append(f"{prefix}: partial trace ({reason})")
    return trace


def read_run(
    loc: RunLocation,
    name: str | None = None,
    monitor: str | None = None,
    advance: Advance | None = None,
) -> RunData:
    """Read one run location. ``advance`` is told how many bytes were read, for progress."""
    warnings: list[str] = []
    files: dict[str, list[str]] = {}
    scalars: dict[str, ScalarSeries] = {}
    if loc.event_files:
        scalars, event_warnings = read_events(loc.event_files, advance)
        warnings.extend(event_warnings)
        files["tensorboard"] = [str(p) for p in loc.event_files]
    if loc.metrics_csv is not None:
        csv_scalars = read_metrics_csv(loc.metrics_csv)
        # CSV rows know their epoch; where both loggers wrote a key the CSV's copy is kept.
        scalars.update(csv_scalars)
        files["csv"] = [str(loc.metrics_csv)]
        if advance:
            advance(file_size(loc.metrics_csv))
    summary = None
    if loc.summary is not None:
        try:
            summary = read_summary(loc.summary, warnings)
        except ReportError as err:
            if not (scalars or loc.trace):
                raise  # nothing else to report this run from: a clear error, exit status 2
            warnings.append(f"{err}; summary skipped, the run is reported from its other files")
        files["summary"] = [str(loc.summary)]
    trace = None
    if loc.trace is not None:
        # With a summary the table needs nothing from the samples: parse them only if a plot
        # (or a number the summary lacks) asks.
        trace = _load_fit_trace(loc.trace, warnings, lazy=summary is not None)
        if trace is not None:
            files["trace"] = [loc.trace]
        if advance:
            advance(sum(file_size(f) for f in trace_data_files(loc.trace)))
    if loc.other_tags:
        read = f"those tagged {loc.tag!r}" if loc.tag else "the untagged ones (default prefix)"
        warnings.append(
            f"{loc.path}: holds the fit files of several callbacks (other prefix tags: "
            f"{', '.join(loc.other_tags)}); reported: {read}"
        )
    run_name = name or (summary or {}).get("run_name") or loc.path.name
    if standalone(loc):
        run_name = name or Path(loc.trace or "").name
    return RunData(
        name=str(run_name),
        path=loc.path,
        scalars=scalars,
        summary=summary,
        trace=trace,
        files=files,
        warnings=warnings,
        monitor_override=monitor,
        prefix=resolve_prefix((summary or {}).get("prefix"), scalars, loc.tag),
    )


def _names(locations: Sequence[RunLocation], summaries: Sequence[str | None]) -> list[str]:
    """Short unique names: the summary's run name (with the directory added where several runs
    share it, as every version of one Lightning logger does), else the directory relative to
    the deepest folder all runs share."""
    dirs = [loc.path.resolve() for loc in locations]
    common = Path(os.path.commonpath(dirs)) if len(dirs) > 1 else dirs[0].parent
    rels: list[str] = []
    for loc, d in zip(locations, dirs, strict=True):
        if standalone(loc):
            rels.append(Path(loc.trace or "").name)
        else:
            rel_path = d.relative_to(common) if d != common else Path(d.name)
            rels.append(rel_path.as_posix() if str(rel_path) != "." else d.name)
    given_counts = Counter(g for g in summaries if g)
    names: list[str] = []
    for rel, given in zip(rels, summaries, strict=True):
        base = (given if given_counts[given] == 1 else f"{given} ({rel})") if given else rel
        name, n = base, 2
        while name in names:
            name, n = f"{base} #{n}", n + 1
        names.append(name)
    return names


def read_runs(
    paths: Iterable[str | os.PathLike[str]],
    monitor: str | None = None,
    advance: Advance | None = None,
    locations: Sequence[RunLocation] | None = None,
) -> list[RunData]:
    """Find and read every run under ``paths`` (see :func:`find_runs`)."""
    locs = list(locations) if locations is not None else find_runs(paths)
    if not locs:
        raise ReportError(f"no runs found; looked for {LOOKED_FOR}")
    names = _names(locs, [peek_run_name(loc.summary) for loc in locs])
    return [read_run(loc, name, monitor, advance) for loc, name in zip(locs, names, strict=True)]
