"""The README's Flax recipes: models with BatchNorm and Dropout under multi-stage methods, NNX and Linen.

Every stage of a step must see the incoming gradient's dropout masks and
batch statistics, and the model's state must advance once per step. The
README's code blocks run here as written, on the CNN of the Flax NNX MNIST
tutorial and on synthetic MNIST-shaped batches.
"""

import re
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from flax.training import train_state

import flowopt
from tests import REPO_ROOT

README = REPO_ROOT / "README.md"


class CNN(nnx.Module):
    """A simple CNN model."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(32, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=0.025)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(64, rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
        self.dropout2 = nnx.Dropout(rate=0.025)
        self.linear2 = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs | None = None):
        x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
        x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
        x = x.reshape(x.shape[0], -1)  # flatten
        x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
        x = self.linear2(x)
        return x


class _StoredRngsNet(nnx.Module):
    """BatchNorm and a Dropout that holds its own rngs (the tutorial's earlier layout)."""

    def __init__(self, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(784, 32, rngs=rngs)
        self.batch_norm = nnx.BatchNorm(32, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)
        self.linear2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.batch_norm(self.linear1(x.reshape(x.shape[0], -1))))
        return self.linear2(self.dropout(x))


class _LinenCNN(linen.Module):
    @linen.compact
    def __call__(self, x, train: bool):
        x = linen.Conv(8, (3, 3))(x)
        x = linen.relu(linen.BatchNorm(use_running_average=not train)(x))
        x = linen.avg_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
        x = linen.Dropout(0.25, deterministic=not train)(x)
        return linen.Dense(10)(x)


_DIGITS = jax.random.uniform(jax.random.key(100), (10, 28, 28, 1))  # one template image per class


def _batch(seed: int, size: int = 16) -> dict[str, jax.Array]:
    """MNIST-shaped images: a class template plus as much noise."""
    noise, labels = jax.random.split(jax.random.key(seed))
    label = jax.random.randint(labels, (size,), 0, 10)
    return {"image": 0.5 * _DIGITS[label] + 0.5 * jax.random.uniform(noise, (size, 28, 28, 1)), "label": label}


BATCHES = [_batch(seed) for seed in range(3)] * 4  # 4 passes over 3 batches


def _cross_entropy(model, batch):
    return optax.softmax_cross_entropy_with_integer_labels(model(batch["image"]), batch["label"]).mean()


def _max_abs_difference(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _readme_flax_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("### Flax\n") :]
    return re.findall(r"```python\n(.*?)```", section[: section.index("\n## ")], flags=re.S)


def _counting(monkeypatch, name: str) -> list[int]:
    """Replace ``flowopt.<name>`` by a wrapper that counts its calls (traces, inside ``jit``)."""
    calls, original = [], getattr(flowopt, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(flowopt, name, counted)
    return calls


@pytest.fixture(scope="module")
def readme():
    """The README's NNX and Linen blocks run on the first batch, then their train steps on the others.

    Returns their namespaces, with how often the step traced, and for NNX the
    model's batch statistics and RNG state after the first step.
    """
    nnx_block, linen_block = _readme_flax_blocks()
    with pytest.MonkeyPatch.context() as monkeypatch:
        nnx_traces, linen_traces = _counting(monkeypatch, "nnx_step_oracle"), _counting(monkeypatch, "step_oracle")
        ns, linen_ns = _run(nnx_block, "NNX"), _run(linen_block, "Linen")
        ns["after_one_step"] = nnx.as_pure((nnx.state(ns["model"], nnx.BatchStat), nnx.state(ns["rngs"], nnx.RngCount)))
        ns["losses"] += [ns["train_step"](ns["train_model"], ns["optimizer"], ns["rngs"], b) for b in BATCHES[1:]]
        for batch in BATCHES[1:]:
            linen_ns["state"], loss = linen_ns["train_step"](linen_ns["state"], batch, jax.random.key(1))
            linen_ns["losses"].append(loss)
    return {"nnx": ns | {"traces": len(nnx_traces)}, "linen": linen_ns | {"traces": len(linen_traces)}}


def _run(block: str, kind: str) -> dict[str, Any]:
    namespace = {
        "flowopt": flowopt,
        "jax": jax,
        "optax": optax,
        "nnx": nnx,
        "Any": Any,
        "CNN": CNN,
        "module": _LinenCNN(),
        "batches": BATCHES[:1],
    }
    exec(compile(block, f"README.md ({kind} recipe)", "exec"), namespace)
    return namespace


def _first_and_last_pass(losses: list[jax.Array]) -> tuple[float, float]:
    passes = np.asarray(losses).reshape(4, -1).mean(axis=1)
    return float(passes[0]), float(passes[-1])


def test_the_nnx_recipe_trains_the_tutorial_cnn_with_rk4(readme):
    ns = readme["nnx"]
    first, last = _first_and_last_pass(ns["losses"])
    assert np.isfinite(ns["losses"]).all() and last < 0.5 * first
    assert ns["traces"] == 1  # compiled once for all steps
    assert int(flowopt.oracle_evaluations(ns["optimizer"].opt_state)) == 3 * len(BATCHES)


def test_the_linen_recipe_trains_with_rk4(readme):
    ns = readme["linen"]
    first, last = _first_and_last_pass(ns["losses"])
    assert np.isfinite(ns["losses"]).all() and last < 0.5 * first
    assert ns["traces"] == 1 and ns["train_step"]._cache_size() == 1
    assert int(ns["state"].step) == len(BATCHES)
    assert int(flowopt.oracle_evaluations(ns["state"].opt_state)) == 3 * len(BATCHES)


def test_the_nnx_oracle_sees_the_incoming_gradients_masks_and_statistics(readme):
    loss_fn = readme["nnx"]["loss_fn"]

    @nnx.jit
    def at_params(model, rngs, batch):
        step = flowopt.nnx_step_oracle(loss_fn, model, batch, rngs=rngs, has_aux=True)
        params = nnx.as_pure(nnx.state(model, nnx.Param))  # what nnx.Optimizer.update passes to the oracle
        return step, step.value_fn(params), jax.grad(step.value_fn)(params)

    model = nnx.view(CNN(rngs=nnx.Rngs(0)), deterministic=False, use_running_average=False)
    step, value, gradient = at_params(model, nnx.Rngs(5), BATCHES[0])
    assert _max_abs_difference(gradient, step.grads) <= 1e-6
    np.testing.assert_allclose(value, step.loss, rtol=1e-6)
    assert step.aux.shape == (16, 10)


@nnx.jit
def _gaps(model, batch):
    """max |grad(value_fn)(params) - grads| for flowopt's oracle and for the naive one."""
    step = flowopt.nnx_step_oracle(_cross_entropy, nnx.clone(model), batch)
    params = nnx.state(model, nnx.Param)
    ours = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), jax.grad(step.value_fn)(params), step.grads)
    grads = nnx.grad(_cross_entropy)(model, batch)  # advances the model's dropout stream
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    naive = lambda p: _cross_entropy(nnx.merge(graphdef, p, rest, copy=True), batch)
    return ours, jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), jax.grad(naive)(params), grads)


def test_an_oracle_built_from_the_model_after_the_gradient_sees_other_masks():
    ours, naive = _gaps(_StoredRngsNet(nnx.Rngs(0)), BATCHES[0])
    assert max(jax.tree.leaves(ours)) <= 1e-6
    assert max(jax.tree.leaves(naive)) > 1e-3


def test_a_step_updates_batch_statistics_and_rng_counts_as_one_forward_pass(readme):
    ns = readme["nnx"]
    reference, reference_rngs = CNN(rngs=nnx.Rngs(0)), nnx.Rngs(0)  # the README's model and rngs before training
    initial = nnx.as_pure(nnx.state(reference, nnx.BatchStat))
    train_mode = nnx.view(reference, deterministic=False, use_running_average=False)
    nnx.jit(ns["loss_fn"])(train_mode, BATCHES[0], reference_rngs)
    stats, counts = ns["after_one_step"]
    assert _max_abs_difference(stats, initial) > 1e-3
    assert _max_abs_difference(stats, nnx.state(reference, nnx.BatchStat)) <= 1e-6
    assert jax.tree.leaves(counts) == jax.tree.leaves(nnx.state(reference_rngs, nnx.RngCount)) == [2]  # two dropouts


def test_the_nnx_helper_under_jax_jit_with_a_dropout_holding_its_rngs_compiles_once():
    model = _StoredRngsNet(nnx.Rngs(0))
    graphdef, state = nnx.split((model, nnx.Optimizer(model, flowopt.heun(0.1), wrt=nnx.Param)))

    @jax.jit
    def train_step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        step = flowopt.nnx_step_oracle(_cross_entropy, model, batch)
        optimizer.update(model, step.grads, value_fn=step.value_fn)
        return nnx.state((model, optimizer)), step.loss

    losses = []
    for batch in BATCHES:
        state, loss = train_step(state, batch)
        losses.append(loss)
    first, last = _first_and_last_pass(losses)
    assert last < first and train_step._cache_size() == 1
    model, _ = nnx.merge(graphdef, state)
    assert int(model.dropout.rngs.count[...]) == len(BATCHES)  # one mask drawn per step


def test_the_linen_oracle_sees_the_steps_dropout_key_and_batch_statistics(readme):
    objective, module = readme["linen"]["objective"], _LinenCNN()
    variables = module.init(jax.random.key(0), BATCHES[0]["image"], train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]

    @jax.jit
    def check(key, other_key):
        step = flowopt.step_oracle(objective, params, batch_stats, BATCHES[0], key)
        other = flowopt.step_oracle(objective, params, batch_stats, BATCHES[0], other_key)
        _, updates = module.apply(variables, BATCHES[0]["image"], train=True, rngs={"dropout": key}, mutable=["batch_stats"])
        return step, jax.grad(step.value_fn)(params), other.grads, updates["batch_stats"]

    step, gradient, other_key_gradient, one_forward = check(jax.random.key(1), jax.random.key(2))
    assert _max_abs_difference(gradient, step.grads) <= 1e-6
    assert _max_abs_difference(other_key_gradient, step.grads) > 1e-3
    assert _max_abs_difference(step.state, one_forward) <= 1e-6
    assert _max_abs_difference(step.state, batch_stats) > 1e-3


def test_flax_train_state_with_a_multistage_method_points_to_the_recipes():
    state = train_state.TrainState.create(apply_fn=None, params={"w": jnp.ones(2)}, tx=flowopt.rk4(0.1))
    with pytest.raises(
        ValueError,
        match=r"needs an oracle.*flax\.training\.train_state\.TrainState\.apply_gradients "
        r"does not forward an oracle: use flowopt\.TrainState.*"
        r"nnx\.Optimizer\.update\(model, grads, value_fn=\.\.\.\)",
    ):
        state.apply_gradients(grads={"w": jnp.ones(2)})


class _NoParams(nnx.Module):
    def __init__(self):
        self.count = nnx.Variable(jnp.zeros(()))

    def __call__(self, x):
        return x


_INPUTS = jnp.ones((4, 3))
_mean_output = lambda model, x: jnp.mean(model(x))


@pytest.mark.parametrize(
    "loss_fn, model, kwargs, message",
    [
        (None, "linear", {}, "loss_fn must be a callable"),
        (_mean_output, {"w": jnp.ones(2)}, {}, "model must be an nnx.Module, got dict .*flowopt.step_oracle"),
        (_mean_output, _NoParams(), {}, "the model has no variables matching wrt=.*nothing to differentiate"),
        (_mean_output, "linear", {"rngs": jax.random.key(0)}, "rngs must be an nnx.Rngs or None.*put it in batch"),
        (_mean_output, "linear", {"has_aux": 1}, "has_aux must be True or False"),
        (lambda m, x: m(x), "linear", {}, r"loss_fn must return a scalar loss, got shape \(4, 2\)"),
        (lambda m, x: (_mean_output(m, x), 1), "linear", {}, "loss_fn returned a tuple of length 2.*has_aux=True"),
        (_mean_output, "linear", {"has_aux": True}, r"with has_aux=True, loss_fn must return \(loss, aux\), got an array"),
        (
            lambda m, x: jnp.sum(m(x) > 0),
            "linear",
            {},
            "loss_fn must return a real floating-point loss, got the non-floating dtype int32",
        ),
    ],
)
def test_nnx_step_oracle_names_bad_input(loss_fn, model, kwargs, message):
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0)) if model == "linear" else model
    with pytest.raises(ValueError, match=message):
        flowopt.nnx_step_oracle(loss_fn, model, _INPUTS, **kwargs)


def test_nnx_step_oracle_refuses_rngs_the_model_holds():
    class Holder(nnx.Module):
        def __init__(self, rngs):
            self.linear, self.rngs = nnx.Linear(2, 1, rngs=rngs), rngs

    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match="rngs is held by the model"):
        flowopt.nnx_step_oracle(lambda m, b, r: jnp.sum(m.linear(b)), Holder(rngs), jnp.ones((1, 2)), rngs=rngs)


PARAMS = {"w": jnp.ones(3)}


@pytest.mark.parametrize(
    "objective, params, message",
    [
        ("loss", PARAMS, "objective must be a callable"),
        (lambda p, s: jnp.sum(p["w"]), PARAMS, r"objective must return \(loss, new_state\), got an array of shape \(\)"),
        (lambda p, s: (p["w"], s), PARAMS, r"objective must return a scalar loss, got shape \(3,\)"),
        (lambda p, s: (jnp.sum(p["w"]), s), {}, "params has no array leaves"),
    ],
)
def test_step_oracle_names_bad_input(objective, params, message):
    with pytest.raises(ValueError, match=message):
        flowopt.step_oracle(objective, params, None)


def test_step_oracle_with_aux_checks_the_nested_pair():
    with pytest.raises(ValueError, match=r"has_aux=True, objective must return .* got \(loss, a tuple of length 0\)"):
        flowopt.step_oracle(lambda p, s: (jnp.sum(p["w"]), s), PARAMS, (), has_aux=True)
