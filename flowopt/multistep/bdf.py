"""Implicit backward differentiation formulas (BDF) for ``θ' = -∇f(θ)``, solved approximately.

BDF-τ (τ = 1..6; τ = 1 is backward Euler) defines ``θ_{n+1}`` implicitly by::

    θ_{n+1} + Σ_{j=1}^{τ} a_j θ_{n+1-j} = -β h ∇f(θ_{n+1}),

that is, ``θ_{n+1} = argmin_x f(x) + ||x - z_n||² / (2βh)`` with the
extrapolated anchor ``z_n = -Σ_j a_j θ_{n+1-j}``: a proximal step. Following
Huang et al., *Approximate backwards differentiation of gradient flow* (2022),
the proximal subproblem is solved approximately by a few gradient steps
(:func:`solve_proximal`), one oracle call each.

**Warm start.** The inner iteration starts at the current iterate ``θ_n``:
its gradient is the incoming ``k1``, so the first inner step costs no extra
gradient, and in the non-stiff limit (``L βh ≪ 1``) that first step is
exactly the explicit predictor ``z_n - βh ∇f(θ_n)`` (an ``O(h²)``-accurate
start). On stiff problems an extrapolated predictor would amplify the stiff
components by ``|1 - βhλ|`` before the inner loop could damp them; starting
at ``θ_n`` every inner iterate stays where gradient descent on the strongly
convex subproblem contracts.

**Inner step.** The subproblem's curvature is ``L + 1/(βh)``, so a step
chosen from ``βh`` alone diverges on stiff problems. With no
``inner_learning_rate``, the step is ``η = 1 / (L̂ + 1/(βh))`` where ``L̂`` is
an estimate of the local Lipschitz constant of ``∇f`` kept in the state. It
is calibrated from the oracle alone by gradient-only backtracking: a trial
step is accepted when the secant curvature along it,
``||∇f(x⁺) - ∇f(x)|| / ||x⁺ - x||``, does not exceed ``L̂``; otherwise it is
rejected (the oracle call still counts) and ``L̂`` becomes 5/4 of that
secant (a secant that overflows between finite gradients shrinks the step
tenfold instead; a non-finite gradient is a fault, see below). On a
convex quadratic every accepted step decreases the subproblem's objective by
at least ``η ||∇φ||² / 2``, so backward Euler with this default is a descent
method for any ``h``. ``L̂`` starts at zero, so the first trial of a run is
the explicit predictor and calibrates the estimate; it never decreases.

**An incoming gradient that is not ``∇f(θ_n)``.** The first trial's secant
is measured against ``k1``, which the oracle did not compute. A
transformation before the integrator in an optax chain (clipping, weight
decay) makes ``k1`` differ from ``∇f(θ_n)`` by a gap ``J`` that does not
shrink with the step, so that secant grows like ``J/η``: every trial is
rejected, each rejection shrinks ``η`` further, and ``L̂`` would grow without
bound (with ``optax.clip_by_global_norm`` in front, to 1e37 within two steps,
and the method would stop moving). Two safeguards bound it. While the iterate is still the start point and a trial from it
was rejected, the next trial's secant is also measured against that rejected
trial, between two oracle gradients on the same ray; when the secant against
``k1`` exceeds ten times that one, ``k1`` is taken to be inconsistent: the
trial is accepted and ``L̂`` is re-based on the oracle-only secant,
``max(L̂₀, 5/4 · secant)`` with ``L̂₀`` the estimate the solve started from.
With a consistent ``k1`` both secants measure the curvature along the same
ray, the test does not fire and the solve is the backtracking above; with an
inconsistent one a solve of three or more inner steps proceeds at the
curvature the oracle measures. And no rejection raises ``L̂`` above ``1/(ε βh)`` (``ε`` the
machine epsilon), where the inner step can no longer move the iterate. One
inner step has no second oracle gradient to compare with, so there an
inconsistent ``k1`` still stops progress (at that bound);
:func:`flowopt.check_oracle` reports the cause.

**Non-finite stages.** A NaN or inf in the incoming gradient, in a trial
point or in any oracle gradient of a step's proximal solves (the start-up's
extrapolated solves included) is not a rejected trial: it makes the whole
step a fault. The step returns a NaN increment and curvature, so
``flowopt.core.integrator.commit_step`` discards it as it does a Runge–Kutta
step with a non-finite stage: zero update, the state (history, curvature
estimate, everything) kept as it was, and the step counted in ``skipped``
(:func:`flowopt.skipped_steps`), which :func:`flowopt.guard_nonfinite` reads
to roll a whole optax chain back. A later clean step trains as if the faulty
one had not been made. (Were a NaN a rejection, it would raise ``L̂``
tenfold for every inner step left, up to ``1/(ε βh)``, where it stays: the
run would stop moving, with nothing reported.) The check is one finiteness
reduction per inner step; a solve with ``inner_tolerance`` stops at the
first non-finite value, the others still make their ``inner_steps`` calls.
As with any fixed-step method, a step that meets a non-finite region from
the same point and state is skipped again on every call: recovery needs a
new minibatch or another step size.

**Start-up.** BDF-τ needs τ past iterates. With ``startup="high_order"`` the
first τ-1 steps are taken by backward Euler extrapolated to order τ
(Richardson extrapolation over 1, 2, …, τ equal substeps, each substep an
approximate proximal solve as above): a one-step method of order τ that is
stable on the whole negative real axis, so the global order stays τ and stiff
problems stay stable; it costs τ(τ+1)/2 proximal solves per start-up step.
Its weights grow with τ (their absolute sum is 3, 9, 28, 92, 302 for
τ = 2..6) and multiply the inner solves' errors, so give high orders enough
inner steps. ``startup="lower_order"`` uses BDF-1, BDF-2, … on the available
history instead: cheaper, but the global error is then at best ``O(h²)``.

**Loop form.** Without ``inner_tolerance`` every solve makes exactly
``inner_steps`` oracle calls, and the steps after the start-up run them as
straight-line code (``lax.fori_loop(..., unroll=True)``) when there are at
most :data:`MAX_UNROLLED_INNER_STEPS`, as a rolled ``lax.fori_loop`` beyond
that: XLA's compile time grows faster than linearly with the unrolled length
(ten unrolled steps of the backtracked solve compile in 1 s on a
5-parameter quadratic, forty in 17 s). With
``inner_tolerance`` the count is dynamic and the solve is a
``lax.while_loop``. Both give the same iterates, but XLA's CPU backend runs
convolutions inside a loop body (or a ``lax.cond`` branch) 7–30× slower than
the same convolutions in straight-line code: on a small CNN a BDF step with
3 inner steps costs about what an RK4 step does when unrolled, and 15× that
as a ``while_loop``. So on the CPU prefer a fixed ``inner_steps`` of at
most :data:`MAX_UNROLLED_INNER_STEPS`; on GPUs the loop costs little. A
high-order start-up step (the first τ-1 steps) runs its extra solves inside
a ``lax.cond``, as loops: those few steps pay the CPU penalty.

**Minibatches and schedules.** The history holds past iterates ``θ``, so it
stays valid when the oracle changes from batch to batch; the curvature
estimate is carried across batches too. The coefficients assume a constant
step; under a schedule the current ``h`` is used with them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flowopt.core.checks import check_integer, check_positive, check_range
from flowopt.core.integrator import Integrator
from flowopt.core.trees import linear_combination
from flowopt.core.types import GradFn, Params
from flowopt.multistep.coefficients import BDF_COEFFICIENTS, MAX_BDF_ORDER, check_startup, extrapolation_weights, padded_rows
from flowopt.multistep.proximal import ProximalSolution, solve_proximal

MAX_UNROLLED_INNER_STEPS = 8
"""The most inner steps a fixed-count proximal solve runs unrolled (see "Loop form" above)."""


class BDFState(NamedTuple):
    """Stage state of BDF-τ.

    Attributes:
      history: the past iterates ``θ_{n-1}, …, θ_{n-τ+1}`` (newest first).
      filled: how many of them are valid (int32, saturates at τ-1).
      curvature: the estimate ``L̂`` of the local Lipschitz constant of ``∇f``.
      inner_residual: relative residual of the last proximal solve, a diagnostic.
    """

    history: tuple[Params, ...]
    filled: jax.Array
    curvature: jax.Array
    inner_residual: jax.Array


def implicit_bdf(
    order: int,
    inner_steps: int,
    inner_learning_rate: float | None = None,
    inner_tolerance: float | None = None,
    startup: str = "high_order",
) -> Integrator:
    """The approximate BDF-``order`` integrator (see the module docstring).

    Args:
      order: τ in 1..6.
      inner_steps: most oracle calls per proximal solve (≥ 1).
      inner_learning_rate: a fixed inner step ``η`` (it must be below
        ``2 / (L + 1/(βh))``); ``None`` for the backtracked default.
      inner_tolerance: relative residual at which a solve stops early, so the
        oracle-call count becomes dynamic (a ``lax.while_loop``, slow for
        convolutions on the CPU); ``None`` runs every inner step, unrolled
        up to :data:`MAX_UNROLLED_INNER_STEPS`.
      startup: ``"high_order"`` or ``"lower_order"``.
    """
    order = check_integer("order", order, 1, MAX_BDF_ORDER)
    inner_steps = check_integer("inner_steps", inner_steps, 1)
    inner_learning_rate = check_positive("inner_learning_rate", inner_learning_rate, allow_none=True)
    inner_tolerance = None if inner_tolerance is None else check_range("inner_tolerance", inner_tolerance, 0.0, 1.0)
    startup = check_startup(startup)

    a_table = padded_rows([BDF_COEFFICIENTS[j + 1][0] for j in range(order)])
    betas = np.array([float(BDF_COEFFICIENTS[j + 1][1]) for j in range(order)])
    weights = [float(w) for w in extrapolation_weights(order)]

    def solve(oracle, anchor, beta_h, start, start_grad, curvature, unroll) -> ProximalSolution:
        return solve_proximal(
            oracle,
            anchor,
            beta_h,
            start,
            start_grad,
            curvature,
            inner_steps,
            inner_learning_rate,
            inner_tolerance,
            unroll=unroll,
        )

    def init(params: Params) -> BDFState:
        return BDFState(
            history=tuple(jax.tree.map(jnp.zeros_like, params) for _ in range(order - 1)),  # distinct buffers
            filled=jnp.zeros([], jnp.int32),
            curvature=jnp.zeros([], jnp.result_type(float)),
            inner_residual=jnp.zeros([], jnp.result_type(float)),
        )

    def extrapolate(oracle, params, k1, h, first: ProximalSolution):
        """Backward Euler over 1..τ substeps, combined by ``weights``; ``first`` is the one-substep solve."""
        ends, curvature, residual, calls, finite = (
            [first.params],
            first.curvature,
            first.residual,
            first.calls,
            first.finite,
        )
        for substeps in range(2, len(weights) + 1):

            def substep(_, carry, substeps=substeps):
                y, gy, estimate, _, count, ok = carry
                solution = solve(oracle, y, h / substeps, y, gy, estimate, unroll=False)
                return (
                    solution.params,
                    solution.grad,
                    solution.curvature,
                    solution.residual,
                    count + solution.calls,
                    ok & solution.finite,
                )

            y, _, curvature, residual, calls, finite = jax.lax.fori_loop(
                0, substeps, substep, (params, k1, curvature, residual, calls, finite)
            )
            ends.append(y)
        return linear_combination(weights, ends), curvature, residual, calls, finite

    def step(oracle: GradFn | None, params: Params, k1: Params, h: jax.Array | None, state: BDFState):
        # as_optimizer passes the oracle (needs_oracle) and the step of the learning-rate schedule.
        assert oracle is not None and h is not None
        points = (params,) + state.history
        starting = state.filled < order - 1
        if order == 1:
            a_row, beta = a_table[0], betas[0]
        else:
            # A high-order start-up step first solves backward Euler (row 0): the extrapolation's one-substep
            # solve. Every step thus makes one solve outside the lax.cond below, which holds only the start-up's
            # other solves.
            row = jnp.where(starting, 0, order - 1) if startup == "high_order" else jnp.minimum(state.filled, order - 1)
            a_row, beta = [jnp.asarray(a_table)[row, i] for i in range(order)], jnp.asarray(betas)[row]
        anchor = linear_combination([-a for a in a_row], points)
        solution = solve(oracle, anchor, beta * h, params, k1, state.curvature, inner_steps <= MAX_UNROLLED_INNER_STEPS)
        new, curvature, residual, calls, finite = (
            solution.params,
            solution.curvature,
            solution.residual,
            solution.calls,
            solution.finite,
        )
        if order > 1 and startup == "high_order":
            new, curvature, residual, calls, finite = jax.lax.cond(
                starting,
                lambda: extrapolate(oracle, params, k1, h, solution),
                lambda: (new, curvature, residual, calls, finite),
            )
        # A solve that met a non-finite point or gradient makes the step a fault: a NaN increment and
        # curvature, which as_optimizer's commit_step discards whole (zero update, state kept, counted).
        increment = jax.tree.map(lambda n, p: jnp.where(finite, n - p, jnp.nan), new, params)
        new_state = BDFState(
            history=points[: order - 1],
            filled=jnp.minimum(state.filled + 1, order - 1),
            curvature=jnp.where(finite, curvature, jnp.nan),
            inner_residual=residual,
        )
        return increment, new_state, calls

    name = "backward_euler" if order == 1 else f"bdf{order}"
    return Integrator(name=name, init=init, step=step, needs_oracle=True)
