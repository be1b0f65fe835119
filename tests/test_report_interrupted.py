"""The summary's ``interrupted`` and ``run_energy_J`` in the report: an interrupted fit is
marked, and the run's energy across stages never stands in for the fit's."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from test_report import make_run

from lightning_watt.energy.readings import J_PER_KWH
from lightning_watt.report import read_runs
from lightning_watt.report.cli import INTERRUPTED_MARK, main, print_table
from lightning_watt.schema import summary_file


def _edit_summary(run_dir: Path, **fields: Any) -> dict[str, Any]:
    path = run_dir / summary_file("fit")
    summary = json.loads(path.read_text())
    summary.update(fields)
    path.write_text(json.dumps(summary))
    return summary


def test_interrupted_fit_is_marked(tmp_path: Path) -> None:
    _edit_summary(make_run(tmp_path / "a", with_trace=False), interrupted=True)
    _edit_summary(make_run(tmp_path / "b", with_trace=False), interrupted=False)
    runs = {r.name: r for r in read_runs([tmp_path])}
    assert runs["a"].interrupted and not runs["b"].interrupted
    assert any("INTERRUPTED" in note for note in runs["a"].notes)
    lines = print_table(list(runs.values()), file=io.StringIO(), use_rich=False).splitlines()
    assert any(line.startswith("a" + INTERRUPTED_MARK) for line in lines)
    assert not any(line.startswith("b" + INTERRUPTED_MARK) for line in lines)
    out = tmp_path / "out"
    assert main(["report", str(tmp_path), "-o", str(out), "--no-plots", "-q"]) == 0
    rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["runs"]}
    assert rows["a"]["interrupted"] is True and rows["b"]["interrupted"] is False


def test_table_kwh_is_the_fits_energy_not_the_runs(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "v0", with_trace=False)
    summary = _edit_summary(run_dir)
    fit_j = float(summary["energy_J"])
    # A validate before the fit: the run's energy is larger than the fit's.
    _edit_summary(run_dir, run_energy_J=fit_j + 5000.0)
    (run,) = read_runs([run_dir])
    assert run.energy_kWh == fit_j / J_PER_KWH
    # energy_J is the fit's number; a summary without energy_kWh still reads.
    _edit_summary(run_dir, energy_kWh=None)
    (run,) = read_runs([run_dir])
    assert run.energy_kWh == fit_j / J_PER_KWH
