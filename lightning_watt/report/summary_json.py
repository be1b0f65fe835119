"""Reading the summary JSON the callback writes at the end of a fit
(:func:`lightning_watt.attribution.summary.build_summary`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_watt.energy.trace import read_json_object
from lightning_watt.report.errors import ReportError
from lightning_watt.schema import SUMMARY_FORMAT


def read_summary(path: Path, warnings: list[str]) -> dict[str, Any]:
    """The summary as a dict; a format other than this version's is read, with a warning."""
    data = read_json_object(path, ReportError)
    if "format" in data and data["format"] != SUMMARY_FORMAT:
        warnings.append(
            f"{path}: format {data['format']!r}, expected {SUMMARY_FORMAT!r}; read anyway"
        )
    return data


def peek_run_name(path: Path | None) -> str | None:
    """The summary's ``run_name``, or ``None`` (also when the file is unreadable: reading the
    run later reports that with its path)."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    value = data.get("run_name") if isinstance(data, dict) else None
    return str(value) if value else None
