"""The README's Fabric loop, on the CPU with a replayed GPU: EnergyAccountant without Lightning's
Trainer gives per-step, per-epoch and per-run energy that adds up."""

from __future__ import annotations

import itertools
import time

import lightning as L
import pytest
import torch
from helpers import blobs
from torch import nn
from torch.utils.data import DataLoader

from lightning_watt import EnergyAccountant, EnergyMeter, ReplaySource, bundled_trace


def test_fabric_loop_with_the_accountant(tmp_path):
    fabric = L.Fabric(accelerator="cpu", devices=1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(DataLoader(blobs(256), batch_size=16))

    books = EnergyAccountant()
    replay = ReplaySource(bundled_trace("h200-mlp-stall"), start=10.0, speed=2.0)
    meter = EnergyMeter([replay], record=str(tmp_path / "watt_trace"))
    books.begin("fit", meter, fabric.device, rank=fabric.global_rank, world_size=fabric.world_size)
    rows, epochs = [], []
    for epoch in range(2):
        for step, (x, y) in enumerate(loader):
            books.mark("train", "start", step, epoch)
            loss = nn.functional.cross_entropy(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            time.sleep(0.02)  # a step of a size GPUs take, so epochs outlast the readers' lag
            books.mark("train", "end", step, epoch)
            if step % 4 == 3:
                rows.append(books.log_values())
        epochs.append(books.epoch_end(epoch))
    summary = books.finish()

    assert summary["steps"]["train"] == 2 * len(loader)
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1]
    assert sum(summary["phases_J"].values()) == pytest.approx(summary["energy_J"], rel=1e-9)
    assert summary["run_energy_J"] == pytest.approx(summary["energy_J"], rel=1e-9)
    assert all(b.energy_kWh >= a.energy_kWh for a, b in itertools.pairwise(rows))
    # A row counts energy up to the newest reading; its unfinalized last ~0.3 s is the power
    # shape times the counter's recent calibration, which can run a few per cent high.
    assert rows[-1].energy_kWh <= summary["energy_kWh"] * 1.05
    # Live epoch values count what was measured by the epoch's end (readings lag up to 0.5 s);
    # the summary's rows are final.
    assert sum(e.train_J for e in epochs) > 0
    assert epochs[-1].energy_kWh <= summary["energy_kWh"] * 1.05
    assert all(row["train_J"] > 0 for row in summary["epochs"])
    assert books.energy_kwh == pytest.approx(summary["energy_kWh"], rel=1e-9)
    assert (tmp_path / "watt_trace.meta.json").exists()
