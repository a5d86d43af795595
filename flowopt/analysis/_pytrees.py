"""Pytree helpers of the analysis tools: complex leaves as real pairs, finiteness of concrete values, checked losses."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from flowopt.core.checks import is_concrete
from flowopt.core.oracle import check_scalar_loss


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


def any_nonfinite(tree: Any) -> bool:
    """Whether a concrete pytree has a non-finite entry (``False`` for traced values)."""
    leaves = jax.tree.leaves(tree)
    if not is_concrete(*leaves):
        return False
    return not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)


def checked_value(function: str, value_fn: Any) -> Any:
    """``value_fn`` whose output is checked (at trace time) to be a real floating scalar."""
    return lambda params: check_scalar_loss(function, "value_fn", value_fn(params))
