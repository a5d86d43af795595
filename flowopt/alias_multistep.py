"""User-facing multistep optimizers: approximate BDF / backward Euler and Adams–Bashforth.

Each returns an ``optax.GradientTransformationExtraArgs`` with step
``h = learning_rate`` (a float or an optax schedule of the step count). The
implicit methods call the oracle ``value_fn`` (or ``grad_fn``) passed to
``update`` for their inner solves; see :mod:`flowopt.implicit` and
:mod:`flowopt.multistep` for the warm start, the default inner step and the
start-up procedure.
"""

from __future__ import annotations

import optax

from flowopt.implicit import implicit_bdf
from flowopt.integrator import as_optimizer
from flowopt.multistep import explicit_adams_bashforth


def bdf(
    order: int,
    learning_rate: optax.ScalarOrSchedule,
    inner_steps: int,
    inner_learning_rate: float | None = None,
    *,
    inner_tolerance: float | None = None,
    startup: str = "high_order",
) -> optax.GradientTransformationExtraArgs:
    """Approximate backward differentiation formula of order τ = ``order`` (1..6).

    ``θ_{n+1} = argmin_x f(x) + ||x - z_n||² / (2βh)`` with
    ``z_n = -Σ_{j=1}^{τ} a_j θ_{n+1-j}``, i.e. ``θ_{n+1} + Σ_j a_j θ_{n+1-j} =
    -βh ∇f(θ_{n+1})``, solved by at most ``inner_steps`` gradient steps on the
    proximal subproblem, warm-started at ``θ_n``, one oracle call each. With no
    ``inner_learning_rate`` the inner step ``1/(L̂ + 1/(βh))`` uses a
    curvature estimate ``L̂`` backtracked from the oracle, safe without
    knowing the Lipschitz constant. ``inner_tolerance`` stops a solve once its
    gradient norm has fallen by that factor; the solve is then a
    ``lax.while_loop``, which on the CPU runs a convolutional net's gradients
    7–30× slower than the unrolled loop of a fixed ``inner_steps`` (see
    :mod:`flowopt.implicit`, "Loop form"). The first τ-1 steps use backward
    Euler extrapolated to order τ (``startup="high_order"``) or lower-order BDF
    (``"lower_order"``, global order at most 2). The state counts oracle calls.

    Huang et al., *Approximate backwards differentiation of gradient flow*
    (2022); Hairer & Wanner, *Solving ODEs II*, §III.1 and §IV.9.
    """
    integrator = implicit_bdf(order, inner_steps, inner_learning_rate, inner_tolerance, startup)
    return as_optimizer(integrator, learning_rate)


def backward_euler(
    learning_rate: optax.ScalarOrSchedule,
    inner_steps: int,
    inner_learning_rate: float | None = None,
    *,
    inner_tolerance: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Approximate backward Euler ``θ_{n+1} = θ_n - h ∇f(θ_{n+1})``: a proximal-point step.

    ``θ_{n+1} = argmin_x f(x) + ||x - θ_n||² / (2h)``, solved by at most
    ``inner_steps`` gradient steps from ``θ_n`` (BDF-1, see :func:`bdf`). With
    the default inner step every accepted inner step decreases the proximal
    objective, so on convex problems it descends for any ``learning_rate``.
    """
    return bdf(1, learning_rate, inner_steps, inner_learning_rate, inner_tolerance=inner_tolerance)


def adams_bashforth(
    order: int, learning_rate: optax.ScalarOrSchedule, *, startup: str = "high_order"
) -> optax.GradientTransformationExtraArgs:
    """Explicit Adams–Bashforth of order τ = ``order`` (1..4): ``θ_{n+1} = θ_n - h Σ_j b_j ∇f(θ_{n-j})``.

    One new gradient per step. With ``startup="high_order"`` the first τ-1
    steps are Runge–Kutta steps of order τ (Heun, RK3, RK4), which need the
    oracle, so ``update`` then requires ``value_fn``/``grad_fn``;
    ``startup="lower_order"`` needs no oracle but caps the global order at 2.
    Stored gradients come from earlier minibatches. Order 1 is gradient descent.

    Hairer, Nørsett & Wanner, *Solving ODEs I*, §III.1.
    """
    return as_optimizer(explicit_adams_bashforth(order, startup), learning_rate)
