"""A progress bar on stderr for reading many or large files: rich's when importable, else a
plain one-line bar; silent when not wanted.

Example:
    >>> import io
    >>> stream = io.StringIO()
    >>> with progress_bar(total=4, label="reading", enabled=True, stream=stream, rich=False) as bar:
    ...     bar(2)
    ...     bar(2)
    >>> stream.getvalue().rstrip().endswith("4/4")
    True
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

Advance = Callable[[int], None]
"""Called with how many units (bytes, files) were just done."""


def rich_available() -> bool:
    """Whether rich can be imported (a soft dependency used for tables and progress)."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _noop(_: int) -> None:
    return None


def _fmt_units(n: int, unit: str) -> str:
    if unit != "B":
        return str(n)
    value = float(n)
    for prefix in ("B", "KB", "MB", "GB"):
        if value < 1024 or prefix == "GB":
            return f"{value:.0f} {prefix}" if prefix == "B" else f"{value:.1f} {prefix}"
        value /= 1024
    return str(n)  # pragma: no cover - the loop always returns


@contextmanager
def progress_bar(
    total: int,
    label: str,
    *,
    enabled: bool = True,
    stream: TextIO | None = None,
    rich: bool | None = None,
    unit: str = "",
) -> Iterator[Advance]:
    """Yield an ``advance(n)`` callable that moves a bar towards ``total``.

    ``rich=None`` uses rich when importable and ``stream`` is a terminal; the plain bar rewrites
    one line with ``\\r`` on a terminal and prints only the finished line elsewhere, so logs stay
    short.
    """
    if not enabled or total <= 0:
        yield _noop
        return
    stream = sys.stderr if stream is None else stream
    is_tty = bool(getattr(stream, "isatty", lambda: False)())
    use_rich = (rich_available() and is_tty) if rich is None else (rich and rich_available())
    if use_rich:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        columns = [TextColumn("{task.description}"), BarColumn()]
        columns.append(
            DownloadColumn() if unit == "B" else TextColumn("{task.completed}/{task.total}")
        )
        columns.append(TimeRemainingColumn())
        with Progress(*columns, console=Console(file=stream), transient=True) as prog:
            task = prog.add_task(label, total=total)
            yield lambda n: prog.advance(task, n)
        return

    done = 0
    width = 30

    def render(final: bool) -> None:
        filled = int(width * min(done, total) / total)
        line = (
            f"{label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{_fmt_units(done, unit)}/{_fmt_units(total, unit)}"
        )
        if is_tty:
            stream.write("\r" + line + ("\n" if final else ""))
        elif final:
            stream.write(line + "\n")
        stream.flush()

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if is_tty:
            render(False)

    try:
        yield advance
    finally:
        render(True)
