"""Serving a recorded watt-trace as if it were live hardware.

:class:`ReplaySource` is how tests, demos and CPU-only machines run the whole pipeline on real
GPU measurements: it plays the recording's readings back on the meter clock, through the same
channels and at the same rates a live NVML source uses.

Time mapping: trace time ``start + (now - opened) * speed``. Power readings keep their watts;
counter increments are divided by ``speed`` so energy stays consistent with the meter clock (a
replay at 2x shows the recorded GPU's power, squeezed into half the time). With ``loop=True``
the recording repeats from ``start`` with the counter carried on (no false reset).

Only readings are replayed. A recording's estimates for spans no sample covers (a late start:
the meta's ``unmeasured``, see :mod:`~lightning_watt.energy.unmeasured`) are not readings: a
replay starts at or after the first sample, so the replaying meter measures what the readings
give and estimates whatever it could not measure itself; nothing is counted twice.

Example:
    >>> from lightning_watt.energy.trace import bundled_trace
    >>> source = ReplaySource(bundled_trace("h200-mlp-stall"), start=6.6, speed=1.0)
    >>> source.speed
    1.0
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Collection
from typing import TypedDict

from lightning_watt.energy.readings import BUFFER_W, COUNTER_J, KINDS, DeviceInfo, Reading
from lightning_watt.energy.timeline import EnergyTimeline
from lightning_watt.energy.trace import Trace, bundled_trace, load_trace
from lightning_watt.sources.base import Channel, Clock, EnergySource
from lightning_watt.validate import (
    boolean,
    finite_number,
    path_like,
    string_collection,
    text,
)

#: The kinds a live NVML source reads from a GPU whose driver buffer works (the power fields
#: are its fallback): what a replay of a recording from such a GPU serves with
#: ``kinds=LIVE_NVML_KINDS``.
LIVE_NVML_KINDS: tuple[str, ...] = (COUNTER_J, BUFFER_W)
#: Polling rates of the live NVML source, mirrored so a replay exercises the same timing.
_INTERVALS = {COUNTER_J: 0.1, "buffer_W": 0.5}
_DEFAULT_INTERVAL = 0.1


class _LapState(TypedDict):
    """Where a replay channel's reader got to: lap number, trace time, first poll or not, and
    the highest counter value served."""

    lap: int
    t: float
    first: bool
    top: float


def resolve_trace(name_or_prefix: str) -> str:
    """The watt-trace prefix ``name_or_prefix`` names: a recording's own prefix, or a bundled
    trace's name; ``ValueError`` naming both when it is neither."""
    if os.path.exists(name_or_prefix + ".meta.json"):
        return name_or_prefix
    try:
        return bundled_trace(name_or_prefix)
    except ValueError:
        raise ValueError(
            f"replay: {name_or_prefix!r} is neither a watt-trace prefix (PREFIX.meta.json not "
            "found) nor a bundled trace ('h100-mlp', 'h200-mlp-stall', 'h200-square-wave')"
        ) from None


#: Faster than this, a replay outruns the meter's thread (and floats' resolution of time).
MAX_REPLAY_SPEED = 1e4


def replay_speed(name: str, value: object) -> float:
    """A replay speed: a number in (0, :data:`MAX_REPLAY_SPEED`]."""
    return finite_number(name, value, minimum=0.0, exclusive_minimum=True, maximum=MAX_REPLAY_SPEED)


class ReplaySource(EnergySource):
    """Replays a watt-trace v1 recording (a prefix, or a loaded :class:`Trace`).

    Args:
        trace: the recording.
        start: trace time the replay begins at (default: the first sample).
        speed: trace seconds per meter second (> 0).
        loop: restart from ``start`` when the recording ends instead of going silent.
        kinds: only replay these kinds (e.g. ``{"average_W"}`` to see what a field-only GPU gives).
        devices: only these devices, optionally renamed: ``{"gpu0": "gpu1"}`` serves the
            recording's ``gpu0`` as ``gpu1``.
        uuid_prefix: prefix for device uuids, so two ranks replaying the same file can either
            share devices (same prefix: counted once) or not.
        name: how the recording is called in labels (default: the prefix's file name).
    """

    name = "replay"
    helper_safe = True  # a recording: the same readings in any process

    @classmethod
    def of_fit(
        cls,
        name_or_prefix: str,
        *,
        speed: float = 1.0,
        uuid_prefix: str = "replay",
        kinds: Collection[str] | None = None,
    ) -> ReplaySource:
        """A looping replay of a recorded fit, from where the fit started (not its idle
        lead-in): ``name_or_prefix`` is a watt-trace prefix or a bundled trace's name;
        ``kinds``: only these reading kinds (default: every kind recorded).

        A live NVML source polls the counter and the driver's buffer where the buffer works,
        and the power fields only as its fallback; ``kinds=LIVE_NVML_KINDS`` replays what
        such a source reads (the recordings hold the fields too, sampled every 10 ms).

        Example:
            >>> ReplaySource.of_fit("h200-mlp-stall").trace_name
            'h200-mlp-stall'
            >>> live = ReplaySource.of_fit("h200-mlp-stall", kinds=LIVE_NVML_KINDS)
            >>> [channel.name for channel in live.channels()]
            ['gpu0/buffer_W', 'gpu0/counter_J']
        """
        prefix = resolve_trace(name_or_prefix)
        trace = load_trace(prefix)
        first, last = trace.span
        start = min(max(float(trace.meta.get("fit_start", first)), first), last - 1.0)
        return cls(
            trace,
            start=start,
            speed=speed,
            loop=True,
            kinds=kinds,
            uuid_prefix=uuid_prefix,
            name=os.path.basename(prefix),
        )

    def __init__(
        self,
        trace: str | os.PathLike[str] | Trace,
        *,
        start: float | None = None,
        speed: float = 1.0,
        loop: bool = False,
        kinds: Collection[str] | None = None,
        devices: dict[str, str] | Collection[str] | None = None,
        uuid_prefix: str = "replay",
        name: str | None = None,
    ) -> None:
        speed = replay_speed("speed", speed)
        start = finite_number("start", start, allow_none=True)
        loop = boolean("loop", loop)
        uuid_prefix = text("uuid_prefix", uuid_prefix)
        name = text("name", name, allow_none=True)
        if not isinstance(trace, Trace):
            trace = path_like("trace", trace)
        if kinds is not None:
            kinds = string_collection("kinds", kinds)
        if devices is not None and not isinstance(devices, dict):
            devices = string_collection("devices", devices)
        self._trace = trace if isinstance(trace, Trace) else load_trace(trace)
        self.label = str(self._trace.meta.get("gpu") or "recorded device")
        if name is None:
            name = os.path.basename(str(trace)) if not isinstance(trace, Trace) else "trace"
        self.trace_name = name
        if not self._trace.samples:
            raise ValueError("trace: the recording has no samples to replay")
        t_first, t_last = self._trace.span
        self.start = t_first if start is None else float(start)
        if not t_first <= self.start < t_last:
            raise ValueError(
                f"start must lie in the recording [{t_first}, {t_last}), got {start!r}"
            )
        if kinds is not None:
            unknown = set(kinds) - KINDS
            if unknown:
                raise ValueError(f"kinds: unknown {sorted(unknown)}; accepted: {sorted(KINDS)}")
        present = set(self._trace.devices)
        if devices is None:
            rename = {d: d for d in present}
        elif isinstance(devices, dict):
            rename = dict(devices)
        else:
            rename = {d: d for d in devices}
        missing = set(rename) - present
        if missing:
            raise ValueError(f"devices: {sorted(missing)} not in the recording {sorted(present)}")
        self.speed = speed
        self.loop = bool(loop)
        self._rename = rename
        self._uuid_prefix = uuid_prefix
        self._end = t_last
        # Per (device, kind): times and values, for bisecting the due window on each read.
        self._series: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        for r in self._trace.select(kinds):
            if r.device in rename:
                ts, vs = self._series.setdefault((r.device, r.kind), ([], []))
                ts.append(r.t)
                vs.append(r.value)
        # Built here, not when the meter starts: it takes tens of milliseconds.
        self._fused: EnergyTimeline = self._trace.timeline(kinds=kinds)
        self._clock: Clock | None = None
        self._opened = 0.0

    # The trace-time position reached by the meter clock, as (lap, trace time).
    def _position(self, now: float) -> tuple[int, float]:
        elapsed = (now - self._opened) * self.speed
        if not self.loop:
            return 0, self.start + elapsed
        span = self._end - self.start
        lap = int(elapsed // span)
        return lap, self.start + (elapsed - lap * span)

    def _meter_time(self, lap: int, trace_t: float) -> float:
        return self._opened + ((trace_t - self.start) + lap * (self._end - self.start)) / self.speed

    def open(self, clock: Clock) -> None:
        self._clock = clock
        self._opened = clock()

    def devices(self) -> list[DeviceInfo]:
        return [
            DeviceInfo(
                name=new,
                kind="gpu" if new.startswith("gpu") else new.rstrip("0123456789") or "device",
                uuid=f"{self._uuid_prefix}:{self.trace_name}:{old}",
                label=f"{self.label} (replay of {self.trace_name})",
            )
            for old, new in sorted(self._rename.items())
        ]

    def channels(self) -> list[Channel]:
        out = []
        for (device, kind), (ts, vs) in sorted(self._series.items()):
            out.append(
                Channel(
                    name=f"{self._rename[device]}/{kind}",
                    interval_s=_INTERVALS.get(kind, _DEFAULT_INTERVAL),
                    read=self._reader(device, kind, ts, vs),
                    devices=(self._rename[device],),
                    describe=f"replay of {kind}",
                    kinds=(kind,),
                )
            )
        return out

    def _counter_at(self, device: str, ts: list[float], vs: list[float], t: float) -> float:
        """The counter's value at trace time ``t``: its last reading plus the energy since, as
        the recording's fused timeline places it."""
        i = bisect.bisect_right(ts, t) - 1
        if i < 0:
            return vs[0]
        fused = self._fused.device(device)
        return vs[i] + fused.energy_at(t) - fused.energy_at(ts[i])

    def _reader(self, device: str, kind: str, ts: list[float], vs: list[float]):
        name = self._rename[device]
        is_counter = kind == COUNTER_J
        # Laps repeat [start, end]. The counter is measured from where it stood at ``start`` and
        # each lap adds the energy of exactly [start, end]; between readings the recording's
        # fused timeline says where the counter stood, not the nearest reading: a reading
        # before ``start`` or before ``end`` would add or drop energy outside the lap.
        origin = self._counter_at(device, ts, vs, self.start) if is_counter else 0.0
        span_energy = self._counter_at(device, ts, vs, self._end) - origin if is_counter else 0.0
        # What the first read (at ``start``) shows: never more than the next recorded read,
        # as a live counter's reads never step back. Where that read's update came before
        # ``start`` (the fused position there is fresher than any read), counted from the
        # fused position it came out negative (-5 J on h200-mlp-stall), which the timeline
        # took for a reset and bridged with power: the energy since that update was counted
        # twice (+8.5 J over a 0.5 s replay, +14 %). Counted from what that read shows, the
        # first reading is that update's, as a live read at ``start`` would be.
        j = bisect.bisect_right(ts, self.start)
        shown = min(origin, vs[j]) if is_counter and j < len(ts) else origin
        state: _LapState = {"lap": 0, "t": self.start - 1e-12, "first": True, "top": -math.inf}

        def value(i: int, lap: int) -> float:
            if not is_counter:
                return vs[i]
            # Counter joules on the meter clock: scaled by speed, carried across laps. Never
            # below a value served already: at a lap's seam the first read of the new lap
            # may show an update from before ``start`` (staler than the lap's last read was
            # at ``end``), which would step back by up to an update's joules; it holds the
            # last value instead, and the next update catches up (each lap still adds
            # exactly the recording's energy over [start, end]).
            state["top"] = max(state["top"], (vs[i] - shown + lap * span_energy) / self.speed)
            return state["top"]

        def read() -> list[Reading]:
            assert self._clock is not None
            lap, now_t = self._position(self._clock())
            out: list[Reading] = []
            while True:
                last_lap, last_t = state["lap"], state["t"]
                if state["first"] and is_counter and ts[0] <= self.start:
                    # A live counter read returns its current value even at the first poll.
                    out.append(Reading(self._meter_time(0, self.start), name, kind, 0.0))
                    state["top"] = 0.0
                state["first"] = False
                end_t = now_t if lap == last_lap else self._end
                lo = bisect.bisect_right(ts, last_t)
                hi = bisect.bisect_right(ts, end_t)
                out.extend(
                    Reading(self._meter_time(last_lap, ts[i]), name, kind, value(i, last_lap))
                    for i in range(max(lo, 0), hi)
                    if ts[i] >= self.start
                )
                if lap == last_lap:
                    state["t"] = now_t
                    break
                state["lap"], state["t"] = last_lap + 1, self.start - 1e-12
            return out

        return read

    def describe(self) -> dict[str, str]:
        kinds = sorted({k for (_, k) in self._series})
        return {
            new: f"replay of {self.trace_name} ({self.label}; {', '.join(kinds)})"
            for new in self._rename.values()
        }

    def metadata(self) -> dict[str, object]:
        return {
            "trace": self.trace_name,
            "gpu": self.label,
            "start": self.start,
            "speed": self.speed,
        }
