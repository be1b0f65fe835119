"""Summing energy across ranks without counting a device twice, and without a GPU sync.

Every rank measures its own devices. Two ranks can see the same physical device (two processes
on one GPU, or every rank of a host reading the same CPU package through RAPL); each device is
identified by its uuid and only the lowest rank that sees it contributes it to totals.

A log row's numbers are summed on the host: under NCCL a small gloo group over the same ranks
carries them (:func:`host_group`), because an NCCL all-reduce puts them on the GPU's stream and
reading the result back waits for every kernel queued before it, a device synchronisation per
log row.

Example:
    >>> ownership_weights([["gpu-a", "cpu-host"], ["gpu-b", "cpu-host"]], rank=1)
    [1.0, 0.0]
    >>> sum_across_ranks([1.5, 2.0])  # one process: nothing to reduce
    [1.5, 2.0]
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

#: Backends whose collectives take CPU tensors: the default group sums a log row on the host.
HOST_BACKENDS = ("gloo", "mpi", "ucc")
#: Set to ``0`` (on any rank) to sum log rows on the default group even under NCCL: for a
#: cluster whose hosts gloo cannot connect (its sockets use the interface the host name
#: resolves to, or ``GLOO_SOCKET_IFNAME``), where making the group would wait for its timeout.
HOST_REDUCE_ENV = "LIGHTNING_WATT_HOST_REDUCE"

# Weak references to (the default group it was made for, the host group, or None where none
# could be made): a module-level strong reference kept a destroyed process group alive until
# interpreter exit, where its destructor's threads aborted the process now and then.
_host: tuple[weakref.ref[Any], weakref.ref[Any] | None] | None = None


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


def _takes_cpu_tensors(backend: str) -> bool:
    # "cpu:gloo,cuda:nccl" (a group with a backend per device type) takes them too.
    return any(name in backend for name in HOST_BACKENDS)


def _default_group_device(device: torch.device | None) -> torch.device | None:
    """Where a tensor for the default group's collectives must live (``None``: the CPU)."""
    backend = str(dist.get_backend())
    if backend == "nccl" and (device is None or device.type != "cuda"):
        return torch.device("cuda", torch.cuda.current_device())
    return None if _takes_cpu_tensors(backend) else device


def host_group(device: torch.device | None = None) -> Any | None:
    """The process group that sums a log row's CPU tensors across every rank.

    The default group where its backend takes CPU tensors (gloo, MPI, UCC); under a
    device-only backend (NCCL), a gloo group over the same ranks, made on the first call and
    kept for as long as the default group lives. ``None`` outside distributed runs, or when
    that gloo group could not be made on every rank, or :data:`HOST_REDUCE_ENV` is ``0`` on
    one (the ranks agree; each log row then reduces on the default group, and a warning says
    that it synchronises).

    The first call under NCCL is a collective: every rank must make it at the same point
    (:meth:`~lightning_watt.attribution.accountant.EnergyAccountant.begin` does, with
    ``device`` the rank's CUDA device, where the ranks agree: two small all-reduces, once).
    """
    global _host
    if not distributed_ready():
        return None
    world = dist.group.WORLD
    if _host is not None and _host[0]() is world:
        # Made (or refused) once per default group: never a second, one-rank collective.
        return _host[1]() if _host[1] is not None else None
    backend = str(dist.get_backend())
    if _takes_cpu_tensors(backend):
        return world
    group: Any = None
    problem = f"{HOST_REDUCE_ENV}=0 on a rank"
    # Every rank makes the group or none does (a rank alone in new_group waits for the others
    # until its timeout), and a group some ranks could not make is used by none.
    if _every_rank(os.environ.get(HOST_REDUCE_ENV, "1").strip() != "0", device):
        try:
            group = dist.new_group(backend="gloo")
            problem = ""
        except Exception as err:  # gloo not built in, or its sockets cannot connect the ranks
            problem = f"{type(err).__name__}: {err}"
        if not _every_rank(group is not None, device):
            group = None
            problem = problem or "a rank could not make it"
    if group is None and dist.get_rank() == 0:
        warnings.warn(
            f"lightning-watt: no gloo group for the log rows' reduction ({problem}); each log "
            f"row reduces on the {backend} group instead, which waits for the GPU's queue (a "
            "device synchronisation per log row).",
            RuntimeWarning,
            stacklevel=2,
        )
    _host = (weakref.ref(world), weakref.ref(group) if group is not None else None)
    return group


def _every_rank(ok: bool, device: torch.device | None) -> bool:
    """Whether ``ok`` holds on every rank (a collective on the default group)."""
    flag = torch.tensor([1.0 if ok else 0.0], device=_default_group_device(device))
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() >= 1.0)


def sum_across_ranks(values: Sequence[float], device: torch.device | None = None) -> list[float]:
    """One all-reduce of a small vector (the only collective of a logging interval), on the
    host: no GPU stream is touched, so it waits for the other ranks and not for the GPU."""
    if not distributed_ready():
        return [float(v) for v in values]
    group = host_group(device)
    on = None if group is not None else _default_group_device(device)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=on)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor.tolist()
