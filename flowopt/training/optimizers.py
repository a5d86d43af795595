"""Optimizers by name: a few optax baselines plus every flowopt integrator.

flowopt names are looked up on the ``flowopt`` package when asked for, so an
integrator added to flowopt is available here without any change.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

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


ORDERED = {"bdf": range(1, 7), "adams_bashforth": range(1, 5)}
"""Constructors whose first argument is an order: ``bdf2`` is ``flowopt.bdf(2, learning_rate, ...)``."""

_ORDERED_NAME = re.compile(r"^(" + "|".join(ORDERED) + r")(\d+)$")


def available_optimizers() -> tuple[str, ...]:
    """Names :func:`make_optimizer` accepts (baselines, integrators, and ``bdf1``… ``adams_bashforth4``)."""
    ordered = tuple(f"{family}{order}" for family, orders in ORDERED.items() for order in orders)
    return tuple(BASELINES) + tuple(n for n in INTEGRATORS if hasattr(flowopt, n)) + ordered


def _ordered_constructor(name: str) -> Callable[..., optax.GradientTransformation] | None:
    match = _ORDERED_NAME.match(name)
    if match is None:
        return None
    return functools.partial(getattr(flowopt, match[1]), int(match[2]))


def make_optimizer(name: str, learning_rate: LearningRate, **options: Any) -> optax.GradientTransformation:
    """Build optimizer ``name`` with ``learning_rate`` (a float or optax schedule).

    Args:
      name: an optax baseline (``sgd``, ``momentum``, ``nesterov``, ``adam``,
        ``rmsprop``, ``adagrad``) or the name of a flowopt constructor
        (``euler``, ``heun``, ``rk4``, ...), or an order-suffixed name such as
        ``bdf2`` or ``adams_bashforth3`` (see ``ORDERED`` in this module).
      learning_rate: step size or schedule.
      **options: further keyword arguments of the constructor.

    Raises:
      ValueError: unknown name, or options the constructor does not take.
    """
    if name in BASELINES:
        constructor = BASELINES[name]
    elif (ordered := _ordered_constructor(name)) is not None:
        constructor = ordered
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
