"""User functions as the analysis tools take them: pytrees through ``jax.jit`` (solvers compile once), checked values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jax.tree_util import Partial

from flowopt.core.oracle import check_scalar_loss


def as_partial(function: Callable | None) -> Partial | None:
    """Wrap ``function`` as a ``jax.tree_util.Partial`` (kept as is if it already is one).

    A ``Partial`` is a pytree whose leaves are its bound arguments and whose
    structure holds the function: a jitted solver taking it as an argument
    compiles once per function and traces the bound values (a learning rate,
    a batch) instead of baking them in.
    """
    if function is None or isinstance(function, Partial):
        return function
    if not callable(function):
        raise ValueError(f"expected a callable, got {type(function).__name__}.")
    return Partial(function)


def checked_value(function: str, value_fn: Any) -> Any:
    """``value_fn`` whose output is checked (at trace time) to be a real floating scalar."""
    return lambda params: check_scalar_loss(function, "value_fn", value_fn(params))
