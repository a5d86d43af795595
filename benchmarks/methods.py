"""The optimizers under test, built by name; methods whose module is absent are reported as skipped."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import jax.numpy as jnp
import optax

import flowopt
from flowopt import tableaus

LEARNING_RATE = 1e-3

Factory = Callable[[], optax.GradientTransformation]


def _optional(module: str, name: str) -> Callable | None:
    """``flowopt.<name>`` or ``flowopt.<module>.<name>``; ``None`` if neither exists (yet)."""
    found = getattr(flowopt, name, None)
    if found is not None:
        return found
    try:
        return getattr(importlib.import_module(f"flowopt.{module}"), name, None)
    except ImportError:
        return None


def _adaptive_bosh3() -> optax.GradientTransformation:
    build = _optional("adaptive", "adaptive_runge_kutta")
    return build(tableaus.BOSH3, learning_rate=LEARNING_RATE, rtol=1e-3, atol=1e-6)


def _adam_flow() -> optax.GradientTransformation:
    return _optional("adaptive_flow", "adam_flow")(LEARNING_RATE)


FACTORIES: dict[str, tuple[Factory, Callable[[], bool]]] = {
    "optax.sgd": (lambda: optax.sgd(LEARNING_RATE), lambda: True),
    "euler": (lambda: flowopt.euler(LEARNING_RATE), lambda: True),
    "heun": (lambda: flowopt.heun(LEARNING_RATE), lambda: True),
    "rk3": (lambda: flowopt.rk3(LEARNING_RATE), lambda: True),
    "rk4": (lambda: flowopt.rk4(LEARNING_RATE), lambda: True),
    "dopri5-fixed": (lambda: flowopt.runge_kutta(tableaus.DOPRI5, LEARNING_RATE), lambda: True),
    "bosh3-adaptive": (_adaptive_bosh3, lambda: _optional("adaptive", "adaptive_runge_kutta") is not None),
    # adam_flow's Euler scheme is Adam with eps inside the square root: compare like with like.
    "optax.adam": (lambda: optax.adam(LEARNING_RATE, eps=0.0, eps_root=1e-8), lambda: True),
    "adam_flow": (_adam_flow, lambda: _optional("adaptive_flow", "adam_flow") is not None),
}
"""name -> (factory, is-available)."""

MISSING_NOTE = {
    "bosh3-adaptive": "bosh3-adaptive skipped: flowopt.adaptive.adaptive_runge_kutta is not available.",
    "adam_flow": "adam_flow skipped: flowopt.adaptive_family.adam_flow is not available.",
}


def available(names: list[str]) -> tuple[list[str], list[str]]:
    """Split ``names`` into those that can be built and notes about those that cannot."""
    present = [n for n in names if FACTORIES[n][1]()]
    return present, [MISSING_NOTE.get(n, f"{n} skipped.") for n in names if n not in present]


def build(name: str) -> optax.GradientTransformation:
    return FACTORIES[name][0]()


def gradients_per_step(opt_state: optax.OptState, steps: int) -> float:
    """Gradient evaluations per step, counted from the state: the incoming one plus the oracle calls."""
    return 1.0 + float(jnp.asarray(flowopt.oracle_evaluations(opt_state))) / steps

