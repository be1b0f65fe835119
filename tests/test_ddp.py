"""Two real processes (DDP over gloo on the CPU), each replaying a different real GPU trace."""

from __future__ import annotations

import itertools
import json

import lightning.pytorch as pl
import pytest
from helpers import TinyClassifier, fit_spawned
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
    assert len(logged) >= 4 and logged[0] >= 0 and logged[-1] > 0
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


# ---------------------------------------------------------------------------- the reduction
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reduction_worker(rank: int, port: int, mode: str, out: str) -> None:
    """One of two gloo processes posing as an NCCL job: the default group reports ``"nccl"``
    (a fake: gloo underneath, so the test runs on CPUs), and every collective that would need
    a tensor on the default group's device is recorded."""
    import os
    import warnings

    import torch
    import torch.distributed as dist

    from lightning_watt.attribution import distributed as d
    from lightning_watt.attribution.accountant import EnergyAccountant
    from lightning_watt.energy.meter import EnergyMeter

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    real_backend = dist.get_backend
    dist.get_backend = lambda group=None: "nccl" if group is None else real_backend(group)  # type: ignore[assignment]
    on_device: list[str] = []  # collectives whose tensor would sit on the GPU's stream

    def device_tensor_here(device):
        on_device.append("collective")
        return None  # the fake's default group lives on the CPU

    d._default_group_device = device_tensor_here  # type: ignore[assignment]
    tried: list[int] = []

    def no_gloo(*args, **kwargs):
        tried.append(rank)
        raise RuntimeError("gloo is not built into this torch")

    if mode == "no gloo":
        dist.new_group = no_gloo  # type: ignore[assignment]
    elif mode == "opted out on rank 1":
        dist.new_group = no_gloo  # type: ignore[assignment]  # must not even be tried
        if rank == 1:
            os.environ[d.HOST_REDUCE_ENV] = "0"
    source = ReplaySource(bundled_trace("h200-mlp-stall"), start=10.0, uuid_prefix=f"r{rank}")
    books = EnergyAccountant()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        books.begin("fit", EnergyMeter([source]), torch.device("cpu"), rank=rank, world_size=2)
        made = len(on_device)
        group = d.host_group()
        sums = [d.sum_across_ranks([rank + 1.0, 0.5]) for _ in range(3)]
        for step in range(3):
            books.mark("train", "start", step, 0)
            books.mark("train", "end", step, 0)
            books.log_values()
        books.finish()
    result = {
        "made": made,
        "per_row": len(on_device) - made,
        "separate": group is not None and group is not dist.group.WORLD,
        "backend": real_backend(group) if group is not None else None,
        "same": d.host_group() is group,
        "sums": sums,
        "warned": [str(w.message) for w in caught if "gloo group" in str(w.message)],
        "tried": tried,
    }
    dist.destroy_process_group()
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump(result, fh)


def _reduce_in_two_processes(tmp_path, mode: str) -> list[dict]:
    import torch.multiprocessing as mp

    mp.start_processes(
        _reduction_worker,
        args=(_free_port(), mode, str(tmp_path)),
        nprocs=2,
        start_method="spawn",
    )
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_log_rows_reduce_on_a_host_group_under_nccl(tmp_path):
    """Under NCCL a log row's sum goes through a gloo group made once at ``begin``: no tensor
    on the GPU, so no wait for its queue; only the group's creation agrees on the device."""
    for rank, r in enumerate(_reduce_in_two_processes(tmp_path, "nccl")):
        assert r["separate"] and r["backend"] == "gloo" and r["same"], r
        assert r["made"] == 2, r  # the ranks agreed to make it, then that every one did
        assert r["per_row"] == 0, r  # 3 sums and 3 log rows, none on the default group
        assert r["sums"] == [[3.0, 1.0]] * 3
        assert r["warned"] == [], rank


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "why"), [("no gloo", "RuntimeError: gloo"), ("opted out on rank 1", "HOST_REDUCE=0")]
)
def test_without_a_host_group_the_rows_fall_back_with_a_warning(tmp_path, mode, why):
    """Where gloo fails, or one rank opts out, every rank falls back (never a mix: a rank
    alone in a collective waits for its timeout) and rank zero says rows now synchronise."""
    ranks = _reduce_in_two_processes(tmp_path, mode)
    for r in ranks:
        assert r["backend"] is None, r
        assert r["per_row"] == 6, r  # every sum and log row on the default group
        assert r["sums"] == [[3.0, 1.0]] * 3
    if mode == "no gloo":
        assert [r["made"] for r in ranks] == [2, 2] and [r["tried"] for r in ranks] == [[0], [1]]
    else:  # agreed not to try: nobody waits in a group made by half the ranks
        assert [r["made"] for r in ranks] == [1, 1] and [r["tried"] for r in ranks] == [[], []]
    (warning,) = ranks[0]["warned"]
    assert why in warning and "synchronisation per log row" in warning
    assert ranks[1]["warned"] == []  # said once, by rank zero
