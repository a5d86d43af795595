"""Approximate BDF / backward Euler: exact coefficients, exact implicit steps, order, stiff stability, counts."""

from fractions import Fraction as F

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

import flowopt
from flowopt.multistep.bdf import MAX_UNROLLED_INNER_STEPS, BDFState, implicit_bdf
from flowopt.multistep.coefficients import BDF_COEFFICIENTS, extrapolation_weights
from flowopt.rk.stages import explicit_runge_kutta
from tests.convergence import loglog_slope
from tests.multistep.linear_flow import integrate
from tests.problems import mlp_problem, random_quadratic

# The table of Huang et al. / Hairer–Wanner, written out independently of the module.
EXPECTED_BDF = {
    1: ((F(-1),), F(1)),
    2: ((F(-4, 3), F(1, 3)), F(2, 3)),
    3: ((F(-18, 11), F(9, 11), F(-2, 11)), F(6, 11)),
    4: ((F(-48, 25), F(36, 25), F(-16, 25), F(3, 25)), F(12, 25)),
    5: ((F(-300, 137), F(300, 137), F(-200, 137), F(75, 137), F(-12, 137)), F(60, 137)),
    6: ((F(-120, 49), F(150, 49), F(-400, 147), F(75, 49), F(-24, 49), F(10, 147)), F(20, 49)),
}


# --- coefficients -----------------------------------------------------------------------------


def test_coefficient_table_is_exact():
    assert BDF_COEFFICIENTS == EXPECTED_BDF
    for a, beta in BDF_COEFFICIENTS.values():
        assert all(isinstance(x, F) for x in a) and isinstance(beta, F)


@pytest.mark.parametrize("order", range(1, 7))
def test_order_conditions_hold_exactly(order):
    """Σ_j α_j (-j)^q = β [q = 1] for q = 0..τ, with α_0 = 1; the condition fails at q = τ+1."""
    a, beta = BDF_COEFFICIENTS[order]
    alpha = (F(1),) + a
    moment = lambda q: sum(alpha_j * F(-j) ** q for j, alpha_j in enumerate(alpha))
    assert moment(0) == 0  # consistency
    assert moment(1) == beta
    for q in range(2, order + 1):
        assert moment(q) == 0, q
    assert moment(order + 1) != 0  # the order is exactly τ
    assert beta == 1 / sum(F(1, k) for k in range(1, order + 1))


@pytest.mark.parametrize("order", range(1, 7))
def test_zero_stable(order):
    a, _ = BDF_COEFFICIENTS[order]
    roots = np.roots([1.0] + [float(x) for x in a])
    assert np.all(np.abs(roots) <= 1 + 1e-9)
    assert np.sum(np.abs(np.abs(roots) - 1) < 1e-9) == 1  # only the principal root on the circle


@pytest.mark.parametrize("order", range(1, 7))
def test_extrapolation_weights_and_their_stability(order):
    weights = extrapolation_weights(order)
    assert sum(weights) == 1
    for q in range(1, order):
        assert sum(w * F(1, j) ** q for j, w in enumerate(weights, start=1)) == 0
    # Stability function of extrapolated backward Euler on x' = -λx, z = hλ ≥ 0.
    z = np.concatenate([np.linspace(0, 20, 4001), np.logspace(1.3, 8, 400)])
    r = sum(float(w) * (1 + z / j) ** (-j) for j, w in enumerate(weights, start=1))
    assert np.max(np.abs(r)) <= 1 + 1e-12
    assert abs(r[-1]) < 1e-6  # damps the stiffest components


# --- one step against the exact implicit step ---------------------------------------------------


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("order", range(1, 7))
@pytest.mark.parametrize("inner", ["default", "fixed", "tolerance"])
def test_step_matches_linear_solve(order, inner):
    """With a full history, one step equals (I + βhA)⁻¹ z to 1e-8 in float64."""
    a, x = random_quadratic([0.5, 1.0, 2.0, 3.0, 5.0])
    rng = np.random.default_rng(order)
    history = tuple(x + 0.1 * rng.normal(size=x.shape) for _ in range(order - 1))
    coefficients, beta = BDF_COEFFICIENTS[order]
    h = 0.2
    beta_h = float(beta) * h
    options = {
        "default": dict(inner_steps=40),
        "fixed": dict(inner_steps=40, inner_learning_rate=1.0 / (5.0 + 1.0 / beta_h)),
        "tolerance": dict(inner_steps=200, inner_tolerance=1e-12),
    }[inner]
    integrator = implicit_bdf(order, **options)
    state = BDFState(
        history=tuple(jnp.asarray(p) for p in history),
        filled=jnp.asarray(order - 1, jnp.int32),
        curvature=jnp.zeros([]),
        inner_residual=jnp.zeros([]),
    )
    a_jax = jnp.asarray(a)
    increment, new_state, calls = jax.jit(integrator.step, static_argnums=0)(
        lambda p: a_jax @ p, jnp.asarray(x), a_jax @ jnp.asarray(x), h, state
    )
    z = -sum(float(c) * p for c, p in zip(coefficients, (x,) + history))
    exact = np.linalg.solve(np.eye(len(x)) + beta_h * a, z)
    np.testing.assert_allclose(np.asarray(x + increment), exact, rtol=0, atol=1e-8)
    if inner == "tolerance":
        assert 0 < int(calls) < 200  # stopped early: the count is dynamic
        assert float(new_state.inner_residual) <= 1e-12
    else:
        assert int(calls) == 40
    if order > 1:
        np.testing.assert_array_equal(np.asarray(new_state.history[0]), x)


# --- order of accuracy -------------------------------------------------------------------------


def _global_error(integrator, num_steps):
    a, x0 = random_quadratic([0.5, 1.0, 2.0, 3.0])
    exact = scipy.linalg.expm(-a) @ x0
    x, _, _ = integrate(integrator, a, x0, 1.0 / num_steps, num_steps)
    return float(np.linalg.norm(np.asarray(x) - exact))


def _slope(integrator, steps=(8, 16, 32, 64)):
    steps = np.asarray(steps)
    errors = np.array([_global_error(integrator, int(n)) for n in steps])
    return loglog_slope(1.0 / steps, errors), errors


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_trajectory_has_order_tau(order):
    integrator = implicit_bdf(order, inner_steps=100, inner_tolerance=1e-12)
    slope, errors = _slope(integrator)
    assert abs(slope - order) < 0.3, (slope, errors)


@pytest.mark.usefixtures("x64")
def test_lower_order_startup_caps_the_order():
    """Why the start-up matters: BDF3 started with BDF1, BDF2 is only second order."""
    slope, errors = _slope(implicit_bdf(3, inner_steps=100, inner_tolerance=1e-12, startup="lower_order"))
    assert abs(slope - 2) < 0.3, (slope, errors)


# --- stiff stability ---------------------------------------------------------------------------


STIFF_STEPS = 30_000
STIFF_INNER_STEPS = 5


def _stiff_problem():
    """½xᵀAx with eigenvalues log-spaced on [1e-4, 1]: κ = 1e4, L = 1, minimiser 0."""
    return random_quadratic(np.logspace(-4, 0, 16), seed=1)


def test_gradient_descent_diverges_at_ten_over_l():
    a, x0 = _stiff_problem()
    x, _, _ = integrate(explicit_runge_kutta(flowopt.tableaus.EULER), a, x0, 10.0, 50)
    assert not np.all(np.isfinite(np.asarray(x))) or np.linalg.norm(x) > 1e10 * np.linalg.norm(x0)


@pytest.mark.parametrize("order", [1, 2])
def test_stiff_quadratic_converges_with_few_inner_steps(order):
    """h = 10/L, STIFF_INNER_STEPS = 5 inner steps: backward Euler and BDF2 reach the minimiser."""
    a, x0 = _stiff_problem()
    integrator = implicit_bdf(order, inner_steps=STIFF_INNER_STEPS)
    x, state, calls = integrate(integrator, a, x0, 10.0, STIFF_STEPS)
    error = np.linalg.norm(np.asarray(x)) / np.linalg.norm(x0)
    assert error < 1e-4, error
    # BDF2's start-up step solves three subproblems (1 + 2 substeps), every other step one.
    assert int(calls) == STIFF_INNER_STEPS * (STIFF_STEPS + (0 if order == 1 else 2))
    assert 1.0 <= float(state.curvature) <= 1.25 + 1e-6  # the backtracked estimate found L


def test_backward_euler_descends_on_stiff_quadratic():
    a, x0 = _stiff_problem()
    integrator = implicit_bdf(1, inner_steps=2)
    loss = lambda x: 0.5 * x @ a @ x
    x, state = jnp.asarray(x0), integrator.init(jnp.asarray(x0))
    values = [loss(np.asarray(x))]
    step = jax.jit(lambda x, s: integrator.step(lambda p: jnp.asarray(a) @ p, x, jnp.asarray(a) @ x, 10.0, s))
    for _ in range(100):
        increment, state, _ = step(x, state)
        x = x + increment
        values.append(loss(np.asarray(x)))
    assert np.all(np.diff(values) <= 1e-7 * values[0])
    assert values[-1] < 0.1 * values[0]


def test_inner_step_from_beta_h_alone_diverges_where_the_default_does_not():
    a, x0 = _stiff_problem()
    naive = implicit_bdf(1, inner_steps=STIFF_INNER_STEPS, inner_learning_rate=10.0)
    x, _, _ = integrate(naive, a, x0, 10.0, 20)
    assert not np.all(np.isfinite(np.asarray(x))) or np.linalg.norm(x) > 1e6 * np.linalg.norm(x0)


# --- the optax transformation -------------------------------------------------------------------


def test_oracle_count_is_honest_and_dynamic():
    """The state's count equals the oracle's actual invocations, also with early stopping."""
    params = {"w": jnp.ones((3, 2)), "b": jnp.arange(2.0)}
    loss = lambda p: jnp.sum(jnp.cos(p["w"]) + p["w"] ** 2) + jnp.sum(p["b"] ** 2)
    invocations = []

    def grad_fn(p):
        jax.debug.callback(lambda: invocations.append(1))
        return jax.grad(loss)(p)

    tx = flowopt.bdf(2, 0.5, inner_steps=6, inner_tolerance=1e-2)

    @jax.jit
    def train_step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params, grad_fn=grad_fn, unused_kwarg=1)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(3):
        params, state = train_step(params, state)
    jax.effects_barrier()
    assert int(state.oracle_evals) == len(invocations) == int(flowopt.oracle_evaluations(state))
    # Start-up: 3 solves of at most 6 calls; then at most 6 per step; early stops made it smaller.
    assert 0 < len(invocations) < 3 * 6 + 2 * 6
    assert train_step._cache_size() == 1


def test_trains_mlp_with_schedule_in_a_chain():
    params, loss = mlp_problem(1, sizes=(5, 8, 3), output_bias=False)
    tx = optax.chain(optax.clip_by_global_norm(10.0), flowopt.bdf(3, optax.linear_schedule(1.0, 0.5, 50), 3))

    @jax.jit
    def train_step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    initial = loss(params)
    for _ in range(50):
        params, state = train_step(params, state)
    assert loss(params) < 0.7 * initial
    assert int(flowopt.oracle_evaluations(state)) > 0


def test_backward_euler_is_bdf1():
    a, x0 = random_quadratic([0.5, 1.0, 2.0])
    loss = lambda x: 0.5 * x @ jnp.asarray(a) @ x
    x0 = jnp.asarray(x0, jnp.float32)
    results = []
    for tx in (flowopt.backward_euler(0.3, 4), flowopt.bdf(1, 0.3, 4)):
        updates, _ = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p, value_fn=loss))(jax.grad(loss)(x0), tx.init(x0), x0)
        results.append(updates)
    for x, y in zip(*map(jax.tree.leaves, results)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- loop forms ---------------------------------------------------------------------------------


def _run_float64(tx, steps):
    params, loss = mlp_problem(2, sizes=(5, 8, 3), output_bias=False)
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)

    @jax.jit
    def train_step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(steps):
        params, state = train_step(params, state)
    return params, int(flowopt.oracle_evaluations(state))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    "order, startup, inner_learning_rate",
    [(1, "high_order", None), (2, "high_order", None), (3, "high_order", 0.05), (3, "lower_order", None)],
)
def test_unrolled_inner_loop_equals_the_while_loop(order, startup, inner_learning_rate):
    """A fixed count (unrolled) and a tolerance that is never met (a while_loop) give the same iterates and calls."""
    make = lambda tolerance: flowopt.bdf(  # noqa: E731
        order, 2.0, 3, inner_learning_rate, inner_tolerance=tolerance, startup=startup
    )
    unrolled, unrolled_calls = _run_float64(make(None), 6)
    looped, looped_calls = _run_float64(make(1e-300), 6)
    solves_per_startup_step = order * (order + 1) // 2 if startup == "high_order" else 1
    assert unrolled_calls == looped_calls == 3 * (6 + (solves_per_startup_step - 1) * (order - 1))
    for x, y in zip(jax.tree.leaves(unrolled), jax.tree.leaves(looped)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-15)


def _loop_primitives(jaxpr) -> set[str]:
    """Loops in ``jaxpr`` and its sub-jaxprs (a fully unrolled scan is none), not looking inside ``cond`` branches."""
    found = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "while" or (eqn.primitive.name == "scan" and eqn.params["unroll"] < eqn.params["length"]):
            found.add(eqn.primitive.name)
        if eqn.primitive.name == "cond":
            continue
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found |= _loop_primitives(sub)
    return found


@pytest.mark.parametrize("tx", [flowopt.backward_euler(0.5, 3), flowopt.bdf(3, 0.5, 3)], ids=["backward_euler", "bdf3"])
def test_fixed_inner_steps_run_without_a_loop(tx):
    """After the start-up (which sits in a lax.cond) a short fixed solve is straight-line code: no while_loop or scan.

    A tolerance makes the solve a while_loop, and more than MAX_UNROLLED_INNER_STEPS a rolled loop.
    """
    params, loss = mlp_problem(sizes=(5, 8, 3), output_bias=False)
    jaxpr = jax.make_jaxpr(lambda p, s: tx.update(jax.grad(loss)(p), s, p, value_fn=loss))(params, tx.init(params))
    assert _loop_primitives(jaxpr.jaxpr) == set()
    for looped, kind in [
        (flowopt.bdf(3, 0.5, 3, inner_tolerance=1e-3), "while"),
        (flowopt.bdf(3, 0.5, MAX_UNROLLED_INNER_STEPS + 1), "scan"),
    ]:
        jaxpr = jax.make_jaxpr(lambda p, s, tx=looped: tx.update(jax.grad(loss)(p), s, p, value_fn=loss))(
            params, looped.init(params)
        )
        assert _loop_primitives(jaxpr.jaxpr) == {kind}


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(order=0), r"order must be a positive integer \(at most 6\)"),
        (dict(order=7), r"order must be a positive integer \(at most 6\)"),
        (dict(order=2.0), "order must be a positive integer"),
        (dict(order=True), "order must be a positive integer"),
        (dict(inner_steps=0), "inner_steps must be a positive integer"),
        (dict(inner_steps=2.5), "inner_steps must be a positive integer, got 2.5"),
        (dict(learning_rate=-0.1), "learning_rate must be finite and non-negative"),
        (dict(learning_rate=float("nan")), "learning_rate must be finite and non-negative"),
        (dict(inner_learning_rate=0.0), "inner_learning_rate must be a finite positive number"),
        (dict(inner_learning_rate=lambda c: 0.1), "inner_learning_rate must be a finite positive number"),
        (dict(inner_tolerance=1.5), r"inner_tolerance must be a real number in \(0, 1\)"),
        (dict(startup="euler"), "startup must be one of"),
    ],
)
def test_bad_input_raises(kwargs, match):
    arguments = dict(order=2, learning_rate=0.1, inner_steps=3) | kwargs
    with pytest.raises(ValueError, match=match):
        flowopt.bdf(**arguments)


def test_missing_oracle_raises():
    params, loss = mlp_problem(sizes=(5, 8, 3), output_bias=False)
    for tx in (flowopt.bdf(2, 0.1, 3), flowopt.backward_euler(0.1, 3)):
        with pytest.raises(ValueError, match="needs an oracle"):
            tx.update(jax.grad(loss)(params), tx.init(params), params)
