"""Fault injection on the analysis tools, flowopt.TrainState and flowopt-demo.

The rule: every bad input is a ``ValueError`` naming the function, the argument
and the offending value (a bad flag of ``flowopt-demo`` is exit 2 and one line
naming the flag); nothing returns NaN, truncates, broadcasts or hangs silently;
traced values pass the checks (only concrete values are checked).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flowopt
from flowopt import analysis, tableaus

CURVATURES = jnp.array([1.0, 2.0])
PARAMS = {"w": jnp.array([1.0, 2.0])}
TIMES = jnp.array([0.0, 0.5, 1.0])


def loss(params):
    return 0.5 * jnp.sum(CURVATURES * params["w"] ** 2)


def squared_modulus(z):
    return jnp.sum(jnp.abs(z) ** 2)


# ---------------------------------------------------------------------------------------------- gradient_flow

BAD_FLOWS = [
    (dict(value_fn=None), "gradient_flow needs an oracle"),
    (dict(grad_fn=jax.grad(loss)), "not both"),
    (dict(value_fn="loss"), "value_fn must be a callable .* got 'loss'"),
    (dict(value_fn=lambda p: p["w"]), "value_fn must return a scalar loss, got shape"),
    (dict(value_fn=lambda p: jnp.nan * loss(p)), "gradient at params0 is not finite"),
    (dict(params0={"w": jnp.array([1, 2])}), r"params0 must hold floating-point .* \['w'\] is dtype int32"),
    (dict(params0={"w": PARAMS["w"], "n": jnp.array(3)}), r"params0 .* \['n'\] is dtype int32"),
    (dict(params0={}), "params0 has no array leaves"),
    (dict(params0=None), "params0 is None"),
    (dict(times=1.0), "times must be a non-empty 1-D array, got shape"),
    (dict(times=[]), "times must be a non-empty 1-D array"),
    (dict(times="abc"), "times must be a 1-D array of real numbers, got 'abc'"),
    (dict(times=None), "times must be a 1-D array of real numbers, got None"),
    (dict(times=[0.0, 1j]), "times must be a 1-D array of real numbers"),
    (dict(times=[-1.0, 1.0]), r"times must be nonnegative .* times\[0\] = -1.0"),
    (dict(times=[1.0, 0.5]), r"times must be nondecreasing, got times\[0\] = 1.0 > times\[1\] = 0.5"),
    (dict(times=[0.0, np.nan]), "times must be finite, got nan at index 1"),
    (dict(times=[0.0, np.inf]), "times must be finite, got inf at index 1"),
    (dict(method="rk5"), "method must be a flowopt.ButcherTableau or one of"),
    (dict(method=None), "method must be"),
    (dict(method="gd"), "no error estimate; pass substeps="),
    (dict(rtol=0.0), "gradient_flow: rtol must be a finite positive number, got 0.0"),
    (dict(atol=-1e-3), "gradient_flow: atol must be a finite positive number, got -0.001"),
    (dict(rtol=float("nan")), "rtol must be a finite positive number, got nan"),
    (dict(atol=float("inf")), "atol must be a finite positive number, got inf"),
    (dict(rtol="x"), "rtol must be a finite positive number, got 'x'"),
    (dict(atol=1e300), "atol = 1e\\+300 is beyond the range of the parameters' float32"),
    (dict(method="rk4", substeps=0), "substeps must be a positive integer"),
    (dict(method="rk4", substeps=1.5), "substeps must be a positive integer .* got 1.5"),
    (dict(method="rk4", substeps=True), "substeps must be a positive integer .* got True"),
    (dict(method="rk4", substeps="3"), "substeps must be a positive integer .* got '3'"),
    (dict(method="rk4", substeps=10**9), "substeps must be a positive integer \\(at most 715827882\\), got 1000000000"),
    (dict(initial_step=0.0), "initial_step must be a finite positive number, got 0.0"),
    (dict(initial_step=float("inf")), "initial_step must be a finite positive number, got inf"),
    (dict(initial_step="a"), "initial_step must be a finite positive number, got 'a'"),
    (dict(max_steps=0), "max_steps must be a positive integer"),
    (dict(max_steps=1.5), "max_steps must be a positive integer .* got 1.5"),
    (dict(max_steps=None), "max_steps must be a positive integer .* got None"),
    (dict(max_steps=float("inf")), "max_steps must be a positive integer .* got inf"),
    (dict(max_steps="10"), "max_steps must be a positive integer .* got '10'"),
    (dict(max_steps=2**40), "max_steps must be a positive integer .* got 1099511627776"),
]


@pytest.mark.parametrize("override, message", BAD_FLOWS)
def test_gradient_flow_rejects_bad_input(override, message):
    kwargs = dict(value_fn=loss, params0=PARAMS, times=TIMES) | override
    value_fn, params0, times = kwargs.pop("value_fn"), kwargs.pop("params0"), kwargs.pop("times")
    with pytest.raises(ValueError, match=message):
        analysis.gradient_flow(value_fn, params0, times, **kwargs)


def test_gradient_flow_failures_say_why():
    with pytest.raises(RuntimeError, match=r"did not reach t = 1 within max_steps = 1: stopped at t = "):
        analysis.gradient_flow(loss, PARAMS, TIMES, max_steps=1)
    with pytest.raises(RuntimeError, match="became non-finite by t = 1"):  # Euler at h = 4 > 2/L diverges
        analysis.gradient_flow(lambda p: 1e30 * loss(p), PARAMS, TIMES, method="gd", substeps=1)
    with pytest.raises(RuntimeError, match="step size fell to rounding level .* or the flow became non-finite"):
        analysis.gradient_flow(lambda p: -jnp.sum(p["w"] ** 4), PARAMS, [1.0])


def test_gradient_flow_traced_arguments_pass_and_a_bad_traced_grid_is_unsuccessful():
    solve = jax.jit(lambda times, h: analysis.gradient_flow(loss, PARAMS, times, initial_step=h))
    good = solve(TIMES, 0.1)
    assert bool(good.successful)
    np.testing.assert_allclose(good.params["w"][-1], np.exp(-np.asarray(CURVATURES)) * np.array([1.0, 2.0]), rtol=1e-4)
    assert not bool(solve(jnp.array([1.0, 0.0]), 0.1).successful)
    fixed = jax.jit(lambda times: analysis.gradient_flow(loss, PARAMS, times, method="rk4", substeps=4))
    assert not bool(fixed(jnp.array([0.0, jnp.nan])).successful)
    with pytest.raises(ValueError, match="rtol must be a concrete number"):
        jax.jit(lambda r: analysis.gradient_flow(loss, PARAMS, TIMES, rtol=r))(1e-4)


@pytest.mark.parametrize("mode", [{}, {"method": "rk4", "substeps": 8}])
def test_gradient_flow_of_complex_parameters_is_the_real_flow(mode):
    # f(z) = |z|²: the real gradient flow of (x, y) is z' = -2z, so z(t) = exp(-2t) z0.
    z0 = jnp.array([1.0 + 1.0j, 2.0 - 0.5j])
    flow = analysis.gradient_flow(squared_modulus, z0, TIMES, **mode)
    assert flow.params.dtype == jnp.complex64
    np.testing.assert_allclose(flow.params, np.exp(-2 * np.asarray(TIMES))[:, None] * np.asarray(z0), rtol=1e-4)


# ------------------------------------------------------------------------- step_times, trajectories, distances


@pytest.mark.parametrize(
    "learning_rate, num_steps, message",
    [
        (-0.1, 3, "step_times: learning_rate must be a finite nonnegative number, got -0.1"),
        (float("nan"), 3, "learning_rate must be a finite nonnegative number, got nan"),
        (float("inf"), 3, "learning_rate must be a finite nonnegative number, got inf"),
        ("x", 3, "learning_rate must be a finite nonnegative number, got 'x'"),
        (None, 3, "learning_rate must be a finite nonnegative number, got None"),
        (True, 3, "learning_rate must be a finite nonnegative number, got True"),
        (1 + 1j, 3, "learning_rate must be a finite nonnegative number, got \\(1\\+1j\\)"),
        (jnp.array([0.1, 0.2]), 3, "learning_rate must be .* \\(a scalar\\), got an array of shape \\(2,\\)"),
        (lambda count: jnp.where(count == 2, jnp.nan, 0.1), 3, "schedule returned nan at step 2"),
        (lambda count: -0.1 + 0.0 * count, 3, "schedule returned -0.1.* at step 0; steps must be finite and nonnegative"),
        (lambda count: jnp.ones(2) * count, 3, "schedule must return a real scalar per step, got float32\\[2\\]"),
        (lambda: 0.1, 3, "schedule could not be evaluated"),
        (0.1, -1, "num_steps must be a nonnegative integer .* got -1"),
        (0.1, 1.5, "num_steps must be a nonnegative integer .* got 1.5"),
        (0.1, None, "num_steps must be a nonnegative integer .* got None"),
        (0.1, True, "num_steps must be a nonnegative integer .* got True"),
        (0.1, 2**40, "num_steps must be a nonnegative integer \\(at most 100000000\\), got 1099511627776"),
    ],
)
def test_step_times_rejects_bad_input(learning_rate, num_steps, message):
    with pytest.raises(ValueError, match=message):
        analysis.step_times(learning_rate, num_steps)


def test_step_times_of_an_integer_schedule_are_floats_and_traced_rates_pass():
    times = analysis.step_times(lambda count: count, 3)
    assert times.dtype == jnp.float32
    np.testing.assert_array_equal(times, [0.0, 0.0, 1.0, 3.0])
    np.testing.assert_allclose(jax.jit(lambda lr: analysis.step_times(lr, 2))(0.5), [0.0, 0.5, 1.0])


@pytest.mark.parametrize(
    "optimizer, oracle, params0, num_steps, message",
    [
        ("sgd", dict(value_fn=loss), PARAMS, 2, "optimizer must be an optax.GradientTransformation, got 'sgd'"),
        (flowopt.rk4, dict(value_fn=loss), PARAMS, 2, "call it with a learning rate, e.g. flowopt.rk4\\(0.1\\)"),
        (None, dict(value_fn=loss), PARAMS, 2, "optimizer must be an optax.GradientTransformation, got None"),
        (optax.sgd(0.1), dict(value_fn="f"), PARAMS, 2, "value_fn must be a callable .* got 'f'"),
        (optax.sgd(0.1), dict(value_fn=lambda p: p["w"]), PARAMS, 2, "optimizer_trajectory: value_fn must return a scalar"),
        (optax.sgd(0.1), dict(value_fn=lambda p: jnp.nan * loss(p)), PARAMS, 2, "gradient at params0 is not finite"),
        (flowopt.rk4(0.1), dict(value_fn=lambda p: jnp.nan * loss(p)), PARAMS, 2, "gradient at params0 is not finite"),
        (optax.sgd(0.1), dict(grad_fn=lambda p: {"w": jnp.ones(())}), PARAMS, 2, "oracle returned leaves of shapes \\[\\(\\)\\]"),
        (optax.sgd(0.1), dict(grad_fn=lambda p: p["w"]), PARAMS, 2, "oracle returned a pytree with structure"),
        (optax.sgd(0.1), dict(value_fn=loss), {"w": jnp.array([1, 2])}, 2, r"params0 .* \['w'\] is dtype int32"),
        (optax.sgd(0.1), dict(value_fn=loss), {}, 2, "params0 has no array leaves"),
        (optax.sgd(0.1), dict(value_fn=loss), None, 2, "params0 is None"),
        (optax.sgd(0.1), dict(value_fn=loss), PARAMS, 1.5, "num_steps must be a nonnegative integer .* got 1.5"),
        (optax.sgd(0.1), dict(value_fn=loss), PARAMS, "3", "num_steps must be a nonnegative integer .* got '3'"),
        (optax.sgd(0.1), dict(value_fn=loss), PARAMS, 2**40, "num_steps must be a nonnegative integer"),
        (optax.sgd(0.1), dict(value_fn=loss), {"w": jnp.zeros(10**6)}, 10**5, "would store 373 GiB of iterates"),
    ],
)
def test_optimizer_trajectory_rejects_bad_input(optimizer, oracle, params0, num_steps, message):
    with pytest.raises(ValueError, match=message):
        analysis.optimizer_trajectory(optimizer, params0=params0, num_steps=num_steps, **{"value_fn": None} | oracle)


RK4_FACTOR = 1 - 0.2 + 0.2**2 / 2 - 0.2**3 / 6 + 0.2**4 / 24  # R(-0.2) of RK4


@pytest.mark.parametrize("optimizer, factor", [(optax.sgd(0.1), 0.8), (flowopt.euler(0.1), 0.8), (flowopt.rk4(0.1), RK4_FACTOR)])
def test_optimizer_trajectory_of_complex_parameters_follows_optax_convention(optimizer, factor):
    # f(z) = |z|²: descent moves along conj(jax.grad f) = 2z, so one step of size 0.1 scales z by R(-0.2).
    iterates = analysis.optimizer_trajectory(optimizer, squared_modulus, jnp.array([1.0 + 1.0j]), 1)
    np.testing.assert_allclose(iterates[1], [factor * (1 + 1j)], rtol=1e-6)


def test_optimizer_trajectory_warns_about_divergence_and_skipped_steps():
    with pytest.warns(RuntimeWarning, match="not finite from step 2 on"):  # GD at η = 1e20 overflows float32
        analysis.optimizer_trajectory(optax.sgd(1e20), loss, PARAMS, 3)
    schedule = lambda count: jnp.where(count == 1, -0.1, 0.1)
    with pytest.warns(RuntimeWarning, match="skipped 1 of 3 steps"):
        iterates = analysis.optimizer_trajectory(flowopt.euler(schedule), loss, PARAMS, 3)
    np.testing.assert_array_equal(iterates["w"][1], iterates["w"][2])


TRAJECTORY = {"w": jnp.ones((3, 2))}
REFERENCE = {"w": jnp.zeros((3, 2))}


@pytest.mark.parametrize(
    "trajectory, reference, where, message",
    [
        ({}, {}, None, "trajectory_distance: trajectory has no array leaves"),
        (None, None, None, "trajectory has no array leaves"),
        ({"w": jnp.ones(())}, {"w": jnp.zeros(())}, None, r"leaf at \['w'\] is a scalar; leaves need a leading time axis"),
        ({"w": "abc"}, {"w": "abc"}, None, r"trajectory leaf at \['w'\] is a str, expected a numeric array"),
        (TRAJECTORY, {"v": jnp.zeros((3, 2))}, None, "differ in structure"),
        (TRAJECTORY, {"w": jnp.zeros((4, 2))}, None, "times must match"),
        (TRAJECTORY, REFERENCE, lambda path, x: x > 0, r"`where` must return True or False for each leaf, got Array"),
        (TRAJECTORY, REFERENCE, {"w": jnp.ones(2)}, "the mask `where` must hold True or False per leaf"),
        (TRAJECTORY, REFERENCE, {"w": False}, "`where` selects no parameters"),
    ],
)
def test_trajectory_distance_rejects_bad_input(trajectory, reference, where, message):
    with pytest.raises(ValueError, match=message):
        analysis.trajectory_distance(trajectory, reference, where=where)


def test_trajectory_distance_of_complex_and_integer_leaves_and_nan():
    np.testing.assert_allclose(analysis.trajectory_distance({"z": jnp.array([[3 + 4j]])}, {"z": jnp.array([[0j]])}), [5.0])
    ints = analysis.trajectory_distance({"n": jnp.array([[3]], jnp.int8)}, {"n": jnp.array([[-100]], jnp.int8)})
    np.testing.assert_allclose(ints, [103.0])  # no int8 wrap-around
    assert analysis.trajectory_distance(TRAJECTORY, REFERENCE, where={"w": jnp.array(True)}).shape == (3,)
    with pytest.warns(RuntimeWarning, match="not finite from time index 1 on"):
        analysis.trajectory_distance({"w": jnp.array([[0.0], [jnp.nan]])}, {"w": jnp.zeros((2, 1))})


# ---------------------------------------------------------------------------------- Hessians and modified flows

QUADRATIC = jnp.array([1.0, 2.0, 3.0])
POINT = {"w": jnp.array([1.0, 2.0, 0.5])}
KEY = jax.random.key(0)


def quadratic(params):
    return 0.5 * jnp.sum(QUADRATIC * params["w"] ** 2)


def matvec(v):
    return QUADRATIC * v


HESSIAN_FUNCTIONS = {
    "extreme_eigenvalues": analysis.extreme_eigenvalues,
    "hutchinson_trace": analysis.hutchinson_trace,
    "hessian_vector_product": lambda f, p, *rest: analysis.hessian_vector_product(f, p, jax.tree.map(jnp.ones_like, p)),
}


@pytest.mark.parametrize("function", list(HESSIAN_FUNCTIONS))
@pytest.mark.parametrize(
    "value_fn, params, message",
    [
        ("f", POINT, "value_fn must be a callable .* got 'f'"),
        (None, POINT, "value_fn must be a callable .* got None"),
        (lambda p: p["w"], POINT, "value_fn must return a scalar loss, got shape \\(3,\\)"),
        (lambda p: (quadratic(p), 0), POINT, "value_fn returned a tuple; it must return the scalar loss alone"),
        (lambda p: jnp.nan * quadratic(p), POINT, "the (Hessian|product) is not finite at params"),
        (quadratic, {"w": jnp.array([1, 2, 3])}, r"params must hold floating-point .* \['w'\] is dtype int32"),
        (lambda p: quadratic(p) + jnp.sum(p["n"]), POINT | {"n": jnp.array([1])}, r"\['n'\] is dtype int32"),
        (lambda p: 0.0, {}, "params has no array leaves"),
    ],
)
def test_hessian_tools_reject_bad_input(function, value_fn, params, message):
    with pytest.raises(ValueError, match=f"{function}: .*{message}"):
        HESSIAN_FUNCTIONS[function](value_fn, params)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: analysis.extreme_eigenvalues(quadratic, POINT, 0), "num_iterations must be a positive integer .* got 0"),
        (lambda: analysis.extreme_eigenvalues(quadratic, POINT, 1.5), "num_iterations must be a positive integer .* got 1.5"),
        (lambda: analysis.extreme_eigenvalues(quadratic, POINT, None), "num_iterations .* got None"),
        (lambda: analysis.extreme_eigenvalues(quadratic, POINT, True), "num_iterations .* got True"),
        (lambda: analysis.extreme_eigenvalues(quadratic, POINT, 3, 0), "key must be a single PRNG key .* got 0"),
        (lambda: analysis.extreme_eigenvalues(quadratic, None), "params is None"),
        (lambda: analysis.extreme_eigenvalues(quadratic, {"w": jnp.zeros(10**6)}, 10**4), "dimension 1000000 needs a 75 GiB"),
        (lambda: analysis.hutchinson_trace(quadratic, POINT, 1), "num_samples .* must be an integer of at least 2"),
        (lambda: analysis.hutchinson_trace(quadratic, POINT, 10**9), "num_samples .* \\(at most 1000000\\), got 1000000000"),
        (lambda: analysis.hutchinson_trace(quadratic, POINT, 4, "k"), "key must be a single PRNG key .* got 'k'"),
        (lambda: analysis.hessian_vector_product(quadratic, POINT, jnp.ones(3)), "vector has structure"),
        (
            lambda: analysis.hessian_vector_product(quadratic, POINT, {"w": jnp.ones(4)}),
            r"vector leaf at \['w'\] has shape \(4,\)",
        ),
        (
            lambda: analysis.hessian_vector_product(quadratic, POINT, {"w": jnp.ones(3, complex)}),
            "is complex, its parameter real",
        ),
        (lambda: analysis.lanczos(matvec, 0, 3, KEY), "lanczos: dimension must be a positive integer .* got 0"),
        (lambda: analysis.lanczos(matvec, 3.0, 3, KEY), "dimension must be a positive integer .* got 3.0"),
        (lambda: analysis.lanczos(matvec, 3, 0, KEY), "num_iterations must be a positive integer .* got 0"),
        (lambda: analysis.lanczos(matvec, 3, "3", KEY), "num_iterations must be a positive integer .* got '3'"),
        (lambda: analysis.lanczos(matvec, 4, 3, KEY), "matvec failed on a vector of shape \\(4,\\) \\(does dimension = 4"),
        (lambda: analysis.lanczos(jnp.sum, 3, 3, KEY), "matvec must map a vector of shape \\(3,\\) .* got float32\\[\\]"),
        (lambda: analysis.lanczos(lambda v: v[:, None], 3, 3, KEY), "got float32\\[3, 1\\]"),
        (lambda: analysis.lanczos(lambda v: 1j * v, 3, 3, KEY), "got complex64\\[3\\]"),
        (lambda: analysis.lanczos(lambda v: jnp.nan * v, 3, 3, KEY), "matvec returned non-finite values"),
        (lambda: analysis.lanczos(None, 3, 3, KEY), "matvec must be a callable"),
        (lambda: analysis.lanczos(matvec, 3, 3, 0), "key must be a single PRNG key"),
        (lambda: analysis.lanczos(matvec, 3, 3, KEY, jnp.int32), "dtype must be a real floating dtype .* got int32"),
        (lambda: analysis.lanczos(matvec, 3, 3, KEY, jnp.complex64), "dtype must be a real floating dtype .* got complex64"),
        (lambda: analysis.lanczos(matvec, 3, 3, KEY, "blah"), "dtype must be a real floating dtype, got 'blah'"),
        (lambda: analysis.spectrum_along(quadratic, {}), "spectrum_along: trajectory has no array leaves"),
        (lambda: analysis.sharpness(quadratic, None), "spectrum_along: trajectory has no array leaves"),
        (lambda: analysis.spectrum_along(quadratic, {"w": jnp.zeros((0, 3))}), "has no points"),
        (lambda: analysis.spectrum_along(quadratic, {"w": jnp.array(1.0)}), "same leading time axis"),
        (
            lambda: analysis.spectrum_along(
                lambda p: quadratic(p) * jnp.where(p["w"][0] > 1.5, jnp.nan, 1.0),
                {"w": jnp.array([[1.0, 1.0, 1.0], [2.0, 1.0, 1.0]])},
                3,
            ),
            "spectrum_along: at point 1 of the trajectory, extreme_eigenvalues: the Hessian is not finite",
        ),
    ],
)
def test_hessian_tool_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_hessian_tools_accept_raw_keys_cap_iterations_and_pass_traced_values():
    low, high = analysis.extreme_eigenvalues(quadratic, POINT, 100, jax.random.PRNGKey(1))  # m capped at n = 3
    np.testing.assert_allclose([low, high], [1.0, 3.0], rtol=1e-5)
    result = analysis.lanczos(matvec, 3, 10**6, KEY)
    np.testing.assert_allclose(result.ritz_values, [1.0, 2.0, 3.0], rtol=1e-5)
    traced = jax.jit(lambda p: analysis.extreme_eigenvalues(lambda q: jnp.nan * quadratic(q), p, 3))(POINT)
    assert np.isnan(traced[0])  # no check inside jit: a traced result cannot be inspected
    vector = {"w": jnp.array([1, 0, 0], jnp.int32)}  # cast to the parameters' dtype
    np.testing.assert_allclose(analysis.hessian_vector_product(quadratic, POINT, vector)["w"], [1.0, 0.0, 0.0])


def test_hessian_of_complex_parameters_is_the_real_hessian():
    # f(z) = Re(z²) = x² - y²: real Hessian diag(2, -2); f = |z|²: 2I in each of the 2n real coordinates.
    low, high = analysis.extreme_eigenvalues(lambda z: jnp.sum(jnp.real(z**2)), jnp.array([1.0 + 1.0j]))
    np.testing.assert_allclose([low, high], [-2.0, 2.0], rtol=1e-5)
    np.testing.assert_allclose(analysis.hutchinson_trace(squared_modulus, jnp.array([1.0 + 1j, 2.0])).trace, 8.0, rtol=1e-5)
    product = analysis.hessian_vector_product(lambda z: jnp.sum(jnp.real(z**2)), jnp.array([1.0 + 1j]), jnp.array([1.0 + 1j]))
    np.testing.assert_allclose(product, [2.0 - 2.0j], rtol=1e-5)


TIMES3 = jnp.array([0.0, 1.0, 2.0])
LAMBDA3 = jnp.array([-1.0, 0.0, -1.0])


@pytest.mark.parametrize(
    "times, lambda_min, learning_rate, message",
    [
        (TIMES3[::-1], LAMBDA3, 0.1, r"times must be nondecreasing, got times\[0\] = 2.0 > times\[1\] = 1.0"),
        (TIMES3.at[1].set(jnp.nan), LAMBDA3, 0.1, "times must be finite, got nan at index 1"),
        (TIMES3, LAMBDA3.at[2].set(jnp.inf), 0.1, "lambda_min must be finite, got inf at index 2"),
        (jnp.zeros(0), jnp.zeros(0), 0.1, "must be 1-D of equal length \\(at least 1\\), got shapes \\(0,\\)"),
        (TIMES3, LAMBDA3[:2], 0.1, "equal length"),
        ("abc", LAMBDA3, 0.1, "times must be a real 1-D array, got 'abc'"),
        (TIMES3, LAMBDA3 + 1j, 0.1, "lambda_min must be a real 1-D array"),
        (TIMES3, LAMBDA3, -0.1, "learning_rate must be a finite nonnegative number, got -0.1"),
        (TIMES3, LAMBDA3, float("nan"), "learning_rate must be a finite nonnegative number, got nan"),
        (TIMES3, LAMBDA3, None, "learning_rate must be a finite nonnegative number, got None"),
        (TIMES3, LAMBDA3, jnp.ones(3), "learning_rate must be .* \\(a scalar\\), got an array of shape \\(3,\\)"),
    ],
)
def test_gd_error_bound_rejects_bad_input(times, lambda_min, learning_rate, message):
    with pytest.raises(ValueError, match=f"gd_error_bound: .*{message}"):
        analysis.gd_error_bound(times, lambda_min, learning_rate)


def test_gd_error_bound_edge_values():
    np.testing.assert_array_equal(analysis.gd_error_bound(TIMES3, LAMBDA3, 0.0).bound, [0.0, 0.0, 0.0])
    overflow = analysis.gd_error_bound(1000 * TIMES3, LAMBDA3, 0.0)  # 0 · exp(1000) is 0, not NaN
    np.testing.assert_array_equal(overflow.bound, [0.0, 0.0, 0.0])
    np.testing.assert_allclose(
        analysis.gd_error_bound([0, 1, 2], LAMBDA3, 0.1).bound, 0.1 * TIMES3 * np.exp([0, 0.5, 1]), rtol=1e-6
    )


@pytest.mark.parametrize(
    "value_fn, learning_rate, message",
    [
        ("f", 0.1, "value_fn must be a callable .* got 'f'"),
        (quadratic, -0.1, "learning_rate must be a finite nonnegative number, got -0.1"),
        (quadratic, float("inf"), "learning_rate must be a finite nonnegative number, got inf"),
        (quadratic, "x", "learning_rate must be a finite nonnegative number, got 'x'"),
        (quadratic, None, "learning_rate must be a finite nonnegative number, got None"),
        (quadratic, 1 + 1j, "learning_rate must be a finite nonnegative number, got \\(1\\+1j\\)"),
        (quadratic, jnp.ones(3), "\\(a scalar\\), got an array of shape \\(3,\\)"),
    ],
)
def test_modified_value_fn_rejects_bad_input(value_fn, learning_rate, message):
    with pytest.raises(ValueError, match=f"modified_value_fn: .*{message}"):
        analysis.modified_value_fn(value_fn, learning_rate)


def test_modified_value_fn_checks_params_and_value_and_handles_complex():
    modified = analysis.modified_value_fn(squared_modulus, 0.1)
    # f = |z|² = 2 at 1 + i, ‖∇f‖² = |2z|² = 8 over the real coordinates: f̃ = 2 + 0.025 · 8.
    np.testing.assert_allclose(modified(jnp.array([1.0 + 1.0j])), 2.2, rtol=1e-6)
    with pytest.raises(ValueError, match="modified_value_fn: params must hold floating-point .* dtype int32"):
        modified(jnp.array([1, 2]))
    with pytest.raises(ValueError, match="modified_value_fn: value_fn must return a scalar loss, got shape \\(2,\\)"):
        analysis.modified_value_fn(lambda p: p, 0.1)(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(jax.jit(lambda lr: analysis.modified_value_fn(quadratic, lr)(POINT))(0.0), quadratic(POINT))


# ------------------------------------------------------------------------------------------------- stability

LMM = analysis.LinearMultistep


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: analysis.bdf_method(2.0), "BDF order must be in \\[1, 2, 3, 4, 5, 6\\], got 2.0"),
        (lambda: analysis.bdf_method(True), "BDF order must be in .* got True"),
        (lambda: analysis.adams_bashforth_method(True), "Adams–Bashforth order must be in .* got True"),
        (lambda: analysis.adams_bashforth_method("2"), "Adams–Bashforth order must be in .* got '2'"),
        (lambda: analysis.stability_function(tableaus.RK4)(np.nan), "stability_function: z must be finite, got nan"),
        (lambda: analysis.stability_function(tableaus.RK4)("a"), "stability_function: z must be a number or array"),
        (lambda: analysis.characteristic_roots("bdf2", np.array([-1.0, -2.0])), "z must be a single complex number"),
        (lambda: analysis.characteristic_roots("bdf2", np.inf), "characteristic_roots: z must be finite, got inf"),
        (lambda: analysis.characteristic_roots("bdf2", None), "characteristic_roots: z must be a complex number, got None"),
        (lambda: analysis.characteristic_roots("bdf2", "1"), "z must be a complex number, got '1'"),
        (lambda: analysis.is_stable("rk4", np.array([-1.0, -10.0])), "z must be a single complex number"),
        (lambda: analysis.is_stable("rk4", np.nan), "z must be finite, got nan"),
        (lambda: analysis.amplification("rk4", np.nan), "amplification: z must be finite, got nan"),
        (lambda: analysis.amplification("rk4", None), "amplification: z must be a number or array of numbers, got None"),
        (
            lambda: analysis.stability_interval(LMM("x", np.array([1.0, -1.0]), np.array([0.0, 1.0, 0.0]))),
            "LinearMultistep 'x': rho and sigma must have equal lengths .* got 2 and 3",
        ),
        (
            lambda: analysis.stability_interval(LMM("x", np.array([0.0, 1.0, -1.0]), np.array([0.0, 0.0, 1.0]))),
            "leading coefficient rho\\[0\\] must be nonzero",
        ),
        (lambda: analysis.stability_interval(LMM("x", np.array([1.0, np.nan]), np.array([0.0, 1.0]))), "rho must be finite"),
        (lambda: analysis.stability_interval(LMM("x", np.array([1.0, -1.0]), np.array([0.0, 0.0]))), "sigma is zero"),
        (lambda: analysis.stability_interval(LMM("x", "ab", "cd")), "rho must be a 1-D array of at least 2 real coefficients"),
        (lambda: analysis.stability_interval(LMM("x", np.array([1.0, -1j]), np.array([0.0, 1.0]))), "rho must be a 1-D array"),
        (lambda: analysis.stability_interval(LMM("x", np.array([1.0]), np.array([1.0]))), "at least 2 real coefficients"),
        (lambda: analysis.plot_stability_regions([]), "plot_stability_regions: methods is empty"),
        (lambda: analysis.plot_stability_regions(3), "methods must be a method or a sequence of methods, got 3"),
        (lambda: analysis.plot_stability_regions(["rk4"], resolution=1), "resolution must be an integer in \\[2, 4000\\], got 1"),
        (lambda: analysis.plot_stability_regions(["rk4"], resolution=1.5), "resolution must be an integer .* got 1.5"),
        (lambda: analysis.plot_stability_regions(["rk4"], resolution=10**6), "resolution must be an integer .* got 1000000"),
        (lambda: analysis.plot_stability_regions(["rk4"], figure="x"), "figure must be a matplotlib.figure.Figure or None"),
    ],
)
def test_stability_tools_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_root_at_infinity_is_unstable():
    # Backward Euler: ζ = 1/(1 - z); at z = 1 the root is infinite (the step divides by zero).
    assert not analysis.is_stable("bdf1", 1.0)
    assert analysis.is_stable("bdf1", 2.0)  # ζ = -1: on the unit circle, simple
    assert np.isinf(analysis.characteristic_roots("backward_euler", 1.0)).all()
    beta = float(analysis.bdf_method(2).sigma[0])
    np.testing.assert_array_equal(analysis.amplification("bdf2", np.array([1.0 / beta, -1.0])) == np.inf, [True, False])
    # Lists are accepted as coefficients: AB1 written by hand is Euler, stable on [-2, 0].
    assert analysis.stability_interval(LMM("ab1_by_hand", [1.0, -1.0], [0.0, 1.0])) == pytest.approx(2.0)


def test_plot_takes_a_single_method():
    figure = analysis.plot_stability_regions("rk4", resolution=8)
    assert len(figure.axes) == 1


# ------------------------------------------------------------------------------------------ flowopt.TrainState


def _state(tx, params=PARAMS):
    return flowopt.TrainState.create(apply_fn=lambda p, x: x, params=params, tx=tx)


@pytest.mark.parametrize(
    "tx, params, message",
    [
        ("sgd", PARAMS, "TrainState.create: tx must be an optax.GradientTransformation, got 'sgd'"),
        (flowopt.rk4, PARAMS, "tx must be an optax.GradientTransformation \\(call it with a learning rate"),
        (None, PARAMS, "tx must be an optax.GradientTransformation, got None"),
        (
            optax.sgd(0.1),
            {"w": jnp.array([1, 2])},
            r"TrainState.create: params must hold floating-point .* \['w'\] is dtype int32",
        ),
        (optax.sgd(0.1), None, "TrainState.create: params is None"),
    ],
)
def test_train_state_create_rejects_bad_input(tx, params, message):
    with pytest.raises(ValueError, match=message):
        _state(tx, params)


GRADS = jax.grad(loss)(PARAMS)


@pytest.mark.parametrize(
    "tx, kwargs, message",
    [
        (
            flowopt.rk4(0.1),
            dict(grads=GRADS),
            "needs an oracle.* With flowopt.TrainState, pass the oracle to apply_gradients: "
            "state.apply_gradients\\(grads=grads, value_fn=",
        ),
        (
            flowopt.rk4(0.1),
            dict(grads={"w": jnp.ones(3)}, value_fn=loss),
            r"apply_gradients: the gradient leaf at \['w'\] has shape",
        ),
        (
            optax.sgd(0.1),
            dict(grads={"w": jnp.ones(())}),
            r"gradient leaf at \['w'\] has shape \(\), its parameter has shape \(2,\)",
        ),
        (optax.sgd(0.1), dict(grads={"w": jnp.array([1, 1])}), "the gradient passed to update\\(\\) must hold floating-point"),
        (optax.sgd(0.1), dict(grads=None), "the gradient passed to update\\(\\) has structure"),
        (flowopt.rk4(0.1), dict(grads=GRADS, value_fn=loss, extra_args=[1]), "extra_args must be a dict .* got list"),
        (
            flowopt.rk4(0.1),
            dict(grads=GRADS, value_fn=loss, extra_args={"value_fn": loss}),
            "value_fn given both directly and in",
        ),
        (flowopt.rk4(0.1), dict(grads=GRADS, value_fn=loss, params=PARAMS), "params cannot be replaced here"),
        (flowopt.rk4(0.1), dict(grads=GRADS, value_fn=loss, step=3), "step cannot be replaced here"),
    ],
)
def test_train_state_apply_gradients_rejects_bad_input(tx, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _state(tx).apply_gradients(**kwargs)


def _rk4_factor(z):
    return 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24


def test_train_state_oracle_reaches_plain_transformations_and_extra_args():
    def update(updates, state, params=None):
        return jax.tree.map(lambda g: -0.1 * g, updates), state

    plain = optax.GradientTransformation(lambda p: optax.EmptyState(), update)
    stepped = _state(plain).apply_gradients(grads=GRADS, value_fn=loss)  # the oracle is dropped, not a TypeError
    np.testing.assert_allclose(stepped.params["w"], [0.9, 1.6])
    via_extra = _state(flowopt.rk4(0.1)).apply_gradients(grads=GRADS, extra_args={"value_fn": loss})
    direct = _state(flowopt.rk4(0.1)).apply_gradients(grads=GRADS, value_fn=loss)
    np.testing.assert_allclose(via_extra.params["w"], direct.params["w"])
    # θ' = -cθ per coordinate (c = 1, 2): one RK4 step of 0.1 multiplies by R(-0.1 c).
    np.testing.assert_allclose(direct.params["w"], [_rk4_factor(-0.1), 2 * _rk4_factor(-0.2)], rtol=1e-6)


# ------------------------------------------------------------------------------------------------ flowopt-demo


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget", "x"], "argument --budget: invalid int value: 'x'"),
        (["--budget", "-8"], "argument --budget: must be an integer in [1, 10000000], got -8"),
        (["--budget", "0"], "argument --budget: must be an integer in [1, 10000000], got 0"),
        (["--budget", "100000000000"], "argument --budget: must be an integer in [1, 10000000], got 100000000000"),
        (["--batch-size", "0"], "argument --batch-size: must be an integer in [1, 65536], got 0"),
        (["--learning-rate", "nan"], "argument --learning-rate: must be a finite positive number, got nan"),
        (["--learning-rate", "inf"], "argument --learning-rate: must be a finite positive number, got inf"),
        (["--learning-rate", "-0.1"], "argument --learning-rate: must be a finite positive number, got -0.1"),
        (["--learning-rate", "0"], "argument --learning-rate: must be a finite positive number, got 0.0"),
        (["--seed", "-1"], "argument --seed: must be an integer in [0, 4294967295], got -1"),
        (["--seed", "4294967296"], "argument --seed: must be an integer in [0, 4294967295], got 4294967296"),
        (["--dataset", "foo"], "argument --dataset: unknown dataset 'foo'; valid: mnist, "),
        (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    ],
)
def test_demo_bad_flag_exits_2_with_one_line_naming_it(argv, message, capsys):
    from flowopt.training import demo

    with pytest.raises(SystemExit) as exit_:
        demo.main(["--dataset", "synthetic_mnist", *argv])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("flowopt-demo: error: ") and message in lines[0], lines


def test_demo_run_rejects_bad_settings_naming_the_flag():
    from flowopt.training import demo

    with pytest.raises(ValueError, match="argument --batch-size: must be an integer in \\[1, 65536\\], got 2.5"):
        demo.run("synthetic_mnist", 80, 0.1, 2.5, 0)
