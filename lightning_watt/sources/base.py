"""The interface every hardware reader implements, and how the meter drives it.

A source knows its devices and offers *channels*: one reader each, with the interval it
deserves (an NVML energy counter every 100 ms because a read costs 2.5 ms and the value changes
every 100 ms; the driver's power buffer every 0.5 s because it holds 2.4 s of 20 ms samples).
The meter's background thread calls each channel's ``read`` when it is due. ``read`` returns
:class:`~lightning_watt.energy.readings.Reading` values stamped on the meter's clock, may raise on a
hardware error (the meter counts it, warns once, records a gap and, after repeated failures or
a :class:`ChannelLost`, switches to the channel's ``fallback``).

Example:
    >>> class Constant(EnergySource):
    ...     name = "constant"
    ...     def open(self, clock):
    ...         self._clock = clock
    ...     def devices(self):
    ...         return [DeviceInfo("cpu0", kind="cpu", estimated=True)]
    ...     def channels(self):
    ...         read = lambda: [Reading(self._clock(), "cpu0", "estimate_W", 10.0)]
    ...         return [Channel("cpu0/estimate", 0.25, read, ("cpu0",))]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lightning_watt.energy.readings import DeviceInfo, Reading
from lightning_watt.validate import positive_number

Clock = Callable[[], float]


class SourceUnavailable(RuntimeError):
    """The source cannot measure on this machine; ``str(err)`` is a one-line reason a person can
    act on (e.g. "NVML not found: no NVIDIA driver on this machine")."""


class ChannelLost(RuntimeError):
    """A channel will never work again in this run (GPU lost, reader not supported): the meter
    stops calling it at once and switches to its fallback."""


@dataclass
class Channel:
    """One periodic reader of a source.

    Args:
        name: unique within the meter, for error counts and warnings (``gpu0/counter``).
        interval_s: seconds between calls on the meter thread.
        read: returns new readings (possibly none); may raise.
        devices: the devices whose readings it produces (gaps are marked on them on failure).
        fallback: a channel to start when this one is lost (e.g. power fields for the buffer).
        describe: how it measures, for summaries (``"NVML energy counter"``).
        kinds: the reading kinds it produces. Declaring them lets the meter wait for this
            reader from the start (before its first reading), instead of finalizing energy with
            whatever other reader happened to speak first.
        pattern: intervals the meter cycles through between calls instead of ``interval_s``
            (which stays the nominal one), so that a poll's phase sweeps a clock it reads.
    """

    name: str
    interval_s: float
    read: Callable[[], Sequence[Reading]]
    devices: tuple[str, ...]
    fallback: Channel | None = None
    describe: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    kinds: tuple[str, ...] = ()
    pattern: tuple[float, ...] = ()
    _turn: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        positive_number("interval_s", self.interval_s, unit="seconds")
        for gap in self.pattern:
            positive_number("pattern", gap, unit="seconds")

    def next_interval(self) -> float:
        """Seconds until the next call: ``interval_s``, or the next step of ``pattern``.

        Example:
            >>> c = Channel("gpu0/counter", 0.1, list, ("gpu0",), pattern=(0.08, 0.124))
            >>> [c.next_interval() for _ in range(3)]
            [0.08, 0.124, 0.08]
        """
        if not self.pattern:
            return self.interval_s
        self._turn += 1
        return self.pattern[(self._turn - 1) % len(self.pattern)]


class EnergySource(ABC):
    """A reader of hardware (or of a recording of it). Lifecycle: ``open`` -> ``devices`` /
    ``channels`` -> ``close``. ``open`` raises :class:`SourceUnavailable` where it cannot
    measure; it must never be called on the training thread per step."""

    #: Short name used in summaries and traces ("nvml", "rapl", "replay", "estimate").
    name: str = "source"
    #: Whether the source may be opened and read in a helper process forked from the training
    #: process (see ``EnergyMeter.helper_safe``): its readings do not depend on which process
    #: takes them, and nothing it holds before :meth:`open` is bound to the process. ``False``
    #: unless a source says otherwise: a reader of this process's own CPU time would measure
    #: the helper instead.
    helper_safe: bool = False

    @abstractmethod
    def open(self, clock: Clock) -> None:
        """Probe the hardware once; readings are to be stamped with ``clock()``."""

    @abstractmethod
    def devices(self) -> list[DeviceInfo]:
        """The devices this source measures (after ``open``)."""

    @abstractmethod
    def channels(self) -> list[Channel]:
        """The periodic readers the meter should run (after ``open``)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release handles; called once when the meter stops."""

    def describe(self) -> dict[str, str]:
        """How each device is measured, for people: ``{"gpu0": "NVML counter + buffer"}``."""
        return {d.name: self.name for d in self.devices()}

    def metadata(self) -> dict[str, object]:
        """Facts worth recording in a trace's meta (GPU model, driver, ...)."""
        return {}
