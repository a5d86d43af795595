"""Small optimisation problems shared by the tests.

The builders of :data:`PROBLEMS` (in the style of optax's optimizer tests) take
a dtype and return a :class:`Problem`: a start, the minimiser and the loss.
Losses use ``|x|²`` so that the complex problem is the real one in
``(Re z, Im z)``. :func:`mlp_problem` is a small network on a random batch,
for the tests that need a nonconvex loss without a known minimiser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class Problem(NamedTuple):
    """A start ``initial``, the minimiser ``optimum`` and the loss, all in one dtype."""

    initial: Any
    optimum: Any
    loss: Callable[[Any], jax.Array]


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|²`` elementwise, real for complex ``x``."""
    return jnp.real(x * jnp.conj(x))


def squared_distance(params: Any, target: Any) -> jax.Array:
    """``Σ|θ - target|²`` over the leaves of two pytrees of one structure."""
    return sum(jnp.sum(abs_sq(p - t)) for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(target)))


def _distance_to(optimum: Any) -> Callable[[Any], jax.Array]:
    return lambda params: squared_distance(params, optimum)


def microbatches(optimum: Any, count: int = 2) -> Any:
    """``count`` copies of the target stacked on a leading axis, micro-batches for :func:`squared_distance`.

    Their mean loss is the distance problem's loss, and its gradient is the
    problem's gradient bit for bit (equal terms added and divided by a power of two).
    """
    return jax.tree.map(lambda c: jnp.stack([c] * count), optimum)


def parabola(dtype: Any) -> Problem:
    """``Σ|θ - c|²`` from ``(-1, 10, 1)`` to ``c = (1, -1, 1)`` (times ``1 + i`` for complex dtypes)."""
    optimum = jnp.array([1.0, -1.0, 1.0], dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        optimum = optimum * (1 + 1j)
    return Problem(jnp.array([-1.0, 10.0, 1.0], dtype), optimum, _distance_to(optimum))


def rosenbrock(dtype: Any) -> Problem:
    """``(1 - x)² + 100 (y - x²)²`` from the origin to ``(1, 1)``."""

    def loss(params: jax.Array) -> jax.Array:
        return abs_sq(1 - params[0]) + 100 * abs_sq(params[1] - params[0] ** 2)

    return Problem(jnp.zeros(2, dtype), jnp.ones(2, dtype), loss)


def matrix_parabola(dtype: Any) -> Problem:
    """``Σ|Θ - C|²`` over a 2×2 matrix, from zero."""
    optimum = jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype)
    return Problem(jnp.zeros((2, 2), dtype), optimum, _distance_to(optimum))


def mixed_tensors(dtype: Any) -> Problem:
    """``Σ|θ - c|²`` over a dict of a scalar, a vector and a matrix, from zero."""
    optimum = {
        "scalar": jnp.array(-0.5, dtype),
        "vector": jnp.array([1.0, -1.0, 2.0], dtype),
        "matrix": jnp.array([[1.0, 0.0], [-1.0, 1.0]], dtype),
    }
    return Problem(jax.tree.map(jnp.zeros_like, optimum), optimum, _distance_to(optimum))


PROBLEMS: dict[str, Callable[[Any], Problem]] = {
    "parabola": parabola,
    "rosenbrock": rosenbrock,
    "matrix_parabola": matrix_parabola,
    "mixed_tensors": mixed_tensors,
}
"""The real test problems by name."""


def mlp_problem(
    seed: int = 0,
    *,
    sizes: tuple[int, ...] = (5, 16, 3),
    scale: float = 0.3,
    output_bias: bool = True,
    target: str = "labels",
    dtype: Any = None,
) -> tuple[dict[str, jax.Array], Callable[[dict[str, jax.Array]], jax.Array]]:
    """``(params, loss)`` of a tanh network on 32 random inputs.

    ``sizes`` is ``(in, hidden, out)``, or ``(in, out)`` for a linear model. The
    parameters are ``w1``, ``b1`` and, with a hidden layer, ``w2`` and ``b2`` (no
    ``b2`` when ``output_bias`` is false): weights ``scale · N(0, 1)``, biases zero.
    ``target="labels"`` is the mean softmax cross-entropy against random integer
    labels in ``range(out)``; ``target="sin"`` the mean squared error against
    ``sin(Σx)`` (``out = 1``). One key of ``seed`` per draw: ``w1``, ``w2`` (drawn
    for the hidden layer only, its key kept either way), the inputs ``x`` and the
    labels. With ``dtype=None`` the draws are in JAX's default float type (float64
    under x64); with a ``dtype`` they are float32 draws cast to it, the same
    numbers in any dtype.
    """
    if target not in ("labels", "sin"):
        raise ValueError(f"target must be 'labels' or 'sin', got {target!r}")
    keys = jax.random.split(jax.random.key(seed), 4 if target == "labels" else 3)
    draw = float if dtype is None else jnp.float32
    inputs, outputs = sizes[0], sizes[-1]
    params = {"w1": scale * jax.random.normal(keys[0], (inputs, sizes[1]), draw), "b1": jnp.zeros(sizes[1], draw)}
    if len(sizes) == 3:
        params["w2"] = scale * jax.random.normal(keys[1], (sizes[1], outputs), draw)
        if output_bias:
            params["b2"] = jnp.zeros(outputs, draw)
    x = jax.random.normal(keys[2], (32, inputs), draw)
    if dtype is not None:
        params = jax.tree.map(lambda p: jnp.asarray(p, dtype), params)
        x = jnp.asarray(x, dtype)

    def output(p):
        if len(sizes) == 2:
            return x @ p["w1"] + p["b1"]
        hidden = jnp.tanh(x @ p["w1"] + p["b1"])
        return hidden @ p["w2"] + p["b2"] if output_bias else hidden @ p["w2"]

    if target == "sin":
        y = jnp.sin(x.sum(axis=1, keepdims=True))
        return params, lambda p: jnp.mean((output(p) - y) ** 2)
    labels = jax.random.randint(keys[3], (32,), 0, outputs)
    return params, lambda p: optax.softmax_cross_entropy_with_integer_labels(output(p), labels).mean()


def random_quadratic(eigenvalues, seed=0):
    """A symmetric matrix with the given eigenvalues in a random basis, and a random start (the generator's next draws)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(len(eigenvalues), len(eigenvalues))))
    return q @ np.diag(eigenvalues) @ q.T, rng.normal(size=len(eigenvalues))
