"""Explicit Adams–Bashforth methods (orders 1–4) for ``θ' = -∇f(θ)``.

AB-τ extrapolates the gradients of the last τ iterates::

    θ_{n+1} = θ_n - h Σ_{j=0}^{τ-1} b_j ∇f(θ_{n-j}),

one new gradient (the incoming ``k1``) per step and no oracle call once
τ-1 past gradients are stored (Hairer, Nørsett & Wanner, *Solving ODEs I*,
§III.1). Its stability interval on the gradient flow is ``hλ < 2, 1, 6/11,
3/10`` for τ = 1..4: smaller than gradient descent's.

**Start-up.** With ``startup="high_order"`` the first τ-1 steps are explicit
Runge–Kutta steps of order τ (Heun, Kutta's RK3, classical RK4 for τ = 2, 3,
4), which call the oracle τ-1 times each; their local error ``O(h^{τ+1})``
keeps the global order τ. ``startup="lower_order"`` uses AB-1, AB-2, … on the
gradients available and needs no oracle at all, but one Euler step already
caps the global error at ``O(h²)``.

**Minibatches and schedules.** The stored gradients were evaluated on earlier
minibatches (like a momentum buffer), so with a stochastic oracle AB mixes
batches; the coefficients assume a constant step, and under a schedule the
current ``h`` is used with them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from flowopt.core.checks import check_integer
from flowopt.core.integrator import Integrator
from flowopt.core.trees import linear_combination
from flowopt.core.types import GradFn, Params
from flowopt.multistep.coefficients import (
    ADAMS_BASHFORTH_COEFFICIENTS,
    MAX_ADAMS_BASHFORTH_ORDER,
    check_startup,
    padded_rows,
)
from flowopt.rk import tableaus
from flowopt.rk.stages import explicit_runge_kutta

STARTUP_TABLEAUS = {2: tableaus.HEUN, 3: tableaus.RK3, 4: tableaus.RK4}


class AdamsBashforthState(NamedTuple):
    """Stage state of AB-τ.

    Attributes:
      gradients: ``∇f(θ_{n-1}), …, ∇f(θ_{n-τ+1})`` (newest first).
      filled: how many of them are valid (int32, saturates at τ-1).
    """

    gradients: tuple[Params, ...]
    filled: jax.Array


def explicit_adams_bashforth(order: int, startup: str = "high_order") -> Integrator:
    """The AB-``order`` integrator (order 1..4); see the module docstring."""
    order = check_integer("order", order, 1, MAX_ADAMS_BASHFORTH_ORDER)
    startup = check_startup(startup)
    table = padded_rows([ADAMS_BASHFORTH_COEFFICIENTS[j + 1] for j in range(order)])
    high_order_start = startup == "high_order" and order > 1
    starter = explicit_runge_kutta(STARTUP_TABLEAUS[order]) if high_order_start else None

    def init(params: Params) -> AdamsBashforthState:
        return AdamsBashforthState(
            gradients=tuple(jax.tree.map(jnp.zeros_like, params) for _ in range(order - 1)),  # distinct buffers
            filled=jnp.zeros([], jnp.int32),
        )

    def multistep(gradients, h, coefficients):
        return linear_combination([-h * b for b in coefficients], gradients), jnp.zeros([], jnp.int32)

    def step(oracle: GradFn | None, params: Params, k1: Params, h: jax.Array | None, state: AdamsBashforthState):
        assert h is not None  # the step of the learning-rate schedule (as_optimizer passes it)
        gradients = (k1,) + state.gradients
        if order == 1:
            increment, calls = multistep(gradients, h, table[0])
        elif starter is not None:  # a high-order start
            start_step = starter.step

            def runge_kutta():
                increment, _, calls = start_step(oracle, params, k1, h, ())
                return increment, jnp.asarray(calls, jnp.int32)

            increment, calls = jax.lax.cond(state.filled < order - 1, runge_kutta, lambda: multistep(gradients, h, table[-1]))
        else:
            row = jnp.asarray(table)[jnp.minimum(state.filled, order - 1)]
            increment, calls = multistep(gradients, h, [row[i] for i in range(order)])
        new_state = AdamsBashforthState(gradients=gradients[: order - 1], filled=jnp.minimum(state.filled + 1, order - 1))
        return increment, new_state, calls

    return Integrator(name=f"adams_bashforth{order}", init=init, step=step, needs_oracle=high_order_start)
