"""Explicit Runge–Kutta optimizers: optax equivalence, order of accuracy, oracle counts, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

import flowopt
from flowopt import tableaus
from tests.convergence import loglog_slope
from tests.problems import mlp_problem, random_quadratic

NAMED = {
    "euler": (flowopt.euler, tableaus.EULER),
    "heun": (flowopt.heun, tableaus.HEUN),
    "ralston": (flowopt.ralston, tableaus.RALSTON),
    "midpoint": (flowopt.midpoint, tableaus.MIDPOINT),
    "rk3": (flowopt.rk3, tableaus.RK3),
    "ssprk3": (flowopt.ssprk3, tableaus.SSPRK3),
    "rk4": (flowopt.rk4, tableaus.RK4),
    "rk38": (flowopt.rk38, tableaus.RK38),
}


def _run(tx, params, loss, steps, use_oracle=True):
    @jax.jit
    def step(params, state):
        grads = jax.grad(loss)(params)
        kwargs = {"value_fn": loss} if use_oracle else {}
        updates, state = tx.update(grads, state, params, **kwargs)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def test_euler_is_sgd_bit_for_bit_without_oracle():
    params, loss = mlp_problem()
    ours, _ = _run(flowopt.euler(0.1), params, loss, 100, use_oracle=False)
    theirs, _ = _run(optax.sgd(0.1), params, loss, 100, use_oracle=False)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_euler_with_schedule_is_sgd_bit_for_bit():
    params, loss = mlp_problem(1)
    schedule = optax.cosine_decay_schedule(0.2, 100)
    ours, _ = _run(flowopt.euler(schedule), params, loss, 100, use_oracle=False)
    theirs, _ = _run(optax.sgd(schedule), params, loss, 100, use_oracle=False)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _quadratic_flow_error(tableau, num_steps, horizon=1.0):
    """Global error at t=horizon on f(x) = ½ xᵀAx against expm(-tA) x0 (float64)."""
    a, x0 = random_quadratic([0.5, 1.0, 2.0, 3.0])
    exact = scipy.linalg.expm(-horizon * a) @ x0
    a_jax = jnp.asarray(a)
    loss = lambda x: 0.5 * x @ a_jax @ x
    tx = flowopt.runge_kutta(tableau, horizon / num_steps)

    def body(_, carry):
        x, state = carry
        updates, state = tx.update(a_jax @ x, state, x, value_fn=loss)
        return x + updates, state

    x = jnp.asarray(x0)
    x, _ = jax.lax.fori_loop(0, num_steps, body, (x, tx.init(x)))
    return float(np.linalg.norm(np.asarray(x) - exact))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("tableau", tableaus.ALL, ids=lambda t: t.name)
def test_order_of_accuracy_on_quadratic_flow(tableau):
    steps = np.array([8, 16, 32, 64])
    errors = np.array([_quadratic_flow_error(tableau, int(n)) for n in steps])
    slope = loglog_slope(1.0 / steps, errors)
    assert abs(slope - tableau.order) < 0.3, (tableau.name, slope, errors)


@pytest.mark.parametrize("tableau", tableaus.ALL, ids=lambda t: t.name)
def test_oracle_calls_are_counted(tableau):
    params, loss = mlp_problem()
    calls = []

    def counting_loss(p):
        calls.append(1)
        return loss(p)

    tx = flowopt.runge_kutta(tableau, 0.1)
    state = tx.init(params)
    grads = jax.grad(loss)(params)
    for step in range(1, 4):
        updates, state = tx.update(grads, state, params, value_fn=counting_loss)
        params = optax.apply_updates(params, updates)
        grads = jax.grad(loss)(params)
        assert int(state.count) == step
        assert int(state.oracle_evals) == len(calls)
    # Fixed-step use of an embedded pair skips its unused FSAL stage.
    unused = 1 if tableau.fsal else 0
    assert len(calls) == 3 * (tableau.num_stages - 1 - unused)
    assert int(flowopt.oracle_evaluations(state)) == len(calls)


def test_oracle_evaluations_sums_over_a_chain():
    params, loss = mlp_problem()
    tx = optax.chain(optax.identity(), flowopt.rk4(0.1), optax.scale(1.0))
    state = tx.init(params)
    _, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
    assert int(flowopt.oracle_evaluations(state)) == 3
    assert int(flowopt.oracle_evaluations(optax.sgd(0.1).init(params))) == 0


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_constructor_matches_runge_kutta(name):
    # The same initial state and the same step program (jaxpr) as runge_kutta(tableau): bit-for-bit the same
    # iterates without compiling either.
    constructor, tableau = NAMED[name]
    params, loss = mlp_problem()

    def program(tx):
        def step(params, state):
            updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
            return optax.apply_updates(params, updates), state

        state = tx.init(params)
        return state, str(jax.make_jaxpr(step)(params, state))

    (state_a, step_a), (state_b, step_b) = program(constructor(0.05)), program(flowopt.runge_kutta(tableau, 0.05))
    assert jax.tree.structure(state_a) == jax.tree.structure(state_b)
    for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert step_a == step_b


def test_rk4_matches_hand_written_stages():
    params, loss = mlp_problem()
    grad = jax.grad(loss)
    h = 0.3
    step = lambda p, k, s: jax.tree.map(lambda x, g: x - s * g, p, k)
    k1 = grad(params)
    k2 = grad(step(params, k1, h / 2))
    k3 = grad(step(params, k2, h / 2))
    k4 = grad(step(params, k3, h))
    expected = jax.tree.map(lambda x, a, b, c, d: x - h * (a + 2 * b + 2 * c + d) / 6, params, k1, k2, k3, k4)
    tx = flowopt.rk4(h)
    updates, _ = tx.update(k1, tx.init(params), params, value_fn=loss)
    got = optax.apply_updates(params, updates)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_jitted_step_compiles_once():
    params, loss = mlp_problem()
    tx = flowopt.rk4(0.1)

    @jax.jit
    def train_step(params, state, data_scale):
        value_fn = jax.tree_util.Partial(lambda s, p: s * loss(p), data_scale)
        grads = jax.grad(value_fn)(params)
        updates, state = tx.update(grads, state, params, value_fn=value_fn)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    params, state = train_step(params, state, 1.0)
    params, state = train_step(params, state, 0.5)
    assert train_step._cache_size() == 1


def test_partial_oracle_crosses_jit_boundary():
    params, loss = mlp_problem()
    tx = flowopt.heun(0.1)
    scaled = jax.tree_util.Partial(lambda s, p: s * loss(p), jnp.asarray(2.0))

    @jax.jit
    def update(params, state, value_fn):
        return tx.update(jax.grad(value_fn)(params), state, params, value_fn=value_fn)

    state = tx.init(params)
    updates, _ = update(params, state, scaled)
    direct, _ = tx.update(jax.grad(scaled)(params), state, params, value_fn=scaled)
    for x, y in zip(jax.tree.leaves(updates), jax.tree.leaves(direct)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-8)
    assert update._cache_size() == 1


def test_grad_fn_oracle_equals_value_fn_oracle():
    params, loss = mlp_problem()
    tx = flowopt.rk3(0.1)
    state = tx.init(params)
    grads = jax.grad(loss)(params)
    a, _ = tx.update(grads, state, params, value_fn=loss)
    b, _ = tx.update(grads, state, params, grad_fn=jax.grad(loss))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_rosenbrock_converges():
    def rosenbrock(p):
        return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2

    params = jnp.array([-1.2, 1.0])
    final, _ = _run(flowopt.rk4(2e-3), params, rosenbrock, 5000)
    np.testing.assert_allclose(np.asarray(final), [1.0, 1.0], atol=2e-2)
    assert rosenbrock(final) < 1e-3 * rosenbrock(params)
