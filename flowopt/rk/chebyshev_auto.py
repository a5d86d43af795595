"""RKC with its stage count chosen from a running estimate of the sharpness ``λ_max(∇²f)``.

An ``s``-stage Chebyshev method is stable while ``h·λ_max ≤ ℓ_s``
(:mod:`flowopt.rk.chebyshev`). This integrator keeps an estimate ``λ̂`` of
the largest Hessian eigenvalue and takes, at every step, the fewest stages
with::

    h·λ̂ ≤ safety · ℓ_s,          s ∈ [order, max_stages],

so a flat region costs one or two gradients a step and a sharp one more.
Where even ``max_stages`` do not reach, the step is shortened to
``h' = safety·ℓ_max / λ̂`` and counted in :attr:`ChebyshevAutoState.capped`.
A step taken under an older estimate whose increment is not finite or is
longer than ``2‖h∇f(θ_n)‖`` re-estimates at once and retries, its wasted
gradients counted: on a convex quadratic a step inside the stability
interval has ``|1 - R_s(-hλ)| ≤ 2hλ`` in every eigendirection, so it is never
that long, and a longer one means the curvature grew since the estimate. A
step that fails under a fresh estimate is skipped by
:func:`~flowopt.as_optimizer` like any non-finite step.

**The estimate.** Every ``estimate_every`` steps (the first step included),
``m`` Lanczos iterations on Hessian-vector products at the current
parameters (:func:`flowopt.core.lanczos.lanczos_tridiagonal`, from a random
start) give ``λ̂ = θ_m + r_m``: the largest Ritz value plus its residual
bound. Ritz values approach ``λ_max`` from below; the residual is the margin
that covers an unconverged estimate. A product ``∇²f·v`` is ``jax.jvp`` of
the oracle's gradient (forward over reverse), so the oracle must be
differentiable once more.

**Cost convention.** One Hessian-vector product counts as **two gradient
evaluations** (a forward-over-reverse pass costs about two gradients;
Pearlmutter 1994): an estimate adds ``2m`` to the state's ``oracle_evals``,
next to the ``s - 1`` oracle calls of the step, so
:func:`flowopt.oracle_evaluations` and the training loop's gradient count
include it. :attr:`ChebyshevAutoState.hvp_evals` holds the products alone.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from flowopt.core.checks import check_integer, check_range, is_concrete
from flowopt.core.integrator import Integrator
from flowopt.core.lanczos import HVP_GRADIENTS, lanczos_tridiagonal
from flowopt.core.trees import merge_complex, real_dtype, real_size, split_complex, tree_all_finite
from flowopt.core.types import GradFn, Params
from flowopt.rk.chebyshev import chebyshev_increment, chebyshev_method, coefficient_table

MAX_AUTO_STAGES = 400
"""The largest ``max_stages`` (its coefficient tables take ``16·max_stages²`` bytes)."""


class ChebyshevAutoState(NamedTuple):
    """What the stage-count choice keeps between steps (scalars).

    Attributes:
      sharpness: ``λ̂``, the latest estimate of ``λ_max(∇²f)`` (0 before the first).
      stages: ``s`` of the last step.
      step_size: the step the last step took (the schedule's ``h``, or less where capped).
      since_estimate: steps since the last estimate (an estimate is due at ``estimate_every``).
      estimates: estimates made.
      hvp_evals: Hessian-vector products made (each counted as two gradients in ``oracle_evals``).
      capped: steps shortened because ``max_stages`` were not enough.
    """

    sharpness: jax.Array
    stages: jax.Array
    step_size: jax.Array
    since_estimate: jax.Array
    estimates: jax.Array
    hvp_evals: jax.Array
    capped: jax.Array

    def diagnostics(self) -> dict[str, jax.Array]:
        """The numbers :func:`flowopt.step_diagnostics` reports for this state."""
        return {name: value for name, value in self._asdict().items() if name != "since_estimate"}


@functools.lru_cache(maxsize=16)
def _tables(order: int, damping: float | None, max_stages: int) -> tuple[np.ndarray, np.ndarray]:
    """``(coefficients, intervals)``: the ``(max_stages + 1)²×4`` recurrence tables of every ``s`` and ``ℓ_s``.

    Row ``s`` of ``coefficients`` is :func:`coefficient_table` of the
    ``s``-stage method padded with zeros; ``intervals[s] = ℓ_s`` (0 for ``s < order``).
    """
    coefficients = np.zeros((max_stages + 1, max_stages + 1, 4))
    intervals = np.zeros(max_stages + 1)
    for s in range(order, max_stages + 1):
        method = chebyshev_method(s, order, damping)
        coefficients[s, : s + 1] = coefficient_table(method)
        intervals[s] = method.stability_interval
    coefficients.flags.writeable = intervals.flags.writeable = False
    return coefficients, intervals


def estimate_sharpness(oracle: GradFn, params: Params, iterations: int, key: jax.Array) -> jax.Array:
    """``λ̂``: the largest Ritz value plus its residual after ``iterations`` Lanczos steps on ``∇²f(params)``.

    Complex leaves are pairs of real coordinates (the oracle's gradient of a
    complex leaf is ``∂f/∂x + i ∂f/∂y``, so its derivative along ``v`` is the
    real Hessian applied to ``(Re v, Im v)``). It makes
    :func:`sharpness_products` Hessian-vector products.
    """
    flat, unravel = ravel_pytree(split_complex(params))

    def matvec(vector: jax.Array) -> jax.Array:
        direction = merge_complex(params, unravel(vector.astype(flat.dtype)))
        return ravel_pytree(split_complex(jax.jvp(oracle, (params,), (direction,))[1]))[0]

    result = lanczos_tridiagonal(matvec, flat.size, iterations, key, jnp.promote_types(flat.dtype, jnp.float32))
    return result.ritz_values[-1] + result.residuals[-1]


def sharpness_products(params: Params, iterations: int) -> int:
    """The Hessian-vector products one :func:`estimate_sharpness` at ``params`` makes: ``min(iterations, n)``."""
    return min(iterations, real_size(params))


def chebyshev_auto_integrator(
    order: int = 1,
    damping: float | None = None,
    *,
    safety: float | jax.Array = 0.9,
    max_stages: int = 100,
    estimate_every: int | jax.Array = 100,
    lanczos_iterations: int = 16,
    seed: int = 0,
) -> Integrator:
    """RKC of ``order`` whose stage count follows the sharpness estimate, as an :class:`~flowopt.Integrator`.

    See the module docstring. ``safety`` and ``estimate_every`` may be traced
    (``optax.inject_hyperparams``); ``order``, ``damping``, ``max_stages``,
    ``lanczos_iterations`` and ``seed`` fix the tables and the program.

    Raises:
      ValueError: ``order`` not 1 or 2, ``max_stages`` not an integer in
        ``order..MAX_AUTO_STAGES``, ``safety`` outside ``(0, 1]``,
        ``estimate_every`` or ``lanczos_iterations`` not a positive integer,
        a ``damping`` :func:`~flowopt.rk.chebyshev.chebyshev_method` refuses.
    """
    where = "rkc_auto"
    order = check_integer("order", order, 1, 2, where=where)
    max_stages = check_integer("max_stages", max_stages, order, MAX_AUTO_STAGES, where=where)
    lanczos_iterations = check_integer("lanczos_iterations", lanczos_iterations, 1, 10_000, where=where)
    seed = check_integer("seed", seed, 0, None, where=where)
    if is_concrete(estimate_every):  # under optax.inject_hyperparams it is traced
        check_integer("estimate_every", estimate_every, 1, None, where=where, static_args=False)
    check_range("safety", safety, 0.0, 1.0, high_open=False, where=where)
    chebyshev_method(max_stages, order, damping)  # refuses a damping the largest method cannot take
    coefficients, intervals = _tables(order, damping, max_stages)

    def init(params: Params) -> ChebyshevAutoState:
        zero = lambda dtype: jnp.zeros([], dtype)
        since = jnp.asarray(estimate_every, jnp.int32)  # the first step estimates
        dtype = real_dtype(params)
        return ChebyshevAutoState(zero(dtype), zero(jnp.int32), zero(dtype), since, *(zero(jnp.int32) for _ in range(3)))

    def step(oracle: GradFn | None, params: Params, k1: Params, h: jax.Array | None, state: ChebyshevAutoState):
        assert oracle is not None and h is not None  # needs_oracle is set; as_optimizer passes the schedule's step
        dtype = state.sharpness.dtype
        ell = jnp.asarray(intervals, dtype) * safety
        h = jnp.asarray(h, dtype)
        products = sharpness_products(params, lanczos_iterations)

        def estimate(index: jax.Array) -> jax.Array:
            key = jax.random.fold_in(jax.random.key(seed), index)
            return estimate_sharpness(oracle, params, lanczos_iterations, key).astype(dtype)

        def attempt(sharpness: jax.Array) -> tuple[Params, jax.Array, jax.Array, jax.Array]:
            """The step under ``sharpness``: ``(increment, stages, step taken, capped)``."""
            enough = ell >= h * jnp.maximum(sharpness, 0.0)
            capped = ~enough[-1]
            stages = jnp.where(capped, max_stages, jnp.maximum(jnp.argmax(enough), order)).astype(jnp.int32)
            taken = jnp.where(capped, ell[-1] / jnp.maximum(sharpness, jnp.finfo(dtype).tiny), h)
            table = jnp.asarray(coefficients)[stages]
            return chebyshev_increment(oracle, params, k1, taken, table, stages, order == 2), stages, taken, capped

        due = state.since_estimate >= estimate_every
        sharpness = jax.lax.cond(due, lambda: estimate(state.estimates), lambda: state.sharpness)
        increment, stages, taken, capped = attempt(sharpness)
        # A step under an older estimate that is not finite or longer than 2‖h k1‖, which no stable step on a
        # convex quadratic is, saw the curvature grow since: re-estimate here and retry once.
        too_long = optax.tree.norm(increment) > 2 * taken * optax.tree.norm(k1)
        retry = ~due & (~tree_all_finite(increment) | too_long)
        wasted = jnp.where(retry, stages - 1, 0)

        def re_estimate() -> tuple[jax.Array, tuple[Params, jax.Array, jax.Array, jax.Array]]:
            fresh = estimate(state.estimates)
            return fresh, attempt(fresh)

        sharpness, (increment, stages, taken, capped) = jax.lax.cond(
            retry, re_estimate, lambda: (sharpness, (increment, stages, taken, capped))
        )
        estimated = due | retry
        new_state = ChebyshevAutoState(
            sharpness=sharpness,
            stages=stages,
            step_size=taken,
            since_estimate=jnp.where(estimated, 1, state.since_estimate + 1).astype(jnp.int32),
            estimates=state.estimates + estimated.astype(jnp.int32),
            hvp_evals=state.hvp_evals + jnp.where(estimated, products, 0),
            capped=state.capped + capped.astype(jnp.int32),
        )
        return increment, new_state, wasted + stages - 1 + jnp.where(estimated, HVP_GRADIENTS * products, 0)

    return Integrator(name=where, init=init, step=step, needs_oracle=True)
