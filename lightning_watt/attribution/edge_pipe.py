"""Step edges through a pipe, from the training process to the helper that keeps the books.

The training thread writes every edge marked since its last write as one frame: a length,
then ``(watermark, ticks, rows)`` pickled (:func:`edge_frame`). The *watermark* is the time
of the write: every edge before it is in the pipe. :class:`PipedClock`, the helper's step
clock, reads the frames and reports the watermark as the oldest edge that may still come,
so the books never finalise energy past an edge they have not seen. ``ticks`` is the number
of log rows the training process has made, by which the books pace their refreshes.

Example:
    >>> import os
    >>> read_fd, write_fd = os.pipe()
    >>> _ = os.write(write_fd, edge_frame(5.0, 2, [("train", "start", 0, 0, 4.5, None)]))
    >>> clock = PipedClock(read_fd, started_at=1.0)
    >>> clock.resolve_rows(), clock.first_pending_host(), clock.ticks
    ([('train', 'start', 0, 0, 4.5, None)], 5.0, 2)
"""

from __future__ import annotations

import os
import pickle
import struct

from lightning_watt.attribution.step_clock import ResolvedRow

#: The pipe's size asked for (Linux caps an unprivileged request at 1 MiB): ~35 000 edges.
PIPE_BYTES = 1 << 20

_LENGTH = struct.Struct("<I")


def edge_frame(watermark: float, ticks: int, rows: list[ResolvedRow]) -> bytes:
    """One write's frame: the edges marked since the last, with the watermark and rows."""
    frame = pickle.dumps((watermark, ticks, rows), protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(frame)) + frame


class PipedClock:
    """The helper's step clock: edges as the training process wrote them to the pipe, each
    frame ``(watermark, ticks, rows)``. Host time only (``uses_gpu_time`` is false)."""

    uses_gpu_time = False

    def __init__(self, fd: int, started_at: float) -> None:
        self._fd = fd
        os.set_blocking(fd, False)
        self._buf = bytearray()
        #: Every edge before this time has arrived (the training process's last write; its
        #: first edge comes after the meter started).
        self.watermark = started_at
        #: The log rows the training process had made at its last write (the books' pacing).
        self.ticks = 0

    def _drain(self) -> list[ResolvedRow]:
        buf = self._buf
        while True:
            try:
                chunk = os.read(self._fd, PIPE_BYTES)
            except OSError:  # nothing more now (BlockingIOError), or the pipe is gone
                break
            if not chunk:
                break
            buf += chunk
        rows: list[ResolvedRow] = []
        at = 0
        while len(buf) - at >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buf, at)
            if len(buf) - at - _LENGTH.size < size:
                break
            start = at + _LENGTH.size
            watermark, ticks, frame = pickle.loads(bytes(buf[start : start + size]))
            rows += frame
            self.watermark, self.ticks = watermark, ticks
            at = start + size
        del buf[:at]
        return rows

    def resolve_rows(self, wait: bool = False) -> list[ResolvedRow]:
        return self._drain()

    def first_pending_host(self) -> float | None:
        # Edges at or after the watermark may still be on their way.
        return self.watermark

    def reanchor(self) -> None:
        return None

    @property
    def pending(self) -> int:
        return 0


__all__ = ["PIPE_BYTES", "PipedClock", "edge_frame"]
