"""Train loop: oracle binding, evaluation budgets, determinism, kill-and-resume, divergence, CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import flowopt
from flowopt import registry
from flowopt.training import cli, data, loop, models, optimizers, parallel, step
from flowopt.training import config as config_lib
from flowopt.training.config import TrainConfig
from tests import REPO_ROOT
from tests.training.runs import kill_after_steps, train_argv

TINY = dict(
    model="mlp",
    model_options={"hidden": [16]},
    dataset="synthetic_mnist",
    batch_size=32,
    eval_batch_size=50,
    learning_rate=0.05,
    progress=False,
)
REQUIRED = {"epoch", "grad_evals", "train_loss", "test_loss", "test_accuracy"}


def _config(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, **overrides})


def _leaves(result: loop.RunResult) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(result.state.params)]


def _without_time(rows):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


@pytest.mark.parametrize("optimizer, cost", [("sgd", 1), ("rk4", 4)])
def test_grad_eval_budget_counts_oracle_calls_and_ends_mid_epoch(tiny_data, optimizer, cost):
    result = loop.train(_config(optimizer=optimizer, grad_evals=50), dataset=tiny_data)
    last = result.history[-1]
    assert last["grad_evals"] == (50 // cost) * cost and last["step"] == 50 // cost
    assert int(result.state.grad_evals) == last["grad_evals"]
    assert REQUIRED <= set(last) and last["partial"] == (last["step"] % 8 != 0)
    assert result.history[0]["epoch"] == 1 and last["epoch"] == last["step"] / 8
    assert not result.diverged


def test_rows_carry_the_diagnostics_of_an_optimizer_that_reports_them(tiny_data):
    options = {"estimate_every": 4, "lanczos_iterations": 3}
    result = loop.train(_config(optimizer="rkc_auto", learning_rate=2.0, optimizer_options=options, steps=10), dataset=tiny_data)
    for row in result.history:
        diagnostics = row["optimizer"]
        assert diagnostics["gradient_evals"] == row["grad_evals"]  # the same count, sharpness estimates included
        assert diagnostics["hvp_evals"] == 3 * diagnostics["estimates"] and diagnostics["stages"] >= 1
    assert result.history[-1]["optimizer"]["estimates"] == 3  # steps 0, 4 and 8
    assert "optimizer" not in loop.train(_config(steps=2), dataset=tiny_data).history[-1]


def test_step_budget_ends_mid_epoch_with_an_evaluation(tiny_data):
    by_steps = loop.train(_config(steps=11, epochs=5), dataset=tiny_data)
    assert [r["step"] for r in by_steps.history] == [8, 11] and by_steps.history[-1]["epoch"] == 1.375


def test_same_seed_same_numbers_bitwise(tiny_data):
    runs = [loop.train(_config(optimizer="rk4", epochs=2, seed=1), dataset=tiny_data) for _ in range(2)]
    for a, b in zip(_leaves(runs[0]), _leaves(runs[1])):
        np.testing.assert_array_equal(a, b)
    assert _without_time(runs[0].history) == _without_time(runs[1].history)


def test_killed_run_resumes_to_bitwise_identical_parameters(tiny_data, tmp_path, monkeypatch):
    config = _config(optimizer="heun", epochs=3, checkpoint_every=5)
    reference = loop.train(config, tmp_path / "reference", dataset=tiny_data)
    rows = kill_after_steps(13, config, tmp_path / "run", tiny_data, monkeypatch)
    assert [r["step"] for r in rows] == [8]
    resumed = loop.train(config, tmp_path / "run", dataset=tiny_data)
    for a, b in zip(_leaves(reference), _leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    assert _without_time(resumed.history) == _without_time(reference.history)
    assert int(resumed.state.grad_evals) == int(reference.state.grad_evals) == 2 * 24


def test_eval_every_adds_rows_without_changing_the_trajectory(tiny_data, tmp_path, monkeypatch):
    plain = loop.train(_config(optimizer="rk4", epochs=2), dataset=tiny_data)
    fine = loop.train(_config(optimizer="rk4", epochs=2, eval_every=3), tmp_path / "fine", dataset=tiny_data)
    for a, b in zip(_leaves(plain), _leaves(fine)):
        np.testing.assert_array_equal(a, b)
    assert [r["step"] for r in fine.history] == [3, 6, 8, 9, 12, 15, 16]  # multiples of 3, and epoch ends
    assert [r["grad_evals"] for r in fine.history] == [4 * r["step"] for r in fine.history]
    assert [r["partial"] for r in fine.history] == [True, True, False, True, True, True, False]
    assert fine.history[0]["epoch"] == pytest.approx(3 / 8)
    for epoch, rows in ((0, fine.history[:3]), (1, fine.history[3:])):
        batches = np.diff([8 * epoch] + [r["step"] for r in rows])
        mean = sum(n * r["train_loss"] for n, r in zip(batches, rows)) / batches.sum()
        assert mean == pytest.approx(plain.history[epoch]["train_loss"], rel=1e-6)
        assert rows[-1]["test_loss"] == plain.history[epoch]["test_loss"]
    # Mid-epoch rows are not checkpoints: a killed run resumes from the last epoch end and redoes the rest.
    assert sorted(int(p.name) for p in (tmp_path / "fine" / "checkpoints").iterdir() if p.name.isdigit()) == [8, 16]
    config = _config(optimizer="rk4", epochs=2, eval_every=3)
    rows = kill_after_steps(13, config, tmp_path / "killed", tiny_data, monkeypatch)
    assert [r["step"] for r in rows] == [3, 6, 8, 9, 12]
    resumed = loop.train(config, tmp_path / "killed", dataset=tiny_data)
    assert _without_time(resumed.history) == _without_time(fine.history)


def test_resume_refuses_a_different_run_and_extends_a_budget(tiny_data, tmp_path):
    loop.train(_config(steps=8), tmp_path, dataset=tiny_data)
    with pytest.raises(ValueError, match=r"differs in \['learning_rate'\]"):
        loop.train(_config(steps=8, learning_rate=0.1), tmp_path, dataset=tiny_data)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        loop.train(_config(steps=8, resume=False), tmp_path, dataset=tiny_data)
    extended = loop.train(_config(steps=16), tmp_path, dataset=tiny_data)
    assert [r["step"] for r in extended.history] == [8, 16]


def test_divergence_stops_keeps_last_good_checkpoint_and_is_recorded(tiny_data, tmp_path):
    explode = optax.sgd(lambda count: jnp.where(count < 20, 0.05, 1e30))
    result = loop.train(_config(epochs=5), tmp_path, dataset=tiny_data, tx=explode)
    assert result.diverged and "diverged" in result.message and "step 16" in result.message
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["diverged"] is True and last["step"] >= 20
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [8, 16]


def test_objective_puts_weight_decay_and_penalty_in_the_loss():
    model = models.create_model("lasso", input_shape=(4, 4, 1), num_classes=3, l1=0.1)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(0), (5, 4, 4, 1))
    y = jnp.array([0, 1, 2, 0, 1])
    loss, _ = jax.jit(loop.make_objective(graphdef, weight_decay=0.3))(params, rest, x, y)

    @jax.jit
    def expected(kernel, bias):
        logits = x.reshape(5, -1) @ kernel + bias
        return (
            jnp.mean(0.5 * jnp.sum((logits - jax.nn.one_hot(y, 3)) ** 2, -1))
            + 0.1 * jnp.sum(jnp.abs(kernel))
            + 0.3 * 0.5 * jnp.sum(kernel**2)
        )

    np.testing.assert_allclose(loss, expected(model.linear.kernel[...], model.linear.bias[...]), rtol=1e-6)


def test_train_step_binds_the_oracle_to_the_batch(tiny_data):
    model = models.create_model("mlp", input_shape=(8, 8, 1), num_classes=10, hidden=(16,))
    mesh = parallel.data_mesh(1)
    prep = step.Preprocess(*tiny_data.channel_stats(), False)
    x, y = tiny_data.x_train[:32], tiny_data.y_train[:32]
    states = {}
    for name in ("rk4", "euler"):
        tx = optimizers.make_optimizer(name, 0.1)
        graphdef, state = step.init_state(model, tx, 0, mesh)
        states[name], _ = step.make_train_step(graphdef, tx, prep, 0.0, mesh)(state, x, y)
    objective = step.make_objective(graphdef, 0.0)
    inputs = data.normalize(x, prep.mean, prep.std)
    f = lambda p: objective(p, state.model_state, inputs, y)[0]  # noqa: E731
    g = lambda fn: jax.jit(jax.grad(fn))  # noqa: E731
    p0 = state.params
    k1 = g(f)(p0)
    k2 = g(f)(jax.tree.map(lambda p, k: p - 0.05 * k, p0, k1))
    k3 = g(f)(jax.tree.map(lambda p, k: p - 0.05 * k, p0, k2))
    k4 = g(f)(jax.tree.map(lambda p, k: p - 0.1 * k, p0, k3))
    expected = jax.tree.map(lambda p, a, b, c, d: p - 0.1 * (a + 2 * b + 2 * c + d) / 6, p0, k1, k2, k3, k4)
    for a, b in zip(jax.tree.leaves(states["rk4"].params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    assert int(states["rk4"].grad_evals) == 4 and int(states["euler"].grad_evals) == 1


def test_augmentation_and_batch_norm_models_train(tmp_path):
    cifar_like = data.synthetic_dataset("synthetic_cifar10", num_train=64, num_test=20, image_shape=(8, 8, 3))
    config = TrainConfig(
        model="resnet20",
        model_options={"stage_sizes": [1, 1], "widths": [4, 8]},
        dataset="synthetic_cifar10",
        optimizer="heun",
        augment=True,
        batch_size=16,
        steps=6,
        eval_batch_size=20,
        progress=False,
        weight_decay=5e-4,
    )
    result = loop.train(config, dataset=cifar_like)
    assert result.history[-1]["grad_evals"] == 12 and not result.diverged
    stats = jax.tree.leaves(result.state.model_state)
    assert stats and all(np.isfinite(s).all() for s in stats)


def test_optimizer_registry():
    assert {"sgd", "momentum", "adam", "euler", "heun", "rk4", "rk38", "ssprk3"} <= set(optimizers.available_optimizers())
    assert isinstance(optimizers.make_optimizer("rk4", 0.1), optax.GradientTransformation)
    assert isinstance(optimizers.make_optimizer("momentum", 0.1, momentum=0.5), optax.GradientTransformation)
    with pytest.raises(ValueError, match="valid names: sgd, momentum"):
        optimizers.make_optimizer("lbfgs_deluxe", 0.1)
    with pytest.raises(ValueError, match="rejected options"):
        optimizers.make_optimizer("sgd", 0.1, colour="blue")
    with pytest.raises(ValueError, match="not an optimizer constructor"):
        optimizers.make_optimizer("oracle_evaluations", 0.1)


def test_a_constructor_added_to_the_registry_is_available_without_change(monkeypatch):
    entry = dataclasses.replace(registry.OPTIMIZERS["heun"], name="brand_new_method")
    monkeypatch.setattr(registry, "OPTIMIZERS", types.MappingProxyType({**registry.OPTIMIZERS, "brand_new_method": entry}))
    assert isinstance(optimizers.make_optimizer("brand_new_method", 0.1), optax.GradientTransformation)
    assert "brand_new_method" in optimizers.available_optimizers()
    assert optimizers.gradients_per_step("brand_new_method") == 2


def test_a_flowopt_function_without_a_registry_entry_is_no_optimizer(monkeypatch):
    monkeypatch.setattr(flowopt, "brand_new_method", lambda learning_rate: optax.sgd(learning_rate), raising=False)
    with pytest.raises(ValueError, match="not an optimizer constructor .it has no entry in flowopt.registry.OPTIMIZERS"):
        optimizers.make_optimizer("brand_new_method", 0.1)


@pytest.mark.parametrize(
    "name, options, cost",
    [
        ("sgd", {}, 1),
        ("momentum", {"momentum": 0.5}, 1),
        ("adam", {}, 1),
        ("heun", {}, 2),
        ("rk4", {}, 4),
        ("bdf2", {"inner_steps": 3}, 4),
        ("backward_euler", {"inner_steps": 5}, 6),
        ("adams_bashforth3", {}, 1),
    ],
)
def test_gradients_per_step_comes_from_the_registry(name, options, cost):
    assert optimizers.gradients_per_step(name, **options) == cost


def test_gradients_per_step_names_a_missing_option():
    with pytest.raises(ValueError, match="inner_steps"):
        optimizers.gradients_per_step("bdf2")


def test_config_validation_and_files(tmp_path):
    with pytest.raises(ValueError, match="Set a budget"):
        TrainConfig()
    with pytest.raises(ValueError, match="Unknown config key"):
        TrainConfig.from_dict({"epochs": 1, "learning_rte": 0.1})
    with pytest.raises(ValueError, match="needs a length"):
        TrainConfig(grad_evals=10, schedule="cosine")
    (tmp_path / "run.yaml").write_text("model: lenet5\nepochs: 3\nmodel_options: {image_size: 28}\n")
    (tmp_path / "run.json").write_text(json.dumps({"model": "lenet5", "epochs": 3, "model_options": {"image_size": 28}}))
    assert TrainConfig.from_file(tmp_path / "run.yaml") == TrainConfig.from_file(tmp_path / "run.json")
    for path in sorted(REPO_ROOT.glob("configs/train/*.yaml")):
        config = TrainConfig.from_file(path)
        assert config.model in models.MODELS and config.dataset in data.DATASET_NAMES, path
    assert config_lib.trajectory_mismatch(_config(steps=3).to_dict(), _config(steps=9)) == []


def test_cli_writes_metrics_and_checkpoints_and_reports_divergence(tmp_path, capsys):
    args = train_argv(
        tmp_path / "ok",
        "--optimizer",
        "ralston",
        "--learning-rate",
        "0.01",
        "--grad-evals",
        "40",
        "--seed",
        "3",
        "--batch-size",
        "256",
    )
    assert cli.main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(REQUIRED <= set(r) for r in rows) and rows[-1]["grad_evals"] == 40
    assert (tmp_path / "ok" / "checkpoints").is_dir()
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["dataset"].startswith("Synthetic")
    bad = args[:-1] + [str(tmp_path / "bad")]
    bad[bad.index("0.01")] = "3e38"
    assert cli.main(bad) == cli.EXIT_DIVERGED  # every stage overflows: the step is skipped, and the run stops
    err = capsys.readouterr().err
    assert "diverged" in err and "skipped step 0" in err
    with pytest.raises(SystemExit):
        cli.main(["--model", "nope", "--epochs", "1", "--output", str(tmp_path / "x")])


def test_config_file_and_flag_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("model: mlp\nepochs: 2\nlearning_rate: 0.3\nmodel_options: {hidden: [8]}\n")
    args = cli.build_parser().parse_args(
        [
            "--config",
            str(tmp_path / "c.yaml"),
            "--learning-rate",
            "0.1",
            "--model-option",
            "activation=tanh",
            "--data-path",
            "/data/x",
            "--output",
            "o",
        ]
    )
    config = cli.config_from_args(args)
    assert config.learning_rate == 0.1 and config.epochs == 2
    assert dict(config.model_options) == {"hidden": [8], "activation": "tanh"}
    assert config.dataset_options == {"path": "/data/x"}


_EIGHT_DEVICES = textwrap.dedent(
    """
    import jax, numpy as np
    from flowopt.training import data, loop
    from flowopt.training.config import TrainConfig
    assert jax.device_count() == 8, jax.devices()
    ds = data.synthetic_dataset("synthetic_mnist", num_train=256, num_test=70, image_shape=(8, 8, 1))
    runs = {}
    for n in (8, 1):
        config = TrainConfig(model="mlp", model_options={"hidden": [16]}, dataset="synthetic_mnist",
                             optimizer="heun", batch_size=32, eval_batch_size=50, epochs=2,
                             learning_rate=0.05, num_devices=n, progress=False)
        runs[n] = loop.train(config, dataset=ds)
    sharding = jax.tree.leaves(runs[8].state.params)[0].sharding
    assert len(sharding.device_set) == 8 and sharding.is_fully_replicated
    for a, b in zip(jax.tree.leaves(runs[8].state.params), jax.tree.leaves(runs[1].state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for r8, r1 in zip(runs[8].history, runs[1].history):
        np.testing.assert_allclose(r8["test_loss"], r1["test_loss"], rtol=1e-5)
        assert r8["grad_evals"] == r1["grad_evals"]
    print("match")
    """
)


def test_eight_host_devices_match_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "match" in result.stdout


@pytest.mark.slow
def test_real_mnist_logistic_regression_reaches_92_percent(mnist_data_dir):
    config = TrainConfig(
        model="logistic_regression",
        dataset="mnist",
        optimizer="sgd",
        learning_rate=0.5,
        schedule="cosine",
        epochs=5,
        progress=False,
        dataset_options={"data_dir": str(mnist_data_dir)},
    )
    result = loop.train(config)
    assert result.history[-1]["test_accuracy"] >= 0.92
