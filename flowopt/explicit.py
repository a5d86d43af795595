"""Explicit Runge–Kutta stages for the gradient flow ``θ' = -∇f(θ)``.

With ``k_i = ∇f(θ_n - h Σ_j a_ij k_j)`` the step is
``θ_{n+1} = θ_n - h Σ_i b_i k_i``: every stage descends. Stages whose
gradient no weight uses (for example the FSAL stage of an embedded pair run
at a fixed step) are not evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flowopt.integrator import Integrator
from flowopt.oracle import GradFn, Params
from flowopt.tableau import ButcherTableau


def scaled_sum(coefficients: Sequence[float], trees: Sequence[Params | None], scale: jax.Array) -> Params:
    """``scale * Σ_i coefficients[i] * trees[i]`` over pytrees, skipping zero coefficients."""
    terms = [(float(w), tree) for w, tree in zip(coefficients, trees) if w != 0.0]

    def combine(*leaves: jax.Array) -> jax.Array:
        total = None
        for (weight, _), leaf in zip(terms, leaves):
            term = leaf if weight == 1.0 else jnp.asarray(weight, leaf.dtype) * leaf
            total = term if total is None else total + term
        return jnp.asarray(scale, total.dtype) * total

    return jax.tree.map(combine, *[tree for _, tree in terms])


def needed_stages(tableau: ButcherTableau, weights: Sequence[np.ndarray]) -> tuple[bool, ...]:
    """Which stages contribute to any of ``weights``, directly or through later stages."""
    needed = np.zeros(tableau.num_stages, dtype=bool)
    for w in weights:
        needed |= np.asarray(w) != 0
    for i in reversed(range(tableau.num_stages)):
        if needed[i]:
            needed[:i] |= tableau.a[i, :i] != 0
    needed[0] = True
    return tuple(bool(x) for x in needed)


def stage_gradients(
    tableau: ButcherTableau,
    oracle: GradFn | None,
    params: Params,
    k1: Params,
    h: jax.Array,
    weights: Sequence[np.ndarray],
) -> list[Params | None]:
    """The stage gradients ``k_i`` needed by ``weights`` (``None`` for skipped stages)."""
    needed = needed_stages(tableau, weights)
    ks: list[Params | None] = [k1]
    for i in range(1, tableau.num_stages):
        if not needed[i]:
            ks.append(None)
            continue
        shift = scaled_sum(tableau.a[i, :i], ks, -h)
        ks.append(oracle(jax.tree.map(jnp.add, params, shift)))
    return ks


def oracle_calls(tableau: ButcherTableau, weights: Sequence[np.ndarray]) -> int:
    """Oracle calls per step: the needed stages beyond the first."""
    return sum(needed_stages(tableau, weights)) - 1


def explicit_runge_kutta(tableau: ButcherTableau) -> Integrator:
    """The fixed-step explicit Runge–Kutta integrator of ``tableau`` (no stage state)."""
    weights = (tableau.b,)
    calls = oracle_calls(tableau, weights)

    def step(oracle: GradFn | None, params: Params, k1: Params, h: jax.Array, state: tuple):
        ks = stage_gradients(tableau, oracle, params, k1, h, weights)
        return scaled_sum(tableau.b, ks, -h), state, calls

    return Integrator(name=tableau.name, init=lambda params: (), step=step, needs_oracle=calls > 0)
