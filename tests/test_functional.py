"""Properties and edge cases of lightning_watt.score.functional (the Green Quotient Index)."""

from __future__ import annotations

import doctest
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_watt.score import functional
from lightning_watt.score.functional import (
    GreenQuotientWarning,
    accuracy_per_kwh,
    green_quotient_index,
)

# Derandomised so that every run draws the same examples: the suite must be deterministic.
SETTINGS = settings(derandomize=True, deadline=None, max_examples=150)

# The range where float64 keeps the score finite and positive: below ~1e-300 kWh the division
# overflows and accuracy**5 underflows below ~1e-62, which no real run reaches (1e-12 kWh is
# 3.6 mJ, a few microseconds of one GPU).
energies = st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False)
accuracies = st.floats(min_value=1e-6, max_value=1.0, allow_nan=False)
alphas = st.floats(min_value=0.1, max_value=10.0)
betas = st.floats(min_value=0.1, max_value=100.0)


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """Each test sees the one-time warnings as if for the first time."""
    functional._warned.clear()
    yield
    functional._warned.clear()


# ------------------------------------------------------------------ values


def test_known_values() -> None:
    assert green_quotient_index(0.9, 0.5, form="guarded") == pytest.approx(
        10 * 0.9**5 / math.log10(1.5)
    )
    # The default, scale-free form: the paper's value at 100 kWh, a power law of energy around it.
    assert green_quotient_index(0.9, 100.0) == pytest.approx(10 * 0.9**5 / 2.0)
    assert green_quotient_index(0.9, 0.5) == pytest.approx(
        10 * 0.9**5 / (2.0 * (0.5 / 100.0) ** (1 / math.log(100.0)))
    )
    assert green_quotient_index(0.9, 500.0, form="paper") == pytest.approx(
        10 * 0.9**5 / math.log10(500.0)
    )
    assert green_quotient_index(0.5, 9.0, alpha=1, beta=2, form="guarded") == pytest.approx(1.0)
    assert accuracy_per_kwh(0.9, 0.5) == pytest.approx(1.8)


def test_float_inputs_give_float_and_tensor_inputs_give_tensor() -> None:
    assert type(green_quotient_index(0.9, 2.0)) is float
    assert type(green_quotient_index(1, 2)) is float  # ints are numbers too
    assert type(accuracy_per_kwh(0.9, 2.0)) is float
    assert isinstance(green_quotient_index(torch.tensor(0.9), 2.0), torch.Tensor)
    assert isinstance(green_quotient_index(0.9, torch.tensor(2.0)), torch.Tensor)
    assert isinstance(accuracy_per_kwh(0.9, torch.tensor(2.0)), torch.Tensor)


def test_tensor_matches_float_and_keeps_dtype() -> None:
    acc = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    out = green_quotient_index(acc, 3.0)
    assert out.dtype == torch.float64
    expected = [green_quotient_index(a, 3.0) for a in acc.tolist()]
    assert out.tolist() == pytest.approx(expected, rel=1e-12)
    # Integer tensors are promoted to the default float dtype.
    assert green_quotient_index(torch.tensor(1), torch.tensor(9)).dtype == torch.float32


def test_small_energy_precision_in_float32() -> None:
    # 1e-6 kWh: log10(1 + E) computed naively in float32 would be off by ~5 %.
    score = green_quotient_index(torch.tensor(1.0), torch.tensor(1e-6))
    assert score.item() == pytest.approx(green_quotient_index(1.0, 1e-6), rel=1e-5)


# ------------------------------------------------------------------ properties


@SETTINGS
@given(a1=accuracies, a2=accuracies, energy=energies, alpha=alphas, beta=betas)
def test_rises_with_accuracy(a1: float, a2: float, energy: float, alpha: float, beta: float):
    lo, hi = sorted((a1, a2))
    s_lo = green_quotient_index(lo, energy, alpha, beta)
    s_hi = green_quotient_index(hi, energy, alpha, beta)
    assert s_lo <= s_hi
    if hi > lo * (1 + 1e-9):
        assert s_lo < s_hi


@SETTINGS
@given(acc=accuracies, e1=energies, e2=energies, alpha=alphas, beta=betas)
def test_falls_with_energy(acc: float, e1: float, e2: float, alpha: float, beta: float):
    lo, hi = sorted((e1, e2))
    s_lo = green_quotient_index(acc, lo, alpha, beta)
    s_hi = green_quotient_index(acc, hi, alpha, beta)
    assert s_lo >= s_hi
    if hi > lo * (1 + 1e-9):
        assert s_lo > s_hi


@SETTINGS
@given(acc=accuracies, energy=st.floats(min_value=40.0, max_value=1e15), alpha=alphas, beta=betas)
def test_guarded_equals_paper_within_one_percent_from_40_kwh(
    acc: float, energy: float, alpha: float, beta: float
):
    guarded = green_quotient_index(acc, energy, alpha, beta, form="guarded")
    paper = green_quotient_index(acc, energy, alpha, beta, form="paper")
    assert abs(guarded - paper) <= 0.01 * paper


def test_guarded_and_paper_part_by_more_than_one_percent_below_about_29_kwh() -> None:
    # The documented "about 40 kWh" is conservative; the exact crossover is ~29.15 kWh.
    def guarded(energy: float) -> float:
        return green_quotient_index(1.0, energy, form="guarded")

    assert green_quotient_index(1.0, 29.0, form="paper") / guarded(29.0) > 1.01
    assert green_quotient_index(1.0, 29.5, form="paper") / guarded(29.5) < 1.01


@SETTINGS
@given(acc=accuracies, energy=energies, alpha=alphas, beta=betas)
def test_guarded_finite_and_positive_for_every_positive_energy(
    acc: float, energy: float, alpha: float, beta: float
):
    score = green_quotient_index(acc, energy, alpha, beta, form="guarded")
    assert math.isfinite(score)
    assert score > 0
    tensor_score = green_quotient_index(
        torch.tensor(acc, dtype=torch.float64),
        torch.tensor(energy, dtype=torch.float64),
        form="guarded",
    )
    assert torch.isfinite(tensor_score) and tensor_score > 0


@SETTINGS
@given(acc=accuracies, energy=st.floats(min_value=1e-9, max_value=1e-4), alpha=alphas)
def test_small_energy_limit_is_accuracy_per_kwh(acc: float, energy: float, alpha: float):
    # log10(1 + E) ≈ E / ln 10, so GQI ≈ beta * ln 10 * acc**alpha / E for E << 1.
    expected = 10 * math.log(10) * acc**alpha / energy
    assert green_quotient_index(acc, energy, alpha, form="guarded") == pytest.approx(
        expected, rel=1e-3
    )
    assert green_quotient_index(acc, energy, alpha=1.0, form="guarded") == pytest.approx(
        10 * math.log(10) * accuracy_per_kwh(acc, energy), rel=1e-3
    )


@SETTINGS
@given(
    accs=st.lists(accuracies, min_size=1, max_size=4),
    es=st.lists(energies, min_size=1, max_size=3),
)
def test_broadcasting_on_tensors(accs: list[float], es: list[float]):
    acc = torch.tensor(accs, dtype=torch.float64).reshape(-1, 1)
    energy = torch.tensor(es, dtype=torch.float64).reshape(1, -1)
    out = green_quotient_index(acc, energy)
    assert out.shape == (len(accs), len(es))
    for i, a in enumerate(accs):
        for j, e in enumerate(es):
            assert out[i, j].item() == pytest.approx(green_quotient_index(a, e), rel=1e-12)
    ratio = accuracy_per_kwh(acc, energy)
    assert ratio.shape == (len(accs), len(es))


def test_scalar_energy_broadcasts_over_accuracy_vector() -> None:
    out = green_quotient_index(torch.tensor([0.0, 0.5, 1.0]), 2.0)
    assert out.shape == (3,)
    assert out[0] == 0


# ------------------------------------------------------------------ zero and NaN


def test_zero_energy_is_inf_with_one_time_warning() -> None:
    with pytest.warns(GreenQuotientWarning, match="energy_kwh is 0"):
        assert green_quotient_index(0.8, 0.0) == math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # shown once: a second call must be silent
        assert green_quotient_index(0.8, 0) == math.inf
        assert green_quotient_index(0.0, 0.0) == 0.0  # zero accuracy scores 0 at any energy
        out = green_quotient_index(torch.tensor([0.0, 0.8]), torch.tensor(0.0))
        assert out.tolist() == [0.0, math.inf]
        assert accuracy_per_kwh(0.5, 0.0) == math.inf
        assert accuracy_per_kwh(0.0, 0.0) == 0.0
        assert accuracy_per_kwh(torch.tensor([0.0, 0.5]), 0.0).tolist() == [0.0, math.inf]


def test_infinite_energy_scores_zero() -> None:
    assert green_quotient_index(0.9, math.inf) == 0.0
    assert green_quotient_index(0.9, math.inf, form="paper") == 0.0


def test_nan_accuracy_gives_nan_and_warns_once() -> None:
    with pytest.warns(GreenQuotientWarning, match="accuracy is NaN"):
        assert math.isnan(green_quotient_index(math.nan, 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = green_quotient_index(torch.tensor([math.nan, 0.5]), 2.0)
        assert math.isnan(out[0].item()) and math.isfinite(out[1].item())
        assert math.isnan(green_quotient_index(math.nan, 50.0, form="paper"))


def test_nan_energy_gives_nan_and_warns_once() -> None:
    with pytest.warns(GreenQuotientWarning, match="energy_kwh is NaN"):
        assert math.isnan(green_quotient_index(0.5, math.nan))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isnan(green_quotient_index(torch.tensor(0.5), torch.tensor(math.nan)))


# ------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("acc", [50.0, 1.5, 100.0, torch.tensor([0.5, 87.0])])
def test_percentage_accuracy_is_named(acc) -> None:
    with pytest.raises(ValueError, match="looks like a percentage; divide it by 100"):
        green_quotient_index(acc, 2.0)
    with pytest.raises(ValueError, match="percentage"):
        accuracy_per_kwh(acc, 2.0)


@pytest.mark.parametrize("acc", [-0.1, 100.5, math.inf, -math.inf, torch.tensor([0.5, -1.0])])
def test_accuracy_out_of_range(acc) -> None:
    with pytest.raises(ValueError, match=r"accuracy must be a fraction in \[0, 1\]") as info:
        green_quotient_index(acc, 2.0)
    assert "percentage" not in str(info.value)


@pytest.mark.parametrize("energy", [-1e-9, -5.0, torch.tensor([1.0, -2.0])])
def test_negative_energy(energy) -> None:
    with pytest.raises(ValueError, match="energy_kwh must be >= 0"):
        green_quotient_index(0.5, energy)
    with pytest.raises(ValueError, match="energy_kwh must be >= 0"):
        accuracy_per_kwh(0.5, energy)


@pytest.mark.parametrize("energy", [1.0, 0.5, 0.0, torch.tensor([5.0, 0.9])])
def test_paper_form_undefined_at_or_below_one_kwh(energy) -> None:
    with pytest.raises(ValueError, match="form='paper' is undefined") as info:
        green_quotient_index(0.5, energy, form="paper")
    assert "form='guarded'" in str(info.value)


@pytest.mark.parametrize("name", ["alpha", "beta"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, "five", None, 1e300])
def test_bad_alpha_beta(name: str, value) -> None:
    upper = {"alpha": r"100", "beta": r"1e\+06"}[name]
    with pytest.raises(ValueError, match=rf"{name} must be a number in \(0, {upper}\]"):
        green_quotient_index(0.5, 2.0, **{name: value})


@pytest.mark.parametrize("form", ["Paper", "log", "", None])
def test_unknown_form(form) -> None:
    with pytest.raises(
        ValueError, match=r"form must be one of \('scale_free', 'guarded', 'paper'\)"
    ):
        green_quotient_index(0.5, 2.0, form=form)


def test_shapes_that_do_not_broadcast() -> None:
    with pytest.raises(ValueError, match="cannot be broadcast"):
        green_quotient_index(torch.ones(3), torch.ones(2))


def test_bad_parameters_raise_even_with_nan_accuracy() -> None:
    with pytest.raises(ValueError, match="energy_kwh must be >= 0"):
        green_quotient_index(math.nan, -1.0)


def test_docstring_examples() -> None:
    result = doctest.testmod(functional, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
