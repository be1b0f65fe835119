"""The energy books: what a run and one stage of it cost, without Lightning.

:class:`StageBooks` ties a running :class:`~lightning_watt.energy.meter.EnergyMeter`, a
:class:`~lightning_watt.attribution.step_clock.StepClock` and an
:class:`~lightning_watt.attribution.ledger.EnergyLedger`
together for one stage (fit, validate, ...) of one process. :class:`RunBooks` carries the run's
cumulative energy across stages; :class:`RunTotals` is what a checkpoint holds of it. The
:class:`~lightning_watt.attribution.accountant.EnergyAccountant` combines them for a training loop.

Example:
    >>> from lightning_watt import EnergyMeter, ReplaySource, bundled_trace
    >>> from lightning_watt.attribution.step_clock import StepClock
    >>> meter = EnergyMeter([ReplaySource(bundled_trace("h200-mlp-stall"), start=10.0)]).start()
    >>> books = StageBooks(meter, StepClock(meter.now, device=None))
    >>> books.mark("train", "start", 0, epoch=0)
    >>> books.mark("train", "end", 0, epoch=0)
    >>> record = books.finish(epoch=0)
    >>> record.totals.steps["train"]
    1
    >>> abs(sum(record.totals.phases_J.values()) - record.totals.energy_J) < 1e-9
    True
"""

from __future__ import annotations

import math
import operator
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

from lightning_watt.attribution.ledger import (
    Cumulative,
    EnergyFn,
    EnergyLedger,
    LedgerEdge,
    StepSpans,
)
from lightning_watt.attribution.refresher import DEFAULT_INTERVAL_S, Refresher
from lightning_watt.attribution.step_clock import ResolvedRow, StepClock
from lightning_watt.energy.meter import EnergyMeter
from lightning_watt.energy.readings import J_PER_KWH, DeviceInfo
from lightning_watt.validate import finite_number

#: An edge row as the recording takes it: ``(phase, edge, index, t_host, t_gpu)``.
_RECORDED = operator.itemgetter(0, 1, 2, 4, 5)
#: A row resolved at host time as the ledger books it: its first five fields.
_AT_HOST = operator.itemgetter(0, 1, 2, 3, 4)
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)

#: Version of :meth:`RunTotals.to_state`, stored in checkpoints.
STATE_VERSION = 2
#: Edges the refresher books with final energy at a time (~0.5 ms of the GIL: steps that
#: each start and end in turn are booked in bulk, their energies looked up without numpy, see
#: ``timeline.VECTOR_MIN``), and its pause between such chunks, long enough for a waiting
#: training thread to take the GIL. Each pause costs the refresher a handover of the GIL back
#: (~30-60 µs of CPU on a 2-core VM): at 64 edges a chunk, the 0.5 s bursts in which final
#: energy comes took ten at 1.5 ms steps.
CHUNK_EDGES = 1024
CHUNK_PAUSE_S = 0.0002
#: Seconds between the refresher's hand-overs of new edges to the meter, the recording and
#: the ledger (final energy). Each hand-over has a fixed cost (~200 µs of CPU from cold caches,
#: taking the meter's lock three times), which at every 25 ms refresh was ~12 µs a step at
#: 1.5 ms steps. The rows' numbers are still refreshed every refresh: a new step is counted
#: and given provisional energy at once; only the ledger (and the trace file) lag, by this
#: much more than the ~0.5 s final energy lags anyway.
SYNC_S = 0.1
#: The refresher's longest interval, and its interval while log rows come faster than one per
#: ``DEFAULT_INTERVAL_S`` (at ``log_every_n_steps=1`` with steps under 25 ms): several rows
#: read each refresh anyway, so a refresh every 25 ms made them no fresher in steps than a few
#: more, at ~200 µs of CPU each (measured on the 2-core VM, cold caches): 40 a second were
#: ~0.9 % of a core, whatever the step time, and held the GIL the training thread waited for.
#: Rows slower than that get about one refresh each (see :func:`paced_interval`): between 25 ms
#: and this. Equal to ``SYNC_S``: each refresh hands over.
BUSY_INTERVAL_S = SYNC_S
#: Seconds between the refresher's writes of step edges to the recording. Each write has a
#: fixed cost (the writer's lock and its code from cold caches: ~55 µs on the 2-core VM,
#: whether it holds 5 edges or 150): at every 0.1 s hand-over writing was ~1.0 µs of the
#: refresher's CPU a step at 1.5 ms steps, every 0.5 s ~0.7 µs. The meter hands readings to
#: the writer every 0.5 s too (``meter._RECORD_BATCH_S``). The same lines either way (the
#: writer carries its merging and deltas across calls; only its flush, on the wall clock, cuts
#: a merged run); a killed run loses up to this much more of its steps. A hand-over on any
#: other thread (``pause_s=0``) writes at once.
RECORD_S = 0.5
#: Whether the refreshes run on the meter's thread, between its reads (``Refresher(host=...)``),
#: rather than on the refresher's own: ``benchmarks/books_threads.py --compare-hosts`` measures
#: both.
REFRESH_ON_METER = True
#: Rows the refresher's pacing waits to see (or ``PACE_ROWS`` of its longest intervals) before
#: it judges their period (:func:`paced_interval`): at ``log_every_n_steps=50`` with 1.5 ms
#: steps a 100 ms look sees one or two rows, a period of 50 or 100 ms.
PACE_ROWS = 4


def paced_interval(rows: int, elapsed_s: float, shortest_s: float) -> tuple[bool, float] | None:
    """The books' refresher interval for ``rows`` log rows in ``elapsed_s`` seconds: ``(busy,
    interval_s)``, or ``None`` while that is too little to judge by (under the longest
    interval, or under ``PACE_ROWS`` rows and that many longest intervals).

    Rows faster than one per ``shortest_s`` are *busy*: they share a refresh every
    ``BUSY_INTERVAL_S`` anyway. Slower rows get about one refresh each, between ``shortest_s``
    and ``BUSY_INTERVAL_S``: at ``log_every_n_steps=50`` with 1.5 ms steps every 75 ms, not
    three refreshes a row (each wake costs its CPU and takes the GIL from training). A row
    then reads numbers at most one row period old (25-100 ms), as busy rows do.

    Example:
        >>> paced_interval(66, 0.1, 0.025)  # log_every_n_steps=1, 1.5 ms steps
        (True, 0.1)
        >>> paced_interval(4, 0.3, 0.025)  # log_every_n_steps=50, 1.5 ms steps
        (False, 0.075)
        >>> paced_interval(1, 0.1, 0.025) is None  # one row: wait for more
        True
    """
    longest = max(shortest_s, BUSY_INTERVAL_S)
    if elapsed_s < longest or (0 < rows < PACE_ROWS and elapsed_s < PACE_ROWS * longest):
        return None
    if rows * shortest_s > elapsed_s:
        return True, longest
    period = elapsed_s / rows if rows else math.inf
    return False, min(max(period, shortest_s), longest)


@dataclass
class RunTotals:
    """Joules and steps of a run (or of its earlier segments), all ranks.

    ``phases_J`` add up to ``energy_J``; ``epochs`` holds joules per phase per epoch.
    """

    energy_J: float = 0.0
    phases_J: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)
    epoch_steps: dict[int, int] = field(default_factory=dict)

    def __add__(self, other: RunTotals) -> RunTotals:
        epochs = {e: dict(ph) for e, ph in self.epochs.items()}
        for e, ph in other.epochs.items():
            epochs[e] = sum_dicts([epochs.get(e, {}), ph])
        return RunTotals(
            energy_J=self.energy_J + other.energy_J,
            phases_J=sum_dicts([self.phases_J, other.phases_J]),
            steps=sum_dicts([self.steps, other.steps]),
            epochs=epochs,
            epoch_steps=sum_dicts([self.epoch_steps, other.epoch_steps]),
        )

    def to_state(self) -> dict[str, Any]:
        """Plain, JSON-able numbers for a checkpoint."""
        return {
            "energy_J": self.energy_J,
            "phases_J": dict(self.phases_J),
            "steps": dict(self.steps),
            "epochs": {int(e): dict(ph) for e, ph in self.epochs.items()},
            "epoch_steps": {int(e): int(n) for e, n in self.epoch_steps.items()},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RunTotals:
        """Read :meth:`to_state`'s output back; a non-finite or negative number is refused with
        a ``ValueError`` naming the field (a checkpoint must never inject NaN into a run)."""

        def joules(where: str, value: Any) -> float:
            return finite_number(where, value, minimum=0.0)

        return cls(
            energy_J=joules("energy_J", state["energy_J"]),
            phases_J={k: joules(f"phases_J[{k}]", v) for k, v in state.get("phases_J", {}).items()},
            steps={k: int(n) for k, n in state.get("steps", {}).items()},
            epochs={
                int(e): {k: joules(f"epochs[{e}][{k}]", v) for k, v in ph.items()}
                for e, ph in state.get("epochs", {}).items()
            },
            epoch_steps={int(e): int(n) for e, n in state.get("epoch_steps", {}).items()},
        )


@dataclass
class RunBooks:
    """The run's cumulative energy across stages (all ranks, joules unless named kWh).

    The rule: :meth:`begin` ``"fit"`` starts a run; :meth:`restore` of a checkpoint continues
    the run it holds (in a fit, as earlier segments whose phases and epochs count); any other
    stage adds to the run it follows; a ``"tune"`` stage is not part of any run.

    Example:
        >>> books = RunBooks()
        >>> books.begin("fit"); books.end("fit", 120.0)
        120.0
        >>> books.begin("test"); books.end("test", 30.0)    # after the fit: adds to its run
        150.0
        >>> books.begin("tune"); books.end("tune", 50.0), books.final_J   # not part of it
        (200.0, 150.0)
        >>> books.begin("fit"); books.kwh                   # a new fit: a new run
        0.0
    """

    #: Earlier segments of a resumed fit (its energy is part of the fit's ``energy_J``).
    offset: RunTotals = field(default_factory=RunTotals)
    #: The run's energy before the live stage, other than ``offset``.
    base_J: float = 0.0
    #: The run's energy after its last finished stage; ``None`` before any.
    final_J: float | None = None
    #: The live cumulative kWh, held so that it never steps back within a stage.
    kwh: float = 0.0
    #: The highest cumulative kWh logged in this run.
    logged_kwh: float = 0.0
    #: The run's kWh when ``target_accuracy`` was first reached.
    target_kwh: float | None = None
    stage: str | None = None

    def begin(self, stage: str) -> None:
        """A stage starts: a fit starts a run, any other stage continues the current one."""
        self.stage = stage
        if stage == "fit":
            self.offset, self.base_J, self.final_J = RunTotals(), 0.0, None
            self.kwh = self.logged_kwh = 0.0
            self.target_kwh = None
        else:
            self.base_J = self.final_J or 0.0

    @property
    def before_stage_J(self) -> float:
        """The run's energy before the live stage (a resumed fit's earlier segments included)."""
        return self.base_J + (self.offset.energy_J if self.stage == "fit" else 0.0)

    def note(self, stage_J: float) -> float:
        """The live stage's all-rank energy so far; returns the run's cumulative kWh. Held:
        when readings come in lower than an earlier estimate, the cumulative energy does not
        step back (a dipping kWh curve, a score that rises on no work)."""
        self.kwh = max(self.kwh, (self.before_stage_J + stage_J) / J_PER_KWH)
        return self.kwh

    def logged(self, kwh: float) -> float:
        """The kWh to log: never below one logged earlier in the run, across stages too."""
        self.logged_kwh = max(self.logged_kwh, kwh)
        return self.logged_kwh

    def end(self, stage: str, segment_J: float) -> float:
        """The live stage ended with ``segment_J`` final joules (all ranks); returns the run's
        energy after it. A ``"tune"`` stage leaves the run as it was."""
        run_J = self.before_stage_J + segment_J
        if stage != "tune":
            self.final_J = run_J
        self.kwh = (self.final_J or 0.0) / J_PER_KWH
        return run_J

    def restore(self, totals: RunTotals, target_kwh: float | None = None) -> None:
        """Continue the run a checkpoint holds (called after :meth:`begin`)."""
        if self.stage == "fit":
            self.offset, self.base_J = totals, 0.0
        else:
            self.offset, self.base_J = RunTotals(), totals.energy_J
        self.target_kwh = target_kwh
        self.kwh = totals.energy_J / J_PER_KWH

    def checkpoint(self, segment: RunTotals) -> RunTotals:
        """The run's books to save: everything before the live stage plus ``segment``."""
        before = self.offset if self.stage == "fit" else RunTotals(energy_J=self.base_J)
        return before + segment


@dataclass(frozen=True)
class Tick:
    """What one logging interval reports for this process (weighted joules: a device shared
    with a lower rank counts zero here)."""

    energy_J: float  # cumulative over the stage, up to now (the newest power held past readings)
    power_W: float  # mean over the interval, from measured energy only
    step_J: float  # mean joules of the train steps booked since the last tick; NaN if none
    steps: int  # train steps booked since the last tick (a refresh, <= 100 ms, behind it)


@dataclass(frozen=True)
class Snapshot:
    """What the last refresh of a stage's books found (this process, weighted joules): the
    numbers a log tick hands to the loggers without touching the meter or the ledger."""

    horizon: float  # the newest reading (at most the refresh's time); -inf before any
    energy_J: float  # cumulative over the stage up to ``horizon``, measured only
    power_W: float  # the newest power reading
    device_power_W: dict[str, float]  # the newest power reading per device (unweighted)
    steps: int  # train steps attributed so far (provisional energy)
    steps_J: float  # their joules, each as attributed when its end was first booked


class RowNumbers:
    """Turns the books' snapshots into log rows' numbers (:class:`Tick`): power over each row's
    interval, joules per step booked since the row before. Held by whoever reads the snapshots
    for the training thread (:class:`StageBooks`, or the helper process's books).

    Example:
        >>> rows = RowNumbers(started_at=0.0)
        >>> snap = Snapshot(horizon=2.0, energy_J=400.0, power_W=200.0,
        ...                 device_power_W={"gpu0": 200.0}, steps=4, steps_J=380.0)
        >>> rows.tick(snap)
        Tick(energy_J=400.0, power_W=200.0, step_J=95.0, steps=4)
        >>> rows.tick(snap)  # the same snapshot again: nothing new
        Tick(energy_J=400.0, power_W=200.0, step_J=nan, steps=0)
    """

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.steps_reported = 0
        self._steps_J_reported = 0.0
        self._last_power: tuple[float, float, float] | None = None  # (t, measured J, W)
        self._ticked: Snapshot | None = None  # the snapshot the last tick read
        self._idle_tick = Tick(0.0, 0.0, math.nan, 0)  # a tick of it again: nothing new
        self._asked_at = -math.inf

    def wants_refresh(self, snap: Snapshot | None) -> bool:
        """Whether a row should ask for a refresh of its own: no snapshot yet, or readings but
        no train step given energy yet (a short stage's first rows then carry one), at most
        once per ``DEFAULT_INTERVAL_S``. Before the first reading a refresh could give no
        step energy: the rows wait for the books' own refreshes."""
        if snap is not None and not (
            snap.steps == 0 == self.steps_reported and math.isfinite(snap.horizon)
        ):
            return False
        now = time.monotonic()
        if snap is not None and now - self._asked_at < DEFAULT_INTERVAL_S:
            return False
        self._asked_at = now
        return True

    def repeats(self, snap: Snapshot | None, last: Tick) -> bool:
        """Whether :meth:`tick` of ``snap`` would return ``last`` again: the snapshot the last
        tick read, ticked already, and a step reported (so no refresh is wanted either)."""
        return last is self._idle_tick and snap is self._ticked and self.steps_reported > 0

    def tick(self, snap: Snapshot) -> Tick:
        """The row's numbers from ``snap`` (the newest snapshot)."""
        if snap is self._ticked:
            # Ticked already (at log_every_n_steps=1, ~15 of 16 rows between refreshes): no new
            # step, no newer reading; the power and energy of that tick again.
            return self._idle_tick
        # Power over the interval since the previous tick's newest reading (none new: the
        # last value).
        horizon, cumulative = snap.horizon, snap.energy_J
        if self._last_power is None:
            # Before the first measured interval, the newest power reading stands in.
            self._last_power = (self.started_at, 0.0, snap.power_W)
        last_t, last_j, power = self._last_power
        if math.isfinite(horizon) and horizon > last_t + 1e-3:
            power = (cumulative - last_j) / (horizon - last_t)
            self._last_power = (horizon, cumulative, power)
        # Steps attributed since the previous row, each with the newest readings when its end
        # was booked (finalized energy lags by up to the buffer's 0.5 s drain).
        new = snap.steps - self.steps_reported
        step_j = math.nan
        if new > 0:
            step_j = (snap.steps_J - self._steps_J_reported) / new
            self.steps_reported, self._steps_J_reported = snap.steps, snap.steps_J
        self._ticked, self._idle_tick = snap, Tick(cumulative, power, math.nan, 0)
        return Tick(cumulative, power, step_j, max(new, 0))


@dataclass
class StageRecord:
    """What a finished stage cost on this process: the final books and how they were measured."""

    duration_s: float
    totals: RunTotals
    devices: list[dict[str, Any]]
    gaps: list[tuple[str, float, float, str]]
    errors: dict[str, int]


class StageBooks:
    """The energy books of one stage (fit, validate, ...) of one process.

    Args:
        meter: a started meter; the accountant stops it in :meth:`finish`.
        clock: where step edges are marked (CUDA events, or host time).
        weights: per device, the share this process counts (0 for a device a lower rank
            already counts); 1 for devices not named.
        refresh_s: seconds between refreshes of the books on their own thread (see
            :class:`~lightning_watt.attribution.refresher.Refresher`); ``None``: no thread,
            a log tick then refreshes the books itself (tests, step-by-step tools).

    Threads: the training thread calls :meth:`mark` and :meth:`tick` (neither takes a lock
    nor reads the meter); the refresher resolves edges, books them and leaves a
    :class:`Snapshot`; every other method runs under the books' lock, on any thread.
    """

    def __init__(
        self,
        meter: EnergyMeter,
        clock: StepClock,
        weights: Mapping[str, float] | None = None,
        refresh_s: float | None = DEFAULT_INTERVAL_S,
    ) -> None:
        if meter.started_at is None:
            raise ValueError("meter: StageBooks needs a started EnergyMeter")
        self.meter = meter
        self.clock = clock
        self.weights = dict(weights or {})
        # Every device counted in full (one rank, or no device shared): a weighted sum is the
        # plain sum, asked ~2 times per step edge by the refresher.
        self._all_counted = all(w == 1.0 for w in self.weights.values())
        self.started_at: float = meter.started_at
        self.ledger = EnergyLedger(start=self.started_at)
        # The meter splits buffer samples holding a step edge by segment (issue 13): from now
        # on it finalizes energy only as far as edges have been handed over.
        meter.add_edge_rows([], until=self.started_at)
        # Train steps as their edges arrive, given provisional energy once, never revisited:
        # for log rows (the ledger waits for final energy, up to ~0.5 s behind).
        self._live = StepSpans()
        self._live_steps_J = 0.0
        # The live steps given energy so far: none before the first reading (a step then
        # waits for it, rather than be logged at 0 J).
        self._live_priced = 0
        # Edges resolved (and counted in the live spans) but not handed over yet; when the
        # last hand-over was (meter clock).
        self._unsynced: list[ResolvedRow] = []
        self._unsynced_booked: list[LedgerEdge] = []  # the same, as the ledger books them
        # Edges handed over but not written to the recording yet, and when it was last written.
        self._unrecorded: list[ResolvedRow] = []
        self._recorded_at = -math.inf
        # Edges not handed to the meter yet (its lock was busy), and how far its energy was
        # final at the last hand-over.
        self._unhanded: list[LedgerEdge] = []
        self._final_until = -math.inf
        self._synced_at = -math.inf
        self._snapshot_version: int | None = None  # the meter's version the snapshot saw
        self._lock = threading.RLock()
        self._snapshot: Snapshot | None = None
        self._rows = RowNumbers(self.started_at)
        # Ticks so far (the training thread counts), and the count and time the refresher last
        # paced itself at: the rate of log rows sets its interval.
        self._ticks = 0
        self._paced = (0, time.monotonic())
        self._calm_s = DEFAULT_INTERVAL_S if refresh_s is None else refresh_s
        #: Whether log rows came faster than refreshes at the last pacing (see :meth:`_pace`):
        #: rows then repeat the row before until the next refresh.
        self.busy = False
        self._refresher: Refresher | None = None
        if refresh_s is not None:
            # On the meter's thread, between its reads (a stand-in meter without one: a thread).
            host = meter if REFRESH_ON_METER and hasattr(meter, "add_companion") else None
            self._refresher = Refresher(self._refresh_in_background, refresh_s, host=host).start()

    # ------------------------------------------------------------------ the training thread
    def mark(self, phase: str, edge: str, index: int, epoch: int | None) -> None:
        """A step edge, now (cheap: a CUDA event, or the host clock)."""
        self.clock.mark(phase, edge, index, epoch)

    def measure_now(self, timeout: float = 1.0) -> bool:
        """Read every source now (on the meter's thread; a few ms), so that the energy asked
        next rests on measurements rather than on power held past the last reading. For rare
        moments: validation ends, checkpoints, the end of a stage."""
        sync = getattr(self.meter, "sync", None)
        done = bool(sync(timeout)) if sync is not None else False
        self.refresh()
        return done

    def settle(self, t: float, timeout: float) -> bool:
        """Read every source until the energy up to ``t`` is final, or ``timeout`` seconds
        passed: the counter must update after ``t`` and the power readings reach that update
        (typically 0.1-0.2 s on NVML, at once for RAPL and the estimate). For checkpoints,
        whose books must hold what the hardware measured, not a provisional shape."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            self.measure_now(max(0.0, min(left, 0.25)))
            if self.meter.finalized_until >= t:
                return True
            if time.monotonic() >= deadline or not self.meter.running:
                return False
            time.sleep(0.02)

    def weighted(self, joules: Mapping[str, float]) -> float:
        if self._all_counted:
            return sum(joules.values())
        return sum(self.weights.get(d, 1.0) * j for d, j in joules.items())

    def energy_fn(
        self,
        times: list[float],
        provisional: bool,
        hold: bool = True,
        horizon: float | None = None,
        power: Mapping[str, float] | None = None,
    ) -> EnergyFn:
        """Joules over ``[t0, t1]`` from cumulative energies fetched in one locked batch (the
        ledger asks for back-to-back intervals, all at ``times``).

        Final: the meter's finalized energy. Provisional: measured up to the meter's horizon,
        then (``hold``) the latest power held, since readings arrive up to 0.5 s after the fact.
        Differences of one cumulative function keep the attribution exactly additive either way.
        ``horizon``: the newest reading's time as the caller already read it (provisional only;
        the meter computes it from every pending reading, ~50 µs); ``power``: the meter's
        latest power as the caller already read it (the power held past ``horizon``).
        """
        meter = self.meter
        if not provisional:
            horizon = math.inf
        elif horizon is None:
            horizon = meter.horizon
        if math.isinf(horizon) and horizon < 0:
            # Nothing read yet: no energy known, and no power to hold.
            return lambda t0, t1: 0.0
        held = 0.0
        if hold and math.isfinite(horizon):
            held = self.weighted(meter.power() if power is None else power)

        def batch(ts: list[float]) -> list[float]:
            return self._cumulative(ts, provisional, horizon, held)

        return Cumulative(dict(zip(times, batch(times), strict=True)), lambda t: batch([t])[0])

    def _cumulative(
        self, ts: list[float], provisional: bool, horizon: float, held: float
    ) -> list[float]:
        """This process's (weighted) cumulative joules at each of ``ts`` (any order, repeats
        allowed: each time is looked up on its own), as :meth:`energy_fn` gives them: clamped
        to ``horizon``, then ``held`` watts past it."""
        # Per device one lookup of all the times, combined as :meth:`weighted` combines one
        # time's joules (the same operations in the same order: the same floats). Nothing to
        # clamp for final energy (an edge's time is finite).
        clamped = ts if horizon == math.inf else [t if t < horizon else horizon for t in ts]
        weights = None if self._all_counted else self.weights
        total: list[float] | None = None
        for device, joules in self.meter.energy_columns(clamped, provisional).items():
            if weights is not None:
                w = weights.get(device, 1.0)
                joules = [w * j for j in joules]
            total = joules if total is None else [a + b for a, b in zip(total, joules, strict=True)]
        if total is None:
            total = [0.0] * len(ts)
        if held:
            return [e + held * (t - c) for e, t, c in zip(total, ts, clamped, strict=True)]
        return total

    def energy_j(self, until: float | None = None) -> float:
        """This process's (weighted) joules since the stage began, as measured up to the newest
        reading (at most ``until``, default now). It lags the present by the readers' delay
        (up to 0.5 s; :meth:`measure_now` first to close it) rather than guess: held power
        ran 5-20 % high on short runs and a cumulative energy must not overshoot."""
        t1 = self.meter.now() if until is None else until
        fn = self.energy_fn([self.started_at, t1], provisional=True, hold=False)
        return fn(self.started_at, t1)

    def unmeasured_j(self) -> float:
        """This process's (weighted) joules estimated for devices no reader measures any more,
        since the stage began (0 while everything is measured)."""
        unmeasured = self.meter.unmeasured(self.started_at)
        return self.weighted({d: float(u["energy_J"]) for d, u in unmeasured.items()})

    def sync_edges(self, wait: bool = False, pause_s: float = 0.0) -> None:
        """Move resolved edges into the ledgers (and the recording); attribute final energy.
        ``pause_s``: book at most ``CHUNK_EDGES`` edges at a time and sleep this long between
        chunks (the refresher's thread: energy is finalised in bursts of up to 0.5 s of steps,
        and a burst booked in one go holds the GIL from the training thread for milliseconds)."""
        with self._lock:
            meter, ledger = self.meter, self.ledger
            # Taken first: an edge marked after it has a later time, so every edge before
            # ``known`` is among those resolved now or still pending.
            known = meter.now()
            self._resolve(wait)
            edges, self._unsynced = self._unsynced, []
            booked, self._unsynced_booked = self._unsynced_booked, []
            self._synced_at = known
            first_pending = self.clock.first_pending_host()
            # A pending edge's GPU time comes no earlier than its host time.
            handed = known if first_pending is None else min(known, first_pending)
            # The refresher (pausing between chunks) never waits for the meter's lock: edges
            # the meter's thread kept it from taking are handed with the next ones.
            unhanded, self._unhanded = self._unhanded, []
            final = meter.add_edge_rows(unhanded + booked, until=handed, wait=pause_s <= 0)
            if final is None:
                self._unhanded = unhanded + booked
            else:
                self._final_until = final
            until = self._final_until  # energy is final up to this
            if edges:
                ledger.add_edges(booked)
            if meter.recording:
                self._unrecorded += edges
                if self._unrecorded and (pause_s <= 0 or known - self._recorded_at >= RECORD_S):
                    rows, self._unrecorded = self._unrecorded, []
                    self._recorded_at = known
                    # Nor for the recording's (the meter's thread may hold it in zlib).
                    meter.record_steps(list(map(_RECORDED, rows)), wait=pause_s <= 0)
            if first_pending is not None:
                until = min(until, first_pending)
            while True:
                end = ledger.chunk_end(until, CHUNK_EDGES) if pause_s > 0 else until
                times = ledger.times_until(end)
                # Final energy comes in bursts (the power buffer's 0.5 s drains): most
                # hand-overs find nothing new to book, and the lookup and the advance would
                # do nothing (~50 µs of the refresher from cold caches).
                if times or ledger.waiting(end):
                    ledger.advance(end, self.energy_fn(times, provisional=False))
                if end >= until:
                    break
                time.sleep(pause_s)
            ledger.step_energies.clear()  # log rows take theirs from the live spans

    def _resolve(self, wait: bool = False) -> None:
        """Take the edges resolved since the last call: counted in the live spans at once,
        handed over by the next :meth:`sync_edges`."""
        edges = self.clock.resolve_rows(wait=wait)
        if edges:
            booked = _booked(edges, self.clock.uses_gpu_time)
            self._live.add(booked)
            self._unsynced += edges
            self._unsynced_booked += booked

    def _refresh_in_background(self) -> Snapshot:
        self._pace()
        return self.refresh(pause_s=CHUNK_PAUSE_S, sync_s=SYNC_S)

    def _pace(self) -> None:
        """Set the refresher's interval from the log rows since the last pacing (see
        :func:`paced_interval`)."""
        refresher = self._refresher
        if refresher is None:
            return
        ticks, now = self._ticks, time.monotonic()
        before, since = self._paced
        paced = paced_interval(ticks - before, now - since, self._calm_s)
        if paced is not None:
            self._paced = (ticks, now)
            self.busy, refresher.interval_s = paced

    def refresh(self, pause_s: float = 0.0, sync_s: float = 0.0) -> Snapshot:
        """Bring the books up to now and leave the numbers a log tick reads (the refresher's
        work; also run at once by :meth:`measure_now`). Costs what arrived since the last
        refresh: the new edges, booked with final energy, and their steps' provisional energy.
        ``sync_s``: hand edges over (:meth:`sync_edges`) only if the last hand-over is at least
        this old; the new steps are counted either way."""
        with self._lock:
            meter = self.meter
            synced = meter.now() - self._synced_at >= sync_s
            if synced:
                self.sync_edges(pause_s=pause_s)  # hands edges to the meter: a new version
            else:
                self._resolve()
            # Read before the energies it vouches for; one lock for the three.
            version, newest, power = meter.live_state()
            if (
                not synced
                and not self._live.waiting
                and version == self._snapshot_version
                and self._snapshot is not None
            ):
                return self._snapshot  # no new step, reading or poll: nothing would change
            now = meter.now()
            horizon = min(newest, now)
            # A horizon cut at now moves with the clock, not with the meter's version.
            self._snapshot_version = version if newest <= now else None
            measured = math.isfinite(horizon)
            # Before the first reading no energy is known: the steps wait for it (unless there
            # is nothing to read: then they cost 0 J as measured).
            spans = self._live.take() if measured or not meter.devices else []
            self._live_priced += len(spans)
            # One locked lookup: the new steps (held power past the newest reading, as a row
            # can't wait ~0.5 s for readings) and the stage's energy up to the newest reading
            # (no held power: equal with or without it there). What energy_fn would give for
            # the same times, without its dictionary and closures (~135 times at 1.5 ms steps,
            # 10 times a second; all but the stage's start past the final knots, where
            # ``energy_at_many`` evaluates each time once, on its side).
            k = len(spans)
            energy_j = 0.0
            power_w = self.weighted(power)
            if measured:
                times = [*map(_FIRST, spans), *map(_SECOND, spans), self.started_at, horizon]
                cum = self._cumulative(times, True, horizon, power_w)
                self._live_steps_J = reduce(
                    operator.add, map(operator.sub, cum[k : 2 * k], cum[:k]), self._live_steps_J
                )
                energy_j = cum[-1] - cum[-2]
            snapshot = Snapshot(
                horizon=horizon,
                energy_J=energy_j,
                power_W=power_w,
                device_power_W=power,
                steps=self._live_priced,
                steps_J=self._live_steps_J,
            )
            self._snapshot = snapshot
            return snapshot

    @property
    def snapshot(self) -> Snapshot | None:
        """The last refresh's numbers (``None`` before the first)."""
        return self._snapshot

    def preview(self, until: float, hold: bool = True) -> EnergyLedger:
        """The ledger advanced to ``until`` with provisional energy (the books left as they are);
        ``hold=False``: nothing past the newest reading, where energy is a guess."""
        with self._lock:
            ledger = self.ledger
            fn = self.energy_fn(ledger.times_until(until), provisional=True, hold=hold)
            return ledger.preview(until, fn)

    def tick(self) -> Tick:
        """This process's numbers for a log row: cumulative joules, power, joules per step.

        Reads the last refresh (at most the refresher's interval old: about one row period,
        25-100 ms, see :func:`paced_interval`); no lock, no meter read. Until the stage's first
        train step is attributed, it refreshes the books itself, so that a short stage's first
        rows already carry a step."""
        self._ticks += 1
        snap = self._snapshot
        if snap is None or self._refresher is None or self._rows.wants_refresh(snap):
            snap = self.refresh()
        return self._rows.tick(snap)

    def repeat_tick(self, last: Tick) -> bool:
        """Whether a :meth:`tick` now would return ``last`` again while rows outpace refreshes
        (no refresh since it); if so, counted as a tick. A row's quick path at
        ``log_every_n_steps=1``: most rows there repeat the one before."""
        if not self.busy or self._refresher is None or not self._rows.repeats(self._snapshot, last):
            return False
        self._ticks += 1
        return True

    def step_counts(self) -> tuple[dict[str, int], dict[int, int]]:
        """Final steps per phase and train steps per epoch booked so far (a copy)."""
        with self._lock:
            ledger = self.ledger
            return dict(ledger.steps), {e: ep.train_steps for e, ep in ledger.epochs.items()}

    def epoch_phases(self, epoch: int) -> dict[str, float]:
        """This process's (weighted) joules per phase in ``epoch``, provisional for the newest."""
        with self._lock:
            self.sync_edges()
            now = self.meter.now()
            view = self.preview(now, hold=False) if now > self.ledger.cursor else self.ledger
            ep = view.epochs.get(epoch)
            phases = dict(ep.phases) if ep else {}
            if not view.epochs or epoch == max(view.epochs):
                # Start-up energy that no epoch has claimed yet belongs to the newest epoch.
                phases = sum_dicts([phases, view.unassigned])
            return phases

    def totals(self, epoch: int, until: float | None = None) -> RunTotals:
        """This stage's books up to ``until`` (default now; for a checkpoint): final energy
        where the meter has it, measured (provisional) energy up to the newest reading,
        nothing guessed past it."""
        with self._lock:
            self.sync_edges()
            meter = self.meter
            if until is None:
                until = meter.now() if meter.running else (meter.stopped_at or meter.now())
            view = self.preview(until, hold=False)
            view.assign_unassigned(epoch)
            return _totals_of(view)

    def _stop_refresher(self) -> None:
        if self._refresher is not None:
            self._refresher.stop()

    # ------------------------------------------------------------------ the end
    def finish(self, epoch: int, meta: Mapping[str, Any] | None = None) -> StageRecord:
        """Wait for every step edge, stop the meter, and close the books with final energy.
        Start-up energy no epoch claimed goes to ``epoch``."""
        self._stop_refresher()
        with self._lock:
            return self._finish(epoch, meta)

    def _finish(self, epoch: int, meta: Mapping[str, Any] | None) -> StageRecord:
        meter, ledger = self.meter, self.ledger
        edges, self._unsynced = self._unsynced + self.clock.resolve_rows(wait=True), []
        self._unsynced_booked = []
        booked = _booked(edges, self.clock.uses_gpu_time)
        meter.add_edge_rows(self._unhanded + booked, until=math.inf)
        self._unhanded = []
        if edges:
            ledger.add_edges(booked)
        rows, self._unrecorded = self._unrecorded + edges, []
        meter.record_steps(list(map(_RECORDED, rows)))
        # fit_end is written by meter.stop(): the recording then spans what the books count.
        meter.set_trace_meta(fit_start=self.started_at, **dict(meta or {}))
        meter.stop()
        end = meter.stopped_at if meter.stopped_at is not None else meter.now()
        ledger.advance(end, self.energy_fn(ledger.times_until(end), provisional=False))
        ledger.assign_unassigned(epoch)
        totals = meter.energy_between(self.started_at, end)
        peaks = meter.peak_power()
        methods = meter.methods()
        sources = meter.source_descriptions()
        unmeasured = meter.unmeasured(self.started_at, end)
        notes_of = getattr(meter, "notes", None)
        notes = notes_of() if notes_of is not None else {}
        duration = end - self.started_at
        devices = [
            device_record(
                d,
                counted=self.weights.get(d.name, 1.0) > 0,
                energy_J=totals.get(d.name, 0.0),
                duration_s=duration,
                peak_power_W=peaks.get(d.name, 0.0),
                methods=methods.get(d.name, []),
                method_notes=notes.get(d.name, []),
                source=sources.get(d.name, ""),
                unmeasured=unmeasured.get(d.name, {}),
            )
            for d in meter.devices
        ]
        return StageRecord(
            duration_s=duration,
            totals=_totals_of(ledger),
            devices=devices,
            gaps=[(g.device, g.start, g.end, g.reason) for g in meter.gaps()],
            errors=meter.errors,
        )

    def abort(self) -> None:
        """Stop measuring without closing the books (an exception ended the stage)."""
        self._stop_refresher()
        self.meter.stop()


def device_record(
    device: DeviceInfo,
    *,
    counted: bool,
    energy_J: float = 0.0,
    duration_s: float = 0.0,
    peak_power_W: float = 0.0,
    methods: list[str] | None = None,
    method_notes: list[str] | None = None,
    source: str = "",
    unmeasured: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One device of a :class:`StageRecord`, as the summary merges it. ``methods``: how its
    energy was measured, best first (none: ``"none"``); ``method_notes``: what the method
    assumed (counter values at recovered update instants or at their read times, readings
    dropped as unusable); ``unmeasured``: the meter's estimate for the span no reader
    measured (included in ``energy_J``)."""
    methods = methods or []
    unmeasured = unmeasured or {}
    return {
        "name": device.name,
        "uuid": device.key,
        "label": device.label,
        "energy_J": energy_J,
        "counted": counted,
        "mean_power_W": energy_J / duration_s if duration_s > 0 else 0.0,
        "peak_power_W": peak_power_W,
        "method": (methods or ["none"])[0],
        "methods": methods,
        "method_notes": list(method_notes or []),
        "source": source,
        "estimated": device.estimated,
        "unmeasured_J": float(unmeasured.get("energy_J", 0.0)),
        "unmeasured_s": float(unmeasured.get("seconds", 0.0)),
        "unmeasured_reason": str(unmeasured.get("reason", "")),
        "unmeasured_basis": str(unmeasured.get("basis", "")),
    }


def _booked(edges: list[ResolvedRow], gpu: bool) -> list[LedgerEdge]:
    """Edge rows as the ledger books them: at the GPU's time where known, else the host's."""
    if not gpu:
        return list(map(_AT_HOST, edges))  # C-level: no slice per edge in a Python loop
    return [
        (phase, edge, index, epoch, t_host if t_gpu is None else t_gpu)
        for phase, edge, index, epoch, t_host, t_gpu in edges
    ]


def _totals_of(ledger: EnergyLedger) -> RunTotals:
    return RunTotals(
        energy_J=ledger.total(),
        phases_J=dict(ledger.phases),
        steps=dict(ledger.steps),
        epochs={e: dict(ep.phases) for e, ep in ledger.epochs.items()},
        epoch_steps={e: ep.train_steps for e, ep in ledger.epochs.items()},
    )


def sum_dicts(dicts: Any) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


__all__ = [
    "STATE_VERSION",
    "RowNumbers",
    "RunBooks",
    "RunTotals",
    "Snapshot",
    "StageBooks",
    "StageRecord",
    "Tick",
    "device_record",
    "paced_interval",
]
