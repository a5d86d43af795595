"""Sharpness tracking: Lanczos against a dense Hessian, cost accounting, resume, thresholds, the plot."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from flowopt.training import loop, parallel, plots, rundir, sharpness, step
from flowopt.training.config import ConfigError, TrainConfig
from flowopt.training.optimizers import make_optimizer
from flowopt.training.thresholds import stability_rule
from tests.training.runs import TINY_LOGISTIC, kill_after_steps

TINY = dict(TINY_LOGISTIC, sharpness_every=4)
# 8 steps an epoch: sharpness rows at multiples of 3, evaluation rows at 8 and 16; checkpoints at 5, 8, 10, 15, 16.
RESUMED = dict(
    TINY, optimizer="momentum", learning_rate=0.5, epochs=2, checkpoint_every=5, sharpness_every=3, sharpness_iterations=5
)


def _config(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, **overrides})


def _without_time(rows):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def _dense_hessian(result: loop.RunResult, config: TrainConfig, dataset) -> np.ndarray:
    """The Hessian of the run's evaluation-mode objective on its fixed batch, formed densely."""
    prep = step.Preprocess(*dataset.channel_stats(), False)
    x, y = sharpness.sharpness_batch(dataset, config.sharpness_batch_size, config.seed, prep, parallel.data_mesh(1))
    objective = step.make_objective(result.graphdef, config.weight_decay, train=False)
    flat, unravel = ravel_pytree(result.state.params)
    return np.asarray(jax.hessian(lambda v: objective(unravel(v), result.state.model_state, x, y)[0])(flat))


def _adam_diagonal(result: loop.RunResult) -> np.ndarray:
    """optax Adam's ``(1 - β₁ᵗ)(sqrt(v̂) + ε)`` with the defaults, flat."""
    adam_state = result.state.opt_state[0]
    t = int(adam_state.count)
    nu = ravel_pytree(adam_state.nu)[0]
    return np.asarray((1 - 0.9**t) * (jnp.sqrt(nu / (1 - 0.999**t)) + 1e-8))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_logged_top_eigenvalues_match_a_dense_hessian(tiny_data, optimizer):
    config = _config(optimizer=optimizer, steps=4, sharpness_top=3, sharpness_iterations=60, sharpness_batch_size=100)
    result = loop.train(config, dataset=tiny_data)
    (row,) = result.sharpness
    hessian = _dense_hessian(result, config, tiny_data)
    if optimizer == "adam":
        scale = 1 / np.sqrt(_adam_diagonal(result))
        hessian = scale[:, None] * hessian * scale[None, :]
    expected = np.linalg.eigvalsh(hessian.astype(np.float64))[::-1][:3]
    assert row["sharpness"] == sorted(row["sharpness"], reverse=True)
    np.testing.assert_allclose(row["sharpness"], expected, rtol=1e-4)
    assert row["preconditioned"] == (optimizer == "adam")
    assert row["threshold"] == pytest.approx((2 if optimizer == "sgd" else 38) / 0.05)


def test_measurements_cost_apart_and_leave_the_trajectory_alone(tiny_data):
    plain = loop.train(_config(optimizer="heun", epochs=2, sharpness_every=None), dataset=tiny_data)
    tracked = loop.train(_config(optimizer="heun", epochs=2, sharpness_every=3, sharpness_iterations=5), dataset=tiny_data)
    for a, b in zip(jax.tree.leaves(plain.state.params), jax.tree.leaves(tracked.state.params)):
        np.testing.assert_array_equal(a, b)
    assert _without_time(tracked.history) == _without_time(plain.history)  # grad_evals included
    assert [r["step"] for r in tracked.sharpness] == [3, 6, 9, 12, 15]
    assert [r["grad_evals"] for r in tracked.sharpness] == [2 * r["step"] for r in tracked.sharpness]
    assert [r["sharpness_grad_evals"] for r in tracked.sharpness] == [2 * 5 * k for k in range(1, 6)]  # 2 per product
    assert tracked.sharpness[0]["rule"] == "reference" and tracked.sharpness[0]["threshold"] == 2 / 0.05


class _Stopped(BaseException):
    pass


def test_killed_run_with_sharpness_resumes_bit_for_bit(tiny_data, tmp_path, monkeypatch):
    config = TrainConfig(**RESUMED)
    reference = loop.train(config, tmp_path / "reference", dataset=tiny_data)
    assert reference.sharpness[-1]["sharpness_grad_evals"] == 5 * 2 * 5  # 5 measurements of 5 products
    rows = kill_after_steps(13, config, tmp_path / "run", tiny_data, monkeypatch)
    assert [r["step"] for r in rows] == [3, 6, 8, 9, 12]  # rows past the checkpoint at step 10 are redone
    resumed = loop.train(config, tmp_path / "run", dataset=tiny_data)
    assert _without_time(resumed.sharpness) == _without_time(reference.sharpness)
    assert _without_time(resumed.history) == _without_time(reference.history)

    def stop():
        raise _Stopped

    monkeypatch.setenv("_FLOWOPT_TEST_KILL_AT", "metrics_write@6")  # half of step 6's sharpness row is on disk
    monkeypatch.setattr(rundir, "_kill", stop)
    with pytest.raises(_Stopped):
        loop.train(config, tmp_path / "half", dataset=tiny_data)
    monkeypatch.delenv("_FLOWOPT_TEST_KILL_AT")
    resumed = loop.train(config, tmp_path / "half", dataset=tiny_data)
    assert _without_time(resumed.sharpness) == _without_time(reference.sharpness)
    assert _without_time(plots.read_metrics(tmp_path / "half")) == _without_time(plots.read_metrics(tmp_path / "reference"))


@pytest.mark.parametrize(
    "optimizer, options, rule, factor, preconditioned",
    [
        ("sgd", {}, "gradient_descent", 2.0, False),
        ("sgd", {"momentum": 0.5}, "heavy_ball", 3.0, False),
        ("momentum", {}, "heavy_ball", 3.8, False),
        ("nesterov", {}, "nesterov", 3.8 / 2.8, False),
        ("adam", {}, "adam", 38.0, True),
        ("adam", {"b1": 0.5}, "adam", 6.0, True),
        ("adam_flow", {}, "adam", 38.0, True),
        ("rmsprop", {}, "rmsprop", 2.0, True),
        ("rmsprop_flow", {}, "rmsprop", 2.0, True),
        ("rmsprop", {"centered": True}, "reference", 2.0, False),
        ("rk4", {}, "reference", 2.0, False),
    ],
)
def test_stability_rules(optimizer, options, rule, factor, preconditioned):
    params = {"w": jnp.ones(3)}
    found = stability_rule(optimizer, options, make_optimizer(optimizer, 0.1, **options).init(params))
    assert (found.name, found.preconditioner is not None) == (rule, preconditioned)
    assert found.threshold(0.1) == pytest.approx(factor / 0.1)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"sharpness_every": 0}, "sharpness_every"),
        ({"sharpness_top": 0}, "sharpness_top"),
        ({"sharpness_top": 21}, "sharpness_top"),
        ({"sharpness_iterations": 2.5}, "sharpness_iterations"),
        ({"sharpness_batch_size": -1}, "sharpness_batch_size"),
        ({"sharpness_every": None, "sharpness_top": 2}, "sharpness_top"),
    ],
)
def test_bad_sharpness_settings_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as error:
        _config(steps=1, **overrides)
    assert error.value.field == field


def test_more_eigenvalues_than_parameters_is_refused(tiny_data):
    with pytest.raises(ConfigError, match="650 parameters") as error:
        loop.train(_config(steps=1, sharpness_top=651, sharpness_iterations=651), dataset=tiny_data)
    assert error.value.field == "sharpness_top"


def test_plot_draws_the_sharpness_and_its_threshold(tiny_data, tmp_path):
    pytest.importorskip("matplotlib")
    config = _config(steps=8, sharpness_top=2, sharpness_iterations=5, learning_rate=0.2, schedule="cosine")
    result = loop.train(config, tmp_path / "run", dataset=tiny_data)
    thresholds = [row["threshold"] for row in result.sharpness]
    assert thresholds[1] > thresholds[0]  # 2/η grows as the cosine schedule decays
    figure = plots.plot_sharpness(plots.read_metrics(tmp_path / "run"), tmp_path / "sharpness.png")
    assert (tmp_path / "sharpness.png").stat().st_size > 0
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["sharpness λ_1", "sharpness λ_2", "threshold 2/η"]
    assert plots.main([str(tmp_path / "run")]) == 0 and (tmp_path / "run" / "sharpness.png").exists()
    with pytest.raises(ValueError, match="no sharpness measurement"):
        plots.plot_sharpness(result.history)
