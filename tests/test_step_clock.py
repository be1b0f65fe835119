"""StepClock's GPU path, driven by a *fake* CUDA event model (no GPU here).

The fake models what was measured on an H100: Lightning's hooks run ahead of the GPU by
4-12 ms; an event completes when the simulated GPU reaches it; ``query()`` never blocks.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from lightning_watt.attribution.step_clock import StepClock


class FakeGpu:
    """A simulated GPU stream: work queued by the host finishes ``lag`` seconds later."""

    def __init__(self) -> None:
        self.host_t = 0.0
        self.lag = 0.0
        self.gpu_t = 0.0  # how far the GPU has got
        self.syncs = 0
        self.idle_at: float | None = None  # host time of the last synchronize: queue empty

    def event_class(gpu):
        class FakeCudaEvent:
            def __init__(self, enable_timing: bool = False) -> None:
                self.t: float | None = None

            def record(self) -> None:
                # Right after a synchronize the queue is empty: the event is reached at once.
                idle = gpu.idle_at is not None and gpu.idle_at == gpu.host_t
                self.t = gpu.host_t if idle else gpu.host_t + gpu.lag

            def query(self) -> bool:
                return self.t is not None and self.t <= gpu.gpu_t

            def synchronize(self) -> None:
                gpu.gpu_t = max(gpu.gpu_t, self.t or 0.0)

            def elapsed_time(self, end: FakeCudaEvent) -> float:
                assert self.query() and end.query(), "elapsed_time on an unfinished event"
                return (end.t - self.t) * 1000.0

        return FakeCudaEvent


@pytest.fixture
def fake_gpu(monkeypatch):
    gpu = FakeGpu()

    def synchronize(device=None):
        gpu.syncs += 1
        gpu.gpu_t = max(gpu.gpu_t, gpu.host_t + gpu.lag)
        gpu.idle_at = gpu.host_t

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Event", gpu.event_class())
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    return gpu


def test_edges_resolve_to_gpu_time_without_blocking(fake_gpu):
    clock = StepClock(now=lambda: fake_gpu.host_t, device=torch.device("cuda", 0))
    assert clock.uses_gpu_time and fake_gpu.syncs == 2  # the one anchoring at start
    syncs_at_start = fake_gpu.syncs
    fake_gpu.lag = 0.008  # the host runs 8 ms ahead of the GPU
    for step in range(5):
        fake_gpu.host_t = 1.0 + 0.01 * step + 1e-6
        clock.mark("train", "start", step, 0)
        fake_gpu.host_t += 0.004
        clock.mark("train", "end", step, 0)
    fake_gpu.gpu_t = 1.025  # the GPU has finished steps 0 and 1 only
    done = clock.resolve()
    assert [(e.index, e.edge) for e in done] == [(0, "start"), (0, "end"), (1, "start"), (1, "end")]
    for e in done:
        assert e.t_gpu == pytest.approx(e.t_host + 0.008, abs=1e-9)
    assert clock.pending == 6 and clock.first_pending_host() == pytest.approx(1.02, abs=1e-5)
    assert fake_gpu.syncs == syncs_at_start  # resolving never synchronised
    rest = clock.resolve(wait=True)
    assert len(rest) == 6 and clock.pending == 0


def test_reanchor_keeps_earlier_edges_on_their_own_reference(fake_gpu):
    clock = StepClock(now=lambda: fake_gpu.host_t, device=torch.device("cuda", 0))
    fake_gpu.lag = 0.005
    fake_gpu.host_t = 2.0
    clock.mark("train", "end", 0, 0)
    fake_gpu.host_t = 3.0
    clock.reanchor()
    fake_gpu.host_t = 3.1
    clock.mark("train", "start", 1, 1)
    fake_gpu.gpu_t = 10.0
    first, second = clock.resolve()
    assert first.t_gpu == pytest.approx(2.005)
    assert second.t_gpu == pytest.approx(3.105)


def test_host_time_without_a_gpu():
    t = iter([5.0, 6.0])
    clock = StepClock(now=lambda: next(t), device=None)
    clock.mark("val", "start", 0, 0)
    clock.mark("val", "end", 0, 0)
    edges = clock.resolve()
    assert [e.t for e in edges] == [5.0, 6.0] and all(e.t_gpu is None for e in edges)
