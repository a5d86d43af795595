"""Small optimisation problems shared by the tests, in the style of optax's optimizer tests.

Each builder takes a dtype and returns a :class:`Problem`: a start, the
minimiser and the loss. Losses use ``|x|²`` so that the complex problem is the
real one in ``(Re z, Im z)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


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
