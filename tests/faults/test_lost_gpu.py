"""A GPU that falls off the bus: its unmeasured span is estimated and shown, never dropped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from harness import FaultAt, assert_energy_right, fit, install_fake_gpu, nvml_source, once
from lightning.pytorch.loggers import CSVLogger

from lightning_watt import WattCallback
from lightning_watt.attribution.summary import render_summary
from lightning_watt.energy.readings import ESTIMATE_W
from lightning_watt.energy.trace import load_trace
from lightning_watt.report.cli import main as report_main


def test_a_lost_gpu_is_unmeasured_with_an_estimate_in_the_summary(tmp_path, monkeypatch, capsys):
    fake = install_fake_gpu(monkeypatch)
    cb = WattCallback(sources=[nvml_source(fake)], record=False)
    logger = CSVLogger(tmp_path, name="run")
    summary, messages = fit(tmp_path, cb, FaultAt(20, lambda: fake.lose(0)), logger=logger)
    # Before: 330 J of 1305 J, no gap, method still counter+buffer_W.
    # One warning that the GPU is lost (not one per reader), one that it is now estimated.
    assert len(messages) == 2, messages
    assert "GPU is lost" in once(messages, "failed (ChannelLost")
    warning = once(messages, "is no longer measured")
    assert "GPU is lost" in warning and "unmeasured_J" in warning
    device = summary["devices"][0]
    assert "GPU is lost" in device["unmeasured_reason"]
    assert "mean" in device["unmeasured_basis"]
    # From step 20 of 64 to the end: most of the fit.
    assert 0.4 * summary["duration_s"] < device["unmeasured_s"] < 0.8 * summary["duration_s"]
    assert device["unmeasured_J"] == pytest.approx(300.0 * device["unmeasured_s"], rel=0.05)
    assert summary["unmeasured_J"] == pytest.approx(device["unmeasured_J"])
    assert_energy_right(summary)
    # The logs say it at every epoch end after the loss; the last equals the summary's.
    with open(Path(logger.log_dir) / "metrics.csv") as fh:
        logged = [
            float(r["watt/unmeasured_kWh"])
            for r in csv.DictReader(fh)
            if r.get("watt/unmeasured_kWh")
        ]
    assert len(logged) >= 2 and logged == sorted(logged)
    assert logged[-1] * 3.6e6 == pytest.approx(summary["unmeasured_J"], rel=0.1)
    table = render_summary(summary)
    assert "unmeasured" in table and "estimated" in table
    # And the report says so: in its JSON, as a warning, and in the plots' notes.
    out = tmp_path / "report"
    capsys.readouterr()
    assert report_main(["report", str(logger.log_dir), "-o", str(out), "--no-plots"]) == 0
    row = json.loads((out / "report.json").read_text())["runs"][0]
    assert row["unmeasured_kWh"] * 3.6e6 == pytest.approx(summary["unmeasured_J"])
    assert "GPU is lost" in row["unmeasured"][0]
    assert "estimate for devices that stopped being measured" in capsys.readouterr().err


def test_the_recording_of_a_lost_gpu_holds_the_estimate_the_meter_counted(tmp_path, monkeypatch):
    """A report of the trace alone (a run killed before its summary) counts what the meter
    counted: the meter's own estimates, from the last reading on, are in the recording."""
    fake = install_fake_gpu(monkeypatch)
    cb = WattCallback(sources=[nvml_source(fake)])
    summary, _ = fit(tmp_path, cb, FaultAt(20, lambda: fake.lose(0)))
    metas = list(tmp_path.rglob("watt_trace*.meta.json"))
    assert len(metas) == 1, metas
    trace = load_trace(str(metas[0]).removesuffix(".meta.json"))
    estimates = [r for r in trace.samples if r.kind == ESTIMATE_W]
    last_measured = max(r.t for r in trace.samples if r.kind != ESTIMATE_W)
    assert estimates and min(r.t for r in estimates) <= last_measured + 1e-6
    t0, t1 = trace.meta["fit_start"], trace.meta["fit_end"]
    fused = trace.timeline().energy_between(t0, t1)
    assert sum(fused.values()) == pytest.approx(summary["energy_J"], rel=5e-3)
