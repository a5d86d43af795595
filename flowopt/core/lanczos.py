"""Lanczos tridiagonalisation of a symmetric operator given by matrix-vector products.

:func:`lanczos` is the checked, jitted entry point; :func:`lanczos_tridiagonal`
the traceable iteration that the Hessian tools of :mod:`flowopt.analysis`
and the curvature estimates of optimizers (:mod:`flowopt.rk.chebyshev_auto`)
run inside their own ``jit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from flowopt.core.checks import INT32_MAX, check_callable, check_integer, check_prng_key
from flowopt.core.trees import any_nonfinite

HVP_GRADIENTS = 2
"""Gradient evaluations one Hessian-vector product counts as (forward over reverse costs about two gradients;
Pearlmutter 1994): the convention of every count of Lanczos work in flowopt."""


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
    check_basis_memory(name, dimension, num_iterations, dtype)
    result = _lanczos_jit(matvec, dimension, num_iterations, key, dtype)
    if any_nonfinite(result):
        raise ValueError("lanczos: matvec returned non-finite values; the Ritz values would be NaN.")
    return result


MAX_BASIS_BYTES = 16 * 2**30


def check_basis_memory(name: str, dimension: int, num_iterations: int, dtype) -> None:
    size = min(num_iterations, dimension) * dimension * jnp.dtype(dtype).itemsize
    if size > MAX_BASIS_BYTES:
        raise ValueError(
            f"{name}: num_iterations = {num_iterations} on dimension {dimension} needs a {size / 2**30:.0f} GiB "
            f"basis (at most {MAX_BASIS_BYTES // 2**30} GiB); use fewer iterations."
        )


def _iterate(matvec, dimension: int, num_iterations: int, key: jax.Array, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(Q, T, β_m)``: the orthonormal Lanczos basis (rows), the tridiagonal ``T = Q H Qᵀ`` and the last coupling."""
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
    basis, alpha, beta, _, _ = jax.lax.fori_loop(0, steps, body, init)
    tridiagonal = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
    coupling = beta[-1] if steps < dimension else jnp.zeros((), dtype)
    return basis, tridiagonal, coupling


def lanczos_tridiagonal(matvec, dimension: int, num_iterations: int, key: jax.Array, dtype) -> LanczosResult:
    """:func:`lanczos` without its argument checks, traceable inside ``jit`` (``matvec`` may close over tracers).

    ``min(num_iterations, dimension)`` products with ``matvec``.
    """
    _, tridiagonal, coupling = _iterate(matvec, dimension, num_iterations, key, dtype)
    ritz_values, ritz_vectors = jnp.linalg.eigh(tridiagonal)
    return LanczosResult(ritz_values, jnp.abs(coupling * ritz_vectors[-1]))


class RitzPairs(NamedTuple):
    """The largest Ritz pairs of a Lanczos run, largest first.

    Attributes:
      values: ``(k,)`` Ritz values, descending.
      vectors: ``(k, n)`` orthonormal Ritz vectors (rows).
      residuals: ``(k,)`` ``‖H y_i - θ_i y_i‖``.
    """

    values: jax.Array
    vectors: jax.Array
    residuals: jax.Array


def top_ritz_pairs(matvec, dimension: int, count: int, num_iterations: int, key: jax.Array, dtype) -> RitzPairs:
    """The ``count`` largest Ritz pairs after ``min(num_iterations, dimension)`` Lanczos steps, traceable inside ``jit``.

    The Ritz vectors ``Qᵀ s_i`` come from the stored (fully reorthogonalised)
    basis, so they are orthonormal to rounding.
    """
    basis, tridiagonal, coupling = _iterate(matvec, dimension, num_iterations, key, dtype)
    if not 1 <= count <= basis.shape[0]:
        raise ValueError(f"lanczos: count must be in 1..{basis.shape[0]} (the Lanczos steps), got {count}.")
    values, vectors = jnp.linalg.eigh(tridiagonal)
    top = vectors[:, ::-1][:, :count]
    return RitzPairs(values[::-1][:count], top.T @ basis, jnp.abs(coupling * top[-1]))


_lanczos_jit = jax.jit(lanczos_tridiagonal, static_argnums=(0, 1, 2, 4))
