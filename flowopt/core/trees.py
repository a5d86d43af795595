"""Pytree arithmetic shared by the integrators."""

from __future__ import annotations

import functools
import numbers
import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flowopt.core.types import Params


def _is_number(weight: Any) -> bool:
    return isinstance(weight, (numbers.Number, np.number)) and not isinstance(weight, bool)


def linear_combination(weights: Sequence[Any] | np.ndarray, trees: Sequence[Params | None], scale: Any = None) -> Params:
    """``scale · Σ_i weights[i] · trees[i]`` over pytrees of one structure (``scale`` omitted: 1).

    Weights may be numbers or traced scalars. A weight that is the number 0
    drops its term, whose tree may then be ``None`` (a stage that was not
    evaluated); a weight that is the number 1 adds its tree without a
    multiplication. At least one term must remain.
    """
    terms = [(w, tree) for w, tree in zip(weights, trees) if not (_is_number(w) and float(w) == 0.0)]

    def combine(*leaves: jax.Array) -> jax.Array:
        scaled = [
            leaf if _is_number(weight) and float(weight) == 1.0 else jnp.asarray(weight, leaf.dtype) * leaf
            for (weight, _), leaf in zip(terms, leaves)
        ]
        total = functools.reduce(operator.add, scaled)
        return total if scale is None else jnp.asarray(scale, total.dtype) * total

    return jax.tree.map(combine, *[tree for _, tree in terms])


def tree_all_finite(tree: Any) -> jax.Array:
    """Whether every element of every leaf of ``tree`` is finite (a boolean scalar)."""
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])) if leaves else jnp.array(True)
