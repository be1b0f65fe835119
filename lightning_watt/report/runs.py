"""Finding run directories on disk and reading them into :class:`RunData`: the names of the
modules that do it, gathered for callers that import them from here.

Discovery is :mod:`~lightning_watt.report.discovery`; the readers are
:mod:`~lightning_watt.report.events` (TensorBoard), :mod:`~lightning_watt.report.metrics_csv`
(CSVLogger) and :mod:`~lightning_watt.report.summary_json`; :mod:`~lightning_watt.report.reading`
puts a run together as :class:`~lightning_watt.report.rundata.RunData`, whose logged keys
:mod:`~lightning_watt.report.keys` names.

Example:
    >>> from lightning_watt.report.runs import read_runs, RunData  # as before the split
    >>> read_runs.__module__, RunData.__module__
    ('lightning_watt.report.reading', 'lightning_watt.report.rundata')
"""

from __future__ import annotations

from lightning_watt.energy.readings import J_PER_KWH
from lightning_watt.report.discovery import (
    EVENTS_PREFIX,
    LOOKED_FOR,
    METRICS_NAME,
    SUMMARY_NAME,
    Advance,
    RunLocation,
    find_runs,
    location_bytes,
)
from lightning_watt.report.errors import ReportError, RunNotFoundError
from lightning_watt.report.keys import DEFAULT_KEYS, LoggedKeys
from lightning_watt.report.pareto import pareto_front, pareto_points
from lightning_watt.report.reading import read_run, read_runs
from lightning_watt.report.rundata import RunData
from lightning_watt.report.series import EpochRow, PhaseSpan, ScalarSeries
from lightning_watt.schema import SUMMARY_FORMAT, TRACE_STEM

TRACE_NAME = TRACE_STEM
#: The score's key under the default prefix; a run's own is ``run.keys.gqi``.
GQI_KEY = DEFAULT_KEYS.gqi

__all__ = [
    "EVENTS_PREFIX",
    "GQI_KEY",
    "J_PER_KWH",
    "LOOKED_FOR",
    "METRICS_NAME",
    "SUMMARY_FORMAT",
    "SUMMARY_NAME",
    "TRACE_NAME",
    "Advance",
    "EpochRow",
    "LoggedKeys",
    "PhaseSpan",
    "ReportError",
    "RunData",
    "RunLocation",
    "RunNotFoundError",
    "ScalarSeries",
    "find_runs",
    "location_bytes",
    "pareto_front",
    "pareto_points",
    "read_run",
    "read_runs",
]
