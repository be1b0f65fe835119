"""Spans of a device that no reading covers, and the estimate charged for them: what the meter
counts and reports as unmeasured, and how a recording keeps it (the meta field ``unmeasured``).

A span is carried one of two ways in a recording:

* ``in_samples``: a device that stopped being measured (a lost GPU, a read stuck at the end) is
  estimated from its last data on, and that estimate is in the samples as ``estimate_W``
  readings; the meta only says why, and readers must not add it again.
* not ``in_samples``: a device whose data began late (reads stuck at the start) has no reading
  at all over ``[since, until]``; its estimate exists only in the meta, and a reader adds
  ``watts * (until - since)`` to the device's energy on top of the fused readings, as the live
  meter does. It is not written as readings: by the time the estimate is decided (a second of
  final energy after the first data) the rows around the start are usually on disk already,
  and estimate readings before the first real one would change how the timeline fuses the
  device's measured part.

Example:
    >>> late = UnmeasuredSpan("gpu0", 0.0, 300.0, "no readings for the first 1.5 s",
    ...                       "its mean power over the 1.0 s after", until=1.5, in_samples=False)
    >>> summarise_unmeasured([late], 0.5, 10.0, end=10.0)["gpu0"]["energy_J"]
    300.0
    >>> add_estimates_at({"gpu0": 50.0}, [late], 1.0)
    {'gpu0': 350.0}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_watt.energy.timeline import EnergyTimeline

#: The recording's meta field holding the spans (a list of :meth:`UnmeasuredSpan.to_meta`).
META_KEY = "unmeasured"


@dataclass(frozen=True)
class UnmeasuredSpan:
    """``device`` was not measured from ``since`` to ``until`` (``inf``: to the end of the
    measurement); its energy there is ``watts``, an estimate resting on ``basis``.
    ``in_samples``: whether the recording's samples hold the estimate (see the module)."""

    device: str
    since: float
    watts: float
    reason: str
    basis: str
    until: float = math.inf
    in_samples: bool = True

    def joules(self, t: float) -> float:
        """The estimate's joules from ``since`` to ``t``."""
        return self.watts * (min(max(t, self.since), self.until) - self.since)

    def to_meta(self, origin: float = 0.0, end: float = math.inf) -> dict[str, Any]:
        """The span as a meta entry, times less ``origin`` (the trace clock); ``until`` closed
        at ``end`` when given, ``None`` while still open (a recording cut off then)."""
        until = min(self.until, end)
        return {
            "device": self.device,
            "since": self.since - origin,
            "until": until - origin if math.isfinite(until) else None,
            "watts": self.watts,
            "reason": self.reason,
            "basis": self.basis,
            "in_samples": self.in_samples,
        }


def summarise_unmeasured(
    spans: Iterable[UnmeasuredSpan], t0: float, t1: float, end: float
) -> dict[str, dict[str, float | str]]:
    """Per device, the estimated joules and the seconds of ``[t0, t1]`` (up to ``end``, the
    end of the measurement) its spans cover, why, and what the estimates rest on: what
    :meth:`EnergyMeter.unmeasured` returns, and what a recording's meta gives back."""
    out: dict[str, dict[str, float | str]] = {}
    for gone in sorted(spans, key=lambda s: (s.device, s.since)):
        a = max(t0, gone.since)
        b = min(t1, end, gone.until)
        if b <= a:
            continue
        # The estimate is a constant power by construction: exact before any timeline has
        # finalized that span (it waits for the other readers and step edges).
        span: dict[str, float | str] = {
            "energy_J": gone.watts * (b - a),
            "seconds": b - a,
            "reason": gone.reason,
            "basis": gone.basis,
        }
        seen = out.get(gone.device)
        if seen is not None:  # unmeasured at the start and again at the end
            span = {
                k: f"{seen[k]}; {v}" if isinstance(v, str) else float(seen[k]) + v
                for k, v in span.items()
            }
        out[gone.device] = span
    return out


def add_estimates_at(
    energies: dict[str, float], spans: Iterable[UnmeasuredSpan], t: float
) -> dict[str, float]:
    """Each device's cumulative joules at ``t`` plus its ``spans``' estimates from their start
    to ``t`` (in place; returned). Devices not in ``energies`` are left out. ``spans``: those
    no reading covers (late starts): what the meter and a recording's timeline add on top of
    the fused readings."""
    for s in spans:
        if s.device in energies:
            energies[s.device] += s.joules(t)
    return energies


def add_estimates_between(
    energies: dict[str, float], spans: Iterable[UnmeasuredSpan], t0: float, t1: float
) -> dict[str, float]:
    """:func:`add_estimates_at` for the joules over ``[t0, t1]``."""
    for s in spans:
        if s.device in energies:
            energies[s.device] += s.joules(t1) - s.joules(t0)
    return energies


def add_estimates_columns(
    columns: dict[str, list[float]], spans: Iterable[UnmeasuredSpan], times: Sequence[float]
) -> dict[str, list[float]]:
    """:func:`add_estimates_at` for per-device columns of cumulative joules at ``times``."""
    for s in spans:
        column = columns.get(s.device)
        if column is not None:
            for i, t in enumerate(times):
                column[i] += s.joules(t)
    return columns


def added_joules_many(spans: Iterable[UnmeasuredSpan], device: str, x: np.ndarray) -> np.ndarray:
    """The joules :func:`add_estimates_at` adds to ``device`` (its spans no reading covers),
    at many times at once.

    Example:
        >>> late = UnmeasuredSpan("gpu0", 0.0, 10.0, "late", "after", until=2.0, in_samples=False)
        >>> added_joules_many([late], "gpu0", np.array([-1.0, 1.0, 5.0])).tolist()
        [0.0, 10.0, 20.0]
    """
    out = np.zeros(np.shape(x))
    for s in spans:
        if s.device == device and not s.in_samples:
            out += s.watts * (np.clip(x, s.since, s.until) - s.since)
    return out


class RecordedTimeline(EnergyTimeline):
    """An :class:`EnergyTimeline` of a recording's readings whose energies also hold the
    recording's estimates for spans no reading covers (``added``: late starts), as the live
    meter's energies did. :meth:`EnergyTimeline.device` and its knots are the readings alone.

    Example:
        >>> from lightning_watt.energy.readings import Reading
        >>> late = UnmeasuredSpan("gpu0", 0.0, 100.0, "late", "after", until=1.0,
        ...                       in_samples=False)
        >>> tl = RecordedTimeline([late])
        >>> tl.add([Reading(t, "gpu0", "instant_W", 100.0) for t in (1.0, 2.0)]); tl.flush()
        >>> tl.energy_between(0.0, 2.0)
        {'gpu0': 200.0}
    """

    def __init__(self, added: Sequence[UnmeasuredSpan] = (), **timeline_kwargs: Any) -> None:
        super().__init__(**timeline_kwargs)
        self.added = [s for s in added if not s.in_samples]

    def energy_between(self, t0: float, t1: float, provisional: bool = True) -> dict[str, float]:
        return add_estimates_between(
            super().energy_between(t0, t1, provisional), self.added, t0, t1
        )

    def energy_at(self, t: float, provisional: bool = True) -> dict[str, float]:
        return add_estimates_at(super().energy_at(t, provisional), self.added, t)

    def columns(self, times: Sequence[float], provisional: bool = True) -> dict[str, list[float]]:
        return add_estimates_columns(super().columns(times, provisional), self.added, times)
