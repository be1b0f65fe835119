"""NVML reads that stall or time out: no double count, no reader silently dropped, and a read
stuck in the driver cannot hold the end of a fit."""

from __future__ import annotations

import itertools
import re
import threading
import time

import pynvml as real
import pytest
from harness import (
    WATTS,
    FaultAt,
    assert_energy_right,
    fit,
    install_fake_gpu,
    nvml_source,
    once,
    tolerance_j,
)
from helpers import TinyClassifier

import lightning_watt.energy.meter as meter_module
from lightning_watt import WattCallback
from lightning_watt.attribution.summary import render_summary
from lightning_watt.energy.trace_columns import load_columns
from lightning_watt.report import RunData


def _slow_counter(fake, seconds: float, times: int) -> None:
    """The next ``times`` counter reads take ``seconds``; the value is the call's last moment
    (the worst case for a read stamped at its middle)."""
    module = fake.module()  # noqa: F841 - the installed module is fake.module() too
    import sys

    nvml = sys.modules["pynvml"]
    original = nvml.nvmlDeviceGetTotalEnergyConsumption
    left = [times]

    def read(handle):
        if left[0] > 0:
            left[0] -= 1
            time.sleep(seconds)
        return original(handle)

    nvml.nvmlDeviceGetTotalEnergyConsumption = read


def test_stalled_counter_reads_do_not_double_count(tmp_path, monkeypatch):
    fake = install_fake_gpu(monkeypatch)
    cb = WattCallback(sources=[nvml_source(fake)], record=False)
    summary, _ = fit(tmp_path, cb, FaultAt(8, lambda: _slow_counter(fake, 0.6, 3)))
    # Before: +16 % (three 2 s reads), the slow read's value pinned a second off.
    assert_energy_right(summary)
    assert summary["devices"][0]["method"] == "counter+buffer_W"


def test_transient_timeouts_keep_the_counter_and_say_so_once(tmp_path, monkeypatch):
    fake = install_fake_gpu(monkeypatch)
    cb = WattCallback(sources=[nvml_source(fake)], record=False)
    model = FaultAt(10, lambda: fake.fail(0, "counter", real.NVMLError_Timeout, times=5))
    summary, messages = fit(tmp_path, cb, model)
    # Before: after 3 timeouts the counter was dropped for good; the warning said "retrying".
    assert "retrying, backing off" in once(messages, "gpu0/counter")
    assert not [m for m in messages if "no other reader" in m or "no longer measured" in m]
    assert summary["errors"] == {"rank0:gpu0/counter": 5}
    assert summary["devices"][0]["method"] == "counter+buffer_W"
    assert summary["unmeasured_J"] == 0.0
    assert_energy_right(summary)


#: stop() waits this long for the meter thread here, not 5 s: the bound is what is tested.
STOP_WAIT_S = 1.0


def test_a_read_stuck_in_the_driver_does_not_hold_the_end_of_the_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(meter_module, "_STOP_WAIT_S", STOP_WAIT_S)
    fake = install_fake_gpu(monkeypatch)
    import sys

    nvml = sys.modules["pynvml"]
    original = nvml.nvmlDeviceGetTotalEnergyConsumption
    release = threading.Event()
    stuck = []

    def read(handle):
        if stuck:
            release.wait(60.0)  # a driver call that does not come back
        return original(handle)

    nvml.nvmlDeviceGetTotalEnergyConsumption = read
    cb = WattCallback(sources=[nvml_source(fake)], record=False)
    try:
        started = time.monotonic()
        summary, messages = fit(tmp_path, cb, FaultAt(20, lambda: stuck.append(True)))
        took = time.monotonic() - started
    finally:
        release.set()
    once(messages, f"did not finish within {STOP_WAIT_S:.0f} s")
    # 64 steps of 30 ms plus at most the wait of stop() for a stuck read.
    assert took < summary["duration_s"] + STOP_WAIT_S + 3.0
    assert summary["devices"][0]["unmeasured_s"] > 0.5
    assert_energy_right(summary)


def test_a_backlog_of_readings_does_not_hold_the_end_of_the_fit(tmp_path, monkeypatch):
    # A replay at x1000 delivers a thousand seconds of readings per second: the meter thread
    # falls behind. Before: stop() gave up after 10 s and flushed beside the running thread;
    # the fit did not end in 4 minutes. Two epochs (32 steps) build a backlog that outlasts
    # the wait of stop() (four epochs and a 5 s wait took 22 s here; now 5-7 s).
    monkeypatch.setattr(meter_module, "_STOP_WAIT_S", STOP_WAIT_S)
    cb = WattCallback(replay="h200-mlp-stall", replay_speed=1000, record=False)
    started = time.monotonic()
    summary, messages = fit(tmp_path, cb, TinyClassifier(step_sleep=0.03), max_epochs=2)
    took = time.monotonic() - started
    assert took < summary["duration_s"] + STOP_WAIT_S + 7.0  # the wait, and the final flush
    assert summary["energy_J"] > 0
    assert len([m for m in messages if "did not finish within" in m]) <= 1


def test_a_meter_stalled_at_the_start_is_reported_as_unmeasured(tmp_path, monkeypatch):
    """The meter thread's first read hangs for 4 s (the driver busy at the start): the buffer
    holds 2.4 s, so the first ~1.6 s of the fit have no reading at all. Like a stall that lasts
    to the end, that span is estimated (at the power measured after it), reported as
    unmeasured with its reason, and warned about once. Before: it counted as zero joules,
    silently (-26 % on a 9 s run)."""
    import sys

    fake = install_fake_gpu(monkeypatch)
    nvml = sys.modules["pynvml"]
    stalled = []

    def stall_first(name: str) -> None:
        original = getattr(nvml, name)

        def read(*args):
            if threading.current_thread().name == "lightning-watt-meter" and not stalled:
                stalled.append(name)
                time.sleep(4.0)
            return original(*args)

        monkeypatch.setattr(nvml, name, read)

    for name in ("nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetSamples"):
        stall_first(name)
    cb = WattCallback(sources=[nvml_source(fake)])  # recorded: the trace is checked below
    summary, messages = fit(tmp_path, cb, TinyClassifier(step_sleep=0.03))
    assert stalled
    warning = once(messages, "was not measured at the start")
    device = summary["devices"][0]
    assert 1.0 < device["unmeasured_s"] < 3.5
    assert "first" in device["unmeasured_reason"]
    # The estimate is the fake's 300 W measured over the first second or so after the stall
    # (counter-anchored: within an update's 30 J of it), and it is what the span is charged.
    watts = float(re.search(r"estimated at ([0-9.]+) W", warning).group(1))
    assert watts == pytest.approx(WATTS, rel=0.15)
    assert summary["unmeasured_J"] == pytest.approx(watts * device["unmeasured_s"], rel=1e-3)
    # The measured rest is right, as in every fault test.
    measured = summary["energy_J"] - summary["unmeasured_J"]
    truth = WATTS * (summary["duration_s"] - device["unmeasured_s"])
    assert abs(measured - truth) <= tolerance_j(summary), (measured, truth)
    assert sum(summary["phases_J"].values()) == pytest.approx(summary["energy_J"], rel=1e-9)
    # The printed table's note says the span, not "its last" seconds (it is the first).
    # The plain table (rich wraps long rows inside its borders).
    monkeypatch.setitem(sys.modules, "rich.console", None)
    (note,) = [line for line in render_summary(summary).splitlines() if "not measured" in line]
    assert "its last" not in note and "no readings for the first" in note, note
    # The recording alone (a run whose summary is lost) says the same: the span is in its
    # meta, counted in its energy and reported as unmeasured. Before: counted as 0 J.
    (meta,) = tmp_path.rglob("watt_trace*.meta.json")
    run = RunData("trace", tmp_path, trace=load_columns(str(meta)))
    assert run.energy_source == "trace"
    assert run.energy_kWh * 3.6e6 == pytest.approx(summary["energy_J"], rel=1e-9)
    assert run.unmeasured_kWh * 3.6e6 == pytest.approx(summary["unmeasured_J"], rel=1e-9)
    assert run.unmeasured_reasons == [f"gpu0: {device['unmeasured_reason']}"]


def _stall_first_reads(monkeypatch, seconds: float) -> list[str]:
    """The meter thread's first NVML read hangs for ``seconds`` (the driver busy at the start)."""
    import sys

    nvml = sys.modules["pynvml"]
    stalled: list[str] = []

    def stall_first(name: str) -> None:
        original = getattr(nvml, name)

        def read(*args):
            if threading.current_thread().name == "lightning-watt-meter" and not stalled:
                stalled.append(name)
                time.sleep(seconds)
            return original(*args)

        monkeypatch.setattr(nvml, name, read)

    for name in ("nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetSamples"):
        stall_first(name)
    return stalled


def test_a_stalled_start_anchors_its_first_counter_value_at_its_update(tmp_path, monkeypatch):
    """The fit's steps take 100 ms (a loaded machine: the fit lasts ~9 s, long enough for the
    counter clock's first fit, as on the machine where this failed). Power is bridged from the
    buffer's history (2.4 s before the first counter value): that value must sit at its
    update instant, as the later ones do. Before: at its read time, so the bridge and the
    counter's first increment both counted the 0-100 ms by which it was stale (438 W instead
    of 300 W seen over 200 ms); and the live summary and its recording read back differed by
    up to 4 J (float rounding chose among the equally good grids of flat power)."""
    fake = install_fake_gpu(monkeypatch)
    stalled = _stall_first_reads(monkeypatch, 4.0)
    cb = WattCallback(sources=[nvml_source(fake)])
    summary, _ = fit(tmp_path, cb, TinyClassifier(step_sleep=0.1))
    assert stalled
    (meta,) = tmp_path.rglob("watt_trace*.meta.json")
    cols = load_columns(str(meta))
    run = RunData("trace", tmp_path, trace=cols)
    # The recording alone rebuilds the live timeline: the same joules, to rounding.
    assert run.energy_kWh * 3.6e6 == pytest.approx(summary["energy_J"], rel=1e-9)
    timeline = cols.timeline().device("gpu0")
    assert timeline.clock.counts["grid"] > 10, timeline.clock.counts  # the clock was recovered
    first = min(r.t for r in cols.readings() if r.kind == "counter_J")
    assert timeline.start < first - 1.0  # bridged from the buffer's history
    # A constant 300 W (the fake's) on every 100 ms around the first value, not +one update.
    edges = [first - 0.3 + 0.1 * k for k in range(8)]
    watts = [
        (timeline.energy_at(b) - timeline.energy_at(a)) / (b - a)
        for a, b in itertools.pairwise(edges)
    ]
    assert watts == pytest.approx([WATTS] * len(watts), rel=1e-3), watts
