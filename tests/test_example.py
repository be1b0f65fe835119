"""The README's example, at a tiny size: trains, logs watt/ keys, writes the PNG report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits.py"


def test_digits_example_main_path(tmp_path):
    spec = importlib.util.spec_from_file_location("digits_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    outcome = module.main(
        ["--replay", "h200-mlp-stall", "--max-epochs", "2", "--limit", "300",
         "--logdir", str(tmp_path)]
    )  # fmt: skip
    watt = outcome.watt
    run = tmp_path / "digits" / "version_0"
    summary = json.loads((run / "watt_summary.json").read_text())
    assert summary["replay"] == "h200-mlp-stall"
    assert summary["energy_J"] > 0 and summary is not None and watt.last_summary is not None
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1]
    assert "val_acc" in summary["epochs"][-1]["metrics"]
    pngs = sorted(p.name for p in (run / "report").rglob("*.png"))
    assert pngs == ["energy.png", "epoch_energy.png", "power.png", "score.png"]
    assert all(p.stat().st_size > 20_000 for p in (run / "report").rglob("*.png"))
    assert list(run.glob("events.out.tfevents.*"))
