"""The approximate proximal solve behind BDF: a few gradient steps on ``f(x) + ||x - z||² / (2βh)``.

See :mod:`flowopt.multistep.bdf` for the warm start, the backtracked inner
step, the safeguard against an inconsistent first gradient, non-finite
trials and the loop forms.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from flowopt.core.trees import tree_all_finite
from flowopt.core.types import GradFn, Params

_REJECTED_GROWTH = 1.25  # L̂ after a rejection, relative to the measured secant
_NONFINITE_SHRINK = 10.0  # step reduction after a non-finite trial gradient
_INCONSISTENT_RATIO = 10.0  # a secant against k1 this many times the oracle-only one marks k1 inconsistent


class ProximalSolution(NamedTuple):
    """Result of :func:`solve_proximal`.

    Attributes:
      params: the approximate minimiser ``x``.
      grad: ``∇f(x)``, as returned by the oracle (or the start gradient).
      curvature: the updated estimate ``L̂``.
      residual: ``||∇φ(x)|| / ||∇φ(x_0)||`` (0 when the start is exact).
      calls: oracle calls made (int32).
      finite: whether the start gradient and every trial point and oracle
        gradient of the solve were finite (a boolean scalar). When it is
        False the other fields are meaningless: the step is a fault.
    """

    params: Params
    grad: Params
    curvature: jax.Array
    residual: jax.Array
    calls: jax.Array
    finite: jax.Array


def solve_proximal(
    oracle: GradFn,
    anchor: Params,
    beta_h: jax.Array,
    start: Params,
    start_grad: Params,
    curvature: jax.Array,
    inner_steps: int,
    inner_learning_rate: float | None = None,
    inner_tolerance: float | None = None,
    *,
    unroll: bool = True,
) -> ProximalSolution:
    """Minimise ``φ(x) = f(x) + ||x - anchor||² / (2 βh)`` approximately by gradient steps.

    ``x ← x - η (∇f(x) + (x - anchor)/βh)``, starting from ``start`` whose
    gradient ``start_grad`` is known. Each step calls the oracle once, at the
    new point, at most ``inner_steps`` times; with ``inner_tolerance`` the
    loop stops once ``||∇φ(x)|| ≤ inner_tolerance · ||∇φ(start)||``. The step
    ``η`` is ``inner_learning_rate`` if given, otherwise the backtracked
    ``1 / (L̂ + 1/βh)`` described in :mod:`flowopt.multistep.bdf`. A non-finite
    ``start_grad``, trial point or oracle gradient clears the solution's
    ``finite`` flag (see "Non-finite stages" in :mod:`flowopt.multistep.bdf`); a
    ``lax.while_loop`` solve then stops at once.

    Without ``inner_tolerance`` the count is static: with ``unroll`` the
    ``inner_steps`` iterations are straight-line code, otherwise a
    ``lax.fori_loop``. With ``inner_tolerance`` they run in a
    ``lax.while_loop``. The three forms compute the same iterates; see "Loop
    form" in :mod:`flowopt.multistep.bdf` for their costs.
    """
    dtype = jnp.result_type(curvature)
    inverse = 1.0 / jnp.asarray(beta_h, dtype)
    start_estimate = jnp.asarray(curvature, dtype)
    largest_estimate = inverse / jnp.finfo(dtype).eps

    def prox_grad(x: Params, g: Params) -> Params:
        return jax.tree.map(lambda gi, xi, zi: gi + (xi - zi) * jnp.asarray(inverse, xi.dtype), g, x, anchor)

    def norm(tree: Params) -> jax.Array:
        return jnp.asarray(optax.tree_utils.tree_norm(tree), dtype)

    def secant(grad: Params, other_grad: Params, moved: jax.Array) -> jax.Array:
        changed = norm(optax.tree_utils.tree_sub(grad, other_grad))
        return jnp.where(moved > 0, changed / jnp.where(moved > 0, moved, 1), 0)

    initial_direction = prox_grad(start, start_grad)
    initial_residual = norm(initial_direction)

    def inner_step(carry):
        # rejected_trial, rejected_grad: the last rejected trial from the start point and its oracle
        # gradient. Before the first they are the start point and NaN: a secant against them is NaN
        # and compares False.
        calls, x, g, direction, residual, estimate, rejected_trial, rejected_grad, finite = carry
        if inner_learning_rate is None:
            eta = 1.0 / (estimate + inverse)
        else:
            eta = jnp.asarray(inner_learning_rate, dtype)
        trial = jax.tree.map(lambda xi, di: xi - jnp.asarray(eta, xi.dtype) * di, x, direction)
        trial_grad = oracle(trial)
        # Carried to the end only (nothing later in the solve reads it), so the chain of ands stays cheap.
        finite = finite & tree_all_finite((trial, trial_grad))
        if inner_learning_rate is not None:
            trial_direction = prox_grad(trial, trial_grad)
            return (
                calls + 1,
                trial,
                trial_grad,
                trial_direction,
                norm(trial_direction),
                estimate,
                rejected_trial,
                rejected_grad,
                finite,
            )
        along = secant(trial_grad, g, eta * residual)  # ||trial - x|| = η ||∇φ(x)||
        # The flag and the distance are norms (reductions), not chains of scalar selects (see below).
        at_start = norm(optax.tree_utils.tree_sub(x, start)) == 0
        between_trials = secant(trial_grad, rejected_grad, norm(optax.tree_utils.tree_sub(trial, rejected_trial)))
        inconsistent = at_start & (along > _INCONSISTENT_RATIO * between_trials)
        accept = (along <= estimate) | inconsistent  # False for NaN
        rejected_estimate = jnp.where(
            jnp.isfinite(along),
            _REJECTED_GROWTH * along,
            _NONFINITE_SHRINK * estimate + (_NONFINITE_SHRINK - 1) * inverse,
        )
        accepted_estimate = jnp.where(inconsistent, jnp.maximum(start_estimate, _REJECTED_GROWTH * between_trials), estimate)
        trial_direction = prox_grad(trial, trial_grad)
        choose = lambda new, old: optax.tree_utils.tree_where(accept, new, old)
        direction = choose(trial_direction, direction)
        reference = lambda new, old: optax.tree_utils.tree_where(~accept & jnp.isfinite(along) & at_start, new, old)
        return (
            calls + 1,
            choose(trial, x),
            choose(trial_grad, g),
            direction,
            # A norm (a reduction), not a select of scalars: unrolled, a chain of selects would be
            # fused into every later step, and XLA's compile time would grow quadratically.
            norm(direction),
            jnp.where(accept, accepted_estimate, jnp.minimum(rejected_estimate, largest_estimate)),
            reference(trial, rejected_trial),
            reference(trial_grad, rejected_grad),
            finite,
        )

    carry = (
        jnp.zeros([], jnp.int32),
        start,
        start_grad,
        initial_direction,
        initial_residual,
        start_estimate,
        start,
        jax.tree.map(lambda leaf: jnp.full_like(leaf, jnp.nan), start_grad),
        tree_all_finite((start, start_grad)),
    )
    if inner_tolerance is None:
        carry = jax.lax.fori_loop(0, inner_steps, lambda _, c: inner_step(c), carry, unroll=unroll)
    else:
        threshold = inner_tolerance * initial_residual

        def keep_going(carry):
            calls, _, _, _, residual, *_, finite = carry
            return (calls < inner_steps) & (residual > threshold) & finite

        carry = jax.lax.while_loop(keep_going, inner_step, carry)
    calls, x, g, _, residual, estimate, *_, finite = carry
    relative = jnp.where(initial_residual > 0, residual / jnp.where(initial_residual > 0, initial_residual, 1), 0)
    return ProximalSolution(x, g, estimate, relative, calls, finite)
