"""ButcherTableau validation and the named tableaus."""

import numpy as np
import pytest

import flowopt
from flowopt import tableaus
from flowopt.rk.tableau import ButcherTableau, lower_triangular, order_conditions, rooted_trees


def test_number_of_rooted_trees_matches_oeis_a000081():
    assert [len(rooted_trees(n)) for n in range(1, 7)] == [1, 1, 2, 4, 9, 20]


def test_order_condition_counts():
    # 1, 2, 4, 8, 17 conditions up to orders 1..5 (Butcher).
    assert [len(order_conditions(p)) for p in range(1, 6)] == [1, 2, 4, 8, 17]


@pytest.mark.parametrize(
    "tableau, stages, order",
    [
        (tableaus.EULER, 1, 1),
        (tableaus.HEUN, 2, 2),
        (tableaus.RALSTON, 2, 2),
        (tableaus.MIDPOINT, 2, 2),
        (tableaus.RK3, 3, 3),
        (tableaus.SSPRK3, 3, 3),
        (tableaus.RK4, 4, 4),
        (tableaus.RK38, 4, 4),
        (tableaus.HEUN_EULER, 2, 2),
        (tableaus.BOSH3, 4, 3),
        (tableaus.DOPRI5, 7, 5),
    ],
)
def test_named_tableaus(tableau, stages, order):
    assert tableau.num_stages == stages
    assert tableau.order == order


@pytest.mark.parametrize("tableau", tableaus.ALL, ids=lambda t: t.name)
def test_named_tableaus_do_not_reach_one_order_more(tableau):
    # The claimed order is the true order: the next order's conditions fail.
    with pytest.raises(ValueError, match="order condition"):
        ButcherTableau(a=tableau.a, b=tableau.b, c=tableau.c, order=tableau.order + 1)


def test_embedded_pairs_and_fsal():
    assert [t.embedded_order for t in tableaus.EMBEDDED] == [1, 2, 4]
    assert tableaus.BOSH3.fsal and tableaus.DOPRI5.fsal
    assert not tableaus.RK4.fsal
    for t in tableaus.EMBEDDED:
        assert abs(t.b_error.sum()) < 1e-14


def test_tableau_is_read_only():
    with pytest.raises(ValueError):
        tableaus.RK4.b[0] = 1.0


def _heun_like(**changes):
    fields = dict(a=lower_triangular([[1.0]]), b=[0.5, 0.5], c=[0.0, 1.0], order=2)
    fields.update(changes)
    return ButcherTableau(**fields)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(a=np.zeros((2, 3))), "square"),
        (dict(a=[[0.0, 1.0], [1.0, 0.0]]), "strictly lower triangular"),
        (dict(c=[0.0, 0.5]), "row sums"),
        (dict(b=[0.6, 0.5]), "sum to 1"),
        (dict(b=[0.5, 0.5, 0.0]), "entries"),
        (dict(b=[0.25, 0.75]), r"order condition b·c = 1/2"),
        (dict(order=0), "positive integer"),
        (dict(b_error=[0.1, 0.0], embedded_order=1), "sum to 0"),
        (dict(b_error=[-0.5, 0.5]), "embedded_order must be"),
        (dict(embedded_order=1), "without b_error"),
        (dict(b_error=[0.5, -0.5], embedded_order=2), r"b̂"),
        (dict(c=[0.0, float("nan")]), "non-finite"),
    ],
)
def test_invalid_tableaus_raise(changes, message):
    with pytest.raises(ValueError, match=message):
        _heun_like(**changes)


def test_third_order_condition_is_named():
    # Weights of order 2 but claimed 3: the failing condition is spelled out.
    with pytest.raises(ValueError, match=r"b·Ac = 1/6"):
        ButcherTableau(a=tableaus.RALSTON.a, b=tableaus.RALSTON.b, c=tableaus.RALSTON.c, order=3)


def test_runge_kutta_rejects_non_tableau():
    with pytest.raises(ValueError, match="ButcherTableau"):
        flowopt.runge_kutta("rk4", 0.1)
