"""NNX models: shapes, parameter counts, bias-free structure, the Lasso penalty, train/eval modes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flowopt.training import models

MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)


def _param_count(model: nnx.Module) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
    "name, shape, options, count",
    [
        ("logistic_regression", MNIST, {}, 7_850),
        ("lasso", MNIST, {}, 7_850),
        ("mlp", MNIST, {}, 269_322),
        ("deep_linear", MNIST, {}, 42_200),
        ("relu_fc", MNIST, {}, 42_200),
        ("bias_free_cnn", MNIST, {}, 61_470),
        ("lenet5", MNIST, {}, 61_706),
        ("resnet20", CIFAR, {}, 269_722),
        ("resnet18", CIFAR, {}, 11_173_962),
        ("wide_resnet", CIFAR, {}, 36_479_194),
    ],
)
def test_architecture_sizes_and_output_shape(name, shape, options, count):
    def build_and_apply():
        model = models.create_model(name, input_shape=shape, num_classes=10, **options)
        model.eval()
        return model, model(jnp.zeros((2, *shape)))

    model, logits = nnx.eval_shape(build_and_apply)
    assert logits.shape == (2, 10)
    assert _param_count(model) == count


@nnx.jit
def _apply(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model(x)


@pytest.mark.parametrize("name", ["deep_linear", "relu_fc", "bias_free_cnn"])
def test_bias_free_nets_have_no_biases_and_are_homogeneous(name):
    model = models.create_model(name, input_shape=MNIST, num_classes=10)
    paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))]
    assert not any("bias" in jax.tree_util.keystr(p) for p in paths)
    x = jax.random.normal(jax.random.key(0), (3, *MNIST))
    np.testing.assert_allclose(_apply(model, 2 * x), 2 * _apply(model, x), rtol=1e-5, atol=1e-5)
    if name == "deep_linear":
        y = jax.random.normal(jax.random.key(1), (3, *MNIST))
        np.testing.assert_allclose(_apply(model, x - y), _apply(model, x) - _apply(model, y), rtol=1e-4, atol=1e-5)


def test_lasso_has_a_real_l1_penalty_and_squared_error_loss():
    model = models.create_model("lasso", input_shape=MNIST, num_classes=10, l1=0.01)
    assert models.task_loss(model) == "squared_error"
    expected = 0.01 * jnp.sum(jnp.abs(model.linear.kernel[...]))
    np.testing.assert_allclose(models.penalty(model), expected, rtol=1e-6)
    assert float(models.penalty(model)) > 0
    plain = models.create_model("logistic_regression", input_shape=MNIST, num_classes=10)
    assert models.task_loss(plain) == "cross_entropy" and float(models.penalty(plain)) == 0
    with pytest.raises(ValueError, match="l1 must be non-negative"):
        models.create_model("lasso", input_shape=MNIST, num_classes=10, l1=-1.0)


def test_small_resnet_runs_and_batch_norm_follows_the_mode():
    model = models.create_model("resnet20", input_shape=(8, 8, 3), num_classes=10, stage_sizes=(1, 1), widths=(4, 8))
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3)) + 3.0
    model.train()
    assert _apply(model, x).shape == (4, 10)
    assert float(jnp.abs(model.stem_bn.mean[...]).sum()) > 0
    model.eval()
    before = model.stem_bn.mean[...]
    _apply(model, x)
    np.testing.assert_array_equal(model.stem_bn.mean[...], before)


def test_wide_block_dropout_is_random_in_training_only():
    block = models.WideBlock(4, 4, 1, dropout_rate=0.5, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    block.eval()
    np.testing.assert_array_equal(_apply(block, x), _apply(block, x))
    block.train()
    assert not np.array_equal(_apply(block, x), _apply(block, x))
    with pytest.raises(ValueError, match="6n\\+4"):
        models.create_model("wide_resnet", input_shape=CIFAR, num_classes=10, depth=12)


def test_same_seed_same_initialisation():
    a = models.create_model("mlp", input_shape=MNIST, num_classes=10, seed=3, hidden=(8,))
    b = models.create_model("mlp", input_shape=MNIST, num_classes=10, seed=3, hidden=(8,))
    c = models.create_model("mlp", input_shape=MNIST, num_classes=10, seed=4, hidden=(8,))
    leaves = lambda m: jax.tree.leaves(nnx.state(m, nnx.Param))  # noqa: E731
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(c)))


def test_bad_names_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="valid names: logistic_regression, lasso, mlp"):
        models.create_model("vgg", input_shape=MNIST, num_classes=10)
    with pytest.raises(ValueError, match=r"no option\(s\) \['depth'\]; valid options: \['hidden'"):
        models.create_model("mlp", input_shape=MNIST, num_classes=10, depth=3)
    with pytest.raises(ValueError, match="Unknown activation"):
        models.create_model("mlp", input_shape=MNIST, num_classes=10, activation="gelu")
    assert models.model_options("lasso") == ("l1",)
