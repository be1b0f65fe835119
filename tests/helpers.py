"""Small real Lightning modules and data for the tests (CPU, a second or two per fit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def blobs(n: int = 256, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x, y)


class TinyClassifier(pl.LightningModule):
    """A two-layer MLP on linearly separable blobs; logs ``val_acc`` in [0, 1]."""

    def __init__(self, lr: float = 0.05, step_sleep: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        self.lr = lr
        self.step_sleep = step_sleep

    def training_step(self, batch, batch_idx):
        if self.step_sleep:
            import time

            time.sleep(self.step_sleep)
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        acc = (self.net(x).argmax(-1) == y).float().mean()
        self.log("val_acc", acc, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(blobs(256, 0), batch_size=16)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(blobs(128, 1), batch_size=32)


def csv_trainer(tmp_path: Path, callbacks: list[Any], **kw: Any) -> pl.Trainer:
    """A quiet CPU Trainer logging to ``tmp_path/run`` as CSV every 4 steps."""
    kw.setdefault("max_epochs", 2)
    kw.setdefault("log_every_n_steps", 4)
    return pl.Trainer(
        default_root_dir=tmp_path,
        callbacks=callbacks,
        logger=CSVLogger(tmp_path, name="run"),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kw,
    )


def fit_spawned(trainer: pl.Trainer, model: pl.LightningModule, **kw: Any) -> None:
    """``trainer.fit`` with ``strategy="ddp_spawn"``, tolerating one known harness fault: a
    worker that finished its fit (its summary written, the ranks' final barrier passed) can die
    with SIGABRT in gloo's teardown at interpreter exit ("terminate called without an active
    exception", about once in ten runs here). The fit's results are complete then; every other
    failure is raised. The tests that call this check those results."""
    from torch.multiprocessing.spawn import ProcessExitedException

    try:
        trainer.fit(model, **kw)
    except ProcessExitedException as err:
        if getattr(err, "signal_name", None) != "SIGABRT":
            raise
        import warnings

        warnings.warn(f"a ddp_spawn worker aborted at exit after its fit: {err}", stacklevel=2)


def subprocess_env() -> dict[str, str]:
    """This process's environment, with the ``lightning_watt`` it imported first on
    ``PYTHONPATH``: a worker script (and the ranks Lightning starts from it) tests the same
    code."""
    import os

    import lightning_watt

    here = str(Path(lightning_watt.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}


def rows_on_any_machine(ticks: int) -> int:
    """The fewest of a fit's ``ticks`` train-step log rows that reach the loggers, whatever the
    machine's pace. A row repeating the one before is dropped only while the books judge rows
    faster than their refreshes (``DEFAULT_INTERVAL_S``, 25 ms; ``books.paced_interval``). They
    judge over windows of at least ``BUSY_INTERVAL_S`` (100 ms) and say "fast" only after more
    than 100 / 25 = 4 rows in a window whose rows were all logged (the stage's first window, or
    one judged slow), less the one row in flight as the verdict lands: so ``min(ticks, 4)`` on
    the slowest or fastest machine. A count above it depends on the pace (a fit of 32 ~12 ms
    steps logged 15 rows on CI, 18-19 on the development VM).
    """
    from lightning_watt.attribution.books import BUSY_INTERVAL_S
    from lightning_watt.attribution.refresher import DEFAULT_INTERVAL_S

    return min(ticks, int(BUSY_INTERVAL_S / DEFAULT_INTERVAL_S + 1e-9))
