"""Optimizers by name, including order-suffixed multistep names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowopt
from flowopt.training import available_optimizers, make_optimizer


def _first_update(tx):
    params = jnp.array([1.0, -2.0])
    loss = lambda p: jnp.sum(p**2)
    updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params, value_fn=loss)
    return np.asarray(updates)


@pytest.mark.parametrize(
    "name, options, reference",
    [
        ("bdf2", {"inner_steps": 3}, flowopt.bdf(2, 0.1, inner_steps=3)),
        ("adams_bashforth3", {}, flowopt.adams_bashforth(3, 0.1)),
        ("rk4", {}, flowopt.rk4(0.1)),
    ],
)
def test_named_optimizer_equals_its_constructor(name, options, reference):
    np.testing.assert_array_equal(_first_update(make_optimizer(name, 0.1, **options)), _first_update(reference))
    assert name in available_optimizers()


@pytest.mark.parametrize("name", ["bdf7", "adams_bashforth5", "rk5", "_private"])
def test_unknown_or_out_of_range_names_raise(name):
    with pytest.raises(ValueError):
        make_optimizer(name, 0.1)
