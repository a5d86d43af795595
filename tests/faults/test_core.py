"""Fault injection for the optimizers: faulty step sizes, non-finite losses, bad dtypes and oracle outputs.

The rule: a step of size 0 is the identity; a step whose size is negative or not
finite, or whose increment is not finite, is never applied and is reported (the
state's ``skipped`` counter, ``flowopt.skipped_steps``, a ``ValueError`` outside
``jit``); every bad input is a ``ValueError`` naming it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flowopt

CURVATURES = jnp.array([1.0, 10.0])
PARAMS = {"w": jnp.array([1.0, -1.0])}


def loss(params):
    return 0.5 * jnp.sum(CURVATURES * params["w"] ** 2)


WARMUP = optax.warmup_cosine_decay_schedule(0.0, 0.1, 5, 50)
LINEAR = optax.linear_schedule(0.0, 0.1, 10)

# Every constructor that takes a schedule, built around a given step-size schedule.
SCHEDULED = {
    "euler": lambda lr: flowopt.euler(lr),
    "rk4": lambda lr: flowopt.rk4(lr),
    "adams_bashforth2": lambda lr: flowopt.adams_bashforth(2, lr),
    "backward_euler": lambda lr: flowopt.backward_euler(lr, 3),
    "bdf2": lambda lr: flowopt.bdf(2, lr, 3),
    "adam_flow": lambda lr: flowopt.adam_flow(lr, reference_learning_rate=0.1),
    "adam_flow_heun": lambda lr: flowopt.adam_flow(lr, integrator=flowopt.tableaus.HEUN, reference_learning_rate=0.1),
    "rmsprop_flow": lambda lr: flowopt.rmsprop_flow(lr, reference_learning_rate=0.1),
    "adagrad_flow": lambda lr: flowopt.adagrad_flow(lr, reference_learning_rate=0.1),
    "heavy_ball_flow": lambda lr: flowopt.heavy_ball_flow(lr, reference_learning_rate=0.1),
}


def _jitted_step(tx, value_fn=loss):
    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=value_fn)
        return optax.apply_updates(params, updates), updates, state

    return step


def _run(tx, steps, value_fn=loss):
    step = _jitted_step(tx, value_fn)
    params, state, history = PARAMS, tx.init(PARAMS), []
    for _ in range(steps):
        params, updates, state = step(params, state)
        history.append(updates)
    return params, state, history


@pytest.mark.parametrize("schedule", [WARMUP, LINEAR], ids=["warmup_cosine", "linear"])
@pytest.mark.parametrize("name", sorted(SCHEDULED))
def test_schedule_starting_at_zero_is_identity_then_descends(name, schedule):
    tx = SCHEDULED[name](schedule)
    params, state, history = _run(tx, 25)
    first = history[0]["w"]
    np.testing.assert_array_equal(np.asarray(first), 0.0)
    assert bool(jnp.all(jnp.isfinite(params["w"])))
    assert float(loss(params)) < 0.5 * float(loss(PARAMS))
    assert int(flowopt.skipped_steps(state)) == 0  # a zero step is not a fault


def test_zero_step_keeps_the_integrator_state():
    tx = flowopt.bdf(2, LINEAR, 3)
    state = tx.init(PARAMS)
    _, new_state = tx.update(jax.grad(loss)(PARAMS), state, PARAMS, value_fn=loss)
    assert int(new_state.count) == 1
    for old, new in zip(jax.tree.leaves(state.stage_state), jax.tree.leaves(new_state.stage_state)):
        np.testing.assert_array_equal(np.asarray(old), np.asarray(new))


def _faulty(count):
    """0.05 except a negative value at step 2 and NaN at step 4."""
    return jnp.where(count == 2, -0.05, jnp.where(count == 4, jnp.nan, 0.05))


@pytest.mark.parametrize("name", ["rk4", "bdf2", "adam_flow", "heavy_ball_flow"])
def test_negative_or_nan_step_is_skipped_and_counted(name):
    tx = SCHEDULED[name](_faulty)
    params, state, history = _run(tx, 6)
    for k in range(6):
        moved = bool(jnp.any(history[k]["w"] != 0))
        assert moved == (k not in (2, 4)), k
    assert bool(jnp.all(jnp.isfinite(params["w"])))
    assert int(state.skipped) == 2 == int(flowopt.skipped_steps(state))
    # No ascent: the loss never increases over the run.
    assert float(loss(params)) < float(loss(PARAMS))


def test_skipped_steps_leave_the_same_trajectory_as_omitting_them():
    faulty, _, _ = _run(flowopt.rk4(lambda c: jnp.where(c == 1, -1.0, 0.05)), 3)
    clean, _, _ = _run(flowopt.rk4(0.05), 2)
    np.testing.assert_allclose(np.asarray(faulty["w"]), np.asarray(clean["w"]), rtol=1e-6)


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_bad_schedule_value_outside_jit_raises(value):
    tx = flowopt.rk4(lambda count: jnp.where(count == 0, value, 0.1))
    with pytest.raises(ValueError, match=r"rk4: the learning-rate schedule returned .* at step 0"):
        tx.update(jax.grad(loss)(PARAMS), tx.init(PARAMS), PARAMS, value_fn=loss)


def test_vmapped_steps_skip_only_the_faulty_members():
    tx = flowopt.heun(0.1)
    scales = jnp.array([1.0, jnp.nan, 2.0])

    def one(scale):
        value_fn = lambda p: scale * loss(p)
        updates, state = tx.update(jax.grad(value_fn)(PARAMS), tx.init(PARAMS), PARAMS, value_fn=value_fn)
        return updates, state.skipped

    updates, skipped = jax.jit(jax.vmap(one))(scales)
    assert [int(s) for s in skipped] == [0, 1, 0]
    assert bool(jnp.all(jnp.isfinite(updates["w"])))
    assert bool(jnp.all(updates["w"][0] != 0)) and bool(jnp.all(updates["w"][1] == 0))


@pytest.mark.parametrize("name", ["heun", "rk4", "adam_flow_heun"])
def test_nan_loss_at_a_stage_is_not_applied(name):
    # (BDF: see test_nan_in_an_implicit_inner_solve_skips_the_whole_step below.)
    make = {
        "heun": lambda: flowopt.heun(0.1),
        "rk4": lambda: flowopt.rk4(0.1),
        "adam_flow_heun": lambda: flowopt.adam_flow(0.1, integrator=flowopt.tableaus.HEUN),
    }[name]
    tx = make()
    nan_away_from_start = lambda p: loss(p) * jnp.where(jnp.all(p["w"] == PARAMS["w"]), 1.0, jnp.nan)
    params, state, history = _run(tx, 2, value_fn=nan_away_from_start)
    np.testing.assert_array_equal(np.asarray(params["w"]), np.asarray(PARAMS["w"]))
    assert int(state.skipped) == 2


def test_nan_incoming_gradient_with_euler_is_not_applied():
    tx = flowopt.euler(0.1)
    grads = {"w": jnp.array([jnp.nan, 1.0])}
    updates, state = tx.update(grads, tx.init(PARAMS), PARAMS)
    np.testing.assert_array_equal(np.asarray(updates["w"]), 0.0)
    assert int(state.skipped) == 1


REGRESSION_X = jax.random.normal(jax.random.key(0), (64, 5))
REGRESSION_Y = REGRESSION_X @ jnp.arange(5.0) + 1.0
REGRESSION_START = {"w": jnp.ones(5), "b": jnp.array(0.5)}


def regression_loss(params):
    return jnp.mean((REGRESSION_X @ params["w"] + params["b"] - REGRESSION_Y) ** 2)


IMPLICIT = {
    "bdf2": lambda **kw: flowopt.bdf(2, 0.05, 3, **kw),
    "backward_euler": lambda **kw: flowopt.backward_euler(0.05, 3, **kw),
}
INNER_PATHS = {"backtracked": {}, "inner_tolerance": {"inner_tolerance": 1e-3}, "fixed_inner_rate": {"inner_learning_rate": 0.01}}
WRAPPINGS = {
    "bare": lambda tx: tx,
    "guard_nonfinite": flowopt.guard_nonfinite,
    "apply_if_finite": lambda tx: optax.apply_if_finite(tx, 5),
}


def _stage_states(state):
    """The BDF stage states inside an optimizer state, whatever wraps them."""
    is_bdf = lambda x: isinstance(x, flowopt.multistep.bdf.BDFState)
    return [leaf for leaf in jax.tree.leaves(state, is_leaf=is_bdf) if is_bdf(leaf)]


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
@pytest.mark.parametrize("path", sorted(INNER_PATHS))
@pytest.mark.parametrize("method", sorted(IMPLICIT))
def test_nan_in_an_implicit_inner_solve_skips_the_whole_step(method, path, wrapping):
    # The loss is NaN at every stage point of the first step with b > 0.5 (the start has b = 0.5). Such a
    # NaN used to be taken for a rejected trial: the curvature estimate went to 1/(eps beta h) and stayed,
    # and the run froze at its start with nothing counted.
    tx = WRAPPINGS[wrapping](IMPLICIT[method](**INNER_PATHS[path]))

    @jax.jit
    def step(params, state, poison):
        value_fn = lambda p: regression_loss(p) * jnp.where(poison & (p["b"] > 0.5), jnp.nan, 1.0)
        updates, state = tx.update(jax.grad(regression_loss)(params), state, params, value_fn=value_fn)
        return optax.apply_updates(params, updates), updates, state

    def run(params, state, steps):
        for _ in range(steps):
            params, _, state = step(params, state, False)
        return params, state

    start_state = tx.init(REGRESSION_START)
    params, updates, state = step(REGRESSION_START, start_state, True)
    np.testing.assert_array_equal(np.asarray(updates["w"]), 0.0)
    np.testing.assert_array_equal(np.asarray(params["w"]), np.asarray(REGRESSION_START["w"]))
    # The stage state (history, curvature estimate, everything) is as it was before the step.
    for before, after in zip(jax.tree.leaves(_stage_states(start_state)), jax.tree.leaves(_stage_states(state))):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    if wrapping == "guard_nonfinite":  # the guard rolls the whole inner state back and counts the step itself
        assert int(flowopt.guard_counts(state)["nonfinite_steps"]) == 1
        assert int(flowopt.guard_counts(state)["nonfinite_gradients"]) == 0
    else:
        assert int(flowopt.skipped_steps(state)) == 1
    # Later clean steps train as if the faulty step had not been made.
    params, state = run(params, state, 12)
    clean, _ = run(REGRESSION_START, start_state, 12)
    assert float(regression_loss(params)) < 0.5 * float(regression_loss(REGRESSION_START))
    np.testing.assert_allclose(float(regression_loss(params)), float(regression_loss(clean)), rtol=1e-5)
    for ours, theirs in zip(jax.tree.leaves(params), jax.tree.leaves(clean)):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", sorted(INNER_PATHS))
@pytest.mark.parametrize("method", sorted(IMPLICIT))
def test_nan_incoming_gradient_with_an_implicit_method_is_not_applied(method, path):
    # With inner_tolerance a NaN start residual used to end the solve before its first step: a zero step,
    # applied and not counted.
    tx = IMPLICIT[method](**INNER_PATHS[path])
    grads = jax.tree.map(lambda leaf: jnp.full_like(leaf, jnp.nan), REGRESSION_START)
    state = tx.init(REGRESSION_START)
    updates, new_state = jax.jit(lambda g, s: tx.update(g, s, REGRESSION_START, value_fn=regression_loss))(grads, state)
    assert all(bool(jnp.all(leaf == 0)) for leaf in jax.tree.leaves(updates))
    assert int(flowopt.skipped_steps(new_state)) == 1
    for before, after in zip(jax.tree.leaves(state.stage_state), jax.tree.leaves(new_state.stage_state)):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))


@pytest.mark.parametrize(
    "params, grads, match",
    [
        ({"w": jnp.array([1, 2])}, {"w": jnp.array([1.0, 2.0])}, r"params must hold floating-point .* \['w'\] is dtype int"),
        ({"w": jnp.array([True, False])}, {"w": jnp.array([1.0, 2.0])}, r"params .* dtype bool"),
        (PARAMS, {"w": jnp.array([1, 2])}, r"gradient passed to update\(\) must hold floating-point .* int"),
        (PARAMS, {"w": jnp.array(1.0)}, r"gradient leaf at \['w'\] has shape \(\), its parameter has shape \(2,\)"),
        (PARAMS, {"w": jnp.ones((2, 1))}, r"has shape \(2, 1\), its parameter has shape \(2,\)"),
        (PARAMS, {"v": jnp.ones(2)}, r"has structure"),
    ],
    ids=["int-params", "bool-params", "int-grads", "scalar-leaf", "broadcastable-leaf", "structure"],
)
@pytest.mark.parametrize(
    "make",
    [lambda: flowopt.euler(0.1), lambda: flowopt.rk4(0.1), lambda: flowopt.adam_flow(0.1)],
    ids=["euler", "rk4", "adam_flow"],
)
def test_bad_params_or_gradient_layout_raises(make, params, grads, match):
    tx = make()
    with pytest.raises(ValueError, match=match):
        tx.update(grads, tx.init(params), params, value_fn=loss)


@pytest.mark.parametrize(
    "grad_fn, match",
    [
        (lambda p: {"w": jnp.array([1, 2])}, r"oracle's gradient must hold floating-point .* int"),
        (lambda p: {"w": jnp.array(1.0)}, r"leaves of shapes \[\(\)\]"),
        (lambda p: None, r"oracle returned None"),
        (lambda p: [p["w"]], r"structure"),
    ],
    ids=["int", "scalar-leaf", "none", "list"],
)
def test_bad_grad_fn_output_raises(grad_fn, match):
    tx = flowopt.rk4(0.1)
    with pytest.raises(ValueError, match=match):
        tx.update(jax.grad(loss)(PARAMS), tx.init(PARAMS), PARAMS, grad_fn=grad_fn)


@pytest.mark.parametrize(
    "value_fn, match",
    [
        (lambda p: None, "value_fn returned None"),
        (lambda p: (loss(p), {"aux": 1}), r"returned a tuple.*loss_fn\(p\)\[0\]"),
        (lambda p: 3, "real floating-point loss, got the non-floating dtype int"),
        (lambda p: loss(p) + 0j, "real floating-point loss, got the complex dtype complex"),
        (lambda p: p["w"], r"scalar loss, got shape \(2,\)"),
        (lambda p: "loss", "scalar loss, got a str"),
    ],
    ids=["none", "tuple", "int", "complex", "vector", "string"],
)
def test_bad_value_fn_output_raises(value_fn, match):
    tx = flowopt.rk4(0.1)
    with pytest.raises(ValueError, match=match):
        tx.update(jax.grad(loss)(PARAMS), tx.init(PARAMS), PARAMS, value_fn=value_fn)


@pytest.mark.parametrize("oracle", ["value_fn", "grad_fn"])
def test_oracle_that_is_not_callable_raises(oracle):
    tx = flowopt.rk4(0.1)
    with pytest.raises(ValueError, match=f"{oracle} must be a callable"):
        tx.update(jax.grad(loss)(PARAMS), tx.init(PARAMS), PARAMS, **{oracle: 1.0})


@pytest.mark.parametrize(
    "schedule, match",
    [
        (lambda count: jnp.ones(3) * 0.1, r"must return a scalar, got shape \(3,\)"),
        (lambda: 0.1, "could not be evaluated"),
        (lambda count: 0.1 if count < 5 else 0.01, "could not be evaluated"),
    ],
    ids=["vector", "no-argument", "python-branch"],
)
def test_unusable_schedule_raises_at_construction(schedule, match):
    with pytest.raises(ValueError, match=match):
        flowopt.rk4(schedule)


@pytest.mark.parametrize("bad", [True, "0.1", [0.1], -1.0])
def test_bad_constant_learning_rate_raises(bad):
    with pytest.raises(ValueError, match="learning_rate"):
        flowopt.heun(bad)


def test_constant_zero_learning_rate_is_the_identity():
    # As optax.sgd(0.0); optax.inject_hyperparams passes a warm-up's first value as such a constant.
    tx = flowopt.bdf(2, 0.0, 3)
    updates, state = tx.update(jax.grad(loss)(PARAMS), tx.init(PARAMS), PARAMS, value_fn=loss)
    np.testing.assert_array_equal(np.asarray(updates["w"]), 0.0)
    assert int(state.skipped) == 0


# Complex parameters: f(z) = Σ a |z - c|², and the same problem on the real pair (Re z, Im z).
TARGET = jnp.array([1.0 + 2.0j, -1.0j])
WEIGHTS = jnp.array([1.0, 3.0])


def complex_loss(params):
    return jnp.sum(WEIGHTS * jnp.abs(params["w"] - TARGET) ** 2)


def real_loss(params):
    x, y = params["w"][:2], params["w"][2:]
    return jnp.sum(WEIGHTS * ((x - TARGET.real) ** 2 + (y - TARGET.imag) ** 2))


def _complex_run(tx, value_fn, params, steps=30):
    # optax's convention: the update direction of a complex parameter is conj(jax.grad).
    @jax.jit
    def step(params, state):
        grads = jax.tree.map(jnp.conj, jax.grad(value_fn)(params))
        updates, state = tx.update(grads, state, params, value_fn=value_fn)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params


@pytest.mark.parametrize(
    "make",
    [
        lambda: flowopt.heun(0.05),
        lambda: flowopt.rk4(0.05),
        lambda: flowopt.bdf(2, 0.05, 3),
        lambda: flowopt.adams_bashforth(3, 0.05),
    ],
    ids=["heun", "rk4", "bdf2", "adams_bashforth3"],
)
def test_complex_parameters_follow_the_real_flow(make):
    z = _complex_run(make(), complex_loss, {"w": jnp.zeros(2, jnp.complex64)})["w"]
    xy = _complex_run(make(), real_loss, {"w": jnp.zeros(4)})["w"]
    np.testing.assert_allclose(np.asarray(z), np.asarray(xy[:2] + 1j * xy[2:]), atol=1e-6)
    assert float(complex_loss({"w": z})) < 0.1 * float(complex_loss({"w": jnp.zeros(2, jnp.complex64)}))


@pytest.mark.parametrize("integrator", [None, flowopt.tableaus.HEUN], ids=["euler", "heun"])
def test_complex_adam_flow_uses_squared_modulus(integrator):
    params = {"w": jnp.zeros(2, jnp.complex64)}
    tx = flowopt.adam_flow(0.05, integrator=integrator)
    assert tx.init(params).v["w"].dtype == jnp.float32
    ours = _complex_run(tx, complex_loss, params)["w"]
    assert bool(jnp.all(jnp.isfinite(ours)))
    if integrator is None:  # the Euler scheme is optax's Adam
        reference = _complex_run(optax.adam(0.05), complex_loss, params)["w"]
        np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), atol=1e-5)
    assert float(complex_loss({"w": ours})) < 0.5 * float(complex_loss(params))


@pytest.mark.parametrize(
    "make",
    [
        lambda: flowopt.adams_bashforth(3, 0.1),
        lambda: flowopt.bdf(3, 0.1, 2),
        lambda: flowopt.rk4(0.1),
        lambda: flowopt.adam_flow(0.1),
    ],
    ids=["adams_bashforth3", "bdf3", "rk4", "adam_flow"],
)
def test_state_can_be_donated(make):
    tx = make()
    state = tx.init(PARAMS)
    buffers = [id(leaf) for leaf in jax.tree.leaves(state)]
    assert len(set(buffers)) == len(buffers)  # init allocates one buffer per leaf
    step = jax.jit(lambda params, state: tx.update(jax.grad(loss)(params), state, params, value_fn=loss), donate_argnums=(1,))
    for _ in range(3):
        _, state = step(PARAMS, state)
    assert int(state.count) == 3


@pytest.mark.parametrize(
    "make",
    [
        lambda: flowopt.bdf(2, 0.1, 2),
        lambda: flowopt.adams_bashforth(2, 0.1),
        lambda: flowopt.adam_flow(0.1),
        lambda: flowopt.heavy_ball_flow(0.1),
    ],
    ids=["bdf2", "adams_bashforth2", "adam_flow", "heavy_ball_flow"],
)
@pytest.mark.parametrize("other", [{"w": jnp.ones(2), "b": jnp.ones(3)}, {"w": jnp.ones(4)}], ids=["structure", "shape"])
def test_state_initialised_for_other_params_raises(make, other):
    tx = make()
    state = tx.init(PARAMS)
    other_loss = lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p))
    with pytest.raises(ValueError, match=r"state does not match params.*Call tx.init\(params\)"):
        tx.update(jax.grad(other_loss)(other), state, other, value_fn=other_loss)
