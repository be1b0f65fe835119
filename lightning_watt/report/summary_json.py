"""Reading the summary JSON the callback writes at the end of a fit
(:func:`lightning_watt.attribution.summary.build_summary`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_watt.energy.trace import read_json_object
from lightning_watt.report.errors import ReportError
from lightning_watt.schema import SUMMARY_FORMAT

#: The summary fields the report reads, with the JSON type each must have; a field of
#: another type (a hand-edited or corrupt file) is left out, with a warning naming it.
_TYPES: dict[str, type | tuple[type, ...]] = {
    "devices": list,
    "methods": list,
    "epochs": list,
    "phases_J": dict,
    "score": dict,
    "run_name": str,
    "replay": str,
    "prefix": str,
    "currency": str,
    "interrupted": bool,
    "estimated": bool,
}


def read_summary(path: Path, warnings: list[str]) -> dict[str, Any]:
    """The summary as a dict; a format other than this version's is read, with a warning,
    and fields of the wrong type are left out, with a warning naming them.

    A file that is not a JSON object (truncated, corrupt, not UTF-8) raises
    :class:`ReportError` naming it (one line, never a traceback).

    Example:
        >>> import tempfile
        >>> bad = Path(tempfile.mkdtemp()) / "watt_summary.json"
        >>> _ = bad.write_text('{"energy_J": 5, "epochs": 3}', encoding="utf-8")
        >>> found: list[str] = []
        >>> read_summary(bad, found), found[0].endswith("left out: epochs")
        ({'energy_J': 5}, True)
    """
    try:
        data = read_json_object(path, ReportError)
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: unreadable summary ({err})") from None
    if "format" in data and data["format"] != SUMMARY_FORMAT:
        warnings.append(
            f"{path}: format {data['format']!r}, expected {SUMMARY_FORMAT!r}; read anyway"
        )
    wrong = [
        key
        for key, kind in _TYPES.items()
        if data.get(key) is not None and not isinstance(data[key], kind)
    ]
    if wrong:
        warnings.append(f"{path}: fields of the wrong type left out: {', '.join(wrong)}")
        data = {k: v for k, v in data.items() if k not in wrong}
    return data


def peek_run_name(path: Path | None) -> str | None:
    """The summary's ``run_name``, or ``None`` (also when the file is unreadable: reading the
    run later reports that with its path)."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    value = data.get("run_name") if isinstance(data, dict) else None
    return str(value) if value else None
