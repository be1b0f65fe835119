"""The live energy meter: one background thread polls the sources and feeds a timeline.

The training thread never touches hardware: it only reads memory under a short lock. Each
source channel is polled at its own interval on the meter thread; an error there is counted,
warned about once, marks a gap on the channel's devices and, after repeated failures or a
:class:`~lightning_watt.sources.base.ChannelLost`, switches to the channel's fallback. Nothing
raised in the thread ever reaches the training thread.

Example:
    >>> from lightning_watt import EnergyMeter, ReplaySource, bundled_trace
    >>> with EnergyMeter([ReplaySource(bundled_trace("h200-mlp-stall"), start=10.0)]) as meter:
    ...     t0 = meter.now()
    ...     # ... train ...
    >>> sorted(meter.total())
    ['gpu0']
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from lightning_watt.energy.edge_rows import EdgeRow, edge_rows
from lightning_watt.energy.readings import COUNTER_J, ESTIMATE_W, POWER_KINDS, DeviceInfo, Reading
from lightning_watt.energy.segment_fit import StepBoundaries
from lightning_watt.energy.timeline import EnergyTimeline, Gap
from lightning_watt.energy.trace import StepEdge, StepRow, TraceWriter
from lightning_watt.energy.unmeasured import (
    META_KEY,
    UnmeasuredSpan,
    add_estimates_at,
    add_estimates_between,
    add_estimates_columns,
    summarise_unmeasured,
)
from lightning_watt.sources.base import Channel, ChannelLost, EnergySource, SourceUnavailable
from lightning_watt.validate import a_callable, path_like, positive_int

#: Readings are held this long (meter clock) before they are recorded: channels deliver out of
#: time order (the driver buffer is drained every 0.5 s and holds 2.4 s of samples) and
#: watt-trace rows must be sorted by time.
_RECORD_HOLD_S = 3.0
#: Held rows are handed to the writer at most this often (meter clock), not at every read.
_RECORD_BATCH_S = 0.5
#: How long :meth:`EnergyMeter.stop` waits for the meter thread's last reads. A read stuck in
#: the driver longer than this is abandoned (the thread is a daemon): the span after the last
#: reading is then unmeasured, estimated and reported, and stop() returns.
_STOP_WAIT_S = 5.0
#: A channel without a fallback (the energy counter) is never given up on transient errors:
#: it is retried with a growing delay, at most this long.
_MAX_BACKOFF_S = 5.0
#: Unexpected errors of the meter thread itself (not of a read) it survives by restarting its
#: loop; one more and every device is unmeasured from there on (estimated, reported).
_MAX_RESTARTS = 5
#: The mean power of at most this long before a device stopped being measured is its estimate
#: for the unmeasured rest.
_ESTIMATE_WINDOW_S = 30.0
#: Power readings kept per device for an estimate early in a run (2 s of 20 ms samples).
_RECENT_POWER = 100
#: A companion (:meth:`EnergyMeter.add_companion`) runs up to this long before it is due while
#: the thread is awake for a read anyway, and up to this long after it to share the wake of a
#: read due then: every wake of a thread takes the GIL from the training thread at an arbitrary
#: moment, and on the 2-core VM each one cost the training thread about three times its own CPU
#: time. The books' refresher due every 25-100 ms then mostly shares the counter's reads.
_COMPANION_SLACK_S = 0.03


def _slack(companion: Companion) -> float:
    return min(_COMPANION_SLACK_S, 0.5 * companion.interval_s)


class Companion(Protocol):
    """Periodic work the meter's thread runs between its reads (:meth:`EnergyMeter.add_companion`).

    ``next_due()`` is when it is next due (meter clock); ``run_on_meter()`` runs it once, must
    not raise, and leaves ``next_due()`` later than it found it; ``interval_s`` is its period
    (the slack is at most half of it)."""

    interval_s: float

    def next_due(self) -> float: ...

    def run_on_meter(self) -> None: ...


class _SyncRequest:
    """One :meth:`EnergyMeter.sync` call waiting for the meter thread's read of everything."""

    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False

    def finish(self, ok: bool) -> None:
        self.ok = ok
        self.done.set()


class _PollState:
    """The meter thread's schedule and per-channel bookkeeping (kept across loop restarts)."""

    def __init__(self, channels: Sequence[Channel], now: float) -> None:
        self.queue: list[tuple[float, int, Channel]] = [(now, i, c) for i, c in enumerate(channels)]
        heapq.heapify(self.queue)
        self.seq = len(self.queue)
        self.failures: dict[str, int] = {}
        self.last_ok: dict[str, float] = {}
        self.last_healthy = now
        self.in_flight: Channel | None = None
        # Channels started by a read (a lost device's estimate), scheduled after it.
        self.spawned: list[Channel] = []

    def adopt_spawned(self, now: float) -> None:
        for channel in self.spawned:
            self.push(now + channel.interval_s, channel)
        self.spawned.clear()

    def push(self, due: float, channel: Channel) -> None:
        heapq.heappush(self.queue, (due, self.seq, channel))
        self.seq += 1


class EnergyMeter:
    """Measures energy of the devices its sources know, on a background thread.

    Args:
        sources: readers to poll. ``None`` picks what this machine offers
            (:func:`lightning_watt.sources.default_sources`: NVML GPUs, RAPL, else an estimate).
        record: a path prefix; when given, every reading is streamed there as watt-trace v1
            (``PREFIX.samples.csv.gz`` ...), so a run can be replayed, shared and compared.
        calibration_window, max_gap, max_knots: passed to :class:`EnergyTimeline`.
        max_consecutive_errors: failures in a row after which a channel is given up for its
            fallback.
        clock: monotonic seconds; all times the meter returns are on it.

    Example:
        >>> meter = EnergyMeter(sources=[])
        >>> _ = meter.start(); meter.stop()
        >>> meter.total()
        {}
    """

    def __init__(
        self,
        sources: Sequence[EnergySource] | None = None,
        *,
        record: str | None = None,
        calibration_window: float = 0.0,
        max_gap: float = 1.0,
        max_knots: int = 200_000,
        max_consecutive_errors: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if sources is not None and not all(isinstance(s, EnergySource) for s in sources):
            raise ValueError("sources must be EnergySource instances (or None for auto-detect)")
        max_errors = positive_int("max_consecutive_errors", max_consecutive_errors)
        a_callable("clock", clock, "a function returning monotonic seconds")
        record = None if record is None else path_like("record", record)
        self._timeline_kwargs: dict[str, Any] = {
            "calibration_window": calibration_window,
            "max_gap": max_gap,
            "max_knots": max_knots,
        }
        self._requested_sources = None if sources is None else list(sources)
        self._record = None if record is None else str(record)
        self._max_errors = max_errors
        self._clock = clock
        self._lock = threading.Lock()
        # The recording's state here (the writer, readings held for ordering) is shared: the
        # meter thread records samples, the books' refresher step edges, and either may turn
        # recording off after a failed write.
        self._writer_lock = threading.RLock()
        self._stop_event = threading.Event()
        # Wakes the meter thread early: a sync() request or stop().
        self._wake = threading.Event()
        # sync() requests not yet served, and whether the thread still takes any (both guarded
        # by _sync_lock, never held while reading hardware).
        self._sync_lock = threading.Lock()
        self._sync_pending: list[_SyncRequest] = []
        self._sync_open = False
        self._thread: threading.Thread | None = None
        self._sources: list[EnergySource] = []
        self._devices: dict[str, DeviceInfo] = {}
        # Built now (and again at start, with the devices) so bad arguments fail here.
        self._timeline = EnergyTimeline(**self._timeline_kwargs)
        self._latest_power: dict[str, tuple[float, float, int]] = {}
        self._last_counter: dict[str, tuple[float, float]] = {}
        self._errors: dict[str, int] = {}
        self._produces: dict[str, set[tuple[str, str]]] = {}  # channel -> (device, kind) it reads
        self._warned: set[str] = set()
        self._unavailable: dict[str, str] = {}
        self._describe: dict[str, str] = {}
        self._writer: TraceWriter | None = None
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._peak_power: dict[str, float] = {}
        # Readings waiting to be recorded, as a heap of (t, arrival, reading).
        self._record_pending: list[tuple[float, int, Reading]] = []
        self._record_seq = 0
        self._record_written_t = -math.inf
        self._record_late = 0
        self._record_next = -math.inf  # when the held rows are next handed to the writer
        # Devices no reader measures any more: since when, at what estimated power, and why.
        self._unmeasured: dict[str, UnmeasuredSpan] = {}
        # Devices whose data began late (their first reads stuck, the thread stalled from the
        # start): unmeasured from the start until then. Energies the timeline gives are zero
        # before a device's first reading, so this estimate is added on top of them.
        self._late_start: dict[str, UnmeasuredSpan] = {}
        # Devices whose start is settled: measured from the start, or estimated until then.
        self._start_settled: set[str] = set()
        # Estimates the meter made itself, not yet handed to the recording (see _add_estimate).
        self._estimates_unrecorded: list[Reading] = []
        # Channels still read per device; a device with none left is unmeasured.
        self._live: dict[str, set[str]] = {}
        # Set once stop() stopped waiting for the thread: its late readings are dropped.
        self._abandoned = False
        self._restarts = 0
        self._last_data: dict[str, float] = {}
        self._first_data: dict[str, float] = {}
        # The newest power readings per device (t, watts, kind rank): an early estimate.
        self._recent_power: dict[str, collections.deque[tuple[float, float, int]]] = {}
        self._channels: list[Channel] = []
        self._boundaries = StepBoundaries()
        self._steps_waiting: list[StepRow] = []  # held by record_steps(wait=False)
        self._companions: tuple[Companion, ...] = ()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> EnergyMeter:
        """Open the sources and start polling. Sources that cannot measure are skipped with
        their reason in :attr:`unavailable`. Calling ``start`` twice is an error."""
        if self._thread is not None:
            raise RuntimeError("EnergyMeter.start: already started")
        sources = self._requested_sources
        if sources is None:
            from lightning_watt.sources import default_sources

            sources, skipped = default_sources()
            self._unavailable.update(skipped)
        channels: list[Channel] = []
        for source in sources:
            try:
                source.open(self._clock)
                devices = source.devices()
                source_channels = source.channels()
            except SourceUnavailable as err:
                self._unavailable[source.name] = str(err)
                continue
            self._sources.append(source)
            for d in devices:
                if d.name in self._devices:
                    raise ValueError(f"sources: two sources both measure device {d.name!r}")
                self._devices[d.name] = d
            self._describe.update(source.describe())
            channels.extend(source_channels)
        self._timeline = EnergyTimeline(devices=self._devices, **self._timeline_kwargs)
        if self._record is not None:
            try:
                self._writer = TraceWriter(self._record)
                self._writer.meta.update(self._trace_meta())
            except OSError as err:
                self._recording_failed(err)
        self._started_at = self._clock()
        for channel in channels:
            self._declare(channel, self._started_at)
        self._stop_event.clear()
        self._wake.clear()
        with self._sync_lock:
            self._sync_open = True
        self._channels = channels
        self._thread = self._spawn(channels)
        return self

    def _spawn(self, channels: list[Channel]) -> threading.Thread:
        thread = threading.Thread(
            target=self._run, args=(channels,), name="lightning-watt-meter", daemon=True
        )
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop polling (after one last read of every channel), finalize all energy, close the
        sources and the recording. Safe to call more than once.

        The measurement ends at the moment ``stop`` is called (:attr:`stopped_at`): the last
        read of every channel starts after it, so the energy over ``[started_at, stopped_at]``
        rests on readings that reach the end: no channel's energy stops short of
        ``stopped_at``, and an estimate's last interval is charged in full."""
        thread = self._thread
        if thread is None or self._stopped_at is not None:
            return
        requested = self._clock()
        self._stop_event.set()
        self._wake.set()
        thread.join(timeout=_STOP_WAIT_S)
        stuck = thread.is_alive()
        with self._lock:
            self._stopped_at = requested
            self._abandoned = stuck
        if stuck:
            self._warn_once(
                "stop:stuck",
                "lightning-watt: the meter's last reads did not finish within "
                f"{_STOP_WAIT_S:.0f} s of the end (a read stuck in the driver, or a backlog of "
                "readings); measurement "
                "ends at the last reading handled and the rest is estimated and reported as "
                "unmeasured.",
            )
        with self._lock:
            self._estimate_unmeasured_tails(requested)
            self._timeline.flush()
            self._check_late_starts(final=True)
        # Closing a source whose read is stuck in the driver could hang or crash it.
        for source in [] if stuck else self._sources:
            try:
                source.close()
            except Exception as err:
                self._warn_once(f"close:{source.name}", f"closing {source.name} failed: {err}")
        with self._writer_lock:
            self._close_recording(requested)

    def _close_recording(self, stopped_at: float) -> None:
        if self._steps_waiting:
            self._write_steps([])
        if self._writer is not None:
            try:
                with self._lock:
                    estimates = list(self._estimates_unrecorded)
                    self._estimates_unrecorded.clear()
                self._record_samples(estimates, final=True)
                self._writer.meta.update(self._trace_meta())
                with self._lock:
                    self._record_unmeasured()  # the tails closed at the stop
                # The recording's own window is the meter's: [0, stop] on the trace clock. A
                # fit window opened with set_trace_meta(fit_start=...) closes here too, so the
                # trace and the meter's totals cover exactly the same span.
                stop = stopped_at - (self._started_at or 0.0)
                self._writer.meta["meter_stop"] = stop
                if "fit_start" in self._writer.meta:
                    self._writer.meta.setdefault("fit_end", stop)
                self._writer.close()
            except OSError as err:
                self._recording_failed(err)

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._stopped_at is None

    def sync(self, timeout: float = 1.0) -> bool:
        """Have the meter thread read every live channel once, now, and wait for it.

        For the rare moments when energy should rest on measurements, not on held power (the
        end of a validation, a checkpoint, the end of a stage). Callable from any thread; the
        reads themselves happen on the meter thread (channels are not thread-safe), each
        starting after this call, and this thread only waits. Reading a counter and a buffer
        takes a few milliseconds; the regular schedule resumes a full interval after the sync.

        Returns ``True`` once every channel was read successfully. ``False`` (never an
        exception, never a wait longer than ``timeout`` seconds) when the meter is not running
        (not started, stopped, no channel left), on a timeout (a read stuck in hardware: the
        sync is still done when the thread gets to it) or when a read failed (it is counted,
        warned about and marked as a gap as in any poll; a lost channel's fallback is read in
        its place). Called on the meter thread itself, it returns ``False`` at once.

        After a successful sync, :attr:`horizon` and :attr:`finalized_until` are as close to
        the call as the readers allow:

        * **CPU estimate** (``estimate_W``): the read closes the current utilisation interval,
          so both reach the read's time, after the call. The power of that interval is its
          mean since the previous read (up to ``interval_s``, 0.25 s, earlier): a burst just
          before the call is spread over that interval, not placed on its moment.
        * **RAPL** (``counter_J`` alone): both reach the read's time, after the call (a
          counter that has not moved since the previous read leaves them at its last change).
        * **NVML counter + driver buffer**: a buffer sample is the mean of the 20 ms before its
          timestamp and appears in the buffer with a delay, so :attr:`horizon` reaches the
          newest sample, about 20-40 ms before the call. The counter updates every 100 ms
          and a read pins its value at the read's time (it may be up to 100 ms old; the
          timeline moves energy by at most that), while a read that sees no new value pins
          nothing; energy is finalized up to the last counter change the buffer covers, so
          :attr:`finalized_until` is up to ~0.1-0.2 s before the call (finalizing further
          would need held power over the newest 20 ms, or waiting for the driver's next
          sample). Between it and :attr:`horizon` the provisional energy is the buffer's
          shape scaled by the counter's recent calibration: a measurement, not held power.
        * **NVML power fields, no buffer**: readings are stamped at the read, so
          :attr:`horizon` reaches it (the instant field's value is the power at its last
          100 ms refresh); with the 1 s average alone, placed half a second back, it trails
          the call by 0.5 s. Finalization is as for the buffer: up to the last counter change
          the power readings cover.
        * **Replay**: what the recording's readers allowed at the replayed time (the bundled
          H200 recordings read their counter 0.1-0.49 s apart, so up to 0.5 s).
        """
        try:
            wait = float(timeout)
        except (TypeError, ValueError):
            return False
        if not wait > 0:  # negative or NaN: look, but do not wait
            wait = 0.0
        wait = min(wait, threading.TIMEOUT_MAX)
        thread = self._thread
        if thread is None or self._stopped_at is not None or threading.current_thread() is thread:
            return False
        request = _SyncRequest()
        with self._sync_lock:
            if not self._sync_open:
                return False
            self._sync_pending.append(request)
        self._wake.set()
        return request.done.wait(wait) and request.ok

    @property
    def stopped_at(self) -> float | None:
        """When :meth:`stop` ended the measurement (meter clock), ``None`` before."""
        return self._stopped_at

    # ------------------------------------------------------------------ the thread
    def _run(self, channels: list[Channel]) -> None:
        """The thread: a supervised polling loop. An unexpected error of the loop itself (a
        bug, a ``BaseException`` out of a read) is counted, warned about once, its span marked
        as a gap, and the loop restarted; after :data:`_MAX_RESTARTS` every device is
        unmeasured from there on (estimated and reported), never silently short."""
        state = _PollState(channels, self._clock())
        ok = False
        try:
            while True:
                try:
                    ok = self._loop(state)
                    break
                except BaseException as err:  # supervision: nothing may end the thread
                    if not self._thread_failed(state, err):
                        break
        finally:
            with self._sync_lock:
                self._sync_open = False
                requests, self._sync_pending = self._sync_pending, []
            for request in requests:
                request.finish(ok)

    def _loop(self, state: _PollState) -> bool:
        """Poll until stopped, then read everything once more; returns whether that last read
        succeeded. ``state`` survives a restart of the loop."""
        while state.queue and not self._stop_event.is_set():
            with self._sync_lock:
                requests, self._sync_pending = self._sync_pending, []
            if requests:
                ok = False
                try:
                    ok = self._poll_all(state)
                finally:
                    for request in requests:
                        request.finish(ok)
                continue
            due, _, channel = state.queue[0]
            now = self._clock()
            if due > now:
                companion = self._companion_due(now)
                if companion is not None:
                    companion.run_on_meter()
                    continue
                wait = self._wake_at(due) - now
                if wait > 0:
                    # Woken early by sync() or stop(); either way, look again.
                    self._wake.wait(wait)
                    self._wake.clear()
                continue
            heapq.heappop(state.queue)
            state.in_flight = channel
            replacement, read_ok = self._poll(channel, state)
            state.in_flight = None
            state.adopt_spawned(self._clock())
            if replacement is not None:
                interval = replacement.next_interval()  # a pattern: see Channel.pattern
                if not read_ok and replacement is channel and channel.fallback is None:
                    # Transient errors of a reader with nothing to fall back on (the counter):
                    # back off instead of hammering a busy driver, never give up.
                    interval = min(interval * 2.0 ** state.failures[channel.name], _MAX_BACKOFF_S)
                    interval = max(interval, replacement.interval_s)
                next_due = max(due + interval, self._clock())
                state.push(next_due, replacement)
            state.last_healthy = self._clock()
        # One last read of everything, so the energy reaches the moment stop() was called.
        # A sync() asked for before it is served by it.
        return self._poll_all(state)

    def _companion_due(self, now: float) -> Companion | None:
        """The first companion due by ``now`` (or within the slack: the thread is awake)."""
        for companion in self._companions:
            if companion.next_due() <= now + _slack(companion):
                return companion
        return None

    def _wake_at(self, read_due: float) -> float:
        """When to wake next: the next read, or a companion's due time when no read comes
        within the slack after it (it then waits for that read)."""
        wake = read_due
        for companion in self._companions:
            due = companion.next_due()
            if due + _slack(companion) < read_due:
                wake = min(wake, due)
        return wake

    def _thread_failed(self, state: _PollState, err: BaseException) -> bool:
        """Handle an error that escaped the loop; returns whether to run the loop again."""
        now = self._clock()
        self._restarts += 1
        with self._lock:
            self._errors["meter"] = self._errors.get("meter", 0) + 1
            for device in self._devices:
                self._timeline.mark_gap(
                    device, state.last_healthy, now, f"meter thread failed: {err!r}"
                )
        state.last_healthy = now
        if state.in_flight is not None:
            # The channel being read when the loop failed is read again, not forgotten.
            state.push(now + state.in_flight.interval_s, state.in_flight)
            state.in_flight = None
        again = self._restarts <= _MAX_RESTARTS and not self._stop_event.is_set()
        self._warn_once(
            "meter:failed" if again else "meter:gave-up",
            f"lightning-watt: the meter thread failed ({type(err).__name__}: {err}); "
            + (
                "it goes on; the span is marked as a gap. Training continues."
                if again
                else "it failed too often: measurement stops here, and the rest of the run is "
                "estimated and reported as unmeasured. Training continues."
            ),
        )
        if again:
            # A fault that repeats at once would use up the restarts in milliseconds.
            self._wake.wait(min(0.1 * self._restarts, 1.0))
        else:
            with self._lock:
                for device in self._devices:
                    self._mark_unmeasured(device, now, f"meter thread failed: {err!r}")
        return again

    def _poll_all(self, state: _PollState) -> bool:
        """Read every scheduled channel once now (for sync() and the final read); returns
        whether every read succeeded. A channel given up for its fallback has the fallback read
        at once in its place. The next regular read of each comes a full interval later: a read
        moments after this one costs the same and says next to nothing."""
        ok = bool(state.queue)
        # The old schedule stays in place until the pass is done: a failure midway loses no
        # channel (the loop restarts on it).
        pending, done = sorted(state.queue, key=lambda x: x[1]), []
        for _, _, channel in pending:
            current: Channel | None = channel
            replacement: Channel | None = None
            while current is not None:
                replacement, read_ok = self._poll(current, state)
                if read_ok or replacement is None or replacement is current:
                    ok = ok and read_ok
                    break
                current = replacement  # lost: its fallback speaks for it in this pass
            if replacement is not None:
                done.append((self._clock() + replacement.interval_s, replacement))
        state.queue = []
        for due, channel in done:
            state.push(due, channel)
        state.adopt_spawned(self._clock())
        return ok

    def _poll(self, channel: Channel, state: _PollState) -> tuple[Channel | None, bool]:
        """Read one channel; returns the channel to schedule next (itself, its fallback, or
        ``None`` when given up) and whether the read succeeded."""
        failures, last_ok = state.failures, state.last_ok
        try:
            readings = list(channel.read())
        except Exception as err:
            lost = isinstance(err, ChannelLost)
            failures[channel.name] = failures.get(channel.name, 0) + 1
            now = self._clock()
            with self._lock:
                self._errors[channel.name] = self._errors.get(channel.name, 0) + 1
                start = last_ok.get(channel.name, self._started_at or now)
                for device in channel.devices:
                    self._timeline.mark_gap(device, start, now, f"{channel.name}: {err}")
            fallback = channel.fallback
            # Only a lost reader, or one that keeps failing while another can take over, is
            # given up; a reader with no fallback (the counter) is retried, backing off.
            give_up = lost or (fallback is not None and failures[channel.name] >= self._max_errors)
            what = f"lightning-watt: reading {channel.name} failed ({type(err).__name__}: {err})"
            if not give_up:
                again = "retrying" if fallback is not None else "retrying, backing off"
                self._warn_once(
                    channel.name, f"{what}; {again}. Training continues; the gap is recorded."
                )
                return channel, False
            # Giving up is said even after a "retrying": that is what changes the numbers.
            then = f"switching to {fallback.name}" if fallback else "it is not read any more"
            self._warn_once(
                # A lost GPU fails all its readers with one error: said once, not per reader.
                f"lost:{err}" if lost else f"{channel.name}:given-up",
                f"{what}; {then}. Training continues; the gap is recorded.",
            )
            with self._lock:
                for device, kind in self._produces.get(channel.name, ()):
                    self._timeline.retire(device, kind)
                for device in channel.devices:
                    live = self._live.get(device, set())
                    live.discard(channel.name)
                    if not live and fallback is None:
                        self._mark_unmeasured(device, now, f"{channel.name}: {err}")
            for device in channel.devices:
                if device in self._unmeasured and not self._live.get(device):
                    estimate = self._estimate_channel(device)
                    self._live.setdefault(device, set()).add(estimate.name)
                    state.spawned.append(estimate)
            if fallback is not None:
                self._declare(fallback, self._clock())
            return fallback, False
        failures[channel.name] = 0
        produced = self._produces.setdefault(channel.name, set())
        produced.update((r.device, r.kind) for r in readings)
        if readings:
            since = min(last_ok.get(channel.name, readings[0].t), readings[0].t)
            last_ok[channel.name] = readings[-1].t
            try:
                self._ingest(readings)
            except Exception as err:
                # Never let the thread die: the readings are lost, their span a reported gap.
                with self._lock:
                    for device in channel.devices:
                        self._timeline.mark_gap(
                            device, since, self._clock(), f"ingest failed: {err}"
                        )
                self._warn_once(
                    f"ingest:{channel.name}",
                    f"lightning-watt: handling readings of {channel.name} failed "
                    f"({type(err).__name__}: {err}); their span is marked as a gap and "
                    "measurement goes on.",
                )
        if produced:
            # Even an empty read says "nothing new up to now": the timeline stops waiting.
            polled_at = self._clock()
            with self._lock:
                self._timeline.mark_polled(produced, polled_at)
        return channel, True

    def _declare(self, channel: Channel, t: float) -> None:
        """Tell the timeline which readers exist before they speak, so it waits for them."""
        for device in channel.devices:
            self._live.setdefault(device, set()).add(channel.name)
        pairs = {(d, k) for d in channel.devices for k in channel.kinds}
        if pairs:
            self._produces.setdefault(channel.name, set()).update(pairs)
            with self._lock:
                self._timeline.mark_polled(pairs, t)

    # ------------------------------------------------------------------ unmeasured devices
    def _mark_unmeasured(self, device: str, now: float, reason: str) -> None:
        """No reader measures ``device`` any more (call under the lock): from the end of its
        data its energy is its mean power before, an estimate, recorded as such."""
        if device in self._unmeasured:
            return
        timeline = self._timeline.device(device)
        # From its newest reading on: everything before it is measured and finalized from it.
        newest = self._last_data.get(device, timeline.horizon)
        since = min(max(newest, self._started_at or now), now)
        # The mean over energy already final (the newest data may still wait for readings);
        # early in a run, before a second of it is final, over the provisional energy.
        first = self._first_data.get(device, since)
        watts, basis = 0.0, ""
        end = min(since, timeline.finalized_until)
        start = max(self._started_at or end, first, end - _ESTIMATE_WINDOW_S)
        if end - start >= 1.0:
            joules = self._timeline.energy_between(start, end, provisional=False).get(device, 0.0)
            watts = joules / (end - start)
            basis = f"its mean power over the {end - start:.1f} s before"
        else:
            # Early in a run, before a second of energy is final: the mean of its best power
            # readings of the last seconds (not yet calibrated by the counter).
            recent = [(w, rank) for t, w, rank in self._recent_power.get(device, ()) if t <= since]
            if recent:
                best = min(rank for _, rank in recent)
                chosen = [w for w, rank in recent if rank == best]
                watts = sum(chosen) / len(chosen)
                basis = f"the mean of its last {len(chosen)} power readings"
        if not basis:
            latest = self._latest_power.get(device)
            watts = latest[1] if latest is not None else 0.0
            basis = "its last power reading" if latest else "nothing measured before: 0 W"
        self._unmeasured[device] = UnmeasuredSpan(device, since, max(watts, 0.0), reason, basis)
        self._timeline.mark_gap(device, since, max(now, since), f"unmeasured: {reason}")
        # The estimate starts where the data ends, so no second of the run is left out.
        self._add_estimate(Reading(since, device, ESTIMATE_W, self._unmeasured[device].watts))
        self._record_unmeasured()
        self._warn_once(
            f"unmeasured:{device}",
            f"lightning-watt: {device} is no longer measured ({reason}); its energy from here "
            f"on is estimated at {watts:.1f} W ({basis}) and reported as unmeasured_J.",
        )

    def _estimate_channel(self, device: str) -> Channel:
        """The live estimate of an unmeasured device: its constant estimated power."""
        watts = self._unmeasured[device].watts

        def read() -> list[Reading]:
            return [Reading(self._clock(), device, ESTIMATE_W, watts)]

        return Channel(
            f"{device}/unmeasured",
            0.5,
            read,
            (device,),
            describe="estimate of an unmeasured device",
            kinds=(ESTIMATE_W,),
        )

    def _estimate_unmeasured_tails(self, end: float) -> None:
        """At stop (under the lock): every device's energy reaches ``end``. A device whose data
        stops short of it by more than a gap (a lost GPU, a read stuck in the driver, a meter
        thread that gave up) is unmeasured from its last data on, and its estimate is carried to
        ``end``."""
        limit = self._silence_limit()
        for name in self._devices:
            if name not in self._unmeasured:
                if self._timeline.device(name).horizon >= end - limit:
                    continue
                self._mark_unmeasured(name, end, "no readings reached the end of the measurement")
            gone = self._unmeasured[name]
            self._add_estimate(Reading(max(end, gone.since), name, ESTIMATE_W, gone.watts))

    def _silence_limit(self) -> float:
        """How long a device may go without data at the start or the end of the measurement
        before that span is unmeasured (a gap, at least a second)."""
        return max(float(self._timeline_kwargs["max_gap"]), 1.0)

    def _add_estimate(self, reading: Reading) -> None:
        """An estimate the meter makes itself (under the lock): into the timeline, and queued
        for the recording, so a report of the trace alone counts what the meter counted."""
        self._timeline.add([reading])
        self._estimates_unrecorded.append(reading)

    def unmeasured(
        self, t0: float = -math.inf, t1: float = math.inf
    ) -> dict[str, dict[str, float | str]]:
        """Devices that stopped being measured, or whose data began late (their first reads
        stuck, the meter stalled from the start): per device, the estimated joules and the
        seconds of ``[t0, t1]`` not measured (``{}`` when every device was measured
        throughout), why, and what the estimate rests on. The estimate is included in every
        energy the meter returns.

        Example:
            >>> EnergyMeter(sources=[]).unmeasured()
            {}
        """
        with self._lock:
            end = self._stopped_at if self._stopped_at is not None else self._clock()
            spans = [*self._late_start.values(), *self._unmeasured.values()]
        return summarise_unmeasured(spans, t0, t1, end)

    def _record_unmeasured(self) -> None:
        """(Under the lock.) Every unmeasured span so far into the recording's meta, on the
        trace clock, so a report of the trace alone counts and shows what the meter does, and
        a killed run's trace (its meta is rewritten at every flush) holds those decided by
        then. A late start's estimate is in no sample: readers add it (see
        :mod:`~lightning_watt.energy.unmeasured`)."""
        writer = self._writer
        if writer is None:
            return
        origin = self._started_at or 0.0
        end = self._stopped_at if self._stopped_at is not None else math.inf
        spans = sorted(
            [*self._late_start.values(), *self._unmeasured.values()],
            key=lambda s: (s.device, s.since),
        )
        if not spans:
            return  # a recording measured throughout has no such field
        # A new list each time: the writer may be serialising the meta on another thread.
        writer.meta[META_KEY] = [s.to_meta(origin, end) for s in spans]

    def _check_late_starts(self, final: bool) -> None:
        """(Under the lock.) A device whose data begins more than a gap after the start, as a
        device whose data stops short of the end (:meth:`_estimate_unmeasured_tails`), is
        unmeasured over that span: estimated at its mean power over the first seconds after it
        (decided once a second of energy after it is final, or at ``final``), reported and
        warned about, never a silent zero. Until decided, :attr:`finalized_until` stays at the
        start, so no step there is booked without it."""
        started = self._started_at
        if started is None:
            return
        limit = self._silence_limit()
        for name in self._devices:
            if name in self._start_settled:
                continue
            timeline = self._timeline.device(name)
            begins = timeline.start
            if not math.isfinite(begins):  # nothing yet; never anything: a tail's estimate
                if final:
                    self._start_settled.add(name)
                continue
            if begins - started <= limit:  # measured from the start
                self._start_settled.add(name)
                continue
            end = min(timeline.finalized_until, begins + _ESTIMATE_WINDOW_S)
            if end - begins < 1.0 and not final:
                continue
            self._start_settled.add(name)
            watts, basis = 0.0, "nothing measured after: 0 W"
            if end > begins:
                joules = self._timeline.energy_between(begins, end, provisional=False)[name]
                watts = joules / (end - begins)
                basis = f"its mean power over the {end - begins:.1f} s after"
            elif self._recent_power.get(name):
                chosen = [w for _, w, _ in self._recent_power[name]]
                watts = sum(chosen) / len(chosen)
                basis = f"the mean of its {len(chosen)} power readings"
            reason = f"no readings for the first {begins - started:.1f} s of the measurement"
            gone = UnmeasuredSpan(
                name, started, max(watts, 0.0), reason, basis, until=begins, in_samples=False
            )
            self._late_start[name] = gone
            self._timeline.mark_gap(name, started, begins, f"unmeasured: {reason}")
            self._record_unmeasured()
            self._warn_once(
                f"unmeasured-start:{name}",
                f"lightning-watt: {name} was not measured at the start ({reason}); its energy "
                f"there is estimated at {gone.watts:.1f} W ({basis}) and reported as "
                "unmeasured_J.",
            )

    def _late_start_pending(self) -> bool:
        """(Under the lock.) Whether a device's data began late and its estimate is not yet
        decided (see :meth:`_check_late_starts`)."""
        if len(self._start_settled) == len(self._devices) or self._started_at is None:
            return False
        limit = self._silence_limit()
        for name in self._devices:
            begins = self._timeline.device(name).start
            if name not in self._start_settled and limit < begins - self._started_at < math.inf:
                return True
        return False

    def _ingest(self, readings: list[Reading]) -> None:
        with self._lock:
            if self._abandoned:
                return  # stop() has finalized without this thread: too late to count
            self._timeline.add(readings)
            for r in readings:
                if r.t > self._last_data.get(r.device, -math.inf):
                    self._last_data[r.device] = r.t
                self._first_data.setdefault(r.device, r.t)
                if r.kind == COUNTER_J:
                    prev = self._last_counter.get(r.device)
                    self._last_counter[r.device] = (r.t, r.value)
                    # Derived power only over a full counter update, never a 3 ms spike.
                    if prev is not None and r.t - prev[0] >= 0.08 and r.value > prev[1]:
                        self._note_power(r.device, r.t, (r.value - prev[1]) / (r.t - prev[0]), 99)
                else:
                    self._note_power(r.device, r.t, r.value, POWER_KINDS.index(r.kind))
            if len(self._start_settled) < len(self._devices):
                self._check_late_starts(final=False)
            if self._estimates_unrecorded:
                readings = [*readings, *self._estimates_unrecorded]
                self._estimates_unrecorded.clear()
        with self._writer_lock:
            if self._writer is None:
                return
            try:
                # Rows reach the writer 3-3.5 s after their time, and it flushes itself every
                # 2 s: a killed run loses the last 5.5 s at most.
                self._record_samples(readings, final=False)
            except OSError as err:
                self._recording_failed(err)

    def _record_samples(self, readings: Sequence[Reading], final: bool) -> None:
        """Write readings to the recording in time order, once no channel can still deliver
        older ones (``final``: write all that is held)."""
        assert self._writer is not None
        # watt-trace time 0 is the meter's start: recordings from any clock line up.
        origin = self._started_at or 0.0
        pending, seq, push = self._record_pending, self._record_seq, heapq.heappush
        for r in readings:
            # A plain constructor: namedtuple._replace costs three times as much.
            push(pending, (r.t, seq, Reading(r.t - origin, r.device, r.kind, r.value)))
            seq += 1
        self._record_seq = seq
        until = math.inf if final else self._clock() - _RECORD_HOLD_S
        if until < self._record_next:
            return  # rows go to the writer in batches: a write costs ~50 µs, rows or not
        self._record_next = until + _RECORD_BATCH_S
        out: list[Reading] = []
        written = self._record_written_t
        while pending and pending[0][0] <= until:
            t, _, r = heapq.heappop(pending)
            if t < written:
                # Later rows are already on disk; writing it would make the file unreadable.
                self._record_late += 1
                continue
            written = t
            out.append(r)
        self._record_written_t = written
        self._writer.write_samples(out)
        if self._record_late:
            self._warn_once(
                "record:late",
                f"lightning-watt: {self._record_late} reading(s) arrived more than "
                f"{_RECORD_HOLD_S} s late and were left out of the recording (energy unaffected).",
            )

    def _note_power(self, device: str, t: float, watts: float, rank: int) -> None:
        """Latest power per device, from the best kind seen recently."""
        recent = self._recent_power.get(device)
        if recent is None:
            recent = self._recent_power[device] = collections.deque(maxlen=_RECENT_POWER)
        recent.append((t, watts, rank))
        prev = self._latest_power.get(device)
        if prev is None or rank <= prev[2] or t - prev[0] > 1.0:
            self._latest_power[device] = (t, watts, rank)
        if watts > self._peak_power.get(device, -math.inf):
            self._peak_power[device] = watts

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def add_companion(self, companion: Companion) -> None:
        """Have the meter's thread run ``companion`` when due, between its reads (sharing their
        wakes where it can, see ``_COMPANION_SLACK_S``): work that must run periodically off
        the training thread costs no thread wakes of its own. Never while a read, a
        :meth:`sync` or a stuck driver call holds the thread: a companion that must not wait
        for hardware keeps its own watchdog (the books' refresher does)."""
        self._companions = (*self._companions, companion)
        self._wake.set()  # its due time may come before the next read

    def remove_companion(self, companion: Companion) -> None:
        """Stop running ``companion`` (a run in progress finishes)."""
        self._companions = tuple(c for c in self._companions if c is not companion)

    # ------------------------------------------------------------------ reads (any thread)
    def now(self) -> float:
        """The meter clock (the times every other method takes and returns)."""
        return self._clock()

    @property
    def devices(self) -> list[DeviceInfo]:
        return [self._devices[k] for k in sorted(self._devices)]

    @property
    def started_at(self) -> float | None:
        return self._started_at

    @property
    def helper_safe(self) -> bool:
        """Whether this meter may run in a helper process forked from this one (see
        :mod:`lightning_watt.attribution.helper_process`): not started, on the default clock
        (the training process stamps step edges with it), and every source it was given
        declares itself safe there (:attr:`EnergySource.helper_safe`; a meter of no sources
        has nothing to move)."""
        sources = self._requested_sources
        return (
            self._thread is None
            and self._clock is time.monotonic
            and bool(sources)
            and all(s.helper_safe for s in sources or ())
        )

    def energy_between(self, t0: float, t1: float, provisional: bool = True) -> dict[str, float]:
        """Joules per device over ``[t0, t1]`` (meter clock)."""
        with self._lock:
            out = self._timeline.energy_between(t0, t1, provisional)
            return add_estimates_between(out, self._late_start.values(), t0, t1)

    def energy_at(self, t: float, provisional: bool = True) -> dict[str, float]:
        """Cumulative joules per device from the first reading to ``t``."""
        with self._lock:
            out = self._timeline.energy_at(t, provisional)
            return add_estimates_at(out, self._late_start.values(), t)

    def energy_at_many(
        self, times: Sequence[float], provisional: bool = True
    ) -> list[dict[str, float]]:
        """Cumulative joules per device at each of ``times``, under one lock acquisition."""
        with self._lock:
            columns = self._timeline.energy_at_many(times, provisional)
            add_estimates_columns(columns, self._late_start.values(), times)
        return [{d: e[i] for d, e in columns.items()} for i in range(len(times))]

    def energy_columns(
        self, times: Sequence[float], provisional: bool = True
    ) -> dict[str, list[float]]:
        """:meth:`energy_at_many` as one list per device (each device's knots looked up once
        for all the times: :meth:`EnergyTimeline.energy_at_many`), for callers that combine
        the devices themselves. ``times``: numbers on the meter clock, none NaN (unchecked)."""
        with self._lock:
            columns = self._timeline.columns(times, provisional)
            return add_estimates_columns(columns, self._late_start.values(), times)

    @property
    def recording(self) -> bool:
        """Whether readings are being written to a watt-trace (``record=``)."""
        return self._writer is not None and self._stopped_at is None

    def total(self) -> dict[str, float]:
        """Joules per device since :meth:`start` (up to the newest reading, or to stop)."""
        start = self._started_at
        if start is None:
            return {}
        end = self._stopped_at if self._stopped_at is not None else self._clock()
        return self.energy_between(start, end)

    def power(self) -> dict[str, float]:
        """Latest power per device in watts (from the best reader that has spoken recently)."""
        with self._lock:
            return self._power_locked()

    def _power_locked(self) -> dict[str, float]:
        return {d: p[1] for d, p in sorted(self._latest_power.items())}

    def peak_power(self) -> dict[str, float]:
        """Highest power seen per device (watts)."""
        with self._lock:
            return dict(sorted(self._peak_power.items()))

    @property
    def finalized_until(self) -> float:
        """Energies up to this time will not change any more."""
        with self._lock:
            return self._finalized_locked()

    def _finalized_locked(self) -> float:
        if self._late_start_pending():
            # The estimate for a late start is not decided yet: nothing after it is final.
            return min(self._timeline.finalized_until, self._started_at or -math.inf)
        return self._timeline.finalized_until

    @property
    def horizon(self) -> float:
        """Energies are known (provisionally) up to this time."""
        with self._lock:
            return self._timeline.horizon

    @property
    def version(self) -> int:
        """Changes whenever the energies or the power readings may have (see
        :attr:`EnergyTimeline.version`): the books' refresher skips a refresh that would find
        nothing new."""
        with self._lock:
            return self._version_locked()

    def _version_locked(self) -> int:
        # A late start decided adds an estimate without a new reading: it counts too.
        return self._timeline.version + (len(self._late_start) << 40)

    def live_state(self) -> tuple[int, float, dict[str, float]]:
        """:attr:`version`, :attr:`horizon` and :meth:`power`, read under one lock acquisition
        (the books' refresher reads all three 40 times a second; each acquisition can meet
        the meter's thread inside the lock, and waiting then costs a handover of the GIL)."""
        with self._lock:
            return self._version_locked(), self._timeline.horizon, self._power_locked()

    def gaps(self, t0: float = -math.inf, t1: float = math.inf) -> list[Gap]:
        with self._lock:
            return self._timeline.gaps(t0, t1)

    @property
    def errors(self) -> dict[str, int]:
        """Failed reads per channel."""
        with self._lock:
            return dict(self._errors)

    @property
    def unavailable(self) -> dict[str, str]:
        """Sources that could not measure, with the reason."""
        return dict(self._unavailable)

    def describe(self) -> dict[str, str]:
        """How each device is measured, for people, with the methods the timeline used."""
        with self._lock:
            methods = self._timeline.methods()
        out = {}
        for name in sorted(self._devices):
            used = ", ".join(methods.get(name, [])) or "no readings yet"
            out[name] = f"{self._describe.get(name, '?')} [{used}]"
        return out

    def methods(self) -> dict[str, list[str]]:
        """How each device's energy was obtained, most-used first (``counter+buffer_W``, ...)."""
        with self._lock:
            return self._timeline.methods()

    def notes(self) -> dict[str, list[str]]:
        """What each device's energy assumed (how counter values were placed in time, readings
        dropped as unusable), from :meth:`EnergyTimeline.notes`."""
        with self._lock:
            return self._timeline.notes()

    def source_descriptions(self) -> dict[str, str]:
        """What each device's source says about how it measures."""
        return {name: self._describe.get(name, "?") for name in sorted(self._devices)}

    def memory_bytes(self) -> int:
        with self._lock:
            return self._timeline.memory_bytes()

    def record_steps(self, edges: Sequence[StepRow], wait: bool = True) -> None:
        """Add step edges to the recording (no-op without ``record``): :class:`StepEdge`
        objects, or plain tuples in its field order (the books' refresher hands those).
        ``wait=False``: if the meter's thread is writing readings right now, hold them for the
        next call (or the end) rather than wait: compressing releases the GIL, and waiting
        costs the books' refresher a handover of it back from the training thread."""
        if not edges or self._stopped_at is not None:
            return
        if not self._writer_lock.acquire(blocking=wait):
            self._steps_waiting.extend(edges)
            return
        try:
            self._write_steps(edges)
        finally:
            self._writer_lock.release()

    def _write_steps(self, edges: Sequence[StepRow]) -> None:
        """(Under the writer's lock.) Steps held by :meth:`record_steps` first, then these."""
        if self._writer is None:
            self._steps_waiting = []  # recording is off (it failed): nothing to hold for
            return
        if self._steps_waiting:
            edges = [*self._steps_waiting, *edges]
            self._steps_waiting = []
        try:
            # The writer moves them to the trace clock as it formats them: no copy per edge.
            self._writer.write_steps(edges, origin=self._started_at or 0.0)
        except OSError as err:
            self._recording_failed(err)

    # -- step edges for the timeline (issue 13: edge-aware attribution) -----------------
    def add_edges(self, edges: Sequence[StepEdge], until: float) -> None:
        """Step edges on the meter clock, all of them up to ``until``: buffer samples holding
        one are split by segment (:meth:`EnergyTimeline.add_edges`). Once called, energy is
        finalized only as far as edges have come, so call it from the start of a run (an empty
        list is fine) and at each edge sync."""
        self.add_edge_rows(edge_rows(edges), until)

    def add_edge_rows(
        self, rows: Sequence[EdgeRow], until: float, wait: bool = True
    ) -> float | None:
        """:meth:`add_edges` for edges as :data:`~lightning_watt.energy.edge_rows.EdgeRow`
        tuples ``(phase, edge, index, epoch, t)``, in which the books hold them. Returns
        :attr:`finalized_until` after them, read under the same lock. ``wait=False``: if the
        meter's thread holds the lock, add nothing and return ``None`` (hand them again with
        the next ones): it may hold it with the GIL released (numpy), and waiting would cost
        the books' refresher a handover of the GIL back from the training thread."""
        if not self._lock.acquire(blocking=wait):
            return None
        try:
            # One converter for the run: phases open at a batch's cut, an overlap or hole
            # straddling it and the stamps' jitter carry over to the next batch.
            boundaries, known = self._boundaries.add_rows(rows, until)
            self._timeline.add_boundaries(boundaries, known)
            return self._finalized_locked()
        finally:
            self._lock.release()

    def _recording_failed(self, err: OSError) -> None:
        """A full or read-only disk: recording stops (with one warning), measuring goes on."""
        writer, self._writer = self._writer, None
        self._record_pending.clear()
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.abandon()
        self._warn_once(
            "record:failed",
            f"lightning-watt: recording to {self._record} failed ({type(err).__name__}: {err}); "
            "recording is off, measurement goes on in memory and the summary is unaffected.",
        )

    def set_trace_meta(self, **meta: Any) -> None:
        """Extra facts for the recording's meta (``fit_start``, ``fit_end``, ...)."""
        if self._writer is not None:
            origin = self._started_at or 0.0
            self._writer.meta.update(
                {k: v - origin if k in ("fit_start", "fit_end") else v for k, v in meta.items()}
            )

    def _trace_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "description": "recorded by lightning-watt EnergyMeter",
            "devices": {
                d.name: {"uuid": d.uuid, "label": d.label, "estimated": d.estimated}
                for d in self.devices
            },
            "sources": dict(self._describe),
        }
        for source in self._sources:
            facts = source.metadata()
            meta.update({f"{source.name}.{k}": v for k, v in facts.items()})
            # The trace format's own fields, readable by ReplaySource and the report.
            for key in ("gpu", "driver"):
                if key in facts and key not in meta:
                    meta[key] = facts[key]
        return meta
