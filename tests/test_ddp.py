"""Two real processes (DDP over gloo on the CPU), each replaying a different real GPU trace."""

from __future__ import annotations

import itertools
import json

import lightning.pytorch as pl
import pytest
from helpers import TinyClassifier, fit_spawned, rows_on_any_machine
from lightning.pytorch.loggers import CSVLogger

from lightning_watt.energy.trace import bundled_trace, load_trace
from lightning_watt.integration.callback import WattCallback
from lightning_watt.sources import ReplaySource


def _fit(tmp_path, callback: WattCallback) -> dict:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        callbacks=[callback],
        logger=CSVLogger(tmp_path, name="ddp"),
        log_every_n_steps=2,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    fit_spawned(trainer, TinyClassifier(step_sleep=0.01))
    run = tmp_path / "ddp" / "version_0"
    return {"summary": json.loads((run / "watt_summary.json").read_text()), "dir": run}


@pytest.mark.slow
def test_total_is_the_sum_of_both_ranks_traces(tmp_path):
    out = _fit(tmp_path, WattCallback(replay=["h200-mlp-stall", "h100-mlp"]))
    summary, run = out["summary"], out["dir"]
    assert summary["world_size"] == 2
    assert sorted((d["rank"], d["counted"]) for d in summary["devices"]) == [(0, True), (1, True)]
    # Each rank recorded what it read; their energies over each rank's run add up to the total.
    per_rank = []
    for rank in (0, 1):
        trace = load_trace(run / f"watt_trace.rank{rank}")
        per_rank.append(sum(trace.timeline().energy_between(*trace.fit_window).values()))
    assert summary["energy_J"] == pytest.approx(sum(per_rank), rel=0.01)
    device_j = {d["rank"]: d["energy_J"] for d in summary["devices"]}
    assert device_j[0] == pytest.approx(per_rank[0], rel=0.01)
    assert device_j[1] == pytest.approx(per_rank[1], rel=0.01)
    # Steps and gaps of both ranks add up to the devices' total.
    assert sum(summary["phases_J"].values()) == pytest.approx(summary["energy_J"], rel=1e-9)
    # The logged cumulative energy (all ranks, live) grows and never passes the final total
    # (its last value comes from the last log step, before the final validation and teardown).
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    col = header.index("watt/energy_kWh")
    logged = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    # (A first tick before any reading logs 0: ticks count measured energy only.)
    # 8 ticks (16 steps a rank, every 2): at least 4 rows at any pace, and the final total.
    assert len(logged) >= rows_on_any_machine(8) and logged[0] >= 0 and logged[-1] > 0
    assert all(b >= a for a, b in itertools.pairwise(logged))
    assert logged[-1] <= summary["energy_kWh"] * 1.05


@pytest.mark.slow
def test_a_device_seen_by_two_ranks_is_counted_once(tmp_path):
    shared = ReplaySource(bundled_trace("h200-mlp-stall"), start=10.0, uuid_prefix="same-gpu")
    out = _fit(tmp_path, WattCallback(sources=[shared]))
    summary = out["summary"]
    counted = [d for d in summary["devices"] if d["counted"]]
    assert len(summary["devices"]) == 2 and len(counted) == 1
    assert counted[0]["rank"] == 0
    assert summary["energy_J"] == pytest.approx(counted[0]["energy_J"], rel=1e-9)


@pytest.mark.slow
def test_resume_in_ddp_keeps_both_segments(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(max_epochs: int, ckpt_path=None) -> dict:
        trainer = pl.Trainer(
            accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=max_epochs,
            callbacks=[WattCallback(replay=["h200-mlp-stall", "h100-mlp"], record=False),
                       ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
            logger=CSVLogger(tmp_path, name="ddp"), log_every_n_steps=2,
            enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        fit_spawned(trainer, TinyClassifier(step_sleep=0.01), ckpt_path=ckpt_path)
        version = sorted((tmp_path / "ddp").glob("version_*"))[-1]
        return json.loads((version / "watt_summary.json").read_text())

    first = fit(1)
    second = fit(2, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert [e["epoch"] for e in second["epochs"]] == [0, 1]
    assert second["energy_J"] > second["segment_energy_J"] > 0
    # The first segment as checkpointed (all ranks, at its last reduction) is carried over.
    carried = second["energy_J"] - second["segment_energy_J"]
    assert 0.5 * first["energy_J"] <= carried <= first["energy_J"] * 1.3
    assert sum(second["phases_J"].values()) == pytest.approx(second["energy_J"], rel=1e-9)
