"""The one place lightning-watt touches Lightning and torchmetrics state they do not make public.

Each function states what it needs, reads the private attribute when the installed release has
it, and otherwise falls back to a public (slower or coarser) equivalent or a safe default, so a
release that renames an attribute degrades one number instead of breaking a fit. Nothing else
in the package touches ``trainer._*``, loop internals or a torchmetrics ``_`` attribute. CI runs
the suite on the oldest and the newest supported Lightning.

* Lightning: the training log's step axis, an epoch aggregate before it is published, the
  progress bar's and monitors' dicts (for
  :class:`~lightning_watt.integration.callback.WattCallback`).
* torchmetrics: what each state of a wrapped metric was registered with, and control over its
  ``compute`` (for :class:`~lightning_watt.score.metrics.GreenQuotientIndex`, which computes the
  wrapped metric on states it took over).
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torchmetrics.utilities.plot import _AX_TYPE as PlotAxes
    from torchmetrics.utilities.plot import _PLOT_OUT_TYPE as PlotOutput
else:
    PlotAxes = PlotOutput = Any

__all__ = [
    "CallbackMetrics",
    "PlotAxes",
    "PlotOutput",
    "StateSpec",
    "disable_compute_sync",
    "log_rule",
    "plot_values",
    "prepare_compute",
    "progress_bar_dict",
    "state_specs",
    "step_axis",
    "step_counter",
    "stepped_batches",
    "unpublished_metric",
    "unpublished_metric_keys",
    "update_count",
]


# ---------------------------------------------------------------------------- Lightning
def stepped_batches(trainer: pl.Trainer) -> int:
    """The x-axis Lightning logs training metrics at: optimizer-stepping batches so far
    (``_batches_that_stepped``; with one optimizer and no accumulation, the global step)."""
    loop = getattr(trainer.fit_loop, "epoch_loop", None)
    value = getattr(loop, "_batches_that_stepped", None)
    return int(value) if isinstance(value, int) else int(trainer.global_step)


def step_axis(trainer: pl.Trainer) -> Callable[[], int]:
    """A cheap reader of :func:`stepped_batches` for the epoch now starting (the loop object
    it reads does not change within an epoch)."""
    loop = getattr(trainer.fit_loop, "epoch_loop", None)
    if not isinstance(getattr(loop, "_batches_that_stepped", None), int):
        return lambda: stepped_batches(trainer)
    return lambda: loop._batches_that_stepped  # type: ignore[union-attr]


def step_counter(trainer: pl.Trainer) -> Callable[[], int]:
    """A cheap reader of ``trainer.global_step`` for the epoch now starting: the property walks
    the strategy and module on every call (microseconds per batch hook), the optimizer-step
    counter it ends at does not change object within an epoch."""
    loop = trainer.fit_loop.epoch_loop
    module = trainer.lightning_module
    try:
        if module is None or module.automatic_optimization:
            counter = loop.automatic_optimization.optim_progress.optimizer.step.total
        else:
            counter = loop.manual_optimization.optim_step_progress.total
        _ = int(counter.completed)
    except (AttributeError, TypeError, ValueError):
        return lambda: trainer.global_step
    return lambda: counter.completed


def log_rule(trainer: pl.Trainer) -> Callable[[], bool]:
    """Lightning's rule for a training log row at this batch (``log_every_n_steps``, its
    ``LoggerConnector.should_update_logs``), read cheaply for the epoch now starting."""
    every = getattr(trainer, "log_every_n_steps", 50)
    if not isinstance(every, int) or every <= 0:
        return lambda: False
    loop = trainer.fit_loop.epoch_loop
    if not isinstance(getattr(loop, "_batches_that_stepped", None), int):
        return lambda: (trainer.global_step + 1) % every == 0 or bool(trainer.should_stop)
    return lambda: (loop._batches_that_stepped + 1) % every == 0 or bool(trainer.should_stop)


def unpublished_metric(trainer: pl.Trainer, key: str) -> Any:
    """The epoch aggregate of ``key`` as logged in the validation epoch now ending.

    In ``on_validation_epoch_end`` Lightning has computed it but not yet copied it into
    ``trainer.callback_metrics`` (that happens after the hook), so the public dict still holds
    the previous epoch's value; ``None`` where it cannot be read.
    """
    connector = getattr(trainer, "_logger_connector", None)
    try:
        value = connector.metrics["callback"].get(key) if connector is not None else None
    except Exception:  # a release whose connector computes metrics differently
        value = None
    if value is None:
        value = trainer.callback_metrics.get(key)
    return value


def unpublished_metric_keys(trainer: pl.Trainer) -> list[str]:
    """Every key :func:`unpublished_metric` can read now (the current epoch's and published)."""
    keys = set(trainer.callback_metrics)
    connector = getattr(trainer, "_logger_connector", None)
    try:
        if connector is not None:
            keys.update(connector.metrics["callback"])
    except Exception:
        pass
    return sorted(keys)


def progress_bar_dict(trainer: pl.Trainer) -> dict[str, Any]:
    """The dict the progress bar shows, to write into: values logged with ``prog_bar=True`` are
    converted with ``.item()`` on every batch, and the public ``progress_bar_metrics``
    recomputes every logged metric on each access. Lightning replaces the dict
    (``reset_metrics``) rather than clearing it."""
    connector = getattr(trainer, "_logger_connector", None)
    bar = getattr(connector, "_progress_bar_metrics", None)
    return bar if isinstance(bar, dict) else trainer.progress_bar_metrics


class CallbackMetrics:
    """Makes values visible to monitors (EarlyStopping, ModelCheckpoint) as float64 tensors in
    the trainer's ``callback_metrics``.

    A new tensor is made only for a value that changed since this writer last wrote it and
    whose tensor is still there: a row logged at every step mostly repeats the previous row's
    numbers (the books refresh every 25-100 ms), and a fresh tensor costs ~5 µs a key on a training
    thread whose caches the step has just flushed. Monitors see the same values either way (a
    tensor is never changed in place, so one a monitor kept stays as it was).

    Example:
        >>> from types import SimpleNamespace
        >>> trainer = SimpleNamespace(_logger_connector=SimpleNamespace(_callback_metrics={}))
        >>> write = CallbackMetrics()
        >>> write(trainer, {"watt/power_W": 150.0})
        >>> first = trainer._logger_connector._callback_metrics["watt/power_W"]
        >>> write(trainer, {"watt/power_W": 150.0})  # unchanged: the same tensor stays
        >>> trainer._logger_connector._callback_metrics["watt/power_W"] is first
        True
        >>> write(trainer, {"watt/power_W": 151.0}); float(first)  # a new one; the old is kept
        150.0
    """

    def __init__(self) -> None:
        self._written: dict[str, tuple[float, Tensor]] = {}
        # The values last written and the dict they went to: the same values object again (a
        # log tick repeating its row) into the same dict finds every tensor there already.
        self._last: tuple[dict[str, float], dict[str, Any]] | None = None

    def __call__(self, trainer: pl.Trainer, values: dict[str, float]) -> None:
        connector = getattr(trainer, "_logger_connector", None)
        metrics = getattr(connector, "_callback_metrics", None)
        if not isinstance(metrics, dict):
            # The public property returns the same dict after folding in the logged results.
            metrics = trainer.callback_metrics
        seen = self._last
        if seen is not None and seen[0] is values and seen[1] is metrics:
            return
        self._last = (values, metrics)
        written = self._written
        for key, value in values.items():
            last = written.get(key)
            if last is not None and last[0] == value and metrics.get(key) is last[1]:
                continue
            # A 0-d float64 tensor over a numpy scalar array: 4x cheaper than
            # torch.tensor(v, dtype=...) (0.8 µs vs 3.2 µs a key), the same tensor for monitors.
            tensor = torch.from_numpy(np.array(value, dtype=np.float64))
            metrics[key] = tensor
            written[key] = (value, tensor)


# ---------------------------------------------------------------------------- torchmetrics
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
