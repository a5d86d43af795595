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
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flowopt.analysis._functions import as_partial
from flowopt.core.checks import check_callable, check_float_tree, check_integer, check_non_negative, is_concrete, leaf_dtype
from flowopt.core.integrator import skipped_steps as flowopt_skipped_steps
from flowopt.core.oracle import resolve_oracle
from flowopt.core.trees import tree_all_finite
from flowopt.core.types import GradFn, Params

Where = Callable[[tuple, jax.Array], bool] | Params | None


MAX_STEPS = 10**8  # more iterates than any study needs; beyond it a typo costs minutes and gigabytes
_MAX_TRAJECTORY_BYTES = 16 * 2**30


def step_times(learning_rate: optax.ScalarOrSchedule, num_steps: int) -> jax.Array:
    """The flow times ``t_k = Σ_{i<k} η_i`` of iterates ``k = 0..num_steps`` (``kη`` for a constant).

    Steps must be finite and nonnegative: a concrete constant or schedule value
    that is not is a ``ValueError`` naming the first offending step (flowopt's
    optimizers skip such steps, so they have no flow time).
    """
    name = "step_times"
    num_steps = check_integer("num_steps", num_steps, 0, MAX_STEPS, where=name, static_args=False)
    counts = jnp.arange(num_steps, dtype=jnp.int32)
    if callable(learning_rate):
        try:
            steps = jax.vmap(learning_rate)(counts)
        except Exception as error:
            raise ValueError(
                f"{name}: the learning_rate schedule could not be evaluated on int32 step counts: {type(error).__name__}: {error}"
            ) from None
        if (
            jnp.shape(steps) != (num_steps,)
            or not jnp.issubdtype(jnp.result_type(steps), jnp.integer)
            and not jnp.issubdtype(jnp.result_type(steps), jnp.floating)
        ):
            raise ValueError(
                f"{name}: the learning_rate schedule must return a real scalar per step, got "
                f"{jnp.result_type(steps)}{list(jnp.shape(steps)[1:])} values."
            )
        steps = jnp.asarray(steps)  # a real vector (checked above): the schedule's values as an array
        if is_concrete(steps):
            bad = np.flatnonzero(~(np.isfinite(np.asarray(steps, np.float64)) & (np.asarray(steps) >= 0)))
            if bad.size:
                raise ValueError(
                    f"{name}: the learning_rate schedule returned {float(steps[bad[0]])!r} at step {int(bad[0])}; "
                    "steps must be finite and nonnegative."
                )
    else:
        check_non_negative("learning_rate", learning_rate, where=name)
        steps = jnp.full(counts.shape, learning_rate)
    steps = steps.astype(jnp.promote_types(steps.dtype, jnp.float32))
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
    transformations simply ignore it. Complex parameters follow optax's
    convention: the incoming gradient is ``conj(jax.grad(value_fn))``.

    Outside ``jit``, a run whose iterates become non-finite or whose optimizer
    skipped steps (:func:`flowopt.skipped_steps`) warns with a ``RuntimeWarning``.

    Returns:
      A pytree like ``params0`` with a leading axis of length ``num_steps + 1``.
    """
    name = "optimizer_trajectory"
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        hint = " (call it with a learning rate, e.g. flowopt.rk4(0.1))" if callable(optimizer) else ""
        raise ValueError(f"{name}: optimizer must be an optax.GradientTransformation{hint}, got {optimizer!r:.80}.")
    if (value_fn is None) == (grad_fn is None):
        raise ValueError(f"{name}: pass exactly one of value_fn and grad_fn.")
    if value_fn is not None:
        check_callable("value_fn", value_fn, where=name)
    else:
        check_callable("grad_fn", grad_fn, "a callable params -> gradient pytree", where=name)
    if params0 is None:
        raise ValueError(f"{name}: params0 is None; pass the initial parameters (a pytree of floating arrays).")
    check_float_tree("params0", params0, where=name, nonempty=True)
    num_steps = check_integer("num_steps", num_steps, 0, MAX_STEPS, where=name, static_args=False)
    size = sum(jnp.size(leaf) * jnp.result_type(leaf).itemsize for leaf in jax.tree.leaves(params0))
    if (num_steps + 1) * size > _MAX_TRAJECTORY_BYTES:
        raise ValueError(
            f"{name}: num_steps = {num_steps} would store {(num_steps + 1) * size / 2**30:.0f} GiB of iterates "
            f"(at most {_MAX_TRAJECTORY_BYTES // 2**30} GiB); run fewer steps or keep fewer parameters."
        )
    optimizer = optax.with_extra_args_support(optimizer)
    iterates, state, start_finite = _run(optimizer, as_partial(value_fn), as_partial(grad_fn), params0, num_steps=num_steps)
    if is_concrete(start_finite):
        if not bool(start_finite):
            raise ValueError(f"{name}: the gradient at params0 is not finite (value_fn or grad_fn returns NaN or inf there).")
        skipped = int(flowopt_skipped_steps(state))
        if skipped:
            warnings.warn(
                f"{name}: the optimizer skipped {skipped} of {num_steps} steps (a non-finite or negative step "
                "size, or a non-finite increment); those iterates repeat the previous one.",
                RuntimeWarning,
                stacklevel=2,
            )
        finite = _finite_per_step(iterates)
        if not bool(np.all(finite)):
            first = int(np.argmin(finite))
            warnings.warn(
                f"{name}: the iterates are not finite from step {first} on (the optimizer diverged).",
                RuntimeWarning,
                stacklevel=2,
            )
    return iterates


def _finite_per_step(stacked: Params) -> np.ndarray:
    leaves = jax.tree.leaves(stacked)
    return np.all(np.stack([np.isfinite(np.asarray(leaf)).reshape(leaf.shape[0], -1).all(axis=1) for leaf in leaves]), axis=0)


@functools.partial(jax.jit, static_argnames=("optimizer", "num_steps"))
def _run(optimizer, value_fn, grad_fn, params0, *, num_steps):
    gradient = resolve_oracle("optimizer_trajectory", params0, value_fn, grad_fn)
    assert gradient is not None  # required (the default): resolve_oracle raises rather than return None
    oracle = {"value_fn": value_fn} if grad_fn is None else {"grad_fn": grad_fn}

    def step(carry, _):
        params, state = carry
        updates, state = optimizer.update(gradient(params), state, params, **oracle)
        params = optax.apply_updates(params, updates)
        return (params, state), params

    (_, state), iterates = jax.lax.scan(step, (params0, optimizer.init(params0)), length=num_steps)
    stacked = jax.tree.map(lambda x0, xs: jnp.concatenate([x0[None], xs]), params0, iterates)
    return stacked, state, tree_all_finite(gradient(params0))


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
    name = "trajectory_distance"
    paths_and_leaves, structure = jax.tree_util.tree_flatten_with_path(trajectory)
    reference_leaves, reference_structure = jax.tree.flatten(reference)
    if not paths_and_leaves:
        raise ValueError(f"{name}: trajectory has no array leaves (got {trajectory!r:.80}).")
    if structure != reference_structure:
        raise ValueError(f"{name}: trajectory and reference differ in structure: {structure} vs {reference_structure}.")
    for (path, leaf), other in zip(paths_and_leaves, reference_leaves):
        where_ = jax.tree_util.keystr(path) or "the root"
        for label, value in (("trajectory", leaf), ("reference", other)):
            dtype = leaf_dtype(value)
            if dtype is None or not (jnp.issubdtype(dtype, jnp.number)):
                found = f"dtype {dtype}" if dtype is not None else f"a {type(value).__name__}"
                raise ValueError(f"{name}: the {label} leaf at {where_} is {found}, expected a numeric array.")
        if jnp.ndim(leaf) == 0:
            raise ValueError(f"{name}: the leaf at {where_} is a scalar; leaves need a leading time axis (stacked iterates).")
        if jnp.shape(leaf) != jnp.shape(other):
            raise ValueError(
                f"{name}: leaf {where_} has shape {jnp.shape(leaf)} in the "
                f"trajectory and {jnp.shape(other)} in the reference (times must match)."
            )
    selected = _selection(paths_and_leaves, structure, where)
    if not any(selected):
        raise ValueError(f"{name}: `where` selects no parameters.")
    lengths = {jnp.shape(leaf)[0] for (_, leaf), keep in zip(paths_and_leaves, selected) if keep}
    if len(lengths) != 1:
        raise ValueError(f"{name}: leaves disagree on the number of times: {sorted(lengths)}.")

    def squared(leaf, other):
        dtype = jnp.promote_types(jnp.result_type(leaf, other), jnp.float32)  # no integer wrap-around
        difference = jnp.asarray(leaf, dtype) - jnp.asarray(other, dtype)
        return jnp.sum(jnp.square(jnp.abs(difference)).reshape(difference.shape[0], -1), axis=1)  # |·|² for complex

    squares = [squared(leaf, other) for (_, leaf), other, keep in zip(paths_and_leaves, reference_leaves, selected) if keep]
    distance = jnp.sqrt(sum(squares))
    if is_concrete(distance) and not bool(jnp.all(jnp.isfinite(distance))):
        first = int(np.argmin(np.isfinite(np.asarray(distance))))
        warnings.warn(
            f"{name}: the distance is not finite from time index {first} on (the trajectory or the reference "
            "holds NaN or inf there).",
            RuntimeWarning,
            stacklevel=2,
        )
    return distance


def _selection(paths_and_leaves: list[tuple[Any, jax.Array]], structure, where: Where) -> list[bool]:
    if where is None:
        return [True] * len(paths_and_leaves)
    if callable(where):
        selected = []
        for path, leaf in paths_and_leaves:
            keep = where(path, leaf[0])
            if not _is_boolean(keep):
                raise ValueError(
                    f"trajectory_distance: `where` must return True or False for each leaf, got {keep!r:.60} for "
                    f"the leaf at {jax.tree_util.keystr(path) or 'the root'}."
                )
            selected.append(bool(keep))
        return selected
    mask, mask_structure = jax.tree.flatten(where)
    if mask_structure != structure:
        raise ValueError(f"trajectory_distance: the mask `where` has structure {mask_structure}, the parameters {structure}.")
    for (path, _), keep in zip(paths_and_leaves, mask):
        if not _is_boolean(keep):
            raise ValueError(
                f"trajectory_distance: the mask `where` must hold True or False per leaf, got {keep!r:.60} at "
                f"{jax.tree_util.keystr(path) or 'the root'}."
            )
    return [bool(keep) for keep in mask]


def _is_boolean(value: Any) -> bool:
    """A Python or NumPy bool, or a concrete 0-d boolean array."""
    if isinstance(value, (bool, np.bool_)):
        return True
    return isinstance(value, (np.ndarray, jax.Array)) and is_concrete(value) and value.shape == () and value.dtype == bool
