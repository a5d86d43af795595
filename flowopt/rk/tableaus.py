"""Named explicit Runge–Kutta tableaus (Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.1–II.5).

Fixed-step methods: ``EULER``, ``HEUN``, ``RALSTON``, ``MIDPOINT``, ``RK3``
(Kutta's third order), ``SSPRK3`` (Shu–Osher), ``RK4`` (classical), ``RK38``
(Kutta's 3/8 rule). Embedded pairs, carrying error weights for step-size
control: ``HEUN_EULER`` 2(1), ``BOSH3`` (Bogacki–Shampine 1989) 3(2),
``DOPRI5`` (Dormand–Prince 1980) 5(4). Every constant is validated against
the order conditions of its stated order when this module is imported.
"""

from __future__ import annotations

import numpy as np

from flowopt.rk.tableau import ButcherTableau, lower_triangular

EULER = ButcherTableau(a=[[0.0]], b=[1.0], c=[0.0], order=1, name="euler")

HEUN = ButcherTableau(a=lower_triangular([[1.0]]), b=[1 / 2, 1 / 2], c=[0.0, 1.0], order=2, name="heun")

RALSTON = ButcherTableau(a=lower_triangular([[2 / 3]]), b=[1 / 4, 3 / 4], c=[0.0, 2 / 3], order=2, name="ralston")

MIDPOINT = ButcherTableau(a=lower_triangular([[1 / 2]]), b=[0.0, 1.0], c=[0.0, 1 / 2], order=2, name="midpoint")

RK3 = ButcherTableau(
    a=lower_triangular([[1 / 2], [-1.0, 2.0]]),
    b=[1 / 6, 2 / 3, 1 / 6],
    c=[0.0, 1 / 2, 1.0],
    order=3,
    name="rk3",
)

SSPRK3 = ButcherTableau(
    a=lower_triangular([[1.0], [1 / 4, 1 / 4]]),
    b=[1 / 6, 1 / 6, 2 / 3],
    c=[0.0, 1.0, 1 / 2],
    order=3,
    name="ssprk3",
)

RK4 = ButcherTableau(
    a=lower_triangular([[1 / 2], [0.0, 1 / 2], [0.0, 0.0, 1.0]]),
    b=[1 / 6, 1 / 3, 1 / 3, 1 / 6],
    c=[0.0, 1 / 2, 1 / 2, 1.0],
    order=4,
    name="rk4",
)

RK38 = ButcherTableau(
    a=lower_triangular([[1 / 3], [-1 / 3, 1.0], [1.0, -1.0, 1.0]]),
    b=[1 / 8, 3 / 8, 3 / 8, 1 / 8],
    c=[0.0, 1 / 3, 2 / 3, 1.0],
    order=4,
    name="rk38",
)

HEUN_EULER = ButcherTableau(
    a=lower_triangular([[1.0]]),
    b=[1 / 2, 1 / 2],
    c=[0.0, 1.0],
    order=2,
    b_error=np.array([1 / 2, 1 / 2]) - np.array([1.0, 0.0]),
    embedded_order=1,
    name="heun_euler",
)

_BOSH3_B = np.array([2 / 9, 1 / 3, 4 / 9, 0.0])
BOSH3 = ButcherTableau(
    a=lower_triangular([[1 / 2], [0.0, 3 / 4], list(_BOSH3_B[:3])]),
    b=_BOSH3_B,
    c=[0.0, 1 / 2, 3 / 4, 1.0],
    order=3,
    b_error=_BOSH3_B - np.array([7 / 24, 1 / 4, 1 / 3, 1 / 8]),
    embedded_order=2,
    name="bosh3",
)

_DOPRI5_B = np.array([35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0])
_DOPRI5_B_HAT = np.array([5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40])

DOPRI5 = ButcherTableau(
    a=lower_triangular(
        [
            [1 / 5],
            [3 / 40, 9 / 40],
            [44 / 45, -56 / 15, 32 / 9],
            [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
            [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
            list(_DOPRI5_B[:6]),
        ]
    ),
    b=_DOPRI5_B,
    c=[0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0],
    order=5,
    b_error=_DOPRI5_B - _DOPRI5_B_HAT,
    embedded_order=4,
    name="dopri5",
)

FIXED_STEP = (EULER, HEUN, RALSTON, MIDPOINT, RK3, SSPRK3, RK4, RK38)
EMBEDDED = (HEUN_EULER, BOSH3, DOPRI5)
ALL = FIXED_STEP + EMBEDDED
