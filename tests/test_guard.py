"""The non-finite guard: no step writes NaN or inf into the parameters, and training recovers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flowopt
from flowopt import tableaus
from flowopt.core.oracle import flag_nonfinite_loss

RADIUS = 2.0
CURVATURES = jnp.array([1.0, 3.0, 10.0])
START = jnp.array([1.0, -0.8, 0.6])


def quadratic(x):
    return 0.5 * jnp.sum(CURVATURES * x**2)


def nan_beyond_radius(x):
    """The quadratic inside the radius; NaN loss and NaN gradient outside (root of a negative)."""
    return quadratic(x) + 0.0 * jnp.sqrt(RADIUS**2 - jnp.sum(x**2))


def inf_beyond_radius(x):
    """A steep wall that overflows float32 to inf just outside the radius."""
    return quadratic(x) + jnp.exp(100.0 * (jnp.sum(x**2) - RADIUS**2))


def masked_beyond_radius(x):
    """NaN loss outside the radius, but a finite (zero) gradient there: masking with where."""
    return jnp.where(jnp.sum(x**2) < RADIUS**2, quadratic(x), jnp.nan)


LOSSES = {"nan": nan_beyond_radius, "inf": inf_beyond_radius, "masked": masked_beyond_radius}


def train(tx, loss, steps, params=START):
    """Train with a jitted step; return every iterate."""

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    iterates = [params]
    for _ in range(steps):
        params, state = step(params, state)
        iterates.append(params)
    return np.stack(iterates), state


def test_flagged_loss_has_nan_gradient_where_it_is_not_finite():
    inside, outside = jnp.array([0.5, 0.5, 0.5]), jnp.array([3.0, 0.0, 0.0])
    assert np.all(jax.grad(masked_beyond_radius)(outside) == 0)  # the hazard
    flagged = flag_nonfinite_loss(masked_beyond_radius)
    assert np.all(np.isnan(jax.grad(flagged)(outside)))
    np.testing.assert_array_equal(jax.grad(flagged)(inside), jax.grad(quadratic)(inside))
    assert flagged(inside) == quadratic(inside)


@pytest.mark.parametrize("kind", ["nan", "inf", "masked"])
def test_fixed_step_with_too_large_step_stays_finite(kind):
    loss = LOSSES[kind]
    # RK4 is stable for h·λ ≤ 2.78: h = 0.5 with λ = 10 diverges and leaves the radius.
    unguarded, unguarded_state = train(flowopt.rk4(0.5), loss, 30)
    if kind == "masked":  # a finite gradient where the loss is NaN: only the guard's loss check sees it
        assert not np.isfinite(loss(unguarded[-1]))
    else:  # the integrator itself never applies a non-finite increment: it stays put and counts
        assert np.all(np.isfinite(unguarded)) and int(unguarded_state.skipped) > 0
    iterates, state = train(flowopt.guard_nonfinite(flowopt.rk4(0.5), check_loss=kind == "masked"), loss, 30)
    assert np.all(np.isfinite(iterates))
    assert all(np.isfinite(loss(x)) for x in iterates)
    counts = flowopt.guard_counts(state)
    assert int(counts["nonfinite_steps"]) > 0
    assert int(counts["nonfinite_gradients"]) == 0


def spiky_loss(x, scale):
    """A minibatch loss whose curvature is multiplied by ``scale`` (50 on outlier batches)."""
    return scale * nan_beyond_radius(x)


def test_fixed_step_skips_loss_spikes_and_recovers():
    """h = 0.2 is stable on ordinary batches (h·λ = 2) and explodes on outliers (h·λ = 100).

    Outliers come in the first 50 of 150 batches; afterwards training must converge.
    """
    outliers = (jax.random.uniform(jax.random.PRNGKey(0), (150,)) < 0.3) & (jnp.arange(150) < 50)
    scales = jnp.where(outliers, 50.0, 1.0)

    def run(tx):
        def step(carry, scale):
            params, state = carry
            value_fn = jax.tree_util.Partial(spiky_loss, scale=scale)
            updates, state = tx.update(jax.grad(value_fn)(params), state, params, value_fn=value_fn)
            params = optax.apply_updates(params, updates)
            return (params, state), params

        (_, state), iterates = jax.jit(lambda: jax.lax.scan(step, (START, tx.init(START)), scales))()
        return np.asarray(iterates), state

    unguarded, unguarded_state = run(flowopt.rk4(0.2))
    assert np.all(np.isfinite(unguarded)) and int(unguarded_state.skipped) > 0
    iterates, state = run(flowopt.guard_nonfinite(flowopt.rk4(0.2), check_loss=True))
    assert np.all(np.isfinite(iterates))
    assert all(np.isfinite(nan_beyond_radius(x)) for x in iterates)
    skipped = int(flowopt.guard_counts(state)["nonfinite_steps"])
    assert 0 < skipped <= int(jnp.sum(scales > 1))
    assert int(state.inner_state.loss_evals) == len(scales)
    assert quadratic(iterates[-1]) < 1e-6 * quadratic(START)


@pytest.mark.parametrize("kind", ["nan", "inf", "masked"])
def test_adaptive_method_rejects_shrinks_and_recovers(kind):
    loss = LOSSES[kind]
    tx = flowopt.adaptive_runge_kutta(tableaus.BOSH3, learning_rate=5.0, rtol=1e-3, atol=1e-6)
    iterates, state = train(tx, loss, 150)
    assert np.all(np.isfinite(iterates))
    assert all(np.isfinite(loss(x)) for x in iterates)
    assert int(state.nonfinite) > 0
    assert float(state.controller.step_size) < 5.0
    assert loss(iterates[-1]) < 1e-6 * loss(START)


def test_guard_is_transparent_when_everything_is_finite():
    plain, plain_state = train(flowopt.rk4(0.1), quadratic, 10)
    guarded, guarded_state = train(flowopt.guard_nonfinite(flowopt.rk4(0.1)), quadratic, 10)
    np.testing.assert_allclose(plain, guarded, rtol=1e-6, atol=1e-7)
    inner = guarded_state.inner_state.inner_state
    assert int(inner.count) == int(plain_state.count) == 10
    assert int(flowopt.oracle_evaluations(guarded_state)) == 3 * 10
    assert {k: int(v) for k, v in flowopt.guard_counts(guarded_state).items()} == {
        "nonfinite_gradients": 0,
        "nonfinite_steps": 0,
    }


def test_rejected_step_keeps_the_inner_state_and_counts_its_oracle_calls():
    tx = flowopt.guard_nonfinite(optax.chain(optax.scale_by_adam(), flowopt.heun(0.5)))
    params = jnp.array([RADIUS - 0.1, 0.0, 0.0])
    state = tx.init(params)
    grads = -jnp.array([50.0, 0.0, 0.0])  # Adam normalises it to one unit: the Heun stage leaves the radius
    updates, new_state = tx.update(grads, state, params, value_fn=nan_beyond_radius)
    assert np.all(np.asarray(updates) == 0)
    adam_before, heun_before = state.inner_state.inner_state
    adam_after, heun_after = new_state.inner_state.inner_state
    np.testing.assert_array_equal(adam_after.mu, adam_before.mu)
    assert int(heun_after.count) == int(heun_before.count) == 0
    assert int(new_state.inner_state.rejected) == 1
    assert int(flowopt.oracle_evaluations(new_state)) == 1  # the Heun stage was spent


def test_nonfinite_incoming_gradient_is_skipped_without_oracle_calls_and_never_accepted():
    tx = flowopt.guard_nonfinite(flowopt.rk4(0.1))
    params = START
    state = tx.init(params)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, value_fn=quadratic))
    for _ in range(20):
        updates, state = update(jnp.full(3, jnp.nan), state, params)
        assert np.all(np.asarray(updates) == 0)
    assert int(flowopt.guard_counts(state)["nonfinite_gradients"]) == 20
    assert int(flowopt.oracle_evaluations(state)) == 0


def test_guard_wraps_methods_without_oracle_and_plain_optax():
    for inner in (flowopt.euler(0.5), optax.sgd(0.5)):
        # Euler never evaluates a stage: its overshoot shows first in the next incoming gradient...
        iterates, state = train(flowopt.guard_nonfinite(inner), nan_beyond_radius, 20)
        assert np.all(np.isfinite(iterates))
        assert int(flowopt.guard_counts(state)["nonfinite_gradients"]) > 0
        # ...unless the guard checks the loss at the candidate, which keeps it where it can continue.
        iterates, state = train(flowopt.guard_nonfinite(inner, check_loss=True), nan_beyond_radius, 20)
        assert all(np.isfinite(nan_beyond_radius(x)) for x in iterates)
        assert int(flowopt.guard_counts(state)["nonfinite_steps"]) > 0
    diagnostics = flowopt.step_diagnostics(state)
    assert int(diagnostics["nonfinite_steps"]) > 0 and "step_size" not in diagnostics


def test_check_loss_needs_value_fn():
    tx = flowopt.guard_nonfinite(flowopt.rk4(0.1), check_loss=True)
    with pytest.raises(ValueError, match="check_loss=True"):
        tx.update(START, tx.init(START), START, grad_fn=jax.grad(quadratic))
