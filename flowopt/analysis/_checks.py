"""Argument checks shared by the analysis tools.

Every check names the function and the argument, shows the offending value
and says what is expected. Traced values (inside ``jax.jit``) pass: only
concrete values are checked.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from flowopt.core.oracle import check_scalar_loss

INT32_MAX = int(np.iinfo(np.int32).max)


def is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_int(function: str, name: str, value: Any, *, minimum: int = 1, maximum: int = INT32_MAX) -> int:
    """``value`` as a Python int in ``[minimum, maximum]`` (bool, float, str and None are refused)."""
    kind = {0: "a nonnegative integer", 1: "a positive integer"}.get(minimum, f"an integer of at least {minimum}")
    expected = f"{kind} (at most {maximum})"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        if (
            isinstance(value, (np.ndarray, jax.Array))
            and np.ndim(value) == 0
            and not is_traced(value)
            and jnp.issubdtype(value.dtype, jnp.integer)
        ):
            value = int(value)
        else:
            found = "a traced value (it must be a static Python int)" if is_traced(value) else _short(value)
            raise ValueError(f"{function}: {name} must be {expected}, got {found}.")
    value = int(value)
    if not minimum <= value <= maximum:
        raise ValueError(f"{function}: {name} must be {expected}, got {value}.")
    return value


def check_real(
    function: str,
    name: str,
    value: Any,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    finite: bool = True,
    allow_traced: bool = True,
) -> float | jax.Array:
    """A real scalar (a number or 0-d real array); traced values pass unchecked when ``allow_traced``."""
    if is_traced(value):
        if not allow_traced:
            raise ValueError(
                f"{function}: {name} must be a concrete number (it is compiled into the solver), got a traced value."
            )
        if jnp.ndim(value) != 0 or jnp.issubdtype(value.dtype, jnp.complexfloating):
            raise ValueError(f"{function}: {name} must be a real scalar, got a traced {value.dtype}{list(value.shape)}.")
        return value
    bound = "positive" if positive else "nonnegative" if nonnegative else "real"
    expected = f"a {'finite ' if finite else ''}{bound} number"
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        raise ValueError(f"{function}: {name} must be {expected}, got {_short(value)}.")
    if isinstance(value, (np.ndarray, jax.Array, np.generic)):
        if np.ndim(value) != 0:
            raise ValueError(f"{function}: {name} must be {expected} (a scalar), got an array of shape {np.shape(value)}.")
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)) or np.issubdtype(
            value.dtype, np.bool_
        ):
            raise ValueError(f"{function}: {name} must be {expected}, got dtype {value.dtype}.")
    elif not isinstance(value, (int, float)):
        raise ValueError(f"{function}: {name} must be {expected}, got {_short(value)}.")
    number = float(value)
    if (
        (finite and not math.isfinite(number))
        or math.isnan(number)
        or (positive and not number > 0)
        or (nonnegative and not number >= 0)
    ):
        raise ValueError(f"{function}: {name} must be {expected}, got {number!r}.")
    return number


def check_callable(function: str, name: str, value: Any, what: str = "a callable params -> scalar loss") -> None:
    if not callable(value):
        raise ValueError(f"{function}: {name} must be {what}, got {_short(value)}.")


def leaf_dtype(leaf: Any) -> np.dtype | None:
    if isinstance(leaf, (bool, np.bool_)):
        return np.dtype(bool)
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic, float, complex, int)):
        return jnp.result_type(leaf)
    return None


def check_params(function: str, name: str, params: Any, *, allow_complex: bool = True) -> None:
    """``params`` must hold at least one leaf, every leaf a floating-point (or complex) array."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        raise ValueError(
            f"{function}: {name} has no array leaves (got {_short(params)}); pass a pytree of floating-point arrays."
        )
    kinds = "floating-point or complex" if allow_complex else "real floating-point"
    for path, leaf in leaves:
        dtype = leaf_dtype(leaf)
        ok = dtype is not None and (
            jnp.issubdtype(dtype, jnp.floating) or (allow_complex and jnp.issubdtype(dtype, jnp.complexfloating))
        )
        if not ok:
            where = jax.tree_util.keystr(path) or "the root"
            found = f"dtype {dtype}" if dtype is not None else f"a {type(leaf).__name__}"
            raise ValueError(
                f"{function}: {name} must hold {kinds} arrays, but the leaf at {where} is {found}; "
                "cast it to a float dtype or keep it out of the parameters."
            )


def check_key(function: str, key: Any) -> jax.Array:
    """A PRNG key (new-style ``jax.random.key`` or a raw ``uint32[2]`` from ``PRNGKey``); ``None`` is ``key(0)``."""
    if key is None:
        return jax.random.key(0)
    if isinstance(key, jax.Array) or is_traced(key):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return key
    raise ValueError(f"{function}: key must be a single PRNG key such as jax.random.key(0), got {_short(key)}.")


def split_complex(tree: Any) -> Any:
    """Complex leaves as real arrays with a trailing axis ``(real, imag)``; real leaves unchanged."""
    return jax.tree.map(lambda x: jnp.stack([x.real, x.imag], -1) if jnp.iscomplexobj(x) else x, tree)


def merge_complex(template: Any, tree: Any) -> Any:
    """Undo :func:`split_complex`, with ``template`` telling which leaves were complex (dtype only)."""

    def merge(like, x):
        if jnp.iscomplexobj(like):
            return jax.lax.complex(x[..., 0], x[..., 1]).astype(jnp.result_type(like))
        return x

    return jax.tree.map(merge, template, tree)


def has_complex(tree: Any) -> bool:
    return any(jnp.iscomplexobj(leaf) for leaf in jax.tree.leaves(tree))


def any_nonfinite(tree: Any) -> bool:
    """Whether a concrete pytree has a non-finite entry (``False`` for traced values)."""
    leaves = jax.tree.leaves(tree)
    if any(is_traced(leaf) for leaf in leaves):
        return False
    return not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)


def checked_value(function: str, value_fn: Any) -> Any:
    """``value_fn`` whose output is checked (at trace time) to be a real floating scalar."""
    return lambda params: check_scalar_loss(function, "value_fn", value_fn(params))
