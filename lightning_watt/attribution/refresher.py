"""A small background thread that keeps a stage's books current, off the training thread.

Resolving step edges, booking them with final energy, writing them to the recording and
attributing the newest steps with provisional energy cost tens to hundreds of microseconds
per call, growing with the edges since the last call. Done at each log tick on the training
thread, that cost was paid inside the step (0.7-2.5 ms a tick). A :class:`Refresher` runs it
every ``interval_s`` on its own thread instead; a log tick then only reads the numbers the last
refresh left.

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

import threading
import warnings
from collections.abc import Callable

from lightning_watt.validate import positive_number

#: The shortest interval between refreshes: the books' numbers a log row reads are at most
#: this old while rows come once per this interval. The books pace the thread by the rows
#: (``StageBooks._pace``): slower rows get about one refresh each, up to
#: ``books.BUSY_INTERVAL_S`` (100 ms) apart; faster rows could not all be fresh anyway and
#: share a refresh every 100 ms, since each refresh has a fixed cost. Measured on a loaded
#: 2-core VM (cold caches, as a thread waking every 25 ms meets them): ~60 µs of CPU with
#: nothing new, ~200 µs with new readings, a few µs more per new step edge.
DEFAULT_INTERVAL_S = 0.025


class Refresher:
    """Calls ``work()`` every ``interval_s`` seconds on a daemon thread until :meth:`stop`.

    Args:
        work: what to run; called with nothing, its result ignored.
        interval_s: seconds between the end of one call and the start of the next.
        name: the thread's name (shown in profilers and ``threading.enumerate()``).
    """

    def __init__(
        self,
        work: Callable[[], object],
        interval_s: float = DEFAULT_INTERVAL_S,
        name: str = "lightning-watt-books",
    ) -> None:
        self._work = work
        self.interval_s = positive_number("interval_s", interval_s)
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def start(self) -> Refresher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and wait (at most ``timeout`` s) for a call in progress to end."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
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


__all__ = ["DEFAULT_INTERVAL_S", "Refresher"]
