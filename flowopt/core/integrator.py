"""The stage/transformation split: a pure integrator step wrapped as an optax optimizer.

An :class:`Integrator` is a pure, jit-compatible step over pytrees::

    step(oracle, params, k1, h, stage_state) -> (increment, stage_state, oracle_calls)

``k1`` is the gradient at ``params`` (the ``updates`` given to ``update``),
``oracle`` evaluates the gradient elsewhere, ``h`` is the step size and the
increment is what to add to ``params``. :func:`as_optimizer` turns it into an
``optax.GradientTransformationExtraArgs`` whose state counts steps and oracle
calls.

**Steps that are not taken.** A step of size ``h = 0`` (a warm-up schedule
starting at zero) is the identity: zero increment, the integrator's state
unchanged. A step whose size is negative or not finite (a faulty schedule), or
whose increment or new state is not finite (a NaN loss, an overflowing stage),
is never applied either: the increment is zero, the state is kept and the step
is counted in the state's ``skipped`` (:func:`skipped_steps` sums them over a
chain; ``flowopt.training`` stops a run on them). Outside ``jit`` a schedule
value that is negative or not finite raises ``ValueError`` at once. Inside
``jit`` nothing can raise, and a host callback that warned would synchronise
every step, so the count is the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from flowopt.core.oracle import check_updates_match, resolve_oracle
from flowopt.core.trees import tree_all_finite
from flowopt.core.types import GradFn, Params

StageFn = Callable[[GradFn | None, Params, Params, jax.Array | None, Any], tuple[Params, Any, jax.Array | int]]
"""``step(oracle, params, k1, h, stage_state)``: ``oracle`` is ``None`` only for an integrator that
makes no oracle calls (``needs_oracle=False``), ``h`` only for one that chooses its own step."""


class Integrator(NamedTuple):
    """A pure integrator step plus what the transformation needs to know about it.

    Attributes:
      name: used in error messages.
      init: ``params -> stage_state`` (history, moments, ...; ``()`` if none).
      step: the stage function, see the module docstring.
      needs_oracle: whether ``step`` evaluates gradients away from ``params``.
      chooses_step_size: ``False``: ``step`` takes the step ``h`` of the
        learning-rate schedule, and :func:`as_optimizer` applies its result
        only when it is finite (see the module docstring). ``True``: ``step``
        chooses its own step from its state (an error-controlled method; it
        receives ``h = None``), rejects a failed attempt itself by returning
        a zero increment, and :func:`as_optimizer` takes no learning rate.
      flags_nonfinite_loss: make the oracle's gradient NaN wherever the loss
        is non-finite (:func:`flowopt.core.oracle.flag_nonfinite_loss`), for
        methods that reject such attempts themselves.
    """

    name: str
    init: Callable[[Params], Any]
    step: StageFn
    needs_oracle: bool
    chooses_step_size: bool = False
    flags_nonfinite_loss: bool = False


class IntegratorState(NamedTuple):
    """State of every flowopt optimizer.

    Attributes:
      count: number of steps taken (int32).
      oracle_evals: number of oracle calls made so far (int32); the gradients
        passed in as ``updates`` are not included.
      skipped: steps not applied because their size or increment was not a
        finite number (or the size was negative), see the module docstring (int32).
      stage_state: the integrator's own state; its fields can be read on
        this state too (``state.m`` for ``state.stage_state.m``).
    """

    count: jax.Array
    oracle_evals: jax.Array
    skipped: jax.Array
    stage_state: Any

    def __getattr__(self, name: str) -> Any:
        """The fields of the integrator's own state, read through this one (``state.t``, ``state.controller``)."""
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return getattr(self.stage_state, name)
        except AttributeError:
            raise AttributeError(f"'IntegratorState' object (and its stage_state) has no attribute {name!r}") from None


def check_learning_rate(learning_rate: optax.ScalarOrSchedule, name: str = "learning_rate", *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``learning_rate`` is a schedule of the step count or a finite positive number.

    With ``allow_zero`` a constant 0 is accepted too (every step is then the
    identity, as with ``optax.sgd(0.0)``; ``optax.inject_hyperparams`` passes
    a warm-up schedule's first value, 0, as a constant).

    A schedule is checked to return a scalar for an integer step count; its
    values are checked at each step (see :func:`checked_step_size`).
    """
    if callable(learning_rate):
        try:
            shape = jax.eval_shape(learning_rate, jax.ShapeDtypeStruct((), jnp.int32)).shape
        except Exception as error:  # any failure means it is not a usable schedule
            raise ValueError(
                f"{name} schedule could not be evaluated at an int32 step count: {type(error).__name__}: {error}"
            ) from None
        if shape != ():
            raise ValueError(f"{name} schedule must return a scalar, got shape {shape}.")
        return
    if isinstance(learning_rate, (bool, str)):
        raise ValueError(f"{name} must be a positive number or an optax schedule, got {learning_rate!r}.")
    try:
        value = float(learning_rate)
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        if isinstance(learning_rate, jax.core.Tracer):
            return
        raise ValueError(f"{name} must be a positive number or an optax schedule, got {learning_rate!r}.") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}.")


def step_size(learning_rate: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """The step ``h`` at step ``count``: the schedule's value, or the constant, as an array.

    A schedule returning a Python number (``optax.constant_schedule``) gives
    the array a float rate gives, so the two compute the same steps.
    """
    return jnp.asarray(learning_rate(count) if callable(learning_rate) else learning_rate)


def checked_step_size(method: str, learning_rate: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """:func:`step_size`, raising ``ValueError`` for a concrete value that is negative or not finite.

    Traced values (inside ``jit``) cannot raise; :func:`commit_step` skips and counts such steps instead.
    """
    h = step_size(learning_rate, count)
    if not isinstance(h, jax.core.Tracer):
        value = float(np.real(h))
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"{method}: the learning-rate schedule returned {value!r} at step {int(count)}; "
                "a step size must be finite and non-negative."
            )
    return h


def commit_step(
    h: jax.Array,
    increment: Params,
    new_state: Any,
    old_state: Any,
) -> tuple[Params, Any, jax.Array, jax.Array]:
    """Apply a computed step only when ``h > 0`` and the increment and new state are finite.

    Returns ``(increment, state, taken, fault)``: the increment and the new
    state when the step is taken; otherwise a zero increment and ``old_state``.
    ``h = 0`` is the identity; a negative or non-finite ``h`` or a non-finite
    increment or state sets ``fault``. ``taken`` and ``fault`` are int32 0 or 1.
    The decision is a select, not a ``lax.cond``: no host synchronisation, and
    under ``vmap`` each member decides for itself.
    """
    h = jnp.real(jnp.asarray(h))
    valid_size = jnp.isfinite(h) & (h >= 0)
    positive = valid_size & (h > 0)
    finite = tree_all_finite((increment, new_state))
    take = positive & finite
    fault = ~valid_size | (positive & ~finite)
    increment = jax.tree.map(lambda x: jnp.where(take, x, jnp.zeros_like(x)), increment)
    state = optax.tree_utils.tree_where(take, new_state, old_state)
    return increment, state, take.astype(jnp.int32), fault.astype(jnp.int32)


def check_state_matches(method: str, state: Any, init: Callable[[Params], Any], params: Params | None) -> None:
    """Raise ``ValueError`` unless ``state`` has the layout that ``init(params)`` would give.

    A state initialised for other parameters (another model, a pytree with a
    leaf more or less, other shapes) would otherwise fail deep inside a tree
    map, or broadcast silently. Only shapes and structure are compared, at
    trace time (``jax.eval_shape``: nothing is computed).
    """
    if params is None:
        return
    expected = jax.eval_shape(init, params)
    same_structure = jax.tree.structure(expected) == jax.tree.structure(state)
    if not same_structure or any(jnp.shape(x) != jnp.shape(y) for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(state))):
        raise ValueError(
            f"{method}: the optimizer state does not match params: it was initialised for a different "
            "parameter pytree (structure or shapes differ). Call tx.init(params) with the parameters "
            "passed to update()."
        )


def as_optimizer(
    integrator: Integrator, learning_rate: optax.ScalarOrSchedule | None = None
) -> optax.GradientTransformationExtraArgs:
    """Wrap an :class:`Integrator` as an optax transformation: the one route from a method to an optimizer.

    ``update(grads, state, params, value_fn=..., grad_fn=..., full_params=..., **ignored)``
    returns the increment ``θ_{n+1} - θ_n``: add it with ``optax.apply_updates``.
    The step is ``h = learning_rate`` (a number or an optax schedule of the
    step count), or, for an integrator that chooses its own steps, whatever it
    chooses (then ``learning_rate`` must be ``None``). ``full_params`` is
    needed inside ``optax.masked`` and ``optax.multi_transform`` only (see
    :func:`flowopt.core.oracle.resolve_oracle`). The state is an
    :class:`IntegratorState` around the integrator's own.

    Raises:
      ValueError: if ``integrator`` is not an :class:`Integrator`, or
        ``learning_rate`` is missing, not a valid rate or schedule, or given to
        an integrator that chooses its own steps.
    """
    if not isinstance(integrator, Integrator):
        raise ValueError(f"as_optimizer needs a flowopt.Integrator, got {type(integrator).__name__}.")
    if integrator.chooses_step_size:
        if learning_rate is not None:
            raise ValueError(
                f"{integrator.name} chooses its own step sizes: as_optimizer takes no learning_rate for it "
                "(its first step is an argument of the integrator)."
            )
    elif learning_rate is None:
        raise ValueError(f"{integrator.name} needs a learning_rate: a positive number or an optax schedule.")
    else:
        check_learning_rate(learning_rate, allow_zero=True)

    def init_fn(params: Params) -> IntegratorState:
        # A buffer per count: a state donated to a jitted step must not hold one buffer twice.
        count, oracle_evals, skipped = (jnp.zeros([], jnp.int32) for _ in range(3))
        return IntegratorState(count, oracle_evals, skipped, integrator.init(params))

    def update_fn(
        updates: optax.Updates,
        state: IntegratorState,
        params: Params | None = None,
        *,
        value_fn: Callable[[Params], jax.Array] | None = None,
        grad_fn: GradFn | None = None,
        full_params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, IntegratorState]:
        del extra_args
        check_updates_match(integrator.name, updates, params)
        check_state_matches(integrator.name, state, init_fn, params)
        oracle = resolve_oracle(
            integrator.name,
            params,
            value_fn,
            grad_fn,
            required=integrator.needs_oracle,
            full_params=full_params,
            flag_nonfinite=integrator.flags_nonfinite_loss,
        )
        if integrator.chooses_step_size:
            increment, stage_state, calls = integrator.step(oracle, params, updates, None, state.stage_state)
            fault = jnp.zeros([], jnp.int32)
        else:
            assert learning_rate is not None  # refused above for an integrator that takes the schedule's step
            h = checked_step_size(integrator.name, learning_rate, state.count)
            increment, stage_state, calls = integrator.step(oracle, params, updates, h, state.stage_state)
            increment, stage_state, _, fault = commit_step(h, increment, stage_state, state.stage_state)
        new_state = IntegratorState(
            count=optax.safe_increment(state.count),  # pyright: ignore[reportArgumentType]  # optax types the result as ArrayLike; it is an array
            oracle_evals=state.oracle_evals + jnp.asarray(calls, jnp.int32),
            skipped=state.skipped + fault,
            stage_state=stage_state,
        )
        return increment, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)  # pyright: ignore[reportArgumentType]  # optax's TransformUpdateFn admits no own state type nor keyword-only extra arguments


def oracle_evaluations(opt_state: optax.OptState) -> jax.Array:
    """Total oracle calls recorded in an optimizer state, summed over an optax chain.

    Every flowopt state exposes a field ``oracle_evals``; plain optax states
    contribute zero. The gradient evaluations of a training run are the steps
    taken (one incoming gradient each) plus this number.
    """
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "oracle_evals")
    return sum((jnp.asarray(value, jnp.int32) for _, value in found), jnp.zeros([], jnp.int32))


def skipped_steps(opt_state: optax.OptState) -> jax.Array:
    """Steps not applied because their size or result was not finite (or the size negative), summed over a chain.

    Every flowopt state exposes a field ``skipped`` (see the module docstring);
    plain optax states contribute zero. A run whose count grows is not
    progressing: look for a schedule returning NaN or a negative value, or a
    loss that is NaN or overflows at the step's stage points.
    """
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "skipped")
    return sum((jnp.asarray(value, jnp.int32) for _, value in found), jnp.zeros([], jnp.int32))
