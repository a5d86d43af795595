"""The oracle contract: value_fn/grad_fn handling and clear errors for bad input."""

import jax
import jax.numpy as jnp
import optax
import pytest

import flowopt

PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
LOSS = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)


def _update(tx, **kwargs):
    return tx.update(jax.grad(LOSS)(PARAMS), tx.init(PARAMS), PARAMS, **kwargs)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "fast", None, True])
def test_bad_learning_rate_raises(bad):
    with pytest.raises(ValueError, match="learning_rate"):
        flowopt.rk4(bad)


def test_missing_oracle_raises_and_names_value_fn():
    with pytest.raises(ValueError, match="needs an oracle.*value_fn"):
        _update(flowopt.heun(0.1))


def test_euler_needs_no_oracle():
    updates, _ = _update(flowopt.euler(0.1))
    assert jax.tree.structure(updates) == jax.tree.structure(PARAMS)


@pytest.mark.parametrize("tx", [flowopt.euler(0.1), flowopt.rk4(0.1)], ids=["euler", "rk4"])
def test_both_oracles_raise(tx):
    with pytest.raises(ValueError, match="not both"):
        _update(tx, value_fn=LOSS, grad_fn=jax.grad(LOSS))


def test_missing_params_raises():
    tx = flowopt.rk4(0.1)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(jax.grad(LOSS)(PARAMS), tx.init(PARAMS), None, value_fn=LOSS)


def test_grad_fn_with_wrong_structure_raises():
    with pytest.raises(ValueError, match="structure"):
        _update(flowopt.rk4(0.1), grad_fn=lambda p: {"w": p["w"]})


def test_grad_fn_with_wrong_shapes_raises():
    with pytest.raises(ValueError, match="shapes"):
        _update(flowopt.rk4(0.1), grad_fn=lambda p: {"w": p["w"][0], "b": p["b"]})


def test_non_scalar_value_fn_raises():
    with pytest.raises(ValueError, match="scalar"):
        _update(flowopt.rk4(0.1), value_fn=lambda p: p["b"])


def test_gradient_with_wrong_structure_raises():
    tx = flowopt.rk4(0.1)
    with pytest.raises(ValueError, match="gradient passed to update"):
        tx.update({"w": PARAMS["w"]}, tx.init(PARAMS), PARAMS, value_fn=LOSS)


def test_unknown_keyword_arguments_are_ignored():
    updates, _ = _update(flowopt.rk4(0.1), value_fn=LOSS, value=1.0, grad=None, anything="else")
    assert jax.tree.structure(updates) == jax.tree.structure(PARAMS)


def test_errors_raise_inside_jit_too():
    tx = flowopt.rk4(0.1)

    @jax.jit
    def step(params, state):
        return tx.update(jax.grad(LOSS)(params), state, params)

    with pytest.raises(ValueError, match="needs an oracle"):
        step(PARAMS, tx.init(PARAMS))


def test_state_is_a_namedtuple_of_arrays():
    state = flowopt.rk4(optax.constant_schedule(0.1)).init(PARAMS)
    assert isinstance(state, flowopt.IntegratorState)
    assert state.count.dtype == jnp.int32 and state.oracle_evals.dtype == jnp.int32
