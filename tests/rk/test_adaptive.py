"""Adaptive embedded Runge–Kutta pairs: accuracy against exact flows, diffrax, and the optimizer form."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.integrate
import scipy.linalg

import flowopt
from flowopt import tableaus
from flowopt.rk.adaptive import adaptive_step, attempt_oracle_calls, stage_stiffness
from flowopt.rk.stages import gradient_stages, needed_stages
from flowopt.rk.step_size import PIController
from tests.convergence import loglog_slope
from tests.problems import random_quadratic

I_CONTROL = dict(pcoeff=0.0, icoeff=1.0)
PI_CONTROL = dict(pcoeff=0.4, icoeff=0.3)


def stiff_quadratic(dim: int = 12, condition: float = 1e4, seed: int = 0):
    """``f(θ) = ½ θᵀAθ`` with eigenvalues log-spaced in ``[1, condition]`` and a random basis."""
    return random_quadratic(np.logspace(0, np.log10(condition), dim), seed)


def integrate(tableau, controller, grad, y0, t_end, h0):
    """Adaptive flow to ``t_end`` with FSAL reuse; returns the end point and the attempt counts."""

    def body(carry):
        t, y, k1, state, accepted, rejected = carry
        h = jnp.minimum(state.step_size, t_end - t)
        step = adaptive_step(tableau, controller, grad, y, k1, state._replace(step_size=h))
        k_next = jnp.where(step.accepted, step.last_gradient, k1) if tableau.fsal else grad(y + step.increment)
        return (
            t + jnp.where(step.accepted, h, 0.0),
            y + step.increment,
            k_next,
            step.state,
            accepted + step.accepted,
            rejected + ~step.accepted,
        )

    @jax.jit
    def run(y0):
        init = (jnp.zeros([], y0.dtype), y0, grad(y0), controller.init(h0, y0.dtype), 0, 0)
        return jax.lax.while_loop(lambda c: c[0] < t_end, body, init)

    _, y, _, _, accepted, rejected = run(jnp.asarray(y0))
    return np.asarray(y), int(accepted), int(rejected)


def adaptive_gradient_evals(tableau, accepted, rejected):
    """With FSAL (or the next k1 computed once) an attempt costs the stages after the first."""
    return 1 + attempt_oracle_calls(tableau) * (accepted + rejected)


def fixed_step_runner(tableau, grad, y0):
    """``(h, n) -> θ_n`` for the fixed-step optimizer of ``tableau``, compiled once."""

    @jax.jit
    def run(h, steps):
        tx = flowopt.runge_kutta(tableau, h)

        def body(_, carry):
            y, state = carry
            updates, state = tx.update(grad(y), state, y, grad_fn=grad)
            return optax.apply_updates(y, updates), state

        return jax.lax.fori_loop(0, steps, body, (y0, tx.init(y0)))[0]

    return run


def best_fixed_steps(tableau, grad, y0, exact, t_end, target):
    """The fewest fixed steps on ``[0, t_end]`` whose error is at most ``target`` (bisection)."""
    run = fixed_step_runner(tableau, grad, jnp.asarray(y0))

    def ok(n):
        with np.errstate(over="ignore", invalid="ignore"):
            error = np.linalg.norm(np.asarray(run(t_end / n, n)) - exact)
        return bool(np.isfinite(error) and error <= target)

    lo, hi = 1, 2
    while not ok(hi):
        lo, hi = hi, 2 * hi
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def fixed_gradient_evals(tableau, steps):
    return steps * sum(needed_stages(tableau, (tableau.b,)))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    "tableau,solver,coefficients",
    [(tableaus.BOSH3, diffrax.Bosh3, I_CONTROL), (tableaus.DOPRI5, diffrax.Dopri5, PI_CONTROL)],
    ids=["bosh3-I", "dopri5-PI"],
)
def test_accepted_steps_match_diffrax(tableau, solver, coefficients):
    a, y0 = stiff_quadratic()
    t_end, rtol, atol, h0 = 0.1, 1e-5, 1e-7, 1e-4
    controller = PIController(rtol=rtol, atol=atol, **coefficients)
    matrix = jnp.asarray(a)
    y, accepted, rejected = integrate(tableau, controller, lambda p: matrix @ p, y0, t_end, h0)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, p, args: -matrix @ p),
        solver(),
        0.0,
        t_end,
        h0,
        jnp.asarray(y0),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, **coefficients),
        max_steps=10_000,
    )
    reference = int(solution.stats["num_accepted_steps"])
    assert abs(accepted - reference) <= 0.3 * reference, (accepted, reference)
    exact = scipy.linalg.expm(-t_end * a) @ y0
    assert np.linalg.norm(y - exact) < 1e-4 * np.linalg.norm(y0)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("tableau", [tableaus.BOSH3, tableaus.DOPRI5], ids=["bosh3", "dopri5"])
def test_global_error_tracks_tolerance(tableau):
    a, y0 = stiff_quadratic()
    t_end = 0.1
    exact = scipy.linalg.expm(-t_end * a) @ y0
    matrix = jnp.asarray(a)
    rtols = np.array([1e-3, 1e-5, 1e-7])
    errors = []
    for rtol in rtols:
        y, _, _ = integrate(tableau, PIController(rtol=rtol, atol=1e-2 * rtol), lambda p: matrix @ p, y0, t_end, 1e-4)
        errors.append(np.linalg.norm(y - exact))
    errors = np.array(errors)
    assert np.all(np.diff(errors) < 0), errors
    slope = loglog_slope(rtols, errors)
    assert 0.5 < slope < 1.5, (slope, errors)
    assert np.all(errors < 100 * rtols * np.linalg.norm(y0)), errors


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("tableau", [tableaus.BOSH3, tableaus.DOPRI5], ids=["bosh3", "dopri5"])
def test_stiff_quadratic_costs_about_the_best_fixed_step(tableau):
    """On ``½θᵀAθ`` with κ = 1e4 every explicit method is limited by stability at ``h ≈ c/λ_max``.

    The best fixed step sits just inside that limit; the PI controller finds
    it by itself and rides it with few rejections, paying a few percent more
    gradients (it cannot pay fewer: the admissible step does not change along
    a quadratic's flow). The I controller, by contrast, rejects ~25%.
    """
    a, y0 = stiff_quadratic()
    t_end = 1.0
    exact = scipy.linalg.expm(-t_end * a) @ y0
    matrix = jnp.asarray(a)
    grad = lambda p: matrix @ p
    y, accepted, rejected = integrate(tableau, PIController(rtol=1e-4, atol=1e-6), grad, y0, t_end, 1e-4)
    error = np.linalg.norm(y - exact)
    adaptive = adaptive_gradient_evals(tableau, accepted, rejected)
    fixed = fixed_gradient_evals(tableau, best_fixed_steps(tableau, grad, y0, exact, t_end, error))
    assert rejected < 0.05 * accepted
    assert adaptive < 1.1 * fixed, (adaptive, fixed)


def fading_stiffness():
    """``f(θ) = Σ λ_i θ_i⁴ / 4``, λ log-spaced in [1, 1e4]: the Hessian ``3λθ²`` decays along the flow.

    The exact flow is ``θ_i(t) = θ_i(0) / sqrt(1 + 2 λ_i θ_i(0)² t)``.
    """
    lam = np.logspace(0, 4, 8)
    y0 = np.linspace(0.5, 1.0, 8)
    exact = lambda t: y0 / np.sqrt(1 + 2 * lam * y0**2 * t)
    return jnp.asarray(lam), y0, exact


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("tableau", [tableaus.BOSH3, tableaus.DOPRI5], ids=["bosh3", "dopri5"])
def test_fewer_gradients_than_the_best_fixed_step_when_stiffness_fades(tableau):
    lam, y0, exact = fading_stiffness()
    t_end = 1.0
    grad = lambda p: lam * p**3
    y, accepted, rejected = integrate(tableau, PIController(rtol=1e-5, atol=1e-7), grad, y0, t_end, 1e-4)
    error = np.linalg.norm(y - exact(t_end))
    assert error < 1e-4
    adaptive = adaptive_gradient_evals(tableau, accepted, rejected)
    fixed = fixed_gradient_evals(tableau, best_fixed_steps(tableau, grad, y0, exact(t_end), t_end, error))
    assert adaptive < 0.2 * fixed, (adaptive, fixed)


@pytest.mark.usefixtures("x64")
def test_heun_euler_pair_reaches_the_flow():
    lam, y0, exact = fading_stiffness()
    field = lambda p: lam * p**3
    errors = [
        np.linalg.norm(integrate(tableaus.HEUN_EULER, PIController(rtol=r, atol=r), field, y0, 1.0, 1e-4)[0] - exact(1.0))
        for r in (1e-3, 1e-5)
    ]
    assert errors[1] < errors[0] < 1e-2


@pytest.mark.usefixtures("x64")
def test_accepted_steps_and_errors_match_scipy_rk23():
    """scipy's RK23 is Bosh3 with an I controller (safety 0.9, factors in [0.2, 10]): the same steps, the same error."""
    lam, y0, exact = fading_stiffness()
    rtol, atol, h0 = 1e-5, 1e-7, 1e-4
    field = lambda p: lam * p**3
    y, accepted, _ = integrate(tableaus.BOSH3, PIController(rtol=rtol, atol=atol, **I_CONTROL), field, y0, 1.0, h0)
    reference = scipy.integrate.solve_ivp(
        lambda t, p: -np.asarray(lam) * p**3, (0.0, 1.0), y0, method="RK23", rtol=rtol, atol=atol, first_step=h0
    )
    error, reference_error = np.linalg.norm(y - exact(1.0)), np.linalg.norm(reference.y[:, -1] - exact(1.0))
    steps = len(reference.t) - 1
    assert abs(accepted - steps) <= 0.02 * steps, (accepted, steps)
    assert error == pytest.approx(reference_error, rel=0.1)


@pytest.mark.usefixtures("x64")
def test_stage_stiffness_is_h_times_the_curvature_on_a_quadratic():
    """``hρ̂`` is ``hλ`` exactly in one dimension and at most ``hλ_max`` on any quadratic."""
    for tableau in (tableaus.HEUN_EULER, tableaus.BOSH3, tableaus.DOPRI5):
        h = 0.3
        ks = gradient_stages(tableau, lambda p: 7.0 * p, jnp.ones(1), 7.0 * jnp.ones(1), h, (tableau.b, tableau.b_error))
        assert float(stage_stiffness(tableau, ks)) == pytest.approx(7.0 * h, rel=1e-12)
        a, y0 = stiff_quadratic(dim=6, condition=1e2)
        matrix = jnp.asarray(a)
        ks = gradient_stages(tableau, lambda p: matrix @ p, jnp.asarray(y0), matrix @ y0, 0.01, (tableau.b, tableau.b_error))
        assert 0 < float(stage_stiffness(tableau, ks)) <= 0.01 * 1e2 * (1 + 1e-9)


def relu_classifier():
    """An MLP 784-128-10 with softmax cross-entropy on 256 inputs in [0, 1) labelled by a random linear teacher.

    A stand-in for a convolutional net on MNIST: ReLU units and saturating
    cross-entropy keep every gradient bounded however far a step goes.
    """
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.uniform(keys[0], (256, 784))
    y = jnp.argmax(x @ jax.random.normal(keys[1], (784, 10)), axis=-1)
    params = {
        "w0": jax.random.normal(keys[2], (784, 128)) / np.sqrt(784),
        "b0": jnp.zeros(128),
        "w1": jax.random.normal(keys[3], (128, 10)) / np.sqrt(128),
        "b1": jnp.zeros(10),
    }

    def loss(p):
        logits = jax.nn.relu(x @ p["w0"] + p["b0"]) @ p["w1"] + p["b1"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return params, loss


def test_stability_check_stops_a_diverging_classifier():
    """rtol = atol = 1e-2 from h = 1e-3: without the check the steps run past the stability interval, ε stays
    below 1 and the loss explodes; with it the loss falls."""
    params, loss = relu_classifier()

    def train(stability_limit):
        tx = flowopt.adaptive_runge_kutta(
            tableaus.BOSH3, learning_rate=1e-3, rtol=1e-2, atol=1e-2, stability_limit=stability_limit
        )

        def step(carry, _):
            p, state = carry
            updates, state = tx.update(jax.grad(loss)(p), state, p, value_fn=loss)
            p = optax.apply_updates(p, updates)
            return (p, state), (loss(p), state.error, state.stiffness, state.last_step_size)

        return jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), length=80))(params)

    start = float(loss(params))
    (_, classical), (losses, errors, stiffness, _) = train(None)
    assert float(losses.max()) > 1e3 * start and int(classical.rejected) < 5 and float(errors.max()) < 1
    assert float(jnp.abs(stiffness).max()) == 0  # not measured
    (_, checked), (losses, _, stiffness, sizes) = train(1.2)
    assert float(losses[-1]) < 0.5 * start and float(losses.max()) <= start
    assert int(checked.rejected) > 0 and float(sizes.max()) < 1.0
    assert float(stiffness[-30:].max()) > 0.5  # the steps ride at the stability interval


def quadratic_loss(a, dtype=jnp.float32):
    matrix = jnp.asarray(a, dtype)
    return lambda p: 0.5 * p @ matrix @ p


def jitted_update(tx, loss):
    return jax.jit(lambda grads, state, params: tx.update(grads, state, params, value_fn=loss))


def run_optimizer(tx, loss, params, steps):
    state = tx.init(params)
    update = jitted_update(tx, loss)
    history = []
    for _ in range(steps):
        updates, state = update(jax.grad(loss)(params), state, params)
        history.append((updates, state))
        params = optax.apply_updates(params, updates)
    return params, state, history


@pytest.mark.usefixtures("x64")
def test_optimizer_follows_the_pure_step_and_counts_honestly():
    a, y0 = stiff_quadratic(dim=6, condition=10.0)
    y0 = jnp.asarray(y0)
    loss = quadratic_loss(a, jnp.float64)
    tx = flowopt.adaptive_runge_kutta(tableaus.DOPRI5, learning_rate=0.5, rtol=1e-3, atol=1e-5)
    params, state, history = run_optimizer(tx, loss, y0, 40)

    controller = PIController(rtol=1e-3, atol=1e-5)
    grad = jax.grad(loss)
    pure = jax.jit(lambda p, s: adaptive_step(tableaus.DOPRI5, controller, grad, p, grad(p), s))
    p, s = y0, controller.init(0.5, jnp.float64)
    for _ in range(40):
        step = pure(p, s)
        p, s = p + step.increment, step.state
    np.testing.assert_allclose(params, p, rtol=1e-10, atol=1e-12)
    assert int(state.count) == 40
    assert int(state.accepted + state.rejected) == 40
    assert int(state.oracle_evals) == 6 * 40
    assert int(flowopt.oracle_evaluations(state)) == 6 * 40
    assert int(state.rejected) > 0
    for updates, s in history:
        if s.error >= 1:
            assert np.all(np.asarray(updates) == 0)
            assert s.controller.step_size < s.last_step_size
    assert float(state.time) == pytest.approx(sum(float(s.last_step_size) for _, s in history if s.error < 1), rel=1e-5)
    assert float(state.time) > 3.0
    assert loss(params) < 1e-2 * loss(y0)


def test_too_large_first_step_is_rejected_with_zero_updates():
    a, y0 = stiff_quadratic(dim=4, condition=1e2)
    loss = quadratic_loss(a)
    params = jnp.asarray(y0, jnp.float32)
    tx = flowopt.adaptive_runge_kutta(learning_rate=10.0, rtol=1e-3, atol=1e-6)
    updates, state = jitted_update(tx, loss)(jax.grad(loss)(params), tx.init(params), params)
    assert np.all(np.asarray(updates) == 0)
    assert int(state.rejected) == 1 and int(state.accepted) == 0
    assert float(state.controller.step_size) == pytest.approx(10.0 * 0.2)  # factormin


def test_retries_inside_one_call_reuse_the_incoming_gradient():
    a, y0 = stiff_quadratic(dim=4, condition=1e2)
    loss = quadratic_loss(a)
    params = jnp.asarray(y0, jnp.float32)
    tx = flowopt.adaptive_runge_kutta(tableaus.BOSH3, learning_rate=10.0, rtol=1e-3, atol=1e-6, max_attempts=20)
    updates, state = jitted_update(tx, loss)(jax.grad(loss)(params), tx.init(params), params)
    assert int(state.accepted) == 1 and int(state.rejected) >= 2
    assert int(state.count) == 1
    assert int(state.oracle_evals) == 3 * (1 + int(state.rejected))
    assert loss(params + updates) < loss(params)


def test_step_bounds_and_forced_acceptance_at_dtmin():
    a, y0 = stiff_quadratic(dim=4, condition=1e2)
    loss = quadratic_loss(a)
    params = jnp.asarray(y0, jnp.float32)
    tx = flowopt.adaptive_runge_kutta(learning_rate=1.0, rtol=1e-9, atol=1e-9, dtmin=1e-3, dtmax=5e-2)
    _, state, history = run_optimizer(tx, loss, params, 10)
    steps = np.array([float(s.last_step_size) for _, s in history])
    assert np.all(steps <= 5e-2 * (1 + 1e-6)) and np.all(steps >= 1e-3 * (1 - 1e-6))
    # The tolerance is unreachable: the step falls to dtmin, where attempts are accepted anyway.
    assert float(state.controller.step_size) == pytest.approx(1e-3)
    assert bool(history[-1][1].error > 1) and int(history[-1][1].accepted) > int(history[-2][1].accepted)

    tx = flowopt.adaptive_runge_kutta(learning_rate=1e-4, rtol=1e-1, atol=1e-1, dtmax=2e-2)
    _, state, _ = run_optimizer(tx, loss, params, 10)
    assert float(state.controller.step_size) == pytest.approx(2e-2)


def test_diagnostics_and_optax_conventions():
    a, y0 = stiff_quadratic(dim=4, condition=1e2)
    loss = quadratic_loss(a)
    params = jnp.asarray(y0, jnp.float32)
    tx = optax.chain(
        optax.clip_by_global_norm(1e3),
        flowopt.adaptive_runge_kutta(learning_rate=0.1, rtol=1e-3, atol=1e-6),
    )
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(5):
        value_fn = jax.tree_util.Partial(loss)
        updates, state = update(jax.grad(loss)(params), state, params, value_fn=value_fn, unused_extra=1)
        params = optax.apply_updates(params, updates)
    assert update._cache_size() == 1
    diagnostics = flowopt.step_diagnostics(state)
    assert set(diagnostics) >= {
        "step_size",
        "last_step_size",
        "error",
        "stiffness",
        "accepted",
        "rejected",
        "nonfinite",
        "time",
        "oracle_evals",
        "gradient_evals",
    }
    assert int(diagnostics["accepted"] + diagnostics["rejected"]) == 5
    assert int(diagnostics["oracle_evals"]) == 3 * 5
    assert int(diagnostics["gradient_evals"]) == 5 + 3 * 5
    logged = {key: float(value) for key, value in diagnostics.items()}
    assert logged["step_size"] > 0
    with pytest.raises(ValueError, match="no flowopt adaptive"):
        flowopt.step_diagnostics(optax.sgd(0.1).init(params))


def test_float64_state_follows_params():
    with jax.enable_x64(True):
        tx = flowopt.adaptive_runge_kutta(learning_rate=0.1, rtol=1e-3, atol=1e-6)
        state = tx.init(jnp.zeros(3, jnp.float64))
        assert state.controller.step_size.dtype == jnp.float64
    assert tx.init(jnp.zeros(3, jnp.bfloat16)).controller.step_size.dtype == jnp.float32


def test_minibatch_mode_bounds_and_smooths_the_step():
    rng = np.random.default_rng(0)
    features = jnp.asarray(rng.normal(size=(512, 8)) * np.logspace(0, 1, 8), jnp.float32)
    targets = features @ jnp.asarray(rng.normal(size=8), jnp.float32) + 0.1 * jnp.asarray(rng.normal(size=512), jnp.float32)

    def loss(p, batch):
        x, y = batch
        return 0.5 * jnp.mean((x @ p - y) ** 2)

    def train(tx, steps=150):
        def step(carry, key):
            params, state = carry
            idx = jax.random.choice(key, 512, (32,), replace=False)
            value_fn = jax.tree_util.Partial(loss, batch=(features[idx], targets[idx]))
            updates, state = tx.update(jax.grad(value_fn)(params), state, params, value_fn=value_fn)
            return (optax.apply_updates(params, updates), state), state.controller.step_size

        keys = jax.random.split(jax.random.PRNGKey(0), steps)
        (params, state), sizes = jax.jit(lambda: jax.lax.scan(step, (jnp.zeros(8), tx.init(jnp.zeros(8))), keys))()
        return params, state, np.asarray(sizes)

    options = dict(learning_rate=1e-3, rtol=1e-2, atol=1e-3)
    params, state, smooth = train(flowopt.minibatch_adaptive_runge_kutta(dtmin=1e-4, dtmax=0.05, **options))
    _, _, raw = train(flowopt.adaptive_runge_kutta(**options))
    assert np.all((smooth >= 1e-4 * 0.999) & (smooth <= 0.05 * 1.001))
    tail = slice(50, None)
    jitter = lambda s: np.std(np.diff(np.log(s[tail])))
    assert jitter(smooth) < 0.5 * jitter(raw), (jitter(smooth), jitter(raw))
    full = (features, targets)
    assert loss(params, full) < 0.05 * loss(jnp.zeros(8), full)
    with pytest.raises(ValueError, match="dtmax"):
        flowopt.minibatch_adaptive_runge_kutta(dtmin=1e-4, dtmax=None, **options)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(tableau=tableaus.RK4), "no error weights"),
        (dict(rtol=0.0), "rtol"),
        (dict(rtol=-1e-3), "rtol"),
        (dict(atol=0.0), "atol"),
        (dict(atol=float("nan")), "atol"),
        (dict(dtmin=1e-1, dtmax=1e-2), r"dtmin .* must not exceed dtmax"),
        (dict(dtmin=-1.0), "dtmin"),
        (dict(learning_rate=optax.constant_schedule(0.1)), "schedule"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(safety=1.5), "safety"),
        (dict(factormin=1.0), "factormin"),
        (dict(factormax=0.5), "factormax"),
        (dict(icoeff=0.0), "icoeff"),
        (dict(smoothing=1.0), "smoothing"),
        (dict(max_attempts=0), "max_attempts"),
        (dict(stability_limit=0.0), "stability_limit"),
        (dict(stability_limit=-1.0), "stability_limit"),
        (dict(stability_limit=float("inf")), "stability_limit"),
        (dict(stability_limit=True), "stability_limit"),
        (dict(stability_limit="1.2"), "stability_limit"),
        (dict(stability_limit=np.ones(2)), "stability_limit"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, message):
    options = dict(tableau=tableaus.BOSH3, learning_rate=0.1, rtol=1e-3, atol=1e-6) | kwargs
    tableau = options.pop("tableau")
    with pytest.raises(ValueError, match=message):
        flowopt.adaptive_runge_kutta(tableau, **options)


def test_missing_oracle_and_pure_step_without_error_weights():
    tx = flowopt.adaptive_runge_kutta(learning_rate=0.1, rtol=1e-3, atol=1e-6)
    params = jnp.ones(3)
    with pytest.raises(ValueError, match="needs an oracle"):
        tx.update(params, tx.init(params), params)
    controller = PIController(rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="no error weights"):
        adaptive_step(tableaus.HEUN, controller, lambda p: p, params, params, controller.init(0.1))


def test_stability_limit_may_be_a_traced_hyperparameter():
    a, y0 = stiff_quadratic(dim=4, condition=1e2)
    loss = quadratic_loss(a)
    params = jnp.asarray(y0, jnp.float32)
    make = optax.inject_hyperparams(flowopt.adaptive_runge_kutta, static_args=("tableau", "max_attempts"))
    options = dict(learning_rate=0.05, rtol=1e-3, atol=1e-6)
    injected = run_optimizer(make(tableau=tableaus.BOSH3, stability_limit=0.5, **options), loss, params, 10)[0]
    plain = run_optimizer(flowopt.adaptive_runge_kutta(tableaus.BOSH3, stability_limit=0.5, **options), loss, params, 10)[0]
    loose = run_optimizer(flowopt.adaptive_runge_kutta(tableaus.BOSH3, stability_limit=1e6, **options), loss, params, 10)[0]
    np.testing.assert_allclose(np.asarray(injected), np.asarray(plain), rtol=1e-6, atol=1e-7)
    assert np.abs(np.asarray(injected) - np.asarray(loose)).max() > 1e-3  # the injected limit took effect
