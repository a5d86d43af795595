"""One training step's loss, gradient and oracle for models with state (batch statistics, dropout RNGs).

A multi-stage method evaluates the loss at several points per step, and each
evaluation runs the model. A model with state changes it when it runs: a
BatchNorm layer in training mode updates its running statistics, a dropout
layer that draws from an ``nnx.Rngs`` advances the stream's count and so
draws a new mask. If the oracle ran the model as it stands, its stages would
see other masks than the incoming gradient (another objective), and under
``jax.grad`` NNX refuses the mutation outright (``TraceContextError: Cannot
mutate RngCount``).

The functions here evaluate the objective as a pure function of
``(params, state)``: every evaluation (the incoming gradient at ``params``
and every stage of the method) starts from the state the step started from,
so all of them use the same dropout masks and the same BatchNorm mode, and
the state after the evaluation at ``params``, the one a plain forward pass
would leave, is the step's new state (statistics updated and RNG counts
advanced once per step). The oracle is a :class:`jax.tree_util.Partial`
whose leaves are that starting state and the batch, so it crosses ``jit``.

- :func:`step_oracle` takes any objective ``(params, state, *args) -> (loss,
  new_state)``: a Linen ``apply`` with ``mutable=["batch_stats"]`` and a
  dropout key in ``args``, or a hand-written model.
- :func:`nnx_step_oracle` takes an NNX model and a ``loss_fn(model, batch)``
  and writes the new state back into the model, for ``nnx.Optimizer``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from flax import nnx

from flowopt.core.oracle import check_scalar_loss

Params = Any


class StepOracle(NamedTuple):
    """What one training step needs, all evaluated at ``params`` with the step's starting state.

    Attributes:
      loss: the objective at ``params`` (a real scalar).
      grads: its gradient, a pytree like ``params``: the incoming gradient
        (stage ``k1``) for ``tx.update``.
      value_fn: the oracle for ``tx.update(..., value_fn=value_fn)``: params ->
        the objective on the same batch, starting from the same state. A
        :class:`jax.tree_util.Partial` whose leaves are that state and the
        batch; ``jax.grad(value_fn)(params)`` equals ``grads``.
      state: the state after the evaluation at ``params``, i.e. after one
        plain forward pass: the state to carry to the next step.
      aux: the auxiliary output at ``params`` (``None`` unless ``has_aux``).
    """

    loss: jax.Array
    grads: Params
    value_fn: jax.tree_util.Partial
    state: Any
    aux: Any


def step_oracle(
    objective: Callable[..., tuple[jax.Array, Any]],
    params: Params,
    state: Any,
    *args: Any,
    has_aux: bool = False,
) -> StepOracle:
    """Loss, gradient, oracle and new state of one step of a stateful objective.

    ``objective(params, state, *args)`` returns ``(loss, new_state)``, or
    ``(loss, (aux, new_state))`` with ``has_aux``: ``loss`` a real scalar,
    ``state`` what the model mutates when it runs (BatchNorm statistics, RNG
    counts), ``args`` the step's data (the batch, a dropout key). The oracle
    evaluates ``objective(p, state, *args)`` with the ``state`` given here, so
    every stage of a multi-stage method sees the same data, dropout masks and
    batch statistics as the returned gradient; only the evaluation at
    ``params`` produces the returned ``state``. A Linen train step::

        def objective(params, batch_stats, batch, dropout_key):
            logits, updates = module.apply(
                {"params": params, "batch_stats": batch_stats}, batch["image"], train=True,
                rngs={"dropout": dropout_key}, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            return loss, updates["batch_stats"]

        step = flowopt.step_oracle(objective, state.params, state.batch_stats, batch,
                                   jax.random.fold_in(key, state.step))
        state = state.apply_gradients(grads=step.grads, value_fn=step.value_fn, batch_stats=step.state)

    ``objective`` should be the same object at every step (a module-level
    function, not a lambda made inside the step) when ``value_fn`` is passed
    into a jitted function: it is the static part of the ``Partial``.

    Raises:
      ValueError: if ``objective`` is not callable, ``params`` has no array
        leaves, ``has_aux`` is not a bool, or (when traced) ``objective`` does
        not return the pair above with a real floating-point scalar loss.
    """
    if not callable(objective):
        raise ValueError(
            f"step_oracle: objective must be a callable (params, state, *args) -> (loss, new_state), "
            f"got {type(objective).__name__}."
        )
    _check_has_aux("step_oracle", has_aux)
    if not jax.tree.leaves(params):
        raise ValueError("step_oracle: params has no array leaves; there is nothing to differentiate.")
    value = _StatefulValue(objective, has_aux)
    (loss, (aux, new_state)), grads = jax.value_and_grad(value.evaluate, has_aux=True)(params, state, args)
    return StepOracle(loss, grads, jax.tree_util.Partial(value, state, args), new_state, aux)


@dataclasses.dataclass(frozen=True)
class _StatefulValue:
    """``objective`` with its output checked; called as ``(state, args, params)`` it is the oracle."""

    objective: Callable[..., tuple[jax.Array, Any]]
    has_aux: bool

    def evaluate(self, params: Params, state: Any, args: tuple[Any, ...]) -> tuple[jax.Array, tuple[Any, Any]]:
        """``(loss, (aux, new_state))`` at ``params``; ``aux`` is ``None`` without ``has_aux``."""
        out = self.objective(params, state, *args)
        if not _is_pair(out):
            expected = "(loss, (aux, new_state))" if self.has_aux else "(loss, new_state)"
            raise ValueError(f"step_oracle: objective must return {expected}, got {_describe(out)}.")
        if self.has_aux and not _is_pair(out[1]):
            raise ValueError(
                f"step_oracle: with has_aux=True, objective must return (loss, (aux, new_state)), "
                f"got (loss, {_describe(out[1])})."
            )
        loss, rest = out
        aux, new_state = rest if self.has_aux else (None, rest)
        return check_scalar_loss("step_oracle", "objective", loss), (aux, new_state)

    def __call__(self, state: Any, args: tuple[Any, ...], params: Params) -> jax.Array:
        return self.evaluate(params, state, args)[0]


@dataclasses.dataclass(frozen=True)
class NNXObjective:
    """An NNX model's loss as a pure objective ``(params, state, batch) -> (loss, (aux, new_state))``.

    Each call merges a fresh copy of the model from ``graphdef``, ``params``
    (the ``wrt`` variables) and ``state`` (every other variable: batch
    statistics, RNG keys and counts), runs ``loss_fn(model, batch)`` on it, and
    returns the copy's variables other than ``wrt`` as ``new_state``; the
    arguments are never mutated, so the call may be repeated under
    ``jax.grad`` from the same state. With ``rngs`` (the graph definition of an
    ``nnx.Rngs``) ``state`` is the pair ``(model state, Rngs state)``, a fresh
    ``Rngs`` is passed as ``loss_fn(model, batch, rngs)`` and ``new_state`` is
    the pair after the call.

    Attributes:
      graphdef: the model's graph definition (it carries the training or
        evaluation mode of BatchNorm and Dropout).
      loss_fn: ``(model, batch[, rngs]) -> loss``, or ``(loss, aux)`` with ``has_aux``.
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``; ``aux`` is ``None`` otherwise.
      rngs: the graph definition of the ``nnx.Rngs`` passed to ``loss_fn``, or ``None``.
      wrt: the filter of the differentiated variables (``nnx.Param``).
    """

    graphdef: nnx.GraphDef
    loss_fn: Callable[..., Any]
    has_aux: bool = False
    rngs: nnx.GraphDef | None = None
    wrt: Any = nnx.Param

    def __call__(self, params: nnx.State, state: Any, batch: Any) -> tuple[jax.Array, tuple[Any, Any]]:
        model_state, rngs_state = state if self.rngs is not None else (state, None)
        model = nnx.merge(self.graphdef, params, model_state, copy=True)  # fresh Variables at this trace level
        if self.rngs is None:
            out = self.loss_fn(model, batch)
        else:
            rngs = nnx.merge(self.rngs, rngs_state, copy=True)
            out = self.loss_fn(model, batch, rngs)
        if self.has_aux and not _is_pair(out):
            raise ValueError(f"nnx_step_oracle: with has_aux=True, loss_fn must return (loss, aux), got {_describe(out)}.")
        if not self.has_aux and isinstance(out, (tuple, list)):
            raise ValueError(
                f"nnx_step_oracle: loss_fn returned {_describe(out)}; return the scalar loss, "
                "or pass has_aux=True for a loss_fn returning (loss, aux)."
            )
        loss, aux = out if self.has_aux else (out, None)
        new_model_state = nnx.split(model, self.wrt, ...)[2]
        new_state = new_model_state if self.rngs is None else (new_model_state, nnx.state(rngs))
        return check_scalar_loss("nnx_step_oracle", "loss_fn", loss), (aux, new_state)


def nnx_step_oracle(
    loss_fn: Callable[..., Any],
    model: nnx.Module,
    batch: Any,
    *,
    rngs: nnx.Rngs | None = None,
    has_aux: bool = False,
    wrt: Any = nnx.Param,
) -> StepOracle:
    """Loss, gradient and oracle of one NNX training step; updates the model's other state once.

    ``loss_fn(model, batch)`` (or ``loss_fn(model, batch, rngs)`` when ``rngs``
    is given) returns the scalar loss, or ``(loss, aux)`` with ``has_aux``. The
    gradient is taken with respect to the model's ``wrt`` variables, the
    layout ``nnx.Optimizer(model, tx, wrt=wrt)`` updates; every evaluation
    (the gradient and each of the oracle's stages) starts from the model's
    other variables and the state of ``rngs`` as they are now, so dropout draws
    the same masks and BatchNorm runs in the same mode on the same batch. After
    the call the model and ``rngs`` hold the state the evaluation at the
    current parameters left (batch statistics updated once, RNG counts advanced
    once), as after one plain forward pass. Use it inside ``nnx.jit`` (or
    ``jax.jit`` on a model merged inside the jitted function)::

        @nnx.jit
        def train_step(model, optimizer, rngs, batch):
            step = flowopt.nnx_step_oracle(loss_fn, model, batch, rngs=rngs, has_aux=True)
            optimizer.update(model, step.grads, value_fn=step.value_fn)
            return step.loss

    A dropout key that ``loss_fn`` uses directly is data like the batch: put
    it in ``batch``, or pass ``rngs=nnx.Rngs(dropout=key)``.

    Returns:
      A :class:`StepOracle`; its ``state`` is the model's new non-``wrt``
      state, paired with the new state of ``rngs`` when ``rngs`` is given.

    Raises:
      ValueError: if ``loss_fn`` is not callable, ``model`` is not an
        ``nnx.Module`` or has no ``wrt`` variables, ``rngs`` is not an
        ``nnx.Rngs`` or is held by the model (its streams would be drawn twice),
        or (when traced) ``loss_fn`` does not return a real floating-point
        scalar loss (with its ``aux`` when ``has_aux``).
    """
    if not callable(loss_fn):
        raise ValueError(f"nnx_step_oracle: loss_fn must be a callable (model, batch) -> loss, got {type(loss_fn).__name__}.")
    _check_has_aux("nnx_step_oracle", has_aux)
    if not isinstance(model, nnx.Module):
        raise ValueError(
            f"nnx_step_oracle: model must be an nnx.Module, got {type(model).__name__} "
            "(for Linen or a pure function of the parameters, use flowopt.step_oracle)."
        )
    if rngs is not None and not isinstance(rngs, nnx.Rngs):
        raise ValueError(
            f"nnx_step_oracle: rngs must be an nnx.Rngs or None, got {type(rngs).__name__} "
            "(a key the loss uses directly is data: put it in batch)."
        )
    if rngs is not None and any(node is rngs for _, node in nnx.iter_graph(model)):
        raise ValueError("nnx_step_oracle: rngs is held by the model; pass rngs=None and the model's own streams are used.")
    graphdef, params, model_state = nnx.split(model, wrt, ...)
    if not jax.tree.leaves(params):
        raise ValueError(
            f"nnx_step_oracle: the model has no variables matching wrt={wrt!r} (nnx.Param by default); "
            "there is nothing to differentiate."
        )
    # Snapshots: split returns the model's live Variables, which the update below mutates.
    if rngs is None:
        objective, state = NNXObjective(graphdef, loss_fn, has_aux, wrt=wrt), nnx.as_pure(model_state)
    else:
        rngs_graphdef, rngs_state = nnx.split(rngs)
        objective = NNXObjective(graphdef, loss_fn, has_aux, rngs_graphdef, wrt)
        state = nnx.as_pure((model_state, rngs_state))
    step = step_oracle(objective, params, state, batch, has_aux=True)
    new_model_state, new_rngs_state = step.state if rngs is not None else (step.state, None)
    nnx.update(model, new_model_state)
    if rngs is not None:
        nnx.update(rngs, new_rngs_state)
    return step


def _check_has_aux(where: str, has_aux: Any) -> None:
    if not isinstance(has_aux, bool):
        raise ValueError(f"{where}: has_aux must be True or False, got {has_aux!r}.")


def _is_pair(out: Any) -> bool:
    return isinstance(out, tuple) and len(out) == 2


def _describe(out: Any) -> str:
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of length {len(out)}"
    if hasattr(out, "shape") and hasattr(out, "dtype"):
        return f"an array of shape {tuple(out.shape)}"
    return "None" if out is None else f"a {type(out).__name__}"
