"""A fit on a FAKE 300 W GPU (``tests/fake_pynvml``, not NVIDIA's library) that checkpoints
every 5 steps, run by ``test_kill_resume.py`` as a process it kills with SIGKILL, then again to
resume from the newest checkpoint. Usage: ``python kill_worker.py OUT train|resume``.
On ``resume`` it writes the summary to ``OUT/result.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers, fakes


def main(out: Path, mode: str) -> None:
    import fake_pynvml as fk
    import lightning.pytorch as pl
    from helpers import TinyClassifier
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    gpu = fk.FakeGpu("GPU-fa17fa17-0000-0000-0000-0000000000c1", fk.SyntheticPower(lambda t: 300.0))
    fake = fk.FakeNvml(
        [gpu],
        clock=fk.RealClock(),
        counter_latency_s=0.0025,
    )
    sys.modules["pynvml"] = fake.module()
    from lightning_watt import WattCallback
    from lightning_watt.sources.nvml import NvmlSource

    source = NvmlSource([0], uuid_of=fk.uuid_lookup(fk.cuda_uuids(fake.gpus)))
    cb = WattCallback(sources=[source])
    ckpt = ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=5, save_top_k=-1)
    trainer = pl.Trainer(
        default_root_dir=out,
        callbacks=[cb, ckpt],
        logger=CSVLogger(out, name=mode),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        max_epochs=100 if mode == "train" else 8,
        limit_val_batches=0,
        log_every_n_steps=5,
    )
    if mode == "train":
        trainer.fit(TinyClassifier(step_sleep=0.05))  # killed long before it ends
        return
    newest = max((out / "ckpt").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    trainer.fit(TinyClassifier(step_sleep=0.01), ckpt_path=newest)
    (out / "result.json").write_text(
        json.dumps(
            {"summary": cb.last_summary, "checkpoint": newest.name, "steps": trainer.global_step},
            default=str,
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), sys.argv[2])
