"""GreenQuotientIndex as a torchmetrics metric: state, collections, plots, Lightning, DDP."""

from __future__ import annotations

import doctest
import math
import warnings

import pytest
import torch
from torchmetrics import Accuracy, Metric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy

from lightning_watt.attribution.context import energy_provider
from lightning_watt.score import functional, metrics
from lightning_watt.score.functional import GreenQuotientWarning, green_quotient_index
from lightning_watt.score.metrics import GreenQuotientIndex

NUM_CLASSES = 4


def _data(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed predictions (class indices) and targets, about half of them right."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    wrong = torch.randint(1, NUM_CLASSES, (n,), generator=g)
    right = torch.rand(n, generator=g) < 0.5
    preds = torch.where(right, target, (target + wrong) % NUM_CLASSES)
    return preds, target


def _accuracy(preds: torch.Tensor, target: torch.Tensor) -> float:
    return (preds == target).double().mean().item()


def _gqi(**kwargs) -> GreenQuotientIndex:
    return GreenQuotientIndex(task="multiclass", num_classes=NUM_CLASSES, **kwargs)


@pytest.fixture(autouse=True)
def _fresh_warnings():
    functional._warned.clear()
    yield
    functional._warned.clear()


class FractionCorrect(Metric):
    """A custom accuracy-like metric with its own states (and full_state_update unset)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.correct = self.correct + (preds == target).sum()
        self.total = self.total + target.numel()

    def compute(self) -> torch.Tensor:
        return self.correct / self.total


class Percent(FractionCorrect):
    """The same, wrongly in percent."""

    def compute(self) -> torch.Tensor:
        return 100 * self.correct / self.total


# ------------------------------------------------------------------ update / compute / reset


def test_update_compute_reset() -> None:
    preds, target = _data()
    gqi = _gqi()
    for chunk in range(4):
        sl = slice(10 * chunk, 10 * (chunk + 1))
        gqi.update(preds[sl], target[sl], energy_kwh=0.1 * (chunk + 1))
    expected = green_quotient_index(_accuracy(preds, target), 0.4)
    assert gqi.compute().item() == pytest.approx(expected, rel=1e-5)
    assert isinstance(gqi.compute(), torch.Tensor) and gqi.compute().ndim == 0

    gqi.reset()
    assert gqi.update_count == 0
    assert gqi.energy_kwh.item() < 0  # back to "no energy passed"
    gqi.update(preds[:10], target[:10], energy_kwh=2.0)
    expected = green_quotient_index(_accuracy(preds[:10], target[:10]), 2.0)
    assert gqi.compute().item() == pytest.approx(expected, rel=1e-5)


def test_latest_energy_reading_wins_and_none_keeps_it() -> None:
    preds, target = _data()
    gqi = _gqi(energy_reduction="sum")
    gqi.update(preds[:20], target[:20], energy_kwh=0.1)
    gqi.update(preds[20:], target[20:], energy_kwh=torch.tensor(0.3))
    gqi.update(preds[20:], target[20:])  # no reading: keeps 0.3
    assert gqi.energy_kwh.item() == pytest.approx(0.3)


def test_parameters_are_used() -> None:
    preds, target = _data()
    gqi = _gqi(alpha=2.0, beta=3.0, form="paper")
    gqi.update(preds, target, energy_kwh=50.0)
    expected = green_quotient_index(_accuracy(preds, target), 50.0, 2.0, 3.0, "paper")
    assert gqi.compute().item() == pytest.approx(expected, rel=1e-5)
    gqi.reset()
    gqi.update(preds, target, energy_kwh=0.5)
    with pytest.raises(ValueError, match="form='paper' is undefined"):
        gqi.compute()


def test_forward_returns_batch_value_and_accumulates() -> None:
    preds, target = _data()
    gqi = _gqi(energy_reduction="sum")
    batch = gqi(preds[:20], target[:20], energy_kwh=0.1)
    assert batch.item() == pytest.approx(
        green_quotient_index(_accuracy(preds[:20], target[:20]), 0.1), rel=1e-5
    )
    batch = gqi(preds[20:], target[20:], energy_kwh=0.25)
    assert batch.item() == pytest.approx(
        green_quotient_index(_accuracy(preds[20:], target[20:]), 0.25), rel=1e-5
    )
    # Cumulative readings: the newer replaces the older, also with "sum" (which is across
    # processes only), so the total is 0.25, not 0.35.
    assert gqi.energy_kwh.item() == pytest.approx(0.25)
    assert gqi.compute().item() == pytest.approx(
        green_quotient_index(_accuracy(preds, target), 0.25), rel=1e-5
    )
    gqi(preds[:5], target[:5])  # no reading with the batch: the earlier one stays
    assert gqi.energy_kwh.item() == pytest.approx(0.25)


@pytest.mark.parametrize(("reduction", "total"), [("max", 0.3), ("sum", 0.5)])
def test_merge_state_uses_energy_reduction(reduction: str, total: float) -> None:
    preds, target = _data()
    a, b = _gqi(energy_reduction=reduction), _gqi(energy_reduction=reduction)
    a.update(preds[:15], target[:15], energy_kwh=0.2)
    b.update(preds[15:], target[15:], energy_kwh=0.3)
    a.merge_state(b)
    assert a.compute().item() == pytest.approx(
        green_quotient_index(_accuracy(preds, target), total), rel=1e-5
    )


def test_state_dict_round_trip() -> None:
    preds, target = _data()
    gqi = _gqi()
    gqi.persistent(True)
    gqi.update(preds, target, energy_kwh=0.7)
    state = gqi.state_dict()
    assert "energy_kwh" in state and "accuracy_tp" in state
    assert not any(k.startswith("accuracy.") for k in state)  # saved once, as our own states
    fresh = _gqi()
    fresh.persistent(True)
    fresh.load_state_dict(state)
    fresh._update_count = 1
    assert fresh.compute().item() == pytest.approx(gqi.compute().item())


# ------------------------------------------------------------------ energy sources


def test_energy_from_context_provider() -> None:
    preds, target = _data()
    gqi = _gqi()
    gqi.update(preds, target)
    with energy_provider(lambda: 0.05):
        value = gqi.compute()
    assert value.item() == pytest.approx(
        green_quotient_index(_accuracy(preds, target), 0.05), rel=1e-5
    )


def test_passed_energy_wins_over_context() -> None:
    preds, target = _data()
    gqi = _gqi()
    gqi.update(preds, target, energy_kwh=0.3)
    with energy_provider(lambda: 99.0):
        value = gqi.compute()
    assert value.item() == pytest.approx(
        green_quotient_index(_accuracy(preds, target), 0.3), rel=1e-5
    )


def test_error_without_energy() -> None:
    preds, target = _data()
    gqi = _gqi()
    gqi.update(preds, target)
    with pytest.raises(RuntimeError, match=r"pass energy_kwh= to update.*WattCallback"):
        gqi.compute()
    with pytest.raises(RuntimeError, match="every process must pass its share"):
        g2 = _gqi(energy_reduction="sum")
        g2.update(preds, target)
        g2.compute()


def test_bad_energy_reading_is_rejected_before_the_state_changes() -> None:
    preds, target = _data()
    gqi = _gqi()
    with pytest.raises(ValueError, match="energy_kwh must be >= 0"):
        gqi.update(preds, target, energy_kwh=-0.1)
    with pytest.raises(ValueError, match="single value"):
        gqi.update(preds, target, energy_kwh=torch.tensor([0.1, 0.2]))
    assert gqi.accuracy_tp.sum() == 0 and gqi.energy_kwh.item() < 0


def test_nan_energy_gives_nan_with_warning() -> None:
    preds, target = _data()
    gqi = _gqi()
    gqi.update(preds, target, energy_kwh=math.nan)
    with pytest.warns(GreenQuotientWarning, match="energy_kwh is NaN"):
        assert torch.isnan(gqi.compute())


def test_zero_energy_gives_inf_with_warning() -> None:
    preds, target = _data()
    gqi = _gqi()
    gqi.update(preds, target, energy_kwh=0.0)
    with pytest.warns(GreenQuotientWarning, match="energy_kwh is 0"):
        assert gqi.compute().item() == math.inf


# ------------------------------------------------------------------ wrapped metrics


def test_wrapped_custom_metric() -> None:
    preds, target = _data()
    gqi = GreenQuotientIndex(accuracy=FractionCorrect(), alpha=1.0)
    assert gqi.full_state_update is True  # the custom metric did not declare it
    assert type(gqi).full_state_update is False
    first = gqi(preds[:10], target[:10], energy_kwh=0.1)
    assert first.item() == pytest.approx(
        green_quotient_index(_accuracy(preds[:10], target[:10]), 0.1, alpha=1.0), rel=1e-5
    )
    gqi.update(preds[10:], target[10:], energy_kwh=0.2)
    assert gqi.compute().item() == pytest.approx(
        green_quotient_index(_accuracy(preds, target), 0.2, alpha=1.0), rel=1e-5
    )


def test_wrapped_binary_accuracy_and_per_class_values() -> None:
    gqi = GreenQuotientIndex(BinaryAccuracy())
    gqi.update(torch.tensor([0.9, 0.1, 0.8, 0.3]), torch.tensor([1, 0, 0, 0]), energy_kwh=1.0)
    assert gqi.compute().item() == pytest.approx(green_quotient_index(0.75, 1.0), rel=1e-5)

    per_class = _gqi(average="none")
    preds, target = _data()
    per_class.update(preds, target, energy_kwh=1.0)
    assert per_class.compute().shape == (NUM_CLASSES,)


def test_wrapped_metric_out_of_range_is_named() -> None:
    preds, target = _data()
    gqi = GreenQuotientIndex(accuracy=Percent())
    gqi.update(preds, target, energy_kwh=1.0)
    with pytest.raises(ValueError, match=r"wrapped metric Percent.*percentage"):
        gqi.compute()


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match="needs an accuracy"):
        GreenQuotientIndex()
    with pytest.raises(ValueError, match="needs an accuracy"):
        GreenQuotientIndex(num_classes=3)  # no task
    with pytest.raises(ValueError, match="not both"):
        GreenQuotientIndex(BinaryAccuracy(), task="binary")
    with pytest.raises(TypeError, match="torchmetrics Metric"):
        GreenQuotientIndex(accuracy=lambda p, t: 0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="torchmetrics Metric"):
        GreenQuotientIndex(accuracy=MetricCollection([BinaryAccuracy()]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keeps no state of its own"):
        GreenQuotientIndex(accuracy=BinaryAccuracy() * 1.0)
    with pytest.raises(ValueError, match=r"alpha must be a number in \(0, 100\]"):
        _gqi(alpha=0)
    with pytest.raises(ValueError, match=r"beta must be a number in \(0, 1e\+06\]"):
        _gqi(beta=-1)
    with pytest.raises(ValueError, match="form must be one of"):
        _gqi(form="log")
    with pytest.raises(ValueError, match=r"reference_kwh must be a finite number >= 2 kWh"):
        _gqi(reference_kwh=1.0)
    with pytest.raises(ValueError, match="reference_kwh applies only to form='scale_free'"):
        _gqi(form="paper", reference_kwh=100.0)
    with pytest.raises(ValueError, match=r"energy_reduction must be one of \('max', 'sum'\)"):
        _gqi(energy_reduction="mean")
    with pytest.raises(ValueError, match="Unexpected keyword"):
        _gqi(not_an_option=1)


def test_class_attributes_and_repr() -> None:
    gqi = _gqi(alpha=3)
    assert gqi.higher_is_better is True
    assert gqi.is_differentiable is False
    assert gqi.plot_lower_bound == 0.0
    text = repr(gqi)
    assert "GreenQuotientIndex(" in text
    assert "alpha=3, beta=10, form='scale_free', reference_kwh=100, energy_reduction='max'" in text
    assert "form='guarded', energy_reduction='max'" in repr(_gqi(form="guarded"))
    assert "MulticlassAccuracy" in text


# ------------------------------------------------------------------ collections and plots


def test_metric_collection_with_compute_groups() -> None:
    preds, target = _data()
    standalone = {
        "gqi5": _gqi(),
        "gqi1": _gqi(alpha=1.0),
        "gqi_top2": _gqi(top_k=2),
        "acc": Accuracy(task="multiclass", num_classes=NUM_CLASSES),
    }
    # Predictions as scores so that top-2 differs from top-1.
    scores = torch.nn.functional.one_hot(preds, NUM_CLASSES).float()
    scores += 0.1 * torch.nn.functional.one_hot((preds + 1) % NUM_CLASSES, NUM_CLASSES)
    collection = MetricCollection(
        {
            "gqi5": _gqi(),
            "gqi1": _gqi(alpha=1.0),
            "gqi_top2": _gqi(top_k=2),
            "acc": Accuracy(task="multiclass", num_classes=NUM_CLASSES),
        }
    )
    for chunk in range(4):
        sl = slice(10 * chunk, 10 * (chunk + 1))
        energy = 0.1 * (chunk + 1)
        collection.update(scores[sl], target[sl], energy_kwh=energy)
        for name, m in standalone.items():
            if name == "acc":
                m.update(scores[sl], target[sl])
            else:
                m.update(scores[sl], target[sl], energy_kwh=energy)
    # The two GQIs over one Accuracy share state; top-2 and plain Accuracy stand apart.
    groups = sorted(sorted(g) for g in collection.compute_groups.values())
    assert ["gqi1", "gqi5"] in groups
    result = collection.compute()
    for name, m in standalone.items():
        assert result[name].item() == pytest.approx(m.compute().item(), rel=1e-6), name
    assert result["gqi_top2"] > result["gqi5"]

    collection.reset()
    out = collection(scores[:10], target[:10], energy_kwh=1.0)
    assert out["gqi1"].item() == pytest.approx(
        green_quotient_index(_accuracy(preds[:10], target[:10]), 1.0, alpha=1.0), rel=1e-5
    )


def _pyplot():
    # Imported here, not at module level: the distributed workers import this module and
    # should not pay for matplotlib.
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def test_plot_returns_figure_and_axes() -> None:
    plt = _pyplot()

    preds, target = _data()
    gqi = _gqi()
    gqi.update(preds, target, energy_kwh=0.5)
    fig, ax = gqi.plot()
    assert isinstance(fig, plt.Figure) and isinstance(ax, plt.Axes)
    values = [gqi(preds[:10], target[:10], energy_kwh=e) for e in (0.1, 0.2, 0.3)]
    fig2, ax2 = gqi.plot(values)
    assert isinstance(fig2, plt.Figure) and isinstance(ax2, plt.Axes)
    plt.close("all")


def test_docstring_examples() -> None:
    plt = _pyplot()  # the plot() example draws a figure
    result = doctest.testmod(metrics, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
    plt.close("all")


# ------------------------------------------------------------------ Lightning


def test_logged_in_a_lightning_fit() -> None:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(6, NUM_CLASSES)
            self.val_acc = Accuracy(task="multiclass", num_classes=NUM_CLASSES)
            self.val_gqi = _gqi()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.layer(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            preds = self.layer(x).argmax(dim=-1)
            self.val_acc.update(preds, y)
            self.val_gqi.update(preds, y)
            self.log("val_acc", self.val_acc)
            self.log("val_gqi", self.val_gqi, prog_bar=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, generator=g)
    y = torch.randint(0, NUM_CLASSES, (32,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    pl.seed_everything(0, verbose=False)
    model = Classifier()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=2,
        num_sanity_val_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings(), energy_provider(lambda: 0.01):
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        trainer.fit(model, loader, loader)
    acc = trainer.callback_metrics["val_acc"].item()
    assert trainer.callback_metrics["val_gqi"].item() == pytest.approx(
        green_quotient_index(acc, 0.01), rel=1e-5
    )
    assert model.val_gqi.update_count == 0  # Lightning reset it after the epoch


def test_multiclass_accuracy_class_is_accepted() -> None:
    gqi = GreenQuotientIndex(MulticlassAccuracy(NUM_CLASSES, average="micro"))
    preds, target = _data()
    gqi.update(preds, target, energy_kwh=0.5)
    assert gqi.compute().item() == pytest.approx(
        green_quotient_index(_accuracy(preds, target), 0.5), rel=1e-5
    )
