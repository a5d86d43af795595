"""Sharded parameters (``param_sharding="fsdp"``): the sharding rule, the flag, and runs on 8 host devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

from flowopt.training import cli, parallel
from flowopt.training.config import ConfigError, TrainConfig
from tests import REPO_ROOT

P = PartitionSpec


@pytest.mark.parametrize(
    "shape, size, spec",
    [
        ((), 8, P()),
        ((10,), 8, P()),  # indivisible: replicated
        ((4,), 8, P()),  # shorter than the axis
        ((0,), 8, P()),  # empty
        ((16,), 8, P("data")),
        ((64, 32), 8, P("data", None)),  # the largest dimension
        ((16, 64), 8, P(None, "data")),
        ((10, 24), 8, P(None, "data")),  # the largest that the axis size divides
        ((32, 32), 8, P("data", None)),  # a tie: the first
        ((3, 3, 16, 16), 8, P(None, None, "data", None)),  # a convolution kernel
        ((5, 7), 1, P(None, "data")),  # one device divides everything
    ],
)
def test_fsdp_spec_splits_the_largest_divisible_dimension(shape, size, spec):
    assert parallel.fsdp_spec(shape, size) == spec


def test_fsdp_spec_rejects_a_bad_axis_size():
    with pytest.raises(ValueError, match="axis_size must be a positive integer"):
        parallel.fsdp_spec((8,), 0)


def test_fsdp_shardings_of_a_state_tree_on_an_abstract_mesh():
    mesh = AbstractMesh((8,), (parallel.DATA_AXIS,))
    params = {"kernel": jax.ShapeDtypeStruct((64, 32), jnp.float32), "bias": jax.ShapeDtypeStruct((10,), jnp.float32)}
    tree = {
        "params": params,
        "opt_state": (jax.ShapeDtypeStruct((), jnp.int32), params),  # a counter and a parameter-shaped moment
        "rng": jax.random.key(0),
        "keys": jax.random.split(jax.random.key(0), 8),  # keys stay replicated whatever their shape
    }
    shardings = parallel.fsdp_shardings(tree, mesh)
    specs = jax.tree.map(lambda s: s.spec, shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    assert specs["params"] == {"kernel": P("data", None), "bias": P()}
    assert specs["opt_state"] == (P(), specs["params"])  # the moments are split as their parameters are
    assert specs["rng"] == P() and specs["keys"] == P()


def test_state_shardings_on_one_device():
    mesh = parallel.data_mesh(1)
    tree = {"w": jnp.ones((4, 2)), "step": jnp.zeros([], jnp.int32)}
    replicated = parallel.state_shardings(tree, mesh)
    assert all(s.is_fully_replicated for s in jax.tree.leaves(replicated))
    placed = parallel.place_state(tree, mesh, "fsdp")
    assert placed["w"].sharding.spec == P("data", None) and placed["step"].sharding.spec == P()
    assert parallel.addressable_bytes(placed) == 4 * 2 * 4 + 4
    with pytest.raises(ValueError, match="Unknown param_sharding 'zero3'; valid: replicated, fsdp"):
        parallel.state_shardings(tree, mesh, "zero3")


def test_param_sharding_flag_and_field():
    args = cli.build_parser().parse_args(
        ["--dataset", "synthetic_mnist", "--steps", "1", "--param-sharding", "fsdp", "--output", "o"]
    )
    assert cli.config_from_args(args).param_sharding == "fsdp"
    assert TrainConfig(steps=1).param_sharding == "replicated"
    with pytest.raises(ConfigError, match="Unknown param_sharding 'zero3'; valid: replicated, fsdp") as error:
        TrainConfig(steps=1, param_sharding="zero3")
    assert error.value.field == "param_sharding"


_EIGHT_DEVICES = textwrap.dedent(
    """
    import os, sys
    import jax, numpy as np
    import flowopt
    from flowopt import tableaus
    from flowopt.training import data, loop, parallel
    from flowopt.training.config import TrainConfig
    assert jax.device_count() == 8, jax.devices()
    ds = data.synthetic_dataset("synthetic_mnist", num_train=256, num_test=64, image_shape=(8, 8, 1))
    BASE = dict(model="mlp", model_options={"hidden": [32]}, dataset="synthetic_mnist", batch_size=32,
                eval_batch_size=64, learning_rate=0.05, progress=False)

    def gap(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)) if a.size else 0.0

    def same(tree_a, tree_b, what, tolerance=1e-6):
        for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True):
            assert gap(a, b) <= tolerance, (what, gap(a, b))

    # Every integrator on sharded parameters and optimizer state, three steps on the same batches.
    OPTIMIZERS = {
        "rk4": ("rk4", {}, None),
        "bdf2": ("bdf2", {"inner_steps": 1}, None),
        "adam_flow": ("adam_flow", {}, None),
        "bosh3": ("sgd", {}, flowopt.adaptive_runge_kutta(tableaus.BOSH3, learning_rate=0.05, rtol=1e-3, atol=1e-6)),
        "rkc": ("rkc", {"stages": 5}, None),
    }
    for label, (name, options, tx) in OPTIMIZERS.items():
        runs = {}
        for kind in ("replicated", "fsdp"):
            config = TrainConfig(**BASE, optimizer=name, optimizer_options=options, steps=3, param_sharding=kind)
            setup = loop.build(config, ds, tx)
            state, losses = setup.state, []
            for i in range(3):
                batch = parallel.shard_batch((ds.x_train[32 * i : 32 * (i + 1)], ds.y_train[32 * i : 32 * (i + 1)]), setup.mesh)
                state, metrics = setup.train_step(state, *batch)
                losses.append(float(metrics.loss))
            runs[kind] = state, losses, setup.state
        (fsdp, fsdp_losses, start), (rep, rep_losses, _) = runs["fsdp"], runs["replicated"]
        assert max(map(gap, jax.tree.leaves(fsdp.params), jax.tree.leaves(start.params))) > 1e-4, label  # it moved
        same(fsdp.params, rep.params, label)
        same(fsdp.opt_state, rep.opt_state, label, 1e-5)  # stored gradients: float32 round-off of the reductions
        np.testing.assert_allclose(fsdp_losses, rep_losses, rtol=1e-6)
        assert int(fsdp.grad_evals) == int(rep.grad_evals)
        # The state stays sharded; on device 0 the shardable leaves hold 1/8 of their bytes.
        for before, after in zip(jax.tree.leaves(start), jax.tree.leaves(fsdp)):
            assert after.sharding.spec == before.sharding.spec
        sharded = [leaf for leaf in jax.tree.leaves((fsdp.params, fsdp.opt_state)) if not leaf.sharding.is_fully_replicated]
        whole = sum(leaf.nbytes for leaf in sharded)
        assert whole > 0.9 * sum(leaf.nbytes for leaf in jax.tree.leaves((rep.params, rep.opt_state))), label
        assert parallel.addressable_bytes(sharded) * 8 == whole, label

    # A whole run: evaluation, sharpness (preconditioned), checkpoints. Two steps replicated and two sharded
    # give the same rows; each run resumed with the other sharding gives the same rows and parameters again.
    def config(kind, steps):
        return TrainConfig(**{**BASE, "learning_rate": 0.01}, optimizer="adam_flow", steps=steps, param_sharding=kind,
                           eval_every=2, checkpoint_every=2, sharpness_every=2, sharpness_iterations=8,
                           sharpness_batch_size=64)

    tmp, results = sys.argv[1], {}
    for first, then in (("replicated", "fsdp"), ("fsdp", "replicated")):
        out = os.path.join(tmp, first)
        loop.train(config(first, 2), out, dataset=ds)
        resumed = loop.train(config(then, 4), out, dataset=ds)
        for leaf in jax.tree.leaves(resumed.state.params):  # restored into the shardings asked for
            assert leaf.sharding.spec == parallel.fsdp_spec(leaf.shape, 8 if then == "fsdp" else 10**9), then
        results[first] = resumed
    a, b = results["replicated"], results["fsdp"]
    same(a.state.opt_state, b.state.opt_state, "resumed", 1e-5)
    same(a.state.params, b.state.params, "resumed")
    assert [row["step"] for row in a.history + a.sharpness] == [row["step"] for row in b.history + b.sharpness] == [2, 4, 2, 4]
    for row_a, row_b in zip(a.history + a.sharpness, b.history + b.sharpness):
        for field in ("train_loss", "test_loss", "test_accuracy", "sharpness", "grad_evals"):
            if field in row_a:
                np.testing.assert_allclose(row_a[field], row_b[field], rtol=1e-6, err_msg=str((row_a["step"], field)))
    print("match")
    """
)


def test_eight_host_devices_fsdp_matches_replicated(tmp_path):
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-c", _EIGHT_DEVICES, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "match" in result.stdout
