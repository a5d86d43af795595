"""Linear stability of an explicit Runge–Kutta tableau on the test equation ``y' = λy``.

The tableau maps ``y_n`` to ``R(z) y_n``, ``z = hλ``, with the stability
polynomial ``R(z) = 1 + z bᵀ(I - zA)⁻¹𝟙 = Σ_k (bᵀA^{k-1}𝟙) z^k``; it is stable
at ``z`` when ``|R(z)| ≤ 1`` (Hairer & Wanner, *Solving ODEs II*, §IV.2).
:func:`real_stability_interval` is the ``β`` of the step-size controller's
stability check; :mod:`flowopt.analysis` covers every method.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.optimize

from flowopt.rk.tableau import ButcherTableau, check_tableau


def stability_polynomial(tableau: ButcherTableau) -> np.ndarray:
    """Coefficients ``[1, bᵀ𝟙, bᵀA𝟙, ..., bᵀA^{s-1}𝟙]`` of ``R(z)``, lowest degree first.

    ``(I - zA)⁻¹ = Σ_k (zA)^k`` terminates because ``A`` is nilpotent.
    """
    check_tableau(tableau)
    coefficients = [1.0]
    power = np.ones(tableau.num_stages)
    for _ in range(tableau.num_stages):
        coefficients.append(float(tableau.b @ power))
        power = tableau.a @ power
    return np.trim_zeros(np.array(coefficients), "b")


def real_stability_interval(tableau: ButcherTableau) -> float:
    """The largest ``x`` with ``|R(-x')| ≤ 1`` for every ``x' ∈ [0, x]``: 2 for Euler, 2.7853 for RK4."""
    polynomial = stability_polynomial(tableau)
    return first_unstable(
        lambda x: abs(np.polynomial.polynomial.polyval(-x, polynomial)) <= 1.0 + 1e-9, runge_kutta_crossings(tableau)
    )


def first_unstable(stable_at: Callable[[float], bool | np.bool_], crossings: np.ndarray) -> float:
    """Walk the intervals between the points where stability can change; return the first loss."""
    points = np.concatenate([[0.0], np.unique(crossings[crossings > 1e-12])])
    for left, right in zip(points[:-1], points[1:]):
        if not stable_at(0.5 * (left + right)):
            return float(left)
    last = points[-1]
    return math.inf if stable_at(2.0 * last + 1.0) else float(last)


def runge_kutta_crossings(tableau: ButcherTableau) -> np.ndarray:
    """Positive ``x`` with ``R(-x) = ±1``: the only places ``|R(-x)| ≤ 1`` can change."""
    polynomial = stability_polynomial(tableau)
    coefficients = polynomial * (-1.0) ** np.arange(len(polynomial))
    crossings = []
    for target in (1.0, -1.0):
        shifted = coefficients.copy()
        shifted[0] -= target
        if len(np.trim_zeros(shifted, "b")) < 2:
            continue
        roots = np.polynomial.polynomial.polyroots(np.trim_zeros(shifted, "b"))
        real = roots[np.abs(roots.imag) <= 1e-9 * np.maximum(1.0, np.abs(roots))].real
        crossings.extend(polish(lambda x: np.polynomial.polynomial.polyval(x, shifted), r) for r in real)
    return np.array(crossings)


def polish(function: Callable[[float], float | np.floating], root: float) -> float:
    """Newton refinement of a polynomial root, kept only if it improves the residual."""
    try:
        polished = scipy.optimize.newton(function, root, tol=1e-15, maxiter=20)
    except RuntimeError:
        return root
    return float(polished) if abs(function(polished)) <= abs(function(root)) else root
