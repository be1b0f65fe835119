"""Writing files so that a crash or a full disk never leaves a half-written one behind.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.json"
    >>> atomic_write_text(path, "{}")
    >>> path.read_text()
    '{}'
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def atomic_write_text(path: str | os.PathLike[str], text: str, *, durable: bool = True) -> None:
    """Write ``text`` to ``path`` via a temporary file renamed over it: readers see the old
    file or the new one, never part of one, even if the process is killed mid-write. On
    failure the temporary file is removed and the error (an ``OSError``) re-raised.

    ``durable``: also ``fsync`` the data before the rename, so the new file survives a power
    loss too (worth it for a file written once, like a summary; not for one rewritten every
    few seconds, like a recording's metadata). The temporary file's name is the process's and
    the thread's own, so concurrent writers of one path never share it."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
