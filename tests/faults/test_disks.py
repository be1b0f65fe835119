"""Full and unwritable disks: recording turns off with one warning, measurement goes on in
memory, the summary is still produced (written, or printed when even that fails), and no
half-written file is left behind."""

from __future__ import annotations

import errno
import gzip
import json
from pathlib import Path

from harness import FaultAt, assert_energy_right, fit, install_fake_gpu, nvml_source, once

from lightning_watt import WattCallback


def _fill_the_disk(monkeypatch) -> None:
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device (simulated)")

    monkeypatch.setattr(gzip.GzipFile, "write", full)


def test_a_disk_filling_up_mid_fit_stops_recording_once_and_keeps_the_numbers(
    tmp_path, monkeypatch
):
    fake = install_fake_gpu(monkeypatch)
    cb = WattCallback(sources=[nvml_source(fake)])  # recording on: the default
    summary, messages = fit(tmp_path, cb, FaultAt(10, lambda: _fill_the_disk(monkeypatch)))
    # Before: the meter thread died at its first flush, fit raised OSError at the very end, no
    # summary, a .meta.json.tmp left behind.
    assert "recording is off" in once(messages, "No space left on device")
    assert_energy_right(summary)
    files = [p for p in Path(tmp_path).rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")], files
    written = [p for p in files if p.name == "watt_summary.json"]
    assert len(written) == 1
    assert json.loads(written[0].read_text())["energy_J"] == summary["energy_J"]


def test_a_summary_that_cannot_be_written_is_printed_and_kept(tmp_path, monkeypatch, caplog):
    fake = install_fake_gpu(monkeypatch)
    cb = WattCallback(sources=[nvml_source(fake)], record=False)

    def full_everywhere() -> None:
        import lightning_watt.integration.callback as callback_module

        def refuse(path, text):
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")

        monkeypatch.setattr(callback_module, "atomic_write_text", refuse)

    with caplog.at_level("INFO"):
        summary, messages = fit(tmp_path, cb, FaultAt(5, full_everywhere))
    assert "the summary is printed below" in once(messages, "could not write watt_summary.json")
    assert "lightning-watt energy summary" in caplog.text
    assert_energy_right(summary)
    assert not [p for p in Path(tmp_path).rglob("*") if p.name.endswith(".tmp")]
