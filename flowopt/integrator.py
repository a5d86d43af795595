"""The stage/transformation split: a pure integrator step wrapped as an optax optimizer.

An :class:`Integrator` is a pure, jit-compatible step over pytrees::

    step(oracle, params, k1, h, stage_state) -> (increment, stage_state, oracle_calls)

``k1`` is the gradient at ``params`` (the ``updates`` given to ``update``),
``oracle`` evaluates the gradient elsewhere, ``h`` is the step size and the
increment is what to add to ``params``. :func:`as_optimizer` turns it into an
``optax.GradientTransformationExtraArgs`` whose state counts steps and oracle
calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from flowopt.oracle import GradFn, Params, check_updates_match, resolve_oracle

StageFn = Callable[[GradFn | None, Params, Params, jax.Array, Any], tuple[Params, Any, jax.Array | int]]


class Integrator(NamedTuple):
    """A pure integrator step plus what the transformation needs to know about it.

    Attributes:
      name: used in error messages.
      init: ``params -> stage_state`` (history, moments, ...; ``()`` if none).
      step: the stage function, see the module docstring.
      needs_oracle: whether ``step`` evaluates gradients away from ``params``.
    """

    name: str
    init: Callable[[Params], Any]
    step: StageFn
    needs_oracle: bool


class IntegratorState(NamedTuple):
    """State of every flowopt optimizer.

    Attributes:
      count: number of steps taken (int32).
      oracle_evals: number of oracle calls made so far (int32); the gradients
        passed in as ``updates`` are not included.
      stage_state: the integrator's own state.
    """

    count: jax.Array
    oracle_evals: jax.Array
    stage_state: Any


def check_learning_rate(learning_rate: optax.ScalarOrSchedule, name: str = "learning_rate") -> None:
    """Raise ``ValueError`` unless ``learning_rate`` is a schedule or a finite positive number."""
    if callable(learning_rate):
        return
    try:
        value = float(learning_rate)
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        if isinstance(learning_rate, jax.core.Tracer):
            return
        raise ValueError(
            f"{name} must be a positive number or an optax schedule, got {learning_rate!r}."
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and positive, got {value!r}.")


def step_size(learning_rate: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """The step ``h`` at step ``count``: the schedule's value, or the constant."""
    return learning_rate(count) if callable(learning_rate) else jnp.asarray(learning_rate)


def as_optimizer(
    integrator: Integrator, learning_rate: optax.ScalarOrSchedule
) -> optax.GradientTransformationExtraArgs:
    """Wrap an :class:`Integrator` as an optax transformation with step ``h = learning_rate``.

    ``update(grads, state, params, value_fn=..., grad_fn=..., **ignored)``
    returns the increment ``θ_{n+1} - θ_n``: add it with ``optax.apply_updates``.
    """
    check_learning_rate(learning_rate)

    def init_fn(params: Params) -> IntegratorState:
        return IntegratorState(
            count=jnp.zeros([], jnp.int32),
            oracle_evals=jnp.zeros([], jnp.int32),
            stage_state=integrator.init(params),
        )

    def update_fn(
        updates: optax.Updates,
        state: IntegratorState,
        params: Params | None = None,
        *,
        value_fn: Callable[[Params], jax.Array] | None = None,
        grad_fn: GradFn | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, IntegratorState]:
        del extra_args
        check_updates_match(integrator.name, updates, params)
        oracle = resolve_oracle(integrator.name, params, value_fn, grad_fn, required=integrator.needs_oracle)
        h = step_size(learning_rate, state.count)
        increment, stage_state, calls = integrator.step(oracle, params, updates, h, state.stage_state)
        new_state = IntegratorState(
            count=optax.safe_increment(state.count),
            oracle_evals=state.oracle_evals + jnp.asarray(calls, jnp.int32),
            stage_state=stage_state,
        )
        return increment, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def oracle_evaluations(opt_state: optax.OptState) -> jax.Array:
    """Total oracle calls recorded in an optimizer state, summed over an optax chain.

    Every flowopt state exposes a field ``oracle_evals``; plain optax states
    contribute zero. The gradient evaluations of a training run are the steps
    taken (one incoming gradient each) plus this number.
    """
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "oracle_evals")
    return sum((jnp.asarray(value, jnp.int32) for _, value in found), jnp.zeros([], jnp.int32))
