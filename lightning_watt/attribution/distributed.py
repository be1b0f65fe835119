"""Summing energy across ranks without counting a device twice.

Every rank measures its own devices. Two ranks can see the same physical device (two processes
on one GPU, or every rank of a host reading the same CPU package through RAPL); each device is
identified by its uuid and only the lowest rank that sees it contributes it to totals.

Example:
    >>> ownership_weights([["gpu-a", "cpu-host"], ["gpu-b", "cpu-host"]], rank=1)
    [1.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def ownership_weights(keys_by_rank: Sequence[Sequence[str]], rank: int) -> list[float]:
    """1.0 for each of ``rank``'s devices that no lower rank also measures, else 0.0."""
    seen: set[str] = set()
    for r in range(rank):
        seen.update(keys_by_rank[r])
    return [0.0 if key in seen else 1.0 for key in keys_by_rank[rank]]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a list of one object outside distributed runs)."""
    if not distributed_ready():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op outside distributed runs)."""
    if distributed_ready():
        dist.barrier()


def sum_across_ranks(values: Sequence[float], device: torch.device | None = None) -> list[float]:
    """One all-reduce of a small vector (the only collective of a logging interval)."""
    if not distributed_ready():
        return [float(v) for v in values]
    backend = dist.get_backend()
    if device is None or (backend == "nccl" and device.type != "cuda"):
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else None
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()
