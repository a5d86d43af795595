"""The benchmark problems: classifiers on synthetic images, and an elementwise loss of any size.

The models are defined here, not imported from the training package, so the
benchmark measures the same computation from one release to the next. The
ResNet is ResNet-20's topology (three stages of three basic blocks, widths
16-32-64, parameter-free shortcuts) without BatchNorm, so that the loss is a
pure function of the parameters and every oracle call sees the same network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

Params = object


class LogisticRegression(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(784, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(x.reshape(x.shape[0], -1))


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden1 = nnx.Linear(784, 256, rngs=rngs)
        self.hidden2 = nnx.Linear(256, 256, rngs=rngs)
        self.out = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.hidden1(x.reshape(x.shape[0], -1)))
        return self.out(nnx.relu(self.hidden2(x)))


class SmallCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
        self.dense = nnx.Linear(7 * 7 * 64, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.avg_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
        x = nnx.avg_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
        return self.dense(x.reshape(x.shape[0], -1))


class _Block(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, use_bias=False, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
        self.stride, self.pad = stride, cout - cin

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv2(nnx.relu(self.conv1(x)))
        if self.stride != 1 or self.pad:
            x = x[:, :: self.stride, :: self.stride, :]
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (self.pad // 2, self.pad - self.pad // 2)))
        return nnx.relu(x + 0.5 * y)


class ResNet20(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Conv(3, 16, (3, 3), use_bias=False, rngs=rngs)
        blocks, cin = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for b in range(3):
                blocks.append(_Block(cin, width, 2 if stage > 0 and b == 0 else 1, rngs))
                cin = width
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)))


MODELS: dict[str, tuple[type, tuple[int, int, int]]] = {
    "logreg": (LogisticRegression, (28, 28, 1)),
    "mlp": (MLP, (28, 28, 1)),
    "cnn": (SmallCNN, (28, 28, 1)),
    "resnet20": (ResNet20, (32, 32, 3)),
}
"""name -> (module, input image shape). ``mlp`` is 784-256-256-10."""

DESCRIPTIONS = {
    "logreg": "logistic regression 784-10",
    "mlp": "MLP 784-256-256-10",
    "cnn": "CNN 2×conv3×3(32,64)+dense",
    "resnet20": "ResNet-20 (16-32-64, no BN)",
}


class Problem(NamedTuple):
    """A loss ``loss(params, batch) -> scalar`` with its parameters and one batch."""

    name: str
    params: Params
    loss: Callable[[Params, tuple], jax.Array]
    batch: tuple


def num_params(params: Params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


def param_bytes(params: Params) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


def classifier(name: str, batch_size: int, seed: int = 0) -> Problem:
    """Model ``name`` of :data:`MODELS` with softmax cross-entropy on a random batch."""
    module, shape = MODELS[name]
    graphdef, params = nnx.split(module(nnx.Rngs(seed)))
    x = jax.random.normal(jax.random.key(seed + 1), (batch_size, *shape))
    y = jax.random.randint(jax.random.key(seed + 2), (batch_size,), 0, 10)

    def loss(p: Params, batch: tuple) -> jax.Array:
        images, labels = batch
        logits = nnx.merge(graphdef, p)(images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return Problem(name, params, loss, (x, y))


def elementwise(size: int, seed: int = 0) -> Problem:
    """The pseudo-Huber loss ``f(θ) = Σ_i sqrt(1 + (θ_i - c)²)`` on one vector of ``size`` parameters.

    Its value and its gradient ``(θ - c) / sqrt(1 + (θ - c)²)`` each cost one
    pass over the parameters, as cheap as the optimizer's own arithmetic: the
    worst case for relative overhead, and a clean test of how cost and memory
    grow with the parameter count.
    """
    params = {"theta": jax.random.normal(jax.random.key(seed), (size,))}

    def loss(p: Params, batch: tuple) -> jax.Array:
        (centre,) = batch
        return jnp.sum(jnp.sqrt(1.0 + jnp.square(p["theta"] - centre)))

    return Problem(f"elementwise-{size}", params, loss, (jnp.asarray(0.5),))
