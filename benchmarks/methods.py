"""The optimizers under test, built by name from :mod:`flowopt.registry`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import optax

import flowopt
from flowopt import registry, tableaus

LEARNING_RATE = 1e-3

Factory = Callable[[], optax.GradientTransformation]

METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "optax.sgd": ("sgd", {}),
    "euler": ("euler", {}),
    "heun": ("heun", {}),
    "rk3": ("rk3", {}),
    "rk4": ("rk4", {}),
    "dopri5-fixed": ("runge_kutta", {"tableau": tableaus.DOPRI5}),
    "rkc-s5": ("rkc", {"stages": 5}),
    "rkc-s50": ("rkc", {"stages": 50}),
    "rkc2-s5": ("rkc", {"stages": 5, "order": 2}),
    "rkc2-s50": ("rkc", {"stages": 50, "order": 2}),
    "bosh3-adaptive": ("adaptive_runge_kutta", {"tableau": tableaus.BOSH3, "rtol": 1e-3, "atol": 1e-6}),
    "backward_euler": ("backward_euler", {"inner_steps": 3}),
    "bdf2": ("bdf2", {"inner_steps": 3}),
    "optax.adam": ("adam", {}),
    "adam_flow": ("adam_flow", {}),
}
"""Each benchmarked method: its name in :func:`flowopt.registry.resolve` and its arguments besides the learning rate."""


def _factory(name: str, arguments: dict[str, Any]) -> Factory:
    entry, fixed = registry.resolve(name)
    return functools.partial(entry.constructor, learning_rate=LEARNING_RATE, **fixed, **arguments)


FACTORIES: dict[str, Factory] = {name: _factory(*method) for name, method in METHODS.items()}


def build(name: str) -> optax.GradientTransformation:
    return FACTORIES[name]()


def gradients_per_step(opt_state: optax.OptState, steps: int) -> float:
    """Gradient evaluations per step, counted from the state: the incoming one plus the oracle calls."""
    return 1.0 + float(jnp.asarray(flowopt.oracle_evaluations(opt_state))) / steps
