"""DDP with one rank whose GPU is lost: the merged summary shows that device's unmeasured span
and estimate, the other rank's device stays measured, and the total is right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import subprocess_env

WORKER = Path(__file__).with_name("ddp_lost_worker.py")


@pytest.mark.slow
def test_one_rank_losing_its_gpu_is_estimated_and_reported(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path)],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "result.json").read_text())
    assert summary["world_size"] == 2
    by_rank = {d["rank"]: d for d in summary["devices"]}
    assert by_rank[0]["unmeasured_s"] == 0.0 and by_rank[0]["method"] == "counter+buffer_W"
    lost = by_rank[1]
    assert "GPU is lost" in lost["unmeasured_reason"]
    assert 0.3 * summary["duration_s"] < lost["unmeasured_s"] < summary["duration_s"]
    assert lost["unmeasured_J"] == pytest.approx(300.0 * lost["unmeasured_s"], rel=0.05)
    assert summary["unmeasured_J"] == pytest.approx(lost["unmeasured_J"])
    # Two GPUs at 300 W for the whole fit, within two counter updates each and 1 %.
    truth = 2 * 300.0 * summary["duration_s"]
    assert abs(summary["energy_J"] - truth) <= 2 * 60.0 + 0.01 * truth
    rank1 = json.loads((tmp_path / "warnings.rank1.json").read_text())
    assert len([m for m in rank1 if "is no longer measured" in m]) == 1
    rank0 = json.loads((tmp_path / "warnings.rank0.json").read_text())
    assert not [m for m in rank0 if "no longer measured" in m]
