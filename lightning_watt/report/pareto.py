"""The Pareto view of runs: accuracy against energy, and which runs no other run beats on both.

Example:
    >>> pareto_front([(1.0, 0.80), (2.0, 0.90), (3.0, 0.85)])  # (kWh, accuracy) per run
    [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning_watt.report.rundata import RunData


def pareto_points(runs: Sequence[RunData]) -> tuple[list[RunData], list[tuple[float, float]]]:
    """The runs that have both an energy total and an accuracy, with their ``(kWh, accuracy)``
    points, for the Pareto view (the report's table, JSON and plot use the same selection)."""
    usable: list[RunData] = []
    points: list[tuple[float, float]] = []
    for r in runs:
        energy, accuracy = r.energy_kWh, r.best_accuracy
        if energy is not None and accuracy is not None:
            usable.append(r)
            points.append((energy, accuracy))
    return usable, points


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the points ``(energy, quality)`` no other point dominates: one dominates
    another with no more energy and no worse quality, and strictly better in one of them.

    Example:
        >>> pareto_front([(1.0, 0.80), (2.0, 0.90), (3.0, 0.85), (0.5, 0.70)])
        [0, 1, 3]
    """
    sign = 1.0 if higher_is_better else -1.0
    front = []
    for i, (e, q) in enumerate(points):
        dominated = any(
            e2 <= e and sign * q2 >= sign * q and (e2 < e or sign * q2 > sign * q)
            for j, (e2, q2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front
