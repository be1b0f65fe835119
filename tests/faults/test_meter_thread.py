"""The meter thread is supervised: an error of its own (a bug, a BaseException out of a read)
never ends measurement silently."""

from __future__ import annotations

import pytest
from harness import (
    FaultAt,
    assert_energy_right,
    fit,
    install_fake_gpu,
    nvml_source,
    once,
)

from lightning_watt import WattCallback
from lightning_watt.energy.meter import EnergyMeter


def test_a_base_exception_in_the_thread_is_reported_once_and_the_thread_goes_on(
    tmp_path, monkeypatch
):
    fake = install_fake_gpu(monkeypatch)
    original = EnergyMeter._ingest
    armed = []

    def ingest(self, readings):
        if armed and armed.pop():
            raise KeyboardInterrupt("simulated: a BaseException out of the thread's work")
        return original(self, readings)

    monkeypatch.setattr(EnergyMeter, "_ingest", ingest)
    cb = WattCallback(sources=[nvml_source(fake)], record=False)
    summary, messages = fit(tmp_path, cb, FaultAt(10, lambda: armed.append(True)))
    # Before: the thread died, the summary held 29-37 % of the energy with no gap, no error.
    once(messages, "the meter thread failed")
    assert summary["errors"] == {"rank0:meter": 1}
    assert any("meter thread failed" in g[3] for g in summary["gaps"])
    assert summary["unmeasured_J"] == 0.0  # the counter bridged the lost readings
    assert_energy_right(summary)


def test_a_thread_failing_again_and_again_degrades_to_a_reported_estimate(tmp_path, monkeypatch):
    fake = install_fake_gpu(monkeypatch)
    original = EnergyMeter._poll
    broken = []

    def poll(self, channel, state):
        if broken:
            raise RuntimeError("simulated bug in the meter loop")
        return original(self, channel, state)

    monkeypatch.setattr(EnergyMeter, "_poll", poll)
    cb = WattCallback(sources=[nvml_source(fake)], record=False)
    summary, messages = fit(tmp_path, cb, FaultAt(20, lambda: broken.append(True)))
    once(messages, "failed too often")
    device = summary["devices"][0]
    assert device["unmeasured_s"] > 0.5
    # The estimate is the measured mean power before: 300 W here.
    assert device["unmeasured_J"] == pytest.approx(300.0 * device["unmeasured_s"], rel=0.05)
    assert summary["unmeasured_J"] == device["unmeasured_J"]
    assert_energy_right(summary)
