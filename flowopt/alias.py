"""User-facing optimizers: explicit Runge–Kutta integrators of the gradient flow.

Each returns an ``optax.GradientTransformationExtraArgs`` whose update is
``θ_{n+1} - θ_n = -h Σ_i b_i k_i`` with ``h = learning_rate`` (a float or an
optax schedule of the step count) and ``k_i`` the stage gradients of the
tableau. Methods with more than one stage call the oracle ``value_fn`` (or
``grad_fn``) passed to ``update``; see :mod:`flowopt.oracle`.
"""

from __future__ import annotations

import optax

from flowopt import tableaus
from flowopt.explicit import explicit_runge_kutta
from flowopt.integrator import as_optimizer
from flowopt.tableau import ButcherTableau, check_tableau


def runge_kutta(
    tableau: ButcherTableau, learning_rate: optax.ScalarOrSchedule
) -> optax.GradientTransformationExtraArgs:
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
