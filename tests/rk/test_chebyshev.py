"""Runge–Kutta–Chebyshev optimizers: the stability polynomial, the interval, the orders, float32 at 200 stages."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.integrate

import flowopt
from flowopt import analysis
from flowopt.rk.chebyshev import MAX_STAGES, chebyshev_method, stages_for
from tests.convergence import loglog_slope
from tests.rk.memory import ON_CPU, peak_over_parameter_bytes

ORDERS_AND_STAGES = [(1, s) for s in (1, 2, 3, 7, 9, 20, 50)] + [(2, s) for s in (2, 3, 7, 9, 20, 50)]
"""Up to 8 stages straight-line code, beyond a loop of two stages a pass (9: no stage left over; 20, 50: one)."""


def _steps_on_a_line(order, stages, h_lambda, steps, dtype=jnp.float64, lam=3.0):
    """Iterates of rkc on ``f = λx²/2`` from x = 1 with ``h = h_lambda/λ``."""
    tx = flowopt.rkc(stages, h_lambda / lam, order=order)
    loss = lambda x: 0.5 * lam * jnp.sum(x**2)
    x = jnp.ones(1, dtype)
    state = tx.init(x)
    step = jax.jit(lambda x, state: tx.update(jax.grad(loss)(x), state, x, value_fn=loss))
    path = []
    for _ in range(steps):
        updates, state = step(x, state)
        x = x + updates
        path.append(float(x[0]))
    return np.array(path), state


@pytest.mark.parametrize("order, stages", ORDERS_AND_STAGES)
@pytest.mark.usefixtures("x64")
def test_one_step_is_the_stability_polynomial(order, stages):
    method = chebyshev_method(stages, order)
    for fraction in (0.1, 0.5, 0.9, 1.0):
        h_lambda = fraction * method.stability_interval
        (x1,), state = _steps_on_a_line(order, stages, h_lambda, 1)
        expected = method.stability_function(-h_lambda)
        assert abs(expected.imag) == 0
        assert x1 == pytest.approx(expected.real, abs=1e-10 * max(1.0, abs(expected.real)))
        assert int(flowopt.oracle_evaluations(state)) == stages - 1


@pytest.mark.parametrize("order, stages", [(1, 5), (1, 20), (2, 5), (2, 20)])
@pytest.mark.usefixtures("x64")
def test_contracts_inside_the_interval_and_grows_beyond(order, stages):
    ell = chebyshev_method(stages, order).stability_interval
    inside, _ = _steps_on_a_line(order, stages, 0.95 * ell, 40)
    outside, _ = _steps_on_a_line(order, stages, 1.05 * ell, 40)
    assert np.all(np.abs(inside) <= 1.0) and abs(inside[-1]) < 0.5
    assert abs(outside[-1]) > 10.0


@pytest.mark.parametrize("order, stages", ORDERS_AND_STAGES)
def test_stability_interval(order, stages):
    method = chebyshev_method(stages, order)
    ell = method.stability_interval
    assert analysis.stability_interval(method) == ell
    grid = np.linspace(0.0, ell, 20001)
    assert np.max(np.abs(method.stability_function(-grid))) <= 1.0 + 1e-9
    assert abs(method.stability_function(-1.001 * ell)) > 1.0
    assert analysis.is_stable(method, -0.99 * ell) and not analysis.is_stable(method, -1.01 * ell)
    if order == 1:  # ℓ_s = (1 + ω₀)/ω₁ of the issue and the closed form 2ω₀/ω₁ agree to ε/(2s²)
        assert method.damped_interval == pytest.approx(ell, rel=0.05 / (2 * stages**2) * 1.01)
        assert ell == pytest.approx(2 * method.w0 / method.w1, rel=1e-12)
    if stages >= 20:  # ℓ_s/s² tends to 2 - 4ε/3 (order 1) and ≈ 0.65 (order 2, ε = 2/13)
        assert ell / stages**2 == pytest.approx(2 - 4 * 0.05 / 3 if order == 1 else 0.653, rel=0.01)


def test_stability_interval_of_undamped_order_1_is_2_s_squared():
    for stages in (2, 5, 30):
        assert chebyshev_method(stages, 1, damping=0.0).stability_interval == pytest.approx(2 * stages**2, rel=1e-12)


def _flow_problem():
    """A nonlinear gradient flow and its solution at t = 1 from scipy (rtol 1e-13)."""
    a = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 3.0]])

    def loss(w):
        return 0.5 * w @ a @ w + jnp.sum(jnp.log(jnp.cosh(w - 0.5))) + 0.1 * jnp.sum(w**4)

    w0 = np.array([1.0, -2.0, 0.5])
    with jax.enable_x64(True):
        grad = jax.jit(jax.grad(loss))
        solution = scipy.integrate.solve_ivp(
            lambda t, w: -np.asarray(grad(jnp.asarray(w))), (0.0, 1.0), w0, method="DOP853", rtol=1e-13, atol=1e-13
        )
    return loss, w0, solution.y[:, -1]


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.usefixtures("x64")
def test_order_by_regression_on_a_nonlinear_flow(order):
    loss, w0, reference = _flow_problem()
    sizes, errors = [], []
    for steps in (16, 32, 64, 128):
        tx = flowopt.rkc(5, 1.0 / steps, order=order)
        w = jnp.asarray(w0)
        step = jax.jit(lambda w, state, tx=tx: tx.update(jax.grad(loss)(w), state, w, value_fn=loss))
        state = tx.init(w)
        for _ in range(steps):
            updates, state = step(w, state)
            w = w + updates
        sizes.append(1.0 / steps)
        errors.append(float(np.linalg.norm(np.asarray(w) - reference)))
    slope = loglog_slope(sizes, errors)
    assert slope == pytest.approx(order, abs=0.1), (slope, errors)


@pytest.mark.parametrize("order", [1, 2])
def test_float32_at_200_stages_neither_overflows_nor_stops_contracting(order):
    stages = 200
    ell = chebyshev_method(stages, order).stability_interval
    curvatures = jnp.geomspace(1.0, 1e4, 64, dtype=jnp.float32)  # h·λ_max = 0.9 ℓ_s
    h = 0.9 * ell / 1e4
    loss = lambda w: 0.5 * jnp.sum(curvatures * w**2)
    tx = flowopt.rkc(stages, h, order=order)
    w = jnp.ones(64, jnp.float32)
    state = tx.init(w)
    step = jax.jit(lambda w, state: tx.update(jax.grad(loss)(w), state, w, value_fn=loss))
    norms = []
    for _ in range(10):
        updates, state = step(w, state)
        w = w + updates
        norms.append(float(jnp.max(jnp.abs(w))))
    assert w.dtype == jnp.float32 and np.all(np.isfinite(norms))
    # The damped Chebyshev polynomial contracts every mode, the middle of the spectrum by about 1/T_s(ω₀) a step.
    assert norms[0] <= 1.0 and np.all(np.diff(norms) < 0) and norms[-1] < 0.8 * norms[0]
    # The polynomial's numbers: float32 rounding adds up over 10 steps of s stages, and no more (internal stability).
    method = chebyshev_method(stages, order)
    expected = np.abs(method.stability_function(-h * np.asarray(curvatures, np.float64))) ** 10
    np.testing.assert_allclose(np.abs(np.asarray(w)), expected, atol=10 * stages * float(jnp.finfo(jnp.float32).eps))


@pytest.mark.usefixtures("x64")
def test_schedules_and_counts():
    loss = lambda w: jnp.sum(w**2) + jnp.sum(w**4)
    runs = []
    for rate in (0.05, optax.constant_schedule(0.05)):
        tx = flowopt.rkc(6, rate, order=2)
        w = jnp.array([1.0, -0.5])
        state = tx.init(w)
        for _ in range(7):
            updates, state = tx.update(jax.grad(loss)(w), state, w, value_fn=loss)
            w = w + updates
        runs.append(np.asarray(w))
        assert int(flowopt.oracle_evaluations(state)) == 7 * 5
    np.testing.assert_array_equal(runs[0], runs[1])
    assert flowopt.registry.OPTIMIZERS["rkc"].gradients_per_step(stages=6) == 6


def test_stages_for_is_the_fewest_that_suffice():
    for order in (1, 2):
        for target in (0.5, 2.0, 100.0, 1e4):
            s = stages_for(target, order=order, safety=0.9)
            assert 0.9 * chebyshev_method(s, order).stability_interval >= target
            if s > order:
                assert 0.9 * chebyshev_method(s - 1, order).stability_interval < target
    assert stages_for(1e4) == math.ceil(math.sqrt(1e4 / (0.9 * chebyshev_method(100, 1).stability_interval / 100**2)))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: flowopt.rkc(0, 0.1), r"stages must be a positive integer \(at most 1000\), got 0"),
        (lambda: flowopt.rkc(1, 0.1, order=2), r"stages must be an integer of at least 2 \(at most 1000\), got 1"),
        (lambda: flowopt.rkc(2.5, 0.1), "stages must be a positive integer"),
        (lambda: flowopt.rkc(jnp.asarray(5), 0.1), "stages must be a Python integer.*static_args"),
        (lambda: flowopt.rkc(5, 0.1, order=3), r"order must be a positive integer \(at most 2\), got 3"),
        (lambda: flowopt.rkc(5, 0.1, damping=-0.1), r"damping must be a real number in \[0, 25\)"),
        (lambda: flowopt.rkc(5, 0.1, order=2, damping=0.0), r"damping must be a real number in \(0, 25\)"),
        (lambda: flowopt.rkc(5, 0.1, damping=float("nan")), "damping must be"),
        (lambda: flowopt.rkc(5, -0.1), "learning_rate must be finite and non-negative"),
        (lambda: stages_for(-1.0), "step_curvature must be"),
        (lambda: stages_for(10.0, safety=1.5), "safety must be"),
        (lambda: stages_for(1e9), f"more than MAX_STAGES = {MAX_STAGES} stages"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.skipif(not ON_CPU, reason="buffer assignment differs by backend; measured on CPU")
@pytest.mark.parametrize("order, minimum", [(1, 4), (2, 5)])
def test_peak_memory_does_not_grow_with_the_stages(order, minimum):
    # θ, the two latest stage differences and the stage point, whose gradient takes its place; order 2 also
    # k1 (the 0.25 P boolean mask of the finiteness check comes after the stages). Before: 6 P for order 1 and
    # 7 P for order 2 beyond 8 stages (the loop's swapped carry copied at every pass), s + 1 P up to 8.
    peaks = {s: peak_over_parameter_bytes(flowopt.rkc(s, 0.01, order=order)) for s in (5, 20, 50)}
    for s, peak in peaks.items():
        assert peak <= minimum + 0.25, (s, peak)
    assert peaks[5] == pytest.approx(peaks[50], abs=0.02)
