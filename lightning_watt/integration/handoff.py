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
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from typing import Any


class Handoff:
    """A file one process leaves a small JSON-able dict in, and another takes it from."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or os.path.join(
            tempfile.gettempdir(), f"lightning-watt-{uuid.uuid4().hex}.json"
        )
        self._seen = 0.0

    def leave(self, data: dict[str, Any]) -> None:
        """Write ``data`` for another process (atomically; a failed write is ignored: the
        books stay with the process that wrote them, in its summary file)."""
        with contextlib.suppress(OSError):
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"pid": os.getpid(), "data": data}, fh)
            os.replace(tmp, self.path)

    def take(self) -> dict[str, Any] | None:
        """What another process left since the last call, or ``None``."""
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
