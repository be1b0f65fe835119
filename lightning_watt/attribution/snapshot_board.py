"""The newest snapshot of a stage's books, in memory shared by two processes.

The helper process (:mod:`~lightning_watt.attribution.helper_process`) leaves each refresh's
:class:`~lightning_watt.attribution.books.Snapshot` here; the training thread reads it in a
log row. Plain numbers at fixed places: a row unpacks them, with no pickle, whose code a
training thread meets cold every row at the default cadence. The helper's warnings, which are
rare, are kept as a pickle further on. A lock (a POSIX semaphore: a memory barrier on every
architecture) guards the bytes. The sequence number is read without it first, so an
unchanged board costs one struct read.

Example:
    >>> from lightning_watt.attribution.books import Snapshot
    >>> board = SnapshotBoard()
    >>> board.publish(Snapshot(2.0, 400.0, 200.0, {"gpu0": 200.0}, 4, 380.0), False, ["gpu0"], [])
    >>> seq, snapshot, busy, warned = board.read(["gpu0"])
    >>> seq, snapshot.energy_J, snapshot.device_power_W, busy
    (1, 400.0, {'gpu0': 200.0}, False)
"""

from __future__ import annotations

import math
import mmap
import multiprocessing
import pickle
import struct

from lightning_watt.attribution.books import Snapshot

#: Bytes of the board.
BOARD_BYTES = 1 << 16

_LENGTH = struct.Struct("<I")
_SEQ = struct.Struct("<Q")
# The board's numbers: sequence, has a snapshot, busy, warnings so far, device powers that
# follow; the snapshot's horizon, energy, power, steps and their joules.
_NUMBERS = struct.Struct("<QBBxxIIdddqd")
_NOTHING = (-math.inf, 0.0, 0.0, 0, 0.0)
# Where the pickled warnings start (the numbers and device powers before it).
_WARNED_AT = BOARD_BYTES // 2


class SnapshotBoard:
    """The newest snapshot: :meth:`publish` in one process, :meth:`read` in another (the
    board is made before the fork that shares it)."""

    def __init__(self) -> None:
        self._mm = mmap.mmap(-1, BOARD_BYTES)
        self._lock = multiprocessing.get_context("fork").Lock()
        self._seq = 0
        self._warned = 0

    def publish(
        self,
        snapshot: Snapshot | None,
        busy: bool,
        names: list[str],
        warned: list[tuple[str, type[Warning]]],
    ) -> None:
        """Leave ``snapshot`` (its device powers in the order of ``names``), whether rows
        outpace refreshes, and the warnings so far."""
        mm = self._mm
        blob = b""
        if len(warned) != self._warned:
            blob = pickle.dumps(list(warned), protocol=pickle.HIGHEST_PROTOCOL)
            if len(blob) > BOARD_BYTES - _WARNED_AT - _LENGTH.size:
                blob = b""  # more text than the board holds: the rest stays in the helper
        powers = (
            [math.nan] * len(names)
            if snapshot is None
            else [snapshot.device_power_W.get(name, math.nan) for name in names]
        )
        if _NUMBERS.size + 8 * len(powers) > _WARNED_AT:
            powers = []  # tens of thousands of devices: the total power still comes
        self._seq += 1
        with self._lock:
            if blob:
                _LENGTH.pack_into(mm, _WARNED_AT, len(blob))
                mm[_WARNED_AT + _LENGTH.size : _WARNED_AT + _LENGTH.size + len(blob)] = blob
                self._warned = len(warned)
            struct.pack_into(f"<{len(powers)}d", mm, _NUMBERS.size, *powers)
            if snapshot is None:
                _NUMBERS.pack_into(mm, 0, self._seq, 0, busy, self._warned, 0, *_NOTHING)
            else:
                _NUMBERS.pack_into(
                    mm,
                    0,
                    self._seq,
                    1,
                    busy,
                    self._warned,
                    len(powers),
                    snapshot.horizon,
                    snapshot.energy_J,
                    snapshot.power_W,
                    snapshot.steps,
                    snapshot.steps_J,
                )

    def seq(self) -> int:
        return int(_SEQ.unpack_from(self._mm, 0)[0])

    def read(self, names: list[str]) -> tuple[int, Snapshot | None, bool, int] | None:
        """``(seq, snapshot, busy, warnings so far)``, or ``None`` if the lock was not free
        within 2 ms (the caller keeps what it has)."""
        if not self._lock.acquire(timeout=0.002):
            return None
        try:
            seq, has, busy, warned, n, *numbers = _NUMBERS.unpack_from(self._mm, 0)
            powers = struct.unpack_from(f"<{n}d", self._mm, _NUMBERS.size)
        finally:
            self._lock.release()
        if not has:
            return seq, None, bool(busy), warned
        horizon, energy, power, steps, steps_j = numbers
        # No powers at all when there are too many devices for the board; NaN: no reading.
        device_power = {name: w for name, w in zip(names, powers, strict=False) if w == w}
        snapshot = Snapshot(horizon, energy, power, device_power, steps, steps_j)
        return seq, snapshot, bool(busy), warned

    def warnings(self) -> list[tuple[str, type[Warning]]]:
        """Every warning the helper left (as many as the board holds)."""
        with self._lock:
            (size,) = _LENGTH.unpack_from(self._mm, _WARNED_AT)
            blob = self._mm[_WARNED_AT + _LENGTH.size : _WARNED_AT + _LENGTH.size + size]
        return list(pickle.loads(blob)) if size else []


__all__ = ["BOARD_BYTES", "SnapshotBoard"]
