"""The methods the stabilized study compares, each as settings to run: optimizer, step size ``h·L``, cost.

For a problem with curvature in ``[μ, L]`` (``κ = L/μ``):

* **Gradient descent** ``θ ← θ - h∇f(θ)`` on a grid of ``h·L``; on a
  quadratic the best contraction, ``(κ-1)/(κ+1)`` per gradient, is at
  ``h = 2/(μ + L)``, which the grid always includes.
* **Heavy ball** (Polyak, *Some methods of speeding up the convergence of
  iteration methods*, 1964): ``θ_{k+1} = θ_k - h∇f(θ_k) + β(θ_k - θ_{k-1})``
  with ``h = 4/(√L + √μ)²`` and ``β = ((√κ - 1)/(√κ + 1))²``, contraction
  ``(√κ - 1)/(√κ + 1)`` per gradient on a quadratic. ``optax.sgd(h,
  momentum=β)`` is exactly this recursion: its trace ``t_k = g_k + β t_{k-1}``
  and update ``-h t_k`` give ``θ_{k+1} - θ_k = -h g_k + β(θ_k - θ_{k-1})``.
* **Nesterov** (*A method for solving the convex programming problem with
  convergence rate O(1/k²)*, 1983), strongly convex constants: ``h = 1/L``,
  ``β = (√κ - 1)/(√κ + 1)``, ``y_k = x_k + β(x_k - x_{k-1})``,
  ``x_{k+1} = y_k - h∇f(y_k)``. ``optax.sgd(h, momentum=β, nesterov=True)``
  iterates the look-ahead points ``y_k`` (its update ``-h(g_k + β t_k)``
  equals ``y_{k+1} - y_k``), so it evaluates the same gradients.
* **RK4** and **BDF-2** with 3 inner steps (flowopt), on grids of ``h·L``.
* **RKC** (``flowopt.rkc``; Eftekhari, Vandereycken, Vilmart & Zygalakis,
  *Explicit stabilised gradient descent for faster strongly convex
  optimisation*, BIT 2021): ``s`` gradients a step, stable for
  ``h·L ≤ ℓ_s``; always run at ``h·L = safety·ℓ_s``. Three families: fixed
  ``s`` at the default damping ``ε = 0.05``; ``s`` from
  :func:`flowopt.rk.chebyshev.stages_for` for a target ``h·μ`` (so
  ``h·L = h·μ·κ``) at ``ε = 0.05``; and a sweep ``s = ⌈a√κ⌉``,
  ``ε = η s²/κ``. At ``η = 2/(1 - 1/κ)`` the order-1 polynomial is the
  Chebyshev polynomial of ``[μ, L]`` (``ω₀ = (κ+1)/(κ-1)``), contracting
  by ``1/T_s(ω₀)`` per step, about ``e^{-2/√κ}`` per gradient for
  ``s ≳ √κ``: the rate of the heavy ball.
* **Conjugate gradients** (Hestenes & Stiefel, *Methods of conjugate
  gradients for solving linear systems*, 1952) on quadratics only: the
  lowest ``f`` over ``θ_0 + K_k(A, ∇f(θ_0))``, the Krylov lower bound of every
  method above, which all stay in that space. Iteration ``k`` costs one
  matrix-vector product ``Ap = ∇f(p)`` (one gradient) after the gradient at
  ``θ_0``: ``k + 1`` gradient evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import optax

import flowopt
from flowopt.rk.chebyshev import DEFAULT_DAMPING, MAX_STAGES, chebyshev_method, stages_for

BDF_INNER_STEPS = 3
RATE_METHODS = ("gd", "rk4", "bdf2")
"""The methods run on a grid of ``h·L`` (config ``methods.<name>.rates``)."""


class Setting(NamedTuple):
    """One optimizer to run at each ``h·L`` of ``rates``: ``method`` family, a unique ``label``, its parameters."""

    method: str
    label: str
    build: Callable[[float], optax.GradientTransformation]
    rates: tuple[float, ...]
    cost: int
    params: dict[str, Any]


def heavy_ball_parameters(mu: float, lipschitz: float) -> tuple[float, float]:
    """Polyak's optimal ``(h·L, β)``: ``h = 4/(√L + √μ)²``, ``β = ((√κ - 1)/(√κ + 1))²``."""
    root = math.sqrt(lipschitz / mu)
    return 4 * lipschitz / (math.sqrt(lipschitz) + math.sqrt(mu)) ** 2, ((root - 1) / (root + 1)) ** 2


def nesterov_momentum(mu: float, lipschitz: float) -> float:
    """Nesterov's ``β = (√κ - 1)/(√κ + 1)`` for ``μ``-strongly convex, ``L``-smooth ``f`` (with ``h = 1/L``)."""
    root = math.sqrt(lipschitz / mu)
    return (root - 1) / (root + 1)


def rkc_setting(stages: int, order: int, damping: float, safety: float, family: str) -> Setting:
    """RKC with ``stages`` stages at ``h·L = safety·ℓ_s``."""
    method = chebyshev_method(stages, order, damping)
    label = f"rkc{order} s={stages} ε={damping:.3g}"
    params = {"stages": stages, "order": order, "damping": damping, "family": family}
    return Setting(
        "rkc",
        label,
        lambda lr: flowopt.rkc(stages, lr, order=order, damping=damping),
        (safety * method.stability_interval,),
        stages,
        params,
    )


def rkc_settings(rkc: dict[str, Any], kappa: float) -> list[Setting]:
    """The RKC settings of a problem of condition number ``kappa`` (config block ``methods.rkc``), duplicates dropped."""
    safety, default = rkc["safety"], DEFAULT_DAMPING[1]
    settings = [rkc_setting(s, 1, default, safety, "fixed s") for s in rkc.get("fixed_stages", [])]
    for h_mu in rkc.get("stages_for_h_mu", []):
        try:
            stages = stages_for(h_mu * kappa, 1, None, safety)
        except ValueError:  # more than MAX_STAGES
            continue
        settings.append(rkc_setting(stages, 1, default, safety, f"stages_for(h·μ={h_mu:g})"))
    for order in rkc.get("orders", [1]):
        for a in rkc.get("stage_factors", []):
            stages = max(order, math.ceil(a * math.sqrt(kappa)))
            for eta in rkc.get("damping_factors", []):
                damping = eta * stages**2 / kappa
                if stages <= MAX_STAGES and 0 < damping < stages**2:
                    settings.append(rkc_setting(stages, order, damping, safety, f"sweep a={a:g} η={eta:g}"))
    unique = {s.label: s for s in reversed(settings)}
    return [s for s in settings if unique[s.label] is s]


def settings(methods: dict[str, Any], mu: float, lipschitz: float, rate_scales: tuple[float, ...] = (1.0,)) -> list[Setting]:
    """Every setting of the ``methods`` block for curvature in ``[μ, L]``.

    The heavy ball and Nesterov run at their optimal ``h·L`` times each of
    ``rate_scales`` (1 on quadratics, where the constants are exact; a grid on
    a non-quadratic loss, whose ``L`` is estimated).
    """
    kappa = lipschitz / mu
    out: list[Setting] = []
    if "gd" in methods:
        best = 2 / (1 + 1 / kappa)
        rates = tuple(sorted({*methods["gd"]["rates"], best}))
        out.append(Setting("gd", "gd", flowopt.euler, rates, 1, {"best_rate_h_L": best}))
    if "heavy_ball" in methods:
        rate, beta = heavy_ball_parameters(mu, lipschitz)
        rates = tuple(rate * scale for scale in rate_scales)
        out.append(Setting("heavy_ball", "heavy ball", lambda lr: optax.sgd(lr, momentum=beta), rates, 1, {"beta": beta}))
    if "nesterov" in methods:
        beta = nesterov_momentum(mu, lipschitz)
        build = lambda lr: optax.sgd(lr, momentum=beta, nesterov=True)  # noqa: E731
        out.append(Setting("nesterov", "nesterov", build, tuple(rate_scales), 1, {"beta": beta}))
    if "rk4" in methods:
        out.append(Setting("rk4", "rk4", flowopt.rk4, tuple(methods["rk4"]["rates"]), 4, {}))
    if "bdf2" in methods:
        build = lambda lr: flowopt.bdf(2, lr, BDF_INNER_STEPS)  # noqa: E731
        out.append(Setting("bdf2", f"bdf2 K={BDF_INNER_STEPS}", build, tuple(methods["bdf2"]["rates"]), 1 + BDF_INNER_STEPS, {}))
    if "rkc" in methods:
        out += rkc_settings(methods["rkc"], kappa)
    return out


def conjugate_gradient(eigenvalues: np.ndarray, x0: np.ndarray, target: float, budget: int) -> tuple[bool, int, list[float]]:
    """CG on ``f = ½ Σ λ_i x_i²`` from ``x0``: (reached, gradient evaluations, relative gap after each iteration).

    Stops when ``f/f_0 ≤ target``, the residual vanishes, or the next
    iteration would exceed ``budget`` evaluations (``k`` iterations cost
    ``k + 1``: the gradient at ``x0``, then one product ``Ap`` each).
    """

    def loss(x):
        return 0.5 * float(np.dot(eigenvalues * x, x))

    x, f0 = x0.copy(), loss(x0)
    residual = -eigenvalues * x
    direction, rho = residual.copy(), float(residual @ residual)
    gaps: list[float] = []
    while len(gaps) + 2 <= budget and rho > 0 and (not gaps or gaps[-1] > target):
        product = eigenvalues * direction
        alpha = rho / float(direction @ product)
        x += alpha * direction
        residual -= alpha * product
        rho, previous = float(residual @ residual), rho
        direction = residual + (rho / previous) * direction
        gaps.append(loss(x) / f0)
    reached = bool(gaps) and gaps[-1] <= target
    return reached, len(gaps) + 1, gaps
