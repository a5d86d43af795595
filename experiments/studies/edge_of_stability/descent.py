"""Full-batch gradient descent with its sharpness, and its time averages around the save points."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments.studies.edge_of_stability.problem import Problem
from flowopt import analysis


class Descent(NamedTuple):
    """One gradient-descent run.

    Attributes:
      losses: ``(steps + window/2,)`` ``L(θ_k)`` at every step.
      sharpness_steps, sharpness: ``λ_max(∇²L(θ_k))`` every ``sharpness_every`` steps.
      saves: the save steps ``0, save_every, …, steps``.
      params: ``(S, n)`` ``θ_k`` at the save steps.
      averaged_params: ``(S, n)`` the mean of ``θ_j`` over the window centred on each save step.
      averaged_losses: ``(S,)`` the mean of ``L(θ_j)`` over the same windows.
    """

    losses: np.ndarray
    sharpness_steps: np.ndarray
    sharpness: np.ndarray
    saves: np.ndarray
    params: np.ndarray
    averaged_params: np.ndarray
    averaged_losses: np.ndarray


def window(centre: int, width: int) -> range:
    """The steps ``[centre - width/2, centre + width/2)`` clipped at 0: the average around ``centre``."""
    return range(max(0, centre - width // 2), centre + width // 2)


def gradient_descent(
    problem: Problem, learning_rate: float, steps: int, save_every: int, width: int, sharpness_every: int, lanczos: int
) -> Descent:
    """``θ_{k+1} = θ_k - η∇L(θ_k)`` for ``steps + width/2`` steps (the last window's second half included).

    A Python loop around a jitted step (on the CPU faster than a jitted loop
    over these matrix products, and the loss comes with each gradient).
    """
    value_and_grad = jax.jit(jax.value_and_grad(problem.value_fn))
    saves = np.arange(0, steps + 1, save_every)
    windows = [window(int(c), width) for c in saves]
    sums = np.zeros((len(saves), problem.params0.size))
    total = steps + width // 2
    losses, sharpness_steps, sharpness, params = [], [], [], []
    theta = problem.params0
    for k in range(total):
        loss, gradient = value_and_grad(theta)
        if not np.isfinite(float(loss)):
            raise FloatingPointError(f"gradient descent with step {learning_rate:g} diverged at step {k}.")
        losses.append(float(loss))
        host = np.asarray(theta)
        for index, steps_around in enumerate(windows):
            if k in steps_around:
                sums[index] += host
        if k % save_every == 0 and k <= steps:
            params.append(host)
        if k % sharpness_every == 0 and k <= steps:
            sharpness_steps.append(k)
            sharpness.append(float(analysis.extreme_eigenvalues(problem.value_fn, theta, lanczos)[1]))
        theta = theta - learning_rate * gradient
    losses_array = np.array(losses)
    counts = np.array([len(w) for w in windows])[:, None]
    averaged_losses = np.array([losses_array[list(w)].mean() for w in windows])
    return Descent(
        losses_array,
        np.array(sharpness_steps),
        np.array(sharpness),
        saves,
        np.array(params),
        sums / counts,
        averaged_losses,
    )


def edge_phase(descent: Descent, learning_rate: float, tolerance: float = 0.05) -> np.ndarray:
    """``λ_max·η/2`` from the first measurement that reaches ``1 - tolerance`` on (empty if none does)."""
    ratio = descent.sharpness * learning_rate / 2
    reached = np.flatnonzero(ratio >= 1 - tolerance)
    return ratio[reached[0] :] if reached.size else ratio[:0]


def initial_sharpness(problem: Problem, lanczos: int) -> float:
    """``λ_max(∇²L(θ_0))``."""
    return float(analysis.extreme_eigenvalues(problem.value_fn, jnp.asarray(problem.params0), lanczos)[1])
