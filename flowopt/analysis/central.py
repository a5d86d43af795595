"""The central flow of gradient descent: a model of its time-averaged path at the edge of stability.

Gradient descent with step ``η`` follows the gradient flow while the
sharpness ``λ_max(∇²L)`` stays below ``2/η``; beyond, it oscillates along the
top eigenvectors and the oscillation feeds back on the sharpness, which
hovers at ``2/η`` (Cohen et al., ICLR 2021). Cohen, Damian, Talwalkar, Kolter
& Lee (*Understanding optimization in deep learning with central flows*,
ICLR 2025) model the time average of that motion by an ODE. In flow time
``t = kη``::

    θ'(t) = -[∇L(θ) + ½ ∇⟨∇²L(θ), Σ(t)⟩],       Σ = U X Uᵀ,

with ``U`` the top ``k`` Hessian eigenvectors and ``X ⪰ 0`` (``k × k``) the
covariance of the oscillation in their span. ``X`` is whatever keeps the
projected sharpness at the threshold: with ``A = (2/η) I - UᵀHU``, ``X`` solves
the semidefinite complementarity problem::

    X ⪰ 0,   A + τ Ȧ(X) ⪰ 0,   ⟨X, A + τ Ȧ(X)⟩ = 0,

where ``Ȧ(X) = -d(UᵀHU)/dt`` is affine in ``X`` through the third
derivative ``G_ab = ∇_θ (u_aᵀ ∇²L u_b)`` (``jax.jvp`` of a Hessian-vector
product; ``G_aa`` is the gradient of the eigenvalue ``λ_a``). Enforcing
``A + τȦ ⪰ 0`` rather than ``Ȧ ⪰ 0`` on the active set relaxes any drift
past the threshold with time constant ``τ`` (Baumgarte stabilisation; the
paper's discretisation is the case ``τ`` = its time step), which makes the
right-hand side a continuous function of ``θ`` that an adaptive Runge–Kutta
method can integrate. Where ``λ_max < 2/η`` (by more than ``τ`` times its
rate of change), ``X = 0`` and the central flow *is* the gradient flow.

The problem is the convex program ``min_{X ⪰ 0} ½⟨X, B X⟩ + ⟨α, X⟩`` with
``α = A + τ Ȧ(0)`` and ``B = (τ/2) ⟨G, G⟩`` positive semidefinite, solved by
accelerated projected gradient (projection onto the PSD cone by ``eigh``);
for ``k = 1`` it is ``x = max(0, -α/B)``, exactly.

The flow predicts gradient descent's **time-averaged loss**
``L(θ) + ½⟨UᵀHU, X⟩`` (the loss plus ``½ Σ σ_i² λ_i`` of the oscillation)
and its time-averaged iterate ``θ``.

**Cost** of one right-hand side: one gradient, ``m`` Hessian-vector products
(Lanczos from a fixed start, so the right-hand side is a deterministic
function of ``θ``) and ``k(k+1)/2`` third-derivative products. Counted as
gradient equivalents: a Hessian-vector product 2, a third-derivative product
(``jvp`` of a Hessian-vector product) 4.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from flowopt.analysis._functions import checked_value
from flowopt.analysis.flows import gradient_flow
from flowopt.core.checks import INT32_MAX, check_callable, check_float_tree, check_integer, check_positive, check_prng_key
from flowopt.core.lanczos import HVP_GRADIENTS, top_ritz_pairs
from flowopt.core.trees import real_size
from flowopt.core.types import Params

THIRD_DERIVATIVE_GRADIENTS = 4
"""Gradient evaluations one third-derivative product (a ``jvp`` of a Hessian-vector product) counts as."""

_PSD_SOLVER_ITERATIONS = 1000


class CentralPoint(NamedTuple):
    """The central flow's right-hand side at one point and what it decided there.

    Attributes:
      velocity: ``θ'``, flat.
      loss: ``L(θ)``.
      eigenvalues: ``(k,)`` the top Ritz values of ``∇²L(θ)``, descending.
      covariance: ``X``, ``(k, k)`` positive semidefinite, in the basis of the eigenvectors.
      predicted_loss: ``L(θ) + ½⟨UᵀHU, X⟩``, gradient descent's predicted time-averaged loss.
    """

    velocity: jax.Array
    loss: jax.Array
    eigenvalues: jax.Array
    covariance: jax.Array
    predicted_loss: jax.Array


class CentralFlowSolution(NamedTuple):
    """The central flow at the save times and what it cost.

    Attributes:
      times: ``(T,)`` flow times (gradient descent's step ``k`` is at ``t = kη``).
      params: ``θ(times)``, a pytree like ``params`` with a leading axis ``T``.
      loss: ``(T,)`` ``L(θ)``.
      predicted_loss: ``(T,)`` the predicted time-averaged loss of gradient descent.
      eigenvalues: ``(T, k)`` the top Hessian eigenvalues, descending (``[:, 0]`` is the sharpness).
      covariance: ``(T, k, k)`` ``X``.
      at_edge: ``(T,)`` the number of eigen-directions at the edge (the rank of ``X``).
      num_steps, num_rejected: accepted and rejected Runge–Kutta steps.
      rhs_evals: right-hand sides evaluated (the save points included).
      gradient_evals, hvp_evals, third_derivative_evals: the oracle work behind them.
      successful: whether the integration reached ``t_end``.
    """

    times: jax.Array
    params: Params
    loss: jax.Array
    predicted_loss: jax.Array
    eigenvalues: jax.Array
    covariance: jax.Array
    at_edge: jax.Array
    num_steps: jax.Array
    num_rejected: jax.Array
    rhs_evals: jax.Array
    gradient_evals: jax.Array
    hvp_evals: jax.Array
    third_derivative_evals: jax.Array
    successful: jax.Array

    @property
    def gradient_equivalents(self) -> jax.Array:
        """The whole work in gradient evaluations, ``gradient_evals + 2·hvp_evals + 4·third_derivative_evals``."""
        return self.gradient_evals + HVP_GRADIENTS * self.hvp_evals + THIRD_DERIVATIVE_GRADIENTS * self.third_derivative_evals


def _symmetric_basis(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices ``(i, j)`` of the upper triangle and the scales that make ``vec`` an isometry: ``⟨X, Y⟩ = vec X · vec Y``."""
    i, j = np.triu_indices(k)
    return i, j, np.where(i == j, 1.0, np.sqrt(2.0))


def _vec(matrix: jax.Array) -> jax.Array:
    i, j, scale = _symmetric_basis(matrix.shape[-1])
    return matrix[..., i, j] * scale


def _mat(vector: jax.Array, k: int) -> jax.Array:
    i, j, scale = _symmetric_basis(k)
    values = vector / scale
    return jnp.zeros((k, k), vector.dtype).at[i, j].set(values).at[j, i].set(values)


def solve_psd_complementarity(alpha: jax.Array, beta: jax.Array, iterations: int | None = None) -> jax.Array:
    """``X ⪰ 0`` with ``Y = α + B[X] ⪰ 0`` and ``⟨X, Y⟩ = 0``, as the minimiser of ``½⟨X, BX⟩ + ⟨α, X⟩`` over ``X ⪰ 0``.

    ``alpha`` is a symmetric ``(k, k)`` matrix and ``beta`` the ``(p, p)``
    positive semidefinite matrix of ``B`` on the isometric vectorisation of
    symmetric matrices (diagonal entries, then ``√2 ×`` the upper off-diagonal
    ones, in ``numpy.triu_indices`` order; ``p = k(k+1)/2``). Solved by
    accelerated projected gradient (FISTA) with step ``1/λ_max(B)``, ``iterations``
    of them (by default one for ``k = 1``, where the first is exact, and
    1000 otherwise), restarted when the momentum points uphill. Where
    ``B = 0`` (no third derivative along the eigenvectors) nothing can hold
    the sharpness and ``X = 0``: the flow then goes past ``2/η``, visibly in
    the eigenvalues it reports.
    """
    k = alpha.shape[0]
    if iterations is None:
        iterations = 1 if k == 1 else _PSD_SOLVER_ITERATIONS
    a = _vec(alpha)
    curvature = jnp.linalg.eigvalsh(beta)[-1]
    step = jnp.where(curvature > 0, 1.0 / jnp.where(curvature > 0, curvature, 1.0), 0.0)

    def project(x: jax.Array) -> jax.Array:
        values, vectors = jnp.linalg.eigh(_mat(x, k))
        return _vec((vectors * jnp.maximum(values, 0.0)) @ vectors.T)

    def body(_, carry):
        x, y, t = carry
        x_next = project(y - step * (beta @ y + a))
        # Restart the momentum when it points uphill (O'Donoghue & Candès 2015): linear convergence for B ≻ 0.
        restart = jnp.vdot(beta @ y + a, x_next - x) > 0
        t = jnp.where(restart, 1.0, t)
        t_next = (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)) / 2.0
        return x_next, x_next + ((t - 1.0) / t_next) * (x_next - x), t_next

    zero = jnp.zeros_like(a)
    x, _, _ = jax.lax.fori_loop(0, iterations, body, (zero, zero, jnp.ones((), a.dtype)))
    return _mat(x, k)


def central_point(
    loss: Callable[[jax.Array], jax.Array],
    w: jax.Array,
    learning_rate: float | jax.Array,
    *,
    num_eigs: int,
    lanczos_iterations: int,
    relaxation: float | jax.Array,
    key: jax.Array,
) -> CentralPoint:
    """The central flow's right-hand side at the flat parameters ``w`` (see the module docstring).

    ``relaxation`` is ``τ/η``, the relaxation time in gradient-descent steps.
    """
    gradient = jax.grad(loss)

    def hvp(point: jax.Array, v: jax.Array) -> jax.Array:
        return jax.jvp(gradient, (point,), (v,))[1]

    value, g = jax.value_and_grad(loss)(w)
    pairs = top_ritz_pairs(lambda v: hvp(w, v), w.size, num_eigs, lanczos_iterations, key, w.dtype)
    i, j, scale = _symmetric_basis(num_eigs)
    third = jax.vmap(lambda a, b: jax.jvp(lambda point: hvp(point, pairs.vectors[b]), (w,), (pairs.vectors[a],))[1])
    directions = third(jnp.asarray(i), jnp.asarray(j)) * jnp.asarray(scale, w.dtype)[:, None]  # (p, n): vec of G
    tau = relaxation * learning_rate
    margin = jnp.diag(2.0 / learning_rate - pairs.values)
    alpha = margin + tau * _mat(directions @ g, num_eigs)
    beta = 0.5 * tau * directions @ directions.T
    covariance = solve_psd_complementarity(alpha, beta)
    velocity = -(g + 0.5 * directions.T @ _vec(covariance))
    predicted = value + 0.5 * jnp.sum(pairs.values * jnp.diag(covariance))
    return CentralPoint(velocity, value, pairs.values, covariance, predicted)


def _check(
    value_fn, params, learning_rate, t_end, num_eigs, lanczos_iterations, relaxation, key
) -> tuple[int, int, jax.Array, float, float]:
    name = "central_flow"
    check_callable("value_fn", value_fn, where=name)
    if params is None:
        raise ValueError(f"{name}: params is None; pass a pytree of real floating arrays.")
    check_float_tree("params", params, where=name, allow_complex=False, nonempty=True)
    rate = check_positive("learning_rate", learning_rate, where=name, traced=False)
    end = check_positive("t_end", t_end, where=name, traced=False)
    check_positive("relaxation", relaxation, where=name)
    num_eigs = check_integer("num_eigs", num_eigs, 1, 16, where=name)
    lanczos_iterations = check_integer("lanczos_iterations", lanczos_iterations, num_eigs, INT32_MAX, where=name)
    dimension = real_size(params)
    if num_eigs > dimension:
        raise ValueError(f"{name}: num_eigs = {num_eigs} exceeds the {dimension} parameters.")
    key = check_prng_key(jax.random.key(0) if key is None else key, where=name)
    assert rate is not None and end is not None  # traced=False: numbers or a ValueError
    return num_eigs, lanczos_iterations, key, rate, end


def central_flow(
    value_fn: Callable[[Params], jax.Array],
    params: Params,
    learning_rate: float,
    t_end: float,
    *,
    num_saves: int = 101,
    num_eigs: int = 2,
    lanczos_iterations: int = 20,
    relaxation: float = 2.0,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    method: str = "bosh3",
    max_steps: int = 100_000,
    key: jax.Array | None = None,
) -> CentralFlowSolution:
    """Integrate the central flow of gradient descent with step ``learning_rate`` from ``params`` to flow time ``t_end``.

    The right-hand side (module docstring) is integrated by
    :func:`flowopt.analysis.gradient_flow`'s adaptive Runge–Kutta solver
    (``method``, ``rtol``, ``atol``, ``max_steps``); gradient descent's step
    ``k`` corresponds to ``t = k·learning_rate``. At each of ``num_saves``
    equally spaced times the solution holds the parameters, the loss, the
    predicted time-averaged loss, the top eigenvalues, ``X`` and how many
    eigen-directions are at the edge. Run it in float64 (``jax.enable_x64``):
    the right-hand side differentiates three times.

    Args:
      value_fn: ``params -> scalar`` loss, three times differentiable.
      params: the start, a pytree of real floating arrays.
      learning_rate: gradient descent's step ``η`` (the threshold is ``2/η``).
      t_end: the flow time to reach.
      num_saves: save times, ``linspace(0, t_end, num_saves)``.
      num_eigs: ``k``, the top eigen-directions that may oscillate.
      lanczos_iterations: ``m``, Hessian-vector products per eigen-solve.
      relaxation: ``τ/η``, the time (in steps) over which drift past the
        threshold is relaxed. Shorter follows the threshold more tightly but
        turns the integration error of the sharpness into noise in ``X``
        (``δX ≈ 2δλ/(τ|G|²)``); 2 steps keep ``X`` smooth at the default tolerances.
      rtol, atol: the Runge–Kutta tolerances.
      method: an embedded pair of :func:`~flowopt.analysis.gradient_flow`.
      max_steps: bound on the Runge–Kutta attempts.
      key: the Lanczos start vector's key (fixed for the whole integration).

    Raises:
      ValueError: bad arguments; a loss that is not finite at ``params``.
      RuntimeError: the integration did not reach ``t_end`` (see :func:`~flowopt.analysis.gradient_flow`).
    """
    num_eigs, lanczos_iterations, key, rate, end = _check(
        value_fn, params, learning_rate, t_end, num_eigs, lanczos_iterations, relaxation, key
    )
    num_saves = check_integer("num_saves", num_saves, 2, INT32_MAX, where="central_flow")
    _, unravel = ravel_pytree(params)
    loss = lambda w: checked_value("central_flow", value_fn)(unravel(w))
    point = functools.partial(
        central_point,
        loss,
        learning_rate=rate,
        num_eigs=num_eigs,
        lanczos_iterations=lanczos_iterations,
        relaxation=relaxation,
        key=key,
    )
    rhs = jax.jit(lambda p: jax.tree.map(jnp.negative, unravel(point(ravel_pytree(p)[0]).velocity)))
    times = np.linspace(0.0, end, num_saves)
    flow = gradient_flow(None, params, jnp.asarray(times), grad_fn=rhs, method=method, rtol=rtol, atol=atol, max_steps=max_steps)
    flats = jax.vmap(lambda p: ravel_pytree(p)[0])(flow.params)
    points = jax.jit(lambda ws: jax.lax.map(point, ws))(flats)
    spectra = jnp.linalg.eigvalsh(points.covariance)  # a direction is at the edge where X has weight along it
    rank = jnp.sum(spectra > 1e-3 * jnp.max(spectra, axis=-1, keepdims=True), -1) * (spectra[:, -1] > 0)
    rhs_evals = flow.oracle_evals + num_saves
    return CentralFlowSolution(
        times=jnp.asarray(times),
        params=flow.params,
        loss=points.loss,
        predicted_loss=points.predicted_loss,
        eigenvalues=points.eigenvalues,
        covariance=points.covariance,
        at_edge=rank,
        num_steps=flow.num_steps,
        num_rejected=flow.num_rejected,
        rhs_evals=rhs_evals,
        gradient_evals=rhs_evals,
        hvp_evals=rhs_evals * min(lanczos_iterations, flats.shape[-1]),
        third_derivative_evals=rhs_evals * (num_eigs * (num_eigs + 1) // 2),
        successful=flow.successful,
    )
