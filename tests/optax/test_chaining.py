"""flowopt integrators inside optax chains: schedules, clipping, weight decay, line search."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flowopt


def _rosenbrock(p):
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


def _quadratic(p):
    return 0.5 * jnp.sum(jnp.arange(1.0, 5.0) * p**2)


def test_schedule_is_evaluated_at_the_step_count():
    schedule = optax.exponential_decay(0.2, transition_steps=1, decay_rate=0.5)
    params = jnp.ones(4)
    tx = flowopt.heun(schedule)
    state = tx.init(params)
    for step in range(4):
        grads = jax.grad(_quadratic)(params)
        updates, state = tx.update(grads, state, params, value_fn=_quadratic)
        expected, _ = flowopt.heun(float(schedule(step))).update(grads, tx.init(params), params, value_fn=_quadratic)
        np.testing.assert_allclose(np.asarray(updates), np.asarray(expected), rtol=1e-6)
        params = params + updates


def test_clip_after_integrator_bounds_the_step():
    params = jnp.array([-1.2, 1.0])
    tx = optax.chain(flowopt.rk4(0.01), optax.clip_by_global_norm(1e-3))
    state = tx.init(params)
    for _ in range(20):
        updates, state = tx.update(jax.grad(_rosenbrock)(params), state, params, value_fn=_rosenbrock)
        assert float(optax.tree.norm(updates)) <= 1e-3 * (1 + 1e-6)
        params = optax.apply_updates(params, updates)


def test_decoupled_weight_decay_after_euler_equals_l2_in_the_loss():
    lr, wd = 0.05, 0.1
    params = jnp.array([0.3, -2.0, 1.5, 0.7])
    chained = optax.chain(flowopt.euler(lr), optax.add_decayed_weights(-lr * wd))
    l2_loss = lambda p: _quadratic(p) + 0.5 * wd * jnp.sum(p**2)
    plain = flowopt.euler(lr)
    a, b = params, params
    sa, sb = chained.init(a), plain.init(b)
    for _ in range(10):
        ua, sa = chained.update(jax.grad(_quadratic)(a), sa, a)
        ub, sb = plain.update(jax.grad(l2_loss)(b), sb, b)
        a, b = a + ua, b + ub
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_zero_weight_decay_in_chain_is_a_no_op():
    params = jnp.array([-1.2, 1.0])
    grads = jax.grad(_rosenbrock)(params)
    chained = optax.chain(flowopt.rk4(0.01), optax.add_decayed_weights(0.0))
    a, _ = chained.update(grads, chained.init(params), params, value_fn=_rosenbrock)
    b, _ = flowopt.rk4(0.01).update(grads, flowopt.rk4(0.01).init(params), params, value_fn=_rosenbrock)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_beside_a_backtracking_line_search_sharing_value_fn():
    params = jnp.array([-1.2, 1.0])
    tx = optax.chain(
        flowopt.heun(1e-3),
        optax.scale_by_backtracking_linesearch(max_backtracking_steps=30, max_learning_rate=100.0),
    )
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(_rosenbrock)(params)
        updates, state = tx.update(grads, state, params, value=value, grad=grads, value_fn=_rosenbrock)
        return optax.apply_updates(params, updates), state, value

    values = []
    for i in range(300):
        params, state, value = step(params, state)
        values.append(float(value))
        if i == 1:
            compiled = step._cache_size()  # optax's line-search state settles its dtypes once
    assert all(b <= a + 1e-7 for a, b in zip(values, values[1:])), "line search must not increase f"
    assert _rosenbrock(params) < 1e-2 * values[0]
    assert step._cache_size() == compiled
