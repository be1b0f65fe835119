"""Checks for numeric arguments, shared by every public constructor and function.

Each check refuses ``bool`` (``True`` is not the number 1 here), NaN, infinities, strings and
other non-numbers, and raises :class:`ValueError` naming the parameter, the accepted values and
what was given. A number is a real number (``int``, ``float``, a NumPy scalar) or a one-element
tensor of a numeric dtype; an integer is an integral number of those kinds (``2.0`` is not one).

Example:
    >>> from lightning_watt.validate import finite_number, positive_int
    >>> finite_number("pue", 1.2, minimum=1, maximum=3)
    1.2
    >>> finite_number("alpha", 0, minimum=0, exclusive_minimum=True)
    Traceback (most recent call last):
    ...
    ValueError: alpha must be a finite number > 0, got 0
    >>> finite_number("target", 1, minimum=0, maximum=1, exclusive_minimum=True)
    1.0
    >>> positive_int("check_every_n_steps", True)
    Traceback (most recent call last):
    ...
    ValueError: check_every_n_steps must be a positive integer (an int >= 1), got True (bool)
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any, Literal, overload

__all__ = [
    "a_callable",
    "boolean",
    "finite_number",
    "finite_or_inf",
    "integer",
    "one_of",
    "path_like",
    "positive_int",
    "positive_number",
    "string_collection",
    "text",
]


def _describe_range(
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
) -> str:
    """The accepted values in words: ``'a number in (0, 1]'``, ``'a finite number >= 0'``."""
    if minimum is not None and maximum is not None:
        left = "(" if exclusive_minimum else "["
        right = ")" if exclusive_maximum else "]"
        return f"a number in {left}{minimum:g}, {maximum:g}{right}"
    if minimum is not None:
        return f"a finite number {'>' if exclusive_minimum else '>='} {minimum:g}"
    if maximum is not None:
        return f"a finite number {'<' if exclusive_maximum else '<='} {maximum:g}"
    return "a finite number"


def _given(value: object) -> str:
    """What was given, with its type where the repr alone could mislead (``'1'``, ``True``)."""
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        return repr(value)
    return f"{value!r} ({type(value).__name__})"


def _scalar_tensor(value: object) -> Any:
    """``value`` if it is a one-element tensor of a real, non-bool dtype, else ``None``.

    Looks torch up in ``sys.modules`` rather than importing it: without torch loaded there can
    be no tensor, and ``import lightning_watt`` (the report command) stays free of torch.
    """
    torch = sys.modules.get("torch")
    if (
        torch is not None
        and isinstance(value, torch.Tensor)
        and value.numel() == 1
        and value.dtype != torch.bool
        and not value.is_complex()
    ):
        return value
    return None


def _real(value: object) -> float | None:
    """``value`` as a float when it is a real number (not a bool), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:  # an int beyond float range (10**400): as big as infinity
            return -math.inf if str(value).startswith("-") else math.inf
    tensor = _scalar_tensor(value)
    return None if tensor is None else float(tensor.item())


def _integral(value: object) -> int | None:
    """``value`` as an int when it is an integer (not a bool, not a float), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    tensor = _scalar_tensor(value)
    return None if tensor is None or tensor.is_floating_point() else int(tensor.item())


@overload
def finite_number(
    name: str,
    value: object,
    *,
    minimum: float | None = ...,
    maximum: float | None = ...,
    exclusive_minimum: bool = ...,
    exclusive_maximum: bool = ...,
    unit: str = ...,
    allow_none: Literal[False] = ...,
) -> float: ...


@overload
def finite_number(
    name: str,
    value: object,
    *,
    minimum: float | None = ...,
    maximum: float | None = ...,
    exclusive_minimum: bool = ...,
    exclusive_maximum: bool = ...,
    unit: str = ...,
    allow_none: bool,
) -> float | None: ...


def finite_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
    unit: str = "",
    allow_none: bool = False,
) -> float | None:
    """``value`` as a float, if it is a finite number within the bounds; else ``ValueError``.

    Args:
        name: the parameter, as the message names it.
        value: what was given.
        minimum: the lowest accepted value (``None``: no lower bound).
        maximum: the highest accepted value (``None``: no upper bound).
        exclusive_minimum: ``minimum`` itself is refused (``> minimum``).
        exclusive_maximum: ``maximum`` itself is refused (``< maximum``).
        unit: words after the accepted values in the message: a unit (``"seconds"``) or a
            hint (``"(a fraction, not a percentage)"``).
        allow_none: ``None`` is accepted and returned as is.

    Example:
        >>> finite_number("max_kwh", None, minimum=0, exclusive_minimum=True, allow_none=True)
        >>> finite_number("interval_s", "0.1", minimum=0, exclusive_minimum=True, unit="seconds")
        Traceback (most recent call last):
        ...
        ValueError: interval_s must be a finite number > 0 seconds, got '0.1' (str)
    """
    if value is None and allow_none:
        return None
    number = _real(value)
    if (
        number is None
        or not math.isfinite(number)
        or (minimum is not None and (number <= minimum if exclusive_minimum else number < minimum))
        or (maximum is not None and (number >= maximum if exclusive_maximum else number > maximum))
    ):
        accepted = _describe_range(
            minimum,
            maximum,
            exclusive_minimum=exclusive_minimum,
            exclusive_maximum=exclusive_maximum,
        )
        accepted += f" {unit}" if unit else ""
        accepted += " or None" if allow_none else ""
        raise ValueError(f"{name} must be {accepted}, got {_given(value)}")
    return number


@overload
def positive_number(
    name: str, value: object, *, unit: str = ..., allow_none: Literal[False] = ...
) -> float: ...


@overload
def positive_number(
    name: str, value: object, *, unit: str = ..., allow_none: bool
) -> float | None: ...


def positive_number(
    name: str, value: object, *, unit: str = "", allow_none: bool = False
) -> float | None:
    """``value`` as a float, if it is a finite number ``> 0``; else ``ValueError``.

    Example:
        >>> positive_number("max_gap", -1, unit="seconds")
        Traceback (most recent call last):
        ...
        ValueError: max_gap must be a finite number > 0 seconds, got -1
    """
    return finite_number(
        name, value, minimum=0.0, exclusive_minimum=True, unit=unit, allow_none=allow_none
    )


@overload
def integer(
    name: str,
    value: object,
    *,
    minimum: int = ...,
    maximum: int | None = ...,
    allow_none: Literal[False] = ...,
) -> int: ...


@overload
def integer(
    name: str, value: object, *, minimum: int = ..., maximum: int | None = ..., allow_none: bool
) -> int | None: ...


def integer(
    name: str,
    value: object,
    *,
    minimum: int = 1,
    maximum: int | None = None,
    allow_none: bool = False,
) -> int | None:
    """``value`` as an int, if it is an integer ``>= minimum`` (not a bool, not ``2.0``).

    Example:
        >>> integer("max_knots", 8, minimum=16)
        Traceback (most recent call last):
        ...
        ValueError: max_knots must be an integer >= 16, got 8
    """
    if value is None and allow_none:
        return None
    number = _integral(value)
    if number is None or number < minimum or (maximum is not None and number > maximum):
        accepted = (
            "a positive integer (an int >= 1)" if minimum == 1 else f"an integer >= {minimum}"
        )
        accepted += f" and <= {maximum}" if maximum is not None else ""
        accepted += " or None" if allow_none else ""
        raise ValueError(f"{name} must be {accepted}, got {_given(value)}")
    return number


@overload
def positive_int(name: str, value: object, *, allow_none: Literal[False] = ...) -> int: ...


@overload
def positive_int(name: str, value: object, *, allow_none: bool) -> int | None: ...


def positive_int(name: str, value: object, *, allow_none: bool = False) -> int | None:
    """``value`` as an int, if it is an integer ``>= 1`` (not a bool); else ``ValueError``.

    Example:
        >>> positive_int("log_every_n_steps", 0, allow_none=True)
        Traceback (most recent call last):
        ...
        ValueError: log_every_n_steps must be a positive integer (an int >= 1) or None, got 0
    """
    return integer(name, value, minimum=1, allow_none=allow_none)


def boolean(name: str, value: object) -> bool:
    """``value`` if it is a bool (``True``/``False``, not ``1``, ``"no"`` or ``None``).

    Example:
        >>> boolean("record", "no")
        Traceback (most recent call last):
        ...
        TypeError: record must be True or False, got 'no' (str)
    """
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_":  # numpy.bool_, without importing numpy
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {_given(value)}")


def one_of(name: str, value: object, accepted: tuple[str, ...]) -> str:
    """``value`` if it is one of the ``accepted`` strings.

    Example:
        >>> one_of("isolation", "threads", ("auto", "process", "thread"))
        Traceback (most recent call last):
        ...
        ValueError: isolation must be one of 'auto', 'process', 'thread', got 'threads' (str)
    """
    if isinstance(value, str) and value in accepted:
        return value
    raise ValueError(f"{name} must be one of {', '.join(map(repr, accepted))}, got {_given(value)}")


@overload
def text(
    name: str, value: object, *, allow_none: Literal[False] = ..., example: str = ...
) -> str: ...


@overload
def text(name: str, value: object, *, allow_none: bool, example: str = ...) -> str | None: ...


def text(name: str, value: object, *, allow_none: bool = False, example: str = "") -> str | None:
    """``value`` if it is a non-empty string; else ``TypeError`` (wrong type) or ``ValueError``.

    Example:
        >>> text("score_from", ["val_acc"], example="'val_acc'")
        Traceback (most recent call last):
        ...
        TypeError: score_from must be a non-empty string such as 'val_acc', got ['val_acc'] (list)
    """
    if value is None and allow_none:
        return None
    accepted = "a non-empty string" + (f" such as {example}" if example else "")
    accepted += " or None" if allow_none else ""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {accepted}, got {_given(value)}")
    if not value:
        raise ValueError(f"{name} must be {accepted}, got ''")
    return value


def path_like(name: str, value: object) -> str:
    """``value`` as a string path, if it is a ``str`` or ``os.PathLike`` naming one.

    Example:
        >>> path_like("record", 5)
        Traceback (most recent call last):
        ...
        TypeError: record must be a path (str or os.PathLike), got 5
    """
    import os

    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if isinstance(path, str) and path:
            return path
    raise TypeError(f"{name} must be a path (str or os.PathLike), got {_given(value)}")


def string_collection(name: str, value: object, *, allow_none: bool = False) -> list[str] | None:
    """``value`` as a list, if it is a collection (not a string) of strings.

    Example:
        >>> string_collection("domains", "package")
        Traceback (most recent call last):
        ...
        TypeError: domains must be a list of strings, got 'package' (str)
    """
    from collections.abc import Collection

    if value is None and allow_none:
        return None
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Collection)
        or not all(isinstance(v, str) for v in value)
    ):
        extra = " or None" if allow_none else ""
        raise TypeError(f"{name} must be a list of strings{extra}, got {_given(value)}")
    return list(value)


def a_callable(name: str, value: object, what: str) -> Any:
    """``value`` if it is callable; else ``TypeError`` saying what it should be.

    Example:
        >>> a_callable("clock", 1.0, "a function returning monotonic seconds")
        Traceback (most recent call last):
        ...
        TypeError: clock must be a function returning monotonic seconds, got 1.0
    """
    if not callable(value):
        raise TypeError(f"{name} must be {what}, got {_given(value)}")
    return value


def finite_or_inf(value: Any) -> float:
    """``float(value)`` for a real number, with an int beyond float range as +-infinity.

    Example:
        >>> finite_or_inf(10**400)
        inf
    """
    real = _real(value)
    if real is None:
        raise TypeError(f"expected a real number, got {_given(value)}")
    return real
