"""The Hessian ``∇²f`` seen through Hessian-vector products only.

``∇²f(θ) v`` is one forward-over-reverse pass (``jax.jvp`` of ``jax.grad``),
about the cost of two gradients, so nothing here forms the ``n × n`` matrix:

- :func:`extreme_eigenvalues`: the smallest and largest eigenvalues by
  Lanczos with full reorthogonalisation (:func:`flowopt.core.lanczos.lanczos`);
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
import numpy as np
from jax.flatten_util import ravel_pytree

from flowopt.analysis._functions import as_partial, checked_value
from flowopt.core.checks import (
    INT32_MAX,
    check_callable,
    check_float_tree,
    check_integer,
    check_non_negative,
    check_prng_key,
    is_concrete,
    leaf_dtype,
)
from flowopt.core.lanczos import check_basis_memory, lanczos_tridiagonal
from flowopt.core.trees import any_nonfinite, merge_complex, real_size, split_complex
from flowopt.core.types import Params

ValueFn = Callable[[Params], jax.Array]


def hessian_vector_product(value_fn: ValueFn, params: Params, vector: Params) -> Params:
    """``∇²f(params) · vector`` by forward-over-reverse differentiation, as a pytree like ``params``.

    ``vector`` must have the structure and leaf shapes of ``params`` (its leaves
    are cast to the parameters' dtypes). Complex leaves are pairs ``(x, y)`` of
    real coordinates, as in optax's convention: the result is the real Hessian
    of ``f(x + iy)`` applied to ``(Re v, Im v)``, returned as ``Hv_x + i Hv_y``.
    Outside ``jit``, a non-finite product is a ``ValueError``.
    """
    name = "hessian_vector_product"
    check_callable("value_fn", value_fn, where=name)
    check_float_tree("params", params, where=name, nonempty=True)
    if jax.tree.structure(vector) != jax.tree.structure(params):
        raise ValueError(f"{name}: vector has structure {jax.tree.structure(vector)}, params have {jax.tree.structure(params)}.")
    for (path, leaf), direction in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(vector)):
        dtype = leaf_dtype(direction)
        if dtype is None or not jnp.issubdtype(dtype, jnp.number):
            raise ValueError(f"{name}: the vector leaf at {jax.tree_util.keystr(path)} is not a numeric array.")
        if jnp.shape(direction) != jnp.shape(leaf):
            raise ValueError(
                f"{name}: the vector leaf at {jax.tree_util.keystr(path) or 'the root'} has shape "
                f"{jnp.shape(direction)}, its parameter {jnp.shape(leaf)}."
            )
        if jnp.iscomplexobj(direction) and not jnp.iscomplexobj(leaf):
            raise ValueError(f"{name}: the vector leaf at {jax.tree_util.keystr(path)} is complex, its parameter real.")
    vector = jax.tree.map(lambda v, p: jnp.asarray(v, jnp.result_type(p)), vector, params)
    real_value = lambda real: checked_value(name, value_fn)(merge_complex(params, real))
    product = jax.jvp(jax.grad(real_value), (split_complex(params),), (split_complex(vector),))[1]
    product = merge_complex(params, product)
    if any_nonfinite(product):
        raise ValueError(f"{name}: the product is not finite at params (value_fn or its derivatives are NaN or inf).")
    return product


class TraceEstimate(NamedTuple):
    """A Monte-Carlo estimate and its standard error (sample std / √samples)."""

    trace: jax.Array
    standard_error: jax.Array


class ExtremeEigenvalues(NamedTuple):
    """Extreme Hessian eigenvalues at each point of a trajectory (arrays over its leading axis)."""

    lambda_min: jax.Array
    lambda_max: jax.Array


def _flat_hessian_operator(name: str, value_fn: ValueFn, params: Params):
    """``v -> ∇²f v`` on the flat real coordinates of ``params`` (complex leaves as (x, y) pairs)."""
    flat, unravel = ravel_pytree(split_complex(params))
    grad = jax.grad(lambda v: checked_value(name, value_fn)(merge_complex(params, unravel(v))))

    def matvec(vector: jax.Array) -> jax.Array:
        return jax.jvp(grad, (flat,), (vector.astype(flat.dtype),))[1]

    return matvec, flat.size, flat.dtype


def _check_hessian_arguments(
    name: str, value_fn: ValueFn, params: Params, key, count_name: str, count, minimum: int, maximum: int
):
    check_callable("value_fn", value_fn, where=name)
    if params is None:
        raise ValueError(f"{name}: params is None; pass a pytree of floating arrays.")
    check_float_tree("params", params, where=name, nonempty=True)
    return check_integer(count_name, count, minimum, maximum, where=name, static_args=False), check_prng_key(key, where=name)


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
    use :func:`~flowopt.core.lanczos.lanczos`, whose residuals bound the distance to an eigenvalue.
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
    name = "extreme_eigenvalues"
    num_iterations, key = _check_hessian_arguments(name, value_fn, params, key, "num_iterations", num_iterations, 1, INT32_MAX)
    dimension = real_size(params)
    check_basis_memory(name, dimension, num_iterations, jnp.float64)
    low, high = _extreme_eigenvalues(as_partial(value_fn), params, key, num_iterations=num_iterations)
    if any_nonfinite((low, high)):
        raise ValueError(f"{name}: the Hessian is not finite at params (value_fn or its derivatives are NaN or inf there).")
    return low, high


@functools.partial(jax.jit, static_argnames=("num_iterations",))
def _extreme_eigenvalues(value_fn, params, key, *, num_iterations):
    matvec, dimension, dtype = _flat_hessian_operator("extreme_eigenvalues", value_fn, params)
    result = lanczos_tridiagonal(matvec, dimension, num_iterations, key, dtype)
    return result.ritz_values[0], result.ritz_values[-1]


def hutchinson_trace(value_fn: ValueFn, params: Params, num_samples: int = 64, key: jax.Array | None = None) -> TraceEstimate:
    """Hutchinson's estimate ``tr ∇²f ≈ (1/S) Σ_s v_sᵀ ∇²f v_s`` with Rademacher ``v_s``.

    Unbiased, with variance ``2(‖∇²f‖_F² - Σ_i (∇²f)_ii²)/S`` (Hutchinson 1989).
    Probes are drawn one at a time (memory of one Hessian-vector product).
    """
    name = "hutchinson_trace"
    num_samples, key = _check_hessian_arguments(
        name, value_fn, params, key, "num_samples (at least 2 to estimate an error)", num_samples, 2, MAX_SAMPLES
    )
    estimate = _hutchinson_trace(as_partial(value_fn), params, key, num_samples=num_samples)
    if any_nonfinite(estimate):
        raise ValueError(f"{name}: the Hessian is not finite at params (value_fn or its derivatives are NaN or inf there).")
    return estimate


MAX_SAMPLES = 10**6  # one Hessian-vector product each


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _hutchinson_trace(value_fn, params, key, *, num_samples):
    matvec, dimension, dtype = _flat_hessian_operator("hutchinson_trace", value_fn, params)

    def quadratic_form(sample_key: jax.Array) -> jax.Array:
        probe = jax.random.rademacher(sample_key, (dimension,), dtype)
        return jnp.vdot(probe, matvec(probe))

    samples = jax.lax.map(quadratic_form, jax.random.split(key, num_samples))
    return TraceEstimate(samples.mean(), samples.std(ddof=1) / jnp.sqrt(samples.size))


def spectrum_along(
    value_fn: ValueFn, trajectory: Params, num_iterations: int = 64, key: jax.Array | None = None
) -> ExtremeEigenvalues:
    """:func:`extreme_eigenvalues` at every point of ``trajectory``.

    One compiled Lanczos run (shared with :func:`extreme_eigenvalues`) is
    called per point, so memory stays that of a single point.

    Args:
      trajectory: a pytree like the parameters with a leading time axis on
        every leaf, e.g. ``gradient_flow(...).params`` or stacked iterates.
    """
    leaves = jax.tree.leaves(trajectory)
    if not leaves:
        raise ValueError(f"spectrum_along: trajectory has no array leaves (got {trajectory!r:.80}).")
    lengths = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    length = next(iter(lengths)) if len(lengths) == 1 else None
    if length is None:
        raise ValueError(f"spectrum_along: every leaf needs the same leading time axis, got lengths {lengths}.")
    if length == 0:
        raise ValueError("spectrum_along: the trajectory has no points (its leading time axis has length 0).")
    pairs = []
    for k in range(length):
        try:
            pairs.append(extreme_eigenvalues(value_fn, jax.tree.map(lambda x: x[k], trajectory), num_iterations, key))
        except ValueError as error:
            if "not finite" not in str(error):
                raise
            raise ValueError(f"spectrum_along: at point {k} of the trajectory, {error}") from None
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

    ``times`` must be finite and nondecreasing, ``lambda_min`` finite and
    ``learning_rate`` finite and nonnegative (``ValueError`` otherwise, for
    concrete values); a bound beyond the float range is ``inf``.
    """
    name = "gd_error_bound"
    times = _real_array(name, "times", times)
    lambda_min = _real_array(name, "lambda_min", lambda_min)
    if times.ndim != 1 or times.shape != lambda_min.shape or times.shape[0] == 0:
        raise ValueError(
            f"{name}: times and lambda_min must be 1-D of equal length (at least 1), got shapes {times.shape} and "
            f"{lambda_min.shape}."
        )
    checked = check_non_negative("learning_rate", learning_rate, where=name)
    rate = learning_rate if checked is None else checked
    for label, values in (("times", times), ("lambda_min", lambda_min)):
        if is_concrete(values) and not bool(jnp.all(jnp.isfinite(values))):
            index = int(jnp.argmin(jnp.isfinite(values)))
            raise ValueError(f"{name}: {label} must be finite, got {float(values[index])} at index {index}.")
    if is_concrete(times) and bool(jnp.any(jnp.diff(times) < 0)):
        index = int(jnp.argmax(jnp.diff(times) < 0))
        raise ValueError(
            f"{name}: times must be nondecreasing, got times[{index}] = {float(times[index])} > "
            f"times[{index + 1}] = {float(times[index + 1])}."
        )
    negative = jnp.maximum(-lambda_min, 0.0)
    pieces = 0.5 * (negative[1:] + negative[:-1]) * jnp.diff(times)
    integral = jnp.concatenate([jnp.zeros(1, pieces.dtype), jnp.cumsum(pieces)])
    prefactor = rate * (times - times[0])
    return ErrorBound(integral, jnp.where(prefactor == 0, 0.0, prefactor * jnp.exp(integral)))


def _real_array(function: str, name: str, values) -> jax.Array:
    if not is_concrete(values):
        array = values
    else:
        try:
            array = np.asarray(values)
        except Exception:
            array = np.asarray(values, dtype=object)
    dtype = array.dtype
    if dtype.kind not in "iuf" and not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{function}: {name} must be a real 1-D array, got {values!r:.80}.")
    return jnp.asarray(array).astype(jnp.promote_types(dtype, jnp.float32))
