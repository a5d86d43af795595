"""Coefficients of the linear multistep methods and what their start-up shares.

Adams–Bashforth ``θ_{n+1} = θ_n - h Σ_j b_j ∇f(θ_{n-j})`` and BDF
``θ_{n+1} + Σ_j a_j θ_{n+1-j} = -β h ∇f(θ_{n+1})``, as exact fractions
(Hairer, Nørsett & Wanner, *Solving ODEs I*, §III.1; Hairer & Wanner,
*Solving ODEs II*, §III.1), and the Richardson weights that extrapolate
backward Euler to a high-order start-up. :mod:`flowopt.analysis`
reads the same tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

MAX_ADAMS_BASHFORTH_ORDER = 4
MAX_BDF_ORDER = 6

# order -> (b_0, ..., b_{τ-1}) in  θ_{n+1} = θ_n - h Σ_j b_j ∇f(θ_{n-j}).
ADAMS_BASHFORTH_COEFFICIENTS: dict[int, tuple[Fraction, ...]] = {
    1: (Fraction(1),),
    2: (Fraction(3, 2), Fraction(-1, 2)),
    3: (Fraction(23, 12), Fraction(-16, 12), Fraction(5, 12)),
    4: (Fraction(55, 24), Fraction(-59, 24), Fraction(37, 24), Fraction(-9, 24)),
}

# order -> ((a_1, ..., a_τ), β) in  θ_{n+1} + Σ_j a_j θ_{n+1-j} = -β h ∇f(θ_{n+1}).
BDF_COEFFICIENTS: dict[int, tuple[tuple[Fraction, ...], Fraction]] = {
    # Written as numerators over the common denominator d of each order.
    order: (tuple(Fraction(a, d) for a in numerators), Fraction(beta, d))
    for order, (numerators, beta, d) in {
        1: ((-1,), 1, 1),
        2: ((-4, 1), 2, 3),
        3: ((-18, 9, -2), 6, 11),
        4: ((-48, 36, -16, 3), 12, 25),
        5: ((-300, 300, -200, 75, -12), 60, 137),
        6: ((-360, 450, -400, 225, -72, 10), 60, 147),
    }.items()
}

STARTUPS = ("high_order", "lower_order")


def check_startup(startup: str) -> str:
    """Raise ``ValueError`` unless ``startup`` is one of ``STARTUPS`` (``"high_order"``, ``"lower_order"``)."""
    if startup not in STARTUPS:
        raise ValueError(f"startup must be one of {STARTUPS}, got {startup!r}.")
    return startup


def padded_rows(rows: Sequence[Sequence[Fraction]]) -> np.ndarray:
    """Row ``j`` holds the order-``j+1`` coefficients padded with zeros, so a start-up step indexes its row."""
    table = np.zeros((len(rows), len(rows)))
    for j, row in enumerate(rows):
        table[j, : len(row)] = [float(x) for x in row]
    return table


def extrapolation_weights(order: int) -> tuple[Fraction, ...]:
    """Weights ``c_j`` with ``Σ_j c_j T_j`` of order ``order``, ``T_j`` = backward Euler over j substeps.

    Backward Euler's error expands in all powers of the substep ``h/j``, so the
    weights solve ``Σ_j c_j = 1`` and ``Σ_j c_j j^{-q} = 0`` for
    ``q = 1..order-1``: the Lagrange basis at 0 on the nodes ``1/j``.
    """
    nodes = [Fraction(1, j) for j in range(1, order + 1)]
    weights = []
    for j, node in enumerate(nodes):
        weight = Fraction(1)
        for i, other in enumerate(nodes):
            if i != j:
                weight *= -other / (node - other)
        weights.append(weight)
    return tuple(weights)
