"""The full-batch problems of the stabilized study: diagonal quadratics and L2 logistic regression on MNIST.

Both are :class:`experiments.studies.bdf_stability.Problem` s (loss, start,
``f*``, ``L``) so that study's jitted runs serve here; ``μ`` comes with them.
Call under ``jax.enable_x64``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from experiments.studies.bdf_stability import Problem
from experiments.training_runs import get_dataset
from flowopt.analysis import extreme_eigenvalues


class Conditioned(NamedTuple):
    """A problem with its strong-convexity constant ``μ`` (``κ = problem.lipschitz / mu``) and facts to report."""

    problem: Problem
    mu: float
    facts: dict


def quadratic(kappa: float, dim: int, seed: int = 0) -> tuple[Conditioned, np.ndarray]:
    """``f = ½ Σ λ_i x_i²``, ``λ`` log-uniform on ``[1, κ]`` with both ends included (``μ = 1``, ``L = κ``, ``f* = 0``).

    Diagonal, without loss of generality here: every method compared is
    rotation-equivariant (its iterates in a rotated basis are the rotated
    iterates), so ``½ xᵀQΛQᵀx`` gives the same losses. Returns the problem and
    the eigenvalues; ``x0`` is standard normal (seed ``seed``).
    """
    rng = np.random.default_rng(seed)
    eigenvalues = np.exp(rng.uniform(0.0, np.log(kappa), dim))
    eigenvalues[:2] = 1.0, kappa
    x0 = rng.normal(size=dim)
    diagonal = jnp.asarray(eigenvalues)

    def loss(x: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum(diagonal * x * x)

    problem = Problem(f"quadratic kappa=1e{round(np.log10(kappa))}", loss, x0, 0.0, float(kappa))
    return Conditioned(problem, 1.0, {"kappa": float(kappa), "dim": dim}), eigenvalues


def logistic_regression(
    dataset: str, train_subset: int, reg: float, lanczos_iterations: int = 64, gradient_tolerance: float = 1e-7
) -> Conditioned:
    """Mean multinomial cross-entropy of a linear softmax model + ``(reg/2)‖θ‖²`` on a subset of ``dataset``.

    Pixels scaled to ``[0, 1]`` (÷255), 10 classes, weights and biases both
    penalised (so ``μ ≥ reg``; ``μ = reg`` is used), ``θ_0 = 0``. ``L`` is
    the largest Hessian eigenvalue at ``θ_0`` by Lanczos
    (:func:`flowopt.analysis.extreme_eigenvalues`). ``f*`` comes from
    scipy's L-BFGS run until it stalls in rounding, checked to reach
    ``‖∇f‖ ≤ gradient_tolerance``; the error it leaves in ``f*`` is at most
    ``‖∇f‖²/(2μ)`` (reported as ``f_star_error_bound``: 5e-12 at the default
    tolerance and ``μ = 1e-3``).
    """
    data = get_dataset(dataset, train_subset, 1)
    features = jnp.asarray(data.x_train.reshape(len(data.x_train), -1), jnp.float64) / 255.0
    labels = jnp.asarray(data.y_train)
    inputs, classes = features.shape[1], 10

    def loss(theta: jax.Array) -> jax.Array:
        weights, bias = theta[: inputs * classes].reshape(inputs, classes), theta[inputs * classes :]
        logits = features @ weights + bias
        nll = jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
        return jnp.mean(nll) + 0.5 * reg * jnp.sum(theta * theta)

    theta0 = np.zeros(inputs * classes + classes)
    value_and_grad = jax.jit(jax.value_and_grad(loss))

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = value_and_grad(jnp.asarray(theta))
        return float(value), np.asarray(grad)

    solution = scipy.optimize.minimize(
        objective, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 50_000, "gtol": 1e-14, "ftol": 0.0, "maxcor": 50}
    )
    minimum, grad = objective(solution.x)
    grad_norm = float(np.linalg.norm(grad))
    if grad_norm > gradient_tolerance:
        raise RuntimeError(f"L-BFGS stopped at ‖∇f‖ = {grad_norm:.3g} > {gradient_tolerance:g} ({solution.message}).")
    lipschitz = float(extreme_eigenvalues(loss, jnp.asarray(theta0), num_iterations=lanczos_iterations)[1])
    problem = Problem(f"logistic regression ({data.label})", loss, theta0, minimum, lipschitz)
    facts = {
        "dataset": data.label,
        "reg": reg,
        "lipschitz_at_start": lipschitz,
        "kappa": lipschitz / reg,
        "f0": float(loss(jnp.asarray(theta0))),
        "f_star": minimum,
        "f_star_gradient_norm": grad_norm,
        "f_star_error_bound": grad_norm**2 / (2 * reg),
        "lbfgs_iterations": int(solution.nit),
    }
    return Conditioned(problem, reg, facts)
