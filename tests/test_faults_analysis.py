"""Fault injection on the analysis tools, flowopt.TrainState and flowopt-demo.

The rule: every bad input is a ``ValueError`` naming the function, the argument
and the offending value (a bad flag of ``flowopt-demo`` is exit 2 and one line
naming the flag); nothing returns NaN, truncates, broadcasts or hangs silently;
traced values pass the checks (only concrete values are checked).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowopt import analysis

CURVATURES = jnp.array([1.0, 2.0])
PARAMS = {"w": jnp.array([1.0, 2.0])}
TIMES = jnp.array([0.0, 0.5, 1.0])


def loss(params):
    return 0.5 * jnp.sum(CURVATURES * params["w"] ** 2)


def squared_modulus(z):
    return jnp.sum(jnp.abs(z) ** 2)


# ---------------------------------------------------------------------------------------------- gradient_flow

BAD_FLOWS = [
    (dict(value_fn=None), "gradient_flow needs an oracle"),
    (dict(grad_fn=jax.grad(loss)), "not both"),
    (dict(value_fn="loss"), "value_fn must be a callable .* got 'loss'"),
    (dict(value_fn=lambda p: p["w"]), "value_fn must return a scalar loss, got shape"),
    (dict(value_fn=lambda p: jnp.nan * loss(p)), "gradient at params0 is not finite"),
    (dict(params0={"w": jnp.array([1, 2])}), r"params0 must hold floating-point .* \['w'\] is dtype int32"),
    (dict(params0={"w": PARAMS["w"], "n": jnp.array(3)}), r"params0 .* \['n'\] is dtype int32"),
    (dict(params0={}), "params0 has no array leaves"),
    (dict(params0=None), "params0 is None"),
    (dict(times=1.0), "times must be a non-empty 1-D array, got shape"),
    (dict(times=[]), "times must be a non-empty 1-D array"),
    (dict(times="abc"), "times must be a 1-D array of real numbers, got 'abc'"),
    (dict(times=None), "times must be a 1-D array of real numbers, got None"),
    (dict(times=[0.0, 1j]), "times must be a 1-D array of real numbers"),
    (dict(times=[-1.0, 1.0]), r"times must be nonnegative .* times\[0\] = -1.0"),
    (dict(times=[1.0, 0.5]), r"times must be nondecreasing, got times\[0\] = 1.0 > times\[1\] = 0.5"),
    (dict(times=[0.0, np.nan]), "times must be finite, got nan at index 1"),
    (dict(times=[0.0, np.inf]), "times must be finite, got inf at index 1"),
    (dict(method="rk5"), "method must be a flowopt.ButcherTableau or one of"),
    (dict(method=None), "method must be"),
    (dict(method="gd"), "no error estimate; pass substeps="),
    (dict(rtol=0.0), "gradient_flow: rtol must be a finite positive number, got 0.0"),
    (dict(atol=-1e-3), "gradient_flow: atol must be a finite positive number, got -0.001"),
    (dict(rtol=float("nan")), "rtol must be a finite positive number, got nan"),
    (dict(atol=float("inf")), "atol must be a finite positive number, got inf"),
    (dict(rtol="x"), "rtol must be a finite positive number, got 'x'"),
    (dict(atol=1e300), "atol = 1e\\+300 is beyond the range of the parameters' float32"),
    (dict(method="rk4", substeps=0), "substeps must be a positive integer"),
    (dict(method="rk4", substeps=1.5), "substeps must be a positive integer .* got 1.5"),
    (dict(method="rk4", substeps=True), "substeps must be a positive integer .* got True"),
    (dict(method="rk4", substeps="3"), "substeps must be a positive integer .* got '3'"),
    (dict(method="rk4", substeps=10**9), "substeps must be a positive integer \\(at most 715827882\\), got 1000000000"),
    (dict(initial_step=0.0), "initial_step must be a finite positive number, got 0.0"),
    (dict(initial_step=float("inf")), "initial_step must be a finite positive number, got inf"),
    (dict(initial_step="a"), "initial_step must be a finite positive number, got 'a'"),
    (dict(max_steps=0), "max_steps must be a positive integer"),
    (dict(max_steps=1.5), "max_steps must be a positive integer .* got 1.5"),
    (dict(max_steps=None), "max_steps must be a positive integer .* got None"),
    (dict(max_steps=float("inf")), "max_steps must be a positive integer .* got inf"),
    (dict(max_steps="10"), "max_steps must be a positive integer .* got '10'"),
    (dict(max_steps=2**40), "max_steps must be a positive integer .* got 1099511627776"),
]


@pytest.mark.parametrize("override, message", BAD_FLOWS)
def test_gradient_flow_rejects_bad_input(override, message):
    kwargs = dict(value_fn=loss, params0=PARAMS, times=TIMES) | override
    value_fn, params0, times = kwargs.pop("value_fn"), kwargs.pop("params0"), kwargs.pop("times")
    with pytest.raises(ValueError, match=message):
        analysis.gradient_flow(value_fn, params0, times, **kwargs)


def test_gradient_flow_failures_say_why():
    with pytest.raises(RuntimeError, match=r"did not reach t = 1 within max_steps = 1: stopped at t = "):
        analysis.gradient_flow(loss, PARAMS, TIMES, max_steps=1)
    with pytest.raises(RuntimeError, match="became non-finite by t = 1"):  # Euler at h = 4 > 2/L diverges
        analysis.gradient_flow(lambda p: 1e30 * loss(p), PARAMS, TIMES, method="gd", substeps=1)
    with pytest.raises(RuntimeError, match="step size fell to rounding level .* or the flow became non-finite"):
        analysis.gradient_flow(lambda p: -jnp.sum(p["w"] ** 4), PARAMS, [1.0])


def test_gradient_flow_traced_arguments_pass_and_a_bad_traced_grid_is_unsuccessful():
    solve = jax.jit(lambda times, h: analysis.gradient_flow(loss, PARAMS, times, initial_step=h))
    good = solve(TIMES, 0.1)
    assert bool(good.successful)
    np.testing.assert_allclose(good.params["w"][-1], np.exp(-np.asarray(CURVATURES)) * np.array([1.0, 2.0]), rtol=1e-4)
    assert not bool(solve(jnp.array([1.0, 0.0]), 0.1).successful)
    fixed = jax.jit(lambda times: analysis.gradient_flow(loss, PARAMS, times, method="rk4", substeps=4))
    assert not bool(fixed(jnp.array([0.0, jnp.nan])).successful)
    with pytest.raises(ValueError, match="rtol must be a concrete number"):
        jax.jit(lambda r: analysis.gradient_flow(loss, PARAMS, TIMES, rtol=r))(1e-4)


@pytest.mark.parametrize("mode", [{}, {"method": "rk4", "substeps": 8}])
def test_gradient_flow_of_complex_parameters_is_the_real_flow(mode):
    # f(z) = |z|²: the real gradient flow of (x, y) is z' = -2z, so z(t) = exp(-2t) z0.
    z0 = jnp.array([1.0 + 1.0j, 2.0 - 0.5j])
    flow = analysis.gradient_flow(squared_modulus, z0, TIMES, **mode)
    assert flow.params.dtype == jnp.complex64
    np.testing.assert_allclose(flow.params, np.exp(-2 * np.asarray(TIMES))[:, None] * np.asarray(z0), rtol=1e-4)
