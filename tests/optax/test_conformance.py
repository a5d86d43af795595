"""flowopt inside optax's wrappers: inject_hyperparams, schedules for the flows, static integer arguments.

The checks every constructor meets (inject_hyperparams and constant schedules give the plain steps) are
in tests/test_contract.py; these are the flows' own.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flowopt

X0 = np.array([1.0, -1.0])  # made a JAX array inside each run, in its precision


def loss(x):
    return 0.5 * jnp.sum(jnp.array([1.0, 10.0]) * x**2) + jnp.sum(jnp.sin(x))


def run(tx, steps=30):
    @jax.jit
    def step(x, state):
        updates, state = tx.update(jax.grad(loss)(x), state, x, value_fn=loss)
        return optax.apply_updates(x, updates), state

    x = jnp.asarray(X0)
    state = tx.init(x)
    for _ in range(steps):
        x, state = step(x, state)
    return x


FLOWS = [flowopt.adam_flow, flowopt.rmsprop_flow, flowopt.adagrad_flow, flowopt.heavy_ball_flow]


@pytest.mark.usefixtures("x64")
def test_injected_hyperparameters_are_used():
    injected = run(optax.inject_hyperparams(flowopt.adam_flow)(learning_rate=0.05, b1=0.8, b2=0.99))
    reference = run(optax.adam(0.05, b1=0.8, b2=0.99))
    np.testing.assert_allclose(np.asarray(injected), np.asarray(reference), rtol=0, atol=1e-14)


@pytest.mark.usefixtures("x64")
def test_injected_schedule_is_optax_adam_with_that_schedule():
    schedule = optax.warmup_cosine_decay_schedule(0.01, 0.1, 5, 50)
    injected = run(optax.inject_hyperparams(flowopt.adam_flow)(learning_rate=schedule))
    reference = run(optax.adam(schedule))
    np.testing.assert_allclose(np.asarray(injected), np.asarray(reference), rtol=0, atol=1e-14)


def test_injected_warmup_from_zero_needs_and_takes_a_reference_rate():
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, 5, 50)
    with pytest.raises(ValueError, match="learning_rate is 0.*reference_learning_rate"):
        optax.inject_hyperparams(flowopt.adam_flow)(learning_rate=schedule).init(jnp.asarray(X0))
    x = run(optax.inject_hyperparams(flowopt.adam_flow)(learning_rate=schedule, reference_learning_rate=0.1))
    assert float(loss(x)) < float(loss(X0))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.__name__)
def test_flow_takes_a_schedule_with_its_peak_as_reference(flow):
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, 5, 50)
    default = run(flow(schedule))
    explicit = run(flow(schedule, reference_learning_rate=0.1))
    # The peak is the schedule's own value at its peak step (0.1 rounded as the schedule computes it).
    np.testing.assert_allclose(np.asarray(default), np.asarray(explicit), rtol=1e-6)
    assert float(loss(default)) < float(loss(X0))


@pytest.mark.parametrize(
    "factory, kwargs, static",
    [
        (flowopt.bdf, {"order": 2, "learning_rate": 0.1, "inner_steps": 3}, ("order", "inner_steps")),
        (flowopt.adams_bashforth, {"order": 3, "learning_rate": 0.1}, ("order",)),
        (flowopt.backward_euler, {"learning_rate": 0.1, "inner_steps": 3}, ("inner_steps",)),
    ],
    ids=["bdf", "adams_bashforth", "backward_euler"],
)
def test_integer_structure_arguments_must_be_static_args(factory, kwargs, static):
    # With them in static_args the injected optimizer takes the plain one's steps (tests/test_contract.py).
    with pytest.raises(ValueError, match=f"{static[0]} must be a Python integer.*static_args"):
        optax.inject_hyperparams(factory)(**kwargs).init(jnp.asarray(X0))
