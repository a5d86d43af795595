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

(:func:`flowopt.adaptive.stage_stiffness`: from the Gram matrix ``⟨k_i, k_j⟩``, one more
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

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flowopt import tableaus
from flowopt.analysis.stability import stability_interval
from flowopt.explicit import oracle_calls, scaled_sum, stage_gradients
from flowopt.guard import GuardState, flag_nonfinite_loss, guard_counts
from flowopt.integrator import check_learning_rate, oracle_evaluations
from flowopt.oracle import GradFn, Params, check_updates_match, resolve_oracle, tree_all_finite
from flowopt.tableau import ButcherTableau, check_tableau


class StepSizeState(NamedTuple):
    """What the PI controller carries from one attempt to the next.

    Attributes:
      step_size: the step ``h`` the next attempt uses.
      prev_inv_error: ``1/ε`` of the last accepted step (1 before any).
      at_dtmin: whether ``step_size`` was clipped up to ``dtmin`` (then the
        next finite attempt is accepted whatever its error).
    """

    step_size: jax.Array
    prev_inv_error: jax.Array
    at_dtmin: jax.Array


def _real_number(name: str, value: Any, expected: str) -> float | None:
    """``value`` as a float, or ``None`` for a traced value (checked when concrete).

    A real number is a Python or NumPy int or float or a concrete 0-d real
    array; bools, strings, ``None``, complex numbers and arrays of other
    shapes are a ``ValueError`` naming ``name``. A JAX tracer (the value is a
    hyperparameter under ``optax.inject_hyperparams`` or ``jit``) passes
    through unchecked.
    """
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        raise ValueError(f"{name} must be {expected}, got {value!r}.")
    if isinstance(value, (numbers.Real, np.ndarray, np.generic, jax.Array)):
        array = np.asarray(value)
        if array.shape == () and (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            number = float(array)
            if not math.isfinite(number):
                raise ValueError(f"{name} must be {expected}, got {value!r}, which is not finite.")
            return number
        if array.shape != ():
            raise ValueError(f"{name} must be {expected} (a scalar), got an array of shape {array.shape}.")
    raise ValueError(f"{name} must be {expected}, got {value!r} of type {type(value).__name__}.")


def _check_range(
    name: str, value: Any, low: float, high: float, *, low_open: bool = True, high_open: bool = True
) -> float | None:
    """The number ``value`` in the interval from ``low`` to ``high`` (open or closed ends); ``None`` if traced."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if math.isinf(low) and math.isinf(high):
        expected = "a finite real number"
    elif math.isinf(high):
        expected = "a finite real number " + (f"greater than {low:g}" if low_open else f"at least {low:g}")
    else:
        expected = f"a real number in {interval}"
    number = _real_number(name, value, expected)
    if number is None:
        return None
    above = number > low if low_open else number >= low
    below = number < high if high_open else number <= high
    if not (above and below):
        raise ValueError(f"{name} must be {expected}, got {value!r}.")
    return number


def _check_positive(name: str, value: Any, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    return _check_range(name, value, 0.0, math.inf)


def _is_zero(value: Any) -> bool:
    """Whether a controller coefficient is a concrete zero (a traced one may not be)."""
    return not isinstance(value, jax.core.Tracer) and float(value) == 0


@dataclasses.dataclass(frozen=True)
class PIController:
    """Proportional–integral step-size control from an embedded error estimate.

    Attributes:
      rtol, atol: relative and absolute tolerances of the scaled error (> 0).
      pcoeff, icoeff: proportional and integral coefficients. The default
        ``(0.4, 0.3)`` is a PI controller that damps the step-size oscillation
        at the stability limit, where gradient flows of training losses
        usually run (on a stiff quadratic it rejects ~3% of attempts where
        the classical I controller ``(0, 1)``, diffrax's default, rejects ~25%).
      safety: factor below one applied to every proposal.
      factormin, factormax: bounds on the ratio of successive steps.
      dtmin, dtmax: optional bounds on the step itself.
      smoothing: in ``[0, 1)``; accepted steps change by ``factor^(1 -
        smoothing)`` instead of ``factor`` (for noisy, minibatch errors).
      stability_limit: the largest accepted ``σ = hρ̂/β`` (see the module
        docstring), a positive number; ``None`` turns the check off (the
        classical control).
    """

    rtol: float
    atol: float
    pcoeff: float = 0.4
    icoeff: float = 0.3
    safety: float = 0.9
    factormin: float = 0.2
    factormax: float = 10.0
    dtmin: float | None = None
    dtmax: float | None = None
    smoothing: float = 0.0
    stability_limit: float | None = 1.2

    def __post_init__(self) -> None:
        # Every field is a real number (not a bool or a string) or, under jit or
        # optax.inject_hyperparams, a tracer that is checked only once concrete.
        _check_positive("rtol", self.rtol)
        _check_positive("atol", self.atol)
        _check_range("pcoeff", self.pcoeff, 0.0, math.inf, low_open=False)
        _check_positive("icoeff", self.icoeff)
        safety = _check_range("safety", self.safety, 0.0, 1.0, high_open=False)
        factormin = _check_range("factormin", self.factormin, 0.0, 1.0)
        _check_range("factormax", self.factormax, 1.0, math.inf)
        dtmin = _check_positive("dtmin", self.dtmin, allow_none=True)
        dtmax = _check_positive("dtmax", self.dtmax, allow_none=True)
        if dtmin is not None and dtmax is not None and dtmin > dtmax:
            raise ValueError(f"dtmin ({self.dtmin!r}) must not exceed dtmax ({self.dtmax!r}).")
        _check_range("smoothing", self.smoothing, 0.0, 1.0, low_open=False)
        _check_positive("stability_limit", self.stability_limit, allow_none=True)
        if safety is not None and factormin is not None and factormin > safety:
            raise ValueError(
                f"factormin ({self.factormin!r}) must not exceed safety ({self.safety!r}): after a rejection "
                "the step shrinks by a factor in [factormin, safety]."
            )

    def init(self, step_size: float | jax.Array, dtype: Any = jnp.float32) -> StepSizeState:
        """The state before the first attempt, with ``step_size`` clipped to ``[dtmin, dtmax]``."""
        _check_positive("step_size", step_size)
        try:
            floating = jnp.issubdtype(dtype, jnp.floating)
        except TypeError:
            floating = False
        if not floating:
            raise ValueError(f"dtype must be a real floating-point dtype for the step size, got {dtype!r}.")
        h = jnp.asarray(step_size, dtype)
        if self.dtmax is not None:
            h = jnp.minimum(h, self.dtmax)
        if self.dtmin is not None:
            h = jnp.maximum(h, self.dtmin)
        return StepSizeState(step_size=h, prev_inv_error=jnp.ones([], dtype), at_dtmin=jnp.array(False))

    def adapt(
        self,
        state: StepSizeState,
        scaled_error: jax.Array,
        finite: jax.Array,
        error_order: int,
        stiffness: jax.Array | None = None,
    ) -> tuple[jax.Array, StepSizeState]:
        """Accept or reject the attempt at ``state.step_size``; propose the next step.

        ``scaled_error`` is ``ε`` (``inf`` for a non-finite attempt), ``finite``
        whether the attempt was finite, ``error_order`` is ``q``, and
        ``stiffness`` is ``σ = hρ̂/β`` (``None``: not measured, no check).
        A finite attempt at ``dtmin`` is accepted whatever ``ε`` and ``σ``.
        """
        if not isinstance(state, StepSizeState):
            raise ValueError(f"state must be a StepSizeState (from PIController.init), got {type(state).__name__}.")
        if isinstance(error_order, (bool, np.bool_)) or not isinstance(error_order, (int, np.integer)) or error_order < 1:
            raise ValueError(f"error_order must be a positive integer (q = embedded order + 1), got {error_order!r}.")
        h = state.step_size
        checked = stiffness is not None and self.stability_limit is not None
        within = (scaled_error < 1) & (stiffness <= self.stability_limit) if checked else scaled_error < 1
        accepted = finite & (within | state.at_dtmin)
        inv_error = (1 / scaled_error).astype(h.dtype)
        factor = self.safety * inv_error ** ((self.pcoeff + self.icoeff) / error_order)
        if not _is_zero(self.pcoeff):
            factor = factor * state.prev_inv_error ** (-self.pcoeff / error_order)
        factor = jnp.clip(
            factor,
            jnp.where(accepted, 1.0, self.factormin).astype(h.dtype),
            jnp.where(accepted, self.factormax, self.safety).astype(h.dtype),
        )
        if checked:
            # σ scales with h: h·limit/σ is where the estimate puts the limit (none for a non-finite attempt).
            sigma = jnp.where(finite, stiffness, 0).astype(h.dtype)
            factor = jnp.maximum(jnp.minimum(factor, self.safety * self.stability_limit / sigma), self.factormin)
        if not _is_zero(self.smoothing):
            factor = jnp.where(accepted, factor ** (1 - self.smoothing), factor)
        h_next = h * factor
        if self.dtmax is not None:
            h_next = jnp.minimum(h_next, self.dtmax)
        at_dtmin = jnp.array(False)
        if self.dtmin is not None:
            at_dtmin = h_next <= self.dtmin
            h_next = jnp.maximum(h_next, self.dtmin)
        # A zero or infinite error says nothing about the next one: remember 1.
        remembered = jnp.where((inv_error == 0) | jnp.isinf(inv_error), 1.0, inv_error).astype(h.dtype)
        return accepted, StepSizeState(
            step_size=h_next.astype(h.dtype),
            prev_inv_error=jnp.where(accepted, remembered, state.prev_inv_error),
            at_dtmin=at_dtmin,
        )


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


def error_order(tableau: ButcherTableau) -> int:
    """``q = p̂ + 1``: the local order of the error estimate of the pair."""
    return int(tableau.embedded_order) + 1


def attempt_oracle_calls(tableau: ButcherTableau) -> int:
    """Oracle calls per attempt: every stage after the first (all feed the error estimate)."""
    return oracle_calls(tableau, (tableau.b, tableau.b_error))


def scaled_error_norm(error: Params, params: Params, candidate: Params, rtol: float, atol: float) -> jax.Array:
    """``RMS(|e| / (atol + rtol · max(|θ_n|, |θ_{n+1}|)))`` over all elements of all leaves.

    ``|·|`` is the modulus, so a complex parameter's error is measured as the
    Euclidean norm of its real and imaginary parts (as for the equivalent real
    pair). The three pytrees must have the same structure and shapes.
    """
    _check_positive("rtol", rtol)
    _check_positive("atol", atol)
    trees = {"error": error, "params": params, "candidate": candidate}
    structures = {name: jax.tree.structure(tree) for name, tree in trees.items()}
    shapes = {name: [jnp.shape(leaf) for leaf in jax.tree.leaves(tree)] for name, tree in trees.items()}
    if len(set(structures.values())) > 1 or shapes["error"] != shapes["params"] or shapes["error"] != shapes["candidate"]:
        raise ValueError(
            "scaled_error_norm: error, params and candidate must have the same structure and shapes, got "
            + ", ".join(f"{name} {structures[name]} with shapes {shapes[name]}" for name in trees)
            + "."
        )
    total = jnp.zeros([], jnp.float32)
    size = 0
    for e, y0, y1 in zip(jax.tree.leaves(error), jax.tree.leaves(params), jax.tree.leaves(candidate)):
        magnitude = jnp.abs(e)  # real, also for complex errors
        dtype = jnp.promote_types(magnitude.dtype, jnp.float32)
        scale = atol + rtol * jnp.maximum(jnp.abs(y0), jnp.abs(y1)).astype(dtype)
        total = total + jnp.sum(jnp.square(magnitude.astype(dtype) / scale))
        size += jnp.size(e)
    return jnp.sqrt(total / max(size, 1))


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
    dtype = _float_dtype(ks[0])
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
    check_embedded(tableau)
    if not isinstance(controller, PIController):
        raise ValueError(f"controller must be a flowopt.PIController, got {type(controller).__name__}.")
    if not callable(oracle):
        raise ValueError(f"oracle must be a function params -> gradient, got {oracle!r}.")
    if not isinstance(state, StepSizeState):
        raise ValueError(
            f"state must be a StepSizeState (from controller.init(step_size)), got {type(state).__name__}."
        )
    if jax.tree.structure(k1) != jax.tree.structure(params) or any(
        jnp.shape(g) != jnp.shape(p) for g, p in zip(jax.tree.leaves(k1), jax.tree.leaves(params))
    ):
        raise ValueError(
            "k1 (the gradient at params) must have the structure and shapes of params, got "
            f"{jax.tree.map(jnp.shape, k1)} for params {jax.tree.map(jnp.shape, params)}."
        )
    h = state.step_size
    ks = stage_gradients(tableau, oracle, params, k1, h, (tableau.b, tableau.b_error))
    increment = scaled_sum(tableau.b, ks, -h)
    error = scaled_sum(tableau.b_error, ks, -h)
    candidate = jax.tree.map(jnp.add, params, increment)
    finite = tree_all_finite((increment, error, candidate))
    norm = scaled_error_norm(error, params, candidate, controller.rtol, controller.atol)
    norm = jnp.where(finite, norm, jnp.inf)
    if controller.stability_limit is None:
        stiffness = jnp.zeros([], norm.dtype)
    else:
        stiffness = (stage_stiffness(tableau, ks) / stability_interval(tableau)).astype(norm.dtype)
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
    """State of :func:`adaptive_runge_kutta`.

    Attributes:
      count: ``update`` calls (int32), one incoming gradient each.
      oracle_evals: oracle calls made (int32), the incoming gradients excluded.
      accepted, rejected: attempts accepted and rejected (int32).
      nonfinite: rejections caused by NaN or inf (int32), included in ``rejected``.
      time: flow time covered, the sum of accepted steps.
      last_step_size: the step of the last attempt.
      error: the scaled error ``ε`` of the last attempt.
      stiffness: ``σ = hρ̂/β`` of the last attempt (0 with the stability check off).
      controller: the controller state; ``controller.step_size`` is the next step.
    """

    count: jax.Array
    oracle_evals: jax.Array
    accepted: jax.Array
    rejected: jax.Array
    nonfinite: jax.Array
    time: jax.Array
    last_step_size: jax.Array
    error: jax.Array
    stiffness: jax.Array
    controller: StepSizeState


def _float_dtype(params: Params) -> Any:
    """The real dtype of step sizes and times: float64 for float64 or complex128 parameters."""
    leaves = jax.tree.leaves(params)
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    if jnp.issubdtype(dtype, jnp.complexfloating):
        dtype = jnp.finfo(dtype).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    return jnp.promote_types(dtype, jnp.float32)


MAX_ATTEMPTS = 1000
"""The most attempts one update may make: each costs ``s - 1`` gradients."""


def _check_max_attempts(max_attempts: Any) -> int:
    if isinstance(max_attempts, jax.Array):  # a tracer, or the array optax.inject_hyperparams makes of it
        raise ValueError(
            f"max_attempts must be a Python integer in 1..{MAX_ATTEMPTS}, got the array {max_attempts!r}: "
            "it fixes the structure of the update; under optax.inject_hyperparams pass "
            "static_args=('max_attempts',)."
        )
    if (
        isinstance(max_attempts, (bool, np.bool_))
        or not isinstance(max_attempts, (int, np.integer))
        or not 1 <= max_attempts <= MAX_ATTEMPTS
    ):
        raise ValueError(f"max_attempts must be an integer in 1..{MAX_ATTEMPTS}, got {max_attempts!r}.")
    return int(max_attempts)


def adaptive_runge_kutta(
    tableau: ButcherTableau = tableaus.BOSH3,
    *,
    learning_rate: float,
    rtol: float,
    atol: float,
    pcoeff: float = 0.4,
    icoeff: float = 0.3,
    safety: float = 0.9,
    factormin: float = 0.2,
    factormax: float = 10.0,
    dtmin: float | None = None,
    dtmax: float | None = None,
    smoothing: float = 0.0,
    stability_limit: float | None = 1.2,
    max_attempts: int = 1,
) -> optax.GradientTransformationExtraArgs:
    """Gradient-flow descent with steps chosen by an embedded pair and a PI controller.

    ``learning_rate`` is the initial step (a number: the controller chooses
    the later ones). Each ``update(grads, state, params, value_fn=...)``
    attempts ``Δθ = -h Σ b_i k_i``, estimates its local error from the
    embedded weights and returns ``Δθ`` if ``ε < 1``, else zero updates and a
    smaller step in the state (retrying up to ``max_attempts`` times within
    the call first). An attempt beyond the method's stability interval by the
    stages' own Lipschitz estimate (``hρ̂ > stability_limit · β``) is rejected
    too, whatever ``ε``. The other arguments are the fields of
    :class:`PIController`; see the module docstring for the equations, the
    stability check, FSAL and minibatch oracles. Non-finite attempts are
    rejected and shrunk.

    Every option is checked up front (``ValueError`` naming it): the
    tolerances, coefficients, bounds and ``stability_limit`` (unless
    ``None``) must be finite real numbers in their ranges (bools and strings
    are not numbers), ``dtmin ≤ dtmax``,
    ``factormin ≤ safety`` and ``max_attempts`` an integer in
    ``1..MAX_ATTEMPTS``. Under ``optax.inject_hyperparams`` (or ``jit``) the
    traced options are not checked; ``tableau`` and ``max_attempts`` must be
    in its ``static_args``.

    Example::

        tx = flowopt.adaptive_runge_kutta(flowopt.tableaus.DOPRI5, learning_rate=1e-2,
                                          rtol=1e-4, atol=1e-6)
        updates, state = tx.update(grads, state, params, value_fn=loss)
        flowopt.step_diagnostics(state)   # step size, accepted/rejected, oracle calls
    """
    check_embedded(tableau)
    if callable(learning_rate):
        raise ValueError(
            f"adaptive_runge_kutta ({tableau.name}) chooses its own steps: learning_rate is the "
            "initial step and must be a number, not a schedule."
        )
    check_learning_rate(learning_rate)
    max_attempts = _check_max_attempts(max_attempts)
    controller = PIController(
        rtol=rtol, atol=atol, pcoeff=pcoeff, icoeff=icoeff, safety=safety, factormin=factormin,
        factormax=factormax, dtmin=dtmin, dtmax=dtmax, smoothing=smoothing, stability_limit=stability_limit,
    )  # fmt: skip
    name = f"adaptive_runge_kutta({tableau.name})"
    calls = attempt_oracle_calls(tableau)

    def init_fn(params: Params) -> AdaptiveState:
        dtype = _float_dtype(params)
        # A buffer per field: a state donated to a jitted step must not hold one buffer twice.
        integer, real = (lambda: jnp.zeros([], jnp.int32)), (lambda: jnp.zeros([], dtype))
        return AdaptiveState(
            count=integer(), oracle_evals=integer(), accepted=integer(), rejected=integer(), nonfinite=integer(),
            time=real(), last_step_size=real(), error=real(), stiffness=real(),
            controller=controller.init(learning_rate, dtype),
        )  # fmt: skip

    def update_fn(
        updates: optax.Updates,
        state: AdaptiveState,
        params: Params | None = None,
        *,
        value_fn: Callable[[Params], jax.Array] | None = None,
        grad_fn: GradFn | None = None,
        full_params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, AdaptiveState]:
        del extra_args
        check_updates_match(name, updates, params)
        if value_fn is not None:
            value_fn = flag_nonfinite_loss(value_fn)
        oracle = resolve_oracle(name, params, value_fn, grad_fn, full_params=full_params)

        def attempt(carry: tuple[AdaptiveStep, jax.Array, jax.Array]) -> tuple[AdaptiveStep, jax.Array, jax.Array]:
            previous, tries, nonfinite = carry
            step = adaptive_step(tableau, controller, oracle, params, updates, previous.state)
            return step._replace(last_gradient=None), tries + 1, nonfinite + (~step.finite).astype(jnp.int32)

        def retry(carry: tuple[AdaptiveStep, jax.Array, jax.Array]) -> jax.Array:
            step, tries, _ = carry
            return ~step.accepted & (tries < max_attempts)

        zero = jnp.zeros([], jnp.int32)
        first = attempt((AdaptiveStep(None, state.controller, None, None, None, None, None, None), zero, zero))
        step, tries, nonfinite = first if max_attempts == 1 else jax.lax.while_loop(retry, attempt, first)
        accepted = step.accepted.astype(jnp.int32)
        return step.increment, AdaptiveState(
            count=optax.safe_increment(state.count),
            oracle_evals=state.oracle_evals + calls * tries,
            accepted=state.accepted + accepted,
            rejected=state.rejected + tries - accepted,
            nonfinite=state.nonfinite + nonfinite,
            time=state.time + jnp.where(step.accepted, step.step_size, 0).astype(state.time.dtype),
            last_step_size=step.step_size.astype(state.last_step_size.dtype),
            error=step.error.astype(state.error.dtype),
            stiffness=step.stiffness.astype(state.stiffness.dtype),
            controller=step.state,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def minibatch_adaptive_runge_kutta(
    tableau: ButcherTableau = tableaus.BOSH3,
    *,
    learning_rate: float,
    rtol: float,
    atol: float,
    dtmin: float,
    dtmax: float,
    smoothing: float = 0.9,
    pcoeff: float = 0.4,
    icoeff: float = 0.3,
    safety: float = 0.9,
    factormin: float = 0.2,
    factormax: float = 10.0,
    stability_limit: float | None = 1.2,
    max_attempts: int = 1,
) -> optax.GradientTransformationExtraArgs:
    """:func:`adaptive_runge_kutta` for a minibatch oracle: step bounds required, growth smoothed.

    The error is estimated on the batch the oracle is bound to (all stages
    and retries use it); ``dtmin``/``dtmax`` bound the step and ``smoothing``
    damps the batch-to-batch jitter of accepted proposals. The tolerance then
    controls the error of each step along that batch's flow only, not the
    error against the full-batch flow; see the module docstring. The other
    options are those of :func:`adaptive_runge_kutta`.
    """
    for bound_name, bound in (("dtmin", dtmin), ("dtmax", dtmax)):
        if bound is None:
            raise ValueError(f"minibatch_adaptive_runge_kutta needs a finite step bound {bound_name}.")
    return adaptive_runge_kutta(
        tableau, learning_rate=learning_rate, rtol=rtol, atol=atol, dtmin=dtmin, dtmax=dtmax, smoothing=smoothing,
        pcoeff=pcoeff, icoeff=icoeff, safety=safety, factormin=factormin, factormax=factormax,
        stability_limit=stability_limit, max_attempts=max_attempts,
    )  # fmt: skip


def step_diagnostics(opt_state: optax.OptState) -> dict[str, jax.Array]:
    """Per-step numbers to log from a state holding one adaptive method and/or guards.

    Keys: ``oracle_evals`` (all oracle calls in the state) always; with an
    adaptive method ``step_size`` (next), ``last_step_size``, ``error``,
    ``stiffness``, ``accepted``, ``rejected``, ``nonfinite``, ``time`` (flow time covered)
    and ``gradient_evals`` (incoming gradients plus oracle calls); with a
    guard ``nonfinite_gradients`` and ``nonfinite_steps``. Values are arrays
    (usable under ``jit``); ``{k: float(v) for k, v in d.items()}`` to log.

    Raises:
      ValueError: if the state holds no adaptive or guard state, or several
        adaptive states.
    """
    is_node = lambda x: isinstance(x, (AdaptiveState, GuardState))
    nodes = jax.tree.leaves(opt_state, is_leaf=is_node)
    adaptive = [x for x in nodes if isinstance(x, AdaptiveState)]
    guarded = any(isinstance(x, GuardState) for x in nodes)
    if not adaptive and not guarded:
        raise ValueError("step_diagnostics: opt_state holds no flowopt adaptive or guard state.")
    if len(adaptive) > 1:
        raise ValueError(
            f"step_diagnostics: opt_state holds {len(adaptive)} adaptive states; pass each sub-state."
        )
    diagnostics = {"oracle_evals": oracle_evaluations(opt_state)}
    if adaptive:
        (state,) = adaptive
        diagnostics.update(
            step_size=state.controller.step_size,
            last_step_size=state.last_step_size,
            error=state.error,
            stiffness=state.stiffness,
            accepted=state.accepted,
            rejected=state.rejected,
            nonfinite=state.nonfinite,
            time=state.time,
            gradient_evals=state.count + diagnostics["oracle_evals"],
        )
    if guarded:
        diagnostics.update(guard_counts(opt_state))
    return diagnostics
