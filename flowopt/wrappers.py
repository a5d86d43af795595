"""flowopt integrators inside optax's wrappers: what composes, what cannot, and the supported forms.

An integrator's first stage ``k1`` is the ``updates`` it receives; its later
stages come from the oracle. A wrapper that changes ``k1`` or hides the
oracle breaks that contract silently:

* ``optax.MultiSteps`` hands the integrator the gradient *averaged* over
  ``k`` micro-batches, while the oracle passed with the last micro-batch sees
  that batch alone, so the stages would integrate two different objectives.
  No integrator can repair that from inside (it never sees the other
  micro-batches), so a method that calls the oracle refuses to run inside
  it (:func:`flowopt.core.oracle.resolve_oracle`). The supported form is :func:`accumulated_oracle`: one
  update per accumulated batch, whose every stage is the gradient of the mean
  loss over the micro-batches, computed one micro-batch at a time.
* ``optax.lookahead`` calls its fast optimizer without extra arguments, so a
  multi-stage fast optimizer gets no oracle. :func:`lookahead` is the same
  algorithm (it runs ``optax.lookahead`` itself) with the keyword arguments
  of ``update`` forwarded to the fast optimizer, evaluated at ``params.fast``.
* Transformations placed before the integrator in a chain (clipping, weight
  decay, accumulation) change ``k1`` only. :func:`check_oracle` wraps an
  integrator and compares ``k1`` with the oracle's gradient at ``params`` on
  every update (one more gradient evaluation), so such a chain fails loudly.

``optax.masked`` and ``optax.multi_transform`` compose once ``full_params``
is passed (see :mod:`flowopt.core.oracle`); ``optax.apply_if_finite`` composes as
it is (a flowopt integrator skips and counts a step whose stages are
non-finite by itself; :func:`flowopt.guard_nonfinite` is the stronger form).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from flowopt.core.checks import check_integer, check_range
from flowopt.core.oracle import _scalar_checked, check_updates_match, conjugate_if_complex, resolve_oracle
from flowopt.core.types import Params
from flowopt.guard import _check_transformation

_CHECK = "flowopt.check_oracle"


class CheckOracleState(NamedTuple):
    """State of :func:`check_oracle`.

    Attributes:
      oracle_evals: oracle calls the check made, one per update (int32);
        :func:`flowopt.oracle_evaluations` adds them to the wrapped optimizer's.
      mismatches: updates whose first stage differed from the oracle's
        gradient beyond the tolerance (int32).
      difference: ``||k1 - ∇f(θ)|| / max(||k1||, ||∇f(θ)||)`` at the last
        update (float32; 0 when both are zero).
      inner_state: the wrapped optimizer's state.
    """

    oracle_evals: jax.Array
    mismatches: jax.Array
    difference: jax.Array
    inner_state: optax.OptState


def check_oracle(
    inner: optax.GradientTransformation,
    *,
    rtol: float = 1e-3,
    atol: float = 0.0,
    raise_on_mismatch: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Wrap an integrator so that a first stage inconsistent with its oracle is caught.

    Every ``update(grads, state, params, value_fn=... | grad_fn=...)`` first
    evaluates the oracle at ``params`` (one gradient evaluation, counted in
    the state's ``oracle_evals``) and compares it with the incoming
    ``grads``, the integrator's first stage ``k1``. It is a mismatch when::

        ||k1 - ∇f(θ)|| > atol + rtol · max(||k1||, ||∇f(θ)||)

    (norms over the whole pytree). A mismatch means the stages after the first
    would integrate another vector field than ``k1``: a transformation before
    the integrator changed the gradient (``optax.clip_by_global_norm``,
    ``optax.add_decayed_weights``), ``optax.MultiSteps`` averaged it over
    micro-batches (use :func:`accumulated_oracle`), or the oracle is bound to
    another batch or random key than the gradient. Place the wrapper directly
    around the integrator, where ``k1`` enters it::

        tx = optax.chain(optax.clip_by_global_norm(1.0),
                         flowopt.check_oracle(flowopt.bdf(2, 0.5, 3)))   # raises: clipping before bdf

    With ``raise_on_mismatch`` a mismatch raises ``ValueError`` naming the
    relative difference and the likely causes: at once outside ``jit``; under
    ``jit`` from a host callback that runs only on a mismatch, so the error
    arrives wrapped in a ``jax.errors.JaxRuntimeError`` when the result is
    read. Otherwise mismatches are only counted in the state. Non-finite
    gradients are not compared (the integrator skips such steps itself).
    Rounding makes two evaluations of one gradient differ slightly; near a
    stationary point that can exceed ``rtol`` of a tiny gradient, so the check
    is meant for the first steps of a run or a test, or set ``atol``.

    Args:
      inner: the integrator (any optax transformation that takes the oracle).
      rtol, atol: finite non-negative tolerances (not both zero).
      raise_on_mismatch: raise on a mismatch (``True``) or only count it.

    Raises:
      ValueError: if ``inner`` is not an optax transformation, a tolerance is
        not a finite non-negative number, or ``raise_on_mismatch`` is not a bool;
        in ``update``, if the oracle or ``params`` is missing.
    """
    _check_transformation(inner, _CHECK)
    rtol_value = check_range("rtol", rtol, 0.0, math.inf, low_open=False)
    atol_value = check_range("atol", atol, 0.0, math.inf, low_open=False)
    if rtol_value == 0 and atol_value == 0:
        raise ValueError(f"{_CHECK}: rtol and atol are both zero; two evaluations of one gradient may differ by rounding.")
    if not isinstance(raise_on_mismatch, (bool, np.bool_)):
        raise ValueError(f"{_CHECK}: raise_on_mismatch must be True or False, got {raise_on_mismatch!r}.")
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: Params) -> CheckOracleState:
        # A buffer per count: a state donated to a jitted step must not hold one buffer twice.
        oracle_evals, mismatches = (jnp.zeros([], jnp.int32) for _ in range(2))
        return CheckOracleState(oracle_evals, mismatches, jnp.zeros([], jnp.float32), inner.init(params))

    def update_fn(
        updates: optax.Updates, state: CheckOracleState, params: Params | None = None, **extra_args: Any
    ) -> tuple[optax.Updates, CheckOracleState]:
        check_updates_match(_CHECK, updates, params)
        oracle = resolve_oracle(
            _CHECK,
            params,
            extra_args.get("value_fn"),
            extra_args.get("grad_fn"),
            full_params=extra_args.get("full_params"),
        )
        assert oracle is not None  # required (the default): resolve_oracle raises rather than return None
        reference = oracle(params)
        gap = optax.tree.norm(optax.tree.sub(updates, reference))
        scale = jnp.maximum(optax.tree.norm(updates), optax.tree.norm(reference))
        mismatch = gap > atol + rtol * scale
        difference = jnp.where(scale > 0, gap / jnp.where(scale > 0, scale, 1), 0).astype(jnp.float32)
        if raise_on_mismatch:
            _raise_on_mismatch(mismatch, difference, rtol, atol)
        updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        return updates, CheckOracleState(
            oracle_evals=state.oracle_evals + 1,
            mismatches=state.mismatches + mismatch.astype(jnp.int32),
            difference=difference,
            inner_state=inner_state,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)  # pyright: ignore[reportArgumentType]  # optax's TransformUpdateFn admits no state type of its own


def _mismatch_message(difference: float, rtol: float, atol: float) -> str:
    return (
        f"{_CHECK}: the gradient passed to update() (the first stage k1) differs from the oracle's gradient at "
        f"params: ||k1 - grad f|| / max(||k1||, ||grad f||) = {difference:.3g} (rtol={rtol:g}, atol={atol:g}), so "
        "the later stages would integrate another vector field than the first. Likely causes: a transformation "
        "before the integrator changed the gradient (optax.clip_by_global_norm, optax.add_decayed_weights, a "
        "scaling): put it after the integrator or into the loss; optax.MultiSteps averaged k1 over micro-batches "
        "while value_fn sees one: use flowopt.accumulated_oracle; value_fn or grad_fn is bound to another batch, "
        "random key or dropout mask than the gradient."
    )


def _raise_on_mismatch(mismatch: jax.Array, difference: jax.Array, rtol: float, atol: float) -> None:
    """Raise at once for concrete values; under ``jit`` from a host callback that runs only on a mismatch."""
    if not isinstance(mismatch, jax.core.Tracer):
        if bool(mismatch):
            raise ValueError(_mismatch_message(float(difference), rtol, atol))
        return

    def report(flags: np.ndarray, differences: np.ndarray) -> None:
        # Under vmap the condition becomes a select, so the callback runs for every member: check the flags.
        flags = np.asarray(flags)
        if flags.any():
            raise ValueError(_mismatch_message(float(np.max(np.asarray(differences)[flags])), rtol, atol))

    jax.lax.cond(mismatch, lambda: jax.debug.callback(report, mismatch, difference), lambda: None)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["microbatches"], meta_fields=["loss_fn"])
@dataclasses.dataclass(frozen=True)
class AccumulatedOracle:
    """The gradient of the mean loss over stacked micro-batches, one micro-batch in memory at a time.

    The objective is ``F(θ) = (1/k) Σ_{j<k} loss_fn(θ, microbatches[j])``;
    with ``loss_fn`` a mean over examples and micro-batches of equal size it
    is the mean loss over the whole accumulated batch. Calling the oracle
    returns ``∇F(θ)``; :meth:`value_and_grad` returns ``(F(θ), ∇F(θ))``. Both
    run a ``lax.scan`` over the micro-batches that adds up each micro-batch's
    ``jax.value_and_grad``, so the activations of one micro-batch are alive at
    a time (differentiating a ``lax.map`` of the losses instead would keep all
    of them for the backward pass). Complex parameters get ``conj(∇F)``, the
    convention of the oracle (see :func:`flowopt.core.oracle.conjugate_if_complex`).

    It is a pytree whose leaves are the micro-batches (``loss_fn`` is static),
    so it crosses a ``jit`` boundary as an argument and a new accumulated
    batch of the same shapes reuses the compiled step. Build it with
    :func:`accumulated_oracle`, which checks the arguments.

    Attributes:
      loss_fn: ``(params, batch) -> scalar loss`` for one micro-batch.
      microbatches: a pytree of arrays whose leading axis, of the same size
        ``k ≥ 1`` in every leaf, indexes the micro-batches.
    """

    loss_fn: Callable[[Params, Any], jax.Array]
    microbatches: Any

    def value_and_grad(self, params: Params) -> tuple[jax.Array, Params]:
        """The mean loss ``F(θ)`` and its gradient ``∇F(θ)`` (conjugated for complex parameters)."""
        count = jax.tree.leaves(self.microbatches)[0].shape[0]

        def loss_of(batch: Any) -> Callable[[Params], jax.Array]:
            return _scalar_checked("flowopt.accumulated_oracle", lambda p: self.loss_fn(p, batch))

        first = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), self.microbatches)
        loss_shape = jax.eval_shape(lambda p, batch: loss_of(batch)(p), params, first)

        def add(total: tuple[jax.Array, Params], batch: Any) -> tuple[tuple[jax.Array, Params], None]:
            loss, grads = jax.value_and_grad(loss_of(batch))(params)
            return (total[0] + loss, optax.tree.add(total[1], grads)), None

        start = (jnp.zeros([], loss_shape.dtype), optax.tree.zeros_like(params))
        (loss, grads), _ = jax.lax.scan(add, start, self.microbatches)
        mean = jax.tree.map(lambda g: conjugate_if_complex(g / jnp.asarray(count, g.dtype)), grads)
        return loss / count, mean

    def __call__(self, params: Params) -> Params:
        """``∇F(θ)``: the oracle to pass to ``update`` as ``grad_fn``."""
        return self.value_and_grad(params)[1]


def accumulated_oracle(loss_fn: Callable[[Params, Any], jax.Array], microbatches: Any) -> AccumulatedOracle:
    """Gradient accumulation for integrators: every stage sees the mean loss over ``k`` micro-batches.

    ``optax.MultiSteps`` cannot do this for a multi-stage method (its later
    stages would see the last micro-batch only). Instead, stack the
    micro-batches on a leading axis and take one update per accumulated
    batch, with this oracle for the first stage and for the others::

        microbatches = jax.tree.map(lambda x: x.reshape(k, -1, *x.shape[1:]), batch)
        oracle = flowopt.accumulated_oracle(loss_fn, microbatches)   # loss_fn(params, batch)
        loss, grads = oracle.value_and_grad(params)
        updates, opt_state = tx.update(grads, opt_state, params, grad_fn=oracle)

    An ``s``-stage step then costs ``s`` passes over the ``k`` micro-batches,
    with the memory of one micro-batch; see :class:`AccumulatedOracle`.

    Raises:
      ValueError: if ``loss_fn`` is not callable or ``microbatches`` is not a
        non-empty pytree of arrays sharing a leading axis of size at least 1.
    """
    if not callable(loss_fn):
        raise ValueError(f"flowopt.accumulated_oracle: loss_fn must be a function (params, batch) -> loss, got {loss_fn!r}.")
    leaves = jax.tree_util.tree_leaves_with_path(microbatches)
    if not leaves:
        raise ValueError("flowopt.accumulated_oracle: microbatches holds no arrays; stack the micro-batches on a leading axis.")
    sizes = {}
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path) or "the root"
        if not isinstance(leaf, (jax.Array, np.ndarray)) or leaf.ndim == 0:
            raise ValueError(
                f"flowopt.accumulated_oracle: the leaf at {where} of microbatches is "
                f"{'a scalar' if isinstance(leaf, (jax.Array, np.ndarray)) else type(leaf).__name__}; every leaf must "
                "be an array whose leading axis indexes the micro-batches."
            )
        sizes[where] = leaf.shape[0]
    if len(set(sizes.values())) > 1 or 0 in sizes.values():
        raise ValueError(
            "flowopt.accumulated_oracle: every leaf of microbatches needs the same leading size k ≥ 1 (the number of "
            f"micro-batches), got {sizes}."
        )
    return AccumulatedOracle(loss_fn, microbatches)


def lookahead(
    fast_optimizer: optax.GradientTransformation,
    sync_period: int,
    slow_step_size: float,
    reset_state: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``optax.lookahead`` whose fast optimizer receives the oracle (and every other keyword argument).

    Lookahead (Zhang et al., 2019) takes ``sync_period`` steps of the fast
    optimizer on ``params.fast`` and then moves the slow parameters by
    ``slow_step_size`` towards the fast ones, restarting the fast parameters
    there. ``optax.lookahead`` calls its fast optimizer without extra
    arguments, so ``optax.lookahead(flowopt.rk4(...))`` fails: a direct
    ``update(..., value_fn=...)`` is a ``TypeError``, and inside
    ``optax.chain`` the oracle is dropped and the integrator says it needs
    one. This wrapper runs ``optax.lookahead`` itself (same state, same
    updates) with ``update``'s keyword arguments bound to the fast optimizer,
    so the oracle is evaluated at fast parameters::

        tx = flowopt.lookahead(flowopt.rk4(0.1), sync_period=5, slow_step_size=0.5)
        params = optax.LookaheadParams.init_synced(params)
        grads = jax.grad(loss)(params.fast)
        updates, state = tx.update(grads, state, params, value_fn=loss)

    Raises:
      ValueError: if ``fast_optimizer`` is not an optax transformation,
        ``sync_period`` is not an integer ≥ 1, ``slow_step_size`` is not in
        ``(0, 1]``, or ``reset_state`` is not a bool; in ``update``, if
        ``params`` is not an ``optax.LookaheadParams``.
    """
    _check_transformation(fast_optimizer, "flowopt.lookahead", "fast_optimizer")
    sync_period = check_integer("sync_period", sync_period, 1)
    check_range("slow_step_size", slow_step_size, 0.0, 1.0, high_open=False)
    if not isinstance(reset_state, (bool, np.bool_)):
        raise ValueError(f"flowopt.lookahead: reset_state must be True or False, got {reset_state!r}.")
    fast_optimizer = optax.with_extra_args_support(fast_optimizer)

    def with_arguments(extra_args: dict[str, Any]) -> optax.GradientTransformation:
        bound = optax.GradientTransformation(
            fast_optimizer.init, lambda updates, state, params=None: fast_optimizer.update(updates, state, params, **extra_args)
        )
        return optax.lookahead(bound, sync_period, slow_step_size, reset_state)

    def update_fn(
        updates: optax.Updates, state: optax.LookaheadState, params: optax.LookaheadParams | None = None, **extra_args: Any
    ) -> tuple[optax.Updates, optax.OptState]:
        if not isinstance(params, optax.LookaheadParams):
            raise ValueError(
                "flowopt.lookahead: update() needs params as optax.LookaheadParams (fast and slow parameters, "
                f"e.g. optax.LookaheadParams.init_synced(params)), got {type(params).__name__}."
            )
        return with_arguments(extra_args).update(updates, state, params)

    return optax.GradientTransformationExtraArgs(with_arguments({}).init, update_fn)  # pyright: ignore[reportArgumentType]  # optax's TransformUpdateFn admits no state or params type of its own
