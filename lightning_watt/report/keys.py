"""The keys the callback logs, and which logging prefix a run used.

A key is the callback's ``prefix`` (``watt/`` by default) followed by one of the suffixes below;
every lookup of a logged key in the report goes through :class:`LoggedKeys`, so a run logged with
``WattCallback(prefix="energy/")`` reads like any other. The prefix of a run comes from its
summary's ``prefix`` field, else from the logged keys themselves (:func:`resolve_prefix`).

Example:
    >>> keys = LoggedKeys(resolve_prefix(None, ["energy/energy_kWh", "energy/power_W", "loss"]))
    >>> keys.energy_kWh, keys.device_of("energy/power_W/gpu0"), keys.owns("loss")
    ('energy/energy_kWh', 'gpu0', False)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lightning_watt.schema import (
    CO2E_KG,
    COST,
    DEFAULT_PREFIX,
    DEVICE_POWER_W,
    ENERGY_KWH,
    EPOCH_GAP_J,
    EPOCH_KWH,
    EPOCH_TRAIN_J,
    EPOCH_VAL_J,
    FORECAST_KWH,
    GQI,
    POWER_W,
    STEP_J,
    TARGET_KWH,
    prefix_tag,
)

#: Suffixes the callback logs next to ``energy_kWh``: finding some under a candidate prefix
#: tells the callback's keys apart from a user's own metric that happens to end in energy_kWh.
_COMPANIONS = (
    POWER_W,
    STEP_J,
    EPOCH_TRAIN_J,
    EPOCH_VAL_J,
    EPOCH_GAP_J,
    EPOCH_KWH,
    GQI,
    TARGET_KWH,
    FORECAST_KWH,
    CO2E_KG,
    COST,
)


class _Key:
    """A logged key of a :class:`LoggedKeys`: its prefix followed by ``suffix``."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    def __get__(self, keys: LoggedKeys | None, owner: type | None = None) -> str:
        # On the class (help(), doc tools) there is no prefix: the suffix alone.
        return self.suffix if keys is None else keys.prefix + self.suffix


class LoggedKeys:
    """The full keys of one run's logged metrics, e.g. ``LoggedKeys("watt/").power_W``."""

    energy_kWh = _Key(ENERGY_KWH)
    power_W = _Key(POWER_W)
    step_J = _Key(STEP_J)
    epoch_train_J = _Key(EPOCH_TRAIN_J)
    epoch_val_J = _Key(EPOCH_VAL_J)
    epoch_gap_J = _Key(EPOCH_GAP_J)
    epoch_kWh = _Key(EPOCH_KWH)
    gqi = _Key(GQI)
    target_kWh = _Key(TARGET_KWH)
    forecast_kWh = _Key(FORECAST_KWH)
    co2e_kg = _Key(CO2E_KG)
    cost = _Key(COST)

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"LoggedKeys({self.prefix!r})"

    def device_power(self, device: str) -> str:
        """The key of one device's power."""
        return self.prefix + DEVICE_POWER_W + device

    def device_of(self, key: str) -> str | None:
        """The device a per-device power key names, else ``None``."""
        head = self.prefix + DEVICE_POWER_W
        return key[len(head) :] if key.startswith(head) and len(key) > len(head) else None

    def owns(self, key: str) -> bool:
        """Whether ``key`` is one the callback logged (never a monitor candidate)."""
        return key.startswith(self.prefix)


def detect_prefixes(logged: Iterable[str]) -> list[str]:
    """Prefixes under which the callback's keys were logged, most convincing first: a key
    ending in ``energy_kWh``, ranked by how many other suffixes of the callback share its
    prefix, the default prefix first among equals.

    Example:
        >>> detect_prefixes(["gpu/energy_kWh", "gpu/power_W", "watt/energy_kWh", "x"])
        ['gpu/', 'watt/']
    """
    keys = set(logged)
    candidates = {
        k[: -len(ENERGY_KWH)] for k in keys if k.endswith(ENERGY_KWH) and len(k) > len(ENERGY_KWH)
    }

    def rank(prefix: str) -> tuple[int, bool, str]:
        companions = sum(prefix + suffix in keys for suffix in _COMPANIONS)
        return -companions, prefix != DEFAULT_PREFIX, prefix

    return sorted(candidates, key=rank)


def resolve_prefix(summary_prefix: Any, logged: Iterable[str], tag: str = "") -> str:
    """The run's logging prefix: the summary's ``prefix`` when it gives one, else one detected
    from the logged keys (preferring one whose file tag is ``tag``, the tag of the run's
    summary or trace file names), else the default ``watt/``.

    Example:
        >>> resolve_prefix("energy/", []), resolve_prefix(None, []), resolve_prefix(
        ...     None, ["watt/energy_kWh", "gpu/energy_kWh"], tag="gpu")
        ('energy/', 'watt/', 'gpu/')
    """
    if isinstance(summary_prefix, str) and summary_prefix:
        return summary_prefix
    found = detect_prefixes(logged)
    # Two callbacks in one Trainer log side by side: the file tag says whose files were read.
    tagged = [p for p in found if prefix_tag(p) == tag]
    if tagged:
        return tagged[0]
    return found[0] if found else DEFAULT_PREFIX


#: The keys of the default prefix.
DEFAULT_KEYS = LoggedKeys(DEFAULT_PREFIX)
