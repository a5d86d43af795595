"""Adams–Bashforth: exact coefficients, order τ with a Runge–Kutta start, stability intervals, counts."""

from fractions import Fraction as F

import jax
import numpy as np
import optax
import pytest
import scipy.linalg

import flowopt
from flowopt.multistep.adams_bashforth import explicit_adams_bashforth
from flowopt.multistep.coefficients import ADAMS_BASHFORTH_COEFFICIENTS
from tests.convergence import loglog_slope
from tests.multistep.linear_flow import integrate
from tests.problems import mlp_problem, random_quadratic

EXPECTED_AB = {
    1: (F(1),),
    2: (F(3, 2), F(-1, 2)),
    3: (F(23, 12), F(-4, 3), F(5, 12)),
    4: (F(55, 24), F(-59, 24), F(37, 24), F(-3, 8)),
}
# Largest hλ for which AB-τ is stable on x' = -λx (Hairer, Nørsett & Wanner, §III.3).
STABILITY_LIMIT = {1: 2.0, 2: 1.0, 3: 6 / 11, 4: 3 / 10}


def test_coefficient_table_is_exact():
    assert ADAMS_BASHFORTH_COEFFICIENTS == EXPECTED_AB


@pytest.mark.parametrize("order", range(1, 5))
def test_order_conditions_hold_exactly(order):
    """Σ_j b_j (-j)^{q-1} = 1/q for q = 1..τ, and not for q = τ+1."""
    b = ADAMS_BASHFORTH_COEFFICIENTS[order]
    moment = lambda q: sum(b_j * F(-j) ** (q - 1) for j, b_j in enumerate(b))
    for q in range(1, order + 1):
        assert moment(q) == F(1, q), q
    assert moment(order + 1) != F(1, order + 1)


def _slope(integrator, steps=(16, 32, 64, 128)):
    a, x0 = random_quadratic([0.5, 1.0, 2.0, 3.0])
    exact = scipy.linalg.expm(-a) @ x0
    errors = []
    for n in steps:
        x, _, _ = integrate(integrator, a, x0, 1.0 / n, n)
        errors.append(np.linalg.norm(np.asarray(x) - exact))
    return loglog_slope(1.0 / np.asarray(steps), errors), errors


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("order", range(1, 5))
def test_order_of_accuracy_on_linear_flow(order):
    slope, errors = _slope(explicit_adams_bashforth(order))
    assert abs(slope - order) < 0.3, (slope, errors)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("order", [3, 4])
def test_lower_order_startup_caps_the_order_at_two(order):
    slope, errors = _slope(explicit_adams_bashforth(order, startup="lower_order"))
    assert abs(slope - 2) < 0.3, (slope, errors)


@pytest.mark.parametrize("order", range(1, 5))
def test_stability_interval(order):
    """Converges just inside the interval hλ < limit, diverges just outside."""
    limit = STABILITY_LIMIT[order]
    a = np.diag([1.0])
    integrator = explicit_adams_bashforth(order)
    inside, _, _ = integrate(integrator, a, np.ones(1), 0.9 * limit, 2000)
    outside, _, _ = integrate(integrator, a, np.ones(1), 1.1 * limit, 2000)
    assert abs(float(inside[0])) < 1e-3
    assert not np.isfinite(float(outside[0])) or abs(float(outside[0])) > 1e3


@pytest.mark.parametrize("order", range(1, 5))
def test_oracle_is_called_only_during_start_up(order):
    """High-order start: τ-1 Runge–Kutta steps of order τ, τ-1 calls each; then none."""
    integrator = explicit_adams_bashforth(order)
    assert integrator.needs_oracle == (order > 1)
    for steps in (order - 1, order + 5):
        _, state, calls = integrate(integrator, np.eye(2), np.ones(2), 0.1, steps)
        assert int(calls) == (order - 1) ** 2
    assert int(state.filled) == order - 1


def test_order_one_is_sgd_bit_for_bit_without_oracle():
    params, loss = mlp_problem(sizes=(5, 3))
    results = []
    for tx in (flowopt.adams_bashforth(1, 0.3), optax.sgd(0.3)):

        @jax.jit
        def train_step(p, state, tx=tx):
            updates, state = tx.update(jax.grad(loss)(p), state, p)
            return optax.apply_updates(p, updates), state

        p, state = params, tx.init(params)
        for _ in range(20):
            p, state = train_step(p, state)
        results.append(p)
    for x, y in zip(*map(jax.tree.leaves, results)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_trains_in_jit_with_counts_and_a_schedule():
    params, loss = mlp_problem(1, sizes=(5, 3))
    tx = flowopt.adams_bashforth(3, optax.exponential_decay(0.5, 100, 0.5))

    @jax.jit
    def train_step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss, ignored=None)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    initial = loss(params)
    for _ in range(100):
        params, state = train_step(params, state)
    # Both follow the same flow: AB3 ends where gradient descent with the same schedule ends.
    sgd = optax.sgd(optax.exponential_decay(0.5, 100, 0.5))

    def sgd_step(_, carry):
        p, sgd_state = carry
        updates, sgd_state = sgd.update(jax.grad(loss)(p), sgd_state)
        return optax.apply_updates(p, updates), sgd_state

    reference = mlp_problem(1, sizes=(5, 3))[0]
    reference, _ = jax.jit(lambda p: jax.lax.fori_loop(0, 100, sgd_step, (p, sgd.init(p))))(reference)
    assert loss(params) < 0.85 * initial
    np.testing.assert_allclose(float(loss(params)), float(loss(reference)), rtol=0.01)
    assert int(flowopt.oracle_evaluations(state)) == 2 * 2  # two RK3 start-up steps
    assert train_step._cache_size() == 1


def test_lower_order_startup_needs_no_oracle():
    params, loss = mlp_problem(sizes=(5, 3))
    tx = flowopt.adams_bashforth(4, 0.1, startup="lower_order")
    state = tx.init(params)
    for _ in range(5):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    assert int(flowopt.oracle_evaluations(state)) == 0


def test_missing_oracle_raises():
    params, loss = mlp_problem(sizes=(5, 3))
    tx = flowopt.adams_bashforth(2, 0.1)
    with pytest.raises(ValueError, match="needs an oracle"):
        tx.update(jax.grad(loss)(params), tx.init(params), params)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((0, 0.1), {}, r"order must be a positive integer \(at most 4\)"),
        ((5, 0.1), {}, r"order must be a positive integer \(at most 4\)"),
        ((2.0, 0.1), {}, "order must be a positive integer"),
        ((2, -0.1), {}, "learning_rate must be finite and non-negative"),
        ((2, float("inf")), {}, "learning_rate must be finite and non-negative"),
        ((2, "fast"), {}, "learning_rate must be a positive number"),
        ((2, 0.1), {"startup": "rk4"}, "startup must be one of"),
    ],
)
def test_bad_input_raises(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        flowopt.adams_bashforth(*args, **kwargs)
