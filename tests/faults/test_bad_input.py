"""Bad input to every public constructor and function: a ValueError or TypeError that names
the argument, at construction, never a silent acceptance or an error from deep inside."""

from __future__ import annotations

import math

import pytest

from lightning_watt import EnergyMeter, WattCallback
from lightning_watt.energy.trace import bundled_trace
from lightning_watt.integration.budget import EnergyBudget
from lightning_watt.score.carbon import CarbonModel
from lightning_watt.score.functional import green_quotient_index
from lightning_watt.score.metrics import GreenQuotientIndex
from lightning_watt.sources.estimate import EstimateSource
from lightning_watt.sources.rapl import RaplSource
from lightning_watt.sources.replay import ReplaySource

NOT_NUMBERS = [True, "1", [1.0], None]
NOT_FINITE = [math.nan, math.inf, -math.inf, 10**400]
NOT_BOOLS = ["no", 1, 0.0, None]
NOT_STRINGS = [5, True, ["x"], b"x"]

CASES: list[tuple[object, dict[str, object], str, list[object]]] = [
    # (callable, other required arguments, the argument, bad values)
    *[(WattCallback, {}, p, NOT_BOOLS) for p in ("record", "summary", "per_device")],
    (WattCallback, {}, "progress_bar", NOT_BOOLS),
    (WattCallback, {}, "score_from", [["val_acc"], 5, True, ""]),
    (WattCallback, {}, "replay_speed", [*NOT_NUMBERS, *NOT_FINITE, 0, -1, 1e300]),
    (WattCallback, {}, "alpha", [*NOT_NUMBERS, *NOT_FINITE, 0, 1e308]),
    (WattCallback, {}, "beta", [*NOT_NUMBERS, *NOT_FINITE, 0, 1e308]),
    (WattCallback, {}, "pue", [True, "1", math.nan, 10**400, 0.5]),
    (WattCallback, {}, "currency", NOT_STRINGS),
    (WattCallback, {}, "replay", [5, True, b"x", [5]]),
    (WattCallback, {}, "log_every_n_steps", [True, 0, 1.5, "10"]),
    (EnergyMeter, {}, "record", [5, True, ["x"]]),
    (EnergyMeter, {}, "clock", [1.0, "monotonic", None]),
    (EnergyMeter, {}, "max_consecutive_errors", [True, 0, 2.0]),
    (RaplSource, {}, "root", [5, True, ["x"]]),
    (RaplSource, {}, "domains", [5, True, [5], ["gpu"]]),
    (RaplSource, {}, "host", [5, True, ["x"]]),
    (ReplaySource, {"trace": bundled_trace("h200-mlp-stall")}, "speed", [True, 0, 1e300]),
    (ReplaySource, {"trace": bundled_trace("h200-mlp-stall")}, "start", [True, "1", math.nan]),
    (ReplaySource, {"trace": bundled_trace("h200-mlp-stall")}, "loop", NOT_BOOLS),
    (ReplaySource, {"trace": bundled_trace("h200-mlp-stall")}, "name", NOT_STRINGS),
    (ReplaySource, {}, "trace", [5, True, ["x"]]),
    (EstimateSource, {}, "cpu_tdp_w", [True, math.nan, 0, 10**400]),
    (CarbonModel, {}, "pue", [True, math.nan, 10**400]),
    (CarbonModel, {}, "carbon_intensity", [True, math.nan, -1.0, 10**400]),
    (EnergyBudget, {}, "max_kwh", [True, math.nan, 0, -1, 10**400]),
    (GreenQuotientIndex, {}, "task", [5, "regression"]),
    (GreenQuotientIndex, {"task": "multiclass"}, "num_classes", [True, "3", 0, 2.5]),
    (GreenQuotientIndex, {"task": "multiclass", "num_classes": 3}, "top_k", [True, 0, 1.5]),
    (GreenQuotientIndex, {"task": "binary"}, "threshold", [True, math.nan, 2.0]),
    (GreenQuotientIndex, {"task": "binary"}, "validate_args", ["no", 1]),
    (GreenQuotientIndex, {"task": "binary"}, "alpha", [True, math.nan, 10**400, 1e308]),
    (green_quotient_index, {"energy_kwh": 2.0}, "accuracy", [True, None, "0.9", 10**400]),
    (green_quotient_index, {"accuracy": 0.9}, "energy_kwh", [True, None, "2", -1.0]),
]


@pytest.mark.parametrize(
    ("target", "given", "name", "bad"),
    [(t, g, n, b) for t, g, n, values in CASES for b in values],
    ids=lambda v: v.__name__ if callable(v) and hasattr(v, "__name__") else None,
)
def test_a_bad_argument_is_refused_by_name(target, given, name, bad):
    with pytest.raises((ValueError, TypeError)) as caught:
        target(**given, **{name: bad})
    assert name in str(caught.value)
