"""Distances between an optimizer's iterates and a reference flow at matching times.

An optimizer with steps ``η_0, η_1, ...`` is a discretisation of a flow: its
``k``-th iterate approximates ``θ(t_k)`` with ``t_k = Σ_{i<k} η_i``
(``t_k = kη`` for a constant step). The usual recipe::

    iterates = optimizer_trajectory(flowopt.euler(eta), loss, params0, num_steps)
    flow = gradient_flow(loss, params0, step_times(eta, num_steps))
    distance = trajectory_distance(iterates, flow.params)       # ‖θ_k - θ(kη)‖ per k

Passing ``modified_value_fn(loss, eta)`` to :func:`gradient_flow` instead
measures the distance to the modified flow that gradient descent follows to
second order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from flowopt.analysis._functions import as_partial
from flowopt.oracle import GradFn, Params

Where = Callable[[tuple, jax.Array], bool] | Params | None


def step_times(learning_rate: optax.ScalarOrSchedule, num_steps: int) -> jax.Array:
    """The flow times ``t_k = Σ_{i<k} η_i`` of iterates ``k = 0..num_steps`` (``kη`` for a constant)."""
    if int(num_steps) < 0:
        raise ValueError(f"num_steps must be nonnegative, got {num_steps!r}.")
    counts = jnp.arange(int(num_steps))
    steps = jax.vmap(learning_rate)(counts) if callable(learning_rate) else jnp.full(counts.shape, learning_rate)
    return jnp.concatenate([jnp.zeros(1, steps.dtype), jnp.cumsum(steps)])


def optimizer_trajectory(
    optimizer: optax.GradientTransformation,
    value_fn: Callable[[Params], jax.Array] | None,
    params0: Params,
    num_steps: int,
    *,
    grad_fn: GradFn | None = None,
) -> Params:
    """The iterates ``θ_0, ..., θ_{num_steps}`` of a full-batch ``optimizer`` run, stacked.

    Each step computes the gradient at the current parameters and calls
    ``optimizer.update(grads, state, params, value_fn=...)`` (or ``grad_fn=``),
    so flowopt's multi-stage methods get their oracle and plain optax
    transformations simply ignore it.

    Returns:
      A pytree like ``params0`` with a leading axis of length ``num_steps + 1``.
    """
    if (value_fn is None) == (grad_fn is None):
        raise ValueError("optimizer_trajectory: pass exactly one of value_fn and grad_fn.")
    if int(num_steps) < 0:
        raise ValueError(f"optimizer_trajectory: num_steps must be nonnegative, got {num_steps!r}.")
    optimizer = optax.with_extra_args_support(optimizer)
    return _run(optimizer, as_partial(value_fn), as_partial(grad_fn), params0, num_steps=int(num_steps))


@functools.partial(jax.jit, static_argnames=("optimizer", "num_steps"))
def _run(optimizer, value_fn, grad_fn, params0, *, num_steps):
    gradient = jax.grad(value_fn) if grad_fn is None else grad_fn
    oracle = {"value_fn": value_fn} if grad_fn is None else {"grad_fn": grad_fn}

    def step(carry, _):
        params, state = carry
        updates, state = optimizer.update(gradient(params), state, params, **oracle)
        params = optax.apply_updates(params, updates)
        return (params, state), params

    _, iterates = jax.lax.scan(step, (params0, optimizer.init(params0)), length=num_steps)
    return jax.tree.map(lambda x0, xs: jnp.concatenate([x0[None], xs]), params0, iterates)


def trajectory_distance(trajectory: Params, reference: Params, *, where: Where = None) -> jax.Array:
    """``‖θ_k - θ(t_k)‖₂`` at every ``k``, over all parameters or the selected ones.

    Args:
      trajectory: iterates, leaves with a leading time axis (see
        :func:`optimizer_trajectory`).
      reference: the flow at the same times, same structure and shapes
        (e.g. ``gradient_flow(...).params``).
      where: which leaves count. ``None``: all. A callable
        ``(path, leaf) -> bool`` gets each leaf's key path (as from
        ``jax.tree_util.tree_flatten_with_path``) and the leaf at the first
        time, e.g. ``lambda path, x: x.ndim == 2`` (weight matrices only) or
        ``lambda path, _: "Dense_0" in jax.tree_util.keystr(path)``. Or a
        pytree of booleans with the structure of the parameters (an optax-style mask).

    Returns:
      ``(T,)`` Euclidean distances over the selected parameters.
    """
    paths_and_leaves, structure = jax.tree_util.tree_flatten_with_path(trajectory)
    reference_leaves, reference_structure = jax.tree.flatten(reference)
    if structure != reference_structure:
        raise ValueError(
            f"trajectory_distance: trajectory and reference differ in structure: {structure} vs {reference_structure}."
        )
    for (path, leaf), other in zip(paths_and_leaves, reference_leaves):
        if jnp.shape(leaf) != jnp.shape(other):
            raise ValueError(
                f"trajectory_distance: leaf {jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)} in the "
                f"trajectory and {jnp.shape(other)} in the reference (times must match)."
            )
    selected = _selection(paths_and_leaves, structure, where)
    if not any(selected):
        raise ValueError("trajectory_distance: `where` selects no parameters.")
    lengths = {jnp.shape(leaf)[0] for (_, leaf), keep in zip(paths_and_leaves, selected) if keep}
    if len(lengths) != 1:
        raise ValueError(f"trajectory_distance: leaves disagree on the number of times: {sorted(lengths)}.")
    squares = [
        jnp.sum(jnp.square(leaf - other).reshape(leaf.shape[0], -1), axis=1)
        for (_, leaf), other, keep in zip(paths_and_leaves, reference_leaves, selected)
        if keep
    ]
    return jnp.sqrt(sum(squares))


def _selection(paths_and_leaves: list[tuple[Any, jax.Array]], structure, where: Where) -> list[bool]:
    if where is None:
        return [True] * len(paths_and_leaves)
    if callable(where):
        return [bool(where(path, leaf[0])) for path, leaf in paths_and_leaves]
    mask, mask_structure = jax.tree.flatten(where)
    if mask_structure != structure:
        raise ValueError(
            f"trajectory_distance: the mask `where` has structure {mask_structure}, the parameters {structure}."
        )
    return [bool(keep) for keep in mask]
