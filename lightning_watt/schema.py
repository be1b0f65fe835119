"""Every name lightning-watt writes: logged keys, files next to the logs, stages, formats.

One definition each, shared by the callback and the budget that write them, the summary and
the traces, and the report that reads them back. A logged key is the callback's ``prefix``
followed by one of the key names below (``watt/energy_kWh``).

Example:
    >>> summary_file("fit"), summary_file("test"), trace_stem("fit", rank=1, world_size=2)
    ('watt_summary.json', 'watt_summary_test.json', 'watt_trace.rank1')
"""

from __future__ import annotations

import re

SUMMARY_STEM = "watt_summary"
TRACE_STEM = "watt_trace"
SUMMARY_FORMAT = "lightning-watt summary v1"
TRACE_FORMAT = "watt-trace v1"

# Logged keys (after the prefix).
ENERGY_KWH = "energy_kWh"
POWER_W = "power_W"
STEP_J = "step_J"
EPOCH_TRAIN_J = "epoch_train_J"
EPOCH_VAL_J = "epoch_val_J"
EPOCH_GAP_J = "epoch_gap_J"
EPOCH_KWH = "epoch_kWh"
#: The estimated part of the stage's energy (devices no reader measured any more); logged at
#: epoch ends once it is not 0.
UNMEASURED_KWH = "unmeasured_kWh"
GQI = "gqi"
TARGET_KWH = "target_kWh"
FORECAST_KWH = "forecast_kWh"
FORECAST_CO2E_KG = "forecast_co2e_kg"
#: Followed by a device name: ``power_W/gpu0`` (``per_device=True``).
DEVICE_POWER_W = POWER_W + "/"
CO2E_KG = "co2e_kg"
COST = "cost"
#: Progress-bar entries (not logged).
BAR_POWER, BAR_ENERGY = "W", "kWh"

#: Stages a summary can describe: Lightning's four entry points, and ``tune`` for a
#: ``Tuner.lr_find``/``scale_batch_size`` run (a fit the tuner ends and rolls back).
STAGES = ("fit", "validate", "test", "predict", "tune")

#: The default logging prefix; callbacks with another one tag their files with it.
DEFAULT_PREFIX = "watt/"


def stage_name(stage: object) -> str:
    """``"fit"`` for ``"fit"`` or Lightning's ``TrainerFn.FITTING`` (a ``str`` enum whose
    ``str()`` is ``"TrainerFn.FITTING"``)."""
    return str(getattr(stage, "value", stage))


def prefix_tag(prefix: str) -> str:
    """A file-name tag for a non-default logging prefix (``"gpu/"`` -> ``"gpu"``), else ``""``."""
    if prefix == DEFAULT_PREFIX:
        return ""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", prefix).strip("-") or "prefix"


def summary_file(stage: str, tag: str = "") -> str:
    """``watt_summary.json`` for a fit, ``watt_summary_<stage>.json`` otherwise."""
    stem = SUMMARY_STEM if stage == "fit" else f"{SUMMARY_STEM}_{stage}"
    return f"{stem}.{tag}.json" if tag else f"{stem}.json"


def trace_stem(stage: str, rank: int = 0, world_size: int = 1, tag: str = "") -> str:
    """The watt-trace prefix of a stage's recording on one rank."""
    stem = TRACE_STEM if stage == "fit" else f"{TRACE_STEM}_{stage}"
    if tag:
        stem += f".{tag}"
    if world_size > 1:
        stem += f".rank{rank}"
    return stem
