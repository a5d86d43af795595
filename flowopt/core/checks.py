"""Argument checks shared by every constructor.

Each check names the argument, shows the value and says what is expected, in
one style: ``"rtol must be a finite real number greater than 0, got -1.0."``.
A JAX tracer (a hyperparameter under ``optax.inject_hyperparams`` or
``jit``) passes the numeric checks unchecked, so they return ``None`` for it;
arguments that fix the structure of a method (orders, stage counts) must be
Python integers and are refused as arrays, naming ``static_args``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.core
import numpy as np


def is_concrete(*values: Any) -> bool:
    """Whether none of ``values`` is a JAX tracer."""
    return not any(isinstance(value, jax.core.Tracer) for value in values)


def is_zero(value: Any) -> bool:
    """Whether ``value`` is a concrete 0 (a traced value may not be)."""
    return is_concrete(value) and float(value) == 0


def real_number(name: str, value: Any, expected: str) -> float | None:
    """``value`` as a finite float, or ``None`` for a traced value.

    A real number is a Python or NumPy int or float or a concrete 0-d real
    array; bools, strings, ``None``, complex numbers, arrays of other shapes
    and non-finite values are a ``ValueError`` naming ``name`` and ``expected``.
    """
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        raise ValueError(f"{name} must be {expected}, got {value!r}.")
    if isinstance(value, (numbers.Real, np.ndarray, np.generic, jax.Array)):
        array = np.asarray(value)
        if array.shape == () and (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            number = float(array)
            if not math.isfinite(number):
                raise ValueError(f"{name} must be {expected}, got {value!r}, which is not finite.")
            return number
        if array.shape != ():
            raise ValueError(f"{name} must be {expected} (a scalar), got an array of shape {array.shape}.")
    raise ValueError(f"{name} must be {expected}, got {value!r} of type {type(value).__name__}.")


def check_range(name: str, value: Any, low: float, high: float, *, low_open: bool = True, high_open: bool = True) -> float | None:
    """The number ``value`` in the interval from ``low`` to ``high`` (open or closed ends); ``None`` if traced."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if math.isinf(low) and math.isinf(high):
        expected = "a finite real number"
    elif math.isinf(high):
        expected = "a finite real number " + (f"greater than {low:g}" if low_open else f"at least {low:g}")
    else:
        expected = f"a real number in {interval}"
    number = real_number(name, value, expected)
    if number is None:
        return None
    above = number > low if low_open else number >= low
    below = number < high if high_open else number <= high
    if not (above and below):
        raise ValueError(f"{name} must be {expected}, got {value!r}.")
    return number


def check_finite(name: str, value: Any) -> float | None:
    """A finite real number; ``None`` if traced."""
    return check_range(name, value, -math.inf, math.inf)


def check_positive(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    """A finite number above 0; ``None`` if traced (or, with ``allow_none``, if ``None``)."""
    if value is None and allow_none:
        return None
    return check_range(name, value, 0.0, math.inf)


def check_non_negative(name: str, value: Any) -> float | None:
    """A finite number at least 0; ``None`` if traced."""
    return check_range(name, value, 0.0, math.inf, low_open=False)


def check_bool(name: str, value: Any) -> bool | None:
    """``value`` as a bool, ``None`` for a traced value; anything but a bool is a ``ValueError``."""
    if isinstance(value, jax.core.Tracer):
        return None
    array = np.asarray(value) if isinstance(value, (bool, np.bool_, np.ndarray, jax.Array)) else None
    if array is None or array.shape != () or array.dtype != bool:
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return bool(array)


def check_integer(name: str, value: Any, low: int, high: int | None = None) -> int:
    """A Python (or NumPy) integer in ``[low, high]``: it fixes the structure of a method, so never an array."""
    if isinstance(value, jax.Array):  # a tracer, or the array optax.inject_hyperparams makes of it
        raise ValueError(
            f"{name} must be a Python integer (it fixes the structure of the method), got a JAX array; "
            f"with optax.inject_hyperparams, list it in static_args=({name!r}, ...)."
        )
    if high is not None:
        expected = f"an integer in [{low}, {high}]"
    else:
        expected = "a positive integer" if low == 1 else f"an integer of at least {low}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be {expected}, got {value!r}.")
    number = int(value)
    if number < low or (high is not None and number > high):
        raise ValueError(f"{name} must be {expected}, got {value}.")
    return number


def check_unit_interval(name: str, value: Any) -> float | None:
    """A number in the open interval ``(0, 1)``; ``None`` if traced."""
    return check_range(name, value, 0.0, 1.0)
