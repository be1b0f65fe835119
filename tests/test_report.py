"""``lightning-watt report``: run discovery, reading, the table, report.json and the plots.

Runs are built in ``tmp_path`` the way the callback writes them: a watt-trace copied from a
bundled recording, CSVLogger and TensorBoard metrics derived from that trace's own epochs and
energies, and a ``watt_summary.json``.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from lightning_watt.energy.trace import bundled_trace, load_trace
from lightning_watt.report import RunData, find_runs, pareto_front, read_runs
from lightning_watt.report.cli import TABLE_COLUMNS, fmt_duration, main, print_table
from lightning_watt.report.plots import (
    MissingMatplotlibError,
    NoDataError,
    plot_energy,
    plot_epoch_energy,
    plot_pareto,
    plot_power,
    plot_score,
    require_matplotlib,
    save,
)
from lightning_watt.report.progress import progress_bar
from lightning_watt.report.runs import J_PER_KWH, ReportError, RunNotFoundError

REPO = Path(__file__).resolve().parents[1]
LOG_EVERY = 50


# --------------------------------------------------------------------------- run builders
@functools.cache
def trace_epochs(trace_name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Epochs (train/val/gap joules, last global step, cumulative kWh) and step-level log rows
    of a bundled trace, computed from its own step edges and fused energy, as the callback
    would log them. An epoch ends with its last validation step."""
    trace = load_trace(bundled_trace(trace_name))
    probe = RunData("probe", Path("."), trace=trace)
    timeline = trace.timeline()
    fit0, fit1 = trace.fit_window

    def joules(a: float, b: float) -> float:
        return sum(timeline.energy_between(a, b).values())

    spans = probe.step_spans()
    epochs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    start, step, phases = fit0, 0, {"train": 0.0, "val": 0.0}
    last_log = (fit0, 0.0)
    for i, span in enumerate(spans):
        if span.phase in phases:
            phases[span.phase] += joules(span.start, span.end)
        if span.phase == "train":
            step += 1
            if step % LOG_EVERY == 0:
                cum = joules(fit0, span.end)
                power = (cum - last_log[1]) / (span.end - last_log[0])
                rows.append(
                    {
                        "step": step,
                        "epoch": len(epochs),
                        "_t": span.end - fit0,
                        "watt/energy_kWh": cum / J_PER_KWH,
                        "watt/power_W": power,
                        "watt/step_J": (cum - last_log[1]) / LOG_EVERY,
                        "train_loss": 2.0 / (1 + step / 200),
                    }
                )
                last_log = (span.end, cum)
        nxt = spans[i + 1] if i + 1 < len(spans) else None
        if span.phase == "val" and (nxt is None or nxt.phase == "train"):
            end = span.end if nxt is not None else fit1
            total = joules(start, end)
            epochs.append(
                {
                    "epoch": len(epochs),
                    "train_J": phases["train"],
                    "val_J": phases["val"],
                    "gap_J": total - phases["train"] - phases["val"],
                    "step": step,
                    "_t": end - fit0,
                    "energy_kWh": joules(fit0, end) / J_PER_KWH,
                }
            )
            start, phases = end, {"train": 0.0, "val": 0.0}
    return epochs, rows


def _acc(epoch: int, top: float) -> float:
    return round(top - 0.35 * math.exp(-epoch / 2.5) + 0.004 * math.sin(3 * epoch), 4)


def _gqi(acc: float, kwh: float) -> float:
    return round(acc * 10 - 5 * kwh * 100, 4)  # a stand-in: monotone in both, like the index


def make_run(
    run_dir: Path,
    trace_name: str = "h200-mlp-stall",
    *,
    top_acc: float = 0.93,
    energy_scale: float = 1.0,
    with_trace: bool = True,
    with_csv: bool = True,
    with_tb: bool = False,
    with_summary: bool = True,
    replay: str | None = None,
    estimated: bool = False,
    run_name: str = "",
) -> Path:
    """A run directory like the callback's, with energies taken from a bundled trace (scaled
    by ``energy_scale`` in the metrics and summary; the copied trace only when scale is 1)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    epochs, rows = trace_epochs(trace_name)
    k = energy_scale
    epoch_rows = []
    for e in epochs:
        acc = _acc(e["epoch"], top_acc)
        kwh = e["energy_kWh"] * k
        epoch_rows.append(
            {
                **{k: v for k, v in e.items() if k != "_t"},
                "energy_kWh": kwh,
                "train_J": e["train_J"] * k,
                "val_J": e["val_J"] * k,
                "gap_J": e["gap_J"] * k,
                "metrics": {"val_acc": acc, "watt/gqi": _gqi(acc, kwh)},
                "_t": e["_t"],
            }
        )
    log_rows = [
        dict(
            r,
            **{
                "watt/energy_kWh": r["watt/energy_kWh"] * k,
                "watt/power_W": r["watt/power_W"] * k,
                "watt/step_J": r["watt/step_J"] * k,
            },
        )
        for r in rows
    ]
    for e in epoch_rows:
        log_rows.append(
            {
                "step": e["step"],
                "epoch": e["epoch"],
                "_t": e["_t"],
                "val_acc": e["metrics"]["val_acc"],
                "watt/gqi": e["metrics"]["watt/gqi"],
                "watt/epoch_train_J": e["train_J"],
                "watt/epoch_val_J": e["val_J"],
                "watt/epoch_gap_J": e["gap_J"],
                "watt/epoch_kWh": e["energy_kWh"],
            }
        )
    target = next((e["energy_kWh"] for e in epoch_rows if e["metrics"]["val_acc"] >= 0.85), None)
    if target is not None:
        log_rows.append(
            {
                "step": epoch_rows[-1]["step"],
                "epoch": epoch_rows[-1]["epoch"],
                "_t": epoch_rows[-1]["_t"],
                "watt/target_kWh": target,
            }
        )
    log_rows.sort(key=lambda r: r["step"])
    if with_csv:
        keys = sorted({key for r in log_rows for key in r} - {"step", "epoch", "_t"})
        with open(run_dir / "metrics.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["epoch", "step", *keys], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(log_rows)
    if with_tb:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir))
        for r in log_rows:
            for key, value in r.items():
                if key not in ("step", "_t"):  # Lightning logs "epoch" with every metric
                    writer.add_scalar(key, value, r["step"], walltime=1.7e9 + r["_t"])
        writer.close()
    if with_trace and k == 1.0:
        load_trace(bundled_trace(trace_name)).save(run_dir / "watt_trace")
    if with_summary:
        total = epoch_rows[-1]["energy_kWh"]
        train = sum(e["train_J"] for e in epoch_rows)
        val = sum(e["val_J"] for e in epoch_rows)
        gap = sum(e["gap_J"] for e in epoch_rows)
        trace = load_trace(bundled_trace(trace_name))
        duration = trace.fit_window[1] - trace.fit_window[0]
        method = "estimated" if estimated else trace.timeline().methods()["gpu0"][0]
        summary = {
            "format": "lightning-watt summary v1",
            "stage": "fit",
            "run_name": run_name,
            "duration_s": duration,
            "energy_J": total * J_PER_KWH,
            "energy_kWh": total,
            "phases_J": {"train": train, "val": val, "gap": gap},
            "outside_steps_share": gap / (train + val + gap),
            "mean_power_W": total * J_PER_KWH / duration,
            "peak_power_W": 480.0 * k,
            "devices": [
                {
                    "name": "gpu0",
                    "rank": 0,
                    "uuid": "GPU-0",
                    "label": "NVIDIA H200",
                    "energy_J": total * J_PER_KWH,
                    "mean_power_W": 180.0,
                    "peak_power_W": 480.0,
                    "method": method,
                    "estimated": estimated,
                }
            ],
            "epochs": [{k: v for k, v in e.items() if k != "_t"} for e in epoch_rows],
            "steps": {"train": epoch_rows[-1]["step"], "val": 270},
            "co2e_kg": None,
            "cost": None,
            "currency": None,
            "score": {
                "monitor": "val_acc",
                "alpha": 5.0,
                "beta": 10.0,
                "form": "guarded",
                "final": epoch_rows[-1]["metrics"]["watt/gqi"],
            },
            "replay": replay,
            "world_size": 1,
        }
        (run_dir / "watt_summary.json").write_text(json.dumps(summary, indent=1))
    return run_dir


@pytest.fixture(scope="module")
def log_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three runs under one log root: a replay with trace + CSV + summary, a TensorBoard-only
    run, and an estimated CSV + summary run; plus a non-run folder."""
    root = tmp_path_factory.mktemp("logs") / "lightning_logs"
    make_run(root / "version_0", replay="h200-mlp-stall", run_name="mlp-replay")
    make_run(
        root / "version_1",
        "h100-mlp",
        top_acc=0.96,
        with_trace=False,
        with_csv=False,
        with_tb=True,
        with_summary=False,
    )
    make_run(
        root / "version_10",
        "h100-mlp",
        top_acc=0.945,
        energy_scale=0.6,
        with_trace=False,
        estimated=True,
    )
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a run")
    return root


@pytest.fixture(scope="module")
def runs(log_root: Path) -> dict[str, RunData]:
    return {r.path.name: r for r in read_runs([log_root])}


# --------------------------------------------------------------------------- discovery/reading
def test_finds_runs_recursively_in_natural_order(log_root: Path) -> None:
    names = [loc.path.name for loc in find_runs([log_root])]
    assert names == ["version_0", "version_1", "version_10"]


def test_reads_each_source(runs: dict[str, RunData]) -> None:
    replay, tb_only, est = runs["version_0"], runs["version_1"], runs["version_10"]
    assert replay.name == "mlp-replay"
    assert set(replay.files) == {"csv", "summary", "trace"}
    assert replay.replay == "h200-mlp-stall" and "REPLAY" in replay.notes[0]
    assert replay.method == "counter+buffer_W"
    assert replay.energy_kWh == pytest.approx(8370 / J_PER_KWH, rel=0.01)
    # TensorBoard only: totals from the logged scalars, epochs from the logged "epoch" key.
    assert set(tb_only.files) == {"tensorboard"}
    assert tb_only.name == "version_1" and tb_only.method == "logged"
    epochs, _ = trace_epochs("h100-mlp")
    assert tb_only.energy_kWh == pytest.approx(epochs[-1]["energy_kWh"])
    assert [r.epoch for r in tb_only.epochs()] == list(range(len(epochs)))
    assert tb_only.best_accuracy == pytest.approx(max(_acc(e, 0.96) for e in range(len(epochs))))
    assert tb_only.monitor == "val_acc"
    assert est.estimated and est.method == "estimated"
    assert "ESTIMATED" in " ".join(est.notes)
    assert "ESTIMATED" in plot_epoch_energy(est).get_suptitle()


def test_trace_only_run_derives_totals(tmp_path: Path) -> None:
    make_run(tmp_path / "run", with_csv=False, with_summary=False)
    (run,) = read_runs([tmp_path / "run"])
    assert run.name == "run"
    assert run.method == "counter+buffer_W"
    assert run.duration_s == pytest.approx(45.886, abs=0.01)
    assert run.energy_kWh * J_PER_KWH == pytest.approx(8370, rel=0.005)
    assert run.phases_J is not None and set(run.phases_J) == {"train", "val", "gap"}
    assert sum(run.phases_J.values()) == pytest.approx(run.energy_kWh * J_PER_KWH)
    assert 0 < run.outside_steps_share < 1
    assert 300 < run.peak_power_W < 700  # an H200 MLP, below the 700 W limit


def test_single_files_and_bare_traces_are_runs(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "a" / "version_0", with_summary=False)
    # A file of a run means its directory; a file of the run's trace too (no duplicates).
    locs = find_runs([run_dir / "metrics.csv", run_dir / "watt_trace.meta.json"])
    assert [loc.path for loc in locs] == [run_dir]
    (run,) = read_runs([bundled_trace("h100-mlp") + ".meta.json"])
    assert run.name == "h100-mlp" and run.has_trace


def test_event_only_subdirectory_belongs_to_its_run(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run_dir = make_run(tmp_path / "version_0", with_trace=False, with_summary=False)
    writer = SummaryWriter(log_dir=str(run_dir / "1700000000.1"))  # as add_hparams writes
    writer.add_scalar("hp_metric", 0.5, 0)
    writer.close()
    (run,) = read_runs([tmp_path])
    assert "hp_metric" in run.scalars and "val_acc" in run.scalars


def test_rank_traces_use_rank_zero(tmp_path: Path) -> None:
    run_dir = tmp_path / "version_0"
    for rank, name in enumerate(("h200-mlp-stall", "h100-mlp")):
        load_trace(bundled_trace(name)).save(run_dir / f"watt_trace.rank{rank}")
    (run,) = read_runs([tmp_path])
    assert run.files["trace"] == [str(run_dir / "watt_trace.rank0")]
    assert run.energy_kWh * J_PER_KWH == pytest.approx(8370, rel=0.005)


def test_pareto_front() -> None:
    points = [(1.0, 0.80), (2.0, 0.90), (3.0, 0.85), (0.5, 0.70), (2.0, 0.90)]
    assert pareto_front(points) == [0, 1, 3, 4]  # equal points do not dominate each other
    assert pareto_front([(1.0, 0.3), (2.0, 0.2)], higher_is_better=False) == [0, 1]


# --------------------------------------------------------------------------- plots
def _spans_by_phase(ax: Any) -> dict[str, int]:
    """Shaded blocks per phase: one collection per phase, one path per block."""
    out: dict[str, int] = {}
    for coll in ax.collections:
        gid = coll.get_gid() or ""
        if gid.startswith("phase:"):
            out[gid[6:]] = len(coll.get_paths())
    return out


def test_power_plot_from_trace(runs: dict[str, RunData], tmp_path: Path) -> None:
    run = runs["version_0"]
    fig = plot_power(run)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Time since fit start (s)"
    assert ax.get_ylabel() == "Power (W)"
    spans = _spans_by_phase(ax)
    assert set(spans) == {"train", "val", "gap", "stall"} and spans["stall"] == 1
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("gpu0")]
    xs, ys = line.get_data()
    assert xs[0] < 0 < 45 < xs[-1]  # the idle before and after the fit is shown too
    assert 100 < max(y for y in ys if y == y) < 700
    # The replay is in the title, where nobody can miss it.
    title = fig.get_suptitle()
    assert "mlp-replay" in title and "REPLAY of trace 'h200-mlp-stall'" in title
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"train", "val", "gap", "stall"} <= set(labels)
    assert save(fig, tmp_path / "p.png").stat().st_size > 30_000


def test_power_plot_from_scalars(runs: dict[str, RunData]) -> None:
    fig = plot_power(runs["version_1"])
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Global step"
    assert [ln.get_label() for ln in ax.get_lines()] == ["watt/power_W"]
    assert not _spans_by_phase(ax)
    assert "no trace" in ax.get_title()


def test_energy_plot(runs: dict[str, RunData]) -> None:
    run = runs["version_0"]
    ax = plot_energy(run).axes[0]
    assert ax.get_ylabel() == "Cumulative energy (Wh)"  # 2.3 Wh: kWh would read 0.0023
    total = ax.get_lines()[0]
    assert total.get_ydata()[-1] == pytest.approx(8370 / 3600, rel=0.01)
    assert any("target accuracy" in ln.get_label() for ln in ax.get_lines())
    ax = plot_energy(runs["version_1"]).axes[0]
    assert ax.get_xlabel() == "Global step"
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels[:2] == ["watt/energy_kWh", "end of epoch"]


def test_score_plot_twin_axes(runs: dict[str, RunData]) -> None:
    run = runs["version_0"]
    fig = plot_score(run)
    left, right = fig.axes
    assert left.get_xlabel() == "Epoch"
    assert left.get_ylabel() == "val_acc"
    assert right.get_ylabel() == "Green Quotient Index (watt/gqi)"
    n = len(run.epochs())
    assert len(left.get_lines()[0].get_xdata()) == n
    assert len(right.get_lines()[0].get_xdata()) == n
    assert "α=5.0" in left.get_title()


def test_epoch_energy_stacked_bars(runs: dict[str, RunData]) -> None:
    run = runs["version_0"]
    ax = plot_epoch_energy(run).axes[0]
    assert [c.get_label() for c in ax.containers] == ["train", "val", "gap"]
    rows = run.epochs()
    assert all(len(c) == len(rows) for c in ax.containers)
    heights = [sum(c[i].get_height() for c in ax.containers) for i in range(len(rows))]
    unit = ax.get_ylabel().split("(")[1].rstrip(")")
    scale = {"J": 1.0, "kJ": 1e-3}[unit]
    want = [(r.train_J + r.val_J + r.gap_J) * scale for r in rows]
    assert heights == pytest.approx(want)


def test_pareto_plot_marks_the_front() -> None:
    def run(name: str, kwh: float, acc: float, replay: str | None = None) -> RunData:
        summary = {
            "energy_kWh": kwh,
            "replay": replay,
            "epochs": [{"epoch": 0, "metrics": {"val_acc": acc}}],
        }
        return RunData(name, Path(name), summary=summary)

    runs = [
        run("a", 1.0, 0.80),
        run("b", 2.0, 0.90),
        run("c", 3.0, 0.85),
        run("d", 0.5, 0.70, replay="h100-mlp"),
        RunData("e", Path("e")),
    ]
    fig = plot_pareto(runs)
    ax = fig.axes[0]
    by_gid = {c.get_gid(): c for c in ax.collections}
    front = sorted(map(tuple, by_gid["pareto-front"].get_offsets().tolist()))
    assert front == [(0.5, 0.70), (1.0, 0.80), (2.0, 0.90)]
    assert by_gid["pareto-dominated"].get_offsets().tolist() == [[3.0, 0.85]]
    texts = [t.get_text() for t in ax.texts]
    assert {"a", "b", "c", "d (replay)"} <= set(texts)
    assert ax.get_xlabel() == "Energy of the fit (kWh)" and ax.get_ylabel() == "Best val_acc"
    assert "replayed or estimated" in fig.get_suptitle()
    assert "1 without energy or accuracy" in ax.get_title()


def test_plots_without_data_say_what_is_missing() -> None:
    empty = RunData("empty", Path("."))
    for draw in (plot_power, plot_energy, plot_score, plot_epoch_energy):
        with pytest.raises(NoDataError, match="empty"):
            draw(empty)


# --------------------------------------------------------------------------- the command
def test_report_command_end_to_end(
    log_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main(["report", str(log_root), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("mlp-replay", "version_1", "version_10", "h200-mlp-stall", "estimated"):
        assert name in printed
    for run in ("mlp-replay", "version_1", "version_10"):
        for plot in ("power", "energy", "score", "epoch_energy"):
            assert (out / run / f"{plot}.png").stat().st_size > 20_000, (run, plot)
    assert (out / "pareto.png").stat().st_size > 20_000
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "lightning-watt report v1"
    rows = {r["name"]: r for r in report["runs"]}
    assert set(rows) == {"mlp-replay", "version_1", "version_10"}
    assert rows["mlp-replay"]["replay"] == "h200-mlp-stall"
    assert rows["version_10"]["estimated"] is True
    assert rows["mlp-replay"]["plots"]["power"] == "mlp-replay/power.png"
    assert report["plots"]["pareto"] == "pareto.png"
    # version_10: least energy; version_1: best accuracy; mlp-replay: neither.
    assert report["pareto_front"] == ["version_1", "version_10"]
    assert rows["mlp-replay"]["on_pareto_front"] is False


def test_no_plots_needs_no_matplotlib_and_writes_json(log_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert main(["report", str(log_root / "version_1"), "-o", str(out), "--no-plots", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]


def test_missing_and_empty_paths_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nope: no such file or directory" in err
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main(["report", str(tmp_path / "empty"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    for looked_for in ("events.out.tfevents", "metrics.csv", "watt_summary.json", "no runs found"):
        assert looked_for in err
    with pytest.raises(RunNotFoundError):
        find_runs([tmp_path / "nope"])


def test_malformed_files_are_reported_with_their_path(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "watt_summary.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"watt_summary.json:1: invalid JSON"):
        read_runs([tmp_path])
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "o"), "-q"]) == 2


def test_help_describes_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "RUN" in text and "-o OUTDIR" in text and "Pareto" in text
    assert main([]) == 2


# --------------------------------------------------------------------------- table, progress
def test_plain_table_when_rich_is_not_wanted(runs: dict[str, RunData]) -> None:
    buffer = io.StringIO()
    text = print_table(list(runs.values()), file=buffer, use_rich=False)
    lines = text.splitlines()
    assert lines[0].split() == " ".join(TABLE_COLUMNS).split()
    replay_row = next(line for line in lines if line.startswith("mlp-replay"))
    assert "counter+buffer_W" in replay_row and "h200-mlp-stall" in replay_row
    assert "45.9 s" in replay_row
    assert fmt_duration(None) == "-" and fmt_duration(7300) == "2h 01m"


def test_rich_table(runs: dict[str, RunData]) -> None:
    pytest.importorskip("rich")
    text = print_table(list(runs.values()), file=io.StringIO(), use_rich=True)
    assert "outside steps" in text and "mlp-replay" in text and "┃" in text


def test_progress_bar_plain() -> None:
    stream = io.StringIO()
    with progress_bar(
        total=3 * 1024 * 1024, label="reading", stream=stream, rich=False, unit="B"
    ) as advance:
        for _ in range(3):
            advance(1024 * 1024)
    assert stream.getvalue().strip().endswith("[" + "#" * 30 + "] 3.0 MB/3.0 MB")
    with progress_bar(total=5, label="x", enabled=False, stream=stream) as advance:
        advance(5)  # disabled: a no-op


# --------------------------------------------------------------------------- matplotlib optional
def test_missing_matplotlib_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingMatplotlibError, match=r"lightning-watt\[plot\]"):
        require_matplotlib()
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "o")]) == 1
    assert "lightning-watt[plot]" in capsys.readouterr().err


def test_importing_the_package_does_not_import_matplotlib() -> None:
    code = (
        "import sys, lightning_watt, lightning_watt.report, lightning_watt.report.cli; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)


def test_two_devices_one_without_power_samples(tmp_path: Path) -> None:
    from lightning_watt.energy.readings import Reading

    trace = load_trace(bundled_trace("h200-square-wave"))
    # gpu1: the same GPU's counter alone (no power kinds), so its power comes from the counter.
    extra = [Reading(r.t, "gpu1", r.kind, r.value) for r in trace.samples if r.kind == "counter_J"]
    trace.samples = sorted([*trace.samples, *extra], key=lambda r: r.t)
    trace.save(tmp_path / "run" / "watt_trace")
    (run,) = read_runs([tmp_path])
    _, _per_dev, sources = run.power_over_time()
    assert sources == {"gpu0": "buffer_W", "gpu1": "counter_J"}
    ax = plot_power(run).axes[0]
    labels = [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert labels == ["gpu0 (buffer_W)", "gpu1 (counter_J)", "total"]
    assert set(_spans_by_phase(ax)) >= {"load", "idle"}  # a trace's own phases are shaded too
    ax = plot_energy(run).axes[0]
    gpu0, gpu1, total = ax.get_lines()[:3]
    assert total.get_ydata()[-1] == pytest.approx(gpu0.get_ydata()[-1] + gpu1.get_ydata()[-1])
    assert gpu1.get_ydata()[-1] == pytest.approx(gpu0.get_ydata()[-1], rel=1e-3)  # one counter


def test_monitor_override_and_lower_is_better(runs: dict[str, RunData], log_root: Path) -> None:
    (run,) = read_runs([log_root / "version_0"], monitor="train_loss")
    assert run.monitor == "train_loss" and not run.higher_is_better
    losses = [v for v in run.scalars["train_loss"].values]
    assert run.best_accuracy == pytest.approx(min(losses))


def test_progress_bar_when_reading_many_event_files(
    log_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import lightning_watt.report.cli as cli

    monkeypatch.setattr(cli, "PROGRESS_MIN_FILES", 1)
    args = ["report", str(log_root), "-o", str(tmp_path / "o"), "--no-plots"]
    assert main(args) == 0
    assert "reading 3 runs [" + "#" * 30 + "]" in capsys.readouterr().err
    assert main([*args, "--no-progress"]) == 0
    assert "reading 3 runs" not in capsys.readouterr().err


def test_undefined_scores_are_skipped_not_plotted(tmp_path: Path) -> None:
    # The callback logs watt/gqi as NaN where the score's form is undefined (kWh <= 1).
    run_dir = tmp_path / "version_0"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text(
        "epoch,step,val_acc,watt/gqi,watt/energy_kWh\n"
        "0,9,0.5,nan,\n0,9,,,0.001\n1,19,0.7,nan,\n1,19,,,0.002\n"
    )
    out = tmp_path / "out"
    assert main(["report", str(tmp_path), "-o", str(out), "-q"]) == 0
    (run,) = json.loads((out / "report.json").read_text())["runs"]
    assert run["final_score"] is None and run["best_accuracy"] == 0.7
    assert run["plots"]["epoch_energy"].startswith("skipped: ")
    (data,) = read_runs([tmp_path])
    (left,) = plot_score(data).axes  # no GQI axis when there is no finite score
    assert left.get_ylabel() == "val_acc"
