"""GF–GD distances: first order to the gradient flow, second order to the modified flow, the ReLU bound."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flowopt
from flowopt import analysis
from tests.convergence import loglog_slope
from tests.problems import random_quadratic


def _smooth_problem():
    """A nonquadratic smooth loss on a dict pytree (float64)."""
    h, x = random_quadratic([0.2, 0.5, 1.0, 2.0, 3.0])
    h = jnp.asarray(h)
    loss = lambda p: 0.5 * p["x"] @ h @ p["x"] + 0.3 * jnp.sum(jnp.cos(p["x"])) + jnp.sum(jnp.log1p(p["y"] ** 2))
    return loss, {"x": jnp.asarray(x), "y": jnp.asarray([1.0, -0.5])}


def test_step_times_for_constants_and_schedules():
    np.testing.assert_allclose(analysis.step_times(0.1, 3), [0.0, 0.1, 0.2, 0.3], rtol=1e-6)
    schedule = optax.linear_schedule(1.0, 0.0, transition_steps=4)
    np.testing.assert_allclose(analysis.step_times(schedule, 4), [0.0, 1.0, 1.75, 2.25, 2.5])


def test_optimizer_trajectory_runs_flowopt_and_optax_methods():
    loss = lambda p: jnp.sum((p["a"] - 1.0) ** 2) + jnp.sum(p["b"] ** 4)
    params0 = {"a": jnp.zeros(2), "b": jnp.ones(3)}
    gd = analysis.optimizer_trajectory(flowopt.euler(0.1), loss, params0, 5)
    manual = [params0]
    for _ in range(5):
        manual.append(jax.tree.map(lambda p, g: p - 0.1 * g, manual[-1], jax.grad(loss)(manual[-1])))
    for key in params0:
        assert gd[key].shape == (6, *params0[key].shape)
        np.testing.assert_allclose(gd[key], np.stack([m[key] for m in manual]), rtol=1e-6)
    # Heun calls the oracle; the same through grad_fn.
    heun = analysis.optimizer_trajectory(flowopt.heun(0.1), loss, params0, 5)
    heun_grad = analysis.optimizer_trajectory(flowopt.heun(0.1), None, params0, 5, grad_fn=jax.grad(loss))
    np.testing.assert_allclose(heun["b"], heun_grad["b"], rtol=1e-6)
    assert not np.allclose(heun["b"], gd["b"])
    # Plain optax transformations ignore the oracle.
    adam = analysis.optimizer_trajectory(optax.adam(0.1), loss, params0, 5)
    assert np.all(np.isfinite(adam["a"]))
    with pytest.raises(ValueError, match="exactly one"):
        analysis.optimizer_trajectory(flowopt.euler(0.1), loss, params0, 5, grad_fn=jax.grad(loss))


def test_trajectory_distance_over_all_or_selected_parameters():
    zeros = {"layer": {"kernel": jnp.zeros((3, 2, 2)), "bias": jnp.zeros((3, 2))}, "scale": jnp.zeros(3)}
    other = {
        "layer": {"kernel": jnp.ones((3, 2, 2)), "bias": 2.0 * jnp.ones((3, 2))},
        "scale": jnp.array([0.0, 3.0, 4.0]),
    }
    full = analysis.trajectory_distance(zeros, other)
    np.testing.assert_allclose(full, np.sqrt([4 + 8 + 0, 4 + 8 + 9, 4 + 8 + 16]))
    kernels = analysis.trajectory_distance(zeros, other, where=lambda path, x: x.ndim == 2)
    np.testing.assert_allclose(kernels, [2.0, 2.0, 2.0])
    by_path = analysis.trajectory_distance(zeros, other, where=lambda path, _: "layer" in jax.tree_util.keystr(path))
    np.testing.assert_allclose(by_path, np.sqrt([12.0] * 3))
    mask = {"layer": {"kernel": False, "bias": False}, "scale": True}
    np.testing.assert_allclose(analysis.trajectory_distance(zeros, other, where=mask), [0.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="selects no parameters"):
        analysis.trajectory_distance(zeros, other, where=lambda path, x: False)
    with pytest.raises(ValueError, match="structure"):
        analysis.trajectory_distance(zeros, {"scale": jnp.zeros(3)})
    with pytest.raises(ValueError, match="times must match"):
        analysis.trajectory_distance(zeros, jax.tree.map(lambda x: x[:2], other))


@pytest.mark.usefixtures("x64")
def test_gd_is_first_order_to_the_flow_and_second_order_to_the_modified_flow():
    etas = [0.1, 0.05, 0.025, 0.0125]
    horizon = 2.0
    loss, params0 = _smooth_problem()
    fine = int(round(horizon / etas[-1]))
    times = analysis.step_times(etas[-1], fine)
    flow = analysis.gradient_flow(loss, params0, times)
    to_flow, to_modified, worst = [], [], []
    for eta in etas:
        steps, stride = int(round(horizon / eta)), int(round(eta / etas[-1]))
        iterates = analysis.optimizer_trajectory(optax.sgd(eta), loss, params0, steps)
        # The modified flow depends on η; the compiled solver is reused across η (a Partial leaf).
        modified = analysis.gradient_flow(analysis.modified_value_fn(loss, eta), params0, times)
        distance = analysis.trajectory_distance(iterates, jax.tree.map(lambda x: x[::stride], flow.params))
        distance_modified = analysis.trajectory_distance(iterates, jax.tree.map(lambda x: x[::stride], modified.params))
        to_flow.append(float(distance[-1]))
        to_modified.append(float(distance_modified[-1]))
        worst.append(float(distance_modified.max()))
    assert loglog_slope(etas, to_flow) == pytest.approx(1.0, abs=0.1), to_flow
    assert loglog_slope(etas, to_modified) == pytest.approx(2.0, abs=0.2), to_modified
    assert loglog_slope(etas, worst) == pytest.approx(2.0, abs=0.2), worst
    assert all(m < 0.2 * f for m, f in zip(to_modified, to_flow))


def _relu_problem():
    """A 3-10-1 ReLU regression net (51 parameters) on 24 points; float64.

    Along its gradient flow 13 (unit, point) activation patterns flip before t = 4, where the
    flow starts sliding along a kink (the integration of a Filippov flow then stalls).
    """
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (24, 3), jnp.float64)
    y = jnp.sin(2 * x[:, :1]) * x[:, 1:2]
    params0 = {
        "w1": jax.random.normal(k[1], (3, 10), jnp.float64) / np.sqrt(3),
        "b1": 0.1 * jnp.ones(10, jnp.float64),
        "w2": jax.random.normal(k[2], (10, 1), jnp.float64) / np.sqrt(10),
        "b2": jnp.zeros(1, jnp.float64),
    }

    def loss(p):
        hidden = jax.nn.relu(x @ p["w1"] + p["b1"])
        return 0.5 * jnp.mean((hidden @ p["w2"] + p["b2"] - y) ** 2)

    return loss, params0


@pytest.mark.usefixtures("x64")
def test_relu_net_distance_and_bound_side_by_side(tmp_path):
    etas = [0.2, 0.1, 0.05]
    horizon, stride_bound = 4.0, 8  # the spectrum every 8 fine steps (every 0.4)
    loss, params0 = _relu_problem()
    fine = int(round(horizon / etas[-1]))
    times = analysis.step_times(etas[-1], fine)
    flow = analysis.gradient_flow(loss, params0, times, rtol=1e-9, atol=1e-11)
    coarse_times = times[::stride_bound]
    spectrum = analysis.spectrum_along(loss, jax.tree.map(lambda x: x[::stride_bound], flow.params), num_iterations=51)
    rows, at_horizon = [], []
    for eta in etas:
        steps, stride = int(round(horizon / eta)), int(round(eta / etas[-1]))
        iterates = analysis.optimizer_trajectory(optax.sgd(eta), loss, params0, steps)
        distance = analysis.trajectory_distance(iterates, jax.tree.map(lambda x: x[::stride], flow.params))
        bound = analysis.gd_error_bound(coarse_times, spectrum.lambda_min, eta)
        # Side by side at the times where both exist.
        every = int(round(float(coarse_times[1] - coarse_times[0]) / eta))
        for t, d, integral, b in zip(coarse_times, distance[::every], bound.negative_curvature, bound.bound):
            rows.append({"eta": eta, "t": float(t), "distance": float(d), "integral": float(integral), "bound": float(b)})
        at_horizon.append((float(distance[-1]), float(bound.bound[-1])))
    path = tmp_path / "gf_gd_relu.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert len(list(csv.DictReader(path.open()))) == len(etas) * len(coarse_times)

    distances = [d for d, _ in at_horizon]
    assert loglog_slope(etas, distances) == pytest.approx(1.0, abs=0.2), distances
    # The landscape along the flow is only slightly nonconvex: λ_min < 0 somewhere, but the
    # integral stays of order one, so exp(∫λ_min⁻) is a modest factor, not an exponential blow-up.
    lambda_min = np.asarray(spectrum.lambda_min)
    integral = np.asarray(bound.negative_curvature)
    assert lambda_min.min() < 0 and np.all(np.diff(integral) >= 0) and 0 < integral[-1] < 2
    # Distance and bound both scale with η at fixed t: their ratio is the same for every η.
    ratios = [d / b for d, b in at_horizon]
    assert max(ratios) / min(ratios) < 1.25, ratios
    assert all(r < 1 for r in ratios)
