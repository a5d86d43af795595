"""Optimizers by name for the training stack, all from :mod:`flowopt.registry`.

A name is an optax baseline (:data:`flowopt.registry.BASELINES`: ``sgd``,
``momentum``, ...), a flowopt constructor that takes a ``learning_rate``
(:data:`flowopt.registry.OPTIMIZERS`), or a constructor of
:data:`flowopt.registry.ORDERS` with its order appended (``bdf2``,
``adams_bashforth3``): :func:`flowopt.registry.resolve` decides. A
constructor added to the registry is available here without any change.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import flowopt
from flowopt import registry

LearningRate = float | optax.Schedule


def available_optimizers() -> tuple[str, ...]:
    """Names :func:`make_optimizer` accepts and the command line lists.

    The baselines, the flowopt constructors that need no argument besides the
    learning rate, and the order-suffixed names (``bdf1`` … ``adams_bashforth4``).
    Any other constructor of :data:`flowopt.registry.OPTIMIZERS` that takes a
    ``learning_rate`` works too, given its options.
    """
    plain = tuple(name for name, entry in registry.OPTIMIZERS.items() if _needs_only_a_learning_rate(entry.constructor))
    ordered = tuple(f"{name}{order}" for name, orders in registry.ORDERS.items() for order in orders)
    return tuple(registry.BASELINES) + plain + ordered


def _needs_only_a_learning_rate(constructor: Callable[..., Any]) -> bool:
    parameters = inspect.signature(constructor).parameters
    return "learning_rate" in parameters and all(
        p.default is not p.empty
        for key, p in parameters.items()
        if key != "learning_rate" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


def _unknown(name: object) -> ValueError:
    return ValueError(
        f"Unknown optimizer {name!r}; valid names: {', '.join(available_optimizers())}, "
        "or any optimizer constructor exported by flowopt."
    )


def _not_a_constructor(name: str, function: Callable[..., Any] | None) -> ValueError:
    """The error for a flowopt callable that is no optimizer constructor taking a learning rate."""
    signature = _signature(function)
    if signature is not None and "learning_rate" in signature.parameters:
        reason = "it has no entry in flowopt.registry.OPTIMIZERS"
    else:
        first = next(iter(signature.parameters.values()), None) if signature is not None else None
        annotation = "" if first is None or first.annotation is first.empty else str(first.annotation)
        taken = f"its first argument is {first.name}: {annotation}" if first is not None else "it takes none"
        reason = f"it takes no learning rate; {taken}"
    return ValueError(
        f"flowopt.{name} is not an optimizer constructor ({reason}); valid names: {', '.join(available_optimizers())}."
    )


def _resolve(name: str) -> tuple[registry.OptimizerEntry, dict[str, Any]]:
    """The registry entry behind ``name`` and the arguments the name fixes, for a constructor taking a learning rate."""
    if not isinstance(name, str) or not name:
        raise _unknown(name)
    try:
        entry, fixed = registry.resolve(name)
    except KeyError:
        function = None if name.startswith("_") else getattr(flowopt, name, None)
        if callable(function) and not inspect.isclass(function) and not inspect.ismodule(function):
            raise _not_a_constructor(name, function) from None
        raise _unknown(name) from None
    if "learning_rate" not in inspect.signature(entry.constructor).parameters:
        raise _not_a_constructor(name, entry.constructor)
    return entry, fixed


def resolve_optimizer(name: str) -> tuple[Callable[..., optax.GradientTransformation], inspect.Signature | None]:
    """The constructor behind ``name`` (the arguments the name fixes bound) and the signature its options are checked against.

    Raises:
      ValueError: an unknown name, or a flowopt callable that does not take a
        ``learning_rate`` (such as ``guard_nonfinite``, which wraps an optimizer).
    """
    entry, fixed = _resolve(name)
    constructor = entry.constructor
    if fixed:
        bound = inspect.signature(constructor).bind_partial(**fixed)
        constructor = functools.partial(constructor, *bound.args, **bound.kwargs)
    return constructor, _signature(constructor)


def gradients_per_step(name: str, **options: Any) -> int:
    """Gradient evaluations one step of optimizer ``name`` built with ``options`` costs, the incoming gradient included.

    From the registry's cost (:meth:`flowopt.registry.OptimizerEntry.gradients_per_step`):
    ``gradients_per_step("rk4") == 4``, ``gradients_per_step("bdf2", inner_steps=3) == 4``,
    ``gradients_per_step("adam") == 1``.

    Raises:
      ValueError: an unknown name, or an option the cost depends on is missing.
    """
    entry, fixed = _resolve(name)
    cost = entry.gradients_per_step(**fixed, **options)
    if cost is None:
        raise ValueError(f"The registry gives no cost per step for {name!r} with options {options}.")
    return cost


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
                valid = [
                    k
                    for k, p in parameters.items()
                    if k != "learning_rate" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                ]
                raise ValueError(f"Optimizer {name!r} has no option {key!r}; valid options: {valid or 'none'}.")
            continue
        expected = _expected_kind(parameter)
        if expected == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"Optimizer option {key} of {name!r} must be a number, got {value!r}.")
        if (
            expected == "optional number"
            and value is not None
            and (isinstance(value, bool) or not isinstance(value, (int, float)))
        ):
            raise ValueError(f"Optimizer option {key} of {name!r} must be a number or null, got {value!r}.")
        if expected == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"Optimizer option {key} of {name!r} must be an integer, got {value!r}.")
        if expected == "bool" and not isinstance(value, bool):
            raise ValueError(f"Optimizer option {key} of {name!r} must be true or false, got {value!r}.")
        if expected == "str" and not isinstance(value, str):
            raise ValueError(f"Optimizer option {key} of {name!r} must be a string, got {value!r}.")
    missing = [
        key
        for key, p in parameters.items()
        if key != "learning_rate"
        and key not in options
        and p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if missing:
        ordered = "order" in missing and name in registry.ORDERS
        shorthand = f" (or a name with the order in it, such as {name}2)" if ordered else ""
        raise ValueError(f"Optimizer {name!r} needs the option(s) {', '.join(missing)}{shorthand}.")


def _expected_kind(parameter: inspect.Parameter) -> str | None:
    """What a parameter takes, from its annotation (a string under postponed evaluation) or its default."""
    annotation = parameter.annotation
    if isinstance(annotation, str):
        kinds = {
            "float": "number",
            "int": "integer",
            "bool": "bool",
            "str": "str",
            "float | None": "optional number",
            "int | None": "optional number",
        }
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


def make_optimizer(name: str, learning_rate: LearningRate, **options: Any) -> optax.GradientTransformationExtraArgs:
    """Build optimizer ``name`` with ``learning_rate`` (a float or optax schedule).

    Args:
      name: an optax baseline (``sgd``, ``momentum``, ``nesterov``, ``adam``,
        ``rmsprop``, ``adagrad``) or the name of a flowopt constructor that
        takes a ``learning_rate`` (``euler``, ``heun``, ``rk4``, ...), or an
        order-suffixed name such as ``bdf2`` or ``adams_bashforth3`` (see
        :data:`flowopt.registry.ORDERS`).
      learning_rate: step size or schedule.
      **options: further keyword arguments of the constructor.

    Raises:
      ValueError: unknown name, or options the constructor does not take or rejects.
    """
    constructor, _ = resolve_optimizer(name)
    try:
        tx = constructor(learning_rate=learning_rate, **options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Optimizer {name!r} rejected options {options}: {' '.join(str(error).split())}") from error
    if not isinstance(tx, optax.GradientTransformation):
        raise ValueError(f"flowopt.{name} is not an optimizer constructor (it returned {type(tx).__name__}).")
    return optax.with_extra_args_support(tx)  # every registered constructor returns one already: tx itself


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
