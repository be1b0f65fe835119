"""The scale-free form of the Green Quotient Index, the default (issue 16).

Early stopping on the score must stop where a person would at every scale of run: on one
learning curve, the epoch where ``EarlyStopping(monitor="watt/gqi")`` stops must not depend on
whether the run uses 0.001 or 1000 kWh. The scale-free form promises exactly that: scaling every
energy by a constant scales every score by one constant.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_watt.score import functional
from lightning_watt.score.functional import (
    DEFAULT_REFERENCE_KWH,
    energy_exponent,
    green_quotient_index,
    resolve_reference_kwh,
    validate_score_params,
)
from lightning_watt.score.metrics import GreenQuotientIndex

SETTINGS = settings(derandomize=True, deadline=None, max_examples=150)

energies = st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False)
accuracies = st.floats(min_value=1e-6, max_value=1.0, allow_nan=False)
alphas = st.floats(min_value=0.1, max_value=10.0)
betas = st.floats(min_value=0.1, max_value=100.0)
references = st.floats(min_value=2.0, max_value=1e6)
factors = st.floats(min_value=1e-6, max_value=1e6)

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "score_stopping.py"


@pytest.fixture(autouse=True)
def _fresh_warnings():
    functional._warned.clear()
    yield
    functional._warned.clear()


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("score_stopping_bench", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sf(acc: float, kwh: float, alpha: float = 5.0, beta: float = 10.0, ref=None) -> float:
    return green_quotient_index(acc, kwh, alpha, beta, form="scale_free", reference_kwh=ref)


# ------------------------------------------------------------------ the formula


def test_is_the_default_everywhere() -> None:
    assert green_quotient_index(0.9, 3.0) == sf(0.9, 3.0)
    assert GreenQuotientIndex(task="binary").form == "scale_free"
    from lightning_watt.integration.callback import WattCallback

    watt = WattCallback(summary=False, record=False)
    assert (watt.form, watt.reference_kwh) == ("scale_free", DEFAULT_REFERENCE_KWH)
    assert WattCallback(form="guarded", record=False).reference_kwh is None


def test_formula_and_the_paper_at_the_reference() -> None:
    gamma = 1 / math.log(100.0)
    assert energy_exponent() == pytest.approx(gamma)
    assert sf(0.8, 3.0) == pytest.approx(10 * 0.8**5 / (2.0 * (3.0 / 100.0) ** gamma))
    # Same value and same slope (in log-log) as the paper's form at the reference energy.
    for ref in (10.0, 100.0, 5000.0):
        paper = green_quotient_index(0.9, ref, form="paper")
        assert sf(0.9, ref, ref=ref) == pytest.approx(paper, rel=1e-12)
        h = 1e-6
        slope = math.log(sf(0.9, ref * (1 + h), ref=ref) / sf(0.9, ref, ref=ref)) / math.log1p(h)
        paper_slope = math.log(
            green_quotient_index(0.9, ref * (1 + h), form="paper") / paper
        ) / math.log1p(h)
        assert slope == pytest.approx(paper_slope, rel=1e-4)
    # Close to the paper's over the energies it studies: at most 18 % lower from 10 to 1000 kWh.
    for kwh in (10.0, 30.0, 300.0, 1000.0):
        ratio = sf(0.9, kwh) / green_quotient_index(0.9, kwh, form="paper")
        assert 0.82 < ratio <= 1.0


def test_tensors_match_floats_and_zero_energy() -> None:
    acc = torch.tensor([0.0, 0.5, 0.9], dtype=torch.float64)
    kwh = torch.tensor([1e-9, 0.2, 2e3], dtype=torch.float64)
    expected = [sf(a, e) for a, e in zip(acc.tolist(), kwh.tolist(), strict=True)]
    assert green_quotient_index(acc, kwh).tolist() == pytest.approx(expected, rel=1e-12)
    small = green_quotient_index(torch.tensor(0.9), torch.tensor(1e-7))  # float32
    assert small.item() == pytest.approx(sf(0.9, 1e-7), rel=1e-5)
    with pytest.warns(functional.GreenQuotientWarning, match="energy_kwh is 0"):
        assert sf(0.5, 0.0) == math.inf
    assert sf(0.0, 0.0) == 0.0
    zeros = green_quotient_index(torch.tensor([0.0, 0.5]), torch.tensor(0.0))
    assert zeros.tolist() == [0.0, math.inf]


@pytest.mark.parametrize("value", [1.9, 1.0, 0.0, -3.0, math.nan, math.inf, "100", True])
def test_reference_kwh_is_validated_with_its_name(value) -> None:
    match = r"reference_kwh must be a finite number >= 2 kWh .* or None, got"
    with pytest.raises(ValueError, match=match):
        green_quotient_index(0.5, 2.0, reference_kwh=value)
    with pytest.raises(ValueError, match=match):
        GreenQuotientIndex(task="binary", reference_kwh=value)
    with pytest.raises(ValueError, match=match):
        validate_score_params(5.0, 10.0, "scale_free", reference_kwh=value)
    from lightning_watt.integration.callback import WattCallback

    with pytest.raises(ValueError, match=match):
        WattCallback(score_from="val_acc", reference_kwh=value)


@pytest.mark.parametrize("form", ["guarded", "paper"])
def test_reference_kwh_only_with_the_scale_free_form(form) -> None:
    with pytest.raises(ValueError, match="reference_kwh applies only to form='scale_free'"):
        green_quotient_index(0.5, 2.0, form=form, reference_kwh=100.0)
    assert resolve_reference_kwh(form) is None
    assert resolve_reference_kwh("scale_free", 50) == 50.0


# ------------------------------------------------------------------ properties


@SETTINGS
@given(a1=accuracies, a2=accuracies, energy=energies, alpha=alphas, beta=betas, ref=references)
def test_rises_with_accuracy(a1, a2, energy, alpha, beta, ref) -> None:
    lo, hi = sorted((a1, a2))
    s_lo, s_hi = sf(lo, energy, alpha, beta, ref), sf(hi, energy, alpha, beta, ref)
    assert s_lo <= s_hi
    if hi > lo * (1 + 1e-9):
        assert s_lo < s_hi


@SETTINGS
@given(acc=accuracies, e1=energies, e2=energies, alpha=alphas, beta=betas, ref=references)
def test_falls_with_energy(acc, e1, e2, alpha, beta, ref) -> None:
    lo, hi = sorted((e1, e2))
    s_lo, s_hi = sf(acc, lo, alpha, beta, ref), sf(acc, hi, alpha, beta, ref)
    assert s_lo >= s_hi
    if hi > lo * (1 + 1e-6):
        assert s_lo > s_hi


@SETTINGS
@given(acc=accuracies, energy=energies, alpha=alphas, beta=betas, ref=references)
def test_finite_and_positive_for_every_positive_energy(acc, energy, alpha, beta, ref) -> None:
    score = sf(acc, energy, alpha, beta, ref)
    assert math.isfinite(score) and score > 0
    tensor = green_quotient_index(
        torch.tensor(acc, dtype=torch.float64),
        torch.tensor(energy, dtype=torch.float64),
        alpha,
        beta,
        reference_kwh=ref,
    )
    assert torch.isfinite(tensor) and tensor > 0
    assert tensor.item() == pytest.approx(score, rel=1e-9)


@SETTINGS
@given(
    a1=accuracies, a2=accuracies, e1=energies, e2=energies, factor=factors, alpha=alphas,
    ref=references,
)  # fmt: skip
def test_scaling_every_energy_scales_every_score_by_one_constant(
    a1, a2, e1, e2, factor, alpha, ref
) -> None:
    # The whole promise: another unit or a run of another size changes no comparison.
    first = sf(a1, e1 * factor, alpha, ref=ref) / sf(a1, e1, alpha, ref=ref)
    second = sf(a2, e2 * factor, alpha, ref=ref) / sf(a2, e2, alpha, ref=ref)
    assert first == pytest.approx(second, rel=1e-9)
    assert first == pytest.approx(factor ** -energy_exponent(ref), rel=1e-9)


# ------------------------------------------------------------------ early stopping


def test_stopping_epoch_is_the_same_at_every_scale(bench) -> None:
    for curve in bench.CURVES:
        for seed in range(3):
            stops = {
                bench.simulate("scale_free", curve, run_kwh, 5.0, seed)[0]
                for run_kwh in (0.001, 0.1, 10.0, 1000.0, 1e6)
            }
            assert len(stops) == 1, (curve, stops)


def test_stops_near_the_plateau_and_before_accuracy_alone(bench) -> None:
    for curve in ("fast", "textbook", "slow", "noisy"):
        stop, reached, _ = bench.simulate("scale_free", curve, 0.001, 5.0)
        by_accuracy, _, _ = bench.simulate("accuracy", curve, 0.001, 5.0)
        # A person would not stop short of 99 % of the plateau (98 % with 0.5 % noise).
        assert reached > (0.98 if curve == "noisy" else 0.99), curve
        assert stop < by_accuracy, curve  # still an energy penalty
    # The textbook curve (0.5 -> 0.95, time constant 3): the paper's form at 100 kWh an
    # epoch stops within two epochs of where the scale-free form stops at any scale (it penalises
    # energy a little less as the run grows past 100 kWh); the guarded form stopped a 0.001 kWh
    # run at 95 % of the plateau.
    paper = bench.simulate("paper", "textbook", 100.0 * bench.EPOCHS, 5.0)
    scale_free = bench.simulate("scale_free", "textbook", 0.001, 5.0)
    assert abs(scale_free[0] - paper[0]) <= 2 and scale_free[1] > 0.99 and paper[1] > 0.99
    assert bench.simulate("guarded", "textbook", 0.001, 5.0)[1] < 0.96


def test_larger_alpha_stops_later(bench) -> None:
    stops = [bench.simulate("scale_free", "textbook", 1.0, alpha)[0] for alpha in (1, 2, 5, 10)]
    assert stops == sorted(stops) and stops[0] < stops[-1]


def test_benchmark_prints_its_table(bench, capsys) -> None:
    bench.main(["--seeds", "3", "--no-candidates"])
    out = capsys.readouterr().out
    assert "scale_free  textbook" in out and "undefined" in out  # the paper's form below 1 kWh


# ------------------------------------------------------------------ metric, functional, callback


@pytest.mark.parametrize(
    ("form", "reference"), [("scale_free", None), ("scale_free", 20.0), ("guarded", None)]
)
def test_metric_agrees_with_the_function(form, reference) -> None:
    gqi = GreenQuotientIndex(task="binary", form=form, reference_kwh=reference)
    preds, target = torch.tensor([1, 0, 1, 1, 0]), torch.tensor([1, 0, 0, 1, 0])
    gqi.update(preds, target, energy_kwh=0.037)
    expected = green_quotient_index(0.8, 0.037, form=form, reference_kwh=reference)
    assert gqi.compute().item() == pytest.approx(expected, rel=1e-6)


def test_callback_logs_the_default_score_of_each_validation(tmp_path, monkeypatch) -> None:
    """In a replayed fit, each logged ``watt/gqi`` is ``green_quotient_index(val_acc, kWh)`` with
    the default form, at the cumulative energy of that validation."""
    import csv

    import lightning.pytorch as pl
    from helpers import TinyClassifier, csv_trainer

    from lightning_watt.integration.callback import WattCallback

    calls: list[tuple[float, float, dict]] = []
    real = functional.green_quotient_index

    def spy(accuracy, energy_kwh, **kwargs):
        calls.append((accuracy, energy_kwh, kwargs))
        return real(accuracy, energy_kwh, **kwargs)

    monkeypatch.setattr(functional, "green_quotient_index", spy)
    readings: list[float] = []

    class Probe(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                readings.append(watt.energy_kwh)

    watt = WattCallback(replay="h200-mlp-stall", score_from="val_acc", record=False)
    pl.seed_everything(0, verbose=False)
    trainer = csv_trainer(tmp_path, [watt, Probe()], max_epochs=3)
    trainer.fit(TinyClassifier(step_sleep=0.005))
    with open(f"{trainer.log_dir}/metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    gqi = {int(r["epoch"]): float(r["watt/gqi"]) for r in rows if r.get("watt/gqi")}
    val_acc = {int(r["epoch"]): float(r["val_acc"]) for r in rows if r.get("val_acc")}
    assert sorted(gqi) == sorted(val_acc) == [0, 1, 2]
    assert len(calls) == len(readings) == 3
    previous = 0.0
    for epoch, (accuracy, kwh, kwargs), after in zip(range(3), calls, readings, strict=True):
        assert kwargs["form"] == "scale_free" and kwargs["reference_kwh"] == 100.0
        assert accuracy == pytest.approx(val_acc[epoch], abs=1e-7)
        # The energy of that validation: after the previous one, no later than just after it.
        assert previous < kwh <= after
        previous = after
        assert gqi[epoch] == pytest.approx(real(val_acc[epoch], kwh), rel=1e-5)
    score = watt.last_summary["score"]
    assert (score["form"], score["reference_kwh"]) == ("scale_free", 100.0)
    assert score["final"] == pytest.approx(gqi[2], rel=1e-6)
