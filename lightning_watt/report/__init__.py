"""Reports on finished runs: tables, ``report.json`` and plots, from run directories on disk.

The reading side (discovery, readers and :class:`RunData`, gathered in
:mod:`lightning_watt.report.runs`) needs only the package's own
dependencies; the plots (:mod:`lightning_watt.report.plots`) need matplotlib, the ``plot`` extra
(``pip install lightning-watt[plot]``), and are imported only when drawn.

Example:
    >>> from lightning_watt.report import pareto_front
    >>> pareto_front([(0.2, 0.91), (0.1, 0.90), (0.3, 0.89)])  # (kWh, accuracy) per run
    [0, 1]
"""

from __future__ import annotations

from lightning_watt.report.runs import (
    EpochRow,
    PhaseSpan,
    ReportError,
    RunData,
    RunNotFoundError,
    ScalarSeries,
    find_runs,
    pareto_front,
    read_run,
    read_runs,
)

__all__ = [
    "EpochRow",
    "PhaseSpan",
    "ReportError",
    "RunData",
    "RunNotFoundError",
    "ScalarSeries",
    "find_runs",
    "pareto_front",
    "read_run",
    "read_runs",
]
