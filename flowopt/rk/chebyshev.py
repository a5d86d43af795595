"""Stabilised explicit Runge–Kutta methods: Runge–Kutta–Chebyshev (RKC) of orders 1 and 2.

An ``s``-stage explicit method costs ``s`` gradients a step; classical ones
(RK4: interval 2.79 with 4 stages) are stable on a real interval that grows
no faster than their cost, so per gradient they lose to gradient descent
(interval 2 with 1 gradient). Chebyshev methods choose the stability
polynomial instead of the order conditions of high order: with ``s`` stages
their real stability interval ``ℓ_s`` grows like ``s²``, so the stable step
per gradient grows like ``s`` (Hairer & Wanner, *Solving ODEs II*, §IV.2;
van der Houwen & Sommeijer 1980).

**Order 1** (the damped Chebyshev method; Eftekhari, Vandereycken, Vilmart &
Zygalakis, *Explicit stabilised gradient descent for faster strongly convex
optimisation*, BIT 2021)::

    R_s(z) = T_s(ω₀ + ω₁ z) / T_s(ω₀),   ω₀ = 1 + ε/s²,   ω₁ = T_s(ω₀) / T_s'(ω₀),

stable on ``[-ℓ_s, 0]`` with ``ℓ_s = (1 + ω₀)/ω₁ ≈ (2 - 4ε/3) s²``. The
damping ``ε > 0`` keeps ``|R_s| ≤ 1/T_s(ω₀) < 1`` inside the interval (at
``ε = 0`` the polynomial touches ±1 at ``s + 1`` points and contracts nothing
there).

**Order 2** (Sommeijer, Shampine & Verwer, *RKC: an explicit solver for
parabolic PDEs*, 1997; Verwer, Hundsdorfer & Sommeijer 1990)::

    R_s(z) = a_s + b_s T_s(ω₀ + ω₁ z),   ω₀ = 1 + ε/s²,   ω₁ = T_s'(ω₀) / T_s''(ω₀),
    b_j = T_j''(ω₀) / T_j'(ω₀)²  (j ≥ 2),  b_0 = b_1 = b_2,   a_j = 1 - b_j T_j(ω₀),

with ``ℓ_s ≈ 0.65 s²`` at the default ``ε = 2/13``.

**The recurrence.** Both are evaluated by the three-term recurrence of the
Chebyshev polynomials, which is what keeps them internally stable for ``s``
in the hundreds (Verwer et al.): with ``F = -∇f``, ``Y_0 = θ_n``,
``Y_1 = Y_0 + μ̃_1 h F(Y_0)`` and for ``j = 2..s``::

    Y_j = (1 - μ_j - ν_j) Y_0 + μ_j Y_{j-1} + ν_j Y_{j-2} + μ̃_j h F(Y_{j-1}) + γ̃_j h F(Y_0),

``θ_{n+1} = Y_s``. The stages are carried as differences ``Y_j - θ_n`` (the
coefficients of ``Y_0`` then drop out), which keeps the increments' digits
when the parameters are large. The gradient at ``Y_0`` is the one ``update``
receives; the ``s - 1`` others come from the oracle. The coefficients are
computed in float64 on the host, once per method.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flowopt.core.checks import check_integer, check_range
from flowopt.core.integrator import Integrator
from flowopt.core.types import GradFn, Params

MAX_STAGES = 1000
"""The most stages a method may have (its coefficients stay accurate in float64 far beyond)."""

DEFAULT_DAMPING = {1: 0.05, 2: 2.0 / 13.0}
"""The default damping ``ε`` of each order (Eftekhari et al.'s 0.05 for order 1, Sommeijer et al.'s 2/13 for order 2)."""

_MAX_UNROLLED_STAGES = 8  # more stages run in a lax.fori_loop: compile time grows with the unrolled length


class ChebyshevMethod(NamedTuple):
    """The coefficients of an ``s``-stage RKC method (float64 arrays indexed by stage ``j = 0..s``).

    Attributes:
      stages: ``s``.
      order: 1 or 2.
      damping: ``ε``.
      w0, w1: ``ω₀`` and ``ω₁``.
      mu, nu, mu_tilde, gamma_tilde: the recurrence's ``μ_j, ν_j, μ̃_j, γ̃_j``
        (entries below the first stage that uses them are 0).
      a_s, b_s: ``R_s(z) = a_s + b_s T_s(ω₀ + ω₁ z)``.
    """

    stages: int
    order: int
    damping: float
    w0: float
    w1: float
    mu: np.ndarray
    nu: np.ndarray
    mu_tilde: np.ndarray
    gamma_tilde: np.ndarray
    a_s: float
    b_s: float

    @property
    def name(self) -> str:
        """``rkc1(s=10, ε=0.05)``."""
        return f"rkc{self.order}(s={self.stages}, ε={self.damping:g})"

    @property
    def damped_interval(self) -> float:
        """``(1 + ω₀)/ω₁``: on ``[-x, 0]`` for ``x`` up to it, ``ω₀ + ω₁ z`` stays in ``[-1, ω₀]``.

        There ``|R_s| ≤ 1/T_s(ω₀) < 1`` for order 1 (the damping), and
        ``R_s ∈ [a_s - b_s, 1]`` for order 2.
        """
        return (1.0 + self.w0) / self.w1

    @property
    def stability_interval(self) -> float:
        """``ℓ_s``, the largest ``x`` with ``|R_s(-x')| ≤ 1`` for every ``x' ∈ [0, x]``.

        Beyond :attr:`damped_interval` the argument ``y = ω₀ - ω₁ x`` of
        ``T_s`` is below -1, where ``|T_s(y)| = cosh(s·arccosh(-y))`` grows
        monotonically, so the end is where ``|a_s + b_s T_s(y)| = 1``: in
        closed form. Order 1: ``2ω₀/ω₁``, within ``ε/(2s²)`` (relative) of
        ``(1 + ω₀)/ω₁``.
        """
        sign = 1.0 if self.stages % 2 == 0 else -1.0  # the sign of T_s(y) for y < -1
        bound = (sign - self.a_s) / self.b_s * sign  # |T_s(y)| at |R_s| = 1
        y = -math.cosh(math.acosh(bound) / self.stages)
        return (self.w0 - y) / self.w1

    def stability_function(self, z: np.ndarray | complex) -> np.ndarray:
        """``R_s(z)`` at complex ``z``, by the Chebyshev recurrence (accurate for any ``s``)."""
        x = self.w0 + self.w1 * np.asarray(z, dtype=complex)
        return self.a_s + self.b_s * chebyshev_values(self.stages, x)[0][-1]


def chebyshev_values(degree: int, x: np.ndarray | float) -> tuple[list, list, list]:
    """``T_j(x)``, ``T_j'(x)`` and ``T_j''(x)`` for ``j = 0..degree``, by the three-term recurrences."""
    values, first, second = [np.ones_like(x), x], [np.zeros_like(x), np.ones_like(x)], [np.zeros_like(x)] * 2
    for j in range(2, degree + 1):
        values.append(2 * x * values[j - 1] - values[j - 2])
        first.append(2 * values[j - 1] + 2 * x * first[j - 1] - first[j - 2])
        second.append(4 * first[j - 1] + 2 * x * second[j - 1] - second[j - 2])
    return values[: degree + 1], first[: degree + 1], second[: degree + 1]


def chebyshev_method(stages: int, order: int = 1, damping: float | None = None) -> ChebyshevMethod:
    """The coefficients of the ``stages``-stage RKC method of ``order`` (1 or 2) and damping ``ε``.

    Raises:
      ValueError: ``order`` not 1 or 2, ``stages`` not an integer in ``1..MAX_STAGES``
        (``2..`` for order 2), or ``damping`` not a finite number in ``[0, s²)``
        (order 2: ``(0, s²)``; its ``ω₁`` needs ``T_s'' > 0``).
    """
    order = check_integer("order", order, 1, 2)
    s = check_integer("stages", stages, order, MAX_STAGES)
    if damping is None:
        damping = DEFAULT_DAMPING[order]
    epsilon = check_range("damping", damping, 0.0, float(s * s), low_open=order == 2)
    if epsilon is None:
        raise ValueError("damping must be a concrete number (the coefficients are computed on the host), got a tracer.")
    w0 = 1.0 + epsilon / (s * s)
    t, dt, ddt = (np.array(column, dtype=np.float64) for column in chebyshev_values(s, w0))
    mu, nu, mu_tilde, gamma_tilde = (np.zeros(s + 1) for _ in range(4))
    if order == 1:
        w1 = t[s] / dt[s]
        mu_tilde[1] = w1 / w0
        for j in range(2, s + 1):
            mu[j], nu[j], mu_tilde[j] = 2 * w0 * t[j - 1] / t[j], -t[j - 2] / t[j], 2 * w1 * t[j - 1] / t[j]
        a_s, b_s = 0.0, 1.0 / t[s]
    else:
        w1 = dt[s] / ddt[s]
        b = np.empty(s + 1)
        b[2:] = ddt[2:] / dt[2:] ** 2
        b[:2] = b[2]
        a = 1.0 - b * t
        mu_tilde[1] = b[1] * w1
        for j in range(2, s + 1):
            mu[j], nu[j] = 2 * b[j] * w0 / b[j - 1], -b[j] / b[j - 2]
            mu_tilde[j] = 2 * b[j] * w1 / b[j - 1]
            gamma_tilde[j] = -a[j - 1] * mu_tilde[j]
        a_s, b_s = float(a[s]), float(b[s])
    return ChebyshevMethod(s, order, epsilon, w0, float(w1), mu, nu, mu_tilde, gamma_tilde, a_s, b_s)


def stages_for(step_curvature: float, order: int = 1, damping: float | None = None, safety: float = 0.9) -> int:
    """The fewest stages ``s`` with ``h·λ_max ≤ safety · ℓ_s``, for ``step_curvature = h·λ_max``.

    ``ℓ_s`` grows like ``s²``, so ``s ≈ sqrt(h λ_max / (2 safety))`` for order 1.

    Raises:
      ValueError: a ``step_curvature`` that is not a finite non-negative number,
        a ``safety`` outside ``(0, 1]``, or no ``s`` up to :data:`MAX_STAGES`.
    """
    target = check_range("step_curvature", step_curvature, 0.0, math.inf, low_open=False)
    margin = check_range("safety", safety, 0.0, 1.0, high_open=False)
    if target is None or margin is None:
        raise ValueError("stages_for needs concrete numbers, got a tracer.")
    low, high = order, MAX_STAGES
    if chebyshev_method(high, order, damping).stability_interval * margin < target:
        raise ValueError(
            f"h·λ_max = {target:g} needs more than MAX_STAGES = {MAX_STAGES} stages at safety {margin:g}; take a smaller step."
        )
    while low < high:  # ℓ_s increases with s
        middle = (low + high) // 2
        if chebyshev_method(middle, order, damping).stability_interval * margin >= target:
            high = middle
        else:
            low = middle + 1
    return low


def chebyshev_increment(
    oracle: GradFn | None,
    params: Params,
    k1: Params,
    h: jax.Array,
    coefficients: jax.Array,
    stages: int | jax.Array,
    second_order: bool,
) -> Params:
    """``θ_{n+1} - θ_n`` of one RKC step by the recurrence, carried as differences ``Y_j - θ_n``.

    ``coefficients`` is the ``(≥ s + 1, 4)`` table of ``μ_j, ν_j, μ̃_j, γ̃_j``
    (see :class:`ChebyshevMethod`) and ``stages`` is ``s``: a Python integer
    or a traced one (a ``while_loop``). ``k1 = ∇f(θ_n)``; the oracle gives
    the ``s - 1`` other gradients.

    **Memory.** The step holds ``θ``, the two latest differences and the
    stage point, whose gradient takes its place (order 2 also ``k1``), for
    any ``s``: 4 parameter-sized buffers (order 2: 5). Three details make
    XLA keep to that:

    - each new difference is written over the older one it replaces: XLA
      writes a fusion's result over an operand that dies there, the first
      such one in its operand order, so the combination reads the older
      difference last (``μ_j d_{j-1} - μ̃_j h ∇f + ν_j d_{j-2}``: the last
      term read becomes the fusion's first operand), and the gradient dies
      with the stage;
    - beyond 8 stages the stages run two a pass in a ``lax.fori_loop``
      whose carry ``(newer, older)`` keeps its places: the first stage of a
      pass writes ``Y_j - θ`` over ``older``, the second ``Y_{j+1} - θ``
      over ``newer`` (a loop whose outputs swap its inputs copies both at
      every pass, one or two buffers more);
    - up to 8 stages the code is straight-line (on the CPU, convolutions run
      much slower inside a loop: a 5-stage step on the CNN, 13 times), and each difference but the
      last is ``materialised``, or XLA would recompute it from all the
      gradients before it in each of its three readers and keep those
      gradients live.

    With a Python ``s`` an odd stage left over runs after the loop; with a
    traced one, under a ``lax.cond``.
    """
    table = coefficients.astype(jnp.result_type(h, float))
    first = jax.tree.map(lambda g: -(table[1, 2] * h).astype(g.dtype) * g, k1)
    if isinstance(stages, int) and stages == 1:  # gradient descent: no stage beyond the first
        return first
    assert oracle is not None  # every caller with more than one stage resolves an oracle

    def stage(j: jax.Array | int, newer: Params, older: Params) -> Params:
        """``Y_j - θ`` from ``newer = Y_{j-1} - θ`` and ``older = Y_{j-2} - θ``."""
        mu, nu, mu_tilde, gamma_tilde = (table[j, i] * scale for i, scale in enumerate((1, 1, h, h)))
        gradient = oracle(jax.tree.map(jnp.add, params, newer))

        def combine(d1: jax.Array, d2: jax.Array, g: jax.Array, g0: jax.Array) -> jax.Array:
            c = [jnp.asarray(value, d1.dtype) for value in (mu, nu, mu_tilde, gamma_tilde)]
            combined = c[0] * d1 - c[2] * g + c[1] * d2  # d2 last: XLA writes the result over it
            return combined - c[3] * g0 if second_order else combined

        return jax.tree.map(combine, newer, older, gradient, k1)

    zeros = jax.tree.map(jnp.zeros_like, k1)  # Y_0 - θ
    if isinstance(stages, int) and stages <= _MAX_UNROLLED_STAGES:
        newer, older = first, zeros
        for j in range(2, stages + 1):
            newer, older = stage(j, newer, older), newer
            newer = newer if j == stages else materialised(newer)
        return newer

    def two_stages(p: jax.Array, carry: tuple[Params, Params]) -> tuple[Params, Params]:
        newer, older = carry
        j = 2 + 2 * p
        older = stage(j, newer, older)  # Y_j - θ, over Y_{j-2} - θ
        newer = stage(j + 1, older, newer)  # Y_{j+1} - θ, over Y_{j-1} - θ
        return newer, older

    newer, older = jax.lax.fori_loop(0, (stages - 1) // 2, two_stages, (first, zeros))
    if isinstance(stages, int):
        return stage(stages, newer, older) if (stages - 1) % 2 else newer
    return jax.lax.cond((stages - 1) % 2 == 1, lambda: stage(stages, newer, older), lambda: newer)


def materialised(tree: Params) -> Params:
    """``tree``, in a form that XLA computes into buffers of its own instead of into each of its readers.

    Each leaf ``x`` becomes ``x / (1 + 0·x)``: ``x`` itself where it is
    finite (NaN where not). XLA duplicates cheap elementwise producers into
    every fusion that reads them, so in straight-line code a stage
    difference that three later fusions read would be recomputed in each,
    from all the gradients before it, which then all stay live (RKC with 5
    stages on an MLP: 6.04 parameter-sized buffers). A division over the
    whole array is an expensive instruction, which XLA does not duplicate.
    (Dividing by a scalar, as :func:`~flowopt.rk.stages.after` multiplies
    by one, XLA rewrites as a multiplication; an ``optimization_barrier``
    the CPU backend removes before fusion.)
    """
    return jax.tree.map(lambda x: x / (1 + 0 * x), tree)


def coefficient_table(method: ChebyshevMethod) -> np.ndarray:
    """The ``(s + 1, 4)`` float64 table of ``μ_j, ν_j, μ̃_j, γ̃_j`` that :func:`chebyshev_increment` reads."""
    return np.stack([method.mu, method.nu, method.mu_tilde, method.gamma_tilde], axis=1)


def chebyshev_integrator(method: ChebyshevMethod) -> Integrator:
    """The RKC ``method`` as an :class:`~flowopt.Integrator` of the gradient flow (no stage state).

    One incoming gradient and ``s - 1`` oracle calls a step. The stage loop is
    straight-line code up to 8 stages and a ``lax.fori_loop`` beyond (the
    same iterates; on the CPU, convolutions run slower inside a loop), in
    4 parameter-sized buffers for order 1 and 5 for order 2, for any ``s``
    (see :func:`chebyshev_increment`).
    """
    s, table = method.stages, coefficient_table(method)

    def step(oracle: GradFn | None, params: Params, k1: Params, h: jax.Array | None, state: tuple):
        assert h is not None  # the step of the learning-rate schedule (as_optimizer passes it)
        increment = chebyshev_increment(oracle, params, k1, h, jnp.asarray(table), s, method.order == 2)
        return increment, state, s - 1

    return Integrator(name=f"rkc{method.order}[s={s}]", init=lambda params: (), step=step, needs_oracle=s > 1)
