"""Helpers shared by the linear multistep methods (BDF, Adams–Bashforth): start-up choice, validation, sums."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from flowopt.oracle import Params

STARTUPS = ("high_order", "lower_order")


def check_startup(startup: str) -> str:
    """Raise ``ValueError`` unless ``startup`` is one of :data:`STARTUPS`."""
    if startup not in STARTUPS:
        raise ValueError(f"startup must be one of {STARTUPS}, got {startup!r}.")
    return startup


def check_integer(value, name: str, low: int, high: int | None = None) -> int:
    """Raise ``ValueError`` unless ``value`` is an integer in ``[low, high]``."""
    if isinstance(value, jax.Array) and not isinstance(value, bool):
        raise ValueError(
            f"{name} must be a Python integer (it fixes the structure of the method), got a JAX array; "
            f"with optax.inject_hyperparams, list it in static_args=({name!r}, ...)."
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}.")
    return int(value)


def weighted_sum(weights: Sequence, trees: Sequence[Params]) -> Params:
    """``Σ_i weights[i] * trees[i]`` over pytrees; weights may be Python numbers or traced scalars."""

    def combine(*leaves: jax.Array) -> jax.Array:
        total = jnp.asarray(weights[0], leaves[0].dtype) * leaves[0]
        for weight, leaf in zip(weights[1:], leaves[1:]):
            total = total + jnp.asarray(weight, leaf.dtype) * leaf
        return total

    return jax.tree.map(combine, *trees)
