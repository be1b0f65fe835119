"""Keeps a stage's books current off the training thread: on the meter's, with a watchdog.

Resolving step edges, booking them with final energy, writing them to the recording and
attributing the newest steps with provisional energy cost tens to hundreds of microseconds
per call, growing with the edges since the last call. Done at each log tick on the training
thread, that cost was paid inside the step (0.7-2.5 ms a tick). A :class:`Refresher` runs it
every ``interval_s`` off that thread instead; a log tick then only reads the numbers the last
refresh left.

Given a ``host`` (the stage's meter), the meter's thread runs the work between its reads,
mostly in the same wake as its counter read (see ``EnergyMeter.add_companion``): a separate
thread woke ~10-13 more times a second, and each wake takes the GIL from the training thread.
The refresher's own thread then only watches, and refreshes itself while the meter's thread is
stuck in a driver call, so log rows never freeze.

The work function must be safe to run next to the training thread (the books hold a lock for
that). An exception in it is counted and warned about once; the thread keeps going, so a
measurement fault never reaches training.

Example:
    >>> import time
    >>> calls = []
    >>> worker = Refresher(lambda: calls.append(1), interval_s=0.01, name="doc").start()
    >>> time.sleep(0.1)
    >>> worker.stop()
    >>> len(calls) > 0, worker.running
    (True, False)
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable
from typing import Protocol

from lightning_watt.validate import positive_number

#: The shortest interval between refreshes: the books' numbers a log row reads are at most
#: this old while rows come once per this interval. The books pace the thread by the rows
#: (``StageBooks._pace``): slower rows get about one refresh each, up to
#: ``books.BUSY_INTERVAL_S`` (100 ms) apart; faster rows could not all be fresh anyway and
#: share a refresh every 100 ms, since each refresh has a fixed cost. Measured on a loaded
#: 2-core VM (cold caches, as a thread waking every 25 ms meets them): ~60 µs of CPU with
#: nothing new, ~200 µs with new readings, a few µs more per new step edge.
DEFAULT_INTERVAL_S = 0.025
#: With a host, how long the work may go uncalled by it before the refresher's own thread calls
#: it (the host's thread stuck in a driver read, or stopped): log rows then read numbers at
#: most this much older than usual. The watching thread wakes about this often.
WATCHDOG_S = 0.5


class Host(Protocol):
    """What a refresher's host offers (:class:`~lightning_watt.energy.meter.EnergyMeter`)."""

    def now(self) -> float: ...

    def add_companion(self, companion: Refresher) -> None: ...

    def remove_companion(self, companion: Refresher) -> None: ...


class Refresher:
    """Calls ``work()`` every ``interval_s`` seconds off the training thread until :meth:`stop`.

    Args:
        work: what to run; called with nothing, its result ignored.
        interval_s: seconds between the end of one call and the start of the next.
        name: the thread's name (shown in profilers and ``threading.enumerate()``).
        host: a running meter whose thread runs the work between its reads (see
            :meth:`~lightning_watt.energy.meter.EnergyMeter.add_companion`), sharing their
            wakes: each wake of a thread takes the GIL from the training thread, and ~13 wakes
            a second of its own cost 1.5 ms steps several percent of their throughput. The
            refresher's own thread then only watches: when the host has not run the work for
            ``WATCHDOG_S`` (a read stuck in the driver, the meter stopped), it runs it every
            ``interval_s`` itself until the host does again. ``None``: the thread does it all.
    """

    def __init__(
        self,
        work: Callable[[], object],
        interval_s: float = DEFAULT_INTERVAL_S,
        name: str = "lightning-watt-books",
        host: Host | None = None,
    ) -> None:
        self._work = work
        self.interval_s = positive_number("interval_s", interval_s)
        self._name = name
        self._host = host
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # One call at a time, whichever thread makes it; the other skips.
        self._calling = threading.Lock()
        self._last_end = -math.inf if host is None else host.now()
        self.errors = 0
        #: Calls made by the host's thread and by the refresher's own.
        self.calls = {"host": 0, "own": 0}

    def start(self) -> Refresher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
            if self._host is not None:
                self._host.add_companion(self)
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop calling (the host and the thread) and wait (at most ``timeout`` s) for a call
        in progress to end."""
        self._stop.set()
        if self._host is not None:
            self._host.remove_companion(self)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._calling.acquire(timeout=timeout):  # a call on the host's thread
            self._calling.release()

    # ------------------------------------------------------------------ the host's side
    def next_due(self) -> float:
        """When the host should next call (its clock)."""
        return self._last_end + self.interval_s

    def run_on_meter(self) -> None:
        """One call on the host's thread (it skips a call the own thread is making)."""
        self._call("host")

    # ------------------------------------------------------------------ the own thread
    def _run(self) -> None:
        host = self._host
        wait = self.interval_s
        while not self._stop.wait(wait):
            if host is None:
                self._call("own")
                wait = self.interval_s
                continue
            idle = host.now() - self._last_end
            if idle < WATCHDOG_S:
                wait = WATCHDOG_S - idle  # the host's thread calls meanwhile
            else:
                self._call("own")
                wait = self.interval_s

    def _call(self, who: str) -> None:
        if not self._calling.acquire(blocking=False):
            if self._host is not None:
                self._last_end = self._host.now()  # the other thread's call: not due again yet
            return
        try:
            if self._stop.is_set():
                return
            self.calls[who] += 1
            try:
                self._work()
            except Exception as err:  # never let a bookkeeping fault end measuring
                self.errors += 1
                if self.errors == 1:
                    warnings.warn(
                        f"lightning-watt: refreshing the energy books failed ({type(err).__name__}:"
                        f" {err}); log rows may lag, the summary is computed again at the end.",
                        RuntimeWarning,
                        stacklevel=1,
                    )
        finally:
            if self._host is not None:
                self._last_end = self._host.now()
            self._calling.release()


__all__ = ["DEFAULT_INTERVAL_S", "WATCHDOG_S", "Host", "Refresher"]
