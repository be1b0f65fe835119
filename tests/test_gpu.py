"""On a real NVIDIA GPU: the meter with NvmlSource against the GPU's own energy counter.

Skipped where NVML or CUDA is missing. Run with ``python -m pytest tests/test_gpu.py -m gpu -s``
to see the measured numbers (the polling thread's CPU cost, the agreement).
"""

from __future__ import annotations

import math
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
    """CPU seconds one thread has used (user + system), from another thread; NaN where
    neither a per-thread CPU clock nor /proc tells (a sandbox): the cost is printed, not tested."""
    assert thread.ident is not None
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except (AttributeError, OSError):
        pass
    try:
        # No per-thread CPU clock: Linux's /proc has the same in clock ticks.
        with open(f"/proc/self/task/{thread.native_id}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


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


# ---------------------------------------------------------------------------- the reduction
def _reduction_worker(rank: int, backend: str, port: int, out: str) -> None:
    """Queue ~1 s of GPU work, then sum a log row across the ranks: it must return while
    the work still runs (no wait for the stream), on the gloo group made for NCCL jobs."""
    import json
    import os

    import torch
    import torch.distributed as dist

    from lightning_watt.attribution.distributed import host_group, sum_across_ranks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    index = rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    device = torch.device("cuda", index)
    dist.init_process_group(backend, rank=rank, world_size=2)
    host_group(device)  # made at the stage's begin, before any log row
    torch.ones(1, device=device).sum().item()  # the context is up
    stream = torch.cuda.current_stream()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(2_000_000_000)  # ~1 s of spinning at ~2 GHz, no allocation
    end.record()
    t0 = time.perf_counter()
    sums = [sum_across_ranks([rank + 1.0, 0.25], device) for _ in range(10)]
    row_s = (time.perf_counter() - t0) / 10
    busy = not stream.query()
    synced_s = None
    if backend == "nccl":
        # The control: the same sum on the GPU, read back as before, waits for the kernel.
        t0 = time.perf_counter()
        tensor = torch.tensor([rank + 1.0, 0.25], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        tensor.tolist()
        synced_s = time.perf_counter() - t0
    torch.cuda.synchronize()
    kernel_s = start.elapsed_time(end) / 1e3
    dist.destroy_process_group()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        found = {"row_s": row_s, "busy": busy, "kernel_s": kernel_s, "synced_s": synced_s}
        json.dump({**found, "sums": sums}, fh)


@pytest.mark.parametrize("backend", ["nccl", "cpu:gloo,cuda:nccl"])
def test_a_log_row_never_waits_for_the_gpu(tmp_path, backend: str) -> None:
    import json
    import socket

    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_nccl_available():
        pytest.skip("this torch has no NCCL")
    if backend == "nccl" and torch.cuda.device_count() < 2:
        pytest.skip("two NCCL ranks need two GPUs (NCCL refuses two ranks on one device)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.start_processes(
        _reduction_worker, args=(backend, port, str(tmp_path)), nprocs=2, start_method="spawn"
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    print(f"\n{backend}: " + "; ".join(
        f"rank {r}: a row {1e3 * x['row_s']:.2f} ms behind a {x['kernel_s']:.2f} s kernel"
        for r, x in enumerate(ranks)
    ))  # fmt: skip
    for r in ranks:
        assert r["sums"] == [[3.0, 0.5]] * 10
        assert r["kernel_s"] > 0.2, r  # the queued work was long enough to tell
        assert r["busy"], r  # the rows returned while the kernel still ran
        assert r["row_s"] < 0.1 * r["kernel_s"], r
        if r["synced_s"] is not None:  # the control did wait: the test can see a sync
            assert r["synced_s"] > 0.3 * r["kernel_s"], r
