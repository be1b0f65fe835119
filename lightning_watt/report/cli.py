"""The ``lightning-watt`` command: ``lightning-watt report RUN [RUN ...] -o OUTDIR``, and
``lightning-watt doctor`` (see :mod:`lightning_watt.doctor`).

Reads run directories written by the callback (or any Lightning log_dir with its metrics),
prints a table of the runs, writes ``report.json`` and, with matplotlib installed, one folder of
PNG plots per run plus ``pareto.png`` comparing the runs.

Exit status: 0 on success, 2 when a path is missing or holds no runs (or a run file is
malformed), 1 when matplotlib is missing for the plots.

Example:
    >>> main(["report", "/no/such/dir", "-o", "/tmp/unused"])  # doctest: +SKIP
    2
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from lightning_watt.report.discovery import SUMMARY_NAME, find_runs, location_bytes
from lightning_watt.report.errors import ReportError
from lightning_watt.report.progress import progress_bar, rich_available
from lightning_watt.report.reading import read_runs
from lightning_watt.report.rundata import RunData
from lightning_watt.report.trace_energy import ENGINE_NOTES
from lightning_watt.schema import SUMMARY_STEM, TRACE_STEM, summary_file

REPORT_FORMAT = "lightning-watt report v1"
#: Reading this many event files, or this many bytes, earns a progress bar.
PROGRESS_MIN_FILES = 8
PROGRESS_MIN_BYTES = 16 * 1024 * 1024
#: Drawing this many runs' plots earns a progress bar too (about a second per run).
PROGRESS_MIN_RUNS_DRAWN = 4

TABLE_COLUMNS = (
    "run",
    "duration",
    "kWh",
    "mean W",
    "peak W",
    "outside steps",
    "best acc",
    "final GQI",
    "method",
    "replay",
)
#: After the run's name in the table when an exception ended its fit.
INTERRUPTED_MARK = " (interrupted)"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lightning-watt")
    except Exception:
        return "unknown"


# --------------------------------------------------------------------------- formatting
def fmt_duration(seconds: float | None) -> str:
    """``45.9 s``, ``12m 05s``, ``3h 04m``; ``-`` when unknown.

    Example:
        >>> fmt_duration(725)
        '12m 05s'
    """
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 120:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    r"""``text`` safe for a terminal: control characters (escape sequences from a run name
    or a file) are shown escaped, never sent.

    Example:
        >>> printable("run\x1b[2J\tname")
        'run\\x1b[2J\\x09name'
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(runs: Sequence[RunData]) -> list[list[str]]:
    """The table as text cells, one row per run, in :data:`TABLE_COLUMNS` order."""
    rows = []
    for run in runs:
        acc = _num(run.best_accuracy, ".4g")
        if run.best_accuracy is not None and run.monitor and run.monitor != "val_acc":
            acc += f" ({run.monitor})"
        rows.append(
            [
                run.name + (INTERRUPTED_MARK if run.interrupted else ""),
                fmt_duration(run.duration_s),
                _num(run.energy_kWh, ".4g"),
                _num(run.mean_power_W, ".1f"),
                _num(run.peak_power_W, ".1f"),
                _num(run.outside_steps_share, ".1%"),
                acc,
                _num(run.final_score, ".4g"),
                run.method,
                run.replay or "-",
            ]
        )
    return [[printable(cell) for cell in row] for row in rows]


def print_table(
    runs: Sequence[RunData], file: TextIO | None = None, use_rich: bool | None = None
) -> str:
    """Print the runs table (rich when importable, aligned plain text otherwise); returns the
    text printed."""
    file = sys.stdout if file is None else file
    rows = table_rows(runs)
    use_rich = rich_available() if use_rich is None else use_rich
    if use_rich:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="lightning-watt runs", title_justify="left")
        numeric = {"duration", "kWh", "mean W", "peak W", "outside steps", "best acc", "final GQI"}
        for col in TABLE_COLUMNS:
            table.add_column(col, justify="right" if col in numeric else "left", overflow="fold")
        from rich.markup import escape

        for run, row in zip(runs, rows, strict=True):
            flagged = run.replay or run.estimated or run.interrupted or run.unmeasured_kWh > 0
            style = "yellow" if flagged else None
            # A name like "[red]" is text, not rich markup.
            table.add_row(*(escape(cell) for cell in row), style=style)
        buffer = io.StringIO()
        is_tty = bool(getattr(file, "isatty", lambda: False)())
        # Not a terminal (a log, a pipe): wide enough that no column is squeezed.
        console = Console(
            file=buffer,
            width=None if is_tty else 200,
            force_terminal=is_tty,
            color_system="auto" if is_tty else None,
        )
        console.print(table)
        text = buffer.getvalue()
    else:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(TABLE_COLUMNS)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(TABLE_COLUMNS, widths, strict=True)),
            "  ".join("-" * w for w in widths),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        text = "\n".join(line.rstrip() for line in lines) + "\n"
    file.write(text)
    file.flush()
    return text


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}_{n}", n + 1
    taken.add(slug)
    return slug


# --------------------------------------------------------------------------- command
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-watt",
        description=(
            "Energy reports for PyTorch Lightning runs measured by lightning-watt, and a check "
            "of what this machine can measure (doctor)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    report = sub.add_parser(
        "report",
        help="table, report.json and plots of one or more runs",
        description=(
            "Summarise runs measured by lightning-watt: print a table of the runs, write\n"
            "OUTDIR/report.json and, per run, OUTDIR/<run>/power.png (power over time, phases\n"
            "shaded), energy.png (cumulative energy), score.png (accuracy and GQI per epoch)\n"
            "and epoch_energy.png (energy per epoch: train/val/gap); with several runs also\n"
            "OUTDIR/pareto.png (accuracy against energy, Pareto front marked). Replayed or\n"
            "estimated runs say so in every title.\n\n"
            "A RUN is a Lightning log_dir (e.g. lightning_logs/version_0), a folder above\n"
            "several (searched recursively), or one file of a run. A run directory holds\n"
            "TensorBoard event files (events.out.tfevents.*), a CSVLogger metrics.csv,\n"
            f"{SUMMARY_NAME} and/or a watt-trace recording ({TRACE_STEM}.*); a callback\n"
            f"with another logging prefix tags them ({SUMMARY_STEM}.<tag>.json). Other\n"
            f"stages' files ({summary_file('test')}, ...) are not read: the report is of fits."
        ),
        epilog=(
            "examples:\n"
            "  lightning-watt report lightning_logs/version_0 -o watt_report\n"
            "  lightning-watt report lightning_logs other_logs/ -o compare --monitor val/acc\n"
            "  lightning-watt report lightning_logs --no-plots   # table and report.json only\n\n"
            "exit status: 0 done; 2 a path is missing, holds no runs or has a malformed file;\n"
            "1 matplotlib is missing (pip install 'lightning-watt[plot]', or use --no-plots)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="a run directory, a log root above runs, or one file of a run",
    )
    report.add_argument(
        "-o",
        "--output",
        "--outdir",
        dest="outdir",
        default="watt_report",
        metavar="OUTDIR",
        help="folder for report.json and plots (default: %(default)s)",
    )
    report.add_argument(
        "--monitor",
        metavar="KEY",
        help="metric to treat as accuracy (default: the summary's score monitor, "
        "else a logged key like val_acc)",
    )
    report.add_argument(
        "--no-plots",
        action="store_true",
        help="only the table and report.json (no matplotlib needed)",
    )
    report.add_argument("--dpi", type=int, default=150, help="PNG resolution (default: 150)")
    report.add_argument(
        "--no-progress", action="store_true", help="never show a progress bar while reading"
    )
    report.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no table and no progress; errors and warnings only",
    )
    from lightning_watt.doctor import _DESCRIPTION, add_arguments

    doctor = sub.add_parser(
        "doctor",
        help="what this machine can measure, how well, and why not (before a long run)",
        description=_DESCRIPTION,
    )
    add_arguments(doctor)
    return parser


def _err(message: str) -> None:
    sys.stderr.write(f"lightning-watt: error: {printable(message)}\n")


def run_report(args: argparse.Namespace) -> int:
    """The ``report`` subcommand; returns the exit status."""
    if not args.no_plots:
        from lightning_watt.report.plots import MissingMatplotlibError, require_matplotlib

        try:
            require_matplotlib()
        except MissingMatplotlibError as err:
            _err(str(err))
            return 1
    try:
        locations = find_runs(args.runs)
        total = sum(location_bytes(loc) for loc in locations)
        n_events = sum(len(loc.event_files) for loc in locations)
        big = n_events >= PROGRESS_MIN_FILES or total >= PROGRESS_MIN_BYTES
        show = big and not (args.no_progress or args.quiet)
        with progress_bar(total, f"reading {len(locations)} runs", enabled=show, unit="B") as bar:
            runs = read_runs(args.runs, monitor=args.monitor, advance=bar, locations=locations)
    except ReportError as err:
        _err(str(err))
        return 2
    printed = {id(run): len(run.warnings) for run in runs}
    for run in runs:
        for warning in run.warnings:
            sys.stderr.write(f"lightning-watt: warning: {printable(warning)}\n")
        if run.unmeasured_kWh > 0:
            sys.stderr.write(
                f"lightning-watt: warning: {printable(run.name)}: "
                f"{run.unmeasured_kWh:.3g} kWh of its energy is an estimate for devices that "
                "stopped being measured or began late "
                f"({printable('; '.join(run.unmeasured_reasons))})\n"
            )
        if run.summary is None and run.partial:
            sys.stderr.write(
                f"lightning-watt: warning: {printable(run.name)}: no summary and a partial "
                f"trace; energy from {printable(run.energy_source)}\n"
            )

    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, dict[str, str]] = {}
    cross: dict[str, str] = {}
    slugs: set[str] = set()
    run_dirs = {run.name: _slug(run.name, slugs) for run in runs}
    if not args.quiet:
        print_table(runs)  # before the plots: the numbers are there while the PNGs are drawn
    if not args.no_plots:
        from lightning_watt.report.plots import NoDataError, plot_pareto, render_run, save

        show = len(runs) >= PROGRESS_MIN_RUNS_DRAWN and not (args.no_progress or args.quiet)
        with progress_bar(len(runs), "drawing plots", enabled=show) as bar:
            for run in runs:
                drawn = render_run(run, outdir / run_dirs[run.name], dpi=args.dpi)
                plots[run.name] = {k: _rel(v, outdir) for k, v in drawn.items()}
                bar(1)
        if len(runs) > 1:
            try:
                cross["pareto"] = _rel(
                    str(save(plot_pareto(runs), outdir / "pareto.png", dpi=args.dpi)), outdir
                )
            except NoDataError as err:
                cross["pareto"] = f"skipped: {err}"

    report = _json_safe(_report_json(runs, plots, cross))
    for run in runs:  # found while drawing (a trace read lazily that turned out unreadable)
        for warning in run.warnings[printed[id(run)] :]:
            sys.stderr.write(f"lightning-watt: warning: {printable(warning)}\n")
        if run.energy_engine == "vectorised":  # may differ from what the live meter computed
            sys.stderr.write(
                f"lightning-watt: note: {printable(run.name)}: energy from the trace alone, by "
                f"the {ENGINE_NOTES['vectorised']}\n"
            )
    text = json.dumps(report, indent=1, allow_nan=False)
    (outdir / "report.json").write_text(text + "\n", encoding="utf-8")
    n_png = sum(
        1
        for v in [*cross.values(), *(p for d in plots.values() for p in d.values())]
        if not v.startswith("skipped")
    )
    if not args.quiet:
        sys.stderr.write(f"wrote {outdir / 'report.json'} and {n_png} plots under {outdir}\n")
    return 0


def _json_safe(value: Any) -> Any:
    """NaN and infinities as ``null``: report.json stays valid JSON for every reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _rel(path: str, root: Path) -> str:
    if path.startswith("skipped"):
        return path
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


def _report_json(
    runs: Sequence[RunData], plots: dict[str, dict[str, str]], cross: dict[str, str]
) -> dict[str, Any]:
    from lightning_watt.report.pareto import pareto_front, pareto_points

    usable, points = pareto_points(runs)
    front = pareto_front(points, higher_is_better=all(r.higher_is_better for r in usable))
    rows = []
    for run in runs:
        row = run.to_dict()
        row["plots"] = plots.get(run.name, {})
        row["on_pareto_front"] = any(run is usable[i] for i in front) if run in usable else None
        rows.append(row)
    return {
        "format": REPORT_FORMAT,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "lightning_watt": _version(),
        "runs": rows,
        "pareto_front": [usable[i].name for i in front],
        "plots": cross,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-watt`` console script; returns the exit status.

    Example:
        >>> main(["report", "lightning_logs", "-o", "watt_report"])  # doctest: +SKIP
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "report":
        return run_report(args)
    if args.command == "doctor":
        from lightning_watt.doctor import run as run_doctor

        return run_doctor(args)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
