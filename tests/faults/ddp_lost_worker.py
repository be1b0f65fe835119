"""A plain-DDP fit (2 gloo processes on the CPU) in which each rank measures its own FAKE GPU
(``tests/fake_pynvml``, not NVIDIA's library) at 300 W, and rank 1's GPU falls off the bus at
step 10. Run by ``test_ddp_lost.py``; Lightning starts rank 1 by running this script again.
Rank zero writes the merged summary to ``OUT/result.json``; every rank its warnings to
``OUT/warnings.rank<N>.json``. Usage: ``python ddp_lost_worker.py OUT``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers, fakes
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/faults: harness

UUIDS = ["GPU-fa17fa17-0000-0000-0000-00000000000a", "GPU-fa17fa17-0000-0000-0000-00000000000b"]


def main(out: Path) -> None:
    import fake_pynvml as fk
    import lightning.pytorch as pl
    from harness import FaultAt

    rank = int(os.environ.get("LOCAL_RANK", "0"))
    fake = fk.FakeNvml(
        [fk.FakeGpu(u, fk.SyntheticPower(lambda t: 300.0)) for u in UUIDS],
        clock=fk.RealClock(),
        counter_latency_s=0.0025,
    )
    sys.modules["pynvml"] = fake.module()
    from lightning_watt import WattCallback
    from lightning_watt.sources.nvml import NvmlSource

    source = NvmlSource([rank], uuid_of=fk.uuid_lookup(fk.cuda_uuids(fake.gpus)))
    cb = WattCallback(sources=[source], record=False)
    model = FaultAt(10, (lambda: fake.lose(1)) if rank == 1 else (lambda: None))
    trainer = pl.Trainer(
        default_root_dir=out,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        strategy="ddp",
        devices=2,
        max_epochs=4,
        limit_val_batches=0,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    messages = [str(w.message) for w in caught if "lightning-watt" in str(w.message)]
    (out / f"warnings.rank{trainer.global_rank}.json").write_text(json.dumps(messages))
    if trainer.global_rank == 0:
        (out / "result.json").write_text(json.dumps(cb.last_summary, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
