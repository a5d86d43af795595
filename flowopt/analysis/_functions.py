"""Pass user functions through ``jax.jit`` as pytrees, so compiled solvers are reused."""

from __future__ import annotations

from collections.abc import Callable

from jax.tree_util import Partial


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
