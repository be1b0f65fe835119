"""Step edges on the GPU's timeline without synchronising the GPU.

Lightning's batch hooks run on the host 4-12 ms ahead of the GPU (measured on H100), so host
time puts energy on the wrong steps. At each edge we record a CUDA event (asynchronous, no sync)
and resolve it later with the non-blocking ``event.query()``; its time on the meter clock is the
time of a reference event taken once at start plus ``ref.elapsed_time(event)``. On CPU-only
runs the host time is the truth.

Example:
    >>> clock = StepClock(now=lambda: 1.0, device=None)
    >>> clock.mark("train", "start", 0, epoch=0)
    >>> clock.resolve()
    [Edge(phase='train', edge='start', index=0, epoch=0, t_host=1.0, t_gpu=None)]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import repeat, starmap
from typing import Any, NamedTuple

import torch

from lightning_watt.energy.trace import StepEdge


class Edge(NamedTuple):
    """A resolved step edge: ``t_gpu`` (meter clock) when the GPU timeline is known; ``epoch``
    ``None`` where the loop has not said which epoch it belongs to (the sanity check)."""

    phase: str
    edge: str
    # The field shadows tuple.index(); callers and tests read ``edge.index`` by name.
    index: int  # type: ignore[assignment]
    epoch: int | None
    t_host: float
    t_gpu: float | None

    @property
    def t(self) -> float:
        return self.t_host if self.t_gpu is None else self.t_gpu

    def ledger_edge(self) -> tuple[str, str, int, int | None, float]:
        """The edge as :class:`~lightning_watt.attribution.ledger.EnergyLedger` books it."""
        return (self.phase, self.edge, self.index, self.epoch, self.t)

    def recorded(self) -> StepEdge:
        """The edge as a watt-trace row (no epoch: the format does not carry one)."""
        return StepEdge(self.phase, self.edge, self.index, self.t_host, self.t_gpu)


#: An :class:`Edge` as a plain tuple: ``(phase, edge, index, epoch, t_host, t_gpu)`` (the
#: books turn it into the ledger's
#: :data:`~lightning_watt.energy.edge_rows.EdgeRow`, one time instead of two).
ResolvedRow = tuple[str, str, int, "int | None", float, "float | None"]


class StepClock:
    """Marks step edges cheaply on the training thread; resolves them when the GPU got there.

    Args:
        now: the meter clock.
        device: the CUDA device the steps run on, or ``None`` for host time.
    """

    def __init__(self, now: Callable[[], float], device: torch.device | None) -> None:
        self._now = now
        self._cuda = device is not None and device.type == "cuda" and torch.cuda.is_available()
        self._device = device
        # Host time: ResolvedRow tuples (t_gpu None), taken as they are. CUDA: the row's first
        # five fields, its event and the reference it is timed against.
        self._pending: deque[tuple[Any, ...]] = deque()
        self._free: list[Any] = []
        self._ref: tuple[Any, float] = (None, 0.0)
        self.reanchor()

    def reanchor(self) -> None:
        """Pin GPU time to the meter clock again. Costs one synchronisation, so it is done at
        start and at epoch boundaries only: GPU and host clocks drift apart by parts per million
        (tens of ms per hour), which would slowly shift steps against the power readings."""
        if not self._cuda:
            return
        with torch.cuda.device(self._device):
            event = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self._device)
            event.record()
            torch.cuda.synchronize(self._device)
            self._ref = (event, self._now())

    @property
    def uses_gpu_time(self) -> bool:
        return self._cuda

    def mark(self, phase: str, edge: str, index: int, epoch: int | None) -> None:
        """Record an edge now (host) and where the GPU stream is (event); never blocks."""
        if not self._cuda:
            self._pending.append((phase, edge, index, epoch, self._now(), None))
            return
        event = self._free.pop() if self._free else torch.cuda.Event(enable_timing=True)
        event.record()
        self._pending.append((phase, edge, index, epoch, self._now(), event, self._ref))

    def resolve(self, wait: bool = False) -> list[Edge]:
        """Edges whose GPU time is known, in order. ``wait=True`` (end of a stage only) blocks
        until every recorded event has completed."""
        return [Edge(*row) for row in self.resolve_rows(wait)]

    def resolve_rows(self, wait: bool = False) -> list[ResolvedRow]:
        """:meth:`resolve` as plain tuples in :class:`Edge`'s field order (the books' refresher
        takes ~80 edges a hand-over: a named tuple per edge, and the conversions after it, cost
        a third of its time)."""
        pending = self._pending
        if not self._cuda:
            # Host time: every edge is resolved, and pending as its row. Only as many as there
            # are now are taken (the training thread may append meanwhile; a deque's ends are
            # thread-safe), popped by a C-level loop (~1300 a second at 1.5 ms steps).
            return list(starmap(pending.popleft, repeat((), len(pending))))
        out: list[ResolvedRow] = []
        while pending:
            phase, edge, index, epoch, t_host, event, (ref, ref_t) = pending[0]
            if not wait and not event.query():
                break
            if wait:
                event.synchronize()
            t_gpu = ref_t + ref.elapsed_time(event) / 1000.0
            self._free.append(event)
            pending.popleft()
            out.append((phase, edge, index, epoch, t_host, t_gpu))
        return out

    def first_pending_host(self) -> float | None:
        """Host time of the oldest unresolved edge: its GPU time is no earlier than this."""
        return self._pending[0][4] if self._pending else None

    @property
    def pending(self) -> int:
        return len(self._pending)
