"""Train a small CNN on scikit-learn's bundled digits with energy measured per step.

Runs offline on 2 CPU cores in well under 2 minutes. On a GPU machine the energy is measured
through NVML; with ``--replay h200-mlp-stall`` a real recorded H200 trace is replayed so a CPU
machine shows what a GPU run looks like (labelled as a replay in logs and summary).

    python examples/digits.py --replay h200-mlp-stall
    tensorboard --logdir runs        # energy curves under watt/
    # PNG report: runs/digits/version_0/report/
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_watt.callback import WattCallback


class DigitsCNN(pl.LightningModule):
    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
        )  # fmt: skip
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(-1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def loaders(batch_size: int, limit: int | None) -> tuple[DataLoader, DataLoader]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    x, y = x[order], y[order]
    if limit:
        x, y = x[:limit], y[:limit]
    split = int(0.8 * len(y))
    train = TensorDataset(x[:split], y[:split])
    val = TensorDataset(x[split:], y[split:])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=256)


def main(argv: list[str] | None = None) -> WattCallback:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replay", help="replay a recorded GPU trace (bundled name or prefix)")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="use only this many images")
    parser.add_argument("--logdir", default="runs")
    parser.add_argument("--no-report", action="store_true", help="skip the PNG report")
    args = parser.parse_args(argv)

    pl.seed_everything(0, verbose=False)
    train, val = loaders(64, args.limit)
    watt = WattCallback(replay=args.replay, score_from="val_acc")
    trainer = pl.Trainer(
        max_epochs=args.max_epochs,
        logger=TensorBoardLogger(args.logdir, name="digits"),
        callbacks=[watt, EarlyStopping(monitor="watt/gqi", mode="max", patience=args.patience)],
        log_every_n_steps=5,
        enable_model_summary=False,
    )
    trainer.fit(DigitsCNN(), train, val)
    if not args.no_report:
        from lightning_watt.report.cli import main as report

        report(["report", str(trainer.log_dir), "-o", f"{trainer.log_dir}/report", "-q"])
    print(f"logs, watt_summary.json and report/*.png in {trainer.log_dir}")
    print(f"tensorboard --logdir {args.logdir}")
    return watt


if __name__ == "__main__":
    main()
