"""rkc_auto: the stage count follows the sharpness estimate; its Hessian-vector products are counted."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flowopt
from flowopt.core.lanczos import HVP_GRADIENTS
from flowopt.rk.chebyshev import chebyshev_method, stages_for
from flowopt.rk.chebyshev_auto import estimate_sharpness
from tests.problems import random_quadratic


def _run(tx, loss, x, steps, value_fns=None):
    """Iterates and states of ``steps`` jitted updates (``value_fns[k]`` is step k's loss, ``loss`` by default).

    The incoming gradient follows optax's convention for complex parameters, ``conj(jax.grad(f))``.
    """
    state = tx.init(x)
    path, states = [], []
    steps_of = {}
    for k in range(steps):
        value_fn = loss if value_fns is None else value_fns[k]
        if value_fn not in steps_of:
            gradient = lambda x, f=value_fn: jax.tree.map(jnp.conj, jax.grad(f)(x))
            steps_of[value_fn] = jax.jit(lambda x, state, f=value_fn, g=gradient: tx.update(g(x), state, x, value_fn=f))
        updates, state = steps_of[value_fn](x, state)
        x = x + updates
        path.append(x)
        states.append(state)
    return path, states


def _quadratic(eigenvalues):
    matrix, start = random_quadratic(eigenvalues)
    return (lambda x: 0.5 * x @ matrix @ x), jnp.asarray(start)


@pytest.mark.usefixtures("x64")
def test_with_an_exact_estimate_it_is_rkc_with_the_fewest_stable_stages():
    eigenvalues = np.logspace(0, 3, 6)  # λ_max = 1000
    loss, x0 = _quadratic(eigenvalues)
    h = 0.3
    expected = stages_for(h * 1000.0, safety=0.9)
    path, states = _run(flowopt.rkc_auto(h, lanczos_iterations=6, estimate_every=4), loss, x0, 8)
    reference, _ = _run(flowopt.rkc(expected, h), loss, x0, 8)
    assert (
        chebyshev_method(expected).stability_interval * 0.9 >= h * 1000 > chebyshev_method(expected - 1).stability_interval * 0.9
    )
    np.testing.assert_allclose(float(states[-1].sharpness), 1000.0, rtol=1e-8)
    assert [int(state.stages) for state in states] == [expected] * 8
    np.testing.assert_allclose(np.stack(path), np.stack(reference), rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("x64")
def test_every_gradient_and_hessian_vector_product_is_counted():
    eigenvalues = np.logspace(0, 2, 10)
    loss, x0 = _quadratic(eigenvalues)
    steps, every, m = 7, 3, 4
    _, states = _run(flowopt.rkc_auto(0.5, estimate_every=every, lanczos_iterations=m), loss, x0, steps)
    estimates = -(-steps // every)  # steps 0, 3, 6
    final = states[-1]
    assert int(final.estimates) == estimates and int(final.hvp_evals) == estimates * m
    stages = sum(int(state.stages) for state in states)
    assert int(flowopt.oracle_evaluations(final)) == stages - steps + HVP_GRADIENTS * m * estimates
    diagnostics = flowopt.step_diagnostics(final)
    assert int(diagnostics["gradient_evals"]) == stages + HVP_GRADIENTS * m * estimates
    assert int(diagnostics["hvp_evals"]) == estimates * m


def test_the_stage_count_follows_a_growing_learning_rate():
    lam = 50.0
    loss = lambda x: 0.5 * lam * jnp.sum(x**2)
    schedule = optax.linear_schedule(0.01, 2.0, 10)
    _, states = _run(flowopt.rkc_auto(schedule, estimate_every=100), loss, jnp.ones(3), 10)
    expected = [stages_for(float(schedule(k)) * lam * (1 + 1e-6), safety=0.9) for k in range(10)]
    assert [int(state.stages) for state in states] == expected
    assert expected[0] == 1 and expected[-1] > 5


def test_a_step_beyond_max_stages_is_shortened_counted_and_stable():
    lam, h, max_stages = 100.0, 5.0, 5
    loss = lambda x: 0.5 * lam * jnp.sum(x**2)
    path, states = _run(flowopt.rkc_auto(h, max_stages=max_stages), loss, jnp.ones(2), 20)
    method = chebyshev_method(max_stages)
    shortened = 0.9 * method.stability_interval / lam
    assert int(states[-1].capped) == 20 and int(states[-1].stages) == max_stages
    np.testing.assert_allclose(float(states[-1].step_size), shortened, rtol=1e-5)
    factor = abs(method.stability_function(-shortened * lam))  # x_k = R(-h'λ)^k x_0 on this isotropic loss
    assert factor < 1
    norms = np.array([float(jnp.linalg.norm(x)) for x in path])
    np.testing.assert_allclose(norms, np.sqrt(2) * factor ** np.arange(1, 21), rtol=1e-4)


@pytest.mark.parametrize("slope", [1.0, 2.0], ids=["too-long", "overflowing"])
def test_a_step_under_a_stale_estimate_that_blows_up_re_estimates_and_retries(slope):
    # Step 0 sees curvature 10 and takes few stages; step 1's loss has curvature 1000, and its stages under
    # the old estimate overshoot to where exp(-slope·x - 5) is huge (slope 1) or overflows float32 (slope 2).
    gentle = lambda x: 5.0 * jnp.sum(x**2)
    steep = lambda x: 500.0 * jnp.sum(x**2) + jnp.sum(jnp.exp(-slope * x - 5.0))
    tx = flowopt.rkc_auto(1.0, estimate_every=10, lanczos_iterations=1)
    path, states = _run(tx, gentle, jnp.full(1, 0.5), 2, value_fns=[gentle, steep])
    before, after = states
    stale, fresh = stages_for(10.0), stages_for(1000.0 * (1 + 1e-6))
    assert int(before.stages) == stale and int(after.stages) == fresh
    assert int(after.estimates) == 2 and int(after.skipped) == 0
    np.testing.assert_allclose(float(after.sharpness), 1000.0, rtol=1e-2)  # plus the exponential's ≈ 0.01
    assert abs(float(path[-1][0])) < 0.5
    # step 0: (stale - 1) calls and one HVP; step 1: the failed attempt's (stale - 1), one HVP, (fresh - 1)
    expected = (stale - 1) + HVP_GRADIENTS + (stale - 1) + HVP_GRADIENTS + (fresh - 1)
    assert int(after.oracle_evals) == expected


def test_a_stable_step_under_a_stale_estimate_is_not_retried():
    loss = lambda x: 0.5 * 30.0 * jnp.sum(x**2) + jnp.sum(jnp.cos(x))  # curvature between 29 and 31
    _, states = _run(flowopt.rkc_auto(0.5, estimate_every=50, lanczos_iterations=1), loss, jnp.full(3, 2.0), 30)
    assert int(states[-1].estimates) == 1


def test_the_estimate_bounds_the_largest_eigenvalue_from_lanczos_iterations_fewer_than_the_dimension():
    eigenvalues = np.concatenate([np.linspace(0.1, 10.0, 199), [40.0]])
    loss, x0 = _quadratic(eigenvalues)
    with jax.enable_x64(True):
        oracle = jax.grad(loss)
        estimates = [float(estimate_sharpness(oracle, x0, 16, jax.random.key(i))) for i in range(5)]
    assert all(40.0 * (1 - 1e-6) <= value <= 40.0 * 1.05 for value in estimates), estimates


def test_complex_parameters_are_pairs_of_real_coordinates():
    lam = 30.0
    loss = lambda z: 0.5 * lam * jnp.sum(jnp.abs(z) ** 2)
    z = jnp.array([1.0 + 2.0j, -0.5j], jnp.complex64)
    path, states = _run(flowopt.rkc_auto(0.5, lanczos_iterations=4), loss, z, 30)
    np.testing.assert_allclose(float(states[-1].sharpness), lam, rtol=1e-4)
    assert path[-1].dtype == jnp.complex64 and float(jnp.max(jnp.abs(path[-1]))) < 1e-3


def test_inside_jit_and_a_chain_the_diagnostics_are_found():
    loss = lambda x: 0.5 * 40.0 * jnp.sum(x**2)
    tx = optax.chain(optax.clip_by_global_norm(10.0), flowopt.rkc_auto(0.2, estimate_every=2))
    x = jnp.ones(4)
    state = tx.init(x)
    step = jax.jit(lambda x, state: tx.update(jax.grad(loss)(x), state, x, value_fn=loss))
    for _ in range(3):
        updates, state = step(x, state)
        x = x + updates
    diagnostics = flowopt.step_diagnostics(state)
    assert int(diagnostics["estimates"]) == 2 and int(diagnostics["stages"]) == stages_for(8.0 * (1 + 1e-6))
    with pytest.raises(ValueError, match="2 states that report diagnostics"):
        flowopt.step_diagnostics((state, state))


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"order": 3}, "order must be a positive integer \\(at most 2\\)"),
        ({"max_stages": 0}, "max_stages must be a positive integer \\(at most 400\\)"),
        ({"max_stages": 401}, "max_stages must be a positive integer \\(at most 400\\)"),
        ({"order": 2, "max_stages": 1}, "max_stages must be an integer of at least 2"),
        ({"safety": 0.0}, "safety"),
        ({"safety": 1.5}, "safety"),
        ({"estimate_every": 0}, "estimate_every must be a positive integer"),
        ({"estimate_every": 2.5}, "estimate_every"),
        ({"lanczos_iterations": 0}, "lanczos_iterations must be a positive integer"),
        ({"damping": -1.0}, "damping"),
        ({"seed": -1}, "seed must be a nonnegative integer"),
    ],
)
def test_bad_arguments_are_refused_by_name(arguments, message):
    with pytest.raises(ValueError, match=message):
        flowopt.rkc_auto(0.1, **arguments)


def test_an_oracle_is_required():
    tx = flowopt.rkc_auto(0.1)
    x = jnp.ones(2)
    with pytest.raises(ValueError, match="value_fn"):
        tx.update(x, tx.init(x), x)
