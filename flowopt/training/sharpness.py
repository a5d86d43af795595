"""Sharpness tracking: the top eigenvalues of a run's Hessian on a fixed batch, measured every N steps.

With ``TrainConfig.sharpness_every = N`` the loop measures, after every step
that is a multiple of ``N``, the ``sharpness_top`` largest eigenvalues of the
Hessian of the run's objective ``f`` (data loss, model penalty and weight
decay: ``flowopt.training.step.make_objective``) by
``sharpness_iterations`` Lanczos steps with full reorthogonalisation
(:func:`flowopt.core.lanczos.lanczos_tridiagonal`) on Hessian-vector products
(``jax.jvp`` of ``jax.grad``) over the flat parameter vector.

- **The objective** is evaluated in evaluation mode (BatchNorm on its running
  statistics, no dropout), so its Hessian is that of a deterministic function
  of the parameters; for models without BatchNorm or dropout this is exactly
  the training objective.
- **The batch** is fixed: ``sharpness_batch_size`` training examples (all of
  them if there are fewer), chosen once from the run's ``seed``, without
  augmentation, the same at every measurement and after a resume.
- **The start vector** comes from a key fixed by ``seed`` and the step, so a
  resumed run logs the same numbers bit for bit.
- **Adaptive methods** (see :mod:`flowopt.training.thresholds`) have their
  *preconditioned* sharpness ``λ_max(D^{-1/2} H D^{-1/2})`` measured, with the
  preconditioner ``D`` read from the optimizer state at the measurement.
- **Accuracy**: the values are Ritz values, approached from inside the
  spectrum (never above the true ``λ_max``); an isolated top eigenvalue
  converges geometrically in the iteration count (Kaniel–Paige–Saad).

Each measurement is a metrics row of its own (:func:`is_sharpness_row`):
``step``, ``epoch`` and ``grad_evals`` where the run stands; ``sharpness``,
the top eigenvalues in descending order; ``preconditioned``; ``rule`` and
``threshold``, the edge-of-stability threshold ``factor/η`` at the rate of the
step just taken (``null`` for a run given its own optimizer);
``learning_rate``; ``sharpness_grad_evals``, the measurements' cumulative cost
with each Hessian-vector product counted as two gradient evaluations (as
:func:`flowopt.rkc_auto` counts them), kept apart from ``grad_evals`` so
budgets are unaffected; ``time_s``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from flowopt.core.lanczos import HVP_GRADIENTS, check_basis_memory, lanczos_tridiagonal
from flowopt.core.trees import real_size
from flowopt.training import parallel
from flowopt.training.config import ConfigError, TrainConfig
from flowopt.training.data import Dataset
from flowopt.training.step import Preprocess, RunState, make_objective, model_inputs
from flowopt.training.thresholds import Preconditioner, stability_rule

SHARPNESS_STREAM = 2  # folded into the seed for the batch choice and the Lanczos keys (1 is augmentation's)

Measure = Callable[[nnx.State, nnx.State, optax.OptState, jax.Array, jax.Array, jax.Array], jax.Array]


def is_sharpness_row(row: dict[str, Any]) -> bool:
    """Whether a metrics row is a sharpness measurement (not an evaluation row)."""
    return "sharpness" in row


def sharpness_spent(rows: Sequence[dict[str, Any]]) -> int:
    """The cumulative cost of the measurements among ``rows`` (0 before the first)."""
    return next((row["sharpness_grad_evals"] for row in reversed(rows) if is_sharpness_row(row)), 0)


def sharpness_batch(dataset: Dataset, size: int, seed: int, prep: Preprocess, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    """The fixed batch: ``size`` training examples (all if fewer) chosen by ``seed``, as the model sees them, replicated."""
    count = len(dataset.x_train)
    chosen = np.sort(np.random.default_rng([seed, SHARPNESS_STREAM]).permutation(count)[: min(size, count)])
    images = model_inputs(jnp.asarray(dataset.x_train[chosen]), prep, None)
    return parallel.replicate((images, dataset.y_train[chosen]), mesh)


def make_measure(
    graphdef: nnx.GraphDef, weight_decay: float, preconditioner: Preconditioner | None, iterations: int, top: int
) -> Measure:
    """A jitted ``(params, model_state, opt_state, x, y, key) -> top eigenvalues`` (descending) of the Hessian on ``(x, y)``.

    With a ``preconditioner`` (``opt_state -> D``), of ``D^{-1/2} H D^{-1/2}``.
    """
    objective = make_objective(graphdef, weight_decay, train=False)

    def measure(params, model_state, opt_state, x, y, key):
        flat, unravel = ravel_pytree(params)
        grad = jax.grad(lambda vector: objective(unravel(vector), model_state, x, y)[0])
        if preconditioner is None:
            hvp = lambda v: jax.jvp(grad, (flat,), (v,))[1]
        else:
            scale = jax.lax.rsqrt(ravel_pytree(preconditioner(opt_state))[0]).astype(flat.dtype)
            hvp = lambda v: scale * jax.jvp(grad, (flat,), (scale * v,))[1]
        ritz_values = lanczos_tridiagonal(hvp, flat.size, iterations, key, flat.dtype).ritz_values
        return ritz_values[::-1][:top]

    return jax.jit(measure)


class SharpnessTracker:
    """A run's sharpness measurements: when they are due, the fixed batch, the jitted Lanczos, their cumulative cost.

    Args:
      config: the run (``sharpness_every`` set).
      dataset, prep, mesh: its data, input pipeline and devices.
      graphdef, state: its model and initial state (for the parameter count and the optimizer's state layout).
      own_optimizer: whether ``config.optimizer`` built the optimizer (else no threshold is known).

    Raises:
      ConfigError: ``sharpness_top`` exceeds the parameter count, or the Lanczos basis
        (``sharpness_iterations`` vectors of the parameters' size) would exceed 16 GiB.
    """

    def __init__(
        self,
        config: TrainConfig,
        dataset: Dataset,
        prep: Preprocess,
        mesh: Mesh,
        graphdef: nnx.GraphDef,
        state: RunState,
        own_optimizer: bool,
    ):
        if config.sharpness_every is None:
            raise ValueError("SharpnessTracker: the config does not set sharpness_every.")
        dimension = real_size(state.params)
        if config.sharpness_top > dimension:
            raise ConfigError(
                "sharpness_top", f"sharpness_top ({config.sharpness_top}) exceeds the model's {dimension} parameters."
            )
        try:
            check_basis_memory("sharpness_iterations", dimension, config.sharpness_iterations, np.float32)
        except ValueError as error:
            raise ConfigError("sharpness_iterations", str(error)) from error
        self.every = config.sharpness_every
        self.rule = stability_rule(config.optimizer, config.optimizer_options, state.opt_state) if own_optimizer else None
        preconditioner = self.rule.preconditioner if self.rule is not None else None
        self.preconditioned = preconditioner is not None
        self.measure = make_measure(
            graphdef, config.weight_decay, preconditioner, config.sharpness_iterations, config.sharpness_top
        )
        self.cost = HVP_GRADIENTS * min(config.sharpness_iterations, dimension)
        self.batch = sharpness_batch(dataset, config.sharpness_batch_size, config.seed, prep, mesh)
        self.key = jax.random.fold_in(jax.random.key(config.seed), SHARPNESS_STREAM)

    def due(self, step: int) -> bool:
        """Whether a measurement follows step ``step``."""
        return step % self.every == 0

    def measurement(self, state: RunState, step: int, learning_rate: float | None, spent: int) -> dict[str, Any]:
        """Measure at ``state`` (after step ``step``): the row's sharpness fields, this cost added to ``spent`` before it."""
        values = self.measure(state.params, state.model_state, state.opt_state, *self.batch, jax.random.fold_in(self.key, step))
        rule = self.rule
        return {
            "sharpness": [float(v) for v in jax.device_get(values)],
            "preconditioned": self.preconditioned,
            "rule": rule.name if rule is not None else None,
            "threshold": rule.threshold(learning_rate) if rule is not None and learning_rate is not None else None,
            "sharpness_grad_evals": spent + self.cost,
        }
