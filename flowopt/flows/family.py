"""The adaptive-algorithm ODE family of Belotto da Silva & Gazeau, as one integrator.

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

:func:`flow_integrator` builds the :class:`~flowopt.Integrator` of a member;
:func:`flowopt.adaptive_flow` and the named flows (:func:`flowopt.adam_flow`,
:func:`flowopt.rmsprop_flow`, ...) in :mod:`flowopt.alias` make optimizers of it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple, cast, overload

import jax
import jax.numpy as jnp
import optax

from flowopt.core.checks import check_finite, check_positive, check_unit_interval, is_concrete, is_zero
from flowopt.core.integrator import Integrator, check_learning_rate
from flowopt.core.types import GradFn, Params
from flowopt.rk.stages import oracle_calls, stage_sum
from flowopt.rk.tableau import ButcherTableau

Coefficient = Callable[[jax.Array], jax.Array]
CoefficientLike = Coefficient | float | jax.Array | None


class AdaptiveFlowState(NamedTuple):
    """Stage state of an :func:`~flowopt.adaptive_flow` optimizer (inside :class:`~flowopt.IntegratorState`).

    The enclosing state counts the ``update`` calls (``count``; schedules are
    evaluated at it), the oracle calls and the skipped steps.

    Attributes:
      taken: number of steps applied (int32): calls with a zero step size
        (a warm-up from 0) or a skipped step do not count, and the flow's
        time advances only with the steps taken.
      t: the flow's time (see the module docstring for which point it dates).
      m: first moment, shaped like the parameters; ``None`` without one.
      v: second moment, shaped like the parameters; ``None`` without one.
    """

    taken: jax.Array
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
    check_unit_interval("b1", b1)
    check_unit_interval("b2", b2)
    return bool(3.0 + b2 > 4.0 * b1)


def adam_coefficient(beta: float, timescale: float | jax.Array) -> Coefficient:
    """Adam's coefficient ``g^A(t) = (1 - e^{-λ/α}) / (λ (1 - e^{-t/α}))`` with ``β = e^{-λ/α}``.

    That is ``(1 - β) / (λ (1 - β^{t/λ}))`` with ``λ = timescale``, evaluated with
    ``expm1`` so that small ``t`` loses no digits. It has a simple pole at ``t = 0``,
    and ``s g^A(t_{k+1}) = (1 - β)/(1 - β^{k+1})`` at ``t_k = kλ``, ``s = λ``: the
    weight of Adam's bias-corrected moving average.
    """
    check_unit_interval("beta", beta)
    check_positive("timescale", timescale)

    def coefficient(t: jax.Array) -> jax.Array:
        return (1.0 - beta) / (timescale * -jnp.expm1(t / timescale * _log(beta)))

    return coefficient


def flow_integrator(
    h: CoefficientLike,
    r: CoefficientLike,
    p: CoefficientLike,
    q: CoefficientLike,
    eps: float,
    eps_root: float,
    integrator: ButcherTableau | None,
    initial_time: float | jax.Array,
    initial_v: float,
    init_from_gradient: bool,
    scheduled: bool,
) -> Integrator:
    """The :class:`~flowopt.Integrator` of the system with coefficients ``h, r, p, q``.

    The arguments are those of :func:`flowopt.adaptive_flow` (which holds
    their defaults); ``scheduled`` says whether the step will come from a
    schedule: the time is then the running sum of the steps taken, otherwise
    ``t₀ + n·s``.
    """
    coefficients = _Coefficients(*(_as_coefficient(name, c) for name, c in zip("hrpq", (h, r, p, q))))
    if (coefficients.h is None) != (coefficients.r is None):
        raise ValueError("adaptive_flow: give both h and r (a first moment) or neither.")
    if (coefficients.p is None) != (coefficients.q is None):
        raise ValueError("adaptive_flow: give both p and q (a second moment) or neither.")
    epsilons = _check_epsilons(eps, eps_root)
    check_finite("initial_time", initial_time)
    if (value := check_finite("initial_v", initial_v)) is not None and value < 0:
        raise ValueError(f"initial_v must be non-negative, got {initial_v!r}.")
    if integrator is not None and not isinstance(integrator, ButcherTableau):
        raise ValueError(
            f"integrator must be None (the seed's Euler scheme) or a flowopt.ButcherTableau, got {type(integrator).__name__}."
        )
    name = f"adaptive_flow[{'euler-eq3' if integrator is None else integrator.name}]"
    if integrator is not None:
        _check_finite_at_start(name, coefficients, initial_time)
    calls = 0 if integrator is None else oracle_calls(integrator, (integrator.b,))

    def clock(advances: jax.Array, accumulated: jax.Array, s: jax.Array) -> jax.Array:
        """The time after ``advances`` steps: ``t₀ + advances·s`` for a constant step (free of
        the round-off drift of a running sum, which would shift Adam's bias correction),
        the running sum ``accumulated`` for a schedule."""
        if scheduled:
            return accumulated
        return jnp.asarray(initial_time, s.dtype) + advances.astype(s.dtype) * s

    def init(params: Params) -> AdaptiveFlowState:
        return AdaptiveFlowState(
            taken=jnp.zeros([], jnp.int32),
            t=jnp.asarray(initial_time, _time_dtype()),
            m=None if coefficients.h is None else optax.tree.zeros_like(params),
            v=None
            if coefficients.p is None
            else jax.tree.map(lambda x: jnp.full(jnp.shape(x), initial_v, _real_dtype(x)), params),
        )

    def step(oracle: GradFn | None, params: Params, k1: Params, h: jax.Array | None, state: AdaptiveFlowState):
        assert h is not None  # the step of the learning-rate schedule (as_optimizer passes it)
        s = jnp.asarray(h, state.t.dtype)
        first = state.taken == 0
        start = _Moments(params, state.m, state.v)
        if init_from_gradient:
            start = _moments_from_gradient(start, k1, first)
        if integrator is None:
            if init_from_gradient:  # the first call only sets the moments, at t₀
                t = jnp.where(first, state.t, clock(state.taken, state.t + s, s))
            else:
                t = clock(state.taken + 1, state.t + s, s)
            increment, moments = _euler_eq3_step(
                name, coefficients, epsilons, k1, t, start, s, first if init_from_gradient else None
            )
        else:
            t = clock(state.taken + 1, state.t + s, s)
            increment, moments = _runge_kutta_step(
                name, integrator, coefficients, epsilons, oracle, k1, clock(state.taken, state.t, s), start, s
            )
        return increment, AdaptiveFlowState(state.taken + 1, t, moments.m, moments.v), calls

    return Integrator(name=name, init=init, step=step, needs_oracle=calls > 0)


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
        h, r = _evaluate_pair(name, "hr", coefficients.h, coefficients.r, t)
        m = jax.tree.map(lambda m_, g: _cast(1 - s * r, m_) * m_ + _cast(s * h, g) * g, m, grads)
    if v is not None:
        p, q = _evaluate_pair(name, "pq", coefficients.p, coefficients.q, t)
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

    def field(time: jax.Array, stage: _Moments) -> _Moments:
        assert oracle is not None  # only a stage beyond the first calls it, and a method with one is given an oracle
        return _vector_field(name, coefficients, epsilons, time, stage, oracle(stage.theta))

    first = _vector_field(name, coefficients, epsilons, t, start, grads)
    increment = stage_sum(tableau, field, start, first, s, tableau.b, t0=t)
    moments = _Moments(None, *(None if x is None else jax.tree.map(jnp.add, x, dx) for x, dx in zip(start[1:], increment[1:])))
    return increment.theta, moments


def _vector_field(
    name: str, coefficients: _Coefficients, epsilons: _Epsilons, t: jax.Array, state: _Moments, grads: Params
) -> _Moments:
    """``(θ', m', v')`` at time ``t`` and state ``(θ, m, v)`` with ``grads = ∇f(θ)``."""
    dtheta = jax.tree.map(jnp.negative, _velocity(epsilons, state.m, state.v, grads))
    dm = dv = None
    if state.m is not None:
        h, r = _evaluate_pair(name, "hr", coefficients.h, coefficients.r, t)
        dm = jax.tree.map(lambda m, g: _cast(h, g) * g - _cast(r, m) * m, state.m, grads)
    if state.v is not None:
        p, q = _evaluate_pair(name, "pq", coefficients.p, coefficients.q, t)
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
        root = jnp.maximum(v_, 0) if is_zero(eps_root) else jnp.maximum(v_, 0) + _cast(eps_root, v_)
        return d / (jnp.sqrt(root) if is_zero(eps) else jnp.sqrt(root) + _cast(eps, v_))

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


def _evaluate_pair(
    name: str, labels: str, first: Coefficient | None, second: Coefficient | None, t: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Both coefficients of a moment that is present (``h, r`` or ``p, q``) at time ``t``."""
    assert first is not None and second is not None  # flow_integrator refuses a pair with one of the two missing
    return _evaluate(name, labels[0], first, t), _evaluate(name, labels[1], second, t)


def _as_coefficient(label: str, coefficient: CoefficientLike) -> Coefficient | None:
    """A callable of ``t`` (numbers become constants), checked to return a scalar."""
    if coefficient is None:
        return None
    if not callable(coefficient):
        value = check_finite(f"coefficient {label}", coefficient)
        value = coefficient if value is None else value  # a traced constant (optax.inject_hyperparams)
        return lambda t: jnp.asarray(value, t.dtype)
    shape = jax.eval_shape(coefficient, jax.ShapeDtypeStruct((), _time_dtype())).shape
    if shape != ():
        raise ValueError(f"the coefficient {label}(t) must return a scalar, got shape {shape}.")
    return coefficient


def _check_finite_at_start(name: str, coefficients: _Coefficients, initial_time: float | jax.Array) -> None:
    """A Runge–Kutta step evaluates the coefficients at ``t₀``: a pole there would give NaNs."""
    for label, coefficient in zip("hrpq", coefficients):
        if coefficient is None:
            continue
        with jax.ensure_compile_time_eval():
            value = coefficient(jnp.asarray(initial_time, _time_dtype()))
        if not is_concrete(value):  # traced hyperparameters: checked when concrete
            continue
        if not math.isfinite(float(value)):
            raise ValueError(
                f"{name}: the coefficient {label}(t) is not finite at the initial time t0={initial_time}, "
                "where a Runge–Kutta integrator evaluates it. Start the flow at a later initial_time "
                "(adam_flow: init_from_gradient=True starts at t0 = λ)."
            )


REFERENCE_HORIZON = 10_000
"""Steps over which a schedule's peak is taken as the default reference learning rate."""


def reference_rate(method: str, learning_rate: optax.ScalarOrSchedule, reference: float | None) -> float | jax.Array:
    """The learning rate ``λ`` that fixes the ODE's coefficients.

    Default: ``learning_rate`` itself, or for a schedule its largest value over
    the first ``REFERENCE_HORIZON`` (10,000) steps (the peak of a warm-up schedule):
    the Euler scheme then equals the optax optimizer at that peak rate.
    """
    check_learning_rate(learning_rate, allow_zero=True)
    rate = reference
    if rate is None:
        if callable(learning_rate):
            with jax.ensure_compile_time_eval():
                values = jax.vmap(learning_rate)(jnp.arange(REFERENCE_HORIZON, dtype=jnp.int32))
                # The schedule's own value at its peak step: a Python number (a constant schedule)
                # keeps its precision, so the flow is the one the same float rate gives.
                # optax types a schedule's value as any ArrayLike, complex included; a learning rate is real.
                peak = cast(float | jax.Array, learning_rate(jnp.argmax(jnp.where(jnp.isfinite(values), values, -jnp.inf))))
            if not is_concrete(peak) or not math.isfinite(float(peak)) or not float(peak) > 0:
                raise ValueError(
                    f"{method}: the schedule has no positive finite value in its first {REFERENCE_HORIZON} steps "
                    "to serve as the reference learning rate; pass reference_learning_rate (the seed's λ)."
                )
            return float(peak)
        if is_concrete(learning_rate) and float(learning_rate) == 0:
            raise ValueError(
                f"{method}: learning_rate is 0, which cannot serve as the reference rate λ that fixes the "
                "flow; pass reference_learning_rate (also under optax.inject_hyperparams with a warm-up "
                "schedule starting at 0)."
            )
        rate = learning_rate
    value = check_positive("reference_learning_rate", rate)
    return rate if value is None else value


@overload
def sqrt_step(learning_rate: float | jax.Array) -> float | jax.Array: ...
@overload
def sqrt_step(learning_rate: optax.ScalarOrSchedule) -> optax.ScalarOrSchedule: ...
def sqrt_step(learning_rate: optax.ScalarOrSchedule) -> optax.ScalarOrSchedule:
    """The flow step ``s = sqrt(learning_rate)`` of the second-order (momentum) flows."""
    check_learning_rate(learning_rate, allow_zero=True)
    if callable(learning_rate):
        return lambda count: _signed_sqrt(learning_rate(count))
    return _sqrt(learning_rate)


def _signed_sqrt(value: jax.typing.ArrayLike) -> float | jax.Array:
    """``sqrt(|value|)`` with the sign of ``value``, so that a negative rate is reported as a fault.

    A Python number (a constant schedule's value) is taken in double precision, as a float rate is.
    """
    if isinstance(value, numbers.Real):
        return math.copysign(math.sqrt(abs(value)), value)
    return jnp.sign(value) * jnp.sqrt(jnp.abs(value))


def _sqrt(value: float | jax.Array) -> float | jax.Array:
    return math.sqrt(float(value)) if is_concrete(value) else jnp.sqrt(value)


def _log(value: float | jax.Array) -> float | jax.Array:
    return math.log(float(value)) if is_concrete(value) else jnp.log(value)


def _check_epsilons(eps: Any, eps_root: Any) -> _Epsilons:
    """``eps`` and ``eps_root``: finite and non-negative, not both 0 (traced values pass unchecked)."""
    values = [check_finite(label, value) for label, value in (("eps", eps), ("eps_root", eps_root))]
    for label, number in zip(("eps", "eps_root"), values):
        if number is not None and number < 0:
            raise ValueError(f"{label} must be non-negative, got {number!r}.")
    if values == [0.0, 0.0]:
        raise ValueError("eps and eps_root cannot both be 0: the velocity m / (sqrt(v + eps_root) + eps) is undefined at v = 0.")
    return _Epsilons(eps, eps_root)


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
