"""Step-time overhead of RK4: one jitted RK4 step / (4 × one jitted value-and-grad + SGD step).

An s-stage step costs s gradient evaluations, so the ratio's floor is 1.00;
anything above is flowopt's overhead. Both sides are measured in the same run
on the same model and batch.

    python benchmarks/rk4_overhead.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import flowopt


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden1 = nnx.Linear(784, 256, rngs=rngs)
        self.hidden2 = nnx.Linear(256, 256, rngs=rngs)
        self.out = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.hidden1(x.reshape(x.shape[0], -1)))
        return self.out(nnx.relu(self.hidden2(x)))


class SmallCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
        self.dense = nnx.Linear(7 * 7 * 64, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.avg_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
        x = nnx.avg_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
        return self.dense(x.reshape(x.shape[0], -1))


def _problem(model_cls, batch_size: int):
    model = model_cls(nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    x = jax.random.normal(jax.random.key(1), (batch_size, 28, 28, 1))
    y = jax.random.randint(jax.random.key(2), (batch_size,), 0, 10)

    def loss(p, x, y):
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return params, loss, (x, y)


def _train_step(tx: optax.GradientTransformation, loss: Callable) -> Callable:
    def step(params, state, x, y):
        value_fn = lambda p: loss(p, x, y)
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, state = tx.update(grads, state, params, value_fn=value_fn)
        return optax.apply_updates(params, updates), state, value

    return jax.jit(step, donate_argnums=(0, 1))


def time_per_step(tx, params, loss, batch, repeats: int) -> float:
    """Median-free throughput timing: ``repeats`` steps after two warm-up steps."""
    step = _train_step(tx, loss)
    params = jax.tree.map(jnp.copy, params)
    state = tx.init(params)
    for _ in range(2):
        params, state, value = step(params, state, *batch)
    jax.block_until_ready(value)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            params, state, value = step(params, state, *batch)
        jax.block_until_ready((params, value))
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s), jax {jax.__version__}")
    print("| model | SGD step (ms) | RK4 step (ms) | RK4 / (4 × SGD) |")
    print("|---|---|---|---|")
    for name, model_cls, repeats in (("MLP 784-256-256-10", MLP, args.repeats * 10), ("small CNN", SmallCNN, args.repeats)):
        params, loss, batch = _problem(model_cls, args.batch_size)
        sgd = time_per_step(optax.sgd(0.1), params, loss, batch, repeats)
        rk4 = time_per_step(flowopt.rk4(0.1), params, loss, batch, repeats)
        print(f"| {name} | {1e3 * sgd:.2f} | {1e3 * rk4:.2f} | {rk4 / (4 * sgd):.3f} |")


if __name__ == "__main__":
    main()
