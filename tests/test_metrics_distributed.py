"""GreenQuotientIndex synchronised across two real processes (gloo on the CPU) equals the
single-process value. Apart from ``test_metrics.py`` because it imports no Lightning: the
oldest-Lightning CI run skips it (``lightning_free.py``)."""

from __future__ import annotations

import datetime
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from reduce_worker import free_port
from test_metrics import FractionCorrect, _accuracy, _data, _gqi

from lightning_watt.attribution.context import energy_provider
from lightning_watt.score.functional import green_quotient_index
from lightning_watt.score.metrics import GreenQuotientIndex


def _distributed_worker(
    rank: int, world_size: int, port: int, preds: torch.Tensor, target: torch.Tensor, expected
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        # Uneven shards: rank 0 sees 25 samples, rank 1 sees 15 (states must add, not average).
        sl = slice(0, 25) if rank == 0 else slice(25, None)
        p, t = preds[sl], target[sl]

        same_total = _gqi(energy_reduction="max")
        same_total.update(p, t, energy_kwh=0.5)
        assert math.isclose(same_total.compute().item(), expected, rel_tol=1e-5)
        # compute() restores the local state afterwards, so accumulation can go on.
        assert int(same_total.accuracy_tp.sum()) == int((p == t).sum())

        shares = _gqi(energy_reduction="sum")
        shares.update(p, t, energy_kwh=(0.2, 0.3)[rank])
        assert math.isclose(shares.compute().item(), expected, rel_tol=1e-5)

        custom = GreenQuotientIndex(accuracy=FractionCorrect())
        custom.update(p, t, energy_kwh=0.5)
        assert math.isclose(custom.compute().item(), expected, rel_tol=1e-5)

        # No energy passed anywhere (or a share missing on one process): the run's energy.
        from_run = _gqi(energy_reduction="sum")
        from_run.update(p, t, energy_kwh=0.2 if rank == 0 else None)
        with energy_provider(lambda: 0.5):
            assert math.isclose(from_run.compute().item(), expected, rel_tol=1e-5)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two fresh interpreters import torch and torchmetrics (~5 s)
def test_distributed_sync_matches_single_process() -> None:
    preds, target = _data()
    expected = green_quotient_index(_accuracy(preds, target), 0.5)
    single = _gqi()
    single.update(preds, target, energy_kwh=0.5)
    assert single.compute().item() == pytest.approx(expected, rel=1e-5)
    mp.spawn(
        _distributed_worker,
        args=(2, free_port(), preds, target, expected),
        nprocs=2,
        join=True,
    )
