"""Adaptive step sizes: embedded Runge–Kutta pairs, error control and step rejection.

An embedded pair evaluates the stages ``k_i = ∇f(θ_n - h Σ_j a_ij k_j)`` once
and combines them twice::

    Δθ = -h Σ_i b_i k_i                  (order p, the step taken)
    e  = -h Σ_i (b_i - b̂_i) k_i          (local error estimate of the order p-1 weights b̂)

The scaled error is the RMS norm over every parameter element::

    ε = RMS( e / (atol + rtol · max(|θ_n|, |θ_n + Δθ|)) )

The step is accepted when ``ε < 1`` and the next step is proposed by a PI
controller with ``q = p̂ + 1`` (``p̂`` the embedded order)::

    h_{n+1} = h_n · clip(safety · ε_n^{-(pcoeff+icoeff)/q} · ε_{n-1}^{pcoeff/q}, lo, hi)

where ``ε_{n-1}`` is the error of the last accepted step, ``[lo, hi] =
[1, factormax]`` after an accepted step and ``[factormin, safety]`` after a
rejection; then ``h`` is clipped to ``[dtmin, dtmax]`` and a step proposed at
``dtmin`` is accepted (when finite). These are the conventions of diffrax's
``PIDController`` without its derivative term (Hairer, Nørsett & Wanner,
*Solving ODEs I*, §II.4; Gustafsson 1991 and Söderlind 2002 for PI
control); the default coefficients differ, see :class:`PIController`. A
step whose stages, error or candidate contain NaN or inf is rejected with
``ε = ∞`` and never accepted, not even at ``dtmin``.

**Stability check.** ``ε`` estimates the local error only asymptotically,
where ``h`` is small enough for the expansions behind both weight sets to
hold. Beyond the method's stability interval ``β`` (``|R(-x)| ≤ 1`` on
``[0, β]``: 2.51 for BOSH3, 3.31 for DOPRI5, 2 for HEUN_EULER), on a loss
whose gradients stay bounded (a ReLU network under cross-entropy), the stages
swing across a valley, both weight sets are equally wrong, and ``ε`` stays
small while the loss climbs: on a Linen CNN on MNIST (batches of 128,
BOSH3, rtol = atol = 1e-2, first step 1e-3) every attempt was accepted at
``ε ≈ 0.1`` while ``h`` grew to 5·10⁶ and the loss to 10⁶, and scipy's
``RK23`` diverged the same way on one batch's flow. The candidate's
``|θ_{n+1}|`` stayed within 1.5× of ``|θ_n|`` while the divergence set in,
and the growth was 1.1–1.3× a step, so neither the ``max(|θ_n|, |θ_{n+1}|)``
scale (that of Hairer–Nørsett–Wanner, scipy and diffrax) nor ``factormax``
is the cause. Each attempt therefore also estimates the local Lipschitz
constant of ``∇f`` from its own stages, the stiffness indicator of Hairer &
Wanner (*Solving ODEs II*, §IV.2), over every pair of stages::

    ρ̂ = max_{i>j} ||k_i - k_j|| / ||Y_i - Y_j||,   Y_i = θ_n - h Σ_l a_il k_l

(:func:`flowopt.rk.adaptive.stage_stiffness`: from the Gram matrix ``⟨k_i, k_j⟩``, one more
pass over the stages), and an attempt with ``σ = hρ̂/β`` above
``stability_limit`` is rejected. The next step is at most ``safety ·
stability_limit · h/σ``, so the controller does not propose what the estimate
already rules out. On a quadratic ``ρ̂ ≤ L``, so no step inside the stability
interval (``hL ≤ β``) is rejected. The default limit 1.2 leaves room for the
classical control, which rides a stiff quadratic's flow at ``hL`` 1–2 % beyond
``β``, kept stable by the error estimate (Hairer & Wanner, §IV.2, "step size
control as a stabilizer"): the check changes nothing there, while the
divergent steps above had ``σ`` = 1.25–1.9. ``stability_limit=None`` gives
the classical control of scipy and diffrax.

**As an optimizer.** :func:`adaptive_runge_kutta` calls :func:`adaptive_step`
once per ``update``: a rejected step returns zero updates and stores the
smaller step, so a training loop needs no special case (the next call, with a
fresh gradient at the same parameters, retries). With ``max_attempts > 1`` a
rejected step is retried inside the same call, reusing the incoming gradient
``k1``, until accepted or the attempts run out (a ``lax.while_loop``, so such
an update cannot be reverse-differentiated, and on the CPU XLA runs a
convolutional net's gradients inside it 7–30× slower than in the
straight-line code of ``max_attempts=1``). Every attempt costs ``s - 1``
oracle calls for an ``s``-stage pair (all stages feed the error estimate),
counted in ``oracle_evals``; the incoming gradient is one more per call.

**FSAL.** For ``BOSH3`` and ``DOPRI5`` the last stage is ``∇f(θ_{n+1})``.
:func:`adaptive_step` returns it as ``last_gradient`` so a caller that owns the
loop (a reference-flow integrator with a deterministic oracle) passes it as
the next ``k1`` and pays ``s - 1`` calls per step. An optimizer cannot reuse
it: the caller computes the next incoming gradient itself, usually on a new
minibatch, so the optax form pays ``s`` gradients per attempt.

**Stochastic (minibatch) oracles.** All stages of one update see the same
minibatch, so ``e`` estimates the discretisation error of the *minibatch*
flow ``θ' = -∇f_B(θ)`` over one step, not the distance to the full-batch
flow, and it is blind to gradient noise: the noise between batches is
usually far larger than ``e``, and no step size makes it small. Error
control then keeps each step an accurate step of *some* batch's flow, which
bounds the step by the local curvature (it behaves like a stability-aware
learning-rate limit), and nothing more. Because ``ε`` changes from batch to
batch, the proposed step jitters; :func:`minibatch_adaptive_runge_kutta`
therefore requires step bounds ``dtmin``/``dtmax`` and smooths the growth of
accepted steps geometrically (``h_{n+1} = h_n · factor^{1 - smoothing}``),
while rejections still shrink at once. Retries (``max_attempts``) reuse the
same batch, so accept/reject decisions compare like with like. Its limits:
the tolerance is not a bound on the error against the full-batch flow, the
step sizes depend on the batch size, and the controller cannot tell
curvature from noise.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flowopt.core.checks import check_integer
from flowopt.core.integrator import Integrator
from flowopt.core.trees import linear_combination, real_dtype, tree_all_finite
from flowopt.core.types import GradFn, Params
from flowopt.rk.stability import real_stability_interval
from flowopt.rk.stages import gradient_stages, oracle_calls
from flowopt.rk.step_size import PIController, StepSizeState, error_order, scaled_error_norm
from flowopt.rk.tableau import ButcherTableau, check_tableau


class AdaptiveStep(NamedTuple):
    """The outcome of one :func:`adaptive_step` attempt.

    Attributes:
      increment: ``θ_{n+1} - θ_n`` if accepted, zeros if rejected.
      state: the controller state for the next attempt.
      accepted: whether the step was taken (bool scalar).
      finite: whether every stage, the error and the candidate were finite.
      error: the scaled error ``ε`` (``inf`` when not finite).
      stiffness: ``σ = hρ̂/β`` of the attempt (0 when the check is off).
      step_size: the step ``h`` that was attempted.
      last_gradient: for FSAL pairs, ``∇f`` at the candidate ``θ_n + Δθ``
        (the next ``k1`` after an accepted step with a deterministic oracle);
        ``None`` otherwise.
    """

    increment: Params
    state: StepSizeState
    accepted: jax.Array
    finite: jax.Array
    error: jax.Array
    stiffness: jax.Array
    step_size: jax.Array
    last_gradient: Params | None


def check_embedded(tableau: ButcherTableau) -> None:
    """Raise ``ValueError`` unless ``tableau`` is an embedded pair with error weights."""
    check_tableau(tableau)
    if not tableau.is_embedded:
        raise ValueError(
            f"tableau {tableau.name} has no error weights (b_error): adaptive steps need an "
            "embedded pair such as flowopt.tableaus.HEUN_EULER, BOSH3 or DOPRI5."
        )


def embedded_weights(tableau: ButcherTableau) -> tuple[np.ndarray, np.ndarray]:
    """The weights ``(b, b_error)`` of an embedded pair.

    Raises:
      ValueError: unless ``tableau`` is a :class:`ButcherTableau` with error weights.
    """
    check_embedded(tableau)
    assert tableau.b_error is not None  # check_embedded refuses a tableau without error weights
    return tableau.b, tableau.b_error


def attempt_oracle_calls(tableau: ButcherTableau) -> int:
    """Oracle calls per attempt: every stage after the first (all feed the error estimate)."""
    return oracle_calls(tableau, embedded_weights(tableau))


def stage_stiffness(tableau: ButcherTableau, ks: list[Params | None]) -> jax.Array:
    """``hρ̂ = max_{i>j} h||k_i - k_j|| / ||Y_i - Y_j||`` over the evaluated stages ``ks`` of one attempt.

    ``Y_i - Y_j = -h Σ_l (a_il - a_jl) k_l``, so ``h`` cancels: with the Gram
    matrix ``G_lm = Re⟨k_l, k_m⟩`` and ``d = a_i - a_j``, a pair gives
    ``sqrt((G_ii + G_jj - 2G_ij) / dᵀGd)``. Pairs at the same point (``d =
    0``) are left out, pairs with ``dᵀGd = 0`` (no gradient along the step)
    count 0. The Gram matrix is one variadic reduction per leaf, which reads
    each stage once.
    """
    stages = [i for i, k in enumerate(ks) if k is not None]
    coefficients = tableau.a[np.ix_(stages, stages)]  # a stage never uses a skipped one
    pairs = [(i, j) for i in range(len(stages)) for j in range(i) if np.any(coefficients[i] != coefficients[j])]
    dtype = real_dtype(ks[0])
    if not pairs:
        return jnp.zeros([], dtype)
    entries = [(i, j) for i in range(len(stages)) for j in range(i + 1)]
    zeros = tuple(jnp.zeros([], dtype) for _ in entries)
    products = zeros
    for same_leaf in zip(*(jax.tree.leaves(ks[i]) for i in stages)):
        x = [leaf.astype(jnp.promote_types(leaf.dtype, dtype)) for leaf in same_leaf]
        terms = tuple(jnp.real(jnp.conj(x[i]) * x[j]).astype(dtype) for i, j in entries)
        sums = jax.lax.reduce(terms, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), tuple(range(x[0].ndim)))
        products = tuple(p + q for p, q in zip(products, sums))
    entry = dict(zip(entries, products))
    gram = jnp.stack([jnp.stack([entry[max(i, j), min(i, j)] for j in range(len(stages))]) for i in range(len(stages))])
    rows, cols = (np.array(index) for index in zip(*pairs))
    differences = jnp.asarray(coefficients[rows] - coefficients[cols], dtype)
    spread = jnp.einsum("pl,lm,pm->p", differences, gram, differences)
    change = jnp.maximum(gram[rows, rows] + gram[cols, cols] - 2 * gram[rows, cols], 0)
    return jnp.max(jnp.where(spread > 0, jnp.sqrt(change / jnp.where(spread > 0, spread, 1)), 0))


def adaptive_step(
    tableau: ButcherTableau,
    controller: PIController,
    oracle: GradFn,
    params: Params,
    k1: Params,
    state: StepSizeState,
) -> AdaptiveStep:
    """One attempted step of the embedded pair ``tableau`` along ``θ' = -∇f(θ)``; pure, jittable.

    ``k1`` is ``∇f(params)``; the attempt uses ``h = state.step_size`` (to land
    on a given time, pass ``state._replace(step_size=...)``). See the module
    docstring for the equations.
    """
    b, b_error = embedded_weights(tableau)
    if not isinstance(controller, PIController):
        raise ValueError(f"controller must be a flowopt.PIController, got {type(controller).__name__}.")
    if not callable(oracle):
        raise ValueError(f"oracle must be a function params -> gradient, got {oracle!r}.")
    if not isinstance(state, StepSizeState):
        raise ValueError(f"state must be a StepSizeState (from controller.init(step_size)), got {type(state).__name__}.")
    if jax.tree.structure(k1) != jax.tree.structure(params) or any(
        jnp.shape(g) != jnp.shape(p) for g, p in zip(jax.tree.leaves(k1), jax.tree.leaves(params))
    ):
        raise ValueError(
            "k1 (the gradient at params) must have the structure and shapes of params, got "
            f"{jax.tree.map(jnp.shape, k1)} for params {jax.tree.map(jnp.shape, params)}."
        )
    h = state.step_size
    ks = gradient_stages(tableau, oracle, params, k1, h, (b, b_error))
    increment = linear_combination(b, ks, -h)
    error = linear_combination(b_error, ks, -h)
    candidate = jax.tree.map(jnp.add, params, increment)
    finite = tree_all_finite((increment, error, candidate))
    norm = scaled_error_norm(error, params, candidate, controller.rtol, controller.atol)
    norm = jnp.where(finite, norm, jnp.inf)
    if controller.stability_limit is None:
        stiffness = jnp.zeros([], norm.dtype)
    else:
        stiffness = (stage_stiffness(tableau, ks) / real_stability_interval(tableau)).astype(norm.dtype)
    accepted, next_state = controller.adapt(
        state, norm, finite, error_order(tableau), None if controller.stability_limit is None else stiffness
    )
    zeros = jax.tree.map(jnp.zeros_like, increment)
    return AdaptiveStep(
        increment=optax.tree.where(accepted, increment, zeros),
        state=next_state,
        accepted=accepted,
        finite=finite,
        error=norm,
        stiffness=stiffness,
        step_size=h,
        last_gradient=ks[-1] if tableau.fsal else None,
    )


class AdaptiveState(NamedTuple):
    """Stage state of the adaptive Runge–Kutta integrator (inside :class:`~flowopt.IntegratorState`).

    The enclosing state counts the ``update`` calls (``count``, one incoming
    gradient each) and the oracle calls (``oracle_evals``, every attempt's).

    Attributes:
      accepted, rejected: attempts accepted and rejected (int32).
      nonfinite: rejections caused by NaN or inf (int32), included in ``rejected``.
      time: flow time covered, the sum of accepted steps.
      last_step_size: the step of the last attempt.
      error: the scaled error ``ε`` of the last attempt (``inf`` for a non-finite one).
      stiffness: ``σ = hρ̂/β`` of the last attempt (0 with the stability check off).
      controller: the controller state; ``controller.step_size`` is the next step.
    """

    accepted: jax.Array
    rejected: jax.Array
    nonfinite: jax.Array
    time: jax.Array
    last_step_size: jax.Array
    error: jax.Array
    stiffness: jax.Array
    controller: StepSizeState

    def diagnostics(self) -> dict[str, jax.Array]:
        """The numbers :func:`flowopt.step_diagnostics` reports for this state."""
        return dict(
            step_size=self.controller.step_size,
            last_step_size=self.last_step_size,
            error=self.error,
            stiffness=self.stiffness,
            accepted=self.accepted,
            rejected=self.rejected,
            nonfinite=self.nonfinite,
            time=self.time,
        )


MAX_ATTEMPTS = 1000
"""The most attempts one update may make: each costs ``s - 1`` gradients."""


def adaptive_integrator(
    tableau: ButcherTableau, controller: PIController, initial_step: float, max_attempts: int = 1
) -> Integrator:
    """The embedded pair ``tableau`` under ``controller`` as an :class:`~flowopt.Integrator` that chooses its steps.

    Each step makes up to ``max_attempts`` attempts of :func:`adaptive_step`
    from the incoming gradient, the first at the step the controller proposed
    last (``initial_step`` at first), and returns the first accepted increment
    or zeros; the attempts after the first run in a ``lax.while_loop``. The
    optimizer is :func:`flowopt.as_optimizer` of it; see
    :func:`flowopt.adaptive_runge_kutta`.
    """
    check_embedded(tableau)
    if not isinstance(controller, PIController):
        raise ValueError(f"controller must be a flowopt.PIController, got {type(controller).__name__}.")
    max_attempts = check_integer("max_attempts", max_attempts, 1, MAX_ATTEMPTS)
    calls = attempt_oracle_calls(tableau)

    def init(params: Params) -> AdaptiveState:
        dtype = real_dtype(params)
        # A buffer per field: a state donated to a jitted step must not hold one buffer twice.
        integer, real = (lambda: jnp.zeros([], jnp.int32)), (lambda: jnp.zeros([], dtype))
        return AdaptiveState(
            accepted=integer(),
            rejected=integer(),
            nonfinite=integer(),
            time=real(),
            last_step_size=real(),
            error=real(),
            stiffness=real(),
            controller=controller.init(initial_step, dtype),
        )

    def step(oracle: GradFn | None, params: Params, k1: Params, h: jax.Array | None, state: AdaptiveState):
        del h  # None: the controller chooses
        assert oracle is not None  # needs_oracle: as_optimizer passes one

        def attempt(
            controller_state: StepSizeState, tries: jax.Array, nonfinite: jax.Array
        ) -> tuple[AdaptiveStep, jax.Array, jax.Array]:
            result = adaptive_step(tableau, controller, oracle, params, k1, controller_state)
            return result._replace(last_gradient=None), tries + 1, nonfinite + (~result.finite).astype(jnp.int32)

        def again(carry: tuple[AdaptiveStep, jax.Array, jax.Array]) -> tuple[AdaptiveStep, jax.Array, jax.Array]:
            previous, tries, nonfinite = carry
            return attempt(previous.state, tries, nonfinite)

        def retry(carry: tuple[AdaptiveStep, jax.Array, jax.Array]) -> jax.Array:
            result, tries, _ = carry
            return ~result.accepted & (tries < max_attempts)

        zero = jnp.zeros([], jnp.int32)
        first = attempt(state.controller, zero, zero)
        result, tries, nonfinite = first if max_attempts == 1 else jax.lax.while_loop(retry, again, first)
        accepted = result.accepted.astype(jnp.int32)
        new_state = AdaptiveState(
            accepted=state.accepted + accepted,
            rejected=state.rejected + tries - accepted,
            nonfinite=state.nonfinite + nonfinite,
            time=state.time + jnp.where(result.accepted, result.step_size, 0).astype(state.time.dtype),
            last_step_size=result.step_size.astype(state.last_step_size.dtype),
            error=result.error.astype(state.error.dtype),
            stiffness=result.stiffness.astype(state.stiffness.dtype),
            controller=result.state,
        )
        return result.increment, new_state, calls * tries

    return Integrator(
        name=f"adaptive_runge_kutta({tableau.name})",
        init=init,
        step=step,
        needs_oracle=True,
        chooses_step_size=True,
        flags_nonfinite_loss=True,
    )
