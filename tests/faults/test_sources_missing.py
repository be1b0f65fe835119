"""Readers that are missing or misbehave from the start: no NVML library, RAPL permission
denied, a RAPL counter wrapping during the fit."""

from __future__ import annotations

import sys
import threading
import time

import fake_pynvml as fk
import pynvml as real
import pytest
from harness import fit
from helpers import TinyClassifier
from test_rapl import INTEL_MAX, FakePowercap

import lightning_watt.sources as sources_module
from lightning_watt import WattCallback
from lightning_watt.sources.rapl import RaplSource, rapl_status


def _permission_denied_rapl(tmp_path, monkeypatch) -> None:
    """A powercap tree whose energy files only root may read (kernels since 2020)."""
    tree = FakePowercap(tmp_path / "sys")
    tree.zone("intel-rapl:0", "package-0", 1_000)

    def read_file(path: str) -> str:
        if path.endswith("energy_uj"):
            raise PermissionError(13, "Permission denied (simulated)", path)
        with open(path, encoding="utf-8") as fh:
            return fh.read()

    monkeypatch.setattr(
        sources_module, "rapl_status", lambda: rapl_status(tree.root, read_file=read_file)
    )


def test_no_nvml_library_and_no_rapl_permission_fall_back_to_a_labelled_estimate(
    tmp_path, monkeypatch
):
    fake = fk.FakeNvml([], init_error=real.NVMLError_LibraryNotFound)
    monkeypatch.setitem(sys.modules, "pynvml", fake.module())
    _permission_denied_rapl(tmp_path, monkeypatch)
    cb = WattCallback(record=False)
    summary, _ = fit(tmp_path, cb, TinyClassifier(step_sleep=0.01), max_epochs=1)
    assert summary["estimated"] is True and summary["energy_J"] > 0
    reasons = summary["unavailable"]
    assert "nvml" in reasons and "rapl" in reasons
    assert "readable by root only" in reasons["rapl"]
    assert [d["name"] for d in summary["devices"]] == ["cpu"]


def test_nothing_measurable_says_so_once_and_points_to_the_doctor(tmp_path, monkeypatch):
    tree = FakePowercap(tmp_path / "sys")
    tree.zone("intel-rapl:0", "package-0", 1_000)

    def denied(path: str) -> str:
        raise PermissionError(13, "Permission denied (simulated)", path)

    cb = WattCallback(sources=[RaplSource(tree.root, read_file=denied)], record=False)
    summary, messages = fit(tmp_path, cb, TinyClassifier(), max_epochs=1)
    assert "lightning-watt doctor" in " ".join(messages)
    assert summary["energy_J"] == 0.0
    assert summary["unavailable"]


def test_a_rapl_counter_wrapping_during_the_fit_loses_nothing(tmp_path):
    max_uj = INTEL_MAX  # the hardware's range: 262 kJ
    tree = FakePowercap(tmp_path / "sys")
    # 20 J before the wrap: at 50 W it wraps 0.4 s into the fit.
    tree.zone("intel-rapl:0", "package-0", max_uj - 20_000_000, max_uj)
    bumped = [0]
    stop = threading.Event()

    def draw() -> None:  # 50 W, in 10 ms steps
        while not stop.is_set():
            tree.bump("intel-rapl:0", 500_000, max_uj)
            bumped[0] += 500_000
            time.sleep(0.01)

    worker = threading.Thread(target=draw, daemon=True)
    began = time.monotonic()
    worker.start()
    try:
        cb = WattCallback(sources=[RaplSource(tree.root, ("package",))], record=False)
        summary, messages = fit(tmp_path, cb, TinyClassifier(step_sleep=0.02), max_epochs=2)
    finally:
        stop.set()
        worker.join()
        drew_for = time.monotonic() - began
    assert not [m for m in messages if "undercounted" in m]
    assert bumped[0] > 20_000_000 and tree.get("intel-rapl:0") < max_uj - 20_000_000  # wrapped
    # The power the drawing thread really applied (its sleeps overshoot 10 ms), against the
    # fit's mean power: a lost or doubled wrap would be off by 262 kJ.
    true_watts = bumped[0] / 1e6 / drew_for
    assert summary["energy_J"] / summary["duration_s"] == pytest.approx(true_watts, rel=0.1)
