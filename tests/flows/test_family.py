"""The adaptive-algorithm ODE family: optax equivalence, the seed's recursions, RK orders, input checks."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.integrate

import flowopt
from flowopt import tableaus
from tests.convergence import loglog_slope
from tests.problems import mlp_problem

X0 = (0.5, -2.5)


def quartic(theta):
    """The seed's test function f(x, y) = (x + y)⁴ + (x/2 - y/2)⁴."""
    x, y = theta[0], theta[1]
    return (x + y) ** 4 + (x / 2 - y / 2) ** 4


def quartic_grad_np(theta):
    x, y = theta
    a, b = 4 * (x + y) ** 3, 2 * (x / 2 - y / 2) ** 3
    return np.array([a + b, a - b])


def _trajectory(tx, params, loss, steps, **oracle):
    """All iterates θ_0..θ_steps (stacked leaves) of ``tx`` on ``loss``, in one scan."""

    def step(carry, _):
        params, state = carry
        updates, state = tx.update(jax.grad(loss)(params), state, params, **oracle)
        params = optax.apply_updates(params, updates)
        return (params, state), params

    (_, state), path = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), length=steps))(params)
    path = jax.tree.map(lambda p0, ps: np.concatenate([np.asarray(p0)[None], np.asarray(ps)]), params, path)
    return path, state


def _relative_gap(path, reference):
    """max over steps and entries of |θ - θ_ref|, relative to the largest |θ_ref|."""
    pairs = zip(jax.tree.leaves(path), jax.tree.leaves(reference))
    gap = max(np.abs(a.astype(np.float64) - b.astype(np.float64)).max() for a, b in pairs)
    scale = max(np.abs(b.astype(np.float64)).max() for b in jax.tree.leaves(reference))
    return gap / scale


def _problem(name, dtype):
    if name == "quartic":
        return jnp.asarray(X0, dtype), quartic
    return mlp_problem(sizes=(4, 8, 1), scale=0.5, target="sin", dtype=dtype)  # a 4-8-1 tanh network regressing sin(Σx)


# (flowopt member, optax optimizer, learning rate per problem): the Euler trajectories coincide
# by the mappings in the members' docstrings. b1 = 7/8 and b2 = 1 - 2⁻¹⁰ are exact in binary,
# so float32 runs share every constant (see the default-β test below for 0.9 and 0.999).
EXACT_BETAS = dict(b1=0.875, b2=1 - 2.0**-10)
MEMBERS = {
    "adam": (
        lambda lr: flowopt.adam_flow(lr, **EXACT_BETAS),
        lambda lr: optax.adam(lr, **EXACT_BETAS),
        {"quartic": 1e-2, "mlp": 3e-3},
    ),
    "adam_eps_root": (
        lambda lr: flowopt.adam_flow(lr, eps=1e-8, eps_root=1e-6, **EXACT_BETAS),
        lambda lr: optax.adam(lr, eps=1e-8, eps_root=1e-6, **EXACT_BETAS),
        {"quartic": 1e-2, "mlp": 3e-3},
    ),
    "heavy_ball": (
        lambda lr: flowopt.heavy_ball_flow(lr, momentum=0.9),
        lambda lr: optax.sgd(lr, momentum=0.9),
        {"quartic": 1e-3, "mlp": 1e-2},
    ),
    # With ε = 1e-8 RMSProp ends in sign-like oscillations on both problems, where a 1e-14
    # change of θ₀ moves optax's own float64 iterates by 1e-3: no comparison survives that.
    # ε = 1e-2 keeps its trajectories well conditioned.
    "rmsprop": (
        lambda lr: flowopt.rmsprop_flow(lr, decay=0.9, eps=1e-2),
        lambda lr: optax.rmsprop(lr, decay=0.9, eps=1e-2),
        {"quartic": 1e-2, "mlp": 3e-3},
    ),
    "rmsprop_eps_outside": (
        lambda lr: flowopt.rmsprop_flow(lr, decay=0.9, eps=1e-1, eps_in_sqrt=False),
        lambda lr: optax.rmsprop(lr, decay=0.9, eps=1e-1, eps_in_sqrt=False),
        {"quartic": 1e-2, "mlp": 3e-3},
    ),
    "adagrad": (lambda lr: flowopt.adagrad_flow(lr), lambda lr: optax.adagrad(lr), {"quartic": 1e-1}),
    # optax.sgd with the momentum 1 - r₀/(k+1) of step k (see nesterov_flow). In float32 that momentum
    # and the flow's s·r₀/t_{k+1} round apart, 1.0e-6 after 1000 steps on the MLP: the quartic only.
    "nesterov": (
        lambda lr: flowopt.nesterov_flow(lr, damping=3.0),
        lambda lr: optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=lambda count: 1 - 3.0 / (count + 1)),
        {"quartic": 1e-3},
    ),
}
CASES = [(member, problem) for member in MEMBERS for problem in MEMBERS[member][2]]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("member, problem", CASES)
def test_euler_members_match_optax(member, problem, dtype, request):
    """1000 steps: relative gap below 1e-12 in float64 and 1e-6 in float32."""
    if dtype == "float64":
        request.getfixturevalue("x64")
    ours, theirs, learning_rates = MEMBERS[member]
    lr = learning_rates[problem]
    params, loss = _problem(problem, jnp.dtype(dtype))
    path, _ = _trajectory(ours(lr), params, loss, 1000)
    reference, _ = _trajectory(theirs(lr), params, loss, 1000)
    assert _relative_gap(path, reference) < (1e-12 if dtype == "float64" else 1e-6)


@pytest.mark.usefixtures("x64")
def test_momentum_flows_are_not_optax_nesterov_momentum():
    """optax.sgd(nesterov=True) adds a look-ahead gradient: neither momentum flow's Euler scheme is it."""
    params = jnp.asarray(X0)
    heavy_ball, _ = _trajectory(flowopt.heavy_ball_flow(1e-3, momentum=0.9), params, quartic, 200)
    nesterov, _ = _trajectory(flowopt.nesterov_flow(1e-3), params, quartic, 200)
    look_ahead, _ = _trajectory(optax.sgd(1e-3, momentum=0.9, nesterov=True), params, quartic, 200)
    assert _relative_gap(heavy_ball, look_ahead) > 1e-3 and _relative_gap(nesterov, look_ahead) > 1e-3


@pytest.mark.usefixtures("x64")
def test_adam_eq4_start_gives_the_same_euler_steps():
    params = jnp.asarray(X0)
    path, _ = _trajectory(flowopt.adam_flow(1e-2, init_from_gradient=True), params, quartic, 1000)
    reference, _ = _trajectory(optax.adam(1e-2), params, quartic, 1000)
    assert _relative_gap(path, reference) < 1e-12


@pytest.mark.parametrize("problem, lr", [("quartic", 1e-2), ("mlp", 3e-3)])
def test_adam_float32_with_default_betas_tracks_float64_adam(problem, lr):
    """With b1 = 0.9, b2 = 0.999 (inexact in binary) float32 runs are held to float64 Adam.

    optax's float32 moving averages take ``1 - b2`` from the decimal and ``b2**count``
    from the rounded ``b2``, so their weights sum to 1 + O(1e-5) and its float32 iterates
    drift from float64 Adam by a few 1e-6; the flow's weights ``1 - s q`` and ``s p`` sum
    to one. The flow stays within 1e-6 of float64 Adam on the quartic and, on the MLP,
    where float32 rounding of the network alone costs about that much, no farther than
    optax's own float32 run.
    """
    params, loss = _problem(problem, jnp.float32)
    path, _ = _trajectory(flowopt.adam_flow(lr), params, loss, 1000)
    optax32, _ = _trajectory(optax.adam(lr), params, loss, 1000)
    with jax.enable_x64(True):
        params64, loss64 = _problem(problem, jnp.float64)
        reference, _ = _trajectory(optax.adam(lr), params64, loss64, 1000)
    ours, theirs = _relative_gap(path, reference), _relative_gap(optax32, reference)
    assert ours < (1e-6 if problem == "quartic" else theirs), (ours, theirs)


@pytest.mark.usefixtures("x64")
def test_schedules_follow_the_flow_and_constant_ones_match_optax():
    params = jnp.asarray(X0)
    tx = flowopt.adam_flow(optax.constant_schedule(0.01), reference_learning_rate=0.01)
    path, state = _trajectory(tx, params, quartic, 500)
    reference, _ = _trajectory(optax.adam(0.01), params, quartic, 500)
    assert _relative_gap(path, reference) < 1e-12
    assert float(state.t) == pytest.approx(500 * 0.01, rel=1e-12)
    tx = flowopt.heavy_ball_flow(optax.constant_schedule(1e-3), 0.9, reference_learning_rate=1e-3)
    path, state = _trajectory(tx, params, quartic, 500)
    reference, _ = _trajectory(optax.sgd(1e-3, momentum=0.9), params, quartic, 500)
    assert _relative_gap(path, reference) < 1e-12
    assert float(state.t) == pytest.approx(500 * math.sqrt(1e-3), rel=1e-12)  # the flow's step is sqrt(lr)


def _adam_eq4_literal(lr, b1, b2, eps, steps):
    """The seed's eq. 4 as printed: θ_{k+1} from (m_k, v_k), then μ_{k+2}, ν_{k+2} with g_{k+1}."""
    theta = np.array(X0)
    g = quartic_grad_np(theta)
    m, v = g, g * g
    path = [theta]
    for k in range(steps):
        theta = theta - lr * m / np.sqrt(v + eps)
        g = quartic_grad_np(theta)
        mu = b1 * (1 - b1 ** (k + 1)) / (1 - b1 ** (k + 2))
        nu = b2 * (1 - b2 ** (k + 1)) / (1 - b2 ** (k + 2))
        m, v = mu * m + (1 - mu) * g, nu * v + (1 - nu) * g * g
        path.append(theta)
    return np.array(path)


@pytest.mark.usefixtures("x64")
def test_adam_eq4_recursion_of_the_seed():
    tx = flowopt.adam_flow(0.02, b1=0.9, b2=0.99, eps=0.0, eps_root=1e-6, init_from_gradient=True)
    path, state = _trajectory(tx, jnp.asarray(X0), quartic, 300)
    np.testing.assert_allclose(path, _adam_eq4_literal(0.02, 0.9, 0.99, 1e-6, 300), rtol=0, atol=1e-12)
    assert float(state.t) == pytest.approx(300 * 0.02)  # eq. 4 starts its clock at t₀ = λ


def _eq3_literal(h, r, p, q, s, eps, steps):
    """The seed's eq. 3 as printed, with m₀ = v₀ = 0 at t₀ = 0; returns θ_1..θ_{steps+1}."""
    theta, m, v = np.array(X0), np.zeros(2), np.zeros(2)
    path = []
    for k in range(steps + 1):
        theta = theta - s * m / np.sqrt(v + eps)
        t = (k + 1) * s
        g = quartic_grad_np(theta)
        m = (1 - s * r(t)) * m + s * h(t) * g
        v = (1 - s * q(t)) * v + s * p(t) * g * g
        path.append(theta)
    return np.array(path)


@pytest.mark.usefixtures("x64")
def test_generic_eq3_recursion_of_the_seed():
    """Time-varying coefficients pin down the clock: optax's k-th call uses t_{k+1}."""
    h = lambda t: 1.0 + 0.5 * np.sin(t)  # noqa: E731
    r = lambda t: 2.0 / (1.0 + t)  # noqa: E731
    p = lambda t: 1.0 + t  # noqa: E731
    q = lambda t: 0.5 + np.cos(t) ** 2  # noqa: E731
    tx = flowopt.adaptive_flow(
        lambda t: 1.0 + 0.5 * jnp.sin(t), r, p, lambda t: 0.5 + jnp.cos(t) ** 2, 0.05, eps=0.0, eps_root=1e-3
    )
    path, _ = _trajectory(tx, jnp.asarray(X0), quartic, 200)
    np.testing.assert_allclose(path, _eq3_literal(h, r, p, q, 0.05, 1e-3, 200), rtol=0, atol=1e-12)


@pytest.mark.usefixtures("x64")
def test_nesterov_euler_is_heavy_ball_with_momentum_one_minus_r_over_k():
    lr, damping, steps = 1e-3, 3.0, 200
    path, _ = _trajectory(flowopt.nesterov_flow(lr, damping), jnp.asarray(X0), quartic, steps)
    theta, trace = np.array(X0), np.zeros(2)
    for k in range(steps):
        trace = (1 - damping / (k + 1)) * trace + quartic_grad_np(theta)
        theta = theta - lr * trace
    np.testing.assert_allclose(path[-1], theta, rtol=0, atol=1e-12)


# ---- Runge–Kutta integration of the extended system (θ, m, v) ----

SMOOTH = dict(
    h=lambda t: 1.0 + 0.5 * jnp.sin(t),
    r=lambda t: 1.0 + 0.5 * t,
    p=lambda t: 2.0 / (1.0 + t),
    q=lambda t: 1.5 + 0.0 * t,
)
SMOOTH_NP = dict(h=lambda t: 1.0 + 0.5 * np.sin(t), r=lambda t: 1.0 + 0.5 * t, p=lambda t: 2.0 / (1.0 + t), q=lambda t: 1.5)


def _reference_flow(coefficients, eps, t0, horizon, theta0, m0, v0):
    """θ at t0 + horizon from scipy's DOP853 (tolerance 1e-13) on the system written out in numpy."""

    def field(t, y):
        theta, m, v = y[:2], y[2:4], y[4:]
        g = quartic_grad_np(theta)
        return np.concatenate(
            [
                -m / np.sqrt(v + eps),
                coefficients["h"](t) * g - coefficients["r"](t) * m,
                coefficients["p"](t) * g * g - coefficients["q"](t) * v,
            ]
        )

    y0 = np.concatenate([theta0, m0, v0])
    solution = scipy.integrate.solve_ivp(field, (t0, t0 + horizon), y0, method="DOP853", rtol=1e-13, atol=1e-13)
    return solution.y[:2, -1]


def _endpoints(build, start, horizon, steps, **oracle):
    """θ and t after n steps of ``build(horizon / n)`` on the quartic, for each n (one compilation)."""

    @jax.jit
    def endpoint(s, n):
        tx = build(s)

        def body(_, carry):
            params, state = carry
            updates, state = tx.update(jax.grad(quartic)(params), state, params, **oracle)
            return optax.apply_updates(params, updates), state

        params, state = jax.lax.fori_loop(0, n, body, (start, tx.init(start)))
        return params, state.t

    return [tuple(np.asarray(x) for x in endpoint(horizon / n, n)) for n in steps]


ORDER_TABLEAUS = [tableaus.EULER, tableaus.HEUN, tableaus.RALSTON, tableaus.RK3, tableaus.RK4]
START = (0.3, -0.6)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("tableau", ORDER_TABLEAUS, ids=lambda t: t.name)
def test_runge_kutta_order_generic_flow(tableau):
    t0, horizon, eps, v0 = 0.25, 1.0, 0.5, 0.2
    reference = _reference_flow(SMOOTH_NP, eps, t0, horizon, np.array(START), np.zeros(2), np.full(2, v0))
    steps = [8, 16, 32, 64]
    build = lambda s: flowopt.adaptive_flow(  # noqa: E731
        **SMOOTH, learning_rate=s, eps=0.0, eps_root=eps, integrator=tableau, initial_time=t0, initial_v=v0
    )
    ends = _endpoints(build, jnp.asarray(START), horizon, steps, value_fn=quartic)
    errors = [np.linalg.norm(theta - reference) for theta, _ in ends]
    assert all(abs(float(t) - (t0 + horizon)) < 1e-12 for _, t in ends)
    slope = loglog_slope([horizon / n for n in steps], errors)
    assert abs(slope - tableau.order) < 0.25, (slope, errors)


@pytest.mark.usefixtures("x64")
def test_seed_euler_scheme_is_first_order():
    """Eq. 3 converges to the same flow (m₀ = 0, v₀ = 0.2 at t₀) with order one."""
    t0, horizon, eps, v0 = 0.25, 1.0, 0.5, 0.2
    reference = _reference_flow(SMOOTH_NP, eps, t0, horizon, np.array(START), np.zeros(2), np.full(2, v0))
    steps = [16, 32, 64, 128]
    build = lambda s: flowopt.adaptive_flow(  # noqa: E731
        **SMOOTH, learning_rate=s, eps=0.0, eps_root=eps, initial_time=t0, initial_v=v0
    )
    ends = _endpoints(build, jnp.asarray(START), horizon, steps)
    errors = [np.linalg.norm(theta - reference) for theta, _ in ends]
    assert abs(loglog_slope([horizon / n for n in steps], errors) - 1.0) < 0.15, errors


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("tableau", [tableaus.HEUN, tableaus.RK4], ids=lambda t: t.name)
def test_runge_kutta_order_adam_flow(tableau):
    """Adam's flow with λ fixed (the ODE) and the step s refined, from the seed's eq. 4 start."""
    lam, b1, b2, eps, horizon = 0.1, 0.9, 0.999, 0.1, 1.0
    g1 = lambda t: (1 - b1) / (lam * (1 - b1 ** (t / lam)))  # noqa: E731
    g2 = lambda t: (1 - b2) / (lam * (1 - b2 ** (t / lam)))  # noqa: E731
    grad0 = quartic_grad_np(np.array(START))
    reference = _reference_flow(dict(h=g1, r=g1, p=g2, q=g2), eps, lam, horizon, np.array(START), grad0, grad0**2)
    steps = [16, 32, 64, 128]
    build = lambda s: flowopt.adam_flow(s, b1, b2, 0.0, eps, integrator=tableau, reference_learning_rate=lam)  # noqa: E731
    ends = _endpoints(build, jnp.asarray(START), horizon, steps, value_fn=quartic)
    errors = [np.linalg.norm(theta - reference) for theta, _ in ends]
    slope = loglog_slope([horizon / n for n in steps], errors)
    assert abs(slope - tableau.order) < 0.25, (slope, errors)


@pytest.mark.usefixtures("x64")
def test_heavy_ball_runge_kutta_solves_the_second_order_ode():
    """heavy_ball_flow(lr, β) integrates θ'' + γθ' + ∇f = 0, γ = (1-β)/sqrt(lr), θ'(0) = 0, t = k sqrt(lr)."""
    lr, momentum, n = 0.01, 0.9, 40
    gamma, s = (1 - momentum) / math.sqrt(lr), math.sqrt(lr)

    def field(t, y):
        return np.concatenate([y[2:], -gamma * y[2:] - quartic_grad_np(y[:2])])

    exact = scipy.integrate.solve_ivp(field, (0, n * s), np.array([*START, 0.0, 0.0]), method="DOP853", rtol=1e-13, atol=1e-13)
    tx = flowopt.heavy_ball_flow(lr, momentum, integrator=tableaus.RK4)
    path, _ = _trajectory(tx, jnp.asarray(START), quartic, n, grad_fn=jax.grad(quartic))
    np.testing.assert_allclose(path[-1], exact.y[:2, -1], atol=1e-6)


def test_runge_kutta_counts_oracle_calls_and_euler_tableau_needs_none():
    params = jnp.asarray(X0)
    _, state = _trajectory(flowopt.adam_flow(0.01, integrator=tableaus.RK4), params, quartic, 7, value_fn=quartic)
    assert int(state.oracle_evals) == 3 * 7
    assert int(flowopt.oracle_evaluations(state)) == 3 * 7
    _, state = _trajectory(flowopt.adam_flow(0.01, integrator=tableaus.EULER), params, quartic, 7)
    assert int(state.oracle_evals) == 0
    _, state = _trajectory(flowopt.adam_flow(0.01, integrator=tableaus.DOPRI5), params, quartic, 2, value_fn=quartic)
    assert int(state.oracle_evals) == 5 * 2  # the FSAL stage has weight zero and is skipped


def test_runge_kutta_without_oracle_raises():
    tx = flowopt.rmsprop_flow(0.01, integrator=tableaus.HEUN)
    params = jnp.asarray(X0)
    with pytest.raises(ValueError, match="needs an oracle"):
        tx.update(jax.grad(quartic)(params), tx.init(params), params)


def test_state_layout():
    params = {"a": jnp.ones(3), "b": jnp.ones((2, 2))}
    adam = flowopt.adam_flow(0.1).init(params)
    assert isinstance(adam, flowopt.IntegratorState) and isinstance(adam.stage_state, flowopt.AdaptiveFlowState)
    assert jax.tree.structure(adam.m) == jax.tree.structure(params) and adam.v["b"].shape == (2, 2)
    assert adam.count.dtype == jnp.int32 and adam.oracle_evals.dtype == jnp.int32 and adam.t.shape == ()
    assert flowopt.rmsprop_flow(0.1).init(params).m is None
    assert flowopt.heavy_ball_flow(0.1).init(params).v is None
    np.testing.assert_array_equal(flowopt.adagrad_flow(0.1, initial_accumulator_value=0.3).init(params).v["a"], np.float32(0.3))


def test_jit_compiles_once_and_ignores_extra_args_and_chains():
    tx = optax.chain(optax.clip_by_global_norm(10.0), flowopt.adam_flow(0.01, integrator=tableaus.HEUN))
    params = jnp.asarray(X0)
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(None)
        updates, state = tx.update(jax.grad(quartic)(params), state, params, value_fn=quartic, unused=1)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(5):
        params, state = step(params, state)
    assert len(traces) == 1
    assert quartic(params) < quartic(jnp.asarray(X0))


# ---- convergence condition and bad input ----


def test_adam_convergence_condition_and_warning():
    assert flowopt.adam_flow_converges(0.9, 0.999)
    assert not flowopt.adam_flow_converges(0.99, 0.5)  # 3.5 < 3.96
    with pytest.warns(UserWarning, match="3 \\+ b2 > 4 b1"):
        flowopt.adam_flow(0.01, b1=0.99, b2=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flowopt.adam_flow(0.01, b1=0.9, b2=0.999)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: flowopt.adam_flow(0.01, eps=0.0), "eps and eps_root cannot both be 0"),
        (lambda: flowopt.adam_flow(0.01, eps=-1e-8), "eps must be non-negative"),
        (lambda: flowopt.adam_flow(0.01, eps_root=-1e-8), "eps_root must be non-negative"),
        (lambda: flowopt.adam_flow(0.01, eps_root=float("inf")), "eps_root must be a finite real number"),
        (lambda: flowopt.rmsprop_flow(0.01, eps=0.0), "eps must be a finite positive number"),
        (lambda: flowopt.rmsprop_flow(0.01, eps_in_sqrt=1), "eps_in_sqrt must be True or False"),
        (lambda: flowopt.adagrad_flow(0.1, eps=-1.0), "eps must be a finite positive number"),
        (lambda: flowopt.adam_flow(0.0), "learning_rate is 0, which cannot serve as the reference rate"),
        (lambda: flowopt.heavy_ball_flow(-0.1), "learning_rate must be finite and non-negative"),
        (lambda: flowopt.adagrad_flow(float("nan")), "learning_rate must be finite and non-negative"),
        (lambda: flowopt.adam_flow(0.01, b1=1.0), r"b1 must be a real number in \(0, 1\)"),
        (lambda: flowopt.adam_flow(0.01, b2=0.0), r"b2 must be a real number in \(0, 1\)"),
        (lambda: flowopt.adam_flow(0.01, b1=-0.1), r"b1 must be a real number in \(0, 1\)"),
        (lambda: flowopt.rmsprop_flow(0.01, decay=1.5), r"decay must be a real number in \(0, 1\)"),
        (lambda: flowopt.heavy_ball_flow(0.01, momentum=1.0), r"momentum must be a real number in \(0, 1\)"),
        (lambda: flowopt.adam_flow_converges(0.9, 1.0), r"b2 must be a real number in \(0, 1\)"),
        (lambda: flowopt.adaptive_flow(lambda t: jnp.ones(2), 1.0, None, None, 0.1), r"h\(t\) must return a scalar"),
        (lambda: flowopt.adaptive_flow(1.0, 1.0, 1.0, lambda t: jnp.ones((1, 1)), 0.1), r"q\(t\) must return a scalar"),
        (lambda: flowopt.adaptive_flow(1.0, None, None, None, 0.1), "give both h and r"),
        (lambda: flowopt.adaptive_flow(None, None, 1.0, None, 0.1), "give both p and q"),
        (lambda: flowopt.adaptive_flow(1.0, "fast", None, None, 0.1), "coefficient r must be a finite real number"),
        (lambda: flowopt.adaptive_flow(1.0, 1.0, None, None, 0.1, integrator="rk4"), "ButcherTableau"),
        (lambda: flowopt.adam_flow(optax.constant_schedule(0.0)), "no positive finite value.*reference_learning_rate"),
        (lambda: flowopt.adam_flow(0.1, integrator=tableaus.RK4, init_from_gradient=False), "not finite at the initial time"),
        (lambda: flowopt.nesterov_flow(0.1, integrator=tableaus.RK4), "not finite at the initial time"),
        (lambda: flowopt.adaptive_flow(1.0, 1.0, 1.0, 1.0, 0.1, initial_v=-1.0), "initial_v must be non-negative"),
    ],
)
def test_bad_input_raises_clear_value_error(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_coefficient_with_wrong_shape_under_a_different_dtype_raises_at_update():
    """Shape checks also run when the coefficients are traced inside update."""
    tx = flowopt.adaptive_flow(1.0, lambda t: jnp.ones(2) if t.dtype == jnp.float64 else 1.0, None, None, 0.1)
    with jax.enable_x64(True):
        params = jnp.asarray(X0)
        with pytest.raises(ValueError, match=r"r\(t\) must return a scalar"):
            tx.update(jax.grad(quartic)(params), tx.init(params), params)
