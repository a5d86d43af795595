"""The gradient oracle: how an integrator evaluates ``∇f`` away from ``params``.

flowopt follows optax's convention for extra arguments to ``update``: the
caller passes ``value_fn`` (params -> scalar loss, differentiated here) or
``grad_fn`` (params -> gradient pytree, for custom gradients), never both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

Params = Any
GradFn = Callable[[Params], Params]


def resolve_oracle(
    method: str,
    params: Params | None,
    value_fn: Callable[[Params], jax.Array] | None,
    grad_fn: GradFn | None,
    *,
    required: bool = True,
) -> GradFn | None:
    """Turn the ``value_fn``/``grad_fn`` keyword arguments into a checked gradient oracle.

    With ``required=False`` (a method that makes no oracle calls) the result
    is ``None``, after the same check that not both oracles are given.

    Raises:
      ValueError: if both or (when required) neither oracle is given, if ``params`` is missing,
        or (when the oracle is first called) if ``value_fn`` is not scalar or
        the oracle's output does not match the structure of ``params``.
    """
    if value_fn is not None and grad_fn is not None:
        raise ValueError(
            f"{method}: pass either value_fn or grad_fn to update(), not both."
        )
    if not required:
        return None
    if value_fn is None and grad_fn is None:
        raise ValueError(
            f"{method} evaluates the gradient at intermediate points and needs an "
            "oracle: call update(grads, state, params, value_fn=lambda p: loss(p, batch)) "
            "or pass grad_fn=."
        )
    if params is None:
        raise ValueError(f"{method}: update() needs params to evaluate the oracle.")
    if value_fn is not None:
        gradient = jax.grad(_scalar_checked(method, value_fn))
    else:
        gradient = grad_fn
    return _structure_checked(method, gradient, params)


def _scalar_checked(method: str, value_fn: Callable[[Params], jax.Array]) -> Callable:
    def checked(p: Params) -> jax.Array:
        value = value_fn(p)
        if jnp.ndim(value) != 0:
            raise ValueError(
                f"{method}: value_fn must return a scalar loss, got shape {jnp.shape(value)}."
            )
        return value

    return checked


def _structure_checked(method: str, gradient: GradFn, params: Params) -> GradFn:
    """Check once per trace that the oracle's output has the layout of ``params``."""
    expected = jax.tree.structure(params)
    expected_shapes = [jnp.shape(x) for x in jax.tree.leaves(params)]

    def oracle(p: Params) -> Params:
        grads = gradient(p)
        if jax.tree.structure(grads) != expected:
            raise ValueError(
                f"{method}: the oracle returned a pytree with structure "
                f"{jax.tree.structure(grads)}, expected the structure of params {expected}."
            )
        shapes = [jnp.shape(x) for x in jax.tree.leaves(grads)]
        if shapes != expected_shapes:
            raise ValueError(
                f"{method}: the oracle returned leaves of shapes {shapes}, "
                f"expected the shapes of params {expected_shapes}."
            )
        return grads

    return oracle


def check_updates_match(method: str, updates: optax.Updates, params: Params | None) -> None:
    """Check that the incoming gradient ``updates`` has the layout of ``params``."""
    if params is None:
        return
    if jax.tree.structure(updates) != jax.tree.structure(params):
        raise ValueError(
            f"{method}: the gradient passed to update() has structure "
            f"{jax.tree.structure(updates)}, params have {jax.tree.structure(params)}."
        )
