"""The README's example, replayed: the score peaks after epoch 0 and EarlyStopping stops after it.

Regression test for a quick start that stopped with its best score at epoch 0: the learning curve
was nearly flat after one epoch (0.71, then 0.90), and epoch 0 replays the trace's low-power
lead-in, so a single energy ratio between two sub-second epochs decided the peak. Each run here
changes the seed (the learning curve) and the replay speed (which stretch of the recorded H200
trace each epoch is billed from).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits.py"
PATIENCE = 3


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digits_example_score", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "speed"), [(0, 1.0), (1, 0.5), (2, 3.0)])
def test_replayed_score_peaks_after_epoch_0_and_stops_after_the_peak(
    example, tmp_path, seed, speed
):
    outcome = example.main(
        ["--replay", "h200-mlp-stall", "--replay-speed", str(speed), "--seed", str(seed),
         "--patience", str(PATIENCE), "--logdir", str(tmp_path), "--no-report"]
    )  # fmt: skip
    epochs = [e for e, _, _ in outcome.epochs]
    acc = [a for _, a, _ in outcome.epochs]
    gqi = [g for _, _, g in outcome.epochs]
    shown = ", ".join(f"{e}: acc {a:.3f} gqi {g:.4g}" for e, a, g in outcome.epochs)
    assert epochs == list(range(len(epochs))), shown
    best = outcome.best_epoch
    assert gqi[best] == max(gqi), shown
    # The score rises while accuracy climbs: its peak is after epoch 0, and not by a hair.
    assert best > 0, shown
    assert gqi[0] < 0.5 * gqi[best], shown
    assert acc[best] > acc[0] + 0.2, shown
    # ... then falls: EarlyStopping(monitor="watt/gqi") stopped `patience` epochs after the peak,
    # well before max_epochs.
    assert outcome.stopped_epoch is not None, shown
    assert outcome.stopped_epoch == best + PATIENCE == epochs[-1], shown
