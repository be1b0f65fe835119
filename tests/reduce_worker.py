"""The worker of ``test_host_reduce.py``: two gloo processes posing as an NCCL job. A module of
its own, importing only torch and lightning_watt, so each spawned process starts without
Lightning and the test modules (4 s less per process here)."""

from __future__ import annotations

import json

from lightning_watt.energy.trace import bundled_trace
from lightning_watt.sources import ReplaySource


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reduction_worker(rank: int, port: int, mode: str, out: str) -> None:
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
