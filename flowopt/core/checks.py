"""Argument checks: one set for every function of flowopt.

Each check names the argument (after ``where``, the function checking, when
given), shows the value and says what is expected, in one style:
``"gradient_flow: rtol must be a finite positive number, got -1.0."``. A JAX
tracer (a hyperparameter under ``optax.inject_hyperparams`` or ``jit``)
passes the numeric checks unchecked, so they return ``None`` for it, unless
the caller needs the value on the host (``traced=False``). Arguments that fix
the structure of a method (orders, stage counts) must be Python integers.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

INT32_MAX = int(np.iinfo(np.int32).max)


def is_concrete(*values: Any) -> bool:
    """Whether none of ``values`` is a JAX tracer."""
    return not any(isinstance(value, jax.core.Tracer) for value in values)


def is_zero(value: Any) -> bool:
    """Whether ``value`` is a concrete 0 (a traced value may not be)."""
    return is_concrete(value) and float(value) == 0


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def real_number(name: str, value: Any, expected: str, *, where: str = "", traced: bool = True) -> float | None:
    """``value`` as a finite float, or ``None`` for a traced value (a ``ValueError`` for one if not ``traced``).

    A real number is a Python or NumPy int or float or a concrete 0-d real
    array; bools, strings, ``None``, complex numbers, arrays of other shapes
    and non-finite values are a ``ValueError`` naming ``name`` and ``expected``.
    """
    prefix = _prefix(where)
    if isinstance(value, jax.core.Tracer):
        if not traced:
            raise ValueError(f"{prefix}{name} must be a concrete number (it is used on the host), got a traced value.")
        if jnp.ndim(value) != 0 or jnp.issubdtype(value.dtype, jnp.complexfloating):
            raise ValueError(f"{prefix}{name} must be {expected} (a real scalar), got a traced {value.dtype}{list(value.shape)}.")
        return None
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        raise ValueError(f"{prefix}{name} must be {expected}, got {_shown(value)}.")
    if isinstance(value, (numbers.Real, np.ndarray, np.generic, jax.Array)):
        array = np.asarray(value)
        if array.shape == () and (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            number = float(array)
            if not math.isfinite(number):
                raise ValueError(f"{prefix}{name} must be {expected}, got {_shown(value)}, which is not finite.")
            return number
        if array.shape != ():
            raise ValueError(f"{prefix}{name} must be {expected} (a scalar), got an array of shape {array.shape}.")
    raise ValueError(f"{prefix}{name} must be {expected}, got {_shown(value)} of type {type(value).__name__}.")


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = True,
    high_open: bool = True,
    where: str = "",
    traced: bool = True,
) -> float | None:
    """The number ``value`` in the interval from ``low`` to ``high`` (open or closed ends); ``None`` if traced."""
    if math.isinf(low) and math.isinf(high):
        expected = "a finite real number"
    elif math.isinf(high) and low == 0:
        expected = "a finite positive number" if low_open else "a finite nonnegative number"
    elif math.isinf(high):
        expected = f"a finite number {'greater than' if low_open else 'at least'} {low:g}"
    else:
        expected = f"a real number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    number = real_number(name, value, expected, where=where, traced=traced)
    if number is None:
        return None
    above = number > low if low_open else number >= low
    below = number < high if high_open else number <= high
    if not (above and below):
        raise ValueError(f"{_prefix(where)}{name} must be {expected}, got {_shown(value)}.")
    return number


def check_finite(name: str, value: Any, *, where: str = "") -> float | None:
    """A finite real number; ``None`` if traced."""
    return check_range(name, value, -math.inf, math.inf, where=where)


def check_positive(name: str, value: Any, *, allow_none: bool = False, where: str = "", traced: bool = True) -> float | None:
    """A finite number above 0; ``None`` if traced (or, with ``allow_none``, if ``None``)."""
    if value is None and allow_none:
        return None
    return check_range(name, value, 0.0, math.inf, where=where, traced=traced)


def check_non_negative(name: str, value: Any, *, where: str = "") -> float | None:
    """A finite number at least 0; ``None`` if traced."""
    return check_range(name, value, 0.0, math.inf, low_open=False, where=where)


def check_unit_interval(name: str, value: Any, *, where: str = "") -> float | None:
    """A number in the open interval ``(0, 1)``; ``None`` if traced."""
    return check_range(name, value, 0.0, 1.0, where=where)


def check_bool(name: str, value: Any, *, where: str = "") -> bool | None:
    """``value`` as a bool, ``None`` for a traced value; anything but a bool is a ``ValueError``."""
    if isinstance(value, jax.core.Tracer):
        return None
    array = np.asarray(value) if isinstance(value, (bool, np.bool_, np.ndarray, jax.Array)) else None
    if array is None or array.shape != () or array.dtype != bool:
        raise ValueError(f"{_prefix(where)}{name} must be True or False, got {_shown(value)}.")
    return bool(array)


def check_integer(name: str, value: Any, low: int, high: int | None = None, *, where: str = "", static_args: bool = True) -> int:
    """A Python or NumPy integer (or a concrete 0-d integer array) in ``[low, high]``.

    A traced value is refused: the integer fixes the structure of what is
    computed. ``static_args`` says so in the terms of ``optax.inject_hyperparams``
    (for optimizer constructors).
    """
    prefix = _prefix(where)
    kind = {0: "a nonnegative integer", 1: "a positive integer"}.get(low, f"an integer of at least {low}")
    expected = kind if high is None else f"{kind} (at most {high})"
    if isinstance(value, jax.core.Tracer) or (isinstance(value, jax.Array) and static_args):
        hint = f"; with optax.inject_hyperparams, list it in static_args=({name!r}, ...)" if static_args else ""
        raise ValueError(
            f"{prefix}{name} must be a Python integer (it fixes the structure of the computation), "
            f"got {'a traced value' if isinstance(value, jax.core.Tracer) else 'a JAX array'}{hint}."
        )
    if isinstance(value, (np.ndarray, jax.Array)) and value.shape == () and np.issubdtype(value.dtype, np.integer):
        value = int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{prefix}{name} must be {expected}, got {_shown(value)}.")
    number = int(value)
    if number < low or (high is not None and number > high):
        raise ValueError(f"{prefix}{name} must be {expected}, got {number}.")
    return number


def check_callable(name: str, value: Any, what: str = "a callable params -> scalar loss", *, where: str = "") -> None:
    """``value`` must be callable (``what`` says what it computes)."""
    if not callable(value):
        raise ValueError(f"{_prefix(where)}{name} must be {what}, got {_shown(value)}.")


def leaf_dtype(leaf: Any) -> np.dtype | None:
    """The dtype of an array-like pytree leaf, ``None`` for anything else."""
    if isinstance(leaf, (bool, np.bool_)):
        return np.dtype(bool)
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic, float, complex, int)):
        return jnp.result_type(leaf)
    return None


def check_float_tree(what: str, tree: Any, *, where: str = "", allow_complex: bool = True, nonempty: bool = False) -> None:
    """Every leaf of ``tree`` (at least one with ``nonempty``) is a floating-point (or complex) array.

    An integer or boolean leaf cannot follow a gradient flow: ``optax.apply_updates``
    would truncate it, a gradient would not be defined.
    """
    prefix = _prefix(where)
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if nonempty and not leaves:
        raise ValueError(f"{prefix}{what} has no array leaves (got {_shown(tree)}); pass a pytree of floating-point arrays.")
    kinds = "floating-point or complex" if allow_complex else "real floating-point"
    for path, leaf in leaves:
        dtype = leaf_dtype(leaf)
        ok = (
            dtype is not None
            and dtype != np.dtype(bool)
            and (jnp.issubdtype(dtype, jnp.floating) or (allow_complex and jnp.issubdtype(dtype, jnp.complexfloating)))
        )
        if not ok:
            location = jax.tree_util.keystr(path) or "the root"
            found = f"dtype {dtype}" if dtype is not None else f"a {type(leaf).__name__}"
            raise ValueError(
                f"{prefix}{what} must hold {kinds} arrays, but the leaf at {location} is {found}. Integer or boolean "
                "leaves cannot follow a gradient flow: cast them to a float dtype, or keep them out of the optimised "
                "pytree (optax.masked, optax.multi_transform)."
            )


def check_prng_key(key: Any, *, where: str = "") -> jax.Array:
    """A single PRNG key (new-style ``jax.random.key`` or a raw ``uint32[2]``); ``None`` is ``key(0)``."""
    if key is None:
        return jax.random.key(0)
    if isinstance(key, jax.Array):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return key
    raise ValueError(f"{_prefix(where)}key must be a single PRNG key such as jax.random.key(0), got {_shown(key)}.")
