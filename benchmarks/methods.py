"""The optimizers under test, built by name."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import optax

import flowopt
from flowopt import tableaus

LEARNING_RATE = 1e-3

Factory = Callable[[], optax.GradientTransformation]


FACTORIES: dict[str, Factory] = {
    "optax.sgd": lambda: optax.sgd(LEARNING_RATE),
    "euler": lambda: flowopt.euler(LEARNING_RATE),
    "heun": lambda: flowopt.heun(LEARNING_RATE),
    "rk3": lambda: flowopt.rk3(LEARNING_RATE),
    "rk4": lambda: flowopt.rk4(LEARNING_RATE),
    "dopri5-fixed": lambda: flowopt.runge_kutta(tableaus.DOPRI5, LEARNING_RATE),
    "bosh3-adaptive": lambda: flowopt.adaptive_runge_kutta(tableaus.BOSH3, learning_rate=LEARNING_RATE, rtol=1e-3, atol=1e-6),
    "backward_euler": lambda: flowopt.backward_euler(LEARNING_RATE, 3),
    "bdf2": lambda: flowopt.bdf(2, LEARNING_RATE, 3),
    "optax.adam": lambda: optax.adam(LEARNING_RATE),
    "adam_flow": lambda: flowopt.adam_flow(LEARNING_RATE),
}


def build(name: str) -> optax.GradientTransformation:
    return FACTORIES[name]()


def gradients_per_step(opt_state: optax.OptState, steps: int) -> float:
    """Gradient evaluations per step, counted from the state: the incoming one plus the oracle calls."""
    return 1.0 + float(jnp.asarray(flowopt.oracle_evaluations(opt_state))) / steps

