"""Explicit Runge–Kutta stages, and the fixed-step integrator of the gradient flow built from them.

For a vector field ``y' = F(t, y)`` on a pytree ``y`` the stages of a tableau
are ``k_i = F(t + c_i h, y + h Σ_j a_ij k_j)`` and the step is
``y + h Σ_i b_i k_i`` (Butcher 1963; Hairer, Nørsett & Wanner, *Solving ODEs
I*, §II.1). :func:`stage_slopes` evaluates them for any field: the gradient
flow here, the extended systems of :mod:`flowopt.flows.family` there.

The gradient flow ``θ' = -∇f(θ)`` is the flow of ``+∇f`` run with the step
``-h``: with ``k_i = ∇f(θ_n - h Σ_j a_ij k_j)`` the step is
``θ_{n+1} = θ_n - h Σ_i b_i k_i``, every stage descends, and ``k_1`` is the
gradient ``update`` receives. Stages whose slope no weight uses (the FSAL
stage of an embedded pair run at a fixed step) are not evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flowopt.core.integrator import Integrator
from flowopt.core.trees import linear_combination
from flowopt.core.types import GradFn, Params
from flowopt.rk.tableau import ButcherTableau

Field = Callable[[Any, Any], Any]
"""A vector field ``(t, y) -> y'`` over pytrees (``t`` is ``None`` for an autonomous flow)."""


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


def stage_slopes(
    tableau: ButcherTableau,
    field: Field,
    y0: Any,
    k1: Any,
    h: jax.Array,
    weights: Sequence[np.ndarray],
    t0: jax.Array | None = None,
) -> list[Any]:
    """The slopes ``k_i = field(t0 + c_i h, y0 + h Σ_j a_ij k_j)`` that ``weights`` need (``None`` for the others).

    ``k1`` is the first slope, already known; every other needed stage calls
    ``field`` once. With ``t0 = None`` the field is called with ``t = None``.
    """
    needed = needed_stages(tableau, weights)
    ks: list[Any] = [k1]
    for i in range(1, tableau.num_stages):
        if not needed[i]:
            ks.append(None)
            continue
        point = jax.tree.map(jnp.add, y0, linear_combination(tableau.a[i, :i], ks, h))
        time = None if t0 is None else t0 + jnp.asarray(tableau.c[i], t0.dtype) * h
        ks.append(field(time, point))
    return ks


def gradient_stages(
    tableau: ButcherTableau,
    oracle: GradFn | None,
    params: Params,
    k1: Params,
    h: jax.Array,
    weights: Sequence[np.ndarray],
) -> list[Params | None]:
    """The stage gradients ``k_i = ∇f(θ - h Σ_j a_ij k_j)`` of the gradient flow that ``weights`` need.

    ``oracle`` may be ``None`` when ``weights`` need no stage beyond the first.
    """

    def gradient(_: Any, point: Params) -> Params:
        assert oracle is not None  # only a stage beyond the first calls it, and a method with one is given an oracle
        return oracle(point)

    return stage_slopes(tableau, gradient, params, k1, -h, weights)


def oracle_calls(tableau: ButcherTableau, weights: Sequence[np.ndarray]) -> int:
    """Oracle calls per step: the needed stages beyond the first."""
    return sum(needed_stages(tableau, weights)) - 1


def explicit_runge_kutta(tableau: ButcherTableau) -> Integrator:
    """The fixed-step explicit Runge–Kutta integrator of ``tableau`` for the gradient flow (no stage state)."""
    weights = (tableau.b,)
    calls = oracle_calls(tableau, weights)

    def step(oracle: GradFn | None, params: Params, k1: Params, h: jax.Array | None, state: tuple):
        assert h is not None  # the step of the learning-rate schedule (as_optimizer passes it)
        ks = gradient_stages(tableau, oracle, params, k1, h, weights)
        return linear_combination(tableau.b, ks, -h), state, calls

    return Integrator(name=tableau.name, init=lambda params: (), step=step, needs_oracle=calls > 0)
