"""Reading TensorBoard event files into :class:`ScalarSeries` (tensorboard is imported here
only, when a run has event files)."""

from __future__ import annotations

import struct
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
        damage = check_event_file(path)
        if damage:
            # TensorBoard's reader stops quietly at a bad record; say what was lost.
            warnings.append(f"{path}: {damage}; events after it were not read")
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


#: Files up to this size also have every record's data checksum verified (pure Python crc32c
#: costs about 0.2 s a MB); larger ones have their framing and length checksums checked.
_FULL_CHECK_BYTES = 8 << 20


def check_event_file(path: Path) -> str | None:
    """What is wrong with a TFRecord event file's framing, or ``None``: a record cut off (a
    killed run) or a checksum that does not match (a corrupt file).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "events.out.tfevents.1"
        >>> _ = p.write_bytes(bytes(10))  # a killed run: less than one record header
        >>> check_event_file(p)
        'truncated record header at byte 0'
    """
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    try:
        data = path.read_bytes()
    except OSError as err:
        return f"unreadable ({err})"
    full = len(data) <= _FULL_CHECK_BYTES
    pos = 0
    while pos < len(data):
        if len(data) - pos < 12:
            return f"truncated record header at byte {pos}"
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        if masked_crc32c(header) != header_crc:
            return f"corrupt record header at byte {pos}"
        end = pos + 12 + length + 4
        if end > len(data):
            return f"truncated record at byte {pos}"
        if full:
            (data_crc,) = struct.unpack("<I", data[end - 4 : end])
            if masked_crc32c(data[pos + 12 : end - 4]) != data_crc:
                return f"corrupt record (checksum) at byte {pos}"
        pos = end
    return None
