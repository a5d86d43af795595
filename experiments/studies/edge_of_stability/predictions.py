"""What each flow predicts for gradient descent at the save times: its loss, its iterate, its sharpness."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments.studies.edge_of_stability.problem import Problem
from flowopt import analysis


class Prediction(NamedTuple):
    """One flow at the save times.

    Attributes:
      params: ``(S, n)`` the flow's ``θ(t)``.
      loss: ``(S,)`` its prediction of gradient descent's time-averaged loss.
      sharpness: ``(S,)`` ``λ_max`` along it.
      cost: what it took (Runge–Kutta steps, oracle work, seconds).
    """

    params: np.ndarray
    loss: np.ndarray
    sharpness: np.ndarray
    cost: dict[str, Any]


def _along(problem: Problem, params: np.ndarray, lanczos: int) -> tuple[np.ndarray, np.ndarray]:
    """``L`` and ``λ_max`` at each row of ``params``."""
    losses = np.asarray(jax.jit(jax.vmap(problem.value_fn))(jnp.asarray(params)))
    spectrum = analysis.spectrum_along(problem.value_fn, jnp.asarray(params), lanczos)
    return losses, np.asarray(spectrum.lambda_max)


def reference_flows(
    problem: Problem, learning_rate: float, times: np.ndarray, flow: dict[str, Any], lanczos: int
) -> dict[str, Prediction]:
    """The gradient flow of ``L`` and the modified flow of ``L + (η/4)‖∇L‖²``, each predicting ``L(θ(t))``."""
    objectives = {
        "gradient_flow": problem.value_fn,
        "modified_flow": analysis.modified_value_fn(problem.value_fn, learning_rate),
    }
    predictions = {}
    for name, objective in objectives.items():
        start = time.perf_counter()
        solution = analysis.gradient_flow(objective, problem.params0, jnp.asarray(times), **flow)
        params = np.asarray(solution.params)
        losses, sharpness = _along(problem, params, lanczos)
        cost = {
            "steps": int(solution.num_steps),
            "rejected": int(solution.num_rejected),
            "oracle_evals": int(solution.oracle_evals),
            "seconds": time.perf_counter() - start,
        }
        predictions[name] = Prediction(params, losses, sharpness, cost)
    return predictions


def central(problem: Problem, learning_rate: float, t_end: float, num_saves: int, options: dict[str, Any]) -> Prediction:
    """The central flow (:func:`flowopt.analysis.central_flow`), predicting the time-averaged loss ``L + ½⟨H, Σ⟩``."""
    start = time.perf_counter()
    solution = analysis.central_flow(problem.value_fn, problem.params0, learning_rate, t_end, num_saves=num_saves, **options)
    cost = {
        "steps": int(solution.num_steps),
        "rejected": int(solution.num_rejected),
        "rhs_evals": int(solution.rhs_evals),
        "gradient_equivalents": int(solution.gradient_equivalents),
        "max_at_edge": int(np.max(np.asarray(solution.at_edge))),
        "seconds": time.perf_counter() - start,
    }
    return Prediction(
        np.asarray(solution.params), np.asarray(solution.predicted_loss), np.asarray(solution.eigenvalues[:, 0]), cost
    )


def relative_errors(predicted: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """``|predicted - observed| / observed`` at each save time."""
    return np.abs(predicted - observed) / np.abs(observed)
