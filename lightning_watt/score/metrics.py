"""A torchmetrics metric for the Green Quotient Index of the model being trained.

:class:`GreenQuotientIndex` accumulates an accuracy (a torchmetrics ``Accuracy`` it builds, or
any metric whose value lies in [0, 1]) and scores it against the training energy with
:func:`~lightning_watt.score.functional.green_quotient_index`. Inside a fit with
:class:`~lightning_watt.integration.callback.WattCallback` the energy comes from the run itself
(:func:`~lightning_watt.attribution.context.current_energy_kwh`); elsewhere pass ``energy_kwh`` to
``update``.

Example:
    >>> import torch
    >>> from lightning_watt.score.metrics import GreenQuotientIndex
    >>> gqi = GreenQuotientIndex(task="multiclass", num_classes=3)
    >>> gqi.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 1]), energy_kwh=0.5)
    >>> gqi.compute()  # scale-free: 10 * 0.75**5 / (log10(100) * (0.5 / 100)**(1 / ln 100))
    tensor(3.7492)
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Accuracy, Metric

from lightning_watt import _compat as private
from lightning_watt.attribution.context import current_energy_kwh
from lightning_watt.score.functional import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    GQIForm,
    _check_params,
    green_quotient_index,
    resolve_reference_kwh,
)
from lightning_watt.validate import boolean, finite_number, integer, positive_int

__all__ = ["ENERGY_REDUCTIONS", "GreenQuotientIndex"]

EnergyReduction = Literal["max", "sum"]
ENERGY_REDUCTIONS: tuple[str, ...] = ("max", "sum")
"""Accepted values of ``energy_reduction``."""

# "No energy passed on this process yet". Any negative value works: real readings are >= 0, and
# it loses every max and poisons every sum (see the reductions below), unlike NaN, which is kept
# for a genuinely invalid reading and must propagate into a NaN score.
_MISSING = -1.0


def _max_reading(readings: Tensor) -> Tensor:
    """Cross-process reduction for ``energy_reduction="max"``: any process's run total."""
    return readings.amax(dim=0)


def _sum_readings(readings: Tensor) -> Tensor:
    """Cross-process reduction for ``energy_reduction="sum"``: the shares added up.

    A process without a share makes the sum unknown (a partial sum would look plausible and be
    wrong), so the result is then "missing" and ``compute`` falls back to the run's energy.
    """
    missing = (readings < 0).any(dim=0)
    return torch.where(missing, torch.full_like(readings[0], _MISSING), readings.sum(dim=0))


_REDUCERS: dict[str, Callable[[Tensor], Tensor]] = {"max": _max_reading, "sum": _sum_readings}


_TASKS = ("binary", "multiclass", "multilabel")


def _check_accuracy_options(options: dict[str, Any]) -> None:
    """Refuse bad Accuracy options here, by name, rather than deep inside torchmetrics."""
    if "task" in options and options["task"] not in _TASKS:
        raise ValueError(f"task must be one of {_TASKS}, got {options['task']!r}")
    for name in ("num_classes", "num_labels", "top_k"):
        if name in options:
            positive_int(name, options[name])
    if "ignore_index" in options:
        integer("ignore_index", options["ignore_index"], minimum=-(2**63))
    if "threshold" in options:
        finite_number("threshold", options["threshold"], minimum=0.0, maximum=1.0)
    if "validate_args" in options:
        boolean("validate_args", options["validate_args"])


class GreenQuotientIndex(Metric):
    """Green Quotient Index (higher is better) of an accuracy metric and the training energy.

    ``compute()`` returns ``beta * accuracy**alpha / (log10(R) * (E / R)**(1 / ln R))``
    (``form="scale_free"``, the default, ``R = reference_kwh``, 100 kWh unless given),
    ``beta * accuracy**alpha / log10(1 + E)`` (``form="guarded"``) or
    ``beta * accuracy**alpha / log10(E)`` (``form="paper"``, defined only for ``E > 1`` kWh),
    where ``accuracy`` is the wrapped metric's value over every ``update`` since the last
    ``reset`` and ``E`` the training energy in kWh; see
    :func:`~lightning_watt.score.functional.green_quotient_index`.

    **Accuracy.** By default a torchmetrics ``Accuracy`` built from ``task``, ``num_classes``,
    ``num_labels``, ``top_k``, ``threshold``, ``average``, ``multidim_average``,
    ``ignore_index`` and ``validate_args``. Or pass ``accuracy=`` any metric whose value lies in
    [0, 1] and whose ``update`` takes ``(preds, target)``; it must keep its own state (not a
    wrapper or collection of other metrics), and its current state is discarded. The wrapped
    metric's states are mirrored as this metric's states (``accuracy_<name>``), so
    synchronisation across processes, ``forward``, ``merge_state``, ``state_dict`` and
    ``MetricCollection`` compute groups all work on the whole state.

    **Energy.** ``update(preds, target, energy_kwh=E)`` records a *cumulative* reading: the
    latest one on a process is its value. Without any, ``compute`` asks
    :func:`~lightning_watt.attribution.context.current_energy_kwh` (the run total that
    ``WattCallback``
    provides, the same on every process), and raises :class:`RuntimeError` if there is none.
    Across processes the readings combine by ``energy_reduction``:

    * ``"max"`` (default): every process passes the same run total (what ``WattCallback``
      provides), or only some do; the largest is the total.
    * ``"sum"``: each process passes its own share; the total is their sum. If a process passed
      none, the sum is unknown and the run's energy from the context is used (or the error).

    Args:
        accuracy: a metric with values in [0, 1]; ``None`` to build a torchmetrics ``Accuracy``.
        task: ``"binary"``, ``"multiclass"`` or ``"multilabel"`` for the built ``Accuracy``.
        threshold: see torchmetrics ``Accuracy``.
        num_classes: see torchmetrics ``Accuracy``.
        num_labels: see torchmetrics ``Accuracy``.
        average: see torchmetrics ``Accuracy``.
        multidim_average: see torchmetrics ``Accuracy``.
        top_k: see torchmetrics ``Accuracy``.
        ignore_index: see torchmetrics ``Accuracy``.
        validate_args: see torchmetrics ``Accuracy``.
        alpha: exponent on accuracy, finite and ``> 0`` (default 5, the paper's).
        beta: scale factor, finite and ``> 0`` (default 10, the paper's).
        form: ``"scale_free"`` (default), ``"guarded"`` or ``"paper"``.
        reference_kwh: the scale-free form's reference energy in kWh, finite and ``>= 2``;
            ``None`` (default): 100 kWh. Only for ``form="scale_free"``.
        energy_reduction: ``"max"`` or ``"sum"``, see above.
        kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``, ...).

    Raises:
        ValueError: on a bad ``alpha``, ``beta``, ``form``, ``reference_kwh`` or
            ``energy_reduction``, on neither or
            both of ``accuracy`` and the ``Accuracy`` options, or on a wrapped metric without
            state of its own.
        TypeError: if ``accuracy`` is not a torchmetrics ``Metric``.

    Example:
        >>> import torch
        >>> from torchmetrics.classification import BinaryAccuracy
        >>> from lightning_watt.attribution.context import energy_provider
        >>> gqi = GreenQuotientIndex(BinaryAccuracy(), alpha=1.0, form="guarded")
        >>> gqi.update(torch.tensor([0.9, 0.2, 0.7, 0.4]), torch.tensor([1, 0, 0, 0]))
        >>> with energy_provider(lambda: 0.2):  # what WattCallback does during a fit
        ...     gqi.compute()  # 10 * 0.75 / log10(1.2)
        tensor(94.7194)
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False
    plot_lower_bound = 0.0

    energy_kwh: Tensor

    def __init__(
        self,
        accuracy: Metric | None = None,
        *,
        task: Literal["binary", "multiclass", "multilabel"] | None = None,
        threshold: float | None = None,
        num_classes: int | None = None,
        num_labels: int | None = None,
        average: Literal["micro", "macro", "weighted", "none"] | None = None,
        multidim_average: Literal["global", "samplewise"] | None = None,
        top_k: int | None = None,
        ignore_index: int | None = None,
        validate_args: bool | None = None,
        alpha: float = DEFAULT_ALPHA,
        beta: float = DEFAULT_BETA,
        form: GQIForm = "scale_free",
        reference_kwh: float | None = None,
        energy_reduction: EnergyReduction = "max",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.alpha, self.beta, _ = _check_params(alpha, beta, form, reference_kwh)
        self.form: GQIForm = form
        self.reference_kwh = resolve_reference_kwh(form, reference_kwh)
        if energy_reduction not in ENERGY_REDUCTIONS:
            raise ValueError(
                f"energy_reduction must be one of {ENERGY_REDUCTIONS!r} ('max': every process "
                "passes the same run total, as WattCallback provides; 'sum': each process passes "
                f"its own share), got {energy_reduction!r}."
            )
        self.energy_reduction: EnergyReduction = energy_reduction

        # Heterogeneous keyword arguments for Accuracy: each value's type is its parameter's.
        options: dict[str, Any] = {
            "task": task,
            "threshold": threshold,
            "num_classes": num_classes,
            "num_labels": num_labels,
            "average": average,
            "multidim_average": multidim_average,
            "top_k": top_k,
            "ignore_index": ignore_index,
            "validate_args": validate_args,
        }
        options = {k: v for k, v in options.items() if v is not None}
        _check_accuracy_options(options)
        if accuracy is None:
            if "task" not in options:
                raise ValueError(
                    "GreenQuotientIndex needs an accuracy: pass task= ('binary', 'multiclass' or "
                    "'multilabel', with num_classes= or num_labels=) to build a torchmetrics "
                    "Accuracy, or accuracy= a Metric whose value lies in [0, 1]."
                )
            accuracy = Accuracy(**options)
        elif options:
            raise ValueError(
                f"Pass either accuracy= or the Accuracy options {sorted(options)}, not both."
            )
        _check_wrapped(accuracy)

        self.accuracy = accuracy
        # The wrapped metric's states become ours, so that everything torchmetrics does with
        # states (distributed sync, forward's batch/global split, merge_state, compute groups in
        # a MetricCollection, checkpoints) covers them. A child metric keeping its own state
        # would be invisible to all of that: in a collection, for example, two GQIs sharing a
        # compute group would leave the second one's accuracy frozen after the first batch.
        self._mirrored: dict[str, str] = {}
        for name, spec in private.state_specs(accuracy).items():
            own = f"accuracy_{name}"
            self.add_state(
                own,
                deepcopy(spec.default),
                dist_reduce_fx=spec.reduction,
                persistent=spec.persistent,
            )
            self._mirrored[own] = name
        accuracy.persistent(False)  # saved once, as our states
        # We sync the mirrored states before handing them over.
        private.disable_compute_sync(accuracy)
        if accuracy.full_state_update is not False:
            # A metric that reads its whole state in update() needs forward's two-pass path.
            object.__setattr__(self, "full_state_update", True)

        self.add_state(
            "energy_kwh",
            torch.tensor(_MISSING),
            dist_reduce_fx=_REDUCERS[energy_reduction],
            persistent=False,
        )
        # During forward(): the reading held before it, and the one passed with the batch.
        self._forward_earlier_energy: Tensor | None = None
        self._forward_reading: Tensor | None = None

    def update(
        self, preds: Tensor, target: Tensor, energy_kwh: float | Tensor | None = None
    ) -> None:
        """Add a batch to the accuracy; optionally record the run's cumulative energy so far.

        Args:
            preds: predictions, as the wrapped metric's ``update`` takes them.
            target: targets, as the wrapped metric's ``update`` takes them.
            energy_kwh: cumulative energy in kWh (``>= 0``; one value) of the run
                (``energy_reduction="max"``) or of this process (``"sum"``); the latest reading
                wins. ``None`` leaves the energy as it is (or to the context at compute time).
        """
        # Validate before touching the accuracy, so a bad reading leaves the state unchanged.
        reading = None if energy_kwh is None else self._reading(energy_kwh)
        self._share_states()
        self.accuracy.update(preds, target)
        for own, name in self._mirrored.items():
            # update() may rebind a state (``self.tp = self.tp + x``) rather than change it.
            setattr(self, own, getattr(self.accuracy, name))
        if reading is not None:
            self.energy_kwh = reading
            if self._forward_earlier_energy is not None:  # inside forward()
                self._forward_reading = reading

    def compute(self) -> Tensor:
        """The Green Quotient Index of the accuracy so far and the energy (see the class doc).

        Raises:
            RuntimeError: no energy was passed and no ``WattCallback`` (or
                :func:`~lightning_watt.attribution.context.energy_provider`) is active.
            ValueError: the wrapped metric's value lies outside [0, 1], or ``form="paper"`` with
                an energy of 1 kWh or less.
        """
        accuracy = self._accuracy_value()
        energy = self._energy_value()
        try:
            return green_quotient_index(
                accuracy,
                energy,
                self.alpha,
                self.beta,
                self.form,
                None if self.form != "scale_free" else self.reference_kwh,
            )
        except ValueError as err:
            if str(err).startswith("accuracy"):
                raise ValueError(
                    f"The wrapped metric {type(self.accuracy).__name__} returned a value "
                    f"GreenQuotientIndex cannot score: {err}"
                ) from err
            raise

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Update with a batch and return the index of that batch alone (torchmetrics' forward).

        The batch's score uses the energy passed with it, or else the one passed before, or else
        the run's energy from the context.
        """
        # torchmetrics computes the batch value on a reset state; keep the reading seen so far
        # so that a batch passed without one is still scored against it.
        earlier = self._forward_earlier_energy = self.energy_kwh
        self._forward_reading = None
        try:
            value = super().forward(*args, **kwargs)
            # forward() merged the earlier state with the batch's as if they came from two
            # processes. Readings are cumulative, so the batch's reading replaces the earlier
            # one instead of being reduced with it: a "sum" would count this process's energy
            # twice.
            batch = self._forward_reading
            self.energy_kwh = earlier if batch is None else batch
            return value
        finally:
            self._forward_earlier_energy = None
            self._forward_reading = None

    def reset(self) -> None:
        """Reset the accumulated accuracy and energy (the wrapped metric too)."""
        super().reset()
        self.accuracy.reset()

    def plot(
        self, val: Tensor | list[Tensor] | None = None, ax: private.PlotAxes | None = None
    ) -> private.PlotOutput:
        """Plot one value or a sequence of values of the metric (needs matplotlib).

        Args:
            val: a result of ``compute``/``forward``, or a list of them (e.g. one per epoch);
                ``None`` plots ``compute()``.
            ax: a matplotlib axis to draw into; a new figure otherwise.

        Returns:
            The figure and the axis.

        Example:
            >>> import torch
            >>> gqi = GreenQuotientIndex(task="binary")
            >>> values = [gqi(torch.tensor([1, 0, 1]), torch.tensor([1, 0, 0]), energy_kwh=e)
            ...           for e in (0.1, 0.2, 0.3)]
            >>> fig, ax = gqi.plot(values)
        """
        return private.plot_values(self, val, ax)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha:g}, beta={self.beta:g}, form={self.form!r}, "
            + (f"reference_kwh={self.reference_kwh:g}, " if self.reference_kwh is not None else "")
            + f"energy_reduction={self.energy_reduction!r}"
        )

    def _reading(self, energy_kwh: float | Tensor) -> Tensor:
        """One validated energy reading as a state tensor."""
        value = torch.as_tensor(energy_kwh)
        if value.numel() != 1:
            raise ValueError(
                f"energy_kwh must be a single value (the cumulative kWh so far), got shape "
                f"{tuple(value.shape)}."
            )
        number = float(value.item())
        if number < 0:  # NaN passes: it is an invalid reading, scored NaN with a warning
            raise ValueError(f"energy_kwh must be >= 0 kWh, got {number!r}.")
        return torch.tensor(number, dtype=self.energy_kwh.dtype, device=self.energy_kwh.device)

    def _share_states(self) -> None:
        """Point the wrapped metric at our (mirrored) states."""
        for own, name in self._mirrored.items():
            setattr(self.accuracy, name, getattr(self, own))

    def _accuracy_value(self) -> Tensor:
        """The wrapped metric's value on our states, which compute() has already synced."""
        self._share_states()
        # Our compute already warned if update() never ran; one warning is enough.
        private.prepare_compute(self.accuracy, max(private.update_count(self), 1))
        value = self.accuracy.compute()
        return value if isinstance(value, Tensor) else torch.as_tensor(value, device=self.device)

    def _energy_value(self) -> float:
        reading = float(self.energy_kwh.item())
        if reading < 0 and self._forward_earlier_energy is not None:
            reading = float(self._forward_earlier_energy.item())
        if not reading < 0:  # a reading (or NaN), not _MISSING
            return reading
        from_run = current_energy_kwh()
        if from_run is None:
            detail = (
                " (with energy_reduction='sum' every process must pass its share)"
                if self.energy_reduction == "sum"
                else ""
            )
            raise RuntimeError(
                "GreenQuotientIndex has no energy: pass energy_kwh= to update()"
                f"{detail}, or train with lightning_watt's WattCallback, which provides the "
                "run's energy to metrics computed during the fit."
            )
        return from_run


def _check_wrapped(accuracy: object) -> None:
    if not isinstance(accuracy, Metric):
        raise TypeError(
            f"accuracy must be a torchmetrics Metric with values in [0, 1], got "
            f"{type(accuracy).__name__}."
        )
    if not private.state_specs(accuracy):
        raise ValueError(
            f"accuracy={type(accuracy).__name__} keeps no state of its own (add_state); "
            "wrap a plain metric, not a wrapper or composition of metrics."
        )
    if any(isinstance(m, Metric) for m in accuracy.modules() if m is not accuracy):
        raise ValueError(
            f"accuracy={type(accuracy).__name__} contains other metrics whose state "
            "GreenQuotientIndex cannot follow; wrap a plain metric that keeps its own state."
        )
