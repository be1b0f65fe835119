"""SIGKILL in the middle of a fit, then a resume from its newest checkpoint: the killed run's
recording holds all but its last few seconds, the checkpoint's energy is carried into the
resumed run exactly once, and the resumed totals are right."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from helpers import subprocess_env

from lightning_watt.energy.trace import load_trace, trace_prefix
from lightning_watt.report.cli import main as report_main

WORKER = Path(__file__).with_name("kill_worker.py")


def _rows_before_the_cut(path: Path) -> list[list[str]]:
    """The complete CSV rows of a gzip stream that a kill cut off."""
    # gzip.open refuses a stream without its end; zlib hands out what was flushed.
    data = zlib.decompressobj(wbits=31).decompress(path.read_bytes())
    lines = data.decode("utf-8", "replace").split("\n")[:-1]  # the last one may be cut
    return [line.split(",") for line in lines if line and not line.startswith("#")]


def _watt_state(checkpoint: Path) -> dict:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["callbacks"]
    (key,) = [k for k in state if k.startswith("WattCallback")]
    return state[key]


@pytest.mark.slow
def test_a_killed_fit_keeps_its_trace_and_resumes_with_its_energy(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(tmp_path), "train"],
        cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "ckpt").glob("*.ckpt")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            time.sleep(0.1)
        first_checkpoint = time.monotonic()
        time.sleep(8.0)  # seconds of training after the first checkpoint
        ran_for = time.monotonic() - first_checkpoint
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # The recording: flushed every 2 s, readings held 3 s for ordering, so at most ~5 s lost.
    # It loads, and says it was cut off.
    (samples,) = list(tmp_path.rglob("*.samples.csv.gz"))
    trace = load_trace(trace_prefix(samples))
    assert trace.partial and trace.partial_reason
    first, last = trace.span
    assert last - first >= ran_for - 6.0, (last - first, ran_for)
    # The same rows as a plain zlib read of what reached the disk.
    rows = _rows_before_the_cut(samples)
    assert len(trace.samples) == len([r for r in rows[1:] if len(r) == 4])

    # The report on the killed run uses its most complete source and says which.
    out = tmp_path / "report"
    assert report_main(["report", str(samples.parent), "-o", str(out), "--no-plots"]) == 0
    (row,) = json.loads((out / "report.json").read_text())["runs"]
    assert row["partial_trace"] is True and row["energy_source"]
    with open(samples.parent / "metrics.csv") as fh:
        logged = [float(r["watt/energy_kWh"]) for r in csv.DictReader(fh) if r["watt/energy_kWh"]]
    assert row["energy_kWh"] >= max(logged) * 0.999  # never the partial trace's smaller total

    newest = max((tmp_path / "ckpt").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    stored = _watt_state(newest)
    assert stored["energy_J"] > 0

    resumed = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path), "resume"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["checkpoint"] == newest.name
    summary = result["summary"]
    # The checkpoint's energy is in the resumed run's total once, plus 300 W for the new part.
    new_part = summary["energy_J"] - stored["energy_J"]
    assert new_part == pytest.approx(300.0 * summary["duration_s"], abs=60.0, rel=0.02)
    # Lightning 2.4 repeats the batch a mid-epoch checkpoint was saved in (129 steps where 2.6
    # has 128): the books follow Lightning's own count.
    assert summary["steps"]["train"] == result["steps"] in (8 * 16, 8 * 16 + 1)
