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

import contextlib
import heapq
import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from lightning_watt.energy.readings import COUNTER_J, POWER_KINDS, DeviceInfo, Reading
from lightning_watt.energy.timeline import EnergyTimeline, Gap
from lightning_watt.energy.trace import StepEdge, TraceWriter
from lightning_watt.sources.base import Channel, ChannelLost, EnergySource, SourceUnavailable
from lightning_watt.validate import positive_int

#: Readings are held this long (meter clock) before they are recorded: channels deliver out of
#: time order (the driver buffer is drained every 0.5 s and holds 2.4 s of samples) and
#: watt-trace rows must be sorted by time.
_RECORD_HOLD_S = 5.0


class _SyncRequest:
    """One :meth:`EnergyMeter.sync` call waiting for the meter thread's read of everything."""

    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False

    def finish(self, ok: bool) -> None:
        self.ok = ok
        self.done.set()


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
        self._last_flush = 0.0
        # Readings waiting to be recorded, as a heap of (t, arrival, reading).
        self._record_pending: list[tuple[float, int, Reading]] = []
        self._record_seq = 0
        self._record_written_t = -math.inf
        self._record_late = 0

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
        self._thread = threading.Thread(
            target=self._run, args=(channels,), name="lightning-watt-meter", daemon=True
        )
        self._thread.start()
        return self

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
        thread.join(timeout=10.0)
        self._stopped_at = requested
        with self._lock:
            self._timeline.flush()
        for source in self._sources:
            try:
                source.close()
            except Exception as err:
                self._warn_once(f"close:{source.name}", f"closing {source.name} failed: {err}")
        if self._writer is not None:
            try:
                self._record_samples([], final=True)
                self._writer.meta.update(self._trace_meta())
                # The recording's own window is the meter's: [0, stop] on the trace clock. A
                # fit window opened with set_trace_meta(fit_start=...) closes here too, so the
                # trace and the meter's totals cover exactly the same span.
                stop = self._stopped_at - (self._started_at or 0.0)
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
        failures: dict[str, int] = {}
        last_ok: dict[str, float] = {}
        now = self._clock()
        queue: list[tuple[float, int, Channel]] = [(now, i, c) for i, c in enumerate(channels)]
        heapq.heapify(queue)
        counter = len(queue)
        ok = False
        try:
            while queue and not self._stop_event.is_set():
                with self._sync_lock:
                    requests, self._sync_pending = self._sync_pending, []
                if requests:
                    queue, counter, ok = self._poll_all(queue, counter, failures, last_ok)
                    for request in requests:
                        request.finish(ok)
                    continue
                due, _, channel = queue[0]
                wait = due - self._clock()
                if wait > 0:
                    # Woken early by sync() or stop(); either way, look again.
                    self._wake.wait(wait)
                    self._wake.clear()
                    continue
                heapq.heappop(queue)
                replacement, _ = self._poll(channel, failures, last_ok)
                if replacement is not None:
                    next_due = max(due + replacement.interval_s, self._clock())
                    heapq.heappush(queue, (next_due, counter, replacement))
                    counter += 1
            # One last read of everything, so the energy reaches the moment stop() was called.
            # A sync() asked for before it is served by it.
            _, _, ok = self._poll_all(queue, counter, failures, last_ok)
        finally:
            with self._sync_lock:
                self._sync_open = False
                requests, self._sync_pending = self._sync_pending, []
            for request in requests:
                request.finish(ok)

    def _poll_all(
        self,
        queue: list[tuple[float, int, Channel]],
        counter: int,
        failures: dict[str, int],
        last_ok: dict[str, float],
    ) -> tuple[list[tuple[float, int, Channel]], int, bool]:
        """Read every scheduled channel once now (for sync() and the final read); returns the
        new schedule, the next sequence number and whether every read succeeded. A channel
        given up for its fallback has the fallback read at once in its place."""
        ok = bool(queue)
        out: list[tuple[float, int, Channel]] = []
        for _, _, channel in sorted(queue, key=lambda x: x[1]):
            current: Channel | None = channel
            while current is not None:
                replacement, read_ok = self._poll(current, failures, last_ok)
                if read_ok or replacement is None or replacement is current:
                    ok = ok and read_ok
                    break
                current = replacement  # lost: its fallback speaks for it in this pass
            if replacement is not None:
                # The next regular read a full interval after this one: a read moments later
                # costs the same and says next to nothing (the estimate's 10 ms ticks).
                out.append((self._clock() + replacement.interval_s, counter, replacement))
                counter += 1
        heapq.heapify(out)
        return out, counter, ok

    def _poll(
        self, channel: Channel, failures: dict[str, int], last_ok: dict[str, float]
    ) -> tuple[Channel | None, bool]:
        """Read one channel; returns the channel to schedule next (itself, its fallback, or
        ``None`` when given up) and whether the read succeeded."""
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
            give_up = lost or failures[channel.name] >= self._max_errors
            fallback = channel.fallback
            then = (
                f"switching to {fallback.name}"
                if give_up and fallback
                else "giving up on it"
                if give_up
                else "retrying"
            )
            self._warn_once(
                channel.name,
                f"lightning-watt: reading {channel.name} failed ({type(err).__name__}: {err}); "
                f"{then}. Training continues; the gap is recorded.",
            )
            if give_up:
                with self._lock:
                    for device, kind in self._produces.get(channel.name, ()):
                        self._timeline.retire(device, kind)
                if fallback is not None:
                    self._declare(fallback, self._clock())
                return fallback, False
            return channel, False
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
        pairs = {(d, k) for d in channel.devices for k in channel.kinds}
        if pairs:
            self._produces.setdefault(channel.name, set()).update(pairs)
            with self._lock:
                self._timeline.mark_polled(pairs, t)

    def _ingest(self, readings: list[Reading]) -> None:
        with self._lock:
            self._timeline.add(readings)
            for r in readings:
                if r.kind == COUNTER_J:
                    prev = self._last_counter.get(r.device)
                    self._last_counter[r.device] = (r.t, r.value)
                    # Derived power only over a full counter update, never a 3 ms spike.
                    if prev is not None and r.t - prev[0] >= 0.08 and r.value > prev[1]:
                        self._note_power(r.device, r.t, (r.value - prev[1]) / (r.t - prev[0]), 99)
                else:
                    self._note_power(r.device, r.t, r.value, POWER_KINDS.index(r.kind))
        if self._writer is not None:
            try:
                self._record_samples(readings, final=False)
                now = self._clock()
                if now - self._last_flush > 5.0:
                    self._last_flush = now
                    self._writer.flush()
            except OSError as err:
                self._recording_failed(err)

    def _record_samples(self, readings: Sequence[Reading], final: bool) -> None:
        """Write readings to the recording in time order, once no channel can still deliver
        older ones (``final``: write all that is held)."""
        assert self._writer is not None
        # watt-trace time 0 is the meter's start: recordings from any clock line up.
        origin = self._started_at or 0.0
        pending = self._record_pending
        for r in readings:
            heapq.heappush(pending, (r.t, self._record_seq, r._replace(t=r.t - origin)))
            self._record_seq += 1
        until = math.inf if final else self._clock() - _RECORD_HOLD_S
        out: list[Reading] = []
        while pending and pending[0][0] <= until:
            t, _, r = heapq.heappop(pending)
            if t < self._record_written_t:
                # Later rows are already on disk; writing it would make the file unreadable.
                self._record_late += 1
                continue
            self._record_written_t = t
            out.append(r)
        self._writer.write_samples(out)
        if self._record_late:
            self._warn_once(
                "record:late",
                f"lightning-watt: {self._record_late} reading(s) arrived more than "
                f"{_RECORD_HOLD_S} s late and were left out of the recording (energy unaffected).",
            )

    def _note_power(self, device: str, t: float, watts: float, rank: int) -> None:
        """Latest power per device, from the best kind seen recently."""
        prev = self._latest_power.get(device)
        if prev is None or rank <= prev[2] or t - prev[0] > 1.0:
            self._latest_power[device] = (t, watts, rank)
        if watts > self._peak_power.get(device, -math.inf):
            self._peak_power[device] = watts

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=2)

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

    def energy_between(self, t0: float, t1: float, provisional: bool = True) -> dict[str, float]:
        """Joules per device over ``[t0, t1]`` (meter clock)."""
        with self._lock:
            return self._timeline.energy_between(t0, t1, provisional)

    def energy_at(self, t: float, provisional: bool = True) -> dict[str, float]:
        """Cumulative joules per device from the first reading to ``t``."""
        with self._lock:
            return self._timeline.energy_at(t, provisional)

    def energy_at_many(
        self, times: Sequence[float], provisional: bool = True
    ) -> list[dict[str, float]]:
        """Cumulative joules per device at each of ``times``, under one lock acquisition."""
        with self._lock:
            return [self._timeline.energy_at(t, provisional) for t in times]

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
            return {d: p[1] for d, p in sorted(self._latest_power.items())}

    def peak_power(self) -> dict[str, float]:
        """Highest power seen per device (watts)."""
        with self._lock:
            return dict(sorted(self._peak_power.items()))

    @property
    def finalized_until(self) -> float:
        """Energies up to this time will not change any more."""
        with self._lock:
            return self._timeline.finalized_until

    @property
    def horizon(self) -> float:
        """Energies are known (provisionally) up to this time."""
        with self._lock:
            return self._timeline.horizon

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

    def source_descriptions(self) -> dict[str, str]:
        """What each device's source says about how it measures."""
        return {name: self._describe.get(name, "?") for name in sorted(self._devices)}

    def memory_bytes(self) -> int:
        with self._lock:
            return self._timeline.memory_bytes()

    def record_steps(self, edges: Sequence[StepEdge]) -> None:
        """Add step edges to the recording (no-op without ``record``)."""
        if self._writer is not None and edges and self._stopped_at is None:
            origin = self._started_at or 0.0
            try:
                self._writer.write_steps(
                    e._replace(
                        t_host=e.t_host - origin,
                        t_gpu=None if e.t_gpu is None else e.t_gpu - origin,
                    )
                    for e in edges
                )
            except OSError as err:
                self._recording_failed(err)

    # -- step edges for the timeline (issue 13: edge-aware attribution) -----------------
    def add_edges(self, edges: Sequence[StepEdge], until: float) -> None:
        """Step edges on the meter clock, all of them up to ``until``: buffer samples holding
        one are split by segment (:meth:`EnergyTimeline.add_edges`). Once called, energy is
        finalized only as far as edges have come, so call it from the start of a run (an empty
        list is fine) and at each edge sync."""
        from lightning_watt.energy.segment_fit import edges_from_steps

        with self._lock:
            self._timeline.add_edges(edges_from_steps(edges), until)

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
