"""Optimizers by name: a few optax baselines plus every flowopt integrator.

flowopt names are looked up on the ``flowopt`` package when asked for, so an
integrator added to flowopt is available here without any change.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
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


_BASELINE_TARGETS = {"sgd": optax.sgd, "momentum": optax.sgd, "nesterov": optax.sgd, "adam": optax.adam,
                     "rmsprop": optax.rmsprop, "adagrad": optax.adagrad}


def _unknown(name: object) -> ValueError:
    return ValueError(
        f"Unknown optimizer {name!r}; valid names: {', '.join(available_optimizers())}, "
        "or any optimizer constructor exported by flowopt."
    )


def resolve_optimizer(name: str) -> tuple[Callable[..., optax.GradientTransformation], inspect.Signature | None]:
    """The constructor behind ``name`` and the signature its options are checked against.

    Raises:
      ValueError: an unknown name, or a flowopt callable that does not take a
        ``learning_rate`` (such as ``guard_nonfinite``, which wraps an optimizer).
    """
    if not isinstance(name, str) or not name:
        raise _unknown(name)
    if name in BASELINES:
        return BASELINES[name], _signature(_BASELINE_TARGETS.get(name))
    if (ordered := _ordered_constructor(name)) is not None:
        return ordered, _signature(ordered)
    constructor = None if name.startswith("_") else getattr(flowopt, name, None)
    if not callable(constructor) or inspect.isclass(constructor) or inspect.ismodule(constructor):
        raise _unknown(name)
    signature = _signature(constructor)
    if signature is not None and "learning_rate" not in signature.parameters:
        first = next(iter(signature.parameters.values()), None)
        annotation = "" if first is None or first.annotation is first.empty else str(first.annotation)
        if first is None or (annotation and not any(t in annotation for t in ("float", "Schedule", "Array"))):
            taken = f"its first argument is {first.name}: {annotation}" if first is not None else "it takes none"
            raise ValueError(
                f"flowopt.{name} is not an optimizer constructor (it takes no learning rate; {taken}); "
                f"valid names: {', '.join(available_optimizers())}."
            )
    return constructor, signature


def _signature(function: Callable[..., Any] | None) -> inspect.Signature | None:
    if function is None:
        return None
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):
        return None


def check_option_values(name: str, options: dict[str, Any]) -> None:
    """Raise ValueError naming the option whose value cannot be right for optimizer ``name``.

    Without building anything: option names the constructor does not take,
    values that contradict its annotation or default (a string or a boolean
    where a number is expected), and non-finite numbers.
    """
    _, signature = resolve_optimizer(name)
    parameters = dict(signature.parameters) if signature is not None else {}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    for key, value in options.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"Optimizer option names must be non-empty strings, got {key!r}.")
        if key == "learning_rate":
            raise ValueError("learning_rate is set by the learning_rate field, not as an optimizer option.")
        for leaf in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(leaf, float) and not math.isfinite(leaf):
                raise ValueError(f"Optimizer option {key} of {name!r} must be finite, got {value!r}.")
        parameter = parameters.get(key)
        if parameter is None:
            if parameters and not takes_any:
                valid = [k for k, p in parameters.items() if k != "learning_rate"
                         and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
                raise ValueError(f"Optimizer {name!r} has no option {key!r}; valid options: {valid or 'none'}.")
            continue
        expected = _expected_kind(parameter)
        if expected == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"Optimizer option {key} of {name!r} must be a number, got {value!r}.")
        if expected == "optional number" and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"Optimizer option {key} of {name!r} must be a number or null, got {value!r}.")
        if expected == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"Optimizer option {key} of {name!r} must be an integer, got {value!r}.")
        if expected == "bool" and not isinstance(value, bool):
            raise ValueError(f"Optimizer option {key} of {name!r} must be true or false, got {value!r}.")
        if expected == "str" and not isinstance(value, str):
            raise ValueError(f"Optimizer option {key} of {name!r} must be a string, got {value!r}.")
    missing = [key for key, p in parameters.items() if key != "learning_rate" and key not in options
               and p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        shorthand = f" (or a name with the order in it, such as {name}2)" if "order" in missing and name in ORDERED else ""
        raise ValueError(f"Optimizer {name!r} needs the option(s) {', '.join(missing)}{shorthand}.")


def _expected_kind(parameter: inspect.Parameter) -> str | None:
    """What a parameter takes, from its annotation (a string under postponed evaluation) or its default."""
    annotation = parameter.annotation
    if isinstance(annotation, str):
        kinds = {"float": "number", "int": "integer", "bool": "bool", "str": "str",
                 "float | None": "optional number", "int | None": "optional number"}
        if annotation in kinds:
            return kinds[annotation]
    text = str(annotation)
    if text == "<class 'bool'>":
        return "bool"
    if not isinstance(annotation, str) and "float" in text and "NoneType" in text:
        return "optional number"
    default = parameter.default
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, (int, float)):
        return "number"
    return None


def make_optimizer(name: str, learning_rate: LearningRate, **options: Any) -> optax.GradientTransformation:
    """Build optimizer ``name`` with ``learning_rate`` (a float or optax schedule).

    Args:
      name: an optax baseline (``sgd``, ``momentum``, ``nesterov``, ``adam``,
        ``rmsprop``, ``adagrad``) or the name of a flowopt constructor that
        takes a ``learning_rate`` (``euler``, ``heun``, ``rk4``, ...), or an
        order-suffixed name such as ``bdf2`` or ``adams_bashforth3`` (see
        ``ORDERED`` in this module).
      learning_rate: step size or schedule.
      **options: further keyword arguments of the constructor.

    Raises:
      ValueError: unknown name, or options the constructor does not take or rejects.
    """
    constructor, signature = resolve_optimizer(name)
    try:
        if signature is not None and "learning_rate" in signature.parameters and name not in BASELINES:
            tx = constructor(learning_rate=learning_rate, **options)
        else:
            tx = constructor(learning_rate, **options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Optimizer {name!r} rejected options {options}: {' '.join(str(error).split())}") from error
    if not isinstance(tx, optax.GradientTransformation):
        raise ValueError(f"flowopt.{name} is not an optimizer constructor (it returned {type(tx).__name__}).")
    return tx


def check_optimizer(name: str, learning_rate: LearningRate, **options: Any) -> None:
    """Raise ValueError when optimizer ``name`` cannot be built with ``options`` or cannot take a step.

    Builds it, then traces ``init`` and one ``update`` abstractly (nothing is
    computed) on a two-parameter problem, so option values of the wrong type
    are reported here rather than inside the first training step.
    """
    check_option_values(name, options)
    tx = make_optimizer(name, learning_rate, **options)
    params = {"w": jnp.zeros(2, jnp.float32)}

    def one_step(params):
        value_fn = lambda p: jnp.sum(p["w"] ** 2)  # noqa: E731
        state = tx.init(params)
        return tx.update(jax.grad(value_fn)(params), state, params, value_fn=value_fn)

    try:
        jax.eval_shape(one_step, params)
    except (TypeError, ValueError, AttributeError) as error:
        message = " ".join(str(error).split())
        raise ValueError(f"Optimizer {name!r} cannot take a step with options {options}: {message}") from error
