"""The report reads a run logged under any prefix (``WattCallback(prefix="energy/")``) as it
reads one logged under ``watt/``: the prefix comes from the summary, else from the logged keys.

Runs are the ones :func:`test_report.make_run` builds, relabelled the way a callback with
another prefix writes them: keys, the summary's ``prefix`` and epoch metrics, and tagged file
names (``watt_summary.<tag>.json``, ``watt_trace.<tag>``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from test_report import make_run

from lightning_watt.report import RunData, read_runs
from lightning_watt.report.cli import main, table_rows
from lightning_watt.report.keys import LoggedKeys, detect_prefixes, resolve_prefix
from lightning_watt.schema import DEFAULT_PREFIX, prefix_tag, summary_file, trace_stem

PREFIXES = ["energy/", "acc/", "gpu_"]  # "acc/": its keys must never pass for an accuracy


def relabel(run_dir: Path, prefix: str, *, summary_prefix: bool = True) -> Path:
    """Rewrite a ``watt/`` run directory as the callback with ``prefix`` writes it.
    ``summary_prefix=False``: a summary without the ``prefix`` field (an older callback)."""
    tag = prefix_tag(prefix)
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        with open(metrics, newline="") as fh:
            rows = [{_swap(k, prefix): v for k, v in row.items()} for row in csv.DictReader(fh)]
        # Columns in name order, as CSVLogger writes them: "acc/..." before "val_acc".
        keys = sorted({k for row in rows for k in row} - {"epoch", "step"})
        with open(metrics, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["epoch", "step", *keys])
            writer.writeheader()
            writer.writerows(rows)
    old = run_dir / summary_file("fit")
    if old.exists():
        summary = json.loads(old.read_text())
        if summary_prefix:
            summary["prefix"] = prefix
        for row in summary["epochs"]:
            row["metrics"] = {_swap(k, prefix): v for k, v in row["metrics"].items()}
        old.unlink()
        (run_dir / summary_file("fit", tag)).write_text(json.dumps(summary))
    for path in run_dir.glob(trace_stem("fit") + ".*"):
        path.rename(run_dir / path.name.replace(trace_stem("fit"), trace_stem("fit", tag=tag), 1))
    return run_dir


def _swap(key: str, prefix: str, old: str = DEFAULT_PREFIX) -> str:
    return prefix + key[len(old) :] if key.startswith(old) else key


def _numbers(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A report.json row without what names the run or its files, keys under ``watt/``."""
    out = {k: v for k, v in row.items() if k not in ("name", "path", "files", "plots")}
    out["epochs"] = [
        {**e, "metrics": {_swap(k, DEFAULT_PREFIX, prefix): v for k, v in e["metrics"].items()}}
        for e in row["epochs"]
    ]
    return out


def _report_rows(run_dir: Path, out: Path) -> list[dict[str, Any]]:
    assert main(["report", str(run_dir), "-o", str(out), "--no-plots", "-q"]) == 0
    rows: list[dict[str, Any]] = json.loads((out / "report.json").read_text())["runs"]
    return rows


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(
    "sources",
    [
        pytest.param({"with_trace": False}, id="csv+summary"),
        pytest.param({"with_trace": False, "summary_prefix": False}, id="csv+old-summary"),
        pytest.param({"with_trace": False, "with_summary": False}, id="csv-only"),
        pytest.param({}, id="csv+summary+trace"),
    ],
)
def test_prefixed_run_reports_the_same_numbers(
    tmp_path: Path, prefix: str, sources: dict[str, Any]
) -> None:
    sources = dict(sources)
    summary_prefix = sources.pop("summary_prefix", True)
    plain = make_run(tmp_path / "plain" / "version_0", **sources)
    tagged = relabel(
        make_run(tmp_path / "tagged" / "version_0", **sources),
        prefix,
        summary_prefix=summary_prefix,
    )
    (want,) = _report_rows(plain, tmp_path / "out_plain")
    (got,) = _report_rows(tagged, tmp_path / "out_tagged")
    assert _numbers(got, prefix) == _numbers(want, DEFAULT_PREFIX)
    assert got["energy_kWh"] is not None and got["final_score"] is not None
    assert got["monitor"] == "val_acc"
    (plain_run,) = read_runs([plain])
    (tagged_run,) = read_runs([tagged])
    assert tagged_run.keys.prefix == prefix and plain_run.keys.prefix == DEFAULT_PREFIX
    assert table_rows([tagged_run])[0][1:] == table_rows([plain_run])[0][1:]
    if "summary" in tagged_run.files:
        assert tagged_run.files["summary"] == [
            str(tagged / summary_file("fit", prefix_tag(prefix)))
        ]
    if "trace" in plain_run.files:
        assert tagged_run.files["trace"] == [
            str(tagged / trace_stem("fit", tag=prefix_tag(prefix)))
        ]


def test_plots_of_a_prefixed_run_name_its_keys(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from lightning_watt.report.plots import plot_energy, plot_epoch_energy, plot_power, plot_score

    run_dir = relabel(make_run(tmp_path / "v0", with_trace=False, with_summary=False), "energy/")
    (run,) = read_runs([run_dir])
    ax = plot_energy(run).axes[0]
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels[:2] == ["energy/energy_kWh", "end of epoch"]
    assert any("target accuracy" in label for label in labels)
    assert [ln.get_label() for ln in plot_power(run).axes[0].get_lines()] == ["energy/power_W"]
    assert plot_score(run).axes[1].get_ylabel() == "Green Quotient Index (energy/gqi)"
    assert len(plot_epoch_energy(run).axes[0].containers) == 3


def test_per_device_power_under_a_prefix() -> None:
    pytest.importorskip("matplotlib")
    from lightning_watt.report.plots import plot_power
    from lightning_watt.report.series import ScalarSeries

    keys = LoggedKeys("energy_")
    scalars = {
        k: ScalarSeries(k, [50, 100], [300.0, 320.0])
        for k in (keys.energy_kWh, keys.power_W, keys.device_power("gpu0"), "power_W/cpu")
    }
    run = RunData("demo", Path("."), scalars=scalars)
    assert run.keys.prefix == "energy_"
    labels = [ln.get_label() for ln in plot_power(run).axes[0].get_lines()]
    assert labels == ["gpu0", "total"]  # power_W/cpu belongs to no callback prefix


def test_two_callbacks_in_one_directory(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "v0", with_trace=False)
    summary = json.loads((run_dir / summary_file("fit")).read_text())
    other = {**summary, "prefix": "gpu/", "energy_J": 1.0, "energy_kWh": 1.0 / 3.6e6}
    (run_dir / summary_file("fit", "gpu")).write_text(json.dumps(other))
    (run,) = read_runs([tmp_path])
    assert run.files["summary"] == [str(run_dir / summary_file("fit"))]
    assert run.energy_kWh == pytest.approx(summary["energy_kWh"])
    assert any("gpu" in w for w in run.warnings)
    # Naming one callback's file reports that callback's numbers.
    (run,) = read_runs([run_dir / summary_file("fit", "gpu")])
    assert run.energy_kWh == pytest.approx(1.0 / 3.6e6) and run.keys.prefix == "gpu/"


def test_prefix_detection() -> None:
    assert detect_prefixes([]) == []
    # A user's own metric ending in energy_kWh ranks below the callback's keys.
    logged = ["my_energy_kWh", "energy/energy_kWh", "energy/power_W", "energy/epoch_kWh"]
    assert detect_prefixes(logged) == ["energy/", "my_"]
    # Equally convincing: the default prefix first, then name order.
    both = ["watt/energy_kWh", "watt/power_W", "gpu/energy_kWh", "gpu/power_W"]
    assert detect_prefixes(both) == ["watt/", "gpu/"]
    assert resolve_prefix(None, both) == "watt/"
    assert resolve_prefix(None, both, tag="gpu") == "gpu/"  # the tag of the files read
    assert resolve_prefix("cpu/", both) == "cpu/"  # the summary knows best
    assert resolve_prefix("", ["x/energy_kWh"]) == "x/"
    assert resolve_prefix(None, ["energy_kWh", "val_acc"]) == DEFAULT_PREFIX
