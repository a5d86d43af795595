"""flowopt in Flax training steps: NNX's Optimizer and a Linen-style train state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen, nnx

import flowopt


class _MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.tanh(self.hidden(x)))


def _batch():
    x = jax.random.normal(jax.random.key(1), (16, 4))
    return x, jnp.sin(x.sum(axis=1, keepdims=True))


def _mse(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


@nnx.jit
def _nnx_train_step(model, optimizer, x, y):
    """The recommended NNX step: the oracle re-merges the model with candidate parameters."""
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)

    def value_fn(params):
        return _mse(nnx.merge(graphdef, params, rest), x, y)

    loss, grads = nnx.value_and_grad(_mse)(model, x, y)
    optimizer.update(model, grads, value_fn=value_fn)
    return loss


def test_nnx_optimizer_with_rk4_matches_a_pure_rk4_step():
    x, y = _batch()
    model = _MLP(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    pure_params = nnx.to_pure_dict(params)

    def pure_loss(p):
        state = nnx.State(params)
        nnx.replace_by_pure_dict(state, p)
        return _mse(nnx.merge(graphdef, state, rest), x, y)

    tx = flowopt.rk4(0.1)
    updates, _ = tx.update(jax.grad(pure_loss)(pure_params), tx.init(pure_params), pure_params, value_fn=pure_loss)
    expected = optax.apply_updates(pure_params, updates)

    optimizer = nnx.Optimizer(model, flowopt.rk4(0.1), wrt=nnx.Param)
    _nnx_train_step(model, optimizer, x, y)
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert int(flowopt.oracle_evaluations(optimizer.opt_state)) == 3


def test_nnx_training_reduces_the_loss_and_compiles_once():
    x, y = _batch()
    model = _MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, flowopt.heun(0.2), wrt=nnx.Param)
    losses = [float(_nnx_train_step(model, optimizer, x, y)) for _ in range(50)]
    assert losses[-1] < 0.5 * losses[0]
    assert int(flowopt.oracle_evaluations(optimizer.opt_state)) == 50


class _LinenMLP(linen.Module):
    @linen.compact
    def __call__(self, x):
        return linen.Dense(1)(linen.tanh(linen.Dense(8)(x)))


def test_linen_style_train_state_forwards_the_oracle():
    x, y = _batch()
    module = _LinenMLP()
    params = module.init(jax.random.key(0), x)
    state = flowopt.TrainState.create(apply_fn=module.apply, params=params, tx=flowopt.rk4(0.1))

    @jax.jit
    def train_step(state, x, y):
        value_fn = lambda p: jnp.mean((state.apply_fn(p, x) - y) ** 2)
        loss, grads = jax.value_and_grad(value_fn)(state.params)
        return state.apply_gradients(grads=grads, value_fn=value_fn), loss

    first = None
    for _ in range(50):
        state, loss = train_step(state, x, y)
        first = float(loss) if first is None else first
    assert float(loss) < 0.5 * first
    assert int(state.step) == 50
    assert int(flowopt.oracle_evaluations(state.opt_state)) == 150
    assert train_step._cache_size() == 1
