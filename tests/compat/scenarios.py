"""Models, loggers and small callbacks the compatibility matrix runs (CPU, a second or so a fit).

Every model here is ``helpers.TinyClassifier`` (a two-layer MLP on separable blobs that logs
``val_acc``) with one thing changed: the Lightning feature a scenario exercises.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from helpers import TinyClassifier, blobs, csv_trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from lightning_watt.integration.callback import WattCallback

STEP_S = 0.004  # per batch: 8 train batches span a few of the replay's 100 ms readings


def watt(**kw: Any) -> WattCallback:
    """The callback most scenarios use: a replayed real H200 trace (energy always > 0)."""
    kw.setdefault("replay", "h200-mlp-stall")
    return WattCallback(**kw)


def trainer(tmp_path: Path, callbacks: list[Any], **kw: Any) -> pl.Trainer:
    """``helpers.csv_trainer`` cut to 8 train batches a epoch, logging every 2 steps."""
    kw.setdefault("limit_train_batches", 8)
    kw.setdefault("log_every_n_steps", 2)
    kw.setdefault("enable_checkpointing", False)
    return csv_trainer(tmp_path, callbacks, **kw)


def plain_trainer(tmp_path: Path, callbacks: list[Any], **kw: Any) -> pl.Trainer:
    """A quiet CPU Trainer with the caller's logger(s) (``logger=`` in ``kw``)."""
    kw.setdefault("max_epochs", 2)
    kw.setdefault("limit_train_batches", 8)
    kw.setdefault("log_every_n_steps", 2)
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        default_root_dir=tmp_path,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kw,
    )


class StagedClassifier(TinyClassifier):
    """TinyClassifier with test and predict steps (each as slow as a train step)."""

    def __init__(self, step_sleep: float = STEP_S, **kw: Any) -> None:
        super().__init__(step_sleep=step_sleep, **kw)

    def validation_step(self, batch, batch_idx):
        time.sleep(self.step_sleep)
        super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        time.sleep(self.step_sleep)
        x, y = batch
        self.log("test_acc", (self.net(x).argmax(-1) == y).float().mean())

    def predict_step(self, batch, batch_idx):
        time.sleep(self.step_sleep)
        return self.net(batch[0]).argmax(-1)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(blobs(128, 2), batch_size=32)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(blobs(128, 3), batch_size=32)


class TunableClassifier(StagedClassifier):
    """Has ``lr`` (for ``lr_find``) and ``batch_size`` (for ``scale_batch_size``)."""

    def __init__(self, batch_size: int = 16, **kw: Any) -> None:
        super().__init__(**kw)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(blobs(256, 0), batch_size=self.batch_size)


class ManualClassifier(StagedClassifier):
    """Manual optimization: one optimizer, stepped by hand."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        time.sleep(self.step_sleep)
        opt = self.optimizers()
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.log("train_loss", loss)


class TwoOptimizerClassifier(StagedClassifier):
    """Manual optimization with two optimizers (one per layer), both stepped every batch."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        time.sleep(self.step_sleep)
        first, second = self.optimizers()
        x, y = batch
        for opt in (first, second):
            loss = nn.functional.cross_entropy(self.net(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        self.log("train_loss", loss)

    def configure_optimizers(self):
        return (
            torch.optim.SGD(self.net[0].parameters(), lr=self.lr),
            torch.optim.SGD(self.net[2].parameters(), lr=self.lr),
        )


class _Blobs(IterableDataset):
    def __iter__(self):
        yield from blobs(128, 0)


class IterableClassifier(StagedClassifier):
    """Trains from an ``IterableDataset`` (no length: 8 batches of 16)."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Blobs(), batch_size=16)


class MultiValClassifier(StagedClassifier):
    """Two validation dataloaders; ``val_acc`` arrives as ``val_acc/dataloader_idx_{0,1}``."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(-1) == y).float().mean())

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(blobs(128, 1), batch_size=32), DataLoader(blobs(64, 4), batch_size=32)]


class SyncClassifier(StagedClassifier):
    """Logs its own epoch metric with ``sync_dist=True``: any "sync_dist" warning in a DDP run
    then comes from lightning-watt's keys, not the module's."""

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(-1) == y).float().mean(), sync_dist=True)


class FakeWandbLogger(Logger):
    """Shaped like ``WandbLogger``: a save_dir shared by runs, ``name`` = the project and a
    string ``version`` = the run id, no ``log_dir``. Keeps the rows it was sent."""

    def __init__(self, save_dir: Path, project: str, run_id: str) -> None:
        super().__init__()
        self._save_dir, self._project, self._run_id = str(save_dir), project, run_id
        self.rows: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return self._project

    @property
    def version(self) -> str:
        return self._run_id

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def experiment(self) -> FakeWandbLogger:
        return self

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append({"step": step, **{k: float(v) for k, v in metrics.items()}})

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class WarningRecorder(Callback):
    """Records every warning a process emits from ``setup`` to ``teardown`` (list it first)
    and writes their messages to ``out_dir/warnings.rank<N>.json``: works in spawned workers."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = str(out_dir)
        self._ctx: Any = None
        self._caught: list[warnings.WarningMessage] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._ctx = warnings.catch_warnings(record=True)
        self._caught = self._ctx.__enter__()
        warnings.simplefilter("always")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None
        path = Path(self.out_dir) / f"warnings.rank{trainer.global_rank}.json"
        path.write_text(json.dumps([str(w.message) for w in self._caught]), encoding="utf-8")

    def __getstate__(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "_ctx": None, "_caught": []}


def recorded_warnings(out_dir: Path) -> dict[str, list[str]]:
    """``{"rank0": [...], ...}`` as written by :class:`WarningRecorder` or the DDP worker."""
    return {
        p.name.split(".")[1]: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(Path(out_dir).glob("warnings.rank*.json"))
    }


@contextlib.contextmanager
def printed_info() -> Iterator[list[str]]:
    """The messages ``rank_zero_info`` prints meanwhile (Lightning's logger does not propagate
    to the root logger, so caplog alone misses them)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_module

    lines: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = _Collect(level=logging.INFO)
    log = rank_zero_module.log
    log.addHandler(handler)
    try:
        yield lines
    finally:
        log.removeHandler(handler)
