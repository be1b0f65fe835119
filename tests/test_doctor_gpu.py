"""``lightning-watt doctor`` on a real NVIDIA GPU (skipped elsewhere): what it finds on the
hardware, and a short ``--load`` against the counter read every few ms.

Run with ``python -m pytest tests/test_doctor_gpu.py -m gpu -s`` to see the report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lightning_watt.doctor import diagnose, print_report, report_to_json, run_load
from lightning_watt.sources.nvml import nvml_status


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


_OK, _REASON = nvml_status()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (_OK and _cuda()), reason=f"needs an NVIDIA GPU: {_REASON}"),
]


def test_doctor_finds_and_measures_the_gpu(tmp_path: Path) -> None:
    report = diagnose(None, 2.0)
    print()
    print_report(report)
    assert report.nvml["ok"] and report.nvml.get("driver")
    gpus = [d for d in report.devices if d.kind == "gpu"]
    assert gpus and all(d.uuid.startswith("GPU-") for d in gpus)
    gpu0 = gpus[0]
    assert gpu0.measured and report.exit_code == 0, gpu0.verdict
    counter = gpu0.reader("counter")
    if counter is not None and counter.works:
        assert counter.update_ms is not None and 20 <= counter.update_ms <= 1000, counter
        assert counter.cost_ms_p50 is not None and counter.cost_ms_p50 < 50, counter
    buffer = gpu0.reader("buffer")
    if buffer is not None and buffer.works:
        assert buffer.update_ms is not None and 5 <= buffer.update_ms <= 200, buffer
    json.dumps(report_to_json(report), allow_nan=False)


def test_short_load_agrees_with_the_counter(tmp_path: Path) -> None:
    result = run_load(str(tmp_path / "load"), burst_s=1.0, idle_s=1.0, cycles=2, size=4096)
    print(
        f"\nload {result['window_s']:.1f} s: fused {result['fused_error_pct']:+.3f} %, bursts "
        f"median |error| {result['burst_median_abs_error_pct'] or math.nan:.2f} %; readers "
        + ", ".join(f"{k} {v['error_pct']:+.2f} %" for k, v in result["readers"].items())
    )
    assert result["counter_updates"] > 20
    assert abs(result["fused_error_pct"]) < 1.0
    bursts = result["burst_median_abs_error_pct"]  # None: no burst spanned two updates
    assert bursts is not None and bursts < 5.0, result["bursts"]
