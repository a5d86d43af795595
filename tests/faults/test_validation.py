"""Bad input to tableaus, adaptive steps and the non-finite guard: a ValueError naming the problem.

Every case here once gave a NaN, a silent acceptance, an unclear numpy/JAX
error, or minutes of computation (an order of 20 enumerated 12.8 million
rooted trees).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flowopt
import flowopt.rk.tableau as tableau_module
from flowopt import tableaus
from flowopt.core.oracle import flag_nonfinite_loss
from flowopt.rk.adaptive import adaptive_step
from flowopt.rk.step_size import PIController, scaled_error_norm
from flowopt.rk.tableau import ButcherTableau, check_order, lower_triangular, min_stages, order_conditions, rooted_trees

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


def test_a_tableau_under_jit_names_the_traced_entry():
    def build(x):
        return _heun(a=[[0.0, 0.0], [x, 0.0]]).order

    with pytest.raises(ValueError, match=r"entry a\[1\]\[0\] is a traced value .*build it outside jit"):
        jax.jit(build)(1.0)


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
            a=[[0, 0, 0], [1, 0, 0], [1, 0, 0]],
            b=[0.5, 0.25, 0.25],
            c=[0, 1, 1],
            order=2,
            b_error=[0, 0.25, -0.25],
            embedded_order=1,
        )


@pytest.mark.parametrize("pair", tableaus.EMBEDDED, ids=lambda t: t.name)
def test_named_pairs_still_construct(pair):
    rebuilt = ButcherTableau(
        a=pair.a, b=pair.b, c=pair.c, order=pair.order, b_error=pair.b_error, embedded_order=pair.embedded_order
    )
    assert rebuilt.is_embedded


# --- adaptive step-size control ----------------------------------------------------------------------

OPTIONS = dict(learning_rate=0.1, rtol=1e-3, atol=1e-6)
SCALES = jnp.array([1.0, 3.0])


def quadratic(x):
    return jnp.sum(SCALES * x**2)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("rtol", "1e-3", r"rtol must be a finite positive number, got '1e-3'"),
        ("rtol", True, r"rtol must be a finite positive number, got True"),
        ("rtol", 1e-3 + 0j, r"rtol must be .*got \(0.001\+0j\) of type complex"),
        ("rtol", np.array([1e-3, 1e-3]), r"rtol must be .*\(a scalar\), got an array of shape \(2,\)"),
        ("rtol", None, r"rtol must be a finite positive number, got None"),
        ("rtol", float("inf"), r"rtol must be .*got inf, which is not finite"),
        ("rtol", 0.0, r"rtol must be a finite positive number, got 0.0"),
        ("atol", 0.0, r"atol must be a finite positive number, got 0.0"),
        ("atol", float("nan"), r"atol must be .*got nan, which is not finite"),
        ("atol", "x", r"atol must be .*got 'x'"),
        ("pcoeff", "a", r"pcoeff must be a finite nonnegative number, got 'a'"),
        ("pcoeff", -1.0, r"pcoeff must be a finite nonnegative number, got -1.0"),
        ("pcoeff", float("nan"), r"pcoeff must be .*got nan"),
        ("pcoeff", True, r"pcoeff must be .*got True"),
        ("icoeff", 0.0, r"icoeff must be a finite positive number, got 0.0"),
        ("icoeff", "x", r"icoeff must be .*got 'x'"),
        ("safety", "x", r"safety must be a real number in \(0, 1\], got 'x'"),
        ("safety", float("nan"), r"safety must be a real number in \(0, 1\], got nan"),
        ("safety", 0.0, r"safety must be a real number in \(0, 1\], got 0.0"),
        ("safety", 1.5, r"safety must be a real number in \(0, 1\], got 1.5"),
        ("safety", None, r"safety must be a real number in \(0, 1\], got None"),
        ("factormin", "x", r"factormin must be a real number in \(0, 1\), got 'x'"),
        ("factormin", 2.0, r"factormin must be a real number in \(0, 1\), got 2.0"),
        ("factormin", float("nan"), r"factormin must be .*got nan"),
        ("factormin", 0.95, r"factormin \(0.95\) must not exceed safety \(0.9\)"),
        ("factormax", "x", r"factormax must be a finite number greater than 1, got 'x'"),
        ("factormax", 0.5, r"factormax must be a finite number greater than 1, got 0.5"),
        ("factormax", float("inf"), r"factormax must be .*got inf"),
        ("dtmin", "x", r"dtmin must be a finite positive number, got 'x'"),
        ("dtmin", True, r"dtmin must be .*got True"),
        ("dtmin", -1.0, r"dtmin must be .*got -1.0"),
        ("dtmax", float("nan"), r"dtmax must be .*got nan"),
        ("smoothing", "x", r"smoothing must be a real number in \[0, 1\), got 'x'"),
        ("smoothing", 1.0, r"smoothing must be a real number in \[0, 1\), got 1.0"),
        ("smoothing", -0.5, r"smoothing must be a real number in \[0, 1\), got -0.5"),
        ("max_attempts", 0, r"max_attempts must be a positive integer \(at most 1000\), got 0"),
        ("max_attempts", 2.5, r"max_attempts must be a positive integer \(at most 1000\), got 2.5"),
        ("max_attempts", True, r"max_attempts must be a positive integer \(at most 1000\), got True"),
        ("max_attempts", "3", r"max_attempts must be a positive integer \(at most 1000\), got '3'"),
        ("max_attempts", 2**40, r"max_attempts must be a positive integer \(at most 1000\), got 1099511627776"),
        ("max_attempts", jnp.array(3), r"max_attempts must be a Python integer .*static_args"),
        ("learning_rate", "0.1", r"learning_rate must be a positive number"),
        ("learning_rate", float("nan"), r"learning_rate must be finite and positive, got nan"),
    ],
)
def test_bad_adaptive_options_name_the_option(name, value, message):
    with pytest.raises(ValueError, match=message):
        flowopt.adaptive_runge_kutta(tableaus.BOSH3, **(OPTIONS | {name: value}))
    if name not in ("learning_rate", "max_attempts"):
        with pytest.raises(ValueError, match=message):
            PIController(**(dict(rtol=1e-3, atol=1e-6) | {name: value}))


def test_inconsistent_step_bounds_are_refused():
    with pytest.raises(ValueError, match=r"dtmin \(1.0\) must not exceed dtmax \(0.1\)"):
        flowopt.adaptive_runge_kutta(**OPTIONS, dtmin=1.0, dtmax=0.1)
    with pytest.raises(ValueError, match=r"rtol must be"):
        flowopt.adaptive_runge_kutta(learning_rate=0.1, rtol=0.0, atol=0.0)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(dtmin=None), r"needs a finite step bound dtmin"),
        (dict(dtmin="x"), r"dtmin must be a finite positive number, got 'x'"),
        (dict(dtmin=1.0, dtmax=1e-3), r"dtmin \(1.0\) must not exceed dtmax"),
        (dict(safety=2.0), r"safety must be a real number in \(0, 1\]"),
    ],
)
def test_minibatch_options_are_checked(changes, message):
    options = OPTIONS | dict(dtmin=1e-4, dtmax=1.0) | changes
    with pytest.raises(ValueError, match=message):
        flowopt.minibatch_adaptive_runge_kutta(tableaus.BOSH3, **options)


def _controller():
    return PIController(rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c, p: adaptive_step(tableaus.BOSH3, None, quadratic, p, p, c.init(0.1)), r"controller must be a"),
        (lambda c, p: adaptive_step(tableaus.BOSH3, c, None, p, p, c.init(0.1)), r"oracle must be a function"),
        (
            lambda c, p: adaptive_step(tableaus.BOSH3, c, quadratic, p, jnp.ones(3), c.init(0.1)),
            r"k1 \(the gradient at params\) must have the structure and shapes of params",
        ),
        (lambda c, p: adaptive_step(tableaus.BOSH3, c, quadratic, p, p, None), r"state must be a StepSizeState"),
        (lambda c, p: adaptive_step(tableaus.BOSH3, c, quadratic, p, p, 0.1), r"state must be a StepSizeState"),
        (lambda c, p: adaptive_step("bosh3", c, quadratic, p, p, c.init(0.1)), r"tableau must be a flowopt.ButcherTableau"),
        (lambda c, p: adaptive_step(tableaus.RK4, c, quadratic, p, p, c.init(0.1)), r"tableau rk4 has no error weights"),
        (lambda c, p: c.init(float("nan")), r"step_size must be .*got nan"),
        (lambda c, p: c.init("x"), r"step_size must be .*got 'x'"),
        (lambda c, p: c.init(0.1, jnp.int32), r"dtype must be a real floating-point dtype"),
        (lambda c, p: c.adapt(c.init(0.1), jnp.array(0.5), jnp.array(True), 0), r"error_order must be a positive integer"),
        (lambda c, p: c.adapt(None, jnp.array(0.5), jnp.array(True), 2), r"state must be a StepSizeState"),
        (
            lambda c, p: scaled_error_norm(jnp.ones(2), p, jnp.ones(3), 1e-3, 1e-6),
            r"scaled_error_norm: error, params and candidate must have the same structure and shapes",
        ),
        (lambda c, p: scaled_error_norm([p], [p, p], [p, p], 1e-3, 1e-6), r"must have the same structure"),
        (lambda c, p: scaled_error_norm(p, p, p, "x", 1e-6), r"rtol must be .*got 'x'"),
        (lambda c, p: scaled_error_norm(p, p, p, 1e-3, 0.0), r"atol must be .*got 0.0"),
    ],
)
def test_pure_step_and_controller_check_their_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(_controller(), jnp.array([1.0, -2.0]))


@pytest.mark.parametrize(
    "constructor, bounds",
    [
        (flowopt.adaptive_runge_kutta, {}),
        (flowopt.minibatch_adaptive_runge_kutta, dict(dtmin=1e-4, dtmax=1.0)),
    ],
)
def test_unknown_controller_keyword_is_a_type_error_naming_it(constructor, bounds):
    # Python's own check of the signature: the controller is PI, there is no dcoeff.
    with pytest.raises(TypeError, match="dcoeff"):
        constructor(**OPTIONS, **bounds, dcoeff=0.1)


def _run(tx, params, steps, loss=quadratic, jit=True):
    state = tx.init(params)

    def step(params, state):
        grads = jax.tree.map(jnp.conj, jax.grad(loss)(params))  # optax's convention for complex parameters
        updates, state = tx.update(grads, state, params, value_fn=loss)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit else step
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


ALL_OPTIONS = dict(
    learning_rate=0.1,
    rtol=1e-3,
    atol=1e-6,
    pcoeff=0.3,
    icoeff=0.4,
    safety=0.8,
    factormin=0.3,
    factormax=5.0,
    dtmin=1e-4,
    dtmax=1.0,
    smoothing=0.5,
)


def test_traced_options_pass_validation_under_inject_hyperparams():
    make = optax.inject_hyperparams(flowopt.adaptive_runge_kutta, static_args=("tableau", "max_attempts"))
    start = jnp.array([1.0, -2.0])
    injected, injected_state = _run(make(tableau=tableaus.BOSH3, max_attempts=3, **ALL_OPTIONS), start, 8)
    plain, plain_state = _run(flowopt.adaptive_runge_kutta(tableaus.BOSH3, max_attempts=3, **ALL_OPTIONS), start, 8)
    np.testing.assert_allclose(injected, plain, rtol=1e-5)
    assert int(injected_state.inner_state.accepted) == int(plain_state.accepted) > 0
    # A traced max_attempts cannot fix the structure of the update: the message names static_args.
    with pytest.raises(ValueError, match=r"max_attempts must be a Python integer .*static_args"):
        optax.inject_hyperparams(flowopt.adaptive_runge_kutta, static_args=("tableau",))(
            tableau=tableaus.BOSH3, max_attempts=3, **ALL_OPTIONS
        ).init(jnp.ones(2))


def test_traced_options_pass_validation_under_jit():
    def first_update(rtol, pcoeff, smoothing, params):
        tx = flowopt.adaptive_runge_kutta(
            tableaus.BOSH3, learning_rate=0.05, rtol=rtol, atol=1e-6, pcoeff=pcoeff, smoothing=smoothing
        )
        updates, state = tx.update(jax.grad(quadratic)(params), tx.init(params), params, value_fn=quadratic)
        return updates, state.controller.step_size

    params = jnp.array([1.0, -2.0])
    traced = jax.jit(first_update)(1e-2, 0.0, 0.0, params)
    concrete = first_update(1e-2, 0.0, 0.0, params)
    np.testing.assert_allclose(traced[0], concrete[0], rtol=1e-6)
    np.testing.assert_allclose(traced[1], concrete[1], rtol=1e-6)
    assert np.any(np.asarray(concrete[0]) != 0)
    controller = jax.jit(lambda r, a: PIController(rtol=r, atol=a).init(0.1))(1e-3, 1e-6)
    assert float(controller.step_size) == pytest.approx(0.1)


# --- complex parameters -------------------------------------------------------------------------------


def test_error_norm_of_complex_errors_is_the_modulus():
    error = jnp.array([3.0 + 4.0j])
    norm = scaled_error_norm(error, jnp.zeros(1, jnp.complex64), jnp.zeros(1, jnp.complex64), 1e-3, 1.0)
    assert norm.dtype == jnp.float32
    assert float(norm) == pytest.approx(5.0)  # |3 + 4i|, not sqrt((3 + 4i)²)


@pytest.mark.parametrize("pair", tableaus.EMBEDDED, ids=lambda t: t.name)
def test_complex_parameters_follow_the_same_flow_as_the_real_pair(pair):
    # z = x + iy with f(z) = Re(z)² + 3 Im(z)² is the real problem f(x, y) = x² + 3y².
    def complex_loss(z):
        return jnp.sum(jnp.real(z) ** 2 + 3 * jnp.imag(z) ** 2)

    def real_loss(x):
        return jnp.sum(SCALES * x**2)

    options = dict(learning_rate=0.05, rtol=1e-4, atol=1e-6)
    z, z_state = _run(flowopt.adaptive_runge_kutta(pair, **options), jnp.array([1.0 - 2.0j]), 40, complex_loss)
    x, x_state = _run(flowopt.adaptive_runge_kutta(pair, **options), jnp.array([1.0, -2.0]), 40, real_loss)
    for time, point in ((float(z_state.time), np.array([z.real[0], z.imag[0]])), (float(x_state.time), np.asarray(x))):
        assert time > 0.05
        exact = np.array([1.0, -2.0]) * np.exp(-2 * np.asarray(SCALES) * time)  # θ' = -∇f
        np.testing.assert_allclose(point, exact, atol=3e-3)
    assert z_state.time.dtype == jnp.float32 and z_state.error.dtype == jnp.float32
    assert int(z_state.accepted) > 20 and int(z_state.nonfinite) == 0
    # Both follow the flow equally far (the step-size control sees the same error, measured by modulus).
    assert float(z_state.time) == pytest.approx(float(x_state.time), rel=0.2)


@pytest.mark.usefixtures("x64")
def test_complex128_parameters_keep_float64_steps():
    tx = flowopt.adaptive_runge_kutta(**OPTIONS)
    state = tx.init(jnp.array([1.0 + 1.0j], jnp.complex128))
    assert state.controller.step_size.dtype == jnp.float64 and state.time.dtype == jnp.float64


# --- the non-finite guard -----------------------------------------------------------------------------

RADIUS = 1.0


def nan_beyond_radius(x):
    return jnp.where(jnp.sum(x**2) < RADIUS**2, jnp.sum(x**2), jnp.nan)


@pytest.mark.parametrize(
    "inner, message",
    [
        (None, r"guard_nonfinite: inner must be an optax GradientTransformation .*got None"),
        ("rk4", r"inner must be an optax GradientTransformation .*got 'rk4'"),
        ((1, 2), r"inner must be an optax GradientTransformation .*got \(1, 2\)"),
        (flowopt.rk4, r"rk4 is a function: call it to build the optimizer, e.g. rk4\(learning_rate\)"),
        (optax.adam, r"adam is a function: call it"),
    ],
)
def test_guard_needs_a_transformation(inner, message):
    with pytest.raises(ValueError, match=message):
        flowopt.guard_nonfinite(inner)


@pytest.mark.parametrize("check_loss", ["yes", 1, None])
def test_guard_check_loss_must_be_a_bool(check_loss):
    with pytest.raises(ValueError, match=r"check_loss must be True or False"):
        flowopt.guard_nonfinite(flowopt.rk4(0.1), check_loss=check_loss)


def test_guard_counts_and_flagged_loss_check_their_arguments():
    with pytest.raises(ValueError, match=r"guard_counts: opt_state holds no flowopt guard state"):
        flowopt.guard_counts(optax.sgd(0.1).init(jnp.ones(2)))
    with pytest.raises(ValueError, match=r"guard_counts: opt_state holds no flowopt guard state"):
        flowopt.guard_counts(None)
    with pytest.raises(ValueError, match=r"value_fn must be a function params -> scalar loss, got None"):
        flag_nonfinite_loss(None)


def test_guard_rejects_a_step_whose_stage_is_nan_and_keeps_the_whole_inner_state():
    # The Heun stage lands beyond the radius, where the loss is NaN. The integrator skips the
    # step itself; the guard sees that and keeps Adam's moments as they were too.
    tx = flowopt.guard_nonfinite(optax.chain(optax.scale_by_adam(), flowopt.heun(0.5)))
    params = jnp.array([RADIUS - 0.1, 0.0, 0.0])
    state = tx.init(params)
    updates, new_state = tx.update(-jnp.array([50.0, 0.0, 0.0]), state, params, value_fn=nan_beyond_radius)
    assert np.all(np.asarray(updates) == 0)
    adam_before, heun_before = state.inner_state.inner_state
    adam_after, heun_after = new_state.inner_state.inner_state
    np.testing.assert_array_equal(adam_after.mu, adam_before.mu)
    assert int(adam_after.count) == int(adam_before.count) == 0
    assert int(heun_after.skipped) == 0  # the skipped step was rolled back with the state ...
    counts = flowopt.guard_counts(new_state)  # ... and is counted by the guard
    assert {k: int(v) for k, v in counts.items()} == {"nonfinite_gradients": 0, "nonfinite_steps": 1}
    assert int(flowopt.oracle_evaluations(new_state)) == 1  # the Heun stage was spent


def test_guard_skips_a_nan_incoming_gradient_without_calling_the_inner_update():
    calls = []

    def oracle(params):
        calls.append(1)
        return 2 * params

    tx = flowopt.guard_nonfinite(flowopt.rk4(0.1))
    params = jnp.ones(3)
    state = tx.init(params)
    updates, state = tx.update(jnp.array([jnp.nan, 1.0, 1.0]), state, params, grad_fn=oracle)
    assert np.all(np.asarray(updates) == 0)
    assert {k: int(v) for k, v in flowopt.guard_counts(state).items()} == {"nonfinite_gradients": 1, "nonfinite_steps": 0}
    assert int(flowopt.oracle_evaluations(state)) == 0
    # The next finite gradient is taken normally: the guard never gives up.
    updates, state = tx.update(2 * params, state, params, grad_fn=oracle)
    assert np.all(np.asarray(updates) < 0) and int(flowopt.guard_counts(state)["nonfinite_gradients"]) == 1
