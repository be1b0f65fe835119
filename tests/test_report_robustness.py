"""The report on damaged runs: a killed run's partial trace never outranks its own logs, a
corrupt summary or event file is named (never a traceback, never silent), and text from files
reaches the terminal with its control characters escaped."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest
from test_report import make_run

from lightning_watt.energy.readings import J_PER_KWH, Reading
from lightning_watt.energy.trace import StepEdge, TraceWriter
from lightning_watt.report import read_runs
from lightning_watt.report.cli import main, print_table
from lightning_watt.report.events import check_event_file
from lightning_watt.schema import summary_file


def _killed_run(run_dir: Path, seconds: float, logged_kWh: float) -> None:
    """What SIGKILL leaves: a trace flushed for its first ``seconds`` (never closed, no
    summary) beside a metrics.csv that went on logging."""
    run_dir.mkdir(parents=True)
    writer = TraceWriter(run_dir / "watt_trace")
    writer.meta["fit_start"] = 0.0
    writer.write_samples(
        [Reading(0.1 * i, "gpu0", "counter_J", 300.0 * 0.1 * i) for i in range(int(seconds * 10))]
    )
    writer.write_steps([StepEdge("train", "start", 0, 0.0, 0.0)])
    writer.flush()  # ... and then the process is gone: no close()
    (run_dir / "metrics.csv").write_text(
        f"epoch,step,watt/energy_kWh\n0,10,{logged_kWh / 2}\n0,20,{logged_kWh}\n"
    )


def test_a_killed_runs_logs_outrank_its_partial_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 300 W for 0.9 s in the trace (270 J); the logs went on to 1800 J.
    _killed_run(tmp_path / "killed", 1.0, 1800 / J_PER_KWH)
    (run,) = read_runs([tmp_path / "killed"])
    assert run.partial and run.summary is None
    assert run.energy_kWh == pytest.approx(1800 / J_PER_KWH)
    assert run.energy_source.startswith("logged scalars (more complete than the partial trace")
    assert any("PARTIAL" in note for note in run.notes)
    out = tmp_path / "out"
    assert main(["report", str(tmp_path / "killed"), "-o", str(out), "--no-plots", "-q"]) == 0
    err = capsys.readouterr().err
    assert "partial trace" in err and "energy from logged scalars" in err
    (row,) = json.loads((out / "report.json").read_text())["runs"]
    assert row["partial_trace"] is True and row["energy_source"].startswith("logged scalars")


def test_a_partial_trace_that_covers_more_than_the_logs_is_used(tmp_path: Path) -> None:
    _killed_run(tmp_path / "k", 20.0, 100 / J_PER_KWH)  # the logs stopped at 100 J
    (run,) = read_runs([tmp_path / "k"])
    assert run.energy_kWh == pytest.approx(300 * 19.9 / J_PER_KWH, rel=1e-6)
    assert run.energy_source.startswith("trace (partial:")


def test_a_complete_run_reports_its_summary_as_the_source(tmp_path: Path) -> None:
    (run,) = read_runs([make_run(tmp_path / "v0")])
    assert run.energy_source == "summary" and not run.partial


def test_a_corrupt_summary_is_skipped_with_a_warning_when_the_run_has_other_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = make_run(tmp_path / "v0")
    (run_dir / summary_file("fit")).write_bytes(b'{"energy_J": 12\xff')
    (run,) = read_runs([run_dir])
    assert run.summary is None and run.energy_kWh is not None
    assert any(summary_file("fit") in w and "summary skipped" in w for w in run.warnings)
    assert main(["report", str(run_dir), "-o", str(tmp_path / "o"), "--no-plots", "-q"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and summary_file("fit") in err


def test_a_corrupt_summary_alone_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / summary_file("fit")).write_bytes(b"\xff\xfe not json")
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lightning-watt: error:")
    assert "watt_summary" in err[0]


@pytest.mark.parametrize(
    "fields",
    [
        {"epochs": 3},
        {"devices": "gpu0"},
        {"epochs": [{"epoch": "x", "metrics": 5}]},
        {"run_name": 7, "prefix": ["watt/"], "score": [1]},
        {"phases_J": [1, 2], "methods": "counter"},
    ],
)
def test_wrongly_typed_summary_fields_never_crash_the_report(
    tmp_path: Path, fields: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = make_run(tmp_path / "v0", with_trace=False)
    path = run_dir / summary_file("fit")
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    assert main(["report", str(run_dir), "-o", str(tmp_path / "o"), "--no-plots", "-q"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_control_characters_from_files_are_escaped_on_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_run(tmp_path / "v0", with_trace=False, run_name="evil\x1b[2J\x1b]0;owned\x07[red]x")
    (run,) = read_runs([tmp_path / "v0"])
    plain = print_table([run], file=io.StringIO(), use_rich=False)
    assert "\x1b" not in plain and "\x07" not in plain
    assert "evil\\x1b[2J" in plain
    pytest.importorskip("rich")
    rich_text = print_table([run], file=io.StringIO(), use_rich=True)
    assert "\x1b" not in rich_text and "[red]x" in rich_text


def test_a_truncated_event_file_is_named(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "v0", with_tb=True, with_csv=False)
    (events,) = run_dir.glob("events.out.tfevents.*")
    assert check_event_file(events) is None
    data = events.read_bytes()
    events.write_bytes(data[: len(data) - 7])
    assert "truncated record" in (check_event_file(events) or "")
    (run,) = read_runs([run_dir])
    assert any(str(events) in w and "truncated" in w for w in run.warnings)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    events.write_bytes(bytes(flipped))
    assert "corrupt record" in (check_event_file(events) or "")


def test_a_bad_metrics_csv_epoch_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("epoch,step,loss\nnan?,1,0.5\n")
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "o"), "--no-plots", "-q"]) == 2


def test_a_trace_that_turns_out_unreadable_after_a_lazy_load_is_dropped(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "v0")
    samples = run_dir / "watt_trace.samples.csv.gz"
    text = gzip.decompress(samples.read_bytes()).decode().splitlines()
    text[50] = "oops,gpu0,buffer_W,1.0"
    samples.write_bytes(gzip.compress("\n".join(text).encode()))
    (run,) = read_runs([run_dir])
    assert run.energy_source == "summary"  # the table never needed the samples
    assert not run.has_trace
    assert any("trace not read" in w and ":51:" in w for w in run.warnings)
