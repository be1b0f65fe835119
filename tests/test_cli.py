"""WattCallback configured from LightningCLI YAML (jsonargparse), the way users write it."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os

import pytest
from helpers import TinyClassifier
from lightning.pytorch.cli import LightningCLI

from lightning_watt.integration.callback import WattCallback

CONFIG = """\
seed_everything: 0
model:
  step_sleep: 0.02  # 16 steps span a few of the meter's 100 ms polls
trainer:
  accelerator: cpu
  max_epochs: 1
  log_every_n_steps: 50  # Lightning's default, coarser than the callback's own cadence below
  enable_progress_bar: false
  enable_model_summary: false
  enable_checkpointing: false
  default_root_dir: {root}
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args:
      save_dir: {root}
      name: cli
  callbacks:
    - class_path: {class_path}
      init_args:
{init_args}
"""

INIT_ARGS = {
    "replay": "h200-mlp-stall",
    "log_every_n_steps": 2,
    "score_from": "val_acc",
    "prefix": "watt/",
    "record": False,
}


def _config(
    tmp_path, class_path="lightning_watt.integration.callback.WattCallback", **overrides
) -> str:
    init_args = {**INIT_ARGS, **overrides}
    path = tmp_path / "config.yaml"
    path.write_text(
        CONFIG.format(
            root=json.dumps(str(tmp_path)),  # a JSON string is a quoted YAML scalar
            class_path=class_path,
            init_args="\n".join(f"        {k}: {json.dumps(v)}" for k, v in init_args.items()),
        ),
        encoding="utf-8",
    )
    return str(path)


def _watt(cli: LightningCLI) -> WattCallback:
    found = [c for c in cli.trainer.callbacks if isinstance(c, WattCallback)]
    assert len(found) == 1, cli.trainer.callbacks
    return found[0]


def test_fit_from_yaml_builds_the_callback_and_logs_energy(tmp_path):
    cli = LightningCLI(TinyClassifier, args=["fit", "--config", _config(tmp_path)])
    cb = _watt(cli)
    assert cb.log_every_n_steps == 2
    assert cb.score_from == "val_acc"
    assert cb.prefix == "watt/"
    assert cb.record is False
    assert [os.path.basename(p) for p in cb._replay] == ["h200-mlp-stall"]
    assert cb.last_summary is not None and cb.last_summary["replay"] == "h200-mlp-stall"

    with open(f"{cli.trainer.log_dir}/metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert "watt/gqi" in rows[0]
    # Tick rows (with power); the fit's last row, the final total, has energy alone.
    energy = [(int(r["step"]), float(r["watt/energy_kWh"])) for r in rows if r.get("watt/power_W")]
    # The callback's own cadence (every 2 steps) holds although the Trainer logs every 50: one
    # fresh row per tick, not a stale value re-sent at the Trainer's cadence (or none at all).
    assert cli.trainer.global_step == 16
    # Every tick, on any machine: ticks at least 40 ms apart (two steps of 20 ms of sleep)
    # never outpace the books' 25 ms refreshes, so no row is dropped as a repeat.
    assert len(energy) == cli.trainer.global_step // 2
    steps = [s for s, _ in energy]
    assert steps == sorted(set(steps))
    kwh = [e for _, e in energy]
    # Each tick counts the energy measured so far: it grows as readings arrive (the driver
    # buffer is drained every 0.5 s, so ticks closer than that may repeat a value).
    assert all(math.isfinite(e) and e >= 0 for e in kwh), energy
    assert all(b >= a for a, b in itertools.pairwise(kwh)), energy
    assert kwh[-1] > kwh[0] and len(set(kwh)) >= 2, energy


@pytest.mark.parametrize(
    "class_path",
    [
        "lightning_watt.integration.callback.WattCallback",
        "WattCallback",  # jsonargparse resolves the short name of an imported Callback subclass
        "lightning_watt.WattCallback",  # the top-level export
    ],
)
def test_class_paths_resolve(tmp_path, class_path):
    cli = LightningCLI(
        TinyClassifier, args=["--config", _config(tmp_path, class_path=class_path)], run=False
    )
    cb = _watt(cli)
    assert (cb.log_every_n_steps, cb.score_from, cb.prefix) == (2, "val_acc", "watt/")
    assert cb.alpha == 5.0 and cb.form == "scale_free"  # untouched arguments keep their defaults


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("log_every_n_steps", 0, "log_every_n_steps must be a positive integer"),
        ("log_every_n_steps", "two", "log_every_n_steps"),  # rejected by the type, before init
        ("replay", "no-such-trace", "replay: 'no-such-trace'"),
        ("form", "exact", "form must be one of"),
        ("alpha", -1, "alpha must be a number in (0, 100]"),
    ],
)
def test_invalid_value_fails_naming_the_argument(tmp_path, capsys, key, value, message):
    config = _config(tmp_path, **{key: value})
    with pytest.raises((ValueError, SystemExit)) as info:
        LightningCLI(TinyClassifier, args=["--config", config], run=False)
    # jsonargparse raises the constructor's ValueError, or exits with the parser error on stderr.
    said = f"{info.value}\n{capsys.readouterr().err}"
    assert message in said
