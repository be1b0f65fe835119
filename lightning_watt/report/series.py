"""The plain data a run is read into: logged scalar series, phase spans, epoch rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass
class ScalarSeries:
    """One logged key: values by global step, with wall times (TensorBoard) and epochs (CSV,
    or recovered from the logged ``epoch`` key) where known."""

    key: str
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    wall_times: list[float] | None = None
    epochs: list[int | None] | None = None

    def __len__(self) -> int:
        return len(self.values)

    def last(self) -> float | None:
        return self.values[-1] if self.values else None


class PhaseSpan(NamedTuple):
    """A span of the trace clock (seconds) spent in one phase: ``train``, ``val``, ``stall``,
    ``gap`` (inside the fit but in no step) or any phase a trace names."""

    phase: str
    start: float
    end: float


@dataclass
class EpochRow:
    """Energy and metrics of one epoch (joules per phase, cumulative kWh at its end)."""

    epoch: int
    train_J: float | None = None
    val_J: float | None = None
    gap_J: float | None = None
    energy_kWh: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
