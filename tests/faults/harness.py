"""Shared pieces of the fault suite: a FAKE GPU (``tests/fake_pynvml``, not NVIDIA's library) at
a known constant power, so the truth of every fit is power x time, and a real ``Trainer.fit``
that runs a planned fault at a planned step.

The fake behaves as the measured H100/H200 do (see ``fake_pynvml``): a counter updating every
100 ms read in ~2.5 ms, a 20 ms driver buffer holding 2.4 s, fields. A counter anchors energy at
its reads, up to one 100 ms update stale at each end of a fit, so "right" here means within two
counter updates of power x time (``tolerance_j``) and 1 %.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fake_pynvml as fk
import lightning.pytorch as pl
from helpers import TinyClassifier

from lightning_watt import WattCallback
from lightning_watt.sources.nvml import NvmlSource

WATTS = 300.0
UUID = "GPU-fa17fa17-0000-0000-0000-000000000000"


def install_fake_gpu(monkeypatch: Any, *, counter_latency_s: float = 0.0025) -> fk.FakeNvml:
    """A FAKE NVML with one GPU at a constant 300 W, installed as ``pynvml``."""
    fake = fk.FakeNvml(
        [fk.FakeGpu(UUID, fk.SyntheticPower(lambda t: WATTS))],
        clock=fk.RealClock(),
        counter_latency_s=counter_latency_s,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake.module())
    return fake


def nvml_source(fake: fk.FakeNvml) -> NvmlSource:
    return NvmlSource([0], uuid_of=fk.uuid_lookup(fk.cuda_uuids(fake.gpus)))


class FaultAt(TinyClassifier):
    """Runs ``fault()`` once, at the start of global step ``step``."""

    def __init__(self, step: int, fault: Callable[[], None], step_sleep: float = 0.03) -> None:
        super().__init__(step_sleep=step_sleep)
        self.fault_step, self.fault, self.fired = step, fault, False

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if not self.fired and self.global_step >= self.fault_step:
            self.fired = True
            self.fault()
        return super().training_step(batch, batch_idx)


def fit(
    tmp_path: Path, callback: WattCallback, model: pl.LightningModule, **trainer_kw: Any
) -> tuple[dict[str, Any], list[str]]:
    """A real fit (64 training steps of ~30 ms); returns the summary and lightning-watt's
    warnings (each one once, as issued)."""
    kw: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "max_epochs": 4,
        "limit_val_batches": 0,
    }
    kw.update(trainer_kw)
    trainer = pl.Trainer(callbacks=[callback], **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    summary = callback.last_summary
    assert summary is not None, "the fit ended without a summary"
    messages = [str(w.message) for w in caught if "lightning-watt" in str(w.message)]
    return summary, messages


def tolerance_j(summary: dict[str, Any]) -> float:
    """Two counter updates at 300 W, plus 1 %."""
    return 2 * 0.1 * WATTS + 0.01 * WATTS * summary["duration_s"]


def assert_energy_right(summary: dict[str, Any]) -> None:
    truth = WATTS * summary["duration_s"]
    assert abs(summary["energy_J"] - truth) <= tolerance_j(summary), (summary["energy_J"], truth)
    phases = sum(summary["phases_J"].values())
    assert abs(phases - summary["energy_J"]) <= 1e-9 * max(1.0, summary["energy_J"])


def once(messages: list[str], text: str) -> str:
    """The one warning containing ``text`` (fails when there are none or several)."""
    found = [m for m in messages if text in m]
    assert len(found) == 1, (text, messages)
    return found[0]
