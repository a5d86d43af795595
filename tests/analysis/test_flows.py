"""Reference gradient flows: exactness against the matrix exponential, the cheap GD mode, counts, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

from flowopt import analysis
from tests.convergence import loglog_slope


def _quadratic_problem():
    """f = ½ aᵀHa + ½ tr(BᵀB) on a dict pytree, κ(H) = 1e3; returns (loss, params0, exact flow)."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    h = q @ np.diag(np.logspace(-1, 2, 6)) @ q.T
    a0, b0 = rng.normal(size=6), rng.normal(size=(2, 2))
    h_jax = jnp.asarray(h)
    loss = lambda p: 0.5 * p["a"] @ h_jax @ p["a"] + 0.5 * jnp.sum(p["b"] ** 2)

    def exact(times):
        return {
            "a": np.stack([scipy.linalg.expm(-h * t) @ a0 for t in times]),
            "b": np.stack([np.exp(-t) * b0 for t in times]),
        }

    return loss, {"a": jnp.asarray(a0), "b": jnp.asarray(b0)}, exact


def _max_error(solution_params, exact_params):
    return max(float(np.abs(np.asarray(solution_params[k]) - exact_params[k]).max()) for k in exact_params)


@pytest.mark.usefixtures("x64")
def test_adaptive_flow_matches_the_matrix_exponential_to_its_tolerance():
    times = np.linspace(0.0, 2.0, 11)
    loss, params0, exact = _quadratic_problem()
    reference = exact(times)
    errors = {}
    for tol in (1e-6, 1e-9):
        solution = analysis.gradient_flow(loss, params0, times, rtol=tol, atol=tol)
        errors[tol] = _max_error(solution.params, reference)
        # |θ| ≤ 3 here: the error scale atol + rtol|θ| is at most 4·tol.
        assert errors[tol] <= 10 * 4 * tol, (tol, errors[tol])
        assert bool(solution.successful) and int(solution.num_steps) >= len(times) - 1
        np.testing.assert_array_equal(solution.times, times)
    assert errors[1e-9] < errors[1e-6] / 100


def test_oracle_evaluations_are_counted_at_run_time():
    calls = []

    def counting_gradient(p):
        jax.debug.callback(lambda: calls.append(1))
        return jax.tree.map(lambda x: 2.0 * x, p)  # ∇ of ||p||²

    params0 = {"x": jnp.ones(3)}
    for method, per_attempt in (("dopri5", 6), ("heun_euler", 2)):
        calls.clear()
        solution = analysis.gradient_flow(None, params0, [0.5, 1.0], grad_fn=counting_gradient, method=method)
        assert int(solution.oracle_evals) == len(calls)
        # float32: the default rtol is 1e-5.
        np.testing.assert_allclose(solution.params["x"][-1], np.exp(-2.0) * np.ones(3), rtol=2e-5)
        # DOPRI5 reuses its last stage (FSAL); Heun–Euler needs k1 at each new point. Plus the
        # first gradient and the starting-step probe.
        assert len(calls) == 2 + per_attempt * int(solution.num_steps + solution.num_rejected)


@pytest.mark.usefixtures("x64")
def test_cheap_mode_is_gradient_descent_at_eta_over_r():
    eta, num_steps = 0.015, 40  # ηL = 1.5: stable for GD
    loss, params0, exact = _quadratic_problem()
    times = analysis.step_times(eta, num_steps)
    errors = []
    for r in (4, 8, 16, 32):
        cheap = analysis.gradient_flow(loss, params0, times, method="gd", substeps=r)
        if r == 4:
            iterates = analysis.optimizer_trajectory(optax.sgd(eta / r), loss, params0, num_steps * r)
            every_rth = jax.tree.map(lambda x: x[::r], iterates)
            for key in params0:
                np.testing.assert_allclose(cheap.params[key], every_rth[key], rtol=1e-12, atol=1e-14)
            assert int(cheap.oracle_evals) == num_steps * r
        errors.append(_max_error(cheap.params, exact(np.asarray(times))))
    slope = loglog_slope([4, 8, 16, 32], errors)
    assert slope == pytest.approx(-1.0, abs=0.1), errors
    rk4 = [
        _max_error(analysis.gradient_flow(loss, params0, times, method="rk4", substeps=r).params, exact(np.asarray(times)))
        for r in (4, 8, 16)
    ]
    assert loglog_slope([4, 8, 16], rk4) == pytest.approx(-4.0, abs=0.3), rk4


def test_usable_under_jit_and_in_float32():
    loss = lambda p: 0.5 * jnp.sum(jnp.arange(1.0, 4.0) * p**2)
    times = jnp.array([0.0, 1.0, 2.0])
    solve = jax.jit(lambda p: analysis.gradient_flow(loss, p, times).params)
    flow = solve(jnp.ones(3))
    assert flow.dtype == jnp.float32
    np.testing.assert_allclose(flow, np.exp(-np.outer([0.0, 1.0, 2.0], [1.0, 2.0, 3.0])), rtol=2e-5, atol=1e-6)


def test_bad_input_and_failures_are_reported():
    loss = lambda p: jnp.sum(p**2)
    x = jnp.ones(2)
    with pytest.raises(ValueError, match="method must be"):
        analysis.gradient_flow(loss, x, [1.0], method="rk5")
    with pytest.raises(ValueError, match="no error estimate"):
        analysis.gradient_flow(loss, x, [1.0], method="rk4")
    with pytest.raises(ValueError, match="substeps must be a positive integer"):
        analysis.gradient_flow(loss, x, [1.0], method="gd", substeps=0)
    for times in ([1.0, 0.5], [-1.0], [[1.0]], []):
        with pytest.raises(ValueError, match="times must"):
            analysis.gradient_flow(loss, x, times)
    with pytest.raises(ValueError, match="rtol"):
        analysis.gradient_flow(loss, x, [1.0], rtol=0.0)
    with pytest.raises(ValueError, match="not both"):
        analysis.gradient_flow(loss, x, [1.0], grad_fn=jax.grad(loss))
    with pytest.raises(ValueError, match="needs an oracle"):
        analysis.gradient_flow(None, x, [1.0])
    with pytest.raises(RuntimeError, match="max_steps"):
        analysis.gradient_flow(loss, x, [10.0], max_steps=5)
    # θ' = 4θ³ blows up at t = 1/8 from θ = 1: the solver stops instead of returning NaN silently.
    with pytest.raises(RuntimeError, match="non-finite"):
        analysis.gradient_flow(lambda p: -jnp.sum(p**4), x, [0.2])
