"""Attributing energy to steps, phases and epochs: pure bookkeeping, no Lightning.

The run's time is cut at every step edge into consecutive intervals: from a ``start`` edge to
the next edge the interval belongs to that edge's phase (``train``, ``val``, ...); every other
interval (data loading, checkpointing, stalls, idle) is a ``gap``. Because the intervals tile
``[start, end]`` and energy is additive, phase totals add up exactly to the devices' total.

An edge whose epoch is ``None`` (the sanity check, which runs before the loop says which epoch
it is about to train) leaves its energy, and the gaps around it, unassigned until the next edge
that names an epoch: start-up costs belong to the first epoch a segment trains, not to the
epoch a checkpoint was saved in.

Example:
    >>> ledger = EnergyLedger(start=0.0)
    >>> energy = lambda t0, t1: 100.0 * (t1 - t0)   # a constant 100 W
    >>> ledger.add_edges([("train", "start", 0, 0, 1.0), ("train", "end", 1, 0, 2.0)])
    >>> ledger.advance(3.0, energy)
    >>> ledger.phases
    {'gap': 200.0, 'train': 100.0}
"""

from __future__ import annotations

import copy
import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import reduce

from lightning_watt.energy.edge_rows import EPOCH, INDEX, EdgeRow, paired_times

GAP = "gap"

EnergyFn = Callable[[float, float], float]

#: Phases of the stage's own steps; everything else in an epoch is its gap energy.
STEP_PHASES = ("train", "val")


def gap_joules(phases: dict[str, float]) -> float:
    """An epoch's joules outside its train and validation steps: gaps, the sanity check, a
    tuner's trials. With ``train`` and ``val`` it adds up to the epoch's total."""
    return sum(v for k, v in phases.items() if k not in STEP_PHASES)


#: ``(phase, edge, index, epoch, t)``: ``epoch`` ``None`` where the loop has not said it yet
#: (:data:`~lightning_watt.energy.edge_rows.EdgeRow`).
LedgerEdge = EdgeRow
_OPENED = (0.0).__add__


class Cumulative:
    """An :data:`EnergyFn` that is the difference of one cumulative energy: ``known`` at some
    times (looked up in one batch), ``more(t)`` at any other. The ledger reads ``known``
    directly when it books steps in bulk.

    Example:
        >>> energy = Cumulative({1.0: 10.0, 2.0: 25.0}, more=lambda t: 10.0 * t)
        >>> energy(1.0, 2.0), energy(2.0, 3.0)
        (15.0, 5.0)
    """

    __slots__ = ("_more", "known")

    def __init__(self, known: dict[float, float], more: Callable[[float], float]) -> None:
        self.known = known
        self._more = more

    def __call__(self, t0: float, t1: float) -> float:
        known = self.known
        try:  # the ledger asks at the times given: no call per lookup
            return known[t1] - known[t0]
        except KeyError:
            return self.at(t1) - self.at(t0)

    def at(self, t: float) -> float:
        e = self.known.get(t)
        if e is None:
            e = self.known[t] = self._more(t)
        return e


@dataclass
class EpochEnergy:
    """Joules per phase within one epoch, and its train steps."""

    epoch: int
    phases: dict[str, float] = field(default_factory=dict)
    train_steps: int = 0

    def total(self) -> float:
        return sum(self.phases.values())


class EnergyLedger:
    """Running attribution of energy to phases, steps and epochs.

    Edges are ``(phase, edge, index, epoch, t)`` tuples in order. ``advance(until, energy)``
    attributes every interval up to ``until`` using ``energy(t0, t1)`` (joules); only call it
    with times whose energy is final if the numbers must never change.
    """

    def __init__(self, start: float) -> None:
        self.cursor = start
        self.start = start
        self._edges: list[LedgerEdge] = []
        self._open_phase: str | None = None
        self._epoch: int | None = None
        # Energy booked while no epoch was known yet: (phase -> J), moved to the first epoch named.
        self.unassigned: dict[str, float] = {}
        self.phases: dict[str, float] = {}
        self.steps: dict[str, int] = {}
        self.epochs: dict[int, EpochEnergy] = {}
        self.step_energies: list[tuple[int, float]] = []  # (global step, J) of recent train steps
        self._open_energy = 0.0

    def add_edges(self, edges: Iterable[LedgerEdge]) -> None:
        self._edges.extend(edges)

    def _book(self, label: str, joules: float, epoch: int | None) -> None:
        self.phases[label] = self.phases.get(label, 0.0) + joules
        if epoch is None:
            self.unassigned[label] = self.unassigned.get(label, 0.0) + joules
            return
        if self.unassigned:
            self.assign_unassigned(epoch)
        ep = self.epochs.get(epoch) or self._epoch_energy(epoch)
        ep.phases[label] = ep.phases.get(label, 0.0) + joules

    def _epoch_energy(self, epoch: int) -> EpochEnergy:
        # Booked twice per step edge by the books' thread: no record built just to be dropped,
        # as setdefault(epoch, EpochEnergy(epoch)) would.
        ep = self.epochs.get(epoch)
        if ep is None:
            ep = self.epochs[epoch] = EpochEnergy(epoch)
        return ep

    def assign_unassigned(self, epoch: int) -> None:
        """Give energy still waiting for an epoch to ``epoch`` (the first epoch named, or the
        end of a stage)."""
        if self.unassigned:
            ep = self.epochs.setdefault(epoch, EpochEnergy(epoch))
            for k, v in self.unassigned.items():
                ep.phases[k] = ep.phases.get(k, 0.0) + v
            self.unassigned = {}

    def times_until(self, until: float) -> list[float]:
        """The times :meth:`advance` would evaluate energy at, to fetch them in one batch."""
        last = self.cursor
        times = [last]
        for edge in self._edges:
            t = edge[4]
            if t > until:
                break
            if t > last:
                times.append(t)
                last = t
        if until > last:
            times.append(until)
        return times if len(times) > 1 else []

    def waiting(self, until: float) -> bool:
        """Whether an edge waits to be booked up to ``until`` (with :meth:`times_until` empty,
        :meth:`advance` books nothing else)."""
        return bool(self._edges) and self._edges[0][4] <= until

    def chunk_end(self, until: float, max_edges: int) -> float:
        """Where to stop so that :meth:`advance` books at most about ``max_edges`` edges (more
        only where edges share a time): ``until``, or the time of the ``max_edges``-th edge
        waiting before it. Advancing in such chunks books exactly what one call would."""
        edges = self._edges
        if len(edges) > max_edges and edges[max_edges - 1][4] < until:
            return edges[max_edges - 1][4]
        return until

    def advance(self, until: float, energy: EnergyFn) -> None:
        """Attribute everything up to ``until`` (edges past it wait for the next call)."""
        n = 0
        for row in self._edges:
            if row[4] > until:
                break
            n += 1
        if n and self._open_phase is not None and self._edges[0][1] != "start":
            self._book_each(1, energy)  # the end of a step an earlier call left open
            n -= 1
        if not self._book_steps(n, energy):
            self._book_each(n, energy)
        if until > self.cursor:
            self._close(until, energy, self._epoch)

    def _book_steps(self, n: int, energy: EnergyFn) -> bool:
        """:meth:`_book_each` in bulk for the common case, if it is one (returns whether):
        nothing open or unassigned, and the next ``n`` edges are steps of one phase and one
        epoch that each start and end in turn, after the cursor (the books' refresher meets
        ~80 of them a hand-over). The same joules in the same order (``reduce`` adds left to
        right, as the loop does), so the same floats."""
        if n < 2 or self._open_phase is not None or self.unassigned:
            return False
        rows = self._edges[:n]
        times = paired_times(rows)
        epoch = rows[0][3]
        if (
            times is None
            or not times[0] > self.cursor
            or epoch is None
            or list(map(EPOCH, rows)).count(epoch) != n
        ):
            return False
        phase = rows[0][0]
        joules = _joules(energy, self.cursor, times)
        gaps, steps = joules[0::2], joules[1::2]
        ep = self._epoch_energy(epoch)
        for booked in (self.phases, ep.phases):
            booked[GAP] = reduce(operator.add, gaps, booked.get(GAP, 0.0))
            booked[phase] = reduce(operator.add, steps, booked.get(phase, 0.0))
        self.steps[phase] = self.steps.get(phase, 0) + len(steps)
        opened = list(map(_OPENED, steps))  # what a step's energy is: 0.0 + its joules
        if phase == "train":
            ep.train_steps += len(steps)
            self.step_energies.extend(zip(map(INDEX, rows[1::2]), opened, strict=True))
        self.cursor, self._epoch = times[-1], epoch
        if n % 2:
            self._open_phase, self._open_energy = phase, 0.0
        else:
            self._open_phase, self._open_energy = None, opened[-1]
        del self._edges[:n]
        return True

    def _book_each(self, n: int, energy: EnergyFn) -> None:
        """Book the next ``n`` edges one by one."""
        # Run for every step edge by the books' thread: the cursor and the open phase live in
        # locals while the edges are booked (written back at the end), and _book is inlined
        # for the common case (an epoch named, nothing unassigned).
        phases, steps, epochs = self.phases, self.steps, self.epochs
        cursor, open_phase, open_epoch = self.cursor, self._open_phase, self._epoch
        open_energy = self._open_energy
        ep_key: int | None = None
        ep_phases: dict[str, float] = {}
        i = 0
        try:
            for phase, edge, index, epoch, t in itertools.islice(self._edges, n):
                if t > cursor:  # _close, inlined
                    joules = energy(cursor, t)
                    label, book_epoch = (open_phase, open_epoch) if open_phase else (GAP, epoch)
                    if open_phase:
                        open_energy += joules
                    if book_epoch is None or self.unassigned:
                        self._book(label, joules, book_epoch)
                        ep_key = None  # assign_unassigned may have made an epoch's record
                    else:
                        phases[label] = phases.get(label, 0.0) + joules
                        if book_epoch != ep_key:
                            ep_key = book_epoch
                            ep_phases = (
                                epochs.get(book_epoch) or self._epoch_energy(book_epoch)
                            ).phases
                        ep_phases[label] = ep_phases.get(label, 0.0) + joules
                    cursor = t
                if edge == "start":
                    open_phase = phase
                    open_epoch = epoch
                    open_energy = 0.0
                else:
                    if open_phase == phase:
                        steps[phase] = steps.get(phase, 0) + 1
                        if phase == "train":
                            if epoch is not None:
                                (epochs.get(epoch) or self._epoch_energy(epoch)).train_steps += 1
                            self.step_energies.append((index, open_energy))
                    open_phase = None
                    open_epoch = epoch
                i += 1
        finally:
            # Written back even if a lookup failed: what was booked stays booked, once.
            del self._edges[:i]
            self.cursor, self._open_phase, self._epoch = cursor, open_phase, open_epoch
            self._open_energy = open_energy

    def _close(self, t: float, energy: EnergyFn, epoch: int | None) -> None:
        if t <= self.cursor:
            return
        joules = energy(self.cursor, t)
        label = self._open_phase or GAP
        self._book(label, joules, self._epoch if self._open_phase else epoch)
        if self._open_phase:
            self._open_energy += joules
        self.cursor = t

    def preview(self, until: float, energy: EnergyFn) -> EnergyLedger:
        """A copy advanced to ``until`` (e.g. with provisional energy), leaving this one as is."""
        # A shallow copy of the containers is enough (their items are immutable, except the
        # per-epoch records, copied one by one): a deepcopy per log tick cost ~0.3 ms.
        clone = copy.copy(self)
        clone._edges = list(self._edges)
        clone.phases = dict(self.phases)
        clone.steps = dict(self.steps)
        clone.epochs = {
            e: EpochEnergy(e, dict(ep.phases), ep.train_steps) for e, ep in self.epochs.items()
        }
        clone.step_energies = list(self.step_energies)
        clone.unassigned = dict(self.unassigned)
        clone.advance(until, energy)
        return clone

    def total(self) -> float:
        return sum(self.phases.values())

    def take_step_energies(self) -> list[tuple[int, float]]:
        out, self.step_energies = self.step_energies, []
        return out


def _joules(energy: EnergyFn, cursor: float, times: list[float]) -> list[float]:
    """``energy`` over ``[cursor, times[0]]`` and between consecutive ``times``: the same
    differences, C-level where the cumulative energy is known at every time."""
    ends = [cursor, *times]
    if isinstance(energy, Cumulative):
        try:
            cum = list(map(energy.known.__getitem__, ends))
            return list(map(operator.sub, cum[1:], cum[:-1]))
        except KeyError:
            pass
    return list(map(energy, ends[:-1], times))


class StepSpans:
    """The train steps in a stream of edges, as ``(t_start, t_end)`` spans, by the rule
    :class:`EnergyLedger` counts them with (an ``end`` counts a step when its phase is the one
    the last ``start`` opened and no other ``end`` came between). For log rows: a step's
    provisional energy is then one difference of a cumulative energy, without booking phases
    and epochs a second time.

    Example:
        >>> spans = StepSpans()
        >>> spans.add([("train", "start", 0, 0, 1.0), ("train", "end", 0, 0, 2.0),
        ...            ("val", "start", 0, 0, 2.5), ("val", "end", 0, 0, 3.0)])
        >>> spans.take(), spans.count
        ([(1.0, 2.0)], 1)
    """

    def __init__(self) -> None:
        self.count = 0
        self._open: tuple[str, float] | None = None
        self._spans: list[tuple[float, float]] = []

    def add(self, edges: Sequence[LedgerEdge]) -> None:
        start = 0
        if edges and self._open is not None and edges[0][1] != "start":
            self._add_each(edges[:1])  # the end of a step an earlier call left open
            start = 1
        rest = edges[start:]
        times = paired_times(rest)
        if times is None:
            self._add_each(rest)
            return
        # Steps of one phase, each starting and ending in turn (the usual batch): in bulk.
        phase = rest[0][0]
        if phase == "train":
            self._spans.extend(zip(times[0::2], times[1::2], strict=False))  # odd: one open
            self.count += len(times) // 2
        self._open = (phase, times[-1]) if len(times) % 2 else None

    def _add_each(self, edges: Iterable[LedgerEdge]) -> None:
        for phase, edge, _, _, t in edges:
            if edge == "start":
                self._open = (phase, t)
                continue
            opened, self._open = self._open, None
            if phase == "train" and opened is not None and opened[0] == phase:
                self._spans.append((opened[1], t))
                self.count += 1

    @property
    def waiting(self) -> bool:
        """Whether spans wait to be taken."""
        return bool(self._spans)

    def take(self) -> list[tuple[float, float]]:
        """The spans of steps completed since the last call."""
        out, self._spans = self._spans, []
        return out
