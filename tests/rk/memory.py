"""Peak memory of a donated training step, from XLA's compiled memory analysis (CPU)."""

import jax
import jax.numpy as jnp
import optax
import pytest

ON_CPU = jax.default_backend() == "cpu"
"""Buffer assignment differs by backend; the bounds are measured on the CPU."""


def peak_over_parameter_bytes(tx: optax.GradientTransformation) -> float:
    """Peak bytes of a donated training step over the parameter bytes P, from XLA's memory analysis.

    The loss ``½‖Wx - y‖²`` of a 512 × 512 matrix on 8 columns: its gradient
    is a matrix product, which XLA cannot fuse with the optimizer's
    arithmetic, and its activations are 2 % of P.
    """
    w = jax.random.normal(jax.random.key(0), (512, 512))
    x, y = jax.random.normal(jax.random.key(1), (2, 512, 8))

    def loss(w):
        return 0.5 * jnp.sum(jnp.square(w @ x - y))

    def step(w, state):
        grads = jax.grad(loss)(w)
        updates, state = tx.update(grads, state, w, value_fn=loss)
        return optax.apply_updates(w, updates), state

    stats = jax.jit(step, donate_argnums=(0, 1)).lower(w, tx.init(w)).compile().memory_analysis()
    if stats is None:
        pytest.skip("no memory analysis on this backend")
    peak = stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes + stats.temp_size_in_bytes
    return peak / w.nbytes
