"""A non-finite guard: no integrator step ever writes NaN or inf into the parameters.

A step ``θ_{n+1} = θ_n + Δθ`` is *non-finite* when the incoming gradient, a
stage gradient, a stage loss (when the oracle is ``value_fn``) or the
candidate ``θ_{n+1}`` contains NaN or inf. :func:`guard_nonfinite` wraps any
optax transformation (every flowopt integrator included) so that such a step
returns zero updates, keeps the previous inner state, and is counted.

Comparison with ``optax.apply_if_finite``: that wrapper looks only at the
incoming gradient, before the inner update runs, and after
``max_consecutive_errors`` failures gives up and applies the non-finite
update. A multi-stage integrator fails in a different place: the gradient at
``θ_n`` is fine, but a stage point ``θ_n - h Σ a_ij k_j`` lies where the loss
overflows. The guard therefore reuses ``optax.apply_if_finite`` for the
incoming gradient (so no oracle call is spent when it is already non-finite)
and never gives up, and adds the check after the inner update: the increment,
the candidate parameters and, through :func:`flag_nonfinite_loss`, the losses
the integrator evaluated. A flowopt integrator that meets a non-finite stage
already returns a zero increment and counts the step in its ``skipped``
(:func:`flowopt.skipped_steps`); the guard reads that count, so such a step
is rejected as a whole: the inner state, the other members of a chain
included (Adam's moments), stays as it was.

What the guard cannot do: a fixed-step method whose step lands in a
non-finite region from the same point is rejected again on every call (the
parameters stay where they were). Recovery needs something to change: a new
minibatch, or an adaptive method. As with ``optax.apply_if_finite``, a
rejected update leaves the inner state as it was, so a schedule inside the
inner transformation does not advance over rejected updates. Adaptive methods
(:func:`flowopt.adaptive_runge_kutta`) reject non-finite steps themselves and
shrink the step, so they need no guard; wrapping them is harmless. The loss
at the candidate ``θ_{n+1}`` is seen only by methods that evaluate it (the
last stage of the FSAL pairs ``BOSH3`` and ``DOPRI5``), or by the guard with
``check_loss=True``, which spends one forward evaluation per step on it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flowopt.core.integrator import oracle_evaluations, skipped_steps
from flowopt.core.oracle import flag_nonfinite_loss
from flowopt.core.trees import tree_all_finite
from flowopt.core.types import Params

_NEVER_GIVE_UP = int(jnp.iinfo(jnp.int32).max)


class GuardState(NamedTuple):
    """State of :func:`guard_nonfinite` below ``optax.ApplyIfFiniteState``.

    Attributes:
      rejected: updates zeroed because the step was non-finite (int32); the
        updates skipped for a non-finite incoming gradient are counted by the
        enclosing ``ApplyIfFiniteState.total_notfinite``.
      oracle_evals: oracle calls spent in rejected steps, whose inner states
        were discarded (int32), so that ``oracle_evaluations`` stays honest.
      loss_evals: losses evaluated at candidates with ``check_loss=True`` (int32).
      inner_state: the wrapped transformation's state.
    """

    rejected: jax.Array
    oracle_evals: jax.Array
    loss_evals: jax.Array
    inner_state: optax.OptState


def _reject_nonfinite_steps(
    inner: optax.GradientTransformationExtraArgs, check_loss: bool
) -> optax.GradientTransformationExtraArgs:
    def init_fn(params: Params) -> GuardState:
        # A buffer per count: a state donated to a jitted step must not hold one buffer twice.
        rejected, oracle_evals, loss_evals = (jnp.zeros([], jnp.int32) for _ in range(3))
        return GuardState(rejected, oracle_evals, loss_evals, inner_state=inner.init(params))

    def update_fn(updates, state: GuardState, params: Params | None = None, *, value_fn=None, **extra_args):
        if check_loss and (value_fn is None or params is None):
            raise ValueError("guard_nonfinite(check_loss=True) needs params and value_fn= in update().")
        if value_fn is not None:
            extra_args["value_fn"] = flag_nonfinite_loss(value_fn)
        increment, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        # A flowopt integrator that met a non-finite stage returns a zero increment and counts the
        # step in its `skipped`; the guard rejects such a step too, so that the other members of a
        # chain (Adam's moments before it) do not advance over a step that was not taken.
        finite = tree_all_finite(increment) & (skipped_steps(inner_state) == skipped_steps(state.inner_state))
        if params is not None:
            candidate = optax.apply_updates(params, increment)
            finite &= tree_all_finite(candidate)
            if check_loss and value_fn is not None:  # with check_loss, value_fn is required (checked above)
                finite &= jnp.all(jnp.isfinite(value_fn(candidate)))
        spent = oracle_evaluations(inner_state) - oracle_evaluations(state.inner_state)
        zeros = jax.tree.map(jnp.zeros_like, increment)
        return optax.tree.where(finite, increment, zeros), GuardState(
            rejected=state.rejected + jnp.where(finite, 0, 1).astype(jnp.int32),
            oracle_evals=state.oracle_evals + jnp.where(finite, 0, spent).astype(jnp.int32),
            loss_evals=state.loss_evals + int(check_loss),
            inner_state=optax.tree.where(finite, inner_state, state.inner_state),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)  # pyright: ignore[reportArgumentType]  # optax's TransformUpdateFn admits no own state type nor keyword-only extra arguments


def guard_nonfinite(inner: optax.GradientTransformation, *, check_loss: bool = False) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` so that a non-finite step returns zero updates and is counted.

    ``update(grads, state, params, value_fn=..., grad_fn=...)`` returns the
    inner update when the incoming gradient, every gradient and loss the
    inner transformation evaluated, the increment and ``params + increment``
    are finite; otherwise zeros, with the inner state left as it was. With
    ``check_loss=True`` the loss at ``params + increment`` must be finite too
    (one forward evaluation of ``value_fn`` per update, counted in
    ``GuardState.loss_evals``): then no step can land where the next gradient
    would be non-finite, and training that rejects a step always stays where
    it can continue. The
    state is ``optax.ApplyIfFiniteState`` (incoming-gradient failures, never
    giving up) around :class:`GuardState` (step failures and the oracle calls
    they spent); :func:`guard_counts` reads both.

    A step is non-finite when, during the update, the wrapped flowopt
    integrator skipped a step (a NaN or inf stage gradient or loss makes it
    return a zero increment and count the step in its ``skipped``, see
    :func:`flowopt.skipped_steps`), or the increment or ``params + increment``
    is not finite. The whole inner state is then kept as it was, the other
    members of an ``optax.chain`` included, and the step is counted in
    ``nonfinite_steps``. A NaN or inf in the incoming gradient skips the
    update before the inner transformation runs (no oracle call is spent)
    and is counted in ``nonfinite_gradients``; the guard never gives up.

    Example (a loss that is NaN beyond ``|w| > 2``: rk4's stages step there, so the step is rejected):

        >>> import jax, jax.numpy as jnp, flowopt
        >>> loss = lambda w: jnp.where(jnp.abs(w) > 2.0, jnp.nan, w**2).sum()
        >>> tx = flowopt.guard_nonfinite(flowopt.rk4(5.0))
        >>> params = jnp.array([1.0])
        >>> updates, state = tx.update(jax.grad(loss)(params), tx.init(params), params, value_fn=loss)
        >>> updates, {name: int(count) for name, count in flowopt.guard_counts(state).items()}
        (Array([0.], dtype=float32), {'nonfinite_gradients': 0, 'nonfinite_steps': 1})

    Raises:
      ValueError: if ``inner`` is not an optax transformation (for instance
        the constructor ``flowopt.rk4`` instead of ``flowopt.rk4(0.5)``) or
        ``check_loss`` is not a bool.
    """
    _check_transformation(inner, "guard_nonfinite")
    if not isinstance(check_loss, (bool, np.bool_)):
        raise ValueError(f"guard_nonfinite: check_loss must be True or False, got {check_loss!r}.")
    inner = optax.with_extra_args_support(inner)
    guarded = optax.apply_if_finite(_reject_nonfinite_steps(inner, check_loss), max_consecutive_errors=_NEVER_GIVE_UP)
    return optax.with_extra_args_support(guarded)  # the same object: apply_if_finite forwards extra arguments


def _check_transformation(inner: Any, wrapper: str, argument: str = "inner") -> None:
    """Raise ``ValueError`` naming ``wrapper`` and ``argument`` unless ``inner`` is an optax transformation."""
    if isinstance(inner, optax.GradientTransformation) or (
        callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))
    ):
        return
    hint = ""
    if callable(inner):
        name = getattr(inner, "__name__", type(inner).__name__)
        hint = f" ({name} is a function: call it to build the optimizer, e.g. {name}(learning_rate))"
    raise ValueError(
        f"{wrapper}: {argument} must be an optax GradientTransformation (with init and update), got {inner!r}{hint}."
    )


def guard_counts(opt_state: optax.OptState) -> dict[str, jax.Array]:
    """Counts of the guards found in ``opt_state`` (summed over an optax chain).

    Returns ``nonfinite_gradients`` (updates skipped because the incoming
    gradient was non-finite) and ``nonfinite_steps`` (updates zeroed because
    a stage or the candidate was non-finite), both int32.

    Raises:
      ValueError: if ``opt_state`` holds no guard state (then there is nothing
        to count, and zeros would read as "no failures").
    """
    skipped = [
        state.total_notfinite
        for state in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ApplyIfFiniteState))
        if isinstance(state, optax.ApplyIfFiniteState) and isinstance(state.inner_state, GuardState)
    ]
    zeroed = [
        state.rejected
        for state in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, GuardState))
        if isinstance(state, GuardState)
    ]
    if not zeroed:
        raise ValueError(
            "guard_counts: opt_state holds no flowopt guard state; wrap the optimizer with "
            "flowopt.guard_nonfinite and pass its state."
        )
    zero = jnp.zeros([], jnp.int32)
    return {"nonfinite_gradients": sum(skipped, zero), "nonfinite_steps": sum(zeroed, zero)}
