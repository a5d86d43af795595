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
import numpy as np
from jax.flatten_util import ravel_pytree

from flowopt.analysis._functions import as_partial
from flowopt.analysis._pytrees import any_nonfinite, checked_value, merge_complex, split_complex
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
    name = "lanczos"
    check_callable("matvec", matvec, "a callable v -> H v on flat vectors", where=name)
    dimension = check_integer("dimension", dimension, 1, INT32_MAX, where=name, static_args=False)
    num_iterations = check_integer("num_iterations", num_iterations, 1, INT32_MAX, where=name, static_args=False)
    key = check_prng_key(key, where=name)
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(f"lanczos: dtype must be a real floating dtype, got {dtype!r}.") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"lanczos: dtype must be a real floating dtype (the operator is symmetric), got {dtype}.")
    _check_memory(name, dimension, num_iterations, dtype)
    result = _lanczos_jit(matvec, dimension, num_iterations, key, dtype)
    if any_nonfinite(result):
        raise ValueError("lanczos: matvec returned non-finite values; the Ritz values would be NaN.")
    return result


_MAX_BASIS_BYTES = 16 * 2**30


def _check_memory(name: str, dimension: int, num_iterations: int, dtype) -> None:
    size = min(num_iterations, dimension) * dimension * jnp.dtype(dtype).itemsize
    if size > _MAX_BASIS_BYTES:
        raise ValueError(
            f"{name}: num_iterations = {num_iterations} on dimension {dimension} needs a {size / 2**30:.0f} GiB "
            f"basis (at most {_MAX_BASIS_BYTES // 2**30} GiB); use fewer iterations."
        )


def _lanczos(matvec, dimension: int, num_iterations: int, key: jax.Array, dtype) -> LanczosResult:
    steps = min(int(num_iterations), int(dimension))
    if steps < 1:
        raise ValueError(f"num_iterations and the dimension must be at least 1, got {num_iterations}, {dimension}.")
    eps = jnp.finfo(dtype).eps

    def random_unit(index: int | jax.Array, basis: jax.Array) -> jax.Array:
        vector = jax.random.normal(jax.random.fold_in(key, index), (dimension,), dtype)
        for _ in range(2):
            vector = vector - basis.T @ (basis @ vector)
        return vector / jnp.linalg.norm(vector)

    def checked_matvec(q: jax.Array) -> jax.Array:
        try:
            w = matvec(q)
        except (TypeError, ValueError) as error:
            if str(error).startswith("lanczos:"):
                raise
            raise ValueError(
                f"lanczos: matvec failed on a vector of shape ({dimension},) (does dimension = {dimension} match "
                f"the operator?): {type(error).__name__}: {str(error).splitlines()[0]}"
            ) from None
        if jnp.shape(w) != (dimension,) or not jnp.issubdtype(jnp.result_type(w), jnp.floating):
            raise ValueError(
                f"lanczos: matvec must map a vector of shape ({dimension},) to a real floating vector of the same "
                f"shape, got {jnp.result_type(w)}{list(jnp.shape(w))}."
            )
        return w.astype(dtype)

    def body(j, carry):
        basis, alpha, beta, q, scale = carry
        basis = basis.at[j].set(q)
        w = checked_matvec(q)
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
    name = "extreme_eigenvalues"
    num_iterations, key = _check_hessian_arguments(name, value_fn, params, key, "num_iterations", num_iterations, 1, INT32_MAX)
    dimension = sum(2 * jnp.size(x) if jnp.iscomplexobj(x) else jnp.size(x) for x in jax.tree.leaves(params))
    _check_memory(name, dimension, num_iterations, jnp.float64)
    low, high = _extreme_eigenvalues(as_partial(value_fn), params, key, num_iterations=num_iterations)
    if any_nonfinite((low, high)):
        raise ValueError(f"{name}: the Hessian is not finite at params (value_fn or its derivatives are NaN or inf there).")
    return low, high


@functools.partial(jax.jit, static_argnames=("num_iterations",))
def _extreme_eigenvalues(value_fn, params, key, *, num_iterations):
    matvec, dimension, dtype = _flat_hessian_operator("extreme_eigenvalues", value_fn, params)
    result = _lanczos(matvec, dimension, num_iterations, key, dtype)
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
