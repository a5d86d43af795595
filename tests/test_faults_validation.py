"""Bad input to tableaus, adaptive steps and the non-finite guard: a ValueError naming the problem.

Every case here once gave a NaN, a silent acceptance, an unclear numpy/JAX
error, or minutes of computation (an order of 20 enumerated 12.8 million
rooted trees).
"""

import numpy as np
import pytest

import flowopt.tableau as tableau_module
from flowopt import tableaus
from flowopt.tableau import ButcherTableau, check_order, lower_triangular, min_stages, order_conditions, rooted_trees

HEUN = dict(a=[[0.0, 0.0], [1.0, 0.0]], b=[0.5, 0.5], c=[0.0, 1.0], order=2)


def _heun(**changes):
    return ButcherTableau(**(HEUN | changes))


# --- tableau entries -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(a="abc"), r"a must be an \(s, s\) matrix of real numbers, got a string 'abc'"),
        (dict(a=None), r"a must be an \(s, s\) matrix of real numbers, got None"),
        (dict(a=[[0.0], [1.0, 0.0]]), r"a is ragged"),
        (dict(a=[0.0, 1.0]), r"a must be .*\(2-dimensional\), got shape \(2,\)"),
        (dict(a=[[[0.0, 0.0], [1.0, 0.0]]]), r"a must be .*got shape \(1, 2, 2\)"),
        (dict(a=[[0, 0], [1 + 0j, 0]]), r"entry a\[1\]\[0\] is a complex number"),
        (dict(a=[[0, 0], [float("inf"), 0]]), r"entry a\[1\]\[0\] = inf is non-finite"),
        (dict(b=["x", "y"]), r"entry b\[0\] is a string 'x'"),
        (dict(b=None), r"b must be a vector of s real numbers, got None"),
        (dict(b=[[0.5], [0.5]]), r"b must be a vector .*got shape \(2, 1\)"),
        (dict(b=[True, False], order=1), r"entry b\[0\] is a bool True"),
        (dict(b=np.array([True, False]), order=1), r"b must be a vector of s real numbers, got an array of bools"),
        (dict(b=[0.5 + 1j, 0.5 - 1j]), r"entry b\[0\] is a complex number"),
        (dict(b=np.array([0.5, 0.5], complex)), r"b must be .*got an array of complex numbers"),
        (dict(b=[float("nan"), 0.5]), r"entry b\[0\] = nan is non-finite"),
        (dict(c=[0.0, None]), r"entry c\[1\] is None"),
        (dict(c=[0.0, {}]), r"entry c\[1\] is a dict"),
        (dict(b_error=["a", "b"], embedded_order=1), r"entry b_error\[0\] is a string"),
        (dict(b_error=[None, 0.5], embedded_order=1), r"entry b_error\[0\] is None"),
        (dict(b_error=[[-0.5], [0.5, 0.1]], embedded_order=1), r"b_error is ragged"),
        (dict(b_error=[True, False], embedded_order=1), r"entry b_error\[0\] is a bool"),
        (dict(b_error=[-0.5, 0.5, 0.0], embedded_order=1), r"b_error must have shape \(2,\), got \(3,\)"),
        (dict(name=None), r"tableau name must be a non-empty string, got None"),
        (dict(name=3), r"tableau name must be a non-empty string, got 3"),
        (dict(name=""), r"tableau name must be a non-empty string"),
    ],
)
def test_bad_tableau_entries_name_the_entry(changes, message):
    with pytest.raises(ValueError, match=message):
        _heun(**changes)


def test_a_tableau_needs_a_stage():
    with pytest.raises(ValueError, match=r"at least one stage"):
        ButcherTableau(a=np.zeros((0, 0)), b=[], c=[], order=1)
    with pytest.raises(ValueError, match=r"a must be an \(s, s\) matrix .*got shape \(0,\)"):
        ButcherTableau(a=[], b=[], c=[], order=1)


@pytest.mark.parametrize(
    "rows, message",
    [
        (None, r"lower_triangular: rows must be a list of rows"),
        ("ab", r"lower_triangular: rows must be a list of rows"),
        (["ab"], r"row 1 of a must be a list of 1 real numbers, got 'ab'"),
        ([1.0], r"row 1 of a must be a list of 1 real numbers, got 1.0"),
        ([[1.0, 2.0]], r"row 1 of a must have 1 entries below the diagonal, got 2"),
        ([["x"]], r"a\[1\] must be a list of 1 real numbers: entry a\[1\]\[0\] is a string"),
        ([[True]], r"entry a\[1\]\[0\] is a bool"),
        ([[1j]], r"entry a\[1\]\[0\] is a complex number"),
        ([[1.0], [float("nan"), 0.0]], r"entry a\[2\]\[0\] = nan is non-finite"),
    ],
)
def test_lower_triangular_rejects_bad_rows(rows, message):
    with pytest.raises(ValueError, match=message):
        lower_triangular(rows)


def test_numbers_of_every_real_kind_are_accepted():
    tableau = ButcherTableau(
        a=np.array([[0, 0], [1, 0]], np.int32), b=[np.float32(0.5), np.float64(0.5)], c=(0, np.array(1.0)), order=2
    )
    assert tableau.a.dtype == np.float64 and tableau.order == 2
    assert np.array_equal(lower_triangular([]), np.zeros((1, 1)))


# --- orders --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(order=0), r"order must be a positive integer, got 0"),
        (dict(order=True), r"order must be a positive integer, got True"),
        (dict(order="2"), r"order must be a positive integer, got '2'"),
        (dict(order=2.0), r"order must be a positive integer, got 2.0"),
        (dict(order=None), r"order must be a positive integer, got None"),
        (dict(order=3), r"order 3 is impossible with 2 stages: .*order at most s.*b·c\^2 = 1/3"),
        (dict(b_error=[-0.5, 0.5], embedded_order=5), r"embedded_order must be an integer in 1..2 \(at most order\)"),
        (dict(b_error=[-0.5, 0.5], embedded_order=True), r"embedded_order must be a positive integer, got True"),
        (dict(b_error=[-0.5, 0.5], embedded_order="1"), r"embedded_order must be a positive integer, got '1'"),
        (dict(b_error=[-0.5, 0.5], embedded_order=None), r"embedded_order must be a positive integer, got None"),
    ],
)
def test_bad_orders_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        _heun(**changes)


@pytest.mark.parametrize("order, stages", [(20, 2), (20, 25), (15, 30), (1000, 2)])
def test_orders_beyond_max_order_are_refused_before_any_tree_is_enumerated(monkeypatch, order, stages):
    def forbidden(order):
        raise AssertionError(f"rooted_trees({order}) was called")

    monkeypatch.setattr(tableau_module, "rooted_trees", forbidden)
    with pytest.raises(ValueError, match=rf"order {order} exceeds MAX_ORDER = 14"):
        ButcherTableau(a=np.zeros((stages, stages)), b=[1.0] + [0.0] * (stages - 1), c=[0.0] * stages, order=order)
    with pytest.raises(ValueError, match=rf"order {order} exceeds MAX_ORDER"):
        tableau_module.order_conditions(order)


@pytest.mark.parametrize("order", [20, 22, 100])
def test_tree_enumeration_refuses_orders_beyond_max_order(order):
    for function in (rooted_trees, order_conditions):
        with pytest.raises(ValueError, match=rf"order {order} exceeds MAX_ORDER = 14"):
            function(order)
    with pytest.raises(ValueError, match=rf"order {order} exceeds MAX_ORDER"):
        check_order(np.zeros((2, 2)), [1.0, 0.0], order)


@pytest.mark.parametrize("order", [0, -1, "3", 2.0, True, None])
def test_tree_enumeration_needs_a_positive_integer(order):
    for function in (rooted_trees, order_conditions, min_stages):
        with pytest.raises(ValueError, match=r"order must be a positive integer"):
            function(order)


def test_butcher_barriers():
    assert [min_stages(p) for p in range(1, 11)] == [1, 2, 3, 4, 6, 7, 9, 11, 12, 13]
    # Five stages cannot give order 5 (DOPRI5 needs six, plus one for FSAL).
    with pytest.raises(ValueError, match=r"order 5 is impossible with 5 stages: .*Butcher's barriers"):
        ButcherTableau(a=np.zeros((5, 5)), b=[1.0, 0, 0, 0, 0], c=[0.0] * 5, order=5)
    with pytest.raises(ValueError, match=r"order 9 is impossible with 11 stages: .*at least 12 stages"):
        ButcherTableau(a=np.zeros((11, 11)), b=[1.0] + [0.0] * 10, c=[0.0] * 11, order=9)


def test_an_impossible_order_enumerates_only_the_trees_it_needs(monkeypatch):
    sizes = []
    real = tableau_module.rooted_trees

    def recording(order):
        sizes.append(order)
        return real(order)

    monkeypatch.setattr(tableau_module, "rooted_trees", recording)
    with pytest.raises(ValueError, match=r"order 14 is impossible with 2 stages"):
        _heun(order=14)
    assert max(sizes) <= 3


def test_check_order_validates_its_arguments():
    with pytest.raises(ValueError, match=r"check_order: a must be an \(s, s\) matrix and b a vector"):
        check_order(np.zeros((2, 2)), np.ones(3), 1)
    with pytest.raises(ValueError, match=r"check_order: b must be .*entry b\[0\] is a string"):
        check_order(np.zeros((2, 2)), ["x", 1.0], 1)
    check_order([[0, 0], [1, 0]], [0.5, 0.5], 2)  # lists are fine


# --- error weights --------------------------------------------------------------------------------------


@pytest.mark.parametrize("b_error", [[0.0, 0.0], [1e-18, -1e-18]])
def test_all_zero_error_weights_are_refused(b_error):
    with pytest.raises(ValueError, match=r"b_error are all zero .*grow the step without bound"):
        _heun(b_error=b_error, embedded_order=1)


def test_error_weights_that_cancel_between_coinciding_stages_are_refused():
    # Stages 2 and 3 coincide: b_error = (0, 1/4, -1/4) estimates exactly 0 on every flow.
    with pytest.raises(ValueError, match=r"error estimate of 0 on every linear flow"):
        ButcherTableau(
            a=[[0, 0, 0], [1, 0, 0], [1, 0, 0]], b=[0.5, 0.25, 0.25], c=[0, 1, 1], order=2,
            b_error=[0, 0.25, -0.25], embedded_order=1,
        )  # fmt: skip


@pytest.mark.parametrize("pair", tableaus.EMBEDDED, ids=lambda t: t.name)
def test_named_pairs_still_construct(pair):
    rebuilt = ButcherTableau(
        a=pair.a, b=pair.b, c=pair.c, order=pair.order, b_error=pair.b_error, embedded_order=pair.embedded_order
    )
    assert rebuilt.is_embedded
