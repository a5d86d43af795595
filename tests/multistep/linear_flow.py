"""Stage functions run on the linear flow of ``f(x) = ½ xᵀAx`` (``tests.problems.random_quadratic`` makes ``A``)."""

import jax
import jax.numpy as jnp


def _integrate(integrator, a, x0, h, num_steps):
    """``num_steps`` steps of ``integrator``'s stage function; returns (x, state, oracle calls)."""
    a = jnp.asarray(a)
    oracle = lambda x: a @ x

    def body(_, carry):
        x, state, calls = carry
        increment, state, new_calls = integrator.step(oracle, x, a @ x, h, state)
        return x + increment, state, calls + new_calls

    x0 = jnp.asarray(x0)
    return jax.lax.fori_loop(0, num_steps, body, (x0, integrator.init(x0), jnp.zeros([], jnp.int32)))


integrate = jax.jit(_integrate, static_argnums=0)
