"""Books handed back from a copy of a callback that ran in another process.

``ddp_spawn`` (and hyper-parameter search tools) pickle the callback into worker processes; the
instance the user holds never sees a hook. A :class:`Handoff` names a file when the callback is
first pickled; rank zero of the workers writes its books there at the end of each stage, and
the original instance reads them when asked. Files from the same process (the instance itself,
or a deep copy of it) are not handoffs and are ignored.

Example:
    >>> import os, tempfile
    >>> box = Handoff(os.path.join(tempfile.mkdtemp(), "books.json"))
    >>> box.take() is None
    True
    >>> from lightning_watt.attribution.books import RunBooks
    >>> box.leave(RunBooks(final_J=42.0), None)
    >>> box.take() is None  # left by this very process: not a handoff
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from typing import Any

from lightning_watt._files import atomic_write_text
from lightning_watt.attribution.books import RunBooks, RunTotals
from lightning_watt.energy.readings import J_PER_KWH


class Handoff:
    """A file one process leaves the run's books (and last summary) in, another takes them from."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or os.path.join(
            tempfile.gettempdir(), f"lightning-watt-{uuid.uuid4().hex}.json"
        )
        self._seen = 0.0

    def leave(self, run: RunBooks, summary: dict[str, Any] | None) -> None:
        """Write the run's books and last summary for another process (atomically; a failed
        write is ignored: the books stay with the process that wrote them, in its summary)."""
        data = {
            "run_energy_J": run.final_J,
            "offset": run.offset.to_state(),
            "target_kWh": run.target_kwh,
            "stage": run.stage,
            "last_summary": summary,
        }
        with contextlib.suppress(OSError):
            atomic_write_text(
                self.path, json.dumps({"pid": os.getpid(), "data": data}), durable=False
            )

    def take(self) -> tuple[RunBooks, dict[str, Any] | None] | None:
        """The books and summary another process left since the last call, or ``None``."""
        data = self._take()
        if data is None:
            return None
        final = data.get("run_energy_J")
        offset = data.get("offset")
        books = RunBooks(
            offset=RunTotals.from_state(offset) if offset else RunTotals(),
            final_J=final,
            kwh=(final or 0.0) / J_PER_KWH,
            target_kwh=data.get("target_kWh"),
            stage=data.get("stage"),
        )
        return books, data.get("last_summary")

    def _take(self) -> dict[str, Any] | None:
        try:
            mtime = os.path.getmtime(self.path)
        except OSError:
            return None
        if mtime <= self._seen:
            return None
        try:
            with open(self.path, encoding="utf-8") as fh:
                box = json.load(fh)
        except (OSError, ValueError):
            return None
        self._seen = mtime
        if box.get("pid") == os.getpid():
            return None
        data = box.get("data")
        return data if isinstance(data, dict) else None
