"""The one place lightning-watt reads Lightning state that Lightning does not make public.

Each function states what it needs, reads the private attribute when this Lightning release has
it, and otherwise falls back to a public (slower or coarser) equivalent, so a Lightning release
that renames an attribute degrades one number instead of breaking a fit. Nothing else in the
package touches ``trainer._*`` or loop internals.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch


def stepped_batches(trainer: pl.Trainer) -> int:
    """The x-axis Lightning logs training metrics at: optimizer-stepping batches so far
    (``_batches_that_stepped``; with one optimizer and no accumulation, the global step)."""
    loop = getattr(trainer.fit_loop, "epoch_loop", None)
    value = getattr(loop, "_batches_that_stepped", None)
    return int(value) if isinstance(value, int) else int(trainer.global_step)


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


def set_progress_bar_values(trainer: pl.Trainer, values: dict[str, float]) -> None:
    """Show ``values`` in the progress bar until replaced. Written straight into the bar's dict:
    values logged with ``prog_bar=True`` are converted with ``.item()`` on every batch, and the
    public ``progress_bar_metrics`` recomputes every logged metric on each access."""
    connector = getattr(trainer, "_logger_connector", None)
    bar = getattr(connector, "_progress_bar_metrics", None)
    if not isinstance(bar, dict):
        bar = trainer.progress_bar_metrics
    bar.update(values)


def set_callback_metrics(trainer: pl.Trainer, values: dict[str, float]) -> None:
    """Make ``values`` visible to monitors (EarlyStopping, ModelCheckpoint) as float64 tensors."""
    connector = getattr(trainer, "_logger_connector", None)
    metrics = getattr(connector, "_callback_metrics", None)
    if not isinstance(metrics, dict):
        # The public property returns the same dict after folding in the logged results.
        metrics = trainer.callback_metrics
    metrics.update({k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()})


def should_log_now(trainer: pl.Trainer) -> bool:
    """Lightning's own rule for a training log row at this batch (``log_every_n_steps``)."""
    every = getattr(trainer, "log_every_n_steps", 50)
    if not isinstance(every, int) or every <= 0:
        return False
    return (stepped_batches(trainer) + 1) % every == 0 or bool(trainer.should_stop)
