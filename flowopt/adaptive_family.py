"""The adaptive-algorithm ODE family of Belotto da Silva & Gazeau, as optax optimizers.

The system, for coefficient functions ``h, r, p, q`` of the time ``t``::

    θ' = -m / (sqrt(v + ε_root) + ε)
    m' =  h(t) ∇f(θ) - r(t) m
    v' =  p(t) ∇f(θ)² - q(t) v

recovers heavy ball, Nesterov, AdaGrad, RMSProp and Adam (A. Belotto da Silva
and M. Gazeau, *A general system of differential equations to model first
order adaptive algorithms*, JMLR 21(129), 2020). Two reductions are allowed:
without a first moment (``h = r = None``) ``m`` is replaced by ``∇f(θ)``, the
seed's "modification" that gives AdaGrad and RMSProp; without a second
moment (``p = q = None``) the scaling ``sqrt(v + ε_root) + ε`` is replaced by
1, so ``θ' = -m`` (the literal ``p ≡ q ≡ 0, v ≡ 0`` would only rescale time).

**The two ε.** ``eps`` (``ε``) and ``eps_root`` (``ε_root``) have optax's
meanings, outside and inside the square root, and Adam's and RMSProp's
defaults are optax's, so the Euler schemes below are optax's optimizers with
the same arguments. The seed writes ``θ' = -m/sqrt(v + ε)``: that is
``eps=0, eps_root=ε``, the form its convergence theorem (Theorem 1) assumes.
The two forms differ in how well the flow is posed near ``v = 0``. With
``ε_root > 0`` the field is smooth on ``v ≥ 0``: ``∂θ'/∂v`` is at most
``|m| / (2 ε_root^{3/2})`` and a coordinate's velocity reacts to its gradient
with a gain of at most ``1/sqrt(ε_root)`` (10⁴ for 1e-8). With ``ε_root = 0``
it is continuous and bounded (``|θ'| ≤ |m|/ε``) but ``sqrt`` is not Lipschitz
at ``v = 0``, and a coordinate with ``sqrt(v) ≲ ε`` reacts with a gain up to
``1/ε`` (10⁸): the flow is stiff wherever gradients are tiny. The Euler
scheme does not notice (that is Adam, whose steps stay below about ``s``),
but Runge–Kutta stages do: Adam's flow on an MLP on MNIST (batch 128,
``s = 1e-3``, 300 steps) reached a training loss of 0.087–0.089 by Euler,
Heun and RK4 with ``eps_root = 1e-8``, and 0.226 by RK4 with optax's ``ε``
outside only; in the 8 epochs of the adam-ode study that RK4 ended at a loss
of 70 (``s = 1e-3``) and diverged at ``s = 3e-3`` and ``1e-2``. For a
Runge–Kutta ``integrator`` give
``eps_root > 0`` (the seed's ``eps=0, eps_root=1e-8``, or ``eps_root=1e-8``
beside ``eps``).

Two discretisations with step ``s``:

* ``integrator=None``: the seed's Euler scheme (its eq. 3)::

      θ_{k+1} = θ_k - s m_k / (sqrt(v_k + ε_root) + ε)
      m_{k+1} = (1 - s r(t_{k+1})) m_k + s h(t_{k+1}) ∇f(θ_{k+1})
      v_{k+1} = (1 - s q(t_{k+1})) v_k + s p(t_{k+1}) ∇f(θ_{k+1})²

  In optax's order, where ``update`` receives ``∇f`` at the current
  parameters ``θ_{k+1}``, one call updates the moments to ``(m_{k+1},
  v_{k+1})`` at ``t_{k+1}`` and returns ``θ_{k+2} - θ_{k+1}``; the state's ``t``
  is the time of its moments and the returned parameters are one step ahead.
  No oracle is needed; this is what optax's optimizers compute.
* ``integrator=tableau``: the explicit Runge–Kutta method of a
  :class:`~flowopt.ButcherTableau` on the extended state ``(θ, m, v)``, with
  the state's ``t`` the time of the current parameters. Every stage beyond
  the first needs ``∇f`` at an intermediate ``θ``: pass ``value_fn`` or
  ``grad_fn`` to ``update``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flowopt.explicit import needed_stages, oracle_calls, scaled_sum
from flowopt.integrator import check_learning_rate, check_state_matches, checked_step_size, commit_step
from flowopt.oracle import GradFn, Params, check_updates_match, resolve_oracle
from flowopt.tableau import ButcherTableau

Coefficient = Callable[[jax.Array], jax.Array]
CoefficientLike = Coefficient | float | None


class AdaptiveFlowState(NamedTuple):
    """State of an :func:`adaptive_flow` optimizer.

    Attributes:
      count: number of calls to ``update`` (int32); schedules are evaluated at it.
      taken: number of steps applied (int32): calls with a zero step size
        (a warm-up from 0) or a skipped step (see ``skipped``) do not count, and
        the flow's time advances only with the steps taken.
      skipped: steps not applied because their size was negative or not finite,
        or their increment not finite (int32); see :func:`flowopt.as_optimizer`.
      oracle_evals: oracle calls made so far (int32); the incoming gradients
        are not included.
      t: the flow's time (see the module docstring for which point it dates).
      m: first moment, shaped like the parameters; ``None`` without one.
      v: second moment, shaped like the parameters; ``None`` without one.
    """

    count: jax.Array
    taken: jax.Array
    skipped: jax.Array
    oracle_evals: jax.Array
    t: jax.Array
    m: optax.Updates | None
    v: optax.Updates | None


class _Coefficients(NamedTuple):
    h: Coefficient | None
    r: Coefficient | None
    p: Coefficient | None
    q: Coefficient | None


class _Epsilons(NamedTuple):
    """``ε`` outside and ``ε_root`` inside the square root of ``sqrt(v + ε_root) + ε``."""

    eps: float | jax.Array
    eps_root: float | jax.Array


class _Moments(NamedTuple):
    theta: Params
    m: Params | None
    v: Params | None


def adam_flow_converges(b1: float, b2: float) -> bool:
    """The seed's sufficient condition ``3 + β₂ > 4β₁`` for Adam's flow to converge.

    Under it (and ``ε > 0``, ``f`` C² and coercive) Theorem 1 of Belotto da
    Silva & Gazeau gives ``∇f(θ(t)) → 0`` and convergence to a critical value.
    """
    _check_unit_interval("b1", b1)
    _check_unit_interval("b2", b2)
    return bool(3.0 + b2 > 4.0 * b1)


def adam_coefficient(beta: float, timescale: float) -> Coefficient:
    """Adam's coefficient ``g^A(t) = (1 - e^{-λ/α}) / (λ (1 - e^{-t/α}))`` with ``β = e^{-λ/α}``.

    That is ``(1 - β) / (λ (1 - β^{t/λ}))`` with ``λ = timescale``, evaluated with
    ``expm1`` so that small ``t`` loses no digits. It has a simple pole at ``t = 0``,
    and ``s g^A(t_{k+1}) = (1 - β)/(1 - β^{k+1})`` at ``t_k = kλ``, ``s = λ``: the
    weight of Adam's bias-corrected moving average.
    """
    _check_unit_interval("beta", beta)
    _check_positive("timescale", timescale)

    def coefficient(t: jax.Array) -> jax.Array:
        return (1.0 - beta) / (timescale * -jnp.expm1(t / timescale * _log(beta)))

    return coefficient


def adaptive_flow(
    h: CoefficientLike,
    r: CoefficientLike,
    p: CoefficientLike,
    q: CoefficientLike,
    learning_rate: optax.ScalarOrSchedule,
    eps: float = 1e-8,
    *,
    eps_root: float = 0.0,
    integrator: ButcherTableau | None = None,
    initial_time: float = 0.0,
    initial_v: float = 0.0,
    init_from_gradient: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Integrate ``θ' = -m/(sqrt(v+ε_root)+ε), m' = h∇f - rm, v' = p(∇f)² - qv`` with step ``s = learning_rate``.

    Args:
      h, r, p, q: coefficients: callables of the time ``t`` returning a scalar
        (optax schedules work, evaluated at ``t``), numbers for constants, or
        ``None``: ``h = r = None`` drops ``m`` (``θ' = -∇f/(sqrt(v+ε_root)+ε)``),
        ``p = q = None`` drops ``v`` (``θ' = -m``).
      learning_rate: the step ``s``, a positive number or an optax schedule of
        the step count; the time advances by ``s`` each step.
      eps: ``ε ≥ 0``, added to the square root (optax's ``eps``).
      eps_root: ``ε_root ≥ 0``, added to ``v`` inside the square root
        (optax's ``eps_root``; the seed's ``ε`` with ``eps=0``). ``eps`` and
        ``eps_root`` cannot both be 0.
      integrator: ``None`` for the seed's Euler scheme (eq. 3, no oracle), or
        an explicit tableau integrating ``(θ, m, v)`` (needs the oracle).
      initial_time: the time ``t₀`` of the initial moments.
      initial_v: the initial value of every entry of ``v`` (``m₀ = 0``).
      init_from_gradient: start from ``m₀ = ∇f(θ₀)``, ``v₀ = ∇f(θ₀)²`` at
        ``t₀`` (the seed's eq. 4) instead of ``m₀ = 0``, ``v₀ = initial_v``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`AdaptiveFlowState`; ``update`` returns ``θ_new - θ``.
    """
    coefficients = _Coefficients(*(_as_coefficient(name, c) for name, c in zip("hrpq", (h, r, p, q))))
    if (coefficients.h is None) != (coefficients.r is None):
        raise ValueError("adaptive_flow: give both h and r (a first moment) or neither.")
    if (coefficients.p is None) != (coefficients.q is None):
        raise ValueError("adaptive_flow: give both p and q (a second moment) or neither.")
    check_learning_rate(learning_rate, allow_zero=True)
    epsilons = _check_epsilons(eps, eps_root)
    _check_finite("initial_time", initial_time)
    if (value := _check_finite("initial_v", initial_v)) is not None and value < 0:
        raise ValueError(f"initial_v must be non-negative, got {initial_v!r}.")
    if integrator is not None and not isinstance(integrator, ButcherTableau):
        raise ValueError(
            f"integrator must be None (the seed's Euler scheme) or a flowopt.ButcherTableau, "
            f"got {type(integrator).__name__}."
        )
    name = f"adaptive_flow[{'euler-eq3' if integrator is None else integrator.name}]"
    if integrator is not None:
        _check_finite_at_start(name, coefficients, initial_time)
    calls = 0 if integrator is None else oracle_calls(integrator, (integrator.b,))

    def clock(advances: jax.Array, accumulated: jax.Array, s: jax.Array) -> jax.Array:
        """The time after ``advances`` steps: ``t₀ + advances·s`` for a constant step (free of
        the round-off drift of a running sum, which would shift Adam's bias correction),
        the running sum ``accumulated`` for a schedule."""
        if callable(learning_rate):
            return accumulated
        return jnp.asarray(initial_time, s.dtype) + advances.astype(s.dtype) * s

    def init_fn(params: Params) -> AdaptiveFlowState:
        return AdaptiveFlowState(
            count=jnp.zeros([], jnp.int32),
            taken=jnp.zeros([], jnp.int32),
            skipped=jnp.zeros([], jnp.int32),
            oracle_evals=jnp.zeros([], jnp.int32),
            t=jnp.asarray(initial_time, _time_dtype()),
            m=None if coefficients.h is None else optax.tree.zeros_like(params),
            v=None if coefficients.p is None else jax.tree.map(
                lambda x: jnp.full(jnp.shape(x), initial_v, _real_dtype(x)), params
            ),
        )

    def update_fn(
        updates: optax.Updates,
        state: AdaptiveFlowState,
        params: Params | None = None,
        *,
        value_fn: Callable[[Params], jax.Array] | None = None,
        grad_fn: GradFn | None = None,
        full_params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, AdaptiveFlowState]:
        del extra_args
        check_updates_match(name, updates, params)
        check_state_matches(name, state, init_fn, params)
        oracle = resolve_oracle(name, params, value_fn, grad_fn, required=calls > 0, full_params=full_params)
        h = checked_step_size(name, learning_rate, state.count)
        s = jnp.asarray(h, state.t.dtype)
        first = state.taken == 0
        start = _Moments(params, state.m, state.v)
        if init_from_gradient:
            start = _moments_from_gradient(start, updates, first)
        if integrator is None:
            if init_from_gradient:  # the first call only sets the moments, at t₀
                t = jnp.where(first, state.t, clock(state.taken, state.t + s, s))
            else:
                t = clock(state.taken + 1, state.t + s, s)
            increment, moments = _euler_eq3_step(
                name, coefficients, epsilons, updates, t, start, s, first if init_from_gradient else None
            )
        else:
            t = clock(state.taken + 1, state.t + s, s)
            increment, moments = _runge_kutta_step(
                name, integrator, coefficients, epsilons, oracle, updates, clock(state.taken, state.t, s), start, s
            )
        increment, (t, m, v), taken, fault = commit_step(
            h, increment, (t, moments.m, moments.v), (state.t, state.m, state.v)
        )
        new_state = AdaptiveFlowState(
            count=optax.safe_increment(state.count),
            taken=state.taken + taken,
            skipped=state.skipped + fault,
            oracle_evals=state.oracle_evals + jnp.asarray(calls, jnp.int32),
            t=t,
            m=m,
            v=v,
        )
        return increment, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adam_flow(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    integrator: ButcherTableau | None = None,
    init_from_gradient: bool | None = None,
    reference_learning_rate: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Adam's flow: ``h = r = g₁ᴬ``, ``p = q = g₂ᴬ`` (see :func:`adam_coefficient`).

    With ``λ = reference_learning_rate`` (default: ``learning_rate``) and
    ``βᵢ = e^{-λ/αᵢ}``, the seed's Euler scheme with ``s = λ`` is Adam:
    ``adam_flow(learning_rate, b1, b2, eps, eps_root)`` equals
    ``optax.adam(learning_rate, b1, b2, eps, eps_root)`` to float rounding
    (``θ' = -m/(sqrt(v + eps_root) + eps)`` with ``m, v`` the bias-corrected
    moments; the defaults are optax's). The seed's own ``ε`` inside the root
    is ``eps=0, eps_root=ε``; with a Runge–Kutta ``integrator`` give
    ``eps_root > 0``, without which the flow is stiff where gradients are tiny
    (see "The two ε" in :mod:`flowopt.adaptive_family`). With a schedule,
    ``λ`` fixes the ODE (default: the schedule's largest value over its first
    ``REFERENCE_HORIZON`` (10,000) steps) and the steps follow the schedule
    along that one flow. Under
    ``optax.inject_hyperparams(adam_flow)`` the optimizer is rebuilt at every
    step with the current rate as ``λ``, which is ``optax.adam(schedule)`` exactly.

    ``init_from_gradient`` (the seed's eq. 4: ``m₀ = ∇f(θ₀)``, ``v₀ = ∇f(θ₀)²``
    at ``t₀ = λ``) gives the same Euler steps as the zero start; it is the
    default for Runge–Kutta integrators, for which the coefficients' pole at
    ``t = 0`` rules out the zero start. Warns when ``3 + β₂ ≤ 4β₁``, outside
    the seed's convergence condition (:func:`adam_flow_converges`).
    """
    _check_unit_interval("b1", b1)
    _check_unit_interval("b2", b2)
    if _is_concrete(b1, b2) and not adam_flow_converges(b1, b2):
        warnings.warn(
            f"adam_flow: b1={b1}, b2={b2} violate 3 + b2 > 4 b1, the sufficient condition "
            "for the convergence of Adam's flow (Belotto da Silva & Gazeau, Theorem 1).",
            stacklevel=2,
        )
    timescale = _reference("adam_flow", learning_rate, reference_learning_rate)
    if init_from_gradient is None:
        init_from_gradient = integrator is not None
    g1, g2 = adam_coefficient(b1, timescale), adam_coefficient(b2, timescale)
    return adaptive_flow(
        g1, g1, g2, g2, learning_rate, eps,
        eps_root=eps_root,
        integrator=integrator,
        initial_time=timescale if init_from_gradient else 0.0,
        init_from_gradient=init_from_gradient,
    )


def rmsprop_flow(
    learning_rate: optax.ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    *,
    integrator: ButcherTableau | None = None,
    reference_learning_rate: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """RMSProp's flow ``θ' = -∇f/sqrt(v+ε)`` (or ``-∇f/(sqrt(v)+ε)``), ``v' = α₂(∇f² - v)``, without a first moment.

    ``p = q = α₂ = (1 - decay)/λ`` with ``λ = reference_learning_rate``
    (default: ``learning_rate``, or a schedule's peak), ``v₀ = initial_scale``;
    ``eps`` is inside the square root if ``eps_in_sqrt`` (optax's default),
    else outside. The seed's Euler scheme with ``s = λ``,
    ``rmsprop_flow(learning_rate, decay, eps, initial_scale, eps_in_sqrt)``,
    equals ``optax.rmsprop(learning_rate, decay, eps, initial_scale,
    eps_in_sqrt)`` (no momentum, not centered, no bias correction: optax's
    defaults) to float rounding.
    """
    _check_unit_interval("decay", decay)
    _check_positive("eps", eps)
    inside = _check_bool("eps_in_sqrt", eps_in_sqrt)
    timescale = _reference("rmsprop_flow", learning_rate, reference_learning_rate)
    rate = (1.0 - decay) / timescale
    if inside is None:  # traced under optax.inject_hyperparams
        outside_eps, root_eps = jnp.where(eps_in_sqrt, 0.0, eps), jnp.where(eps_in_sqrt, eps, 0.0)
    else:
        outside_eps, root_eps = (0.0, eps) if inside else (eps, 0.0)
    return adaptive_flow(
        None, None, rate, rate, learning_rate, outside_eps, eps_root=root_eps, integrator=integrator,
        initial_v=initial_scale,
    )


def adagrad_flow(
    learning_rate: optax.ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    *,
    integrator: ButcherTableau | None = None,
    reference_learning_rate: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AdaGrad's flow ``θ' = -∇f/sqrt(v+ε)``, ``v' = ∇f²/λ`` (``q ≡ 0``), without a first moment.

    ``p = 1/λ`` with ``λ = reference_learning_rate`` (default: ``learning_rate``,
    or a schedule's peak), ``v₀ = initial_accumulator_value``; ``eps`` is
    inside the square root, as in optax. The seed's Euler scheme with ``s = λ``,
    ``adagrad_flow(learning_rate, initial_accumulator_value, eps)``, equals
    ``optax.adagrad(learning_rate, initial_accumulator_value, eps)`` to float
    rounding.
    """
    _check_positive("eps", eps)
    timescale = _reference("adagrad_flow", learning_rate, reference_learning_rate)
    return adaptive_flow(
        None, None, 1.0 / timescale, 0.0, learning_rate, 0.0, eps_root=eps,
        integrator=integrator, initial_v=initial_accumulator_value,
    )


def heavy_ball_flow(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    *,
    integrator: ButcherTableau | None = None,
    reference_learning_rate: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Polyak's heavy ball ``θ'' + γθ' + ∇f(θ) = 0``: ``h ≡ 1``, ``r ≡ γ``, no second moment (``θ' = -m``).

    The flow's step is ``s = sqrt(learning_rate)`` and ``γ = (1 - momentum)/sqrt(λ)``
    with ``λ = reference_learning_rate`` (default: ``learning_rate``; required
    with a schedule). The seed's Euler scheme with ``s² = λ``,
    ``heavy_ball_flow(learning_rate, momentum)``, equals
    ``optax.sgd(learning_rate, momentum)`` to float rounding: ``m = s·trace``.
    It is not ``optax.sgd(learning_rate, momentum, nesterov=True)``, which
    adds a look-ahead gradient.
    """
    _check_unit_interval("momentum", momentum)
    timescale = _reference("heavy_ball_flow", learning_rate, reference_learning_rate)
    damping = (1.0 - momentum) / _sqrt(timescale)
    return adaptive_flow(1.0, damping, None, None, _sqrt_step(learning_rate), integrator=integrator)


def nesterov_flow(
    learning_rate: optax.ScalarOrSchedule,
    damping: float = 3.0,
    *,
    integrator: ButcherTableau | None = None,
    initial_time: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Su–Boyd–Candès's Nesterov ODE ``θ'' + (r₀/t)θ' + ∇f(θ) = 0``: ``h ≡ 1``, ``r = r₀/t``, ``θ' = -m``.

    ``r₀ = damping``; the flow's step is ``s = sqrt(learning_rate)``. From ``t₀ = 0``
    the seed's Euler scheme is heavy ball with the momentum ``1 - r₀/(k+1)`` at step ``k``
    (0-based): ``trace = (1 - r₀/(k+1)) trace + g``, ``Δθ = -learning_rate·trace``.
    ``optax.sgd`` keeps its momentum fixed, and ``optax.sgd(learning_rate,
    momentum, nesterov=True)`` is a different method (a look-ahead gradient,
    not a vanishing damping): the Euler scheme equals, to float rounding,
    ``optax.inject_hyperparams(optax.sgd)(learning_rate, momentum=lambda k:
    1 - damping / (k + 1))``. Runge–Kutta integrators evaluate ``r`` at
    ``t₀``, so they need ``initial_time > 0``.
    """
    _check_positive("damping", damping)
    return adaptive_flow(
        1.0, lambda t: damping / t, None, None, _sqrt_step(learning_rate),
        integrator=integrator, initial_time=initial_time,
    )


def _euler_eq3_step(
    name: str,
    coefficients: _Coefficients,
    epsilons: _Epsilons,
    grads: Params,
    t: jax.Array,
    start: _Moments,
    s: jax.Array,
    first: jax.Array | None,
) -> tuple[Params, _Moments]:
    """Moments at time ``t`` from the gradient at the current θ, then the θ step with them.

    ``first`` (gradient start only) keeps the given moments on the first call.
    """
    m, v = start.m, start.v
    if m is not None:
        h, r = _evaluate(name, "h", coefficients.h, t), _evaluate(name, "r", coefficients.r, t)
        m = jax.tree.map(lambda m_, g: _cast(1 - s * r, m_) * m_ + _cast(s * h, g) * g, m, grads)
    if v is not None:
        p, q = _evaluate(name, "p", coefficients.p, t), _evaluate(name, "q", coefficients.q, t)
        v = jax.tree.map(lambda v_, g: _cast(1 - s * q, v_) * v_ + _cast(s * p, v_) * _abs2(g), v, grads)
    if first is not None:
        m = None if m is None else jax.tree.map(lambda a, b: jnp.where(first, a, b), start.m, m)
        v = None if v is None else jax.tree.map(lambda a, b: jnp.where(first, a, b), start.v, v)
    velocity = _velocity(epsilons, m, v, grads)
    return jax.tree.map(lambda x: -_cast(s, x) * x, velocity), _Moments(None, m, v)


def _runge_kutta_step(
    name: str,
    tableau: ButcherTableau,
    coefficients: _Coefficients,
    epsilons: _Epsilons,
    oracle: GradFn | None,
    grads: Params,
    t: jax.Array,
    start: _Moments,
    s: jax.Array,
) -> tuple[Params, _Moments]:
    """One explicit Runge–Kutta step of the extended system ``(θ, m, v)`` from ``t`` to ``t + s``."""
    needed = needed_stages(tableau, (tableau.b,))
    slopes: list[_Moments | None] = []
    for i in range(tableau.num_stages):
        if not needed[i]:
            slopes.append(None)
            continue
        if i == 0 or not tableau.a[i, :i].any():
            stage, stage_grads = start, grads
        else:
            shift = scaled_sum(tableau.a[i, :i], slopes, s)
            stage = _Moments(*(None if x is None else jax.tree.map(jnp.add, x, dx) for x, dx in zip(start, shift)))
            stage_grads = oracle(stage.theta)
        time = t + jnp.asarray(tableau.c[i], t.dtype) * s
        slopes.append(_vector_field(name, coefficients, epsilons, time, stage, stage_grads))
    increment = scaled_sum(tableau.b, slopes, s)
    moments = _Moments(
        None, *(None if x is None else jax.tree.map(jnp.add, x, dx) for x, dx in zip(start[1:], increment[1:]))
    )
    return increment.theta, moments


def _vector_field(
    name: str, coefficients: _Coefficients, epsilons: _Epsilons, t: jax.Array, state: _Moments, grads: Params
) -> _Moments:
    """``(θ', m', v')`` at time ``t`` and state ``(θ, m, v)`` with ``grads = ∇f(θ)``."""
    dtheta = jax.tree.map(jnp.negative, _velocity(epsilons, state.m, state.v, grads))
    dm = dv = None
    if state.m is not None:
        h, r = _evaluate(name, "h", coefficients.h, t), _evaluate(name, "r", coefficients.r, t)
        dm = jax.tree.map(lambda m, g: _cast(h, g) * g - _cast(r, m) * m, state.m, grads)
    if state.v is not None:
        p, q = _evaluate(name, "p", coefficients.p, t), _evaluate(name, "q", coefficients.q, t)
        dv = jax.tree.map(lambda v, g: _cast(p, v) * _abs2(g) - _cast(q, v) * v, state.v, grads)
    return _Moments(dtheta, dm, dv)


def _velocity(epsilons: _Epsilons, m: Params | None, v: Params | None, grads: Params) -> Params:
    """``m / (sqrt(max(v, 0) + ε_root) + ε)``, with ``m`` replaced by ``∇f`` and the scaling by 1 where absent.

    The exact flow keeps ``v ≥ 0``; the clamp only matters at Runge–Kutta
    stages that overshoot below zero, which would otherwise give NaN.
    """
    direction = grads if m is None else m
    if v is None:
        return direction
    eps, eps_root = epsilons

    def scaled(d: jax.Array, v_: jax.Array) -> jax.Array:
        # A concrete zero ε is left out, not added: the seed's d/sqrt(v + ε_root) is then computed as written
        # (an added 0.0 is exact, but changes how XLA rounds the expression).
        root = jnp.maximum(v_, 0) if _is_zero(eps_root) else jnp.maximum(v_, 0) + _cast(eps_root, v_)
        return d / (jnp.sqrt(root) if _is_zero(eps) else jnp.sqrt(root) + _cast(eps, v_))

    return jax.tree.map(scaled, direction, v)


def _moments_from_gradient(start: _Moments, grads: Params, first: jax.Array) -> _Moments:
    """On the first step, ``m₀ = ∇f(θ₀)`` and ``v₀ = ∇f(θ₀)²`` (the seed's eq. 4)."""
    pick = lambda new, old: jnp.where(first, new, old)  # noqa: E731
    m = None if start.m is None else jax.tree.map(pick, grads, start.m)
    v = None if start.v is None else jax.tree.map(lambda g, old: pick(_abs2(g), old), grads, start.v)
    return _Moments(start.theta, m, v)


def _evaluate(name: str, label: str, coefficient: Coefficient, t: jax.Array) -> jax.Array:
    value = jnp.asarray(coefficient(t))
    if value.shape != ():
        raise ValueError(f"{name}: the coefficient {label}(t) must return a scalar, got shape {value.shape}.")
    return value.astype(t.dtype)


def _as_coefficient(label: str, coefficient: CoefficientLike) -> Coefficient | None:
    """A callable of ``t`` (numbers become constants), checked to return a scalar."""
    if coefficient is None:
        return None
    if not callable(coefficient):
        value = _check_finite(f"coefficient {label}", coefficient)
        value = coefficient if value is None else value  # a traced constant (optax.inject_hyperparams)
        return lambda t: jnp.asarray(value, t.dtype)
    shape = jax.eval_shape(coefficient, jax.ShapeDtypeStruct((), _time_dtype())).shape
    if shape != ():
        raise ValueError(f"the coefficient {label}(t) must return a scalar, got shape {shape}.")
    return coefficient


def _check_finite_at_start(name: str, coefficients: _Coefficients, initial_time: float) -> None:
    """A Runge–Kutta step evaluates the coefficients at ``t₀``: a pole there would give NaNs."""
    for label, coefficient in zip("hrpq", coefficients):
        if coefficient is None:
            continue
        with jax.ensure_compile_time_eval():
            value = coefficient(jnp.asarray(initial_time, _time_dtype()))
        if not _is_concrete(value):  # traced hyperparameters: checked when concrete
            continue
        if not math.isfinite(float(value)):
            raise ValueError(
                f"{name}: the coefficient {label}(t) is not finite at the initial time t0={initial_time}, "
                "where a Runge–Kutta integrator evaluates it. Start the flow at a later initial_time "
                "(adam_flow: init_from_gradient=True starts at t0 = λ)."
            )


REFERENCE_HORIZON = 10_000
"""Steps over which a schedule's peak is taken as the default reference learning rate."""


def _reference(method: str, learning_rate: optax.ScalarOrSchedule, reference: float | None) -> float | jax.Array:
    """The learning rate ``λ`` that fixes the ODE's coefficients.

    Default: ``learning_rate`` itself, or for a schedule its largest value over
    the first ``REFERENCE_HORIZON`` (10,000) steps (the peak of a warm-up schedule):
    the Euler scheme then equals the optax optimizer at that peak rate.
    """
    check_learning_rate(learning_rate, allow_zero=True)
    if reference is None:
        if callable(learning_rate):
            with jax.ensure_compile_time_eval():
                values = jax.vmap(learning_rate)(jnp.arange(REFERENCE_HORIZON, dtype=jnp.int32))
                # The schedule's own value at its peak step: a Python number (a constant schedule)
                # keeps its precision, so the flow is the one the same float rate gives.
                peak = learning_rate(jnp.argmax(jnp.where(jnp.isfinite(values), values, -jnp.inf)))
            if not _is_concrete(peak) or not math.isfinite(float(peak)) or not float(peak) > 0:
                raise ValueError(
                    f"{method}: the schedule has no positive finite value in its first {REFERENCE_HORIZON} steps "
                    "to serve as the reference learning rate; pass reference_learning_rate (the seed's λ)."
                )
            return float(peak)
        if _is_concrete(learning_rate) and float(learning_rate) == 0:
            raise ValueError(
                f"{method}: learning_rate is 0, which cannot serve as the reference rate λ that fixes the "
                "flow; pass reference_learning_rate (also under optax.inject_hyperparams with a warm-up "
                "schedule starting at 0)."
            )
        reference = learning_rate
    value = _check_positive("reference_learning_rate", reference)
    return reference if value is None else value


def _sqrt_step(learning_rate: optax.ScalarOrSchedule) -> optax.ScalarOrSchedule:
    """The flow step ``s = sqrt(learning_rate)`` of the second-order (momentum) flows."""
    check_learning_rate(learning_rate, allow_zero=True)
    if callable(learning_rate):
        return lambda count: _signed_sqrt(learning_rate(count))
    return _sqrt(learning_rate)


def _signed_sqrt(value: float | jax.Array) -> float | jax.Array:
    """``sqrt(|value|)`` with the sign of ``value``, so that a negative rate is reported as a fault.

    A Python number (a constant schedule's value) is taken in double precision, as a float rate is.
    """
    if isinstance(value, numbers.Real):
        return math.copysign(math.sqrt(abs(value)), value)
    return jnp.sign(value) * jnp.sqrt(jnp.abs(value))


def _is_zero(value: Any) -> bool:
    """Whether ``value`` is a concrete 0 (a traced value may not be)."""
    return _is_concrete(value) and float(value) == 0


def _is_concrete(*values: Any) -> bool:
    return not any(isinstance(value, jax.core.Tracer) for value in values)


def _sqrt(value: float | jax.Array) -> float | jax.Array:
    return math.sqrt(float(value)) if _is_concrete(value) else jnp.sqrt(value)


def _log(value: float | jax.Array) -> float | jax.Array:
    return math.log(float(value)) if _is_concrete(value) else jnp.log(value)


def _check_finite(label: str, value: Any) -> float | None:
    """Raise ``ValueError`` unless ``value`` is a finite real scalar; return it as a float.

    Traced values (``optax.inject_hyperparams`` under ``jit``) pass unchecked
    and give ``None``; concrete JAX or NumPy scalars are checked like numbers.
    """
    if isinstance(value, jax.core.Tracer):
        return None
    array = None
    if not isinstance(value, (bool, np.bool_)) and isinstance(value, (numbers.Real, np.ndarray, np.generic, jax.Array)):
        array = np.asarray(value)
    if array is None or array.shape != () or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise ValueError(f"{label} must be a finite real number, got {value!r}.")
    number = float(array)
    if not math.isfinite(number):
        raise ValueError(f"{label} must be a finite real number, got {value!r}.")
    return number


def _check_positive(label: str, value: Any) -> float | None:
    number = _check_finite(label, value)
    if number is not None and number <= 0:
        raise ValueError(f"{label} must be positive, got {value!r}.")
    return number


def _check_epsilons(eps: Any, eps_root: Any) -> _Epsilons:
    """``eps`` and ``eps_root``: finite and non-negative, not both 0 (traced values pass unchecked)."""
    values = [_check_finite(label, value) for label, value in (("eps", eps), ("eps_root", eps_root))]
    for label, number in zip(("eps", "eps_root"), values):
        if number is not None and number < 0:
            raise ValueError(f"{label} must be non-negative, got {number!r}.")
    if values == [0.0, 0.0]:
        raise ValueError(
            "eps and eps_root cannot both be 0: the velocity m / (sqrt(v + eps_root) + eps) is undefined at v = 0."
        )
    return _Epsilons(eps, eps_root)


def _check_bool(label: str, value: Any) -> bool | None:
    """``value`` as a bool, ``None`` for a traced value; anything but a bool is a ``ValueError``."""
    if isinstance(value, jax.core.Tracer):
        return None
    array = np.asarray(value) if isinstance(value, (bool, np.bool_, np.ndarray, jax.Array)) else None
    if array is None or array.shape != () or array.dtype != bool:
        raise ValueError(f"{label} must be True or False, got {value!r}.")
    return bool(array)


def _check_unit_interval(label: str, value: Any) -> float | None:
    number = _check_finite(label, value)
    if number is not None and not 0.0 < number < 1.0:
        raise ValueError(f"{label} must lie in the open interval (0, 1), got {value!r}.")
    return number


def _abs2(g: jax.Array) -> jax.Array:
    """``|g|²`` elementwise, real also for complex gradients (optax's second-moment convention)."""
    return jnp.real(g * jnp.conj(g)) if jnp.iscomplexobj(g) else g * g


def _real_dtype(x: jax.Array) -> jnp.dtype:
    """The real dtype of ``x`` (``float32`` for ``complex64``): second moments are real."""
    return jnp.real(jnp.zeros([], jnp.result_type(x))).dtype


def _cast(value: jax.Array | float, like: jax.Array) -> jax.Array:
    return jnp.asarray(value, like.dtype)


def _time_dtype() -> jnp.dtype:
    return jnp.result_type(float)
