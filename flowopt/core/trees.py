"""Pytree helpers shared by the integrators and the analysis tools: combinations, finiteness, complex leaves as real pairs."""

from __future__ import annotations

import functools
import numbers
import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flowopt.core.checks import is_concrete
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


def any_nonfinite(tree: Any) -> bool:
    """Whether a concrete pytree has a non-finite entry (``False`` for traced values)."""
    leaves = jax.tree.leaves(tree)
    if not is_concrete(*leaves):
        return False
    return not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)


def split_complex(tree: Any) -> Any:
    """Complex leaves as real arrays with a trailing axis ``(real, imag)``; real leaves unchanged."""
    return jax.tree.map(lambda x: jnp.stack([x.real, x.imag], -1) if jnp.iscomplexobj(x) else x, tree)


def merge_complex(template: Any, tree: Any) -> Any:
    """Undo :func:`split_complex`, with ``template`` telling which leaves were complex (dtype only)."""

    def merge(like, x):
        if jnp.iscomplexobj(like):
            return jax.lax.complex(x[..., 0], x[..., 1]).astype(jnp.result_type(like))
        return x

    return jax.tree.map(merge, template, tree)


def real_dtype(params: Params) -> Any:
    """The real dtype of step sizes and times: float64 for float64 or complex128 parameters."""
    leaves = jax.tree.leaves(params)
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    if jnp.issubdtype(dtype, jnp.complexfloating):
        dtype = jnp.finfo(dtype).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    return jnp.promote_types(dtype, jnp.float32)


def real_size(tree: Any) -> int:
    """The number of real coordinates of ``tree``'s leaves: complex entries count twice (see :func:`split_complex`)."""
    return sum(2 * jnp.size(x) if jnp.iscomplexobj(x) else jnp.size(x) for x in jax.tree.leaves(tree))
