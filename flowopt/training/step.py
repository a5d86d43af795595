"""The jitted pieces of a training run: the objective, the train and eval steps, evaluation, the initial state.

The objective of a run is

    f(θ) = mean_i ℓ(model_θ(x_i), y_i) + model.penalty() + λ/2 · Σ_kernels ‖W‖²,

and *every* gradient the optimizer sees is a gradient of this same ``f`` on the
current minibatch. That is why weight decay is an L2 term in the loss rather
than ``optax.add_decayed_weights``: a multi-stage integrator evaluates
``value_fn`` at intermediate points, and a decay added only to the incoming
gradient (stage ``k1``) would make the stages integrate a different flow. For
plain SGD the two are the same update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

import flowopt
from flowopt.training import models, parallel
from flowopt.training.data import normalize, random_crop_flip


class RunState(NamedTuple):
    """All device state of a run (a pytree: it jits, shards and checkpoints)."""

    step: jax.Array
    grad_evals: jax.Array
    params: nnx.State
    model_state: nnx.State
    opt_state: optax.OptState
    rng: jax.Array


class StepMetrics(NamedTuple):
    """Per-step outputs: minibatch objective at the pre-update parameters, correct predictions.

    ``skipped`` is true when the optimizer left the parameters unchanged
    because a stage or the increment was not finite (``flowopt.skipped_steps``
    grew): the loop treats that as divergence.
    """

    loss: jax.Array
    correct: jax.Array
    skipped: jax.Array


class Preprocess(NamedTuple):
    """On-device input pipeline: optional crop+flip, then per-channel normalisation."""

    mean: np.ndarray
    std: np.ndarray
    augment: bool


def example_losses(logits: jax.Array, labels: jax.Array, kind: str) -> jax.Array:
    """Per-example data loss: ``cross_entropy`` or ``squared_error`` (½‖logits − onehot‖²)."""
    if kind == "cross_entropy":
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if kind == "squared_error":
        return 0.5 * jnp.sum((logits - jax.nn.one_hot(labels, logits.shape[-1])) ** 2, axis=-1)
    raise ValueError(f"Unknown task loss {kind!r}; valid: cross_entropy, squared_error.")


def weight_l2(params: nnx.State) -> jax.Array:
    """``½ Σ‖W‖²`` over parameters with two or more axes (kernels, not biases or scales)."""
    return 0.5 * sum((jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params) if p.ndim > 1), jnp.zeros([]))


def make_objective(
    graphdef: nnx.GraphDef, weight_decay: float, train: bool = True
) -> Callable[[nnx.State, nnx.State, jax.Array, jax.Array], tuple[jax.Array, tuple[jax.Array, nnx.State]]]:
    """``objective(params, model_state, x, y) -> (f, (logits, new_model_state))`` in training mode.

    A pure function (:class:`flowopt.NNXObjective`): ``model_state`` is not
    mutated, so BatchNorm may update its statistics under ``grad``. With
    ``train=False`` the same ``f`` is evaluated in evaluation mode (BatchNorm
    on its running statistics, no dropout): a deterministic function of the
    parameters alone.
    """
    model_objective = flowopt.NNXObjective(graphdef, _training_loss if train else _evaluation_mode_loss, has_aux=True)

    def objective(params, model_state, x, y):
        loss, aux = model_objective(params, model_state, (x, y))
        if weight_decay:
            loss = loss + weight_decay * weight_l2(params)
        return loss, aux

    return objective


def _training_loss(model: nnx.Module, batch: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    model.train()
    return _loss(model, batch)


def _evaluation_mode_loss(model: nnx.Module, batch: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    model.eval()
    return _loss(model, batch)


def _loss(model: nnx.Module, batch: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    x, y = batch
    logits = model(x)
    return jnp.mean(example_losses(logits, y, models.task_loss(model))) + models.penalty(model), logits


def model_inputs(images: jax.Array, prep: Preprocess, key: jax.Array | None) -> jax.Array:
    """What the model sees: ``images`` cropped and flipped with ``key`` (when given), then normalised by ``prep``."""
    if key is not None:
        images = random_crop_flip(key, images)
    return normalize(images, jnp.asarray(prep.mean), jnp.asarray(prep.std))


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformationExtraArgs,
    prep: Preprocess,
    weight_decay: float,
    mesh: Mesh,
    shardings: Any = None,
) -> Callable[[RunState, jax.Array, jax.Array], tuple[RunState, StepMetrics]]:
    """A jitted step: gradient at the batch, optimizer update with the batch-bound oracle.

    The oracle ``value_fn`` is a ``jax.tree_util.Partial`` whose leaves are the
    batch and the pre-step model state, so every stage of a multi-stage method
    evaluates the same minibatch objective (same BatchNorm mode, same dropout
    mask). ``grad_evals`` grows by one for the incoming gradient plus the
    optimizer's oracle calls (``flowopt.oracle_evaluations``).

    The new state has the shardings ``shardings`` (a pytree of them
    matching :class:`RunState`, as
    :func:`flowopt.training.parallel.state_shardings` gives them), replicated
    by default; the metrics are replicated.
    """
    objective = make_objective(graphdef, weight_decay)

    def step(state: RunState, images: jax.Array, labels: jax.Array) -> tuple[RunState, StepMetrics]:
        key = jax.random.fold_in(state.rng, state.step) if prep.augment else None
        x = model_inputs(images, prep, key)
        at_params = flowopt.step_oracle(objective, state.params, state.model_state, x, labels, has_aux=True)
        updates, opt_state = tx.update(at_params.grads, state.opt_state, state.params, value_fn=at_params.value_fn)
        oracle_calls = flowopt.oracle_evaluations(opt_state) - flowopt.oracle_evaluations(state.opt_state)
        new_state = RunState(
            step=state.step + 1,
            grad_evals=state.grad_evals + 1 + oracle_calls,
            params=optax.apply_updates(state.params, updates),  # pyright: ignore[reportArgumentType]  # optax types the result as ArrayTree, not params' own type
            model_state=at_params.state,
            opt_state=opt_state,
            rng=state.rng,
        )
        correct = jnp.sum(jnp.argmax(at_params.aux, -1) == labels)
        skipped = flowopt.skipped_steps(opt_state) > flowopt.skipped_steps(state.opt_state)
        return new_state, StepMetrics(at_params.loss, correct, skipped)

    replicated = parallel.replicated(mesh)
    return jax.jit(step, out_shardings=(replicated if shardings is None else shardings, replicated))


def make_eval_step(graphdef: nnx.GraphDef, prep: Preprocess, mesh: Mesh) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """A jitted ``(params, model_state, images, labels, mask) -> (loss sum, correct count)`` in eval mode."""

    def step(params, model_state, images, labels, mask):
        model = nnx.merge(graphdef, params, model_state)
        model.eval()
        logits = model(model_inputs(images, prep, None))
        losses = example_losses(logits, labels, models.task_loss(model))
        correct = (jnp.argmax(logits, -1) == labels) & mask
        return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(correct)

    replicated = parallel.replicated(mesh)
    return jax.jit(step, out_shardings=(replicated, replicated))


def evaluate(
    eval_step: Callable[..., tuple[jax.Array, jax.Array]],
    state: RunState,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    mesh: Mesh,
) -> tuple[float, float]:
    """Mean data loss and accuracy over a whole split (the last batch is padded and masked)."""
    return evaluate_split(eval_step, state, EvalSplit.build(images, labels, batch_size, mesh))


class EvalSplit(NamedTuple):
    """A split cut into equal, device-sharded ``(x, y, mask)`` batches once, for repeated evaluation."""

    batches: list[tuple[jax.Array, jax.Array, jax.Array]]
    size: int

    @classmethod
    def build(cls, images: np.ndarray, labels: np.ndarray, batch_size: int, mesh: Mesh) -> EvalSplit:
        batch_size = min(batch_size, len(images))
        batch_size = -(-batch_size // mesh.size) * mesh.size
        batches = []
        for start in range(0, len(images), batch_size):
            x, y = images[start : start + batch_size], labels[start : start + batch_size]
            mask = np.arange(batch_size) < len(x)
            pad = batch_size - len(x)
            if pad:
                x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
                y = np.concatenate([y, np.zeros(pad, y.dtype)])
            batches.append(parallel.shard_batch((x, y, mask), mesh))
        return cls(batches, len(images))


def evaluate_split(
    eval_step: Callable[..., tuple[jax.Array, jax.Array]], state: RunState, split: EvalSplit
) -> tuple[float, float]:
    """Mean data loss and accuracy over a split built once by :meth:`EvalSplit.build`."""
    sums = [eval_step(state.params, state.model_state, *batch) for batch in split.batches]
    losses, corrects = zip(*jax.device_get(sums))
    return math.fsum(map(float, losses)) / split.size, int(sum(map(int, corrects))) / split.size


def init_state(
    model: nnx.Module, tx: optax.GradientTransformation, seed: int, mesh: Mesh, param_sharding: str = "replicated"
) -> tuple[nnx.GraphDef, RunState]:
    """Split ``model`` into a graph definition and a :class:`RunState` on ``mesh``.

    The state is replicated, or with ``param_sharding="fsdp"`` its parameters
    and optimizer state are sharded (:func:`flowopt.training.parallel.fsdp_shardings`).
    """
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    state = RunState(
        step=jnp.zeros([], jnp.int32),
        grad_evals=jnp.zeros([], jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        rng=jax.random.fold_in(jax.random.key(seed), 1),
    )
    return graphdef, parallel.place_state(state, mesh, param_sharding)
