"""Every public optimizer constructor: one place to read them all.

Each returns an ``optax.GradientTransformationExtraArgs`` built by
:func:`flowopt.as_optimizer` from an :class:`~flowopt.Integrator` (a pure
stage function, in the module of its family) and the step ``h =
learning_rate``, a number or an optax schedule of the step count. Methods
that evaluate the gradient away from the current parameters call the oracle
``value_fn`` (or ``grad_fn``) passed to ``update``; see :mod:`flowopt.core.oracle`.

* Explicit Runge–Kutta (:mod:`flowopt.rk.stages`): :func:`runge_kutta`
  for any tableau, and :func:`euler` … :func:`rk38` for the named ones;
  Runge–Kutta–Chebyshev (:mod:`flowopt.rk.chebyshev`): :func:`rkc`, and
  :func:`rkc_auto` with stages chosen from the sharpness.
* Step-size control (:mod:`flowopt.rk.adaptive`):
  :func:`adaptive_runge_kutta`, :func:`minibatch_adaptive_runge_kutta`.
* Linear multistep (:mod:`flowopt.multistep.bdf`, :mod:`flowopt.multistep.adams_bashforth`): :func:`bdf`,
  :func:`backward_euler`, :func:`adams_bashforth`.
* The adaptive-algorithm flows (:mod:`flowopt.flows.family`):
  :func:`adaptive_flow`, :func:`adam_flow`, :func:`rmsprop_flow`,
  :func:`adagrad_flow`, :func:`heavy_ball_flow`, :func:`nesterov_flow`.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import optax

from flowopt.core.checks import check_bool, check_positive, check_unit_interval, is_concrete
from flowopt.core.integrator import as_optimizer, check_learning_rate
from flowopt.flows.family import (
    CoefficientLike,
    adam_coefficient,
    adam_flow_converges,
    flow_integrator,
    reference_rate,
    sqrt_step,
)
from flowopt.multistep.adams_bashforth import explicit_adams_bashforth
from flowopt.multistep.bdf import implicit_bdf
from flowopt.rk import tableaus
from flowopt.rk.adaptive import adaptive_integrator, check_embedded
from flowopt.rk.chebyshev import chebyshev_integrator, chebyshev_method
from flowopt.rk.chebyshev_auto import chebyshev_auto_integrator
from flowopt.rk.stages import explicit_runge_kutta
from flowopt.rk.step_size import PIController
from flowopt.rk.tableau import ButcherTableau, check_tableau

__all__ = [
    "runge_kutta",
    "euler",
    "heun",
    "ralston",
    "midpoint",
    "rk3",
    "ssprk3",
    "rk4",
    "rk38",
    "rkc",
    "rkc_auto",
    "adaptive_runge_kutta",
    "minibatch_adaptive_runge_kutta",
    "bdf",
    "backward_euler",
    "adams_bashforth",
    "adaptive_flow",
    "adam_flow",
    "rmsprop_flow",
    "adagrad_flow",
    "heavy_ball_flow",
    "nesterov_flow",
]
"""The public constructors, in the order of this module (``flowopt`` exports each)."""

# --- Explicit Runge–Kutta -----------------------------------------------------------------------------------


def runge_kutta(tableau: ButcherTableau, learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    """Fixed-step explicit Runge–Kutta descent along ``θ' = -∇f(θ)``.

    ``k_i = ∇f(θ - h Σ_{j<i} a_ij k_j)``, ``Δθ = -h Σ_i b_i k_i``: one
    incoming gradient and one oracle call per further stage (stages that no
    weight uses are skipped). Butcher (1963); Singhal, *Gradient Flow
    Optimizers* (NYU poster) for its use as an optimizer.
    """
    check_tableau(tableau)
    return as_optimizer(explicit_runge_kutta(tableau), learning_rate)


def euler(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    """Forward Euler ``θ_{n+1} = θ_n - h ∇f(θ_n)``: gradient descent, identical to ``optax.sgd``.

    Needs no oracle. Order 1 (Euler 1768; Hairer, Nørsett & Wanner, *Solving
    ODEs I*, §I.7).
    """
    return runge_kutta(tableaus.EULER, learning_rate)


def heun(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    """Heun's method: ``k2 = ∇f(θ - h k1)``, ``Δθ = -h (k1 + k2)/2``. Order 2, one oracle call.

    Singhal, *Gradient Flow Optimizers*; Süli & Mayers, *Numerical Analysis*, §12.
    """
    return runge_kutta(tableaus.HEUN, learning_rate)


def ralston(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    """Ralston's method: ``k2 = ∇f(θ - 2h k1/3)``, ``Δθ = -h (k1 + 3 k2)/4``. Order 2.

    Minimises the leading error constant among two-stage methods (Ralston 1962).
    """
    return runge_kutta(tableaus.RALSTON, learning_rate)


def midpoint(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    """Explicit midpoint: ``k2 = ∇f(θ - h k1/2)``, ``Δθ = -h k2``. Order 2.

    Runge (1895); Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.1.
    """
    return runge_kutta(tableaus.MIDPOINT, learning_rate)


def rk3(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    """Kutta's third-order method: ``k2 = ∇f(θ - h k1/2)``, ``k3 = ∇f(θ + h k1 - 2h k2)``,
    ``Δθ = -h (k1 + 4 k2 + k3)/6``. Order 3, two oracle calls.
    """
    return runge_kutta(tableaus.RK3, learning_rate)


def ssprk3(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    """Strong-stability-preserving RK3 (Shu & Osher 1988): ``k2 = ∇f(θ - h k1)``,
    ``k3 = ∇f(θ - h (k1 + k2)/4)``, ``Δθ = -h (k1 + k2 + 4 k3)/6``. Order 3.
    """
    return runge_kutta(tableaus.SSPRK3, learning_rate)


def rk4(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    """Classical fourth-order Runge–Kutta:
    ``k2 = ∇f(θ - h k1/2)``, ``k3 = ∇f(θ - h k2/2)``, ``k4 = ∇f(θ - h k3)``,
    ``Δθ = -h (k1 + 2k2 + 2k3 + k4)/6``. Order 4, three oracle calls.

    Singhal, *Gradient Flow Optimizers* (with its typos corrected: the
    stages descend and ``k3`` uses ``k2``).
    """
    return runge_kutta(tableaus.RK4, learning_rate)


def rk38(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    """Kutta's 3/8 rule: ``Δθ = -h (k1 + 3k2 + 3k3 + k4)/8``. Order 4, three oracle calls."""
    return runge_kutta(tableaus.RK38, learning_rate)


def rkc(
    stages: int, learning_rate: optax.ScalarOrSchedule, *, order: int = 1, damping: float | None = None
) -> optax.GradientTransformationExtraArgs:
    """Runge–Kutta–Chebyshev descent: ``s`` gradients a step, stable for ``h·L`` up to ``ℓ_s ≈ 1.94 s²`` (order 1).

    ``order=1`` is the damped Chebyshev method of Eftekhari, Vandereycken,
    Vilmart & Zygalakis (BIT 2021), ``R_s(z) = T_s(ω₀ + ω₁z)/T_s(ω₀)`` with
    ``ω₀ = 1 + ε/s²`` and ``ω₁ = T_s(ω₀)/T_s'(ω₀)`` (default ``ε = 0.05``);
    ``order=2`` the RKC method of Sommeijer, Shampine & Verwer (1997)
    (default ``ε = 2/13``, ``ℓ_s ≈ 0.65 s²``). Where gradient descent needs
    ``h·L ≤ 2`` with one gradient a step, ``s`` gradients buy a step ``s²``
    times longer: per gradient the stable step grows like ``s``. Evaluated by
    the Chebyshev three-term recurrence (internally stable for hundreds of
    stages); one incoming gradient and ``s - 1`` oracle calls a step. See
    :mod:`flowopt.rk.chebyshev`; :func:`flowopt.rk.chebyshev.stages_for`
    picks ``s`` from ``h·λ_max``.

    Args:
      stages: ``s``, an integer in ``1..1000`` (``2..`` for order 2); it fixes
        the structure of the step (``static_args`` under ``optax.inject_hyperparams``).
      learning_rate: the step ``h``, a number or an optax schedule.
      order: 1 or 2.
      damping: ``ε``, a finite number in ``[0, s²)`` (order 2: ``(0, s²)``).

    Example:

        >>> import jax, jax.numpy as jnp, flowopt
        >>> curvatures = jnp.array([1.0, 100.0])  # κ = 100: gradient descent needs h < 0.02
        >>> loss = lambda w: 0.5 * jnp.sum(curvatures * w**2)
        >>> tx = flowopt.rkc(10, learning_rate=1.84)  # h·L = 184 = 0.95 ℓ_10
        >>> params = jnp.ones(2)
        >>> state = tx.init(params)
        >>> for _ in range(5):
        ...     updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
        ...     params = params + updates
        >>> int(flowopt.oracle_evaluations(state)) + 5, bool(loss(params) < 1e-4)  # gradient descent: loss 18 after 50
        (50, True)
    """
    return as_optimizer(chebyshev_integrator(chebyshev_method(stages, order, damping)), learning_rate)


def rkc_auto(
    learning_rate: optax.ScalarOrSchedule,
    *,
    order: int = 1,
    damping: float | None = None,
    safety: float = 0.9,
    max_stages: int = 100,
    estimate_every: int = 100,
    lanczos_iterations: int = 16,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Runge–Kutta–Chebyshev descent that picks its stage count from an estimate of the sharpness ``λ_max(∇²f)``.

    Every ``estimate_every`` steps (the first included) ``lanczos_iterations``
    Lanczos steps on Hessian-vector products estimate ``λ̂ ≥ λ_max``
    (largest Ritz value plus its residual); every step then takes the fewest
    stages ``s`` of :func:`rkc` with ``h·λ̂ ≤ safety·ℓ_s``. Where
    ``max_stages`` are not enough the step is shortened to
    ``safety·ℓ_max/λ̂`` and counted. An estimate's Hessian-vector products
    count as **two gradient evaluations each** in ``oracle_evals``;
    :func:`flowopt.step_diagnostics` shows ``sharpness``, ``stages``,
    ``step_size``, ``hvp_evals`` and ``capped``. The oracle must be
    differentiable (``jax.jvp`` of its gradient). See
    :mod:`flowopt.rk.chebyshev_auto`.

    Args:
      learning_rate: the step ``h``, a number or an optax schedule.
      order: 1 or 2 (as :func:`rkc`).
      damping: ``ε`` (as :func:`rkc`; the default of the order if ``None``).
      safety: the share of ``ℓ_s`` a step may use, in ``(0, 1]``.
      max_stages: the most stages a step takes, ``order..400``.
      estimate_every: steps between sharpness estimates, a positive integer.
      lanczos_iterations: Hessian-vector products per estimate (capped at the
        parameter count), a positive integer.
      seed: of the Lanczos start vectors.

    Example:

        >>> import jax, jax.numpy as jnp, flowopt
        >>> curvatures = jnp.array([1.0, 100.0])
        >>> loss = lambda w: 0.5 * jnp.sum(curvatures * w**2)
        >>> tx = flowopt.rkc_auto(learning_rate=1.84, estimate_every=10)
        >>> params = jnp.ones(2)
        >>> state = tx.init(params)
        >>> for _ in range(10):
        ...     updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
        ...     params = params + updates
        >>> diagnostics = flowopt.step_diagnostics(state)
        >>> float(diagnostics["sharpness"]), int(diagnostics["stages"]), int(diagnostics["hvp_evals"])
        (100.0, 11, 2)
        >>> int(diagnostics["gradient_evals"]), bool(loss(params) < 1e-6)  # 10 steps of 11 stages; 2 HVPs = 4 gradients
        (114, True)
    """
    integrator = chebyshev_auto_integrator(
        order,
        damping,
        safety=safety,
        max_stages=max_stages,
        estimate_every=estimate_every,
        lanczos_iterations=lanczos_iterations,
        seed=seed,
    )
    return as_optimizer(integrator, learning_rate)


# --- Step-size control ---------------------------------------------------------------------------------------


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
    :class:`~flowopt.PIController`; see :mod:`flowopt.rk.adaptive` for the equations, the
    stability check, FSAL and minibatch oracles. Non-finite attempts are
    rejected and shrunk.

    Every option is checked up front (``ValueError`` naming it): the
    tolerances, coefficients, bounds and ``stability_limit`` (unless
    ``None``) must be finite real numbers in their ranges (bools and strings
    are not numbers), ``dtmin ≤ dtmax``,
    ``factormin ≤ safety`` and ``max_attempts`` an integer in
    ``1..MAX_ATTEMPTS`` (1000). Under ``optax.inject_hyperparams`` (or ``jit``) the
    traced options are not checked; ``tableau`` and ``max_attempts`` must be
    in its ``static_args``.

    Example:

        >>> import jax, jax.numpy as jnp, flowopt
        >>> loss = lambda w: jnp.sum((w - 1.0) ** 2)
        >>> params = jnp.zeros(3)
        >>> tx = flowopt.adaptive_runge_kutta(flowopt.tableaus.DOPRI5, learning_rate=1e-2, rtol=1e-4, atol=1e-6)
        >>> state = tx.init(params)
        >>> updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
        >>> diagnostics = flowopt.step_diagnostics(state)  # step size, accepted/rejected, oracle calls
        >>> int(diagnostics["accepted"]), int(diagnostics["gradient_evals"])  # DOPRI5: 7 stages an attempt
        (1, 7)
    """
    check_embedded(tableau)
    if callable(learning_rate):
        raise ValueError(
            f"adaptive_runge_kutta ({tableau.name}) chooses its own steps: learning_rate is the "
            "initial step and must be a number, not a schedule."
        )
    check_learning_rate(learning_rate)
    # The controller options in the order of its fields.
    controller = PIController(rtol, atol, pcoeff, icoeff, safety, factormin, factormax, dtmin, dtmax, smoothing, stability_limit)
    return as_optimizer(adaptive_integrator(tableau, controller, learning_rate, max_attempts))


def minibatch_adaptive_runge_kutta(
    tableau: ButcherTableau = tableaus.BOSH3,
    *,
    learning_rate: float,
    rtol: float,
    atol: float,
    dtmin: float,
    dtmax: float,
    smoothing: float = 0.9,
    stability_limit: float | None = 1.2,
    max_attempts: int = 1,
    pcoeff: float = 0.4,
    icoeff: float = 0.3,
    safety: float = 0.9,
    factormin: float = 0.2,
    factormax: float = 10.0,
) -> optax.GradientTransformationExtraArgs:
    """:func:`adaptive_runge_kutta` for a minibatch oracle: step bounds required, growth smoothed.

    The error is estimated on the batch the oracle is bound to (all stages
    and retries use it); ``dtmin``/``dtmax`` bound the step and ``smoothing``
    damps the batch-to-batch jitter of accepted proposals. The tolerance then
    controls the error of each step along that batch's flow only, not the
    error against the full-batch flow; see :mod:`flowopt.rk.adaptive`. The
    other options are those of :func:`adaptive_runge_kutta`, with its defaults.
    """
    for bound_name, bound in (("dtmin", dtmin), ("dtmax", dtmax)):
        if bound is None:
            raise ValueError(f"minibatch_adaptive_runge_kutta needs a finite step bound {bound_name}.")
    controller = {"pcoeff": pcoeff, "icoeff": icoeff, "safety": safety, "factormin": factormin, "factormax": factormax}
    options = {"smoothing": smoothing, "stability_limit": stability_limit, "max_attempts": max_attempts, **controller}
    return adaptive_runge_kutta(tableau, learning_rate=learning_rate, rtol=rtol, atol=atol, dtmin=dtmin, dtmax=dtmax, **options)


# --- Linear multistep ----------------------------------------------------------------------------------------


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
    :mod:`flowopt.multistep.bdf`, "Loop form"). The first τ-1 steps use backward
    Euler extrapolated to order τ (``startup="high_order"``) or lower-order BDF
    (``"lower_order"``, global order at most 2). The state counts oracle calls.

    Huang et al., *Approximate backwards differentiation of gradient flow*
    (2022); Hairer & Wanner, *Solving ODEs II*, §III.1 and §IV.9.
    """
    return as_optimizer(implicit_bdf(order, inner_steps, inner_learning_rate, inner_tolerance, startup), learning_rate)


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


# --- The adaptive-algorithm flows ---------------------------------------------------------------------------


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
    initial_time: float | jax.Array = 0.0,
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
    check_learning_rate(learning_rate, allow_zero=True)
    scheduled = callable(learning_rate)
    flow = flow_integrator(h, r, p, q, eps, eps_root, integrator, initial_time, initial_v, init_from_gradient, scheduled)
    return as_optimizer(flow, learning_rate)


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
    (see "The two ε" in :mod:`flowopt.flows.family`). With a schedule,
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
    check_unit_interval("b1", b1)
    check_unit_interval("b2", b2)
    if is_concrete(b1, b2) and not adam_flow_converges(b1, b2):
        warnings.warn(
            f"adam_flow: b1={b1}, b2={b2} violate 3 + b2 > 4 b1, the sufficient condition "
            "for the convergence of Adam's flow (Belotto da Silva & Gazeau, Theorem 1).",
            stacklevel=2,
        )
    timescale = reference_rate("adam_flow", learning_rate, reference_learning_rate)
    if init_from_gradient is None:
        init_from_gradient = integrator is not None
    g1, g2 = adam_coefficient(b1, timescale), adam_coefficient(b2, timescale)
    return adaptive_flow(
        g1,
        g1,
        g2,
        g2,
        learning_rate,
        eps,
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
    check_unit_interval("decay", decay)
    check_positive("eps", eps)
    inside = check_bool("eps_in_sqrt", eps_in_sqrt)
    timescale = reference_rate("rmsprop_flow", learning_rate, reference_learning_rate)
    rate = (1.0 - decay) / timescale
    if inside is None:  # traced under optax.inject_hyperparams
        outside_eps, root_eps = jnp.where(eps_in_sqrt, 0.0, eps), jnp.where(eps_in_sqrt, eps, 0.0)
    else:
        outside_eps, root_eps = (0.0, eps) if inside else (eps, 0.0)
    return _without_first_moment(rate, rate, learning_rate, outside_eps, root_eps, initial_scale, integrator)


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
    check_positive("eps", eps)
    timescale = reference_rate("adagrad_flow", learning_rate, reference_learning_rate)
    return _without_first_moment(1.0 / timescale, 0.0, learning_rate, 0.0, eps, initial_accumulator_value, integrator)


def _without_first_moment(
    p: CoefficientLike,
    q: CoefficientLike,
    learning_rate: optax.ScalarOrSchedule,
    eps: Any,
    eps_root: Any,
    initial_v: float,
    integrator: ButcherTableau | None,
) -> optax.GradientTransformationExtraArgs:
    """A flow without a first moment (RMSProp's, AdaGrad's): ``θ' = -∇f/(sqrt(v + ε_root) + ε)``, ``v' = p∇f² - qv``."""
    return adaptive_flow(None, None, p, q, learning_rate, eps, eps_root=eps_root, integrator=integrator, initial_v=initial_v)


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
    check_unit_interval("momentum", momentum)
    timescale = reference_rate("heavy_ball_flow", learning_rate, reference_learning_rate)
    damping = (1.0 - momentum) / sqrt_step(timescale)
    return adaptive_flow(1.0, damping, None, None, sqrt_step(learning_rate), integrator=integrator)


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
    check_positive("damping", damping)
    return adaptive_flow(
        1.0,
        lambda t: damping / t,
        None,
        None,
        sqrt_step(learning_rate),
        integrator=integrator,
        initial_time=initial_time,
    )
