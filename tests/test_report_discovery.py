"""Which files of a run directory the report reads: names come from :mod:`lightning_watt.schema`,
and summaries or traces of other stages (validate, test, predict, tune) are never the fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report import make_run

from lightning_watt.energy.trace import bundled_trace, load_trace
from lightning_watt.report import ReportError, find_runs, read_runs
from lightning_watt.report.discovery import FileName, parse_summary_name, parse_trace_name
from lightning_watt.schema import STAGES, summary_file, trace_stem


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("tag", ["", "gpu", "my-prefix_2"])
def test_file_names_the_callback_writes_parse_back(stage: str, tag: str) -> None:
    assert parse_summary_name(summary_file(stage, tag)) == FileName(stage, tag, None)
    assert parse_trace_name(trace_stem(stage, tag=tag)) == FileName(stage, tag, None)
    assert parse_trace_name(trace_stem(stage, 3, 4, tag)) == FileName(stage, tag, 3)


def test_foreign_names_are_not_ours() -> None:
    for name in ("watt_summary_foo.json", "watt_summary.json.bak", "summary.json"):
        assert parse_summary_name(name) is None
    for prefix in ("fabric_trace", "watt_trace_foo", "h100-mlp"):
        assert parse_trace_name(prefix) is None


def _summary(energy_j: float, stage: str = "fit") -> str:
    return json.dumps({"stage": stage, "energy_J": energy_j, "energy_kWh": energy_j / 3.6e6})


def test_other_stages_are_not_the_fit(tmp_path: Path) -> None:
    run = tmp_path / "version_0"
    run.mkdir()
    (run / summary_file("fit")).write_text(_summary(3.6e6))
    for stage in ("validate", "test", "predict", "tune"):
        (run / summary_file(stage)).write_text(_summary(7.2e6, stage))
    load_trace(bundled_trace("h100-mlp")).save(run / trace_stem("validate"))
    (found,) = read_runs([tmp_path])
    assert found.energy_kWh == 1.0
    assert found.files == {"summary": [str(run / summary_file("fit"))]}
    # A file of another stage given by name means its run, which is still about the fit.
    (found,) = read_runs([run / summary_file("test")])
    assert found.energy_kWh == 1.0


def test_a_directory_of_other_stages_only_is_no_run(tmp_path: Path) -> None:
    run = tmp_path / "version_0"
    run.mkdir()
    (run / summary_file("test")).write_text(_summary(1.0, "test"))
    load_trace(bundled_trace("h100-mlp")).save(run / trace_stem("test"))
    with pytest.raises(ReportError, match=r"only files of other stages \(watt_summary_test.json"):
        find_runs([tmp_path])
    with pytest.raises(ReportError, match="the summary of a test stage"):
        find_runs([run / summary_file("test")])


def test_fit_trace_is_chosen_next_to_other_stages(tmp_path: Path) -> None:
    run = make_run(tmp_path / "version_0", with_csv=False, with_summary=False)
    load_trace(bundled_trace("h100-mlp")).save(run / trace_stem("test"))
    (loc,) = find_runs([tmp_path])
    assert loc.trace == str(run / trace_stem("fit"))


def test_a_tuners_recording_is_not_the_fit(tmp_path: Path) -> None:
    # Tuner.lr_find runs a fit and rolls it back: its recording says stage "tune".
    trace = load_trace(bundled_trace("h100-mlp"))
    trace.meta["stage"] = "tune"
    run = tmp_path / "version_0"
    trace.save(run / trace_stem("fit"))
    (found,) = read_runs([tmp_path])
    assert found.trace is None and "trace" not in found.files
    assert any("tune stage" in w for w in found.warnings)


def test_tagged_rank_traces(tmp_path: Path) -> None:
    run = tmp_path / "version_0"
    for rank in (1, 0):
        load_trace(bundled_trace("h100-mlp")).save(run / trace_stem("fit", rank, 2, "gpu"))
    (loc,) = find_runs([tmp_path])
    assert loc.trace == str(run / "watt_trace.gpu.rank0") and loc.tag == "gpu"
