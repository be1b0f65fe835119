"""Where code inside a training run finds the run's energy without being handed it.

:class:`~lightning_watt.integration.callback.WattCallback` registers a provider while it runs; the
:class:`~lightning_watt.score.metrics.GreenQuotientIndex` metric asks it for the cumulative energy
when
the caller passes none. Outside such a run there is no provider and the caller must pass energy.

Example:
    >>> from lightning_watt.attribution.context import current_energy_kwh, energy_provider
    >>> with energy_provider(lambda: 0.25):
    ...     current_energy_kwh()
    0.25
    >>> current_energy_kwh() is None
    True
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

EnergyProvider = Callable[[], float]

_lock = threading.Lock()
_providers: list[EnergyProvider] = []


def push_energy_provider(provider: EnergyProvider) -> None:
    """Make ``provider`` (returning cumulative kWh of the run, all ranks) the current one."""
    with _lock:
        _providers.append(provider)


def pop_energy_provider(provider: EnergyProvider) -> None:
    """Remove ``provider``; unknown providers are ignored."""
    with _lock, contextlib.suppress(ValueError):
        _providers.remove(provider)


@contextlib.contextmanager
def energy_provider(provider: EnergyProvider) -> Iterator[None]:
    """Context manager form of :func:`push_energy_provider`/:func:`pop_energy_provider`."""
    push_energy_provider(provider)
    try:
        yield
    finally:
        pop_energy_provider(provider)


def current_energy_kwh() -> float | None:
    """Cumulative kWh of the innermost active run, or ``None`` outside one."""
    with _lock:
        provider = _providers[-1] if _providers else None
    return None if provider is None else float(provider())
