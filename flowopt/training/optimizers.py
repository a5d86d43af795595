"""Optimizers by name: a few optax baselines plus every flowopt integrator.

flowopt names are looked up on the ``flowopt`` package when asked for, so an
integrator added to flowopt is available here without any change.
"""

from __future__ import annotations

from typing import Any, Callable

import optax

import flowopt

LearningRate = float | optax.Schedule

BASELINES: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": lambda lr, **kw: optax.sgd(lr, **kw),
    "momentum": lambda lr, momentum=0.9, **kw: optax.sgd(lr, momentum=momentum, **kw),
    "nesterov": lambda lr, momentum=0.9, **kw: optax.sgd(lr, momentum=momentum, nesterov=True, **kw),
    "adam": lambda lr, **kw: optax.adam(lr, **kw),
    "rmsprop": lambda lr, **kw: optax.rmsprop(lr, **kw),
    "adagrad": lambda lr, **kw: optax.adagrad(lr, **kw),
}
"""optax optimizers, built as ``BASELINES[name](learning_rate, **options)``."""

INTEGRATORS = ("euler", "heun", "ralston", "midpoint", "rk3", "ssprk3", "rk4", "rk38")
"""The flowopt integrators the command line advertises; any other constructor
exported by ``flowopt`` that takes ``learning_rate`` works too."""


def available_optimizers() -> tuple[str, ...]:
    """Names :func:`make_optimizer` accepts (baselines and the integrators flowopt exports)."""
    return tuple(BASELINES) + tuple(n for n in INTEGRATORS if hasattr(flowopt, n))


def make_optimizer(name: str, learning_rate: LearningRate, **options: Any) -> optax.GradientTransformation:
    """Build optimizer ``name`` with ``learning_rate`` (a float or optax schedule).

    Args:
      name: an optax baseline (``sgd``, ``momentum``, ``nesterov``, ``adam``,
        ``rmsprop``, ``adagrad``) or the name of a flowopt constructor
        (``euler``, ``heun``, ``rk4``, ...).
      learning_rate: step size or schedule.
      **options: further keyword arguments of the constructor.

    Raises:
      ValueError: unknown name, or options the constructor does not take.
    """
    if name in BASELINES:
        constructor = BASELINES[name]
    else:
        constructor = None if name.startswith("_") else getattr(flowopt, name, None)
        if not callable(constructor):
            raise ValueError(
                f"Unknown optimizer {name!r}; valid names: {', '.join(available_optimizers())}, "
                "or any optimizer constructor exported by flowopt."
            )
    try:
        tx = constructor(learning_rate, **options)
    except TypeError as error:
        raise ValueError(f"Optimizer {name!r} rejected options {options}: {error}") from error
    if not isinstance(tx, optax.GradientTransformation):
        raise ValueError(f"flowopt.{name} is not an optimizer constructor (it returned {type(tx).__name__}).")
    return tx
