"""The one place lightning-watt reads or writes torchmetrics state that torchmetrics does not
make public.

:class:`~lightning_watt.metrics.GreenQuotientIndex` takes over a wrapped metric's states and
computes the wrapped metric on them. That needs what each state was registered with
(``add_state``'s default, reduction and persistence) and control over the wrapped metric's
``compute`` (its sync flag, value cache and update counter), which torchmetrics keeps private.
Each function states what it needs, uses the private attribute when this torchmetrics release
has it, and otherwise falls back to a public equivalent or a safe default, so a release that
renames an attribute degrades one detail instead of breaking a fit. Nothing else in the package
touches a torchmetrics ``_`` attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor
from torchmetrics import Metric

if TYPE_CHECKING:
    from torchmetrics.utilities.plot import _AX_TYPE as PlotAxes
    from torchmetrics.utilities.plot import _PLOT_OUT_TYPE as PlotOutput
else:
    PlotAxes = PlotOutput = Any

__all__ = [
    "PlotAxes",
    "PlotOutput",
    "StateSpec",
    "disable_compute_sync",
    "plot_values",
    "prepare_compute",
    "state_specs",
    "update_count",
]


@dataclass(frozen=True)
class StateSpec:
    """One metric state as ``add_state`` registered it."""

    default: Tensor | list[Any]
    reduction: str | Callable[..., Any] | None
    persistent: bool


def state_specs(metric: Metric) -> dict[str, StateSpec]:
    """Each state ``metric`` registered with ``add_state``: its default, its ``dist_reduce_fx``
    and whether it is saved in checkpoints (``_defaults``, ``_reductions``, ``_persistent``).
    Empty for a metric keeping no state of its own (a wrapper or a composition of metrics).

    Needed to register the same states on another metric. Without the private dicts: the public
    ``metric_state`` after a ``reset`` (which discards the metric's current state), reduced by
    concatenation for list states and by sum for tensors (right for ``Accuracy`` and every
    counting metric), and not saved (``add_state``'s default).
    """
    defaults = getattr(metric, "_defaults", None)
    reductions = getattr(metric, "_reductions", None)
    persistent = getattr(metric, "_persistent", None)
    if isinstance(defaults, dict) and isinstance(reductions, dict) and isinstance(persistent, dict):
        return {
            name: StateSpec(default, reductions[name], bool(persistent[name]))
            for name, default in defaults.items()
        }
    metric.reset()
    states = getattr(metric, "metric_state", {})
    return {
        name: StateSpec(deepcopy(value), "cat" if isinstance(value, list) else "sum", False)
        for name, value in states.items()
    }


def disable_compute_sync(metric: Metric) -> None:
    """Make ``metric.compute()`` use the states as they are, without syncing them across
    processes (the caller has synced them already; syncing again would double them).

    The public ``sync_on_compute`` is read only when the metric is built and after each
    ``forward``; until then ``compute`` follows the private ``_to_sync`` copy, set here too.
    """
    metric.sync_on_compute = False
    if hasattr(metric, "_to_sync"):
        metric._to_sync = False


def update_count(metric: Metric) -> int:
    """How many times ``metric.update`` ran since its last reset (``_update_count``; without
    it, 1 or 0 from the public ``update_called``)."""
    count = getattr(metric, "_update_count", None)
    if isinstance(count, int):
        return count
    return int(bool(metric.update_called))


def prepare_compute(metric: Metric, updates: int) -> None:
    """Make the next ``metric.compute()`` compute afresh from the metric's current states, as
    after ``updates`` calls of ``update``.

    Its states are changed from outside (not through its ``update``), so its cached value
    (``_computed``) may belong to other states and is dropped; its update counter
    (``_update_count``) is set so that it does not warn that ``compute`` ran before ``update``.
    Where a release lacks either, there is nothing to drop or to set.
    """
    if hasattr(metric, "_computed"):
        metric._computed = None
    if hasattr(metric, "_update_count"):
        metric._update_count = updates


def plot_values(
    metric: Metric, val: Tensor | list[Tensor] | None, ax: PlotAxes | None
) -> PlotOutput:
    """Plot one value or a sequence of values of ``metric`` as torchmetrics' own metrics do
    (the protected ``Metric._plot``; without it, the public ``plot_single_or_multi_val`` with
    the metric's plot attributes)."""
    plot = getattr(metric, "_plot", None)
    if callable(plot):
        return plot(val, ax)
    from torchmetrics.utilities.plot import plot_single_or_multi_val

    return plot_single_or_multi_val(
        metric.compute() if val is None else val,
        ax=ax,
        higher_is_better=metric.higher_is_better,
        name=type(metric).__name__,
        lower_bound=metric.plot_lower_bound,
        upper_bound=metric.plot_upper_bound,
        legend_name=metric.plot_legend_name,
    )
