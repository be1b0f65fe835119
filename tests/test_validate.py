"""The shared numeric checks: what they accept, what they refuse and how they say so."""

from __future__ import annotations

import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lightning_watt.validate import finite_number, integer, positive_int, positive_number

NOT_NUMBERS = [True, False, None, "1", "0.5", b"1", [1.0], {"x": 1}, object(), 1j]
NOT_FINITE = [math.nan, -math.nan, math.inf, -math.inf, np.float64("nan"), torch.tensor(math.inf)]


# ------------------------------------------------------------------ finite_number
@given(st.floats(allow_nan=False, allow_infinity=False) | st.integers())
def test_any_finite_number_passes_unbounded(value: float) -> None:
    assert finite_number("x", value) == float(value)
    assert isinstance(finite_number("x", value), float)


@pytest.mark.parametrize("value", NOT_NUMBERS + NOT_FINITE)
def test_non_numbers_bools_and_non_finite_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"^x must be a finite number, got "):
        finite_number("x", value)


@pytest.mark.parametrize("value", [np.float32(0.5), np.int64(3), Fraction(1, 4), torch.tensor(2)])
def test_numpy_fractions_and_scalar_tensors_are_numbers(value: object) -> None:
    assert finite_number("x", value) == float(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", [torch.tensor(True), torch.tensor([1.0, 2.0]), torch.tensor(1 + 1j), np.bool_(True)]
)
def test_bool_complex_and_multi_element_tensors_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="x must be"):
        finite_number("x", value)


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6))
def test_exclusive_minimum_is_greater_than(value: float) -> None:
    if value > 0:
        assert finite_number("alpha", value, minimum=0, exclusive_minimum=True) == value
    else:
        with pytest.raises(ValueError, match=r"^alpha must be a finite number > 0, got "):
            finite_number("alpha", value, minimum=0, exclusive_minimum=True)


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6))
def test_inclusive_minimum_is_at_least(value: float) -> None:
    if value >= 0:
        assert finite_number("kwh", value, minimum=0, unit="kWh") == value
    else:
        with pytest.raises(ValueError, match=r"^kwh must be a finite number >= 0 kWh, got "):
            finite_number("kwh", value, minimum=0, unit="kWh")


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-2, max_value=2))
def test_fraction_in_half_open_interval(value: float) -> None:
    """``in (0, 1]``: what a target accuracy accepts."""
    kwargs = {"minimum": 0.0, "maximum": 1.0, "exclusive_minimum": True}
    if 0 < value <= 1:
        assert finite_number("target", value, **kwargs) == value  # type: ignore[arg-type]
    else:
        with pytest.raises(ValueError, match=r"^target must be a number in \(0, 1\], got "):
            finite_number("target", value, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "ok", "bad"),
    [
        ({"minimum": 0, "maximum": 1, "exclusive_maximum": True}, 0.0, 1.0),
        ({"minimum": 0, "maximum": 1}, 1.0, 1.0 + 1e-12),
        ({"maximum": 5}, -1e300, 5.5),
        ({"maximum": 5, "exclusive_maximum": True}, 4.999, 5),
        ({"minimum": 1, "maximum": 3}, 1, 0.999),
    ],
)
def test_bounds(kwargs: dict[str, float], ok: float, bad: float) -> None:
    assert finite_number("x", ok, **kwargs) == ok  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^x must be a "):
        finite_number("x", bad, **kwargs)  # type: ignore[arg-type]


def test_message_names_parameter_accepted_values_and_what_was_given() -> None:
    with pytest.raises(ValueError) as info:
        finite_number("pue", 3.5, minimum=1, maximum=3, unit="(facility energy / IT energy)")
    assert str(info.value) == (
        "pue must be a number in [1, 3] (facility energy / IT energy), got 3.5"
    )
    with pytest.raises(ValueError) as info:
        finite_number("max_kwh", "1", minimum=0, exclusive_minimum=True, allow_none=True)
    assert str(info.value) == "max_kwh must be a finite number > 0 or None, got '1' (str)"
    with pytest.raises(ValueError) as info:
        finite_number("speed", True, minimum=0, exclusive_minimum=True)
    assert str(info.value) == "speed must be a finite number > 0, got True (bool)"


def test_none_only_where_allowed() -> None:
    assert finite_number("x", None, allow_none=True) is None
    with pytest.raises(ValueError, match="x must be a finite number, got None"):
        finite_number("x", None)


@given(st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**6), 10**6))
def test_positive_number_is_finite_number_above_zero(value: float) -> None:
    if value > 0:
        assert positive_number("s", value, unit="seconds") == float(value)
    else:
        with pytest.raises(ValueError, match=r"^s must be a finite number > 0 seconds, got "):
            positive_number("s", value, unit="seconds")


@pytest.mark.parametrize(
    ("kwargs", "accepted"),
    [
        ({}, "a finite number"),
        ({"minimum": 0, "maximum": 60, "exclusive_maximum": True}, "a number in [0, 60)"),
        ({"maximum": 2}, "a finite number <= 2"),
        ({"maximum": 2, "exclusive_maximum": True}, "a finite number < 2"),
        ({"minimum": 0.5, "maximum": 5000}, "a number in [0.5, 5000]"),
    ],
)
def test_accepted_values_in_words(kwargs: dict[str, float], accepted: str) -> None:
    with pytest.raises(ValueError) as info:
        finite_number("x", "?", **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == f"x must be {accepted}, got '?' (str)"


# ------------------------------------------------------------------ integers
@given(st.integers(min_value=1))
def test_positive_int_accepts_every_int_from_one(value: int) -> None:
    assert positive_int("n", value) == value


@given(st.integers(max_value=0))
def test_positive_int_refuses_zero_and_negatives(value: int) -> None:
    with pytest.raises(ValueError, match=r"^n must be a positive integer \(an int >= 1\), got "):
        positive_int("n", value)


@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, "3", None, math.nan, torch.tensor(2.0)])
def test_positive_int_refuses_bools_floats_and_strings(value: object) -> None:
    with pytest.raises(ValueError, match="n must be a positive integer"):
        positive_int("n", value)


def test_positive_int_accepts_numpy_and_tensor_integers_and_none_where_allowed() -> None:
    assert positive_int("n", np.int32(4)) == 4
    assert positive_int("n", torch.tensor(7)) == 7
    assert positive_int("n", None, allow_none=True) is None
    with pytest.raises(ValueError, match=r"n must be a positive integer \(an int >= 1\) or None"):
        positive_int("n", 0, allow_none=True)


@given(st.integers(min_value=-100, max_value=100))
def test_integer_minimum(value: int) -> None:
    if value >= 16:
        assert integer("max_knots", value, minimum=16) == value
    else:
        with pytest.raises(ValueError, match=r"^max_knots must be an integer >= 16, got "):
            integer("max_knots", value, minimum=16)


def test_importing_the_checks_does_not_import_torch() -> None:
    """``import lightning_watt`` (the report command) stays free of torch."""
    code = "import sys, lightning_watt; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
