"""A plain-DDP fit (2 gloo processes on the CPU), run by test_compat_ddp as a script.

Lightning starts rank 1 by running this script again. Every rank writes the warnings it saw
to ``OUT/warnings.rank<N>.json``; rank zero writes what it knows after the fit to
``OUT/result.json``. Usage: ``python ddp_worker.py OUT``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers, compat


def main(out: Path) -> None:
    from compat.scenarios import SyncClassifier, plain_trainer
    from lightning.pytorch.loggers import CSVLogger

    from lightning_watt.integration.callback import WattCallback

    cb = WattCallback(replay=["h200-mlp-stall", "h100-mlp"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr = plain_trainer(out, [cb], logger=CSVLogger(out, name="ddp"), strategy="ddp", devices=2)
        tr.fit(SyncClassifier())
    log_dir = tr.log_dir  # a collective: every rank asks
    messages = [str(w.message) for w in caught]
    (out / f"warnings.rank{tr.global_rank}.json").write_text(json.dumps(messages))
    if tr.global_rank == 0:
        summary = cb.last_summary or {}
        result = {
            "energy_kwh": cb.energy_kwh,
            "stage_type": type(summary.get("stage")).__name__,
            "summary": summary,
            "log_dir": log_dir,
        }
        (out / "result.json").write_text(json.dumps(result, default=str))
    # Torn down here, not by the interpreter's exit: gloo's teardown at exit aborts now and
    # then ("terminate called without an active exception") after everything is written.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
