"""The Hessian ``∇²f`` seen through Hessian-vector products only.

``∇²f(θ) v`` is one forward-over-reverse pass (``jax.jvp`` of ``jax.grad``),
about the cost of two gradients, so nothing here forms the ``n × n`` matrix:

- :func:`extreme_eigenvalues` / :func:`lanczos`: the smallest and largest
  eigenvalues by Lanczos with full reorthogonalisation;
- :func:`hutchinson_trace`: ``tr ∇²f = E[vᵀ∇²f v]`` over Rademacher probes;
- :func:`spectrum_along` / :func:`sharpness`: the extremes at every point of a
  trajectory;
- :func:`gd_error_bound`: Elkabetz & Cohen's (NeurIPS 2021) bound on the
  distance between gradient descent and gradient flow,
  ``‖θ(t) - θ_{t/η}‖ ≲ η t exp(∫₀ᵗ λ_min⁻(∇²f(θ(t'))) dt')``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from flowopt.analysis._functions import as_partial
from flowopt.oracle import Params

ValueFn = Callable[[Params], jax.Array]


def hessian_vector_product(value_fn: ValueFn, params: Params, vector: Params) -> Params:
    """``∇²f(params) · vector`` by forward-over-reverse differentiation, as a pytree like ``params``."""
    return jax.jvp(jax.grad(value_fn), (params,), (vector,))[1]


class LanczosResult(NamedTuple):
    """Ritz values of ``m`` Lanczos steps and their a-posteriori error bounds.

    Attributes:
      ritz_values: ``(m,)`` eigenvalues of the tridiagonal ``T_m``, ascending.
      residuals: ``(m,)`` norms ``‖H y_i - θ_i y_i‖`` of the Ritz pairs; ``H``
        has an eigenvalue within ``residuals[i]`` of ``ritz_values[i]``.
    """

    ritz_values: jax.Array
    residuals: jax.Array


def lanczos(
    matvec: Callable[[jax.Array], jax.Array],
    dimension: int,
    num_iterations: int,
    key: jax.Array,
    dtype: jnp.dtype = jnp.float32,
) -> LanczosResult:
    """Lanczos tridiagonalisation of a symmetric operator with full reorthogonalisation.

    ``q_{j+1} β_j = H q_j - Σ_{i≤j} (q_iᵀ H q_j) q_i`` with two classical
    Gram–Schmidt passes against every previous ``q_i``, so the basis stays
    orthogonal to rounding and no ghost eigenvalues appear. When the Krylov
    space becomes invariant (``β_j`` at rounding level) the iteration restarts
    from a random vector orthogonal to the basis with ``β_j = 0``, which keeps
    ``T_m`` exact. Paige (1972); Golub & Van Loan, *Matrix Computations*, §10.1.

    Args:
      matvec: ``v -> H v`` on flat vectors of length ``dimension``.
      dimension: ``n``; ``num_iterations`` is capped at ``n``.
      num_iterations: ``m``, static; memory is ``m × n``.
      key: PRNG key for the starting vector and restarts.
      dtype: floating dtype of the basis.
    """
    return _lanczos_jit(matvec, int(dimension), int(num_iterations), key, jnp.dtype(dtype))


def _lanczos(matvec, dimension: int, num_iterations: int, key: jax.Array, dtype) -> LanczosResult:
    steps = min(int(num_iterations), int(dimension))
    if steps < 1:
        raise ValueError(f"num_iterations and the dimension must be at least 1, got {num_iterations}, {dimension}.")
    eps = jnp.finfo(dtype).eps

    def random_unit(index: jax.Array, basis: jax.Array) -> jax.Array:
        vector = jax.random.normal(jax.random.fold_in(key, index), (dimension,), dtype)
        for _ in range(2):
            vector = vector - basis.T @ (basis @ vector)
        return vector / jnp.linalg.norm(vector)

    def body(j, carry):
        basis, alpha, beta, q, scale = carry
        basis = basis.at[j].set(q)
        w = matvec(q).astype(dtype)
        alpha = alpha.at[j].set(jnp.vdot(q, w))
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        norm = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(alpha[j]) + norm)
        breakdown = norm <= 10.0 * jnp.sqrt(dimension) * eps * scale
        q_next = jnp.where(breakdown, random_unit(j + 1, basis), w / jnp.where(breakdown, 1.0, norm))
        beta = beta.at[j].set(jnp.where(breakdown, 0.0, norm))
        return basis, alpha, beta, q_next, scale

    basis = jnp.zeros((steps, dimension), dtype)
    start = random_unit(0, basis)
    init = (basis, jnp.zeros(steps, dtype), jnp.zeros(steps, dtype), start, jnp.zeros((), dtype))
    _, alpha, beta, _, _ = jax.lax.fori_loop(0, steps, body, init)
    tridiagonal = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
    ritz_values, ritz_vectors = jnp.linalg.eigh(tridiagonal)
    residual_coupling = beta[-1] if steps < dimension else jnp.zeros((), dtype)
    return LanczosResult(ritz_values, jnp.abs(residual_coupling * ritz_vectors[-1]))


_lanczos_jit = jax.jit(_lanczos, static_argnums=(0, 1, 2, 4))


def _flat_hessian_operator(value_fn: ValueFn, params: Params):
    flat, unravel = ravel_pytree(params)
    grad = jax.grad(value_fn)

    def matvec(vector: jax.Array) -> jax.Array:
        return ravel_pytree(jax.jvp(grad, (params,), (unravel(vector.astype(flat.dtype)),))[1])[0]

    return matvec, flat.size, flat.dtype


def extreme_eigenvalues(
    value_fn: ValueFn,
    params: Params,
    num_iterations: int = 64,
    key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``(λ_min, λ_max)`` of ``∇²f(params)`` by :func:`lanczos` on Hessian-vector products.

    Accuracy: the estimates are Ritz values, so (to rounding)
    ``λ_min ≤ λ̂_min ≤ λ̂_max ≤ λ_max``: the extremes are approached from
    inside. The error of ``λ̂_max`` is at most ``(λ_max - λ_min)·(tan∠(q_0, u_max) /
    C_{m-1}(1 + 2γ))²`` with ``C`` the Chebyshev polynomial and
    ``γ = (λ_max - λ_2)/(λ_2 - λ_min)`` the relative gap (Kaniel–Paige–Saad),
    likewise for ``λ̂_min``: geometric in ``m``, fast for isolated extremes.
    With ``m ≥ n`` (or ``m`` at least the number of distinct eigenvalues) the
    result is exact up to about ``√n·ε·‖∇²f‖``. For a computable certificate
    use :func:`lanczos`, whose residuals bound the distance to an eigenvalue.
    In float64 the defaults reach 1e-4 relative agreement with a dense
    ``eigh`` on the small MLPs and quadratics of the test suite.

    Args:
      value_fn: ``params -> scalar``, twice differentiable; a
        ``jax.tree_util.Partial`` is traced through (its bound data do not
        trigger recompilation).
      params: any pytree of floating arrays.
      num_iterations: Lanczos steps ``m`` (static; capped at the parameter count).
      key: PRNG key for the start vector; ``jax.random.key(0)`` by default.
    """
    key = jax.random.key(0) if key is None else key
    return _extreme_eigenvalues(as_partial(value_fn), params, key, num_iterations=int(num_iterations))


@functools.partial(jax.jit, static_argnames=("num_iterations",))
def _extreme_eigenvalues(value_fn, params, key, *, num_iterations):
    matvec, dimension, dtype = _flat_hessian_operator(value_fn, params)
    result = _lanczos(matvec, dimension, num_iterations, key, dtype)
    return result.ritz_values[0], result.ritz_values[-1]


class TraceEstimate(NamedTuple):
    """A Monte-Carlo estimate and its standard error (sample std / √samples)."""

    trace: jax.Array
    standard_error: jax.Array


def hutchinson_trace(
    value_fn: ValueFn,
    params: Params,
    num_samples: int = 64,
    key: jax.Array | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate ``tr ∇²f ≈ (1/S) Σ_s v_sᵀ ∇²f v_s`` with Rademacher ``v_s``.

    Unbiased, with variance ``2(‖∇²f‖_F² - Σ_i (∇²f)_ii²)/S`` (Hutchinson 1989).
    Probes are drawn one at a time (memory of one Hessian-vector product).
    """
    if int(num_samples) < 2:
        raise ValueError(f"num_samples must be at least 2 to estimate an error, got {num_samples}.")
    key = jax.random.key(0) if key is None else key
    return _hutchinson_trace(as_partial(value_fn), params, key, num_samples=int(num_samples))


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _hutchinson_trace(value_fn, params, key, *, num_samples):
    matvec, dimension, dtype = _flat_hessian_operator(value_fn, params)

    def quadratic_form(sample_key: jax.Array) -> jax.Array:
        probe = jax.random.rademacher(sample_key, (dimension,), dtype)
        return jnp.vdot(probe, matvec(probe))

    samples = jax.lax.map(quadratic_form, jax.random.split(key, num_samples))
    return TraceEstimate(samples.mean(), samples.std(ddof=1) / jnp.sqrt(samples.size))


class ExtremeEigenvalues(NamedTuple):
    """Extreme Hessian eigenvalues at each point of a trajectory (arrays over its leading axis)."""

    lambda_min: jax.Array
    lambda_max: jax.Array


def spectrum_along(
    value_fn: ValueFn,
    trajectory: Params,
    num_iterations: int = 64,
    key: jax.Array | None = None,
) -> ExtremeEigenvalues:
    """:func:`extreme_eigenvalues` at every point of ``trajectory``.

    One compiled Lanczos run (shared with :func:`extreme_eigenvalues`) is
    called per point, so memory stays that of a single point.

    Args:
      trajectory: a pytree like the parameters with a leading time axis on
        every leaf, e.g. ``gradient_flow(...).params`` or stacked iterates.
    """
    leaves = jax.tree.leaves(trajectory)
    lengths = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if len(lengths) != 1 or None in lengths:
        raise ValueError(f"spectrum_along: every leaf needs the same leading time axis, got lengths {lengths}.")
    (length,) = lengths
    pairs = [
        extreme_eigenvalues(value_fn, jax.tree.map(lambda x: x[k], trajectory), num_iterations, key)
        for k in range(length)
    ]
    return ExtremeEigenvalues(jnp.stack([low for low, _ in pairs]), jnp.stack([high for _, high in pairs]))


def sharpness(
    value_fn: ValueFn,
    trajectory: Params,
    num_iterations: int = 64,
    key: jax.Array | None = None,
) -> jax.Array:
    """The sharpness ``λ_max(∇²f)`` at every point of a trajectory (leading time axis).

    Gradient descent with step ``η`` is stable on a quadratic only while
    ``λ_max < 2/η`` (see :func:`flowopt.analysis.stability_interval`).
    """
    return spectrum_along(value_fn, trajectory, num_iterations, key).lambda_max


class ErrorBound(NamedTuple):
    """Elkabetz & Cohen's GF–GD bound along a trajectory (arrays over time).

    Attributes:
      negative_curvature: ``∫₀ᵗ λ_min⁻ dt'`` with ``λ_min⁻ = max(-λ_min, 0)``.
      bound: ``η t exp(∫₀ᵗ λ_min⁻ dt')``, the shape of the bound (its
        constant, which depends on the gradient's smoothness, is left out).
    """

    negative_curvature: jax.Array
    bound: jax.Array


def gd_error_bound(times: jax.Array, lambda_min: jax.Array, learning_rate: float) -> ErrorBound:
    """Evaluate ``η t exp(∫₀ᵗ λ_min⁻(∇²f(θ(t'))) dt')`` on the given times.

    The seed result (Elkabetz & Cohen, *Continuous vs. Discrete Optimization
    of Deep Neural Networks*, NeurIPS 2021) bounds the gradient-descent error
    by ``η t exp(-∫ λ_min dt)``; only negative curvature makes the two
    trajectories diverge, so the nonconvexity ``λ_min⁻`` is integrated here
    (trapezoid rule, cumulative from ``times[0]``), e.g. with ``lambda_min``
    from :func:`spectrum_along` on the flow ``θ(t)``.
    """
    times = jnp.asarray(times)
    lambda_min = jnp.asarray(lambda_min)
    if times.ndim != 1 or times.shape != lambda_min.shape:
        raise ValueError(
            f"times and lambda_min must be 1-D of equal length, got shapes {times.shape} and {lambda_min.shape}."
        )
    negative = jnp.maximum(-lambda_min, 0.0)
    pieces = 0.5 * (negative[1:] + negative[:-1]) * jnp.diff(times)
    integral = jnp.concatenate([jnp.zeros(1, pieces.dtype), jnp.cumsum(pieces)])
    return ErrorBound(integral, learning_rate * (times - times[0]) * jnp.exp(integral))
