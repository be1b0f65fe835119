"""The Green Quotient Index (GQI): accuracy penalised by the energy spent to reach it.

"Watt For What" (Gowda et al., arXiv 2310.06522) scores a model by

.. math::

    \\mathrm{GQI} = \\beta \\, \\frac{\\mathrm{accuracy}^{\\alpha}}{\\log_{10} E}

with ``accuracy`` in [0, 1] and ``E`` the training energy in kWh (``alpha = 5``, ``beta = 10``
here, the values read for the paper; both configurable). That *paper form* is undefined at
``E = 1 kWh`` and negative below it, where most single-GPU runs live, so it cannot rank them.
Its penalty also changes with the scale of the run: its elasticity to energy is ``1 / ln E``
(0.43 at 10 kWh, 0.22 at 100, 0.14 at 1000), so where early stopping on it stops depends on
how many kWh a run happens to use.

The *scale-free form* (the default, ``form="scale_free"``) is the paper's form with that
elasticity held at its value at a reference energy ``R`` (``reference_kwh``, default 100 kWh):

.. math::

    \\mathrm{GQI} = \\beta \\, \\frac{\\mathrm{accuracy}^{\\alpha}}
        {\\log_{10} R \\cdot (E / R)^{1 / \\ln R}}

* at ``E = R`` it equals the paper form, with the same slope; elsewhere it is a little lower:
  at most 18 % between 10 and 1000 kWh (9 % from 30 to 1000 kWh);
* it is finite, positive and strictly falling in ``E`` for every ``E > 0``;
* it is scale-free: multiplying every energy by a constant (another unit, a bigger GPU, a run
  of 0.001 or of 1000 kWh) multiplies every score by one constant, so early stopping and
  checkpointing on it pick the same epoch on the same learning curve at every scale. An
  epoch pays off when ``alpha`` times its relative accuracy gain exceeds ``1 / ln R`` (0.217)
  times the relative energy it adds; ``benchmarks/score_stopping.py`` measures where that stops.

The *guarded form* (``form="guarded"``, the earlier default) replaces ``log10(E)`` by
``log10(1 + E)``:

* it is finite, positive and strictly falling in ``E`` for every ``E > 0``, so it ranks runs of
  any size;
* for ``E`` above about 40 kWh it equals the paper form within 1 % (0.7 % at 40 kWh; the exact
  crossover is 29.2 kWh), as the two logarithms converge;
* for small ``E`` it behaves like ``beta * ln(10) * accuracy**alpha / E``: accuracy to the
  ``alpha`` per kWh (``log10(1 + E) ≈ E / ln 10``); :func:`accuracy_per_kwh` is the plain ratio.
  Its elasticity to energy is then about 1, five times the scale-free form's: early stopping on
  it stops a small run far short of its plateau.

Energy 0 (scale-free and guarded forms): the score is ``+inf`` when ``accuracy > 0`` (the
limit as ``E → 0``, so the ordering "less energy, higher score" still holds) and ``0`` when
``accuracy == 0`` (zero accuracy scores 0 at every energy). A one-time
:class:`GreenQuotientWarning` says so, because a zero reading usually means that nothing has
been measured yet (for example Lightning's sanity-check validation before the first training
step) rather than a free model. Raising instead would crash that validation loop for a logged
metric.

NaN inputs (a metric without data, a meter that failed) give a NaN score and a one-time warning
naming the cause; they never raise. Every other bad input raises :class:`ValueError`.

Example:
    >>> from lightning_watt.score.functional import green_quotient_index
    >>> round(green_quotient_index(0.9, 100.0), 4)  # scale-free = paper at 100 kWh
    2.9525
    >>> round(green_quotient_index(0.9, 0.5, form="guarded"), 3)  # 10 * 0.9**5 / log10(1.5)
    33.533
    >>> round(green_quotient_index(0.9, 500.0, form="paper"), 4)  # 10 * 0.9**5 / log10(500)
    2.1878
"""

from __future__ import annotations

import math
import numbers
import threading
import warnings
from typing import Literal, cast, overload

import torch
from torch import Tensor

from lightning_watt.validate import finite_number, finite_or_inf

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "DEFAULT_FORM",
    "DEFAULT_REFERENCE_KWH",
    "FORMS",
    "GreenQuotientWarning",
    "accuracy_per_kwh",
    "energy_exponent",
    "green_quotient_index",
    "resolve_reference_kwh",
    "validate_score_params",
]

DEFAULT_ALPHA = 5.0
"""Exponent on accuracy; the value read for the paper."""
DEFAULT_BETA = 10.0
"""Scale factor; the value read for the paper."""
DEFAULT_FORM = "scale_free"
"""The form used when none is given (see the module docstring for why)."""
DEFAULT_REFERENCE_KWH = 100.0
"""Where the scale-free form equals the paper's, value and slope (the middle of the tens to
thousands of kWh the paper studies)."""
FORMS: tuple[str, ...] = ("scale_free", "guarded", "paper")
"""Accepted values of ``form``."""

GQIForm = Literal["scale_free", "guarded", "paper"]
_LN10 = math.log(10.0)


class GreenQuotientWarning(UserWarning):
    """Issued (once per cause and process) for a NaN input or a zero energy."""


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(cause: str, message: str) -> None:
    # One warning per cause: a metric computed every epoch would otherwise repeat it forever.
    with _warned_lock:
        if cause in _warned:
            return
        _warned.add(cause)
    warnings.warn(message, GreenQuotientWarning, stacklevel=3)


_NAN_ACCURACY_MSG = (
    "accuracy is NaN, so the Green Quotient Index is NaN (a metric computed before any data, or "
    "an accuracy metric that divided by zero). This warning is shown once."
)
_NAN_ENERGY_MSG = (
    "energy_kwh is NaN, so the Green Quotient Index is NaN (the energy meter produced no valid "
    "reading). This warning is shown once."
)
_ZERO_ENERGY_MSG = (
    "energy_kwh is 0: the score is +inf for accuracy > 0 (its limit as energy -> 0) and 0 for "
    "accuracy == 0. Usually nothing has been measured yet, e.g. during Lightning's sanity-check "
    "validation. This warning is shown once."
)


#: The largest accepted exponent on accuracy (the paper uses 5): at 100, 0.9 already scores
#: 2.7e-5 of a perfect model; far beyond it every score underflows to 0.
MAX_ALPHA = 100.0
#: The largest accepted scale factor (the paper uses 10).
MAX_BETA = 1e6


def _check_params(
    alpha: float, beta: float, form: str, reference_kwh: float | None = None
) -> tuple[float, float, float]:
    """Validate the shape parameters; return alpha, beta and the reference energy as floats
    (the reference is :data:`DEFAULT_REFERENCE_KWH` when not given; only the scale-free form
    uses it)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS!r}, got {form!r}.")
    if reference_kwh is not None and form != "scale_free":
        raise ValueError(
            f"reference_kwh applies only to form='scale_free' (where it equals the paper's "
            f"form), got reference_kwh={reference_kwh!r} with form={form!r}; leave it None."
        )
    reference = finite_number(
        "reference_kwh",
        DEFAULT_REFERENCE_KWH if reference_kwh is None else reference_kwh,
        minimum=2.0,
        unit="kWh (the energy at which form='scale_free' equals the paper's form)",
        allow_none=True,  # for the message: None (the default) is accepted
    )
    assert reference is not None
    return (
        # Beyond these the score is 0 or inf for every real accuracy and energy: no ranking.
        finite_number("alpha", alpha, minimum=0.0, exclusive_minimum=True, maximum=MAX_ALPHA),
        finite_number("beta", beta, minimum=0.0, exclusive_minimum=True, maximum=MAX_BETA),
        reference,
    )


def validate_score_params(
    alpha: float, beta: float, form: str, reference_kwh: float | None = None
) -> GQIForm:
    """Check the score's parameters as :func:`green_quotient_index` would, at configuration
    time; returns ``form`` as a :data:`GQIForm`. Raises ``ValueError`` naming the parameter.

    Example:
        >>> validate_score_params(5, 10, "paper")
        'paper'
        >>> validate_score_params(5, 10, "scale_free", reference_kwh=0.5)
        Traceback (most recent call last):
        ...
        ValueError: reference_kwh must be a finite number >= 2 kWh (the energy at which \
form='scale_free' equals the paper's form) or None, got 0.5
    """
    _check_params(alpha, beta, form, reference_kwh)
    return cast(GQIForm, form)


def resolve_reference_kwh(form: str, reference_kwh: float | None = None) -> float | None:
    """The reference energy ``form`` uses: ``reference_kwh`` or :data:`DEFAULT_REFERENCE_KWH`
    for the scale-free form, ``None`` for the others (for summaries and reprs).

    Example:
        >>> resolve_reference_kwh("scale_free"), resolve_reference_kwh("guarded")
        (100.0, None)
    """
    _, _, reference = _check_params(1.0, 1.0, form, reference_kwh)
    return reference if form == "scale_free" else None


def energy_exponent(reference_kwh: float = DEFAULT_REFERENCE_KWH) -> float:
    """The scale-free form's exponent on energy, ``1 / ln(reference_kwh)``: the paper form's
    elasticity to energy at ``reference_kwh`` (0.217 at the default 100 kWh).

    Example:
        >>> round(energy_exponent(), 4)
        0.2171
    """
    _, _, reference = _check_params(1.0, 1.0, "scale_free", reference_kwh)
    return 1.0 / math.log(reference)


def _accuracy_error(value: float) -> ValueError:
    if 1.0 < value <= 100.0:
        return ValueError(
            f"accuracy must be a fraction in [0, 1], got {value!r}: it looks like a percentage; "
            "divide it by 100."
        )
    return ValueError(f"accuracy must be a fraction in [0, 1], got {value!r}.")


def _paper_energy_error(value: float) -> ValueError:
    return ValueError(
        f"form='paper' is undefined for energy_kwh <= 1 (got {value!r}): log10(E) is 0 at 1 kWh "
        "and negative below it, so the score would divide by zero or change sign. "
        "Use the default form='scale_free', which penalises energy as the paper's form does at "
        "100 kWh at every scale, or form='guarded', which divides by log10(1 + E)."
    )


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, Tensor)


def _as_tensors(accuracy: float | Tensor, energy_kwh: float | Tensor) -> tuple[Tensor, Tensor]:
    """Both inputs as floating tensors of one dtype on one device, broadcast together."""
    tensors = [x for x in (accuracy, energy_kwh) if isinstance(x, Tensor)]
    device = tensors[0].device if tensors else None
    acc = torch.as_tensor(accuracy, device=device)
    energy = torch.as_tensor(energy_kwh, device=device)
    # Integer or bool inputs (e.g. torch.tensor(1)) are promoted to the default float dtype.
    dtype = torch.promote_types(
        acc.dtype if acc.is_floating_point() else torch.get_default_dtype(),
        energy.dtype if energy.is_floating_point() else torch.get_default_dtype(),
    )
    try:
        shape = torch.broadcast_shapes(acc.shape, energy.shape)
    except RuntimeError:
        raise ValueError(
            f"accuracy (shape {tuple(acc.shape)}) and energy_kwh (shape {tuple(energy.shape)}) "
            "cannot be broadcast together."
        ) from None
    return acc.to(dtype).expand(shape), energy.to(dtype).expand(shape)


def _first(mask: Tensor, values: Tensor) -> float:
    return float(values[mask].flatten()[0].item())


def _check_tensors(acc: Tensor, energy: Tensor, form: str) -> None:
    """Raise for invalid elements; warn once for NaN and zero energy."""
    negative = energy < 0
    if bool(negative.any()):
        raise ValueError(f"energy_kwh must be >= 0 kWh, got {_first(negative, energy)!r}.")
    if form == "paper":
        undefined = energy <= 1
        if bool(undefined.any()):
            raise _paper_energy_error(_first(undefined, energy))
    # NaN compares False everywhere, so it passes this range check and is handled below.
    out_of_range = (acc < 0) | (acc > 1)
    if bool(out_of_range.any()):
        raise _accuracy_error(_first(out_of_range, acc))
    if bool(acc.isnan().any()):
        _warn_once("nan-accuracy", _NAN_ACCURACY_MSG)
    if bool(energy.isnan().any()):
        _warn_once("nan-energy", _NAN_ENERGY_MSG)
    if form != "paper" and bool((energy == 0).any()):
        _warn_once("zero-energy", _ZERO_ENERGY_MSG)


def _check_floats(acc: float, energy: float, form: str) -> None:
    if energy < 0:
        raise ValueError(f"energy_kwh must be >= 0 kWh, got {energy!r}.")
    if form == "paper" and energy <= 1:
        raise _paper_energy_error(energy)
    if acc < 0 or acc > 1:
        raise _accuracy_error(acc)
    if math.isnan(acc):
        _warn_once("nan-accuracy", _NAN_ACCURACY_MSG)
    if math.isnan(energy):
        _warn_once("nan-energy", _NAN_ENERGY_MSG)
    if form != "paper" and energy == 0:
        _warn_once("zero-energy", _ZERO_ENERGY_MSG)


@overload
def green_quotient_index(
    accuracy: float,
    energy_kwh: float,
    alpha: float = ...,
    beta: float = ...,
    form: GQIForm = ...,
    reference_kwh: float | None = ...,
) -> float: ...


@overload
def green_quotient_index(
    accuracy: Tensor,
    energy_kwh: Tensor | float,
    alpha: float = ...,
    beta: float = ...,
    form: GQIForm = ...,
    reference_kwh: float | None = ...,
) -> Tensor: ...


@overload
def green_quotient_index(
    accuracy: float,
    energy_kwh: Tensor,
    alpha: float = ...,
    beta: float = ...,
    form: GQIForm = ...,
    reference_kwh: float | None = ...,
) -> Tensor: ...


def green_quotient_index(
    accuracy: float | Tensor,
    energy_kwh: float | Tensor,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    form: GQIForm = "scale_free",
    reference_kwh: float | None = None,
) -> float | Tensor:
    """Green Quotient Index of a model with ``accuracy`` trained with ``energy_kwh``.

    * ``form="scale_free"`` (default): ``beta * accuracy**alpha / (log10(R) * (E / R)**(1 /
      ln R))`` with ``R = reference_kwh`` (default 100): the paper's form where it meets it at
      ``R`` (same value, same slope), scale-free everywhere: scaling every energy by a constant
      scales every score by a constant, so early stopping and checkpointing on it pick the same
      epoch for a 0.001 kWh and a 1000 kWh run. Finite, positive, strictly falling in energy for
      every ``energy_kwh > 0``.
    * ``form="guarded"``: ``beta * accuracy**alpha / log10(1 + energy_kwh)``, finite,
      positive and strictly falling in energy for every ``energy_kwh > 0``.
    * ``form="paper"``: ``beta * accuracy**alpha / log10(energy_kwh)``, exactly as in
      "Watt For What"; only defined for ``energy_kwh > 1``.

    Higher is better. See the module docstring for why the scale-free form is the default.

    Args:
        accuracy: fraction in [0, 1] (not a percentage); a float or a tensor. NaN gives NaN and a
            one-time :class:`GreenQuotientWarning`.
        energy_kwh: training energy in kWh, ``>= 0``; a float or a tensor broadcastable with
            ``accuracy``. With the scale-free and guarded forms, 0 gives ``+inf`` (``0`` if
            ``accuracy == 0``) and a one-time warning.
        alpha: exponent on accuracy, in (0, 100] (paper: 5). Larger values reward
            accuracy more against energy (a later early stop).
        beta: scale factor, in (0, 1e6] (paper: 10).
        form: ``"scale_free"``, ``"guarded"`` or ``"paper"``.
        reference_kwh: the scale-free form's reference energy, finite and ``>= 2`` kWh; ``None``
            (default) means 100 kWh. Energy is penalised as the paper's form penalises it at
            this energy (exponent ``1 / ln R``); a larger value penalises energy less. Only for
            ``form="scale_free"``.

    Returns:
        A float when both ``accuracy`` and ``energy_kwh`` are Python numbers, else a tensor of
        their broadcast shape (floating dtype, on the inputs' device).

    Raises:
        ValueError: accuracy outside [0, 1] (values in (1, 100] are reported as a likely
            percentage), negative energy, energy <= 1 kWh with ``form="paper"``, alpha or beta
            not a finite number > 0, ``reference_kwh`` not a finite number >= 2 or given with
            another form, an unknown ``form``, or shapes that do not broadcast.

    Example:
        >>> import torch
        >>> round(green_quotient_index(0.9, 100.0), 4)  # equals the paper's form at 100 kWh
        2.9525
        >>> round(green_quotient_index(0.9, 0.5, form="guarded"), 3)
        33.533
        >>> green_quotient_index(torch.tensor([0.8, 0.9]), torch.tensor(2.0), form="guarded")
        tensor([ 6.8679, 12.3761])
        >>> green_quotient_index(0.9, 0.5, form="paper")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: form='paper' is undefined for energy_kwh <= 1 (got 0.5): ...
    """
    alpha, beta, reference = _check_params(alpha, beta, form, reference_kwh)
    exponent = 1.0 / math.log(reference)
    for name, value in (("accuracy", accuracy), ("energy_kwh", energy_kwh)):
        if isinstance(value, bool) or not (_is_number(value) or isinstance(value, Tensor)):
            raise TypeError(
                f"{name} must be a number or a tensor, got {value!r} ({type(value).__name__})"
            )
    if _is_number(accuracy) and _is_number(energy_kwh):
        acc, energy = finite_or_inf(accuracy), finite_or_inf(energy_kwh)
        _check_floats(acc, energy, form)
        numerator = beta * acc**alpha
        if energy == 0:  # not reachable with the paper's form
            return 0.0 if acc == 0 else math.inf
        if form == "scale_free":
            try:
                denominator = math.log10(reference) * (energy / reference) ** exponent
            except OverflowError:  # beyond 1e200 kWh: the score underflows to 0
                return 0.0
            if denominator == 0.0:  # below 1e-200 kWh: the score overflows to +inf
                return 0.0 if acc == 0 else math.inf
        elif form == "guarded":
            denominator = math.log1p(energy) / _LN10
        else:
            denominator = math.log10(energy)
        return numerator / denominator

    acc_t, energy_t = _as_tensors(accuracy, energy_kwh)
    _check_tensors(acc_t, energy_t, form)
    numerator_t = beta * acc_t.pow(alpha)
    if form == "scale_free":
        denominator_t = math.log10(reference) * torch.exp(
            exponent * (torch.log(energy_t) - math.log(reference))
        )
    elif form == "guarded":
        # log1p keeps full precision for the small energies (1e-6 kWh) of short runs in float32.
        denominator_t = torch.log1p(energy_t) / _LN10
    else:
        denominator_t = torch.log10(energy_t)
    score = numerator_t / denominator_t  # x / 0 is +inf for x > 0, NaN for x == 0
    return torch.where((acc_t == 0) & (energy_t == 0), torch.zeros_like(score), score)


@overload
def accuracy_per_kwh(accuracy: float, energy_kwh: float) -> float: ...


@overload
def accuracy_per_kwh(accuracy: Tensor, energy_kwh: Tensor | float) -> Tensor: ...


@overload
def accuracy_per_kwh(accuracy: float, energy_kwh: Tensor) -> Tensor: ...


def accuracy_per_kwh(accuracy: float | Tensor, energy_kwh: float | Tensor) -> float | Tensor:
    """Accuracy divided by energy: ``accuracy / energy_kwh`` (accuracy points per kWh).

    The plain ratio, with no exponent and no logarithm. For small energies the guarded GQI with
    ``alpha=1`` tends to ``beta * ln(10) * accuracy_per_kwh`` because ``log10(1 + E) ≈ E / ln 10``.
    Inputs are validated as in :func:`green_quotient_index`; energy 0 gives ``+inf`` (``0`` when
    ``accuracy == 0``) with a one-time warning, NaN gives NaN with a one-time warning.

    Args:
        accuracy: fraction in [0, 1]; float or tensor.
        energy_kwh: energy in kWh, ``>= 0``; float or tensor broadcastable with ``accuracy``.

    Returns:
        A float for two Python numbers, else a tensor.

    Example:
        >>> accuracy_per_kwh(0.9, 0.5)
        1.8
        >>> import torch
        >>> accuracy_per_kwh(torch.tensor([0.5, 1.0]), 2.0)
        tensor([0.2500, 0.5000])
    """
    if _is_number(accuracy) and _is_number(energy_kwh):
        acc, energy = float(accuracy), float(energy_kwh)
        _check_floats(acc, energy, "guarded")
        if energy == 0:
            return 0.0 if acc == 0 else math.inf
        return acc / energy
    acc_t, energy_t = _as_tensors(accuracy, energy_kwh)
    _check_tensors(acc_t, energy_t, "guarded")
    ratio = acc_t / energy_t
    return torch.where((acc_t == 0) & (energy_t == 0), torch.zeros_like(ratio), ratio)
