"""Reading TensorBoard event files into :class:`ScalarSeries` (tensorboard is imported here
only, when a run has event files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_watt.report.discovery import Advance, file_size
from lightning_watt.report.series import ScalarSeries


def read_events(
    files: Sequence[Path], advance: Advance | None = None
) -> tuple[dict[str, ScalarSeries], list[str]]:
    """Scalars from TensorBoard event files; several files (a resumed run) are merged, a later
    file's value winning at the same step. Returns the scalars and warnings."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    merged: dict[str, dict[int, tuple[float, float]]] = {}
    warnings: list[str] = []
    for path in files:
        try:
            acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
            acc.Reload()
        except Exception as err:  # a truncated file from a killed run must not end the report
            warnings.append(f"{path}: unreadable event file ({type(err).__name__}: {err})")
            if advance:
                advance(file_size(path))
            continue
        tags = acc.Tags()
        for tag in tags.get(ea.SCALARS, []):
            dest = merged.setdefault(tag, {})
            for ev in acc.Scalars(tag):
                dest[int(ev.step)] = (float(ev.value), float(ev.wall_time))
        # Summaries written through tf.summary / tensorboard's v2 API land as scalar tensors.
        for tag in tags.get(ea.TENSORS, []):
            if tag in merged:
                continue
            values = _scalar_tensors(acc.Tensors(tag))
            if values:
                merged[tag] = values
        if advance:
            advance(file_size(path))
    out: dict[str, ScalarSeries] = {}
    for tag, by_step in merged.items():
        steps = sorted(by_step)
        out[tag] = ScalarSeries(
            tag,
            steps,
            [by_step[s][0] for s in steps],
            wall_times=[by_step[s][1] for s in steps],
        )
    return out, warnings


def _scalar_tensors(events: Sequence[Any]) -> dict[int, tuple[float, float]]:
    from tensorboard.util import tensor_util

    out: dict[int, tuple[float, float]] = {}
    for ev in events:
        try:
            arr = tensor_util.make_ndarray(ev.tensor_proto)
        except Exception:
            return {}
        if arr.size != 1 or arr.dtype.kind not in "fiu":
            return {}
        out[int(ev.step)] = (float(arr.reshape(())), float(ev.wall_time))
    return out
