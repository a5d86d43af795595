"""flowopt integrators inside optax's wrappers: MultiSteps, masked, multi_transform, lookahead, apply_if_finite, clipping.

Each wrapper first reproduces what went wrong (where it can still be observed), then checks the
supported form against a reference computed without the wrapper.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flowopt

# --- a small logistic regression, split into micro-batches --------------------------------------

_X = jax.random.normal(jax.random.key(0), (16, 3))
_Y = jnp.sign(_X @ jnp.array([1.0, -2.0, 0.5]) + 0.3 * jax.random.normal(jax.random.key(1), (16,)))
_W0 = jnp.array([0.5, 0.5, -0.5])
_K = 4


def _logistic(w, batch):
    x, y = batch
    return jnp.mean(jnp.log1p(jnp.exp(-y * (x @ w))))


def _full_loss(w):
    return _logistic(w, (_X, _Y))


def _microbatches():
    return (_X.reshape(_K, -1, 3), _Y.reshape(_K, -1))


def _rk4_step(w, lr=2.0):
    tx = flowopt.rk4(lr)
    updates, _ = tx.update(jax.grad(_full_loss)(w), tx.init(w), w, value_fn=_full_loss)
    return updates


# --- optax.MultiSteps ---------------------------------------------------------------------------


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
    "build",
    [
        lambda: flowopt.rk4(2.0),
        lambda: flowopt.check_oracle(flowopt.rk4(2.0)),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), flowopt.bdf(2, 0.5, 3)),
    ],
)
def test_multisteps_refuses_a_method_that_calls_the_oracle(build, jit):
    """MultiSteps would hand rk4 the mean gradient but the last micro-batch's oracle: refused, naming the remedy.

    (Measured before the refusal: updates (0.18, -0.57, 0.34) against (0.07, -0.72, 0.34) for rk4 on the mean loss.)
    """
    tx = optax.MultiSteps(build(), every_k_schedule=_K)
    state = tx.init(_W0)
    xs, ys = _microbatches()
    batch = (xs[0], ys[0])

    def update(w, state):
        return tx.update(jax.grad(_logistic)(w, batch), state, w, value_fn=lambda v: _logistic(v, batch))

    with pytest.raises(ValueError, match="inside optax.MultiSteps.*flowopt.accumulated_oracle"):
        (jax.jit(update) if jit else update)(_W0, state)


def test_multisteps_accepts_a_method_without_oracle():
    """Euler needs no oracle: MultiSteps(euler) is MultiSteps(sgd)."""
    xs, ys = _microbatches()
    results = []
    for tx in (optax.MultiSteps(flowopt.euler(2.0), every_k_schedule=_K), optax.MultiSteps(optax.sgd(2.0), every_k_schedule=_K)):
        state = tx.init(_W0)
        for j in range(_K):
            batch = (xs[j], ys[j])
            updates, state = tx.update(jax.grad(_logistic)(_W0, batch), state, _W0, value_fn=lambda w, b=batch: _logistic(w, b))
        results.append(updates)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)
    assert float(jnp.max(jnp.abs(results[0]))) > 0


def test_accumulated_oracle_is_rk4_on_the_mean_loss():
    tx = flowopt.rk4(2.0)

    @jax.jit
    def step(w, state, oracle):
        loss, grads = oracle.value_and_grad(w)
        updates, state = tx.update(grads, state, w, grad_fn=oracle)
        return w + updates, state, loss

    w, state = _W0, tx.init(_W0)
    reference = _W0
    for _ in range(3):
        oracle = flowopt.accumulated_oracle(_logistic, _microbatches())
        w, state, loss = step(w, state, oracle)
        np.testing.assert_allclose(float(loss), float(_full_loss(reference)), rtol=1e-6)
        reference = reference + _rk4_step(reference)
        np.testing.assert_allclose(np.asarray(w), np.asarray(reference), atol=1e-6)
    assert int(flowopt.oracle_evaluations(state)) == 3 * 3
    assert step._cache_size() == 1  # the oracle is a pytree of its micro-batches: new data, same program
    np.testing.assert_allclose(np.asarray(oracle(_W0)), np.asarray(jax.grad(_full_loss)(_W0)), atol=1e-7)


def test_accumulated_oracle_scans_one_microbatch_at_a_time():
    oracle = flowopt.accumulated_oracle(_logistic, _microbatches())
    jaxpr = jax.make_jaxpr(oracle)(_W0)
    scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == _K


def test_accumulated_oracle_follows_the_complex_convention():
    z = jnp.array([1.0 + 2.0j, -0.5j])
    data = jnp.arange(6.0).reshape(3, 2)
    loss = lambda p, b: jnp.sum(jnp.abs(p - b) ** 2)
    mean = lambda p: jnp.mean(jnp.stack([loss(p, b) for b in data]))
    grads = flowopt.accumulated_oracle(loss, data)(z)
    np.testing.assert_allclose(np.asarray(grads), np.conj(np.asarray(jax.grad(mean)(z))), rtol=1e-6)


@pytest.mark.parametrize(
    "loss_fn, microbatches, match",
    [
        ("loss", (_X, _Y), "loss_fn must be a function"),
        (_logistic, (), "microbatches holds no arrays"),
        (_logistic, (_X, 1.0), r"the leaf at \[1\] of microbatches is float"),
        (_logistic, (_X, jnp.float32(1.0)), r"the leaf at \[1\] of microbatches is a scalar"),
        (_logistic, (_X.reshape(4, 4, 3), _Y.reshape(8, 2)), "the same leading size"),
        (_logistic, (_X[:0], _Y[:0]), "the same leading size k ≥ 1"),
    ],
)
def test_accumulated_oracle_bad_input(loss_fn, microbatches, match):
    with pytest.raises(ValueError, match=match):
        flowopt.accumulated_oracle(loss_fn, microbatches)


def test_accumulated_oracle_checks_the_loss():
    oracle = flowopt.accumulated_oracle(lambda w, b: b[0] @ w, _microbatches())
    with pytest.raises(ValueError, match="accumulated_oracle: value_fn must return a scalar loss"):
        oracle(_W0)


# --- optax.masked and optax.multi_transform -----------------------------------------------------


def _coupled(p):
    return jnp.sum(jnp.cos(p["a"]) * p["b"] ** 2) + 0.5 * jnp.sum(p["a"] ** 2) + 0.1 * jnp.sum(p["b"] ** 4)


_P0 = {"a": jnp.array([0.3, -1.0]), "b": jnp.array([1.0, 2.0])}
_LABELS = {"a": "integrator", "b": "other"}

_ROUTES = {
    "rk4": lambda: flowopt.rk4(0.1),
    "bdf": lambda: flowopt.bdf(2, 0.5, 3),
    "adaptive_runge_kutta": lambda: flowopt.adaptive_runge_kutta(learning_rate=0.1, rtol=1e-3, atol=1e-3),
    "adam_flow[heun]": lambda: flowopt.adam_flow(0.1, integrator=flowopt.tableaus.HEUN),
}


def _sub_problem_steps(make, steps):
    """The integrator alone on θ_a, with θ_b held at its initial value."""
    sub = lambda a: _coupled({"a": a, "b": _P0["b"]})
    tx, a = make(), _P0["a"]
    state = tx.init(a)
    for _ in range(steps):
        updates, state = tx.update(jax.grad(sub)(a), state, a, value_fn=sub)
        a = a + updates
    return a


@pytest.mark.parametrize("route", list(_ROUTES))
def test_masked_integrator_without_full_params_names_it(route):
    """Without full_params value_fn would receive MaskedNode leaves; every route names what to pass."""
    tx = optax.masked(_ROUTES[route](), {"a": True, "b": False})
    with pytest.raises(ValueError, match=r"optax.MaskedNode.*full_params=params"):
        tx.update(jax.grad(_coupled)(_P0), tx.init(_P0), _P0, value_fn=_coupled)


@pytest.mark.parametrize("route", list(_ROUTES))
def test_multi_transform_with_a_frozen_part_is_the_integrator_on_the_sub_problem(route):
    tx = optax.multi_transform({"integrator": _ROUTES[route](), "other": optax.set_to_zero()}, _LABELS)
    step = jax.jit(lambda p, s: tx.update(jax.grad(_coupled)(p), s, p, value_fn=_coupled, full_params=p))
    p, state = _P0, tx.init(_P0)
    for _ in range(3):
        updates, state = step(p, state)
        p = optax.apply_updates(p, updates)
    np.testing.assert_array_equal(np.asarray(p["b"]), np.asarray(_P0["b"]))
    np.testing.assert_allclose(np.asarray(p["a"]), np.asarray(_sub_problem_steps(_ROUTES[route], 3)), rtol=1e-6, atol=1e-7)


def test_masked_rk4_transforms_its_leaves_and_passes_the_others_through():
    tx = optax.masked(flowopt.rk4(0.1), {"a": True, "b": False})
    grads, expected = jax.grad(_coupled)(_P0), _sub_problem_steps(_ROUTES["rk4"], 1)
    for oracle in (dict(value_fn=_coupled), dict(grad_fn=jax.grad(_coupled))):
        updates, state = tx.update(grads, tx.init(_P0), _P0, full_params=_P0, **oracle)
        np.testing.assert_allclose(np.asarray(_P0["a"] + updates["a"]), np.asarray(expected), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(updates["b"]), np.asarray(grads["b"]))  # optax.masked's pass-through
        assert int(flowopt.oracle_evaluations(state)) == 3


def test_multi_transform_rk4_and_sgd_on_a_separable_quadratic_is_exact():
    """θ_a follows RK4's stability polynomial R(-hλ_a), θ_b gradient descent's 1 - ηλ_b."""
    lam_a, lam_b, h, eta = 3.0, 2.0, 0.2, 0.1
    loss = lambda p: 0.5 * lam_a * jnp.sum(p["a"] ** 2) + 0.5 * lam_b * jnp.sum(p["b"] ** 2)
    tx = optax.multi_transform({"integrator": flowopt.rk4(h), "other": optax.sgd(eta)}, _LABELS)
    p, state = _P0, tx.init(_P0)
    for _ in range(5):
        updates, state = tx.update(jax.grad(loss)(p), state, p, value_fn=loss, full_params=p)
        p = optax.apply_updates(p, updates)
    z = -h * lam_a
    rk4_factor = 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24
    np.testing.assert_allclose(np.asarray(p["a"]), np.asarray(_P0["a"]) * rk4_factor**5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(p["b"]), np.asarray(_P0["b"]) * (1 - eta * lam_b) ** 5, rtol=1e-6)


def test_train_state_passes_full_params():
    tx = optax.multi_transform({"integrator": flowopt.rk4(0.1), "other": optax.set_to_zero()}, _LABELS)
    state = flowopt.TrainState.create(apply_fn=_coupled, params=_P0, tx=tx)
    state = state.apply_gradients(grads=jax.grad(_coupled)(state.params), value_fn=_coupled)
    np.testing.assert_allclose(np.asarray(state.params["a"]), np.asarray(_sub_problem_steps(_ROUTES["rk4"], 1)), rtol=1e-6)


def test_masked_full_params_that_do_not_fit_are_named():
    tx = optax.masked(flowopt.rk4(0.1), {"a": True, "b": False})
    grads, state = jax.grad(_coupled)(_P0), tx.init(_P0)
    with pytest.raises(ValueError, match="full_params has structure"):
        tx.update(grads, state, _P0, value_fn=_coupled, full_params={"a": _P0["a"]})
    with pytest.raises(ValueError, match=r"full_params\['a'\] has shape \(3,\)"):
        tx.update(grads, state, _P0, value_fn=_coupled, full_params={"a": jnp.zeros(3), "b": _P0["b"]})
    masking = optax.masked(flowopt.rk4(0.1), {"a": True, "b": False}, mask_compatible_extra_args=True)
    with pytest.raises(ValueError, match="mask_compatible_extra_args"):
        masking.update(grads, masking.init(_P0), _P0, value_fn=_coupled, full_params=_P0)


# --- optax.lookahead ----------------------------------------------------------------------------


def _quadratic(p):
    return 0.5 * jnp.sum(jnp.array([1.0, 4.0, 9.0]) * p**2)


def test_optax_lookahead_gives_the_fast_optimizer_no_oracle():
    """optax.lookahead passes no oracle to its fast optimizer: a TypeError, or in a chain a missing oracle."""
    params = optax.LookaheadParams.init_synced(_W0)
    grads = jax.grad(_quadratic)(params.fast)
    tx = optax.lookahead(flowopt.rk4(0.1), sync_period=2, slow_step_size=0.5)
    with pytest.raises(TypeError, match="value_fn"):
        tx.update(grads, tx.init(params), params, value_fn=_quadratic)
    chained = optax.chain(tx)
    with pytest.raises(ValueError, match="oracle"):
        chained.update(grads, chained.init(params), params, value_fn=_quadratic)


def test_lookahead_of_euler_is_optax_lookahead_of_sgd():
    ours = flowopt.lookahead(flowopt.euler(0.1), sync_period=3, slow_step_size=0.5, reset_state=True)
    theirs = optax.lookahead(optax.sgd(0.1), sync_period=3, slow_step_size=0.5, reset_state=True)
    a = b = optax.LookaheadParams.init_synced(_W0)
    sa, sb = ours.init(a), theirs.init(b)
    for _ in range(7):
        ua, sa = ours.update(jax.grad(_quadratic)(a.fast), sa, a)
        ub, sb = theirs.update(jax.grad(_quadratic)(b.fast), sb, b)
        a, b = optax.apply_updates(a, ua), optax.apply_updates(b, ub)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_lookahead_of_rk4_steps_fast_params_with_the_oracle_and_syncs():
    sync, alpha = 3, 0.5
    tx = flowopt.lookahead(flowopt.rk4(0.1), sync_period=sync, slow_step_size=alpha)
    step = jax.jit(lambda p, s: tx.update(jax.grad(_quadratic)(p.fast), s, p, value_fn=_quadratic))
    params = optax.LookaheadParams.init_synced(_W0)
    state = tx.init(params)
    fast = _W0
    rk4 = flowopt.rk4(0.1)
    for _ in range(sync):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
        fast = fast + rk4.update(jax.grad(_quadratic)(fast), rk4.init(fast), fast, value_fn=_quadratic)[0]
    synced = _W0 + alpha * (fast - _W0)
    np.testing.assert_allclose(np.asarray(params.slow), np.asarray(synced), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(params.fast), np.asarray(synced), rtol=1e-6)
    assert int(flowopt.oracle_evaluations(state)) == 3 * sync


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fast_optimizer=flowopt.rk4), "fast_optimizer must be an optax GradientTransformation.*call it"),
        (dict(sync_period=0), "sync_period must be a positive integer, got 0"),
        (dict(sync_period=2.5), "sync_period must be a positive integer, got 2.5"),
        (dict(slow_step_size=1.5), r"slow_step_size must be a real number in \(0, 1\]"),
        (dict(slow_step_size=0.0), r"slow_step_size must be a real number in \(0, 1\]"),
        (dict(reset_state="yes"), "reset_state must be True or False"),
    ],
)
def test_lookahead_bad_input(kwargs, match):
    arguments = dict(fast_optimizer=flowopt.rk4(0.1), sync_period=2, slow_step_size=0.5) | kwargs
    with pytest.raises(ValueError, match=match):
        flowopt.lookahead(**arguments)


def test_lookahead_needs_lookahead_params():
    tx = flowopt.lookahead(flowopt.rk4(0.1), sync_period=2, slow_step_size=0.5)
    with pytest.raises(ValueError, match="optax.LookaheadParams.init_synced"):
        tx.update(jax.grad(_quadratic)(_W0), tx.init(_W0), _W0, value_fn=_quadratic)


# --- optax.apply_if_finite ----------------------------------------------------------------------


def _nan_beyond_one(p):
    """Finite below 1; RK4's stages from (0.9, 0.5) land beyond 1, where the loss and its gradient are NaN."""
    return jnp.sum((p - 3.0) ** 2) + jnp.sum(jnp.sqrt(1.0 - p))


def test_apply_if_finite_of_rk4_leaves_a_nan_stage_to_the_integrator():
    """optax sees a finite incoming gradient; rk4 meets the NaN stage, skips the step and counts it."""
    tx = optax.apply_if_finite(flowopt.rk4(0.4), max_consecutive_errors=2)
    params = jnp.array([0.9, 0.5])
    updates, state = tx.update(jax.grad(_nan_beyond_one)(params), tx.init(params), params, value_fn=_nan_beyond_one)
    np.testing.assert_array_equal(np.asarray(updates), np.zeros(2))
    assert int(state.total_notfinite) == 0  # apply_if_finite checks the incoming gradient only
    assert int(flowopt.skipped_steps(state)) == 1
    assert int(flowopt.oracle_evaluations(state)) == 3


def test_apply_if_finite_of_rk4_rejects_a_nan_gradient_and_never_applies_it():
    tx = optax.apply_if_finite(flowopt.rk4(0.1), max_consecutive_errors=1)
    params, nan = jnp.array([0.3, 0.5]), jnp.full(2, jnp.nan)
    step = jax.jit(lambda g, s: tx.update(g, s, params, value_fn=_quadratic_2))
    updates, state = step(nan, tx.init(params))
    assert int(state.total_notfinite) == 1 and int(flowopt.skipped_steps(state)) == 0
    assert int(flowopt.oracle_evaluations(state)) == 0  # the inner update did not run
    np.testing.assert_array_equal(np.asarray(updates), np.zeros(2))
    updates, state = step(nan, state)  # past max_consecutive_errors optax gives up and runs rk4 on the NaN
    assert int(state.total_notfinite) == 2 and int(flowopt.skipped_steps(state)) == 1
    np.testing.assert_array_equal(np.asarray(updates), np.zeros(2))


def _quadratic_2(p):
    return jnp.sum(p**2)


# --- clipping before BDF ------------------------------------------------------------------------

_STIFF = jnp.array([1.0, 10.0, 100.0])


def _stiff_quadratic(p):
    return 0.5 * jnp.sum(_STIFF * p**2)


def _clipped_bdf_run(order, inner_steps, steps=100):
    tx = optax.chain(optax.clip_by_global_norm(1.0), flowopt.bdf(order, 0.5, inner_steps))
    step = jax.jit(lambda p, s: tx.update(jax.grad(_stiff_quadratic)(p), s, p, value_fn=_stiff_quadratic))
    params = jnp.full(3, 5.0)
    state = tx.init(params)
    for _ in range(steps):
        updates, state = step(params, state)
        params = params + updates
    return float(_stiff_quadratic(params)), float(state[1].stage_state.curvature)


def test_clipping_before_bdf_keeps_the_oracle_curvature_and_trains():
    """Clipped k1, unclipped oracle: the estimate is re-based on two oracle gradients (L = 100)."""
    initial = float(_stiff_quadratic(jnp.full(3, 5.0)))
    loss, curvature = _clipped_bdf_run(order=2, inner_steps=3)
    assert loss < 2e-3 * initial  # measured 1.77 from 1387.5
    assert 100.0 <= curvature <= 1.25 * 100.0 * (1 + 1e-3)  # L = 100, found from two oracle gradients


def test_clipping_before_bdf_with_one_inner_step_is_bounded_and_flagged():
    """One oracle call per step gives no second gradient to tell curvature from a clipped k1: it stalls."""
    loss, curvature = _clipped_bdf_run(order=1, inner_steps=1, steps=60)
    assert loss == float(_stiff_quadratic(jnp.full(3, 5.0)))  # every trial rejected: the stall remains
    assert curvature <= 1.0 / (np.finfo(np.float32).eps * 0.5) * (1 + 1e-6)  # at 1 / (ε βh), not 1e37
    tx = optax.chain(optax.clip_by_global_norm(1.0), flowopt.check_oracle(flowopt.bdf(1, 0.5, 1)))
    params = jnp.full(3, 5.0)
    with pytest.raises(ValueError, match="optax.clip_by_global_norm"):
        tx.update(jax.grad(_stiff_quadratic)(params), tx.init(params), params, value_fn=_stiff_quadratic)


# --- check_oracle -------------------------------------------------------------------------------


def test_check_oracle_passes_a_consistent_integrator_through_and_counts_its_call():
    inner = flowopt.rk4(0.1)
    tx = flowopt.check_oracle(inner)
    grads = jax.grad(_quadratic)(_W0)
    updates, state = jax.jit(lambda s: tx.update(grads, s, _W0, value_fn=_quadratic))(tx.init(_W0))
    expected, _ = inner.update(grads, inner.init(_W0), _W0, value_fn=_quadratic)
    np.testing.assert_array_equal(np.asarray(updates), np.asarray(expected))
    assert int(state.mismatches) == 0 and float(state.difference) < 1e-6
    assert int(flowopt.oracle_evaluations(state)) == 3 + 1


def test_check_oracle_flags_weight_decay_before_the_integrator_under_jit():
    tx = optax.chain(optax.add_decayed_weights(0.1), flowopt.check_oracle(flowopt.rk4(0.1)))
    step = jax.jit(lambda s: tx.update(jax.grad(_quadratic)(_W0), s, _W0, value_fn=_quadratic))
    with pytest.raises(jax.errors.JaxRuntimeError, match="put it after the integrator or into the loss"):
        jax.block_until_ready(step(tx.init(_W0)))


def test_check_oracle_can_count_instead_of_raising():
    tx = optax.chain(optax.add_decayed_weights(0.1), flowopt.check_oracle(flowopt.rk4(0.1), raise_on_mismatch=False))
    updates, state = tx.update(jax.grad(_quadratic)(_W0), tx.init(_W0), _W0, value_fn=_quadratic)
    assert int(state[1].mismatches) == 1 and float(state[1].difference) > 0.01


def test_check_oracle_inside_multi_transform():
    tx = optax.multi_transform({"integrator": flowopt.check_oracle(flowopt.rk4(0.1)), "other": optax.sgd(0.1)}, _LABELS)
    updates, state = tx.update(jax.grad(_coupled)(_P0), tx.init(_P0), _P0, value_fn=_coupled, full_params=_P0)
    np.testing.assert_allclose(np.asarray(_P0["a"] + updates["a"]), np.asarray(_sub_problem_steps(_ROUTES["rk4"], 1)), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(inner=flowopt.rk4), "check_oracle: inner must be an optax GradientTransformation.*call it"),
        (dict(rtol=-1.0), "rtol must be a finite nonnegative number"),
        (dict(atol=float("nan")), "atol must be a finite nonnegative number, got nan, which is not finite"),
        (dict(rtol=0.0), "rtol and atol are both zero"),
        (dict(raise_on_mismatch=1), "raise_on_mismatch must be True or False"),
    ],
)
def test_check_oracle_bad_input(kwargs, match):
    arguments = dict(inner=flowopt.rk4(0.1)) | kwargs
    with pytest.raises(ValueError, match=match):
        flowopt.check_oracle(**arguments)


def test_check_oracle_needs_an_oracle():
    tx = flowopt.check_oracle(flowopt.euler(0.1))
    with pytest.raises(ValueError, match="flowopt.check_oracle"):
        tx.update(jax.grad(_quadratic)(_W0), tx.init(_W0), _W0)
