"""The training problem: an MLP with squared loss on a small, pooled image subset, as ``flat θ -> L(θ)``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

from experiments.training_runs import get_dataset

ACTIVATIONS = {"gelu": jax.nn.gelu, "tanh": jnp.tanh}


class Problem(NamedTuple):
    """Full-batch training loss on one flat float64 parameter vector."""

    params0: jax.Array
    value_fn: Partial
    label: str


def inputs(dataset: str, examples: int, pool: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``examples`` random training images of ``dataset``, pooled ``pool × pool``, flat in ``[0, 1]``, and one-hot labels."""
    data = get_dataset(dataset)
    height, width, channels = data.x_train.shape[1:]
    if examples > len(data.x_train):
        raise ValueError(f"examples = {examples} exceeds the {len(data.x_train)} training images of {dataset}.")
    if height % pool or width % pool:
        raise ValueError(f"pool = {pool} does not divide the {height}×{width} images of {dataset}.")
    chosen = np.sort(np.random.default_rng(seed).permutation(len(data.x_train))[:examples])
    images = data.x_train[chosen].astype(np.float64) / 255.0
    pooled = images.reshape(examples, height // pool, pool, width // pool, pool, channels).mean((2, 4))
    label = f"{data.label}, {examples} training images pooled {pool}×{pool} to {height // pool}×{width // pool}"
    return pooled.reshape(examples, -1), np.eye(10)[data.y_train[chosen]], label


def make_problem(data: dict[str, Any], model: dict[str, Any]) -> Problem:
    """``L(θ) = ½ mean_i ‖MLP_θ(x_i) - e_{y_i}‖²`` (Cohen et al.'s squared loss on one-hot targets), float64.

    The MLP has ``model['hidden']`` layers of ``model['activation']``
    (``gelu`` or ``tanh``), biases, and LeCun-normal weights from ``model['seed']``.
    """
    features, targets, label = inputs(data["dataset"], data["examples"], data["pool"], data.get("seed", 0))
    sizes = [features.shape[1], *model["hidden"], targets.shape[1]]
    keys = jax.random.split(jax.random.key(model.get("seed", 0)), len(sizes) - 1)
    layers = [
        (jax.random.normal(key, (fan_in, fan_out), jnp.float64) / np.sqrt(fan_in), jnp.zeros(fan_out, jnp.float64))
        for key, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:])
    ]
    params0, unravel = ravel_pytree(layers)
    activation = ACTIVATIONS[model["activation"]]

    def loss(x: jax.Array, y: jax.Array, flat: jax.Array) -> jax.Array:
        weights = unravel(flat)
        h = x
        for index, (matrix, bias) in enumerate(weights):
            h = h @ matrix + bias
            if index < len(weights) - 1:
                h = activation(h)
        return 0.5 * jnp.mean(jnp.sum((h - y) ** 2, axis=-1))

    hidden = "-".join(str(width) for width in model["hidden"])
    description = f"{model['activation']} MLP {sizes[0]}-{hidden}-10 ({params0.size} parameters), squared loss; {label}"
    return Problem(params0, Partial(loss, jnp.asarray(features), jnp.asarray(targets)), description)
