"""Shared pytest setup: GPU tests skip where no NVIDIA GPU is usable."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Deterministic property tests (the same examples on every run and in CI), and no per-example
# deadline: a loaded 2-core machine must not turn a slow example into a failure. The same goes
# for the one health check that times the examples' generation on the wall clock (too_slow);
# a test that lists its own suppressed checks lists it too (a list replaces this one).
settings.register_profile(
    "lightning-watt",
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("lightning-watt")

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py, tests/fake_pynvml.py


def _gpu_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from lightning_free import MODULES

    free = pytest.mark.lightning_free
    for item in items:
        if item.path.name in MODULES and item.path.parent == Path(__file__).parent:
            item.add_marker(free)
    if not any("gpu" in item.keywords for item in items) or _gpu_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with NVML (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_rendezvous_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each multi-process test picks its own free port. Lightning writes the port of a spawn
    into os.environ, so without this the next DDP test reused it while the previous group's
    socket could still hold it (a failure seen about once in a dozen runs)."""
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
