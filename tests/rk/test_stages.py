"""Stages summed while they are produced: the same step as the final combination, in fewer live buffers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowopt
from flowopt import tableaus
from flowopt.core.trees import linear_combination
from flowopt.rk.stages import live_buffers, stage_slopes, stage_sum, sum_schedule
from flowopt.rk.tableau import ButcherTableau
from tests.rk.memory import ON_CPU, peak_over_parameter_bytes

NAMED = [tableaus.EULER, tableaus.HEUN, tableaus.RK3, tableaus.RK4, tableaus.RK38, tableaus.BOSH3, tableaus.DOPRI5]


def random_tableau(rng: np.random.Generator, stages: int) -> ButcherTableau:
    """A consistent tableau (order 1) with random entries, about a third of them zero, and a zero weight."""
    a = np.tril(rng.normal(size=(stages, stages)) * (rng.random((stages, stages)) > 0.3), -1)
    b = rng.normal(size=stages) * (rng.random(stages) > 0.3)
    b[0] = 1.0 - b[1:].sum()
    return ButcherTableau(a, b, a.sum(axis=1), order=1, name=f"random-{stages}")


def field(t, y):
    """A nonlinear, time-dependent field on a two-leaf tree."""
    return {"w": jnp.tanh(y["w"] @ y["w"].T) @ y["w"] + t, "v": jnp.sin(y["v"]) * jnp.sum(y["w"])}


RANDOM = [random_tableau(np.random.default_rng(stages), stages) for stages in range(2, 9)]


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("tableau", NAMED + RANDOM, ids=lambda tableau: tableau.name)
def test_stage_sum_equals_the_final_combination(tableau):
    rng = np.random.default_rng(tableau.num_stages)
    y0 = {"w": jnp.asarray(rng.normal(size=(3, 4))), "v": jnp.asarray(rng.normal(size=5))}
    h, t0 = jnp.asarray(0.3), jnp.asarray(0.5)
    k1 = field(t0, y0)
    ours = jax.jit(lambda y: stage_sum(tableau, field, y, k1, h, tableau.b, t0=t0))(y0)
    theirs = linear_combination(tableau.b, stage_slopes(tableau, field, y0, k1, h, (tableau.b,), t0=t0), h)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert a.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "tableau, flush, buffers",
    [
        (tableaus.EULER, (False,), 2),
        (tableaus.HEUN, (True, False), 3),
        (tableaus.RK4, (True, True, True, False), 3),  # one stage at a time beside θ and the sum
        (tableaus.DOPRI5, (True, True, False, False, False, False, False), 6),  # no sum beside stages kept anyway
    ],
)
def test_sum_schedule_and_its_live_buffers(tableau, flush, buffers):
    assert sum_schedule(tableau, tableau.b) == flush
    assert live_buffers(tableau, tableau.b, flush) == buffers
    assert live_buffers(tableau, tableau.b, (False,) * tableau.num_stages) >= buffers


@pytest.mark.skipif(not ON_CPU, reason="buffer assignment differs by backend; measured on CPU")
def test_rk4_holds_one_buffer_more_than_euler():
    # Euler holds θ and the gradient (and the 0.25 P boolean mask of the step's finiteness check); RK4 one
    # running sum more, where summing after the last stage held all four stages (5.25 P).
    euler = peak_over_parameter_bytes(flowopt.euler(0.1))
    rk4 = peak_over_parameter_bytes(flowopt.rk4(0.1))
    heun = peak_over_parameter_bytes(flowopt.heun(0.1))
    assert rk4 <= 4 + 0.2
    assert rk4 == pytest.approx(euler + 1, abs=0.02)
    assert heun == pytest.approx(euler + 1, abs=0.02)
