"""The central flow: its right-hand side in closed form, the complementarity solver, the gradient flow below 2/η."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowopt import analysis
from flowopt.analysis.central import central_point, solve_psd_complementarity
from tests.problems import random_quadratic

pytestmark = pytest.mark.usefixtures("x64")

ETA = 0.1
THRESHOLD = 2 / ETA


def _exponential_sharpening(w):
    """``½ e^y x² - y``: along x = 0 the sharpness ``e^y`` grows as the flow climbs ``y``; its edge is ``y* = ln(2/η)``."""
    return 0.5 * jnp.exp(w[1]) * w[0] ** 2 - w[1]


@jax.jit
def _point_at(w, relaxation):
    return central_point(
        _exponential_sharpening, w, ETA, num_eigs=1, lanczos_iterations=2, relaxation=relaxation, key=jax.random.key(0)
    )


def _point(y, relaxation=0.5):
    """The right-hand side at ``(0, y)``: one compiled program for every ``y`` (op by op it takes seconds a point)."""
    return _point_at(jnp.array([0.0, y]), jnp.asarray(relaxation, jnp.float64))


def test_right_hand_side_in_closed_form_below_near_and_at_the_edge():
    # At x = 0: λ = e^y along u = e_x, G = ∇λ = (0, e^y), g = (0, -1); with τ = rη,
    # α = 2/η - e^y(1 + τ), B = τ e^{2y}/2 and X = max(0, -α/B), y' = 1 - X e^y/2.
    tau = 0.5 * ETA
    edge = np.log(THRESHOLD)
    onset = edge - np.log(1 + tau)  # where X becomes positive
    for y in (onset - 0.2, onset + 0.5 * (edge - onset), edge):
        point = _point(y)
        sharpness = np.exp(y)
        covariance = max(0.0, 2 * (sharpness * (1 + tau) - THRESHOLD) / (tau * sharpness**2))
        np.testing.assert_allclose(point.eigenvalues, [sharpness], rtol=1e-12)
        np.testing.assert_allclose(point.covariance, [[covariance]], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(point.velocity, [0.0, 1.0 - covariance * sharpness / 2], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(point.predicted_loss, -y + sharpness * covariance / 2, rtol=1e-12)
    at_edge = _point(edge)
    np.testing.assert_allclose(at_edge.covariance, [[ETA]], rtol=1e-12)  # the oscillation GD settles into: x² = η
    np.testing.assert_allclose(at_edge.velocity, [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(at_edge.predicted_loss, 1 - edge, rtol=1e-12)
    below = _point(onset - 0.2)
    np.testing.assert_array_equal(below.velocity, -jax.grad(_exponential_sharpening)(jnp.array([0.0, onset - 0.2])))


def _kkt(alpha, beta, covariance):
    k = alpha.shape[0]
    i, j = np.triu_indices(k)
    scale = np.where(i == j, 1.0, np.sqrt(2.0))
    applied = np.zeros((k, k))
    applied[i, j] = applied[j, i] = (beta @ (np.asarray(covariance)[i, j] * scale)) / scale
    slack = np.asarray(alpha) + applied
    return np.linalg.eigvalsh(covariance)[0], np.linalg.eigvalsh(slack)[0], np.sum(np.asarray(covariance) * slack)


@pytest.mark.parametrize("seed", range(4))
def test_complementarity_solution_meets_its_conditions(seed):
    rng = np.random.default_rng(seed)
    k, p = 3, 6
    alpha = rng.normal(size=(k, k))
    alpha = alpha + alpha.T - 2 * np.eye(k)  # indefinite: some directions are past the threshold
    factor = rng.normal(size=(p, p))
    beta = factor @ factor.T + 0.1 * np.eye(p)
    covariance = solve_psd_complementarity(jnp.asarray(alpha), jnp.asarray(beta))
    smallest_x, smallest_slack, gap = _kkt(alpha, beta, covariance)
    assert smallest_x > -1e-8 and smallest_slack > -1e-6 and abs(gap) < 1e-6
    assert np.linalg.norm(covariance) > 0.01  # alpha is not PSD, so X = 0 is not the answer


def test_a_psd_margin_needs_no_oscillation():
    alpha, beta = jnp.diag(jnp.array([1.0, 0.5])), jnp.eye(3)
    np.testing.assert_array_equal(solve_psd_complementarity(alpha, beta), jnp.zeros((2, 2)))


def test_below_two_over_eta_the_central_flow_is_the_gradient_flow():
    matrix, start = random_quadratic(np.linspace(1.0, 15.0, 6))  # λ_max = 15 < 2/η = 20
    loss = lambda w: 0.5 * w @ matrix @ w
    central = analysis.central_flow(loss, jnp.asarray(start), ETA, 3.0, num_eigs=2, lanczos_iterations=6, num_saves=7)
    flow = analysis.gradient_flow(loss, jnp.asarray(start), central.times, method="bosh3", rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(central.params, flow.params, rtol=1e-12, atol=1e-14)
    assert np.all(np.asarray(central.at_edge) == 0) and np.all(np.asarray(central.covariance) == 0)
    np.testing.assert_allclose(central.predicted_loss, jax.vmap(loss)(flow.params), rtol=1e-12)


def _linear_sharpening(w, c=0.05):
    """``½ y x² - c y``: the sharpness is y, which the flow raises at rate c until it reaches 2/η."""
    return 0.5 * w[1] * w[0] ** 2 - c * w[1]


def test_the_flow_stops_at_the_edge_and_predicts_the_average_of_gradient_descent():
    w0 = jnp.array([0.01, 19.5])
    solution = analysis.central_flow(_linear_sharpening, w0, ETA, 200.0, num_eigs=1, lanczos_iterations=2, num_saves=21)
    assert bool(solution.successful)
    sharpness = np.asarray(solution.eigenvalues[:, 0])
    assert sharpness[0] < THRESHOLD and solution.at_edge[0] == 0 and np.all(np.asarray(solution.at_edge[5:]) == 1)
    np.testing.assert_allclose(sharpness[5:], THRESHOLD, rtol=1e-4)
    np.testing.assert_allclose(solution.covariance[5:, 0, 0], 2 * 0.05, rtol=1e-3)  # y' = c - X/2 = 0
    # Gradient descent oscillates along x and its sharpness cycles around 2/η; its average y is the flow's.
    gradient = jax.jit(jax.grad(_linear_sharpening))
    w, path = w0, []
    for _ in range(2000):
        path.append(np.asarray(w))
        w = w - ETA * gradient(w)
    path = np.array(path)
    np.testing.assert_allclose(path[400:, 1].mean(), solution.params[-1][1], rtol=1e-2)
    np.testing.assert_allclose((path[400:, 0] ** 2).mean(), solution.covariance[-1, 0, 0], rtol=0.15)


def test_two_directions_at_the_edge_share_the_oscillation():
    loss = lambda w: 0.5 * w[2] * (w[0] ** 2 + w[1] ** 2) - 0.05 * w[2]  # a double eigenvalue y
    point = jax.jit(
        lambda w: central_point(loss, w, ETA, num_eigs=2, lanczos_iterations=3, relaxation=2.0, key=jax.random.key(0))
    )(jnp.array([0.0, 0.0, THRESHOLD]))
    np.testing.assert_allclose(np.trace(point.covariance), 0.1, rtol=1e-6)  # y' = c - tr X / 2 = 0
    assert np.linalg.eigvalsh(point.covariance)[0] > 1e-3  # both directions oscillate
    np.testing.assert_allclose(point.velocity, 0.0, atol=1e-8)


def test_the_work_is_counted():
    matrix, start = random_quadratic(np.linspace(1.0, 15.0, 6))
    solution = analysis.central_flow(
        lambda w: 0.5 * w @ matrix @ w, jnp.asarray(start), ETA, 1.0, num_eigs=2, lanczos_iterations=5, num_saves=3
    )
    rhs = int(solution.rhs_evals)
    assert rhs > 3 and int(solution.hvp_evals) == 5 * rhs and int(solution.third_derivative_evals) == 3 * rhs
    assert int(solution.gradient_equivalents) == rhs * (1 + 2 * 5 + 4 * 3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"learning_rate": 0.0}, "learning_rate must be a finite positive number"),
        ({"t_end": -1.0}, "t_end must be a finite positive number"),
        ({"num_eigs": 3}, "num_eigs = 3 exceeds the 2 parameters"),
        ({"lanczos_iterations": 1}, "lanczos_iterations must be an integer of at least 2"),
        ({"params": jnp.array([1.0 + 1j, 0.0])}, "params"),
        ({"value_fn": None}, "value_fn"),
    ],
)
def test_bad_arguments_are_refused_by_name(overrides, message):
    arguments = dict(value_fn=_linear_sharpening, params=jnp.array([0.1, 1.0]), learning_rate=ETA, t_end=1.0)
    with pytest.raises(ValueError, match=message):
        analysis.central_flow(**({"num_eigs": 2} | arguments | overrides))
