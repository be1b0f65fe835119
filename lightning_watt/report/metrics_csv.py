"""Reading a CSVLogger ``metrics.csv`` into :class:`ScalarSeries`."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning_watt.report.errors import ReportError
from lightning_watt.report.series import ScalarSeries


def read_metrics_csv(path: Path) -> dict[str, ScalarSeries]:
    """Scalars from a CSVLogger ``metrics.csv``: sparse rows, one column per key."""
    try:
        return _read(path)
    except UnicodeDecodeError as err:
        raise ReportError(f"{path}: not a UTF-8 text file ({err})") from None
    except csv.Error as err:
        raise ReportError(f"{path}: not a readable CSV file ({err})") from None


def _read(path: Path) -> dict[str, ScalarSeries]:
    out: dict[str, ScalarSeries] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise ReportError(f"{path}:1: a CSVLogger metrics.csv needs a 'step' column")
        for lineno, row in enumerate(reader, start=2):
            try:
                step = int(float(row["step"]))
            except (TypeError, ValueError, OverflowError):
                raise ReportError(
                    f"{path}:{lineno}: step is not a number: {row['step']!r}"
                ) from None
            epoch_text = (row.get("epoch") or "").strip()
            try:
                epoch = int(float(epoch_text)) if epoch_text else None
            except (ValueError, OverflowError):
                raise ReportError(
                    f"{path}:{lineno}: epoch is not a number: {epoch_text!r}"
                ) from None
            for key, text in row.items():
                if key in (None, "step") or text is None or not text.strip():
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue  # a non-numeric column (a logged string): nothing to plot
                series = out.setdefault(key, ScalarSeries(key, epochs=[]))
                series.steps.append(step)
                series.values.append(value)
                assert series.epochs is not None
                series.epochs.append(epoch)
    return out
