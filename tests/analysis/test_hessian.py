"""Lanczos extreme eigenvalues, Hutchinson traces, sharpness along trajectories, the GF–GD bound."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from flowopt import analysis
from tests.problems import random_quadratic


def _quadratic(eigenvalues, seed=0):
    return random_quadratic(eigenvalues, seed)[0]


def _mlp(sizes=(3, 10, 10, 1), seed=0):
    """A tanh MLP regression loss on a fixed batch (float64), with its parameters as a list of dicts."""
    keys = jax.random.split(jax.random.key(seed), len(sizes) + 1)
    params = [
        {"w": jax.random.normal(k, (m, n), jnp.float64) / np.sqrt(m), "b": 0.1 * jnp.ones(n, jnp.float64)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:])
    ]
    x = jax.random.normal(keys[-1], (24, sizes[0]), jnp.float64)
    y = jnp.sin(x[:, :1]) + 0.5 * x[:, 1:2] ** 2

    def loss(p):
        h = x
        for layer in p[:-1]:
            h = jnp.tanh(h @ layer["w"] + layer["b"])
        return jnp.mean((h @ p[-1]["w"] + p[-1]["b"] - y) ** 2)

    return params, loss


@pytest.fixture(scope="module")
def mlp():
    """The MLP, and the dense Hessian spectra at θ, 1.3θ and 0.7θ (the points of a test trajectory)."""
    with jax.enable_x64(True):
        params, loss = _mlp()
        flat, unravel = ravel_pytree(params)
        hessian = jax.jit(jax.vmap(jax.hessian(lambda v: loss(unravel(v)))))
        scales = np.array([1.0, 1.3, 0.7])
        spectra = np.linalg.eigvalsh(np.asarray(hessian(scales[:, None] * flat[None, :])))
    return params, loss, scales, spectra


@pytest.mark.usefixtures("x64")
def test_lanczos_matches_eigh_on_a_quadratic_with_negative_curvature():
    eigenvalues = np.concatenate([[-2.0, -1.5], np.linspace(0.01, 1.0, 76), [3.0, 10.0]])
    a = jnp.asarray(_quadratic(eigenvalues))
    params = {"x": jnp.ones(80), "unused_scale": jnp.ones(())}
    loss = lambda p: 0.5 * p["x"] @ a @ p["x"] + 0.0 * p["unused_scale"]
    dense = np.linalg.eigvalsh(np.asarray(a))
    low, high = analysis.extreme_eigenvalues(loss, params, num_iterations=40)
    # 40 < 81 parameters: a genuine Krylov approximation, not a full tridiagonalisation.
    assert abs(low - dense[0]) <= 1e-4 * abs(dense[0])
    assert abs(high - dense[-1]) <= 1e-4 * abs(dense[-1])
    # Ritz values lie inside the spectrum (here: min(dense[0], 0) for the zero direction).
    assert low >= dense[0] - 1e-10 and high <= dense[-1] + 1e-10


@pytest.mark.usefixtures("x64")
def test_lanczos_matches_eigh_on_an_mlp(mlp):
    params, loss, _, spectra = mlp
    dense = spectra[0]
    size = ravel_pytree(params)[0].size
    low, high = analysis.extreme_eigenvalues(loss, params, num_iterations=64)
    assert size == 161 and dense[0] < 0 < dense[-1]
    assert abs(low - dense[0]) <= 1e-4 * abs(dense[0])
    assert abs(high - dense[-1]) <= 1e-4 * abs(dense[-1])
    # The residual certificate: each Ritz value is within its residual of a true eigenvalue.
    flat, unravel = ravel_pytree(params)
    matvec = lambda v: ravel_pytree(analysis.hessian_vector_product(loss, params, unravel(v)))[0]
    result = analysis.lanczos(matvec, size, 24, jax.random.key(3), jnp.float64)
    distance = np.abs(np.asarray(result.ritz_values)[:, None] - dense[None, :]).min(axis=1)
    assert np.all(distance <= np.asarray(result.residuals) + 1e-10)


@pytest.mark.usefixtures("x64")
def test_lanczos_restarts_when_the_krylov_space_is_exhausted():
    # Three distinct eigenvalues: the Krylov space is invariant after three steps and Lanczos must
    # restart (with β = 0) rather than produce spurious Ritz values.
    eigenvalues = np.repeat([-1.0, 2.0, 5.0], 10)
    a = jnp.asarray(_quadratic(eigenvalues, seed=1))
    result = analysis.lanczos(lambda v: a @ v, 30, 12, jax.random.key(0), jnp.float64)
    ritz = np.asarray(result.ritz_values)
    assert np.all(np.isfinite(ritz))
    assert np.min(np.abs(ritz[:, None] - np.array([-1.0, 2.0, 5.0])[None, :]), axis=1).max() < 1e-10
    zero = analysis.lanczos(lambda v: 0.0 * v, 5, 5, jax.random.key(0), jnp.float64)
    assert np.all(np.asarray(zero.ritz_values) == 0.0)


@pytest.mark.usefixtures("x64")
def test_hutchinson_trace_is_unbiased_within_its_standard_error(mlp):
    params, loss, _, spectra = mlp
    exact = spectra[0].sum()
    few = analysis.hutchinson_trace(loss, params, num_samples=50, key=jax.random.key(1))
    many = analysis.hutchinson_trace(loss, params, num_samples=800, key=jax.random.key(2))
    assert abs(few.trace - exact) <= 4 * few.standard_error
    assert abs(many.trace - exact) <= 4 * many.standard_error
    # The standard error falls like 1/√S.
    assert float(many.standard_error / few.standard_error) == pytest.approx(0.25, rel=0.3)
    with pytest.raises(ValueError, match="num_samples"):
        analysis.hutchinson_trace(loss, params, num_samples=1)


@pytest.mark.usefixtures("x64")
def test_spectrum_along_a_trajectory_matches_pointwise_eigh(mlp):
    params, loss, scales, spectra = mlp
    trajectory = jax.tree.map(lambda x: jnp.asarray(scales).reshape(-1, *[1] * x.ndim) * x[None], params)
    along = analysis.spectrum_along(loss, trajectory, num_iterations=64)
    sharp = analysis.sharpness(loss, trajectory, num_iterations=64)
    np.testing.assert_allclose(along.lambda_min, spectra[:, 0], rtol=1e-4)
    np.testing.assert_allclose(along.lambda_max, spectra[:, -1], rtol=1e-4)
    np.testing.assert_allclose(sharp, spectra[:, -1], rtol=1e-4)


@pytest.mark.usefixtures("x64")
def test_gd_error_bound_integrates_negative_curvature_only():
    times = jnp.linspace(0.0, 2.0, 201)
    # λ_min = -(1 - t): negative on [0, 1), positive after; ∫₀ᵗ λ_min⁻ = t - t²/2 up to t = 1.
    bound = analysis.gd_error_bound(times, -(1.0 - times), learning_rate=0.01)
    expected = np.where(times <= 1, times - times**2 / 2, 0.5)
    np.testing.assert_allclose(bound.negative_curvature, expected, atol=1e-4)
    np.testing.assert_allclose(bound.bound, 0.01 * times * np.exp(expected), rtol=1e-3)
    # Convex everywhere: the bound is η t.
    convex = analysis.gd_error_bound(times, jnp.ones_like(times), learning_rate=0.1)
    np.testing.assert_allclose(convex.bound, 0.1 * times)
    with pytest.raises(ValueError, match="equal length"):
        analysis.gd_error_bound(times, times[:-1], 0.1)
