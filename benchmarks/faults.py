"""The fault table: each planned fault of ``tests/faults`` run as a real ``Trainer.fit`` on a
FAKE GPU at a constant 300 W (``tests/fake_pynvml``, not NVIDIA's library), so the truth is
300 W x the fit's duration. Prints, per fault: the energy reported, its error against the truth,
the unmeasured (estimated) part, the warnings issued, and how long the fit took.

Usage: ``python benchmarks/faults.py`` (about a minute on a 2-core CPU).
"""

from __future__ import annotations

import errno
import gzip
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "faults")]


class _Patches:
    """A tiny monkeypatch (set, then undo all) for use outside pytest."""

    def __init__(self) -> None:
        self.undo: list[tuple[object, str, object]] = []

    def setattr(self, obj: object, name: str, value: object) -> None:
        self.undo.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def setitem(self, mapping: dict, key: str, value: object) -> None:
        self.undo.append((mapping, key, mapping.get(key)))
        mapping[key] = value

    def close(self) -> None:
        for obj, name, old in reversed(self.undo):
            if isinstance(obj, dict):
                obj[name] = old
            else:
                setattr(obj, name, old)


def main() -> None:
    import pynvml as real
    from harness import WATTS, FaultAt, fit, install_fake_gpu, nvml_source

    from lightning_watt import WattCallback
    from lightning_watt.energy.meter import EnergyMeter

    def thread_dies(p, fake):
        original, armed = EnergyMeter._ingest, []

        def ingest(self, readings):
            if armed and armed.pop():
                raise KeyboardInterrupt("simulated")
            return original(self, readings)

        p.setattr(EnergyMeter, "_ingest", ingest)
        return lambda: armed.append(True)

    def thread_fails_forever(p, fake):
        original, broken = EnergyMeter._poll, []

        def poll(self, channel, state):
            if broken:
                raise RuntimeError("simulated")
            return original(self, channel, state)

        p.setattr(EnergyMeter, "_poll", poll)
        return lambda: broken.append(True)

    def slow_counter(p, fake):
        nvml = sys.modules["pynvml"]
        original, left = nvml.nvmlDeviceGetTotalEnergyConsumption, [0]

        def read(handle):
            if left[0] > 0:
                left[0] -= 1
                time.sleep(0.6)
            return original(handle)

        nvml.nvmlDeviceGetTotalEnergyConsumption = read
        return lambda: left.__setitem__(0, 3)

    def stuck_read(p, fake):
        nvml = sys.modules["pynvml"]
        original, stuck = nvml.nvmlDeviceGetTotalEnergyConsumption, []

        def read(handle):
            if stuck:
                release.wait(60.0)
            return original(handle)

        nvml.nvmlDeviceGetTotalEnergyConsumption = read
        return lambda: stuck.append(True)

    def full_disk(p, fake):
        def full(self, data):
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")

        return lambda: p.setattr(gzip.GzipFile, "write", full)

    release = threading.Event()
    cases = [
        ("none (baseline)", 10, lambda p, f: lambda: None, False),
        ("meter thread: BaseException once", 10, thread_dies, False),
        ("meter thread: fails on every poll", 20, thread_fails_forever, False),
        ("GPU lost (GPU_IS_LOST)", 20, lambda p, f: lambda: f.lose(0), False),
        ("3 counter reads of 0.6 s", 8, slow_counter, False),
        (
            "5 counter timeouts",
            10,
            lambda p, f: lambda: f.fail(0, "counter", real.NVMLError_Timeout, times=5),
            False,
        ),
        ("a read stuck in the driver", 20, stuck_read, False),
        ("disk full mid-fit (recording on)", 10, full_disk, True),
    ]
    print("| fault | reported J | truth J | error | unmeasured J | warnings | fit s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, step, make, record in cases:
        patches = _Patches()
        try:
            fake = install_fake_gpu(patches)
            fault = make(patches, fake)
            cb = WattCallback(sources=[nvml_source(fake)], record=record)
            with tempfile.TemporaryDirectory() as tmp:
                began = time.monotonic()
                summary, messages = fit(Path(tmp), cb, FaultAt(step, fault))
                took = time.monotonic() - began
        finally:
            release.set()
            patches.close()
            release.clear()
        truth = WATTS * summary["duration_s"]
        error = 100.0 * (summary["energy_J"] - truth) / truth
        print(
            f"| {name} | {summary['energy_J']:.0f} | {truth:.0f} | {error:+.1f} % | "
            f"{summary['unmeasured_J']:.0f} | {len(messages)} | {took:.1f} |"
        )


if __name__ == "__main__":
    main()
