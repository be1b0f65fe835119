"""A stage's meter and books in a helper process: nothing of ours holds the training GIL.

On threads, the meter's reads and fits and the books' refreshes (~1 % of a core) each took the
GIL from the training thread: at 1.5 ms CPU steps that cost 2-3 % of the steps, and the same
CPU replayed in a forked process cost nothing measurable (``benchmarks/background_cost.py``).
Here the training process forks a helper when a stage begins; the helper starts the meter,
keeps the books (:class:`~lightning_watt.attribution.books.StageBooks`, unchanged) and serves
them. The training thread only:

* appends each step edge (host time) to a list, and every ``FLUSH_S`` writes the list to a
  pipe in one non-blocking write, with a *watermark*: every edge before it is in the pipe, so
  the helper never finalises energy past an edge it has not seen
  (:mod:`~lightning_watt.attribution.edge_pipe`);
* reads the newest :class:`~lightning_watt.attribution.books.Snapshot` the helper left in
  shared memory after each refresh (:mod:`~lightning_watt.attribution.snapshot_board`);
* asks the helper over a socket for everything else (epoch ends, checkpoints, the stage's
  end), where a round trip of a millisecond is nothing.

The helper shares the training process's memory as it was at the fork. Pages the training
process writes afterwards would be copied for it, the helper keeping the old ones: the
tensors training writes (the model's parameters, ``release``) are dropped in the helper at
once (``MADV_DONTNEED``), so that training writes them in place as before.

Warnings the helper's meter raises are re-raised in the training process (filters, pytest
and loggers see them there). The helper ignores SIGINT and SIGTERM (the training process
decides when to stop) and exits when the training process closes the socket or dies. A
helper that ends early is warned about once; the stage then keeps the numbers it last
published and its summary says so (:attr:`ProcessBooks.lost`).

Only used where it is safe and measured to pay: Linux (``os.fork``), step edges on host time
(a CUDA event must be resolved in the process that recorded it), a meter not started yet on
the default clock whose every source declares itself safe in a forked process
(:attr:`~lightning_watt.energy.meter.EnergyMeter.helper_safe`: replays, RAPL, the system-wide
estimate; NVML not until it has been checked on NVIDIA hardware).

Example:
    >>> from lightning_watt import EnergyMeter, ReplaySource, bundled_trace
    >>> meter = EnergyMeter([ReplaySource(bundled_trace("h200-mlp-stall"), start=10.0)])
    >>> books = ProcessBooks.open(meter)
    >>> [d.name for d in books.meter.devices]
    ['gpu0']
    >>> books.begin({"gpu0": 1.0})
    >>> books.mark("train", "start", 0, epoch=0)
    >>> books.mark("train", "end", 0, epoch=0)
    >>> record = books.finish(epoch=0)
    >>> record.totals.steps["train"], books.helper_exit_code
    (1, 0)
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import math
import mmap
import multiprocessing
import os
import pickle
import select
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from lightning_watt.attribution.books import (
    RowNumbers,
    RunTotals,
    Snapshot,
    StageBooks,
    StageRecord,
    Tick,
    device_record,
)
from lightning_watt.attribution.edge_pipe import PIPE_BYTES, PipedClock, edge_frame
from lightning_watt.attribution.snapshot_board import SnapshotBoard
from lightning_watt.attribution.step_clock import ResolvedRow
from lightning_watt.energy.meter import EnergyMeter
from lightning_watt.energy.readings import DeviceInfo

#: Seconds between the training thread's writes of step edges to the pipe (one write of all
#: edges marked since, ~40 µs from the cold caches a training thread meets it with: at every
#: 25 ms that was ~2 µs a 1.3 ms step). The helper's books refresh every 25-100 ms, so the
#: rows' steps lag by up to this much more than on threads.
FLUSH_S = 0.05
#: Seconds a request to the helper may take (the stage's end waits for the meter's last
#: reads and the final books: a few hundred ms); past it the helper is taken for lost.
REQUEST_TIMEOUT_S = 30.0
#: Seconds a request that waits for readings (``timeout``) may take beyond that wait.
REQUEST_MARGIN_S = 5.0
#: Seconds the helper takes to start (a fork, the sources opened) before it is taken for lost.
START_TIMEOUT_S = 30.0
#: Edge bytes the training process holds back while the pipe is full before it gives the
#: helper up (~1.5 M edges: minutes of a helper that reads nothing).
MAX_BACKLOG_BYTES = 64 << 20
#: Seconds between the training thread's checks (in a log row) that the helper is alive.
ALIVE_CHECK_S = 1.0

_F_SETPIPE_SZ = 1031
_MADV_DONTNEED = 4


def helper_unavailable(meter: EnergyMeter, host_time: bool) -> str | None:
    """Why ``meter`` cannot run in a helper process here, or ``None`` if it can."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return "not on Linux"
    if not host_time:
        return "step edges are CUDA events (resolved in the process that records them)"
    if not meter.helper_safe:
        if meter.running or meter.started_at is not None:
            return "the meter was started already"
        return "a source (or the meter's clock) is not declared safe in a forked process"
    return None


@dataclass(frozen=True)
class _Hello:
    devices: list[DeviceInfo]
    unavailable: dict[str, str]
    started_at: float


class _LostHelper(RuntimeError):
    """The helper process ended, hung or broke its channel."""


# ---------------------------------------------------------------------- the helper's side
class _ServedBooks(StageBooks):
    """The books in the helper: every refresh leaves its snapshot on the board."""

    def __init__(
        self,
        meter: EnergyMeter,
        clock: PipedClock,
        weights: Mapping[str, float],
        board: SnapshotBoard,
        warned: list[tuple[str, type[Warning]]],
    ) -> None:
        self._board = board
        self._warned = warned
        self._names = [d.name for d in meter.devices]
        self._published: tuple[Snapshot | None, bool, int] = (None, False, 0)
        self._piped = clock
        super().__init__(meter, clock, weights)  # type: ignore[arg-type]

    def _pace(self) -> None:
        self._ticks = self._piped.ticks  # the training process counts its rows
        super()._pace()

    def refresh(self, pause_s: float = 0.0, sync_s: float = 0.0) -> Snapshot:
        with self._lock:  # the meter's thread and a request may both refresh
            snapshot = super().refresh(pause_s=pause_s, sync_s=sync_s)
            self.publish(snapshot)
            return snapshot

    def publish(self, snapshot: Snapshot | None) -> None:
        with self._lock:
            key = (snapshot, self.busy, len(self._warned))
            if key[0] is self._published[0] and key[1:] == self._published[1:]:
                return
            self._published = key
            self._board.publish(snapshot, self.busy, self._names, self._warned)


def _serve(
    meter: EnergyMeter, rpc: Connection, edge_fd: int, board: SnapshotBoard, parent: int
) -> None:
    """The helper's main thread: start the meter, then answer the training process until the
    stage ends or the training process goes."""
    warned: list[tuple[str, type[Warning]]] = []

    def forward(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if len(warned) >= 50:
            return
        try:
            pickle.dumps(category)
        except Exception:  # a class defined in a function: its text still arrives
            category = RuntimeWarning
        warned.append((str(message)[:2000], category))

    warnings.showwarning = forward
    books: _ServedBooks | None = None
    try:
        try:
            meter.start()
            rpc.send(("ok", _Hello(meter.devices, meter.unavailable, float(meter.started_at or 0))))
        except Exception as err:
            rpc.send(("error", err))
            return
        while True:
            if not rpc.poll(1.0):
                if os.getppid() != parent:
                    break  # the training process died without closing the socket
                continue
            method, args = rpc.recv()
            try:
                if method == "begin":
                    books = _ServedBooks(
                        meter,
                        PipedClock(edge_fd, float(meter.started_at or 0.0)),
                        args[0],
                        board,
                        warned,
                    )
                    result: Any = None
                elif method == "abort" and books is None:
                    meter.stop()
                    result = None
                else:
                    assert books is not None, "begin first"
                    # measure_now, settle and refresh publish through refresh().
                    result = getattr(books, method)(*args)
                reply: tuple[str, Any] = ("ok", result)
            except Exception as err:
                reply = ("error", err)
            try:
                rpc.send((*reply, list(warned)))
            except Exception as err:  # an unpicklable result or exception
                rpc.send(("error", RuntimeError(f"{method}: {err!r}"), list(warned)))
            if method in ("finish", "abort"):
                return
    except (EOFError, OSError):
        pass  # the training process closed the socket
    finally:
        # The training process is gone or gave up on us: close the recording properly.
        with contextlib.suppress(Exception):
            if books is not None:
                books.abort()
            else:
                meter.stop()


def _child(
    meter: EnergyMeter, rpc: Connection, edge_fd: int, board: SnapshotBoard, parent: int
) -> None:
    code = 0
    try:
        # The training process handles Ctrl-C and the scheduler's SIGTERM; it then ends the
        # stage (or dies, which closes the socket): either way the helper is told.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        threading.current_thread().name = "lightning-watt-helper"
        _serve(meter, rpc, edge_fd, board, parent)
    except BaseException:
        code = 1
    finally:
        # Never run the training process's exit handlers (Lightning's, torch's) here.
        os._exit(code)


# ---------------------------------------------------------------------- the training side
class HelperMeter:
    """What the training process sees of the helper's meter: its devices, what it skipped,
    its clock and the newest numbers the helper published."""

    def __init__(self, hello: _Hello, books: ProcessBooks) -> None:
        self.devices = hello.devices
        self.unavailable = hello.unavailable
        self.started_at = hello.started_at
        self._books = books

    @staticmethod
    def now() -> float:
        return time.monotonic()

    @property
    def horizon(self) -> float:
        snap = self._books.snapshot
        return -math.inf if snap is None else snap.horizon

    def power(self) -> dict[str, float]:
        snap = self._books.snapshot
        return {} if snap is None else dict(snap.device_power_W)

    @property
    def running(self) -> bool:
        return self._books.alive


class _HostClock:
    """The training process's clock object: host time needs no anchoring."""

    uses_gpu_time = False

    @staticmethod
    def reanchor() -> None:
        return None


class ProcessBooks:
    """A stage's books kept by a helper process; the methods of
    :class:`~lightning_watt.attribution.books.StageBooks` that the accountant calls.

    Build with :meth:`open` (forks; the helper starts the meter), then :meth:`begin` with the
    devices' weights. See the module's docstring for what runs where.
    """

    def __init__(self, pid: int, rpc: Connection, edge_fd: int, board: SnapshotBoard) -> None:
        self._pid = pid
        self._rpc = rpc
        self._edge_fd = edge_fd
        self._board = board
        self.clock = _HostClock()
        self.meter: HelperMeter
        self.started_at = 0.0
        self.weights: dict[str, float] = {}
        self._rows_out: list[ResolvedRow] = []
        self._out = bytearray()  # framed edges not written yet (the pipe was full)
        self._flush_at = -math.inf
        self._ticks = 0
        self._rows = RowNumbers(0.0)
        self._seq = 0
        self._names: list[str] = []
        self._snapshot: Snapshot | None = None
        self._busy = False
        self._warned_n = 0
        self._checked_at = time.monotonic()
        #: Why the helper was lost (``None`` while it serves): the stage keeps its last numbers.
        self.lost: str | None = None
        self._starting = False
        # One request at a time on the socket, whichever thread asks.
        self._asking = threading.Lock()
        #: The helper's exit status once it has ended (0: a clean end).
        self.helper_exit_code: int | None = None

    # ------------------------------------------------------------------ start
    @classmethod
    def open(cls, meter: EnergyMeter, release: Sequence[tuple[int, int]] = ()) -> ProcessBooks:
        """Fork the helper and start ``meter`` there (its errors are raised here).

        ``release``: ``(address, bytes)`` of memory the training process will write and the
        helper never reads (a CPU model's parameters): the helper drops its share of those
        pages at once, so that the training process's next write to them copies nothing (the
        helper would otherwise keep the old copy of every page written after the fork)."""
        board = SnapshotBoard()
        ctx = multiprocessing.get_context("fork")
        ours, theirs = ctx.Pipe(duplex=True)
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_fd, _F_SETPIPE_SZ, PIPE_BYTES)
        parent = os.getpid()
        # Objects alive now are never collected in the helper (a collection there could run
        # the training process's finalizers, CUDA frees among them), and their pages stay
        # shared.
        gc.freeze()
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns that forking a multi-threaded process may deadlock the
                # child: the helper takes none of the locks other threads may hold (it runs
                # our meter, numpy and file writes), as DataLoader workers forked alike.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except BaseException:
            gc.unfreeze()
            raise
        if pid == 0:  # the helper
            ours.close()
            os.close(write_fd)
            _release_pages(release)
            _child(meter, theirs, read_fd, board, parent)
        gc.unfreeze()
        theirs.close()
        os.close(read_fd)
        os.set_blocking(write_fd, False)
        books = cls(pid, ours, write_fd, board)
        books._starting = True  # a helper lost now is not a stage's loss: threads take over
        try:
            hello = books._reply("start", START_TIMEOUT_S)
        except _LostHelper as err:
            books._reap(kill=True)
            raise OSError(f"the helper process did not start: {books.lost}") from err
        except BaseException:
            books._reap(kill=True)
            raise
        books._starting = False
        books.meter = HelperMeter(hello, books)
        books._names = [d.name for d in hello.devices]
        books.started_at = hello.started_at
        books._rows = RowNumbers(hello.started_at)
        return books

    def begin(self, weights: Mapping[str, float]) -> None:
        """Build the books in the helper with the devices' weights (see ``StageBooks``)."""
        self.weights = dict(weights)
        self._call("begin", self.weights)

    # ------------------------------------------------------------------ the training thread
    def mark(self, phase: str, edge: str, index: int, epoch: int | None) -> None:
        """A step edge, now: appended to a list; every ``FLUSH_S`` the list goes to the pipe."""
        t = time.monotonic()
        self._rows_out.append((phase, edge, index, epoch, t, None))
        if t >= self._flush_at:
            self._flush(t)

    def _flush(self, now: float, block_s: float = 0.0) -> None:
        """Write the edges marked so far to the pipe, with ``now`` as the watermark (the next
        edge is marked after it). ``block_s``: wait up to this long for a full pipe to drain
        (before a request, which must find every edge in the pipe)."""
        self._flush_at = now + FLUSH_S
        if self.lost is not None:
            self._rows_out = []
            return
        self._out += edge_frame(now, self._ticks, self._rows_out)
        self._rows_out = []
        out = self._out
        deadline = time.monotonic() + block_s
        while out:
            try:
                written = os.write(self._edge_fd, out)
            except BlockingIOError:
                written = 0
            except OSError as err:
                self._lose(f"its edge pipe failed ({err})")
                return
            del out[:written]
            if not out:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            select.select([], [self._edge_fd], [], min(left, 0.05))
        if len(out) > MAX_BACKLOG_BYTES:
            self._lose("it stopped reading step edges")

    @property
    def snapshot(self) -> Snapshot | None:
        """The newest snapshot the helper published (``None`` before its first refresh)."""
        board = self._board
        if board.seq() != self._seq and self.lost is None:
            got = board.read(self._names)
            if got is not None:
                self._seq, snapshot, self._busy, warned = got
                if snapshot is not None:
                    self._snapshot = snapshot
                if warned > self._warned_n:
                    self._rewarn(board.warnings())
        return self._snapshot

    @property
    def busy(self) -> bool:
        _ = self.snapshot
        return self._busy

    def tick(self) -> Tick:
        """This process's numbers for a log row (see :meth:`StageBooks.tick`): the helper's
        newest snapshot; until the first train step is attributed, a refresh asked for."""
        self._ticks += 1
        snap = self.snapshot
        if self.lost is None and self._rows.wants_refresh(snap):
            with contextlib.suppress(_LostHelper):
                self._call("refresh")
            snap = self.snapshot
        now = time.monotonic()
        if now - self._checked_at >= ALIVE_CHECK_S:
            self._checked_at = now
            self._check_alive()
        if snap is None:
            return Tick(0.0, 0.0, math.nan, 0)
        return self._rows.tick(snap)

    def repeat_tick(self, last: Tick) -> bool:
        """Whether a :meth:`tick` now would return ``last`` again while rows outpace refreshes
        (the board unchanged since it, no alive check due); if so, counted as a tick."""
        if (
            not self._busy
            or self._board.seq() != self._seq
            or self.lost is not None
            or not self._rows.repeats(self._snapshot, last)
            or time.monotonic() - self._checked_at >= ALIVE_CHECK_S
        ):
            return False
        self._ticks += 1
        return True

    def energy_j(self, until: float | None = None) -> float:
        """The stage's (weighted) joules as measured up to the newest reading (see
        :meth:`StageBooks.energy_j`). Without ``until``: as the helper's last refresh found
        it (25-100 ms old; an energy budget asks at every step), no request."""
        if until is None and (self.snapshot is not None or self.lost is not None):
            return self._last_energy()
        return float(self._call("energy_j", until, default=self._last_energy()))

    def _last_energy(self) -> float:
        snap = self._snapshot
        return 0.0 if snap is None else snap.energy_J

    # ------------------------------------------------------------------ requests
    def measure_now(self, timeout: float = 1.0) -> bool:
        wait = timeout + REQUEST_MARGIN_S
        return bool(self._call("measure_now", timeout, default=False, timeout=wait))

    def settle(self, t: float, timeout: float) -> bool:
        wait = timeout + REQUEST_MARGIN_S
        return bool(self._call("settle", t, timeout, default=False, timeout=wait))

    def unmeasured_j(self) -> float:
        return float(self._call("unmeasured_j", default=0.0))

    def step_counts(self) -> tuple[dict[str, int], dict[int, int]]:
        return self._call("step_counts", default=({}, {}))

    def epoch_phases(self, epoch: int) -> dict[str, float]:
        return self._call("epoch_phases", epoch, default={})

    def totals(self, epoch: int, until: float | None = None) -> RunTotals:
        fallback = RunTotals(
            energy_J=self._last_energy(), phases_J={"unattributed": self._last_energy()}
        )
        return self._call("totals", epoch, until, default=fallback)

    def finish(self, epoch: int, meta: Mapping[str, Any] | None = None) -> StageRecord:
        """Close the books in the helper (it stops the meter and ends); the final record."""
        try:
            record: StageRecord = self._call("finish", epoch, dict(meta or {}), strict=True)
        except _LostHelper:
            return self._record_of_lost()
        finally:
            self._reap()
        return record

    def abort(self) -> None:
        """Stop measuring without closing the books; the helper ends."""
        if self.lost is None and self.helper_exit_code is None:
            with contextlib.suppress(Exception):
                self._call("abort", timeout=5.0, strict=True)
        self._reap()

    @property
    def alive(self) -> bool:
        return self.lost is None and self.helper_exit_code is None

    # ------------------------------------------------------------------ plumbing
    def _call(
        self,
        method: str,
        *args: Any,
        default: Any = None,
        strict: bool = False,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> Any:
        """Ask the helper; every edge marked so far reaches it first. A lost helper gives
        ``default`` (``strict``: raises ``_LostHelper``); the helper's exception is raised."""
        with self._asking:
            return self._ask(method, args, default, strict, timeout)

    def _ask(
        self, method: str, args: tuple[Any, ...], default: Any, strict: bool, timeout: float
    ) -> Any:
        if self.lost is not None:
            if strict:
                raise _LostHelper(self.lost)
            return default
        try:
            self._flush(time.monotonic(), block_s=min(timeout, 5.0))
            if self.lost is not None:
                raise _LostHelper(self.lost)
            try:
                self._rpc.send((method, args))
            except (OSError, ValueError) as err:
                self._lose(f"its socket failed ({err})")
                raise _LostHelper(self.lost or "") from err
            return self._reply(method, timeout)
        except _LostHelper:
            if strict:
                raise
            return default

    def _reply(self, method: str, timeout: float) -> Any:
        rpc = self._rpc
        try:
            ready = rpc.poll(timeout)
            got = rpc.recv() if ready else None
        except (EOFError, OSError) as err:
            self._lose(f"it ended during {method!r} ({err or 'closed'})")
            raise _LostHelper(self.lost or "") from err
        if got is None:
            self._lose(f"it did not answer {method!r} within {timeout:g} s")
            raise _LostHelper(self.lost or "")
        status, result, *said = got
        if said:
            self._rewarn(said[0])
        if status == "error":
            raise result
        return result

    def _rewarn(self, said: list[tuple[str, type[Warning]]]) -> None:
        for message, category in said[self._warned_n :]:
            warnings.warn(message, category, stacklevel=2)
        self._warned_n = max(self._warned_n, len(said))

    def _check_alive(self) -> None:
        if self.lost is not None or self.helper_exit_code is not None:
            return
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(self._pid, os.WNOHANG)
            if pid:
                self.helper_exit_code = os.waitstatus_to_exitcode(status)
                self._lose(f"it exited (status {self.helper_exit_code})", reaped=True)

    def _lose(self, why: str, reaped: bool = False) -> None:
        if self.lost is not None:
            return
        self.lost = why
        if self._starting:
            self._reap(kill=True)
            return
        warnings.warn(
            f"lightning-watt: the meter's helper process was lost: {why}. Training continues; "
            "this stage keeps the energy last measured, and its summary marks the rest as a gap.",
            RuntimeWarning,
            stacklevel=3,
        )
        if not reaped:
            self._reap(kill=True)

    def _reap(self, kill: bool = False, timeout: float = 5.0) -> None:
        """Wait for the helper to end (``kill``: end it first), and close our ends."""
        if self.helper_exit_code is None:
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    pid, status = os.waitpid(self._pid, os.WNOHANG)
                except ChildProcessError:
                    self.helper_exit_code = -1
                    break
                if pid:
                    self.helper_exit_code = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() >= deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self._pid, signal.SIGKILL)
                    deadline = math.inf
                time.sleep(0.005)
        with contextlib.suppress(OSError):
            self._rpc.close()
        with contextlib.suppress(OSError):
            os.close(self._edge_fd)
        self._edge_fd = -1

    def _record_of_lost(self) -> StageRecord:
        """The stage as last published, when the helper is gone: its energy (the last
        snapshot) unattributed, and a gap from the last reading to now."""
        snap = self._snapshot
        energy = 0.0 if snap is None else snap.energy_J
        end = time.monotonic()
        since = self.started_at if snap is None or not math.isfinite(snap.horizon) else snap.horizon
        reason = f"the meter's helper process was lost: {self.lost}"
        devices = [
            device_record(d, counted=self.weights.get(d.name, 1.0) > 0, method_notes=[reason])
            for d in self.meter.devices
        ]
        return StageRecord(
            duration_s=end - self.started_at,
            totals=RunTotals(energy_J=energy, phases_J={"unattributed": energy} if energy else {}),
            devices=devices,
            gaps=[(d.name, since, end, reason) for d in self.meter.devices],
            errors={"helper": 1},
        )


def _release_pages(ranges: Sequence[tuple[int, int]]) -> None:
    """In the helper: drop its mapping of the whole pages inside each ``(address, bytes)``
    (``MADV_DONTNEED``; only pages entirely inside a range, which hold nothing else). The
    helper then reads zeros there, and never reads there."""
    if not ranges:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        page = mmap.PAGESIZE
        for address, size in ranges:
            first = -(-address // page) * page
            last = (address + size) // page * page
            if last > first:
                madvise(first, last - first, _MADV_DONTNEED)
    except Exception:  # the memory stays shared: a cost, not a fault
        return


def open_books(
    meter: EnergyMeter,
    weights_of: Callable[[list[DeviceInfo]], Mapping[str, float]],
    release: Sequence[tuple[int, int]] = (),
) -> ProcessBooks:
    """Fork the helper, start ``meter`` there, and build its books with the weights
    ``weights_of(devices)`` gives (a collective in a multi-process run: every rank calls it).
    ``release``: see :meth:`ProcessBooks.open`."""
    books = ProcessBooks.open(meter, release)
    try:
        books.begin(weights_of(books.meter.devices))
    except BaseException:
        books.abort()
        raise
    return books


__all__ = [
    "FLUSH_S",
    "HelperMeter",
    "ProcessBooks",
    "helper_unavailable",
    "open_books",
]
