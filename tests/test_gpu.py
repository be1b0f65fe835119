"""On a real NVIDIA GPU: the meter with NvmlSource against the GPU's own energy counter.

Skipped where NVML or CUDA is missing. Run with ``python -m pytest tests/test_gpu.py -m gpu -s``
to see the measured numbers (the polling thread's CPU cost, the agreement).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest

from lightning_watt.sources.nvml import NvmlSource, nvml_status


def _gpu_here() -> tuple[bool, str]:
    ok, reason = nvml_status()
    if not ok:
        return False, reason
    import torch

    if not torch.cuda.is_available():
        return False, f"NVML works ({reason}) but torch sees no CUDA device"
    return True, reason


_OK, _REASON = _gpu_here()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _OK, reason=f"needs an NVIDIA GPU with NVML: {_REASON}"),
]

LOAD_S = 20.0


def _thread_cpu_seconds(thread: threading.Thread) -> float:
    """CPU seconds one thread has used (user + system), from another thread."""
    assert thread.ident is not None
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except (AttributeError, OSError):
        # No per-thread CPU clock: Linux's /proc has the same in clock ticks.
        with open(f"/proc/self/task/{thread.native_id}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _nvml_handle(uuid: str) -> object:
    import pynvml

    return pynvml.nvmlDeviceGetHandleByUUID(uuid)


def _offers_buffer(handle: object) -> bool:
    import pynvml

    try:
        pynvml.nvmlDeviceGetSamples(handle, pynvml.NVML_TOTAL_POWER_SAMPLES, 0)
    except pynvml.NVMLError_NotFound:
        return True  # supported, momentarily empty
    except pynvml.NVMLError:
        return False
    return True


def _pinned_counter(handle: object, clock: Callable[[], float]) -> tuple[float, float]:
    """``(t, joules)`` at a counter update: reads in a tight loop until the value changes, so
    the reading is pinned to within one ~2.5 ms read of the update (not up to 100 ms after)."""
    import pynvml

    first = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    deadline = clock() + 2.0
    while clock() < deadline:
        c0 = clock()
        value = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        c1 = clock()
        if value != first:
            return 0.5 * (c0 + c1), value / 1000.0
    raise AssertionError("the NVML energy counter did not change for 2 s")


def _matmul_load(seconds: float) -> int:
    """Keep the GPU busy with fp16 matmuls for ``seconds``; returns the matmuls done."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    c = torch.empty_like(a)
    done = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(10):
            torch.matmul(a, b, out=c)  # same random inputs each time: steady, realistic power
        done += 10
        torch.cuda.synchronize()  # keep the host within ~10 matmuls of the GPU
    return done


def test_meter_matches_the_counter_under_matmul_load() -> None:
    import pynvml
    import torch

    from lightning_watt.energy.meter import EnergyMeter

    index = torch.cuda.current_device()
    source = NvmlSource([index])
    meter = EnergyMeter(sources=[source])
    clock = meter.now
    pynvml.nvmlInit()  # our own reference, so the handle outlives the meter's NVML session
    meter.start()
    try:
        assert not meter.unavailable, meter.unavailable
        (device,) = meter.devices
        handle = _nvml_handle(device.uuid)
        torch.ones(1, device="cuda").sum().item()  # a CUDA context, so idle power is steady
        time.sleep(1.0)
        thread = next(t for t in threading.enumerate() if t.name == "lightning-watt-meter")
        cpu0, wall0 = _thread_cpu_seconds(thread), time.monotonic()
        # Both ends idle: the counter's up-to-100 ms reading lag then costs the same at each.
        t0, c0 = _pinned_counter(handle, clock)
        matmuls = _matmul_load(LOAD_S)
        time.sleep(1.0)
        t1, c1 = _pinned_counter(handle, clock)
        cpu1, wall1 = _thread_cpu_seconds(thread), time.monotonic()
        time.sleep(0.6)  # the meter's next counter read and buffer drain cover t1
    finally:
        meter.stop()
    try:
        has_buffer = _offers_buffer(handle)
    finally:
        pynvml.nvmlShutdown()

    counter_j = c1 - c0
    meter_j = meter.energy_between(t0, t1)[device.name]
    cost = (cpu1 - cpu0) / (wall1 - wall0)
    how = meter.describe()[device.name]  # the source's description + the methods used
    print(
        f"\n{device.label} ({device.uuid}): {matmuls} matmuls in {LOAD_S:.0f} s; "
        f"counter {counter_j:.1f} J over {t1 - t0:.2f} s, meter {meter_j:.1f} J "
        f"({(meter_j / counter_j - 1) * 100:+.3f} %); average power {counter_j / (t1 - t0):.0f} W"
        f"\nmeter thread: {cost * 100:.2f} % of one CPU core ({cpu1 - cpu0:.3f} CPU s over "
        f"{wall1 - wall0:.1f} s); errors {meter.errors}; gaps {meter.gaps(t0, t1)}"
        f"\nhow: {how}; metadata {source.metadata()}"
    )
    assert not meter.errors, meter.errors
    assert counter_j > 0
    assert meter_j == pytest.approx(counter_j, rel=0.005)
    assert meter.total()[device.name] >= meter_j

    # The buffer path is used wherever the driver offers the buffer (H100/H200 do).
    if has_buffer:
        assert "driver power buffer" in how and "counter+buffer_W" in how, how
        samples = source.metadata()["devices"][device.name]["buffer_samples"]  # type: ignore[index]
        assert samples > 0.9 * (t1 - t0) / 0.02, samples


def test_source_maps_the_current_device_by_uuid() -> None:
    import pynvml
    import torch

    index = torch.cuda.current_device()
    source = NvmlSource()
    source.open(time.monotonic)
    try:
        (device,) = source.devices()
        assert device.name == f"gpu{index}"
        torch_uuid = str(torch.cuda.get_device_properties(index).uuid)
        assert device.uuid.lower().endswith(torch_uuid.lower()) or device.notes  # MIG: parent
        name = pynvml.nvmlDeviceGetName(_nvml_handle(device.uuid))
        assert device.label == (name.decode() if isinstance(name, bytes) else name)
        power = []
        for channel in source.channels():
            for reading in channel.read():
                if reading.kind != "counter_J":
                    power.append(reading.value)
        time.sleep(0.6)
        for channel in source.channels():
            power.extend(r.value for r in channel.read() if r.kind != "counter_J")
        assert power and all(5.0 < w < 3000.0 for w in power), power
        print(f"\n{source.describe()}")
    finally:
        source.close()
