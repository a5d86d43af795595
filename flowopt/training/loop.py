"""The training loop: a jitted step that binds the oracle to the batch, budgets, evaluation.

The objective of a run is

    f(θ) = mean_i ℓ(model_θ(x_i), y_i) + model.penalty() + λ/2 · Σ_kernels ‖W‖²,

and *every* gradient the optimizer sees is a gradient of this same ``f`` on the
current minibatch. That is why weight decay is an L2 term in the loss rather
than ``optax.add_decayed_weights``: a multi-stage integrator evaluates
``value_fn`` at intermediate points, and a decay added only to the incoming
gradient (stage ``k1``) would make the stages integrate a different flow. For
plain SGD the two are the same update.

The Python loop around the jitted step is deliberate: on CPU, convolutions
inside ``lax.scan`` run several times slower than a loop of jitted steps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

import flowopt
from flowopt.core.trees import tree_all_finite
from flowopt.training import models, parallel
from flowopt.training.checkpoint import Checkpointer, CheckpointError
from flowopt.training.config import ConfigError, TrainConfig, trajectory_mismatch
from flowopt.training.data import Dataset, iterate_batches, load_dataset, normalize, random_crop_flip
from flowopt.training.metrics import MetricsLog
from flowopt.training.optimizers import make_optimizer
from flowopt.training.rundir import RunDirectoryError, RunLock, kill_point, make_run_dir, write_atomic

logger = logging.getLogger(__name__)


class RunState(NamedTuple):
    """All device state of a run (a pytree: it jits, shards and checkpoints)."""

    step: jax.Array
    grad_evals: jax.Array
    params: nnx.State
    model_state: nnx.State
    opt_state: optax.OptState
    rng: jax.Array


class StepMetrics(NamedTuple):
    """Per-step outputs: minibatch objective at the pre-update parameters, correct predictions.

    ``skipped`` is true when the optimizer left the parameters unchanged
    because a stage or the increment was not finite (``flowopt.skipped_steps``
    grew): the loop treats that as divergence.
    """

    loss: jax.Array
    correct: jax.Array
    skipped: jax.Array


class Preprocess(NamedTuple):
    """On-device input pipeline: optional crop+flip, then per-channel normalisation."""

    mean: np.ndarray
    std: np.ndarray
    augment: bool


def example_losses(logits: jax.Array, labels: jax.Array, kind: str) -> jax.Array:
    """Per-example data loss: ``cross_entropy`` or ``squared_error`` (½‖logits − onehot‖²)."""
    if kind == "cross_entropy":
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if kind == "squared_error":
        return 0.5 * jnp.sum((logits - jax.nn.one_hot(labels, logits.shape[-1])) ** 2, axis=-1)
    raise ValueError(f"Unknown task loss {kind!r}; valid: cross_entropy, squared_error.")


def weight_l2(params: nnx.State) -> jax.Array:
    """``½ Σ‖W‖²`` over parameters with two or more axes (kernels, not biases or scales)."""
    return 0.5 * sum(
        (jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params) if p.ndim > 1), jnp.zeros([])
    )


def make_objective(
    graphdef: nnx.GraphDef, weight_decay: float
) -> Callable[[nnx.State, nnx.State, jax.Array, jax.Array], tuple[jax.Array, tuple[jax.Array, nnx.State]]]:
    """``objective(params, model_state, x, y) -> (f, (logits, new_model_state))`` in training mode.

    A pure function (:class:`flowopt.NNXObjective`): ``model_state`` is not
    mutated, so BatchNorm may update its statistics under ``grad``.
    """
    model_objective = flowopt.NNXObjective(graphdef, _training_loss, has_aux=True)

    def objective(params, model_state, x, y):
        loss, aux = model_objective(params, model_state, (x, y))
        if weight_decay:
            loss = loss + weight_decay * weight_l2(params)
        return loss, aux

    return objective


def _training_loss(model: nnx.Module, batch: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    x, y = batch
    model.train()
    logits = model(x)
    return jnp.mean(example_losses(logits, y, models.task_loss(model))) + models.penalty(model), logits


def _inputs(images: jax.Array, prep: Preprocess, key: jax.Array | None) -> jax.Array:
    if key is not None:
        images = random_crop_flip(key, images)
    return normalize(images, jnp.asarray(prep.mean), jnp.asarray(prep.std))


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    prep: Preprocess,
    weight_decay: float,
    mesh: Mesh,
) -> Callable[[RunState, jax.Array, jax.Array], tuple[RunState, StepMetrics]]:
    """A jitted step: gradient at the batch, optimizer update with the batch-bound oracle.

    The oracle ``value_fn`` is a ``jax.tree_util.Partial`` whose leaves are the
    batch and the pre-step model state, so every stage of a multi-stage method
    evaluates the same minibatch objective (same BatchNorm mode, same dropout
    mask). ``grad_evals`` grows by one for the incoming gradient plus the
    optimizer's oracle calls (``flowopt.oracle_evaluations``).
    """
    objective = make_objective(graphdef, weight_decay)

    def step(state: RunState, images: jax.Array, labels: jax.Array) -> tuple[RunState, StepMetrics]:
        key = jax.random.fold_in(state.rng, state.step) if prep.augment else None
        x = _inputs(images, prep, key)
        at_params = flowopt.step_oracle(objective, state.params, state.model_state, x, labels, has_aux=True)
        updates, opt_state = tx.update(at_params.grads, state.opt_state, state.params, value_fn=at_params.value_fn)
        oracle_calls = flowopt.oracle_evaluations(opt_state) - flowopt.oracle_evaluations(state.opt_state)
        new_state = RunState(
            step=state.step + 1,
            grad_evals=state.grad_evals + 1 + oracle_calls,
            params=optax.apply_updates(state.params, updates),
            model_state=at_params.state,
            opt_state=opt_state,
            rng=state.rng,
        )
        correct = jnp.sum(jnp.argmax(at_params.aux, -1) == labels)
        skipped = flowopt.skipped_steps(opt_state) > flowopt.skipped_steps(state.opt_state)
        return new_state, StepMetrics(at_params.loss, correct, skipped)

    replicated = parallel.replicated(mesh)
    return jax.jit(step, out_shardings=(replicated, replicated))


def make_eval_step(
    graphdef: nnx.GraphDef, prep: Preprocess, mesh: Mesh
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """A jitted ``(params, model_state, images, labels, mask) -> (loss sum, correct count)`` in eval mode."""

    def step(params, model_state, images, labels, mask):
        model = nnx.merge(graphdef, params, model_state)
        model.eval()
        logits = model(_inputs(images, prep, None))
        losses = example_losses(logits, labels, models.task_loss(model))
        correct = (jnp.argmax(logits, -1) == labels) & mask
        return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(correct)

    replicated = parallel.replicated(mesh)
    return jax.jit(step, out_shardings=(replicated, replicated))


def evaluate(
    eval_step: Callable[..., tuple[jax.Array, jax.Array]],
    state: RunState,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    mesh: Mesh,
) -> tuple[float, float]:
    """Mean data loss and accuracy over a whole split (the last batch is padded and masked)."""
    return _evaluate_split(eval_step, state, _EvalSplit.build(images, labels, batch_size, mesh))


class _EvalSplit(NamedTuple):
    """A split cut into equal, device-sharded ``(x, y, mask)`` batches once, for repeated evaluation."""

    batches: list[tuple[jax.Array, jax.Array, jax.Array]]
    size: int

    @classmethod
    def build(cls, images: np.ndarray, labels: np.ndarray, batch_size: int, mesh: Mesh) -> _EvalSplit:
        batch_size = min(batch_size, len(images))
        batch_size = -(-batch_size // mesh.size) * mesh.size
        batches = []
        for start in range(0, len(images), batch_size):
            x, y = images[start : start + batch_size], labels[start : start + batch_size]
            mask = np.arange(batch_size) < len(x)
            pad = batch_size - len(x)
            if pad:
                x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
                y = np.concatenate([y, np.zeros(pad, y.dtype)])
            batches.append(parallel.shard_batch((x, y, mask), mesh))
        return cls(batches, len(images))


def _evaluate_split(eval_step: Callable[..., tuple[jax.Array, jax.Array]], state: RunState,
                    split: _EvalSplit) -> tuple[float, float]:
    sums = [eval_step(state.params, state.model_state, *batch) for batch in split.batches]
    losses, corrects = zip(*jax.device_get(sums))
    return math.fsum(map(float, losses)) / split.size, int(sum(map(int, corrects))) / split.size


def init_state(
    model: nnx.Module, tx: optax.GradientTransformation, seed: int, mesh: Mesh
) -> tuple[nnx.GraphDef, RunState]:
    """Split ``model`` into a graph definition and a replicated :class:`RunState`."""
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    state = RunState(
        step=jnp.zeros([], jnp.int32),
        grad_evals=jnp.zeros([], jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        rng=jax.random.fold_in(jax.random.key(seed), 1),
    )
    return graphdef, parallel.replicate(state, mesh)


def learning_rate_schedule(config: TrainConfig, total_steps: int | None) -> float | optax.Schedule:
    """The step size (or optax schedule) named by ``config.schedule``."""
    if config.schedule == "constant":
        return config.learning_rate
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.learning_rate, total_steps)
    return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, total_steps
    )


@dataclasses.dataclass
class RunResult:
    """Outcome of :func:`train`.

    Attributes:
      state: the final device state (at divergence, the state that produced it).
      graphdef: the model's graph definition (``model`` merges it with ``state``).
      history: the metrics rows, one per evaluation (as in ``metrics.jsonl``).
      diverged: whether the run stopped on a non-finite loss or parameters.
      message: why the run stopped.
      dataset_label: how results must be labelled, e.g. ``"CIFAR-10 (JPEG q75 copy)"``.
    """

    state: RunState
    graphdef: nnx.GraphDef
    history: list[dict[str, Any]]
    diverged: bool
    message: str
    dataset_label: str

    @property
    def model(self) -> nnx.Module:
        """The trained model."""
        return nnx.merge(self.graphdef, self.state.params, self.state.model_state)


def _fresh_progress() -> dict[str, Any]:
    return {"epoch": 0, "batch": 0, "loss_sum": 0.0, "correct": 0, "count": 0, "last_cost": None, "time_s": 0.0}


def _budget_left(config: TrainConfig, step: int, evals: int, last_cost: int | None) -> bool:
    if config.steps is not None and step >= config.steps:
        return False
    if config.grad_evals is not None and evals + (last_cost or 1) > config.grad_evals:
        return False
    return True


def _budget_spent(config: TrainConfig, step: int, evals: int, progress: dict[str, Any], steps_per_epoch: int) -> bool:
    """Whether a run at ``step``/``evals`` with ``progress`` has reached one of ``config``'s budgets."""
    epochs_done = progress["epoch"] + (progress["batch"] >= steps_per_epoch)
    return not _budget_left(config, step, evals, progress["last_cost"]) or (
        config.epochs is not None and epochs_done >= config.epochs
    )


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def _notice(message: str) -> None:
    """Tell the user, whether or not logging is configured to show INFO records."""
    if logger.isEnabledFor(logging.INFO) and logging.getLogger().handlers:
        logger.info(message)
    else:
        print(f"flowopt: {message}", file=sys.stderr, flush=True)


def _read_record(path: Path) -> dict[str, Any] | None:
    """The ``config.json`` record of a run directory, None if there is none."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunDirectoryError(f"{path} is not a readable run record ({error}); repair or remove it, "
                                "or overwrite the run.") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise RunDirectoryError(f"{path} is not a run record (no 'config' mapping); repair or remove it, "
                                "or overwrite the run.")
    return record


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


_RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "checkpoints-corrupt")


def _remove_run(out: Path) -> None:
    """Delete what a run left in ``out`` (only the files a run writes)."""
    present = [name for name in _RUN_FILES if (out / name).exists()]
    if not present:
        return
    _notice(f"Overwriting the run in {out}: removing {', '.join(present)}.")
    for name in present:
        path = out / name
        try:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        except OSError as error:
            raise RunDirectoryError(f"Cannot remove {path}: {error.strerror or error}.") from error


def _check_same_run(out: Path, stored: dict[str, Any], config: TrainConfig) -> None:
    mismatch = trajectory_mismatch(stored, config)
    if mismatch:
        raise RunDirectoryError(
            f"{out} holds a run that differs in {mismatch}; use a fresh output directory, "
            "or overwrite (--overwrite) to replace it."
        )


def _data_identity(dataset: Dataset) -> dict[str, Any]:
    """What a resumed run's data must agree on (the example order and the arrays' shapes depend on it)."""
    return {"name": dataset.name, "train": len(dataset.x_train), "test": len(dataset.x_test),
            "image_shape": list(dataset.image_shape), "classes": dataset.num_classes}


def _open_run(
    out: Path, config: TrainConfig, state: RunState, record: dict[str, Any], overwrite: bool,
    data_identity: dict[str, Any], steps_per_epoch: int,
) -> tuple[Checkpointer, RunState, dict[str, Any], MetricsLog]:
    """Check the run directory and resume what it holds: (checkpointer, state, progress, metrics log).

    Nothing in ``out`` changes before every check has passed.
    """
    writer = jax.process_index() == 0
    config_file, metrics_file = out / "config.json", out / "metrics.jsonl"
    if overwrite and writer:
        _remove_run(out)
    checkpointer = Checkpointer(out / "checkpoints", keep=config.keep_checkpoints)
    progress = _fresh_progress()
    resume_step = None
    try:
        if checkpointer.all_steps():
            if not config.resume:
                raise RunDirectoryError(
                    f"{out} already holds checkpoints; resume, overwrite (--overwrite), or use a fresh directory."
                )
            try:  # a different run is refused before its arrays are read (they may not even fit)
                _check_same_run(out, checkpointer.read_record().get("config", {}), config)
            except CheckpointError:
                pass  # the newest checkpoint is damaged: restore() falls back, and the record is checked then
            state, stored = checkpointer.restore(state)
            _check_same_run(out, stored.get("config", {}), config)
            progress = {**progress, **stored["progress"]}
            resume_step = int(state.step)
            stored_data = stored.get("data", data_identity)
            if stored_data != data_identity or progress["batch"] > steps_per_epoch:
                what = "; ".join(_differences(stored_data, data_identity)) or (
                    f"its checkpoint is at batch {progress['batch']} of an epoch of {steps_per_epoch}")
                raise RunDirectoryError(f"{out} holds a run on other data ({what}); use the same data, "
                                        "a fresh output directory, or overwrite (--overwrite).")
            rows = stored.get("metrics")
            progress["legacy"] = rows is None
            log = (MetricsLog(metrics_file, resume_step) if rows is None
                   else MetricsLog(metrics_file, rows=rows["rows"], sha256=rows["sha256"]))
            if checkpointer.skipped:
                checkpointer.quarantine()
            _notice(f"Resuming {out} from step {resume_step}.")
        else:
            old = None if overwrite else _read_record(config_file)
            has_rows = metrics_file.exists() and metrics_file.stat().st_size > 0
            if not overwrite and old is None and has_rows:
                raise RunDirectoryError(
                    f"{out} holds {metrics_file.name} but no config.json: it is not known which run wrote it. "
                    "Use a fresh output directory, or overwrite (--overwrite) to replace it."
                )
            if old is not None:
                mismatch = trajectory_mismatch(old["config"], config)
                if mismatch:
                    raise RunDirectoryError(
                        f"{out} holds a different run (it differs in {mismatch}); use a fresh output directory, "
                        "or overwrite (--overwrite) to replace it."
                    )
                if has_rows:
                    _notice(f"{out} holds no checkpoint of this run: starting it again from step 0.")
            log = MetricsLog(metrics_file)
        done = resume_step is not None and _budget_spent(
            config, resume_step, int(state.grad_evals), progress, steps_per_epoch)
        if writer and not done:  # a run already at or past a smaller budget keeps the record of its own
            old = _read_record(config_file) if config_file.exists() else None
            if old != record:
                if old is not None:
                    _notice(f"Updating {config_file}: {'; '.join(_differences(old['config'], record['config']))}.")
                write_atomic(config_file, (json.dumps(record, indent=2) + "\n").encode())
    except BaseException:
        checkpointer.close()
        raise
    return checkpointer, state, progress, log


def train(
    config: TrainConfig,
    output_dir: str | os.PathLike | None = None,
    *,
    dataset: Dataset | None = None,
    tx: optax.GradientTransformation | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Train ``config.model`` on ``config.dataset`` until the first budget is reached.

    Args:
      config: the run.
      output_dir: receives ``config.json``, ``metrics.jsonl`` and ``checkpoints/``;
        a directory with checkpoints is resumed (bitwise: the data order, the
        augmentation keys, all state and the metrics rows are restored, and rows
        written after the checkpoint are redone). The directory is locked while
        the run uses it. None: nothing is written.
      dataset: use these arrays instead of ``load_dataset(config.dataset, **config.dataset_options)``.
      tx: use this optimizer instead of ``make_optimizer(config.optimizer, ...)``
        (``config.optimizer`` then only names it).
      overwrite: delete the run ``output_dir`` holds (checkpoints, metrics,
        config) and start afresh. Without it a directory holding a different run
        is refused.

    Returns:
      A :class:`RunResult`. Divergence does not raise: it is logged, recorded in
      the metrics and reported through ``diverged`` and ``message``. A finished
      run given again returns its history without training.

    Metrics (one row per epoch, one at every multiple of ``eval_every``
      steps, and one when a budget ends mid-epoch): ``epoch`` (epochs
      completed, fractional within an epoch), ``step``, ``grad_evals``;
      ``train_loss`` and ``train_accuracy`` (means over the minibatches since
      the previous row, at the pre-update parameters; the loss is the
      optimised objective, penalty and weight decay included); ``test_loss``
      and ``test_accuracy`` (data loss and accuracy in evaluation mode);
      ``full_train_loss``/``full_train_accuracy`` with ``eval_train``;
      ``learning_rate``, ``partial`` and ``time_s``. A diverged run ends with a
      row holding ``diverged: true`` and ``message``.

    Raises:
      ValueError: bad names or options, a batch that does not split over the
        devices. ``RunDirectoryError`` (a ``ValueError``): the output directory
        holds a different run, is in use by another run, cannot be written, or
        its metrics or checkpoints are damaged beyond the last good checkpoint.
    """
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite must be True or False, got {overwrite!r}.")
    if output_dir is not None and (not isinstance(output_dir, (str, os.PathLike)) or not os.fspath(output_dir)):
        raise ValueError(f"output_dir must be a non-empty path or None, got {output_dir!r}.")
    if dataset is None:
        dataset = load_dataset(config.dataset, **config.dataset_options)
    mesh = parallel.data_mesh(config.num_devices)
    parallel.check_batch_size(config.batch_size, mesh)
    steps_per_epoch = len(dataset.x_train) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(dataset.x_train)} training examples.")
    lengths = [n for n in (config.steps, config.epochs and config.epochs * steps_per_epoch) if n]
    total_steps = min(lengths, default=None)
    schedule = None
    if tx is None:
        schedule = learning_rate_schedule(config, total_steps)
        tx = make_optimizer(config.optimizer, schedule, **config.optimizer_options)
    model = models.create_model(
        config.model, input_shape=dataset.image_shape, num_classes=dataset.num_classes,
        seed=config.seed, **config.model_options,
    )
    augment = config.augment if config.augment is not None else dataset.image_shape == (32, 32, 3)
    prep = Preprocess(*dataset.channel_stats(), augment)
    graphdef, state = init_state(model, tx, config.seed, mesh)
    train_step = make_train_step(graphdef, tx, prep, config.weight_decay, mesh)
    eval_step = make_eval_step(graphdef, prep, mesh)
    test_split = _EvalSplit.build(dataset.x_test, dataset.y_test, config.eval_batch_size, mesh)

    out = Path(output_dir) if output_dir is not None else None
    lock = checkpointer = None
    try:
        progress, log = _fresh_progress(), MetricsLog(None)
        if out is not None:
            if jax.process_index() == 0:
                make_run_dir(out)
                lock = RunLock(out)
            record = {"config": config.to_dict(), "dataset": dataset.label, "source": dataset.source,
                      "devices": mesh.size, "augment": augment}
            checkpointer, state, progress, log = _open_run(out, config, state, record, overwrite,
                                                           _data_identity(dataset), steps_per_epoch)
        return _run(config, dataset, mesh, state, graphdef, train_step, eval_step, test_split, schedule,
                    steps_per_epoch, total_steps, progress, log, checkpointer, out)
    finally:
        if checkpointer is not None:
            checkpointer.close()
        if lock is not None:
            lock.release()


def _run(config, dataset, mesh, state, graphdef, train_step, eval_step, test_split, schedule,
         steps_per_epoch, total_steps, progress, log, checkpointer, out) -> RunResult:
    """The loop of :func:`train`, from ``progress`` on."""
    train_split = None  # built at the first full-training-set evaluation
    step, evals = (int(v) for v in jax.device_get((state.step, state.grad_evals)))
    by_evals = config.grad_evals is not None
    started = time.perf_counter() - progress["time_s"]

    def finished() -> bool:
        return _budget_spent(config, step, evals, progress, steps_per_epoch)

    def write_row(epoch_end: bool) -> None:
        nonlocal train_split
        test_loss, test_accuracy = _evaluate_split(eval_step, state, test_split)
        kill_point("eval", step)
        row = {
            "epoch": _number(progress["epoch"] + progress["batch"] / steps_per_epoch),
            "step": step,
            "grad_evals": evals,
            "train_loss": progress["loss_sum"] * config.batch_size / progress["count"],
            "train_accuracy": progress["correct"] / progress["count"],
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
        }
        if config.eval_train:
            train_split = train_split or _EvalSplit.build(
                dataset.x_train, dataset.y_train, config.eval_batch_size, mesh
            )
            row["full_train_loss"], row["full_train_accuracy"] = _evaluate_split(eval_step, state, train_split)
        if schedule is not None:
            row["learning_rate"] = float(schedule(step - 1)) if callable(schedule) else schedule
        row["partial"] = not epoch_end
        row["time_s"] = time.perf_counter() - started
        log.write(row)
        kill_point("row", step)
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", test_acc=f"{test_accuracy:.4f}")
        progress.update(loss_sum=0.0, correct=0, count=0)
        if epoch_end:
            progress["epoch"], progress["batch"] = progress["epoch"] + 1, 0

    def save() -> None:
        # After the step's row: the checkpoint vouches for the rows written so far and nothing is pending.
        if checkpointer is not None:
            progress["time_s"] = time.perf_counter() - started
            checkpointer.save(step, state, {
                "config": config.to_dict(), "progress": dict(progress), "data": _data_identity(dataset),
                "metrics": {"rows": len(log.rows), "sha256": log.sha256()},
            })
            kill_point("save", step)

    bar = tqdm(
        total=config.grad_evals if by_evals else total_steps,
        initial=evals if by_evals else step, unit="eval" if by_evals else "step",
        disable=not config.progress, dynamic_ncols=True,
        desc=f"{config.model}/{config.optimizer} on {dataset.label}",
    )
    message, diverged = "", False
    try:
        epoch_end = progress["batch"] == steps_per_epoch
        if progress.pop("legacy", False) and progress["count"] and (
            epoch_end or (config.eval_every and step % config.eval_every == 0)
        ):
            # A checkpoint of an older flowopt, saved before its step's row: the row may be on disk already.
            if log.rows and log.rows[-1].get("step") == step:
                progress.update(loss_sum=0.0, correct=0, count=0)
            else:
                write_row(epoch_end)
        if progress["batch"] == steps_per_epoch:
            progress["epoch"], progress["batch"] = progress["epoch"] + 1, 0
        if finished() and out is not None:
            _notice(f"The run in {out} is already complete (step {step}); nothing to do.")
        while not diverged and not finished():
            batches = (
                parallel.shard_batch(batch, mesh)
                for batch in iterate_batches(
                    dataset.x_train, dataset.y_train, config.batch_size,
                    seed=config.seed, epoch=progress["epoch"], start=progress["batch"],
                )
            )
            batch = next(batches, None)
            while batch is not None:
                new_state, metrics = train_step(state, *batch)
                batch = next(batches, None)  # prepared while the device runs the step
                loss, correct, skipped, new_evals = jax.device_get(
                    (metrics.loss, metrics.correct, metrics.skipped, new_state.grad_evals)
                )
                if by_evals and evals == 0 and int(new_evals) > config.grad_evals:
                    raise ConfigError("grad_evals", (
                        f"grad_evals is {config.grad_evals}, less than one step of {config.optimizer} "
                        f"({int(new_evals)} gradient evaluations); nothing was trained."))
                if not np.isfinite(loss):
                    diverged = True
                    message = f"the minibatch loss is {float(loss)} at step {step}"
                    break
                if skipped:
                    diverged = True
                    message = (
                        f"the optimizer skipped step {step} because a stage or its increment was not finite "
                        "(lower the learning rate or check its schedule)"
                    )
                    break
                state, progress["last_cost"] = new_state, int(new_evals) - evals
                step, evals = step + 1, int(new_evals)
                progress["batch"] += 1
                progress["loss_sum"] += float(loss)
                progress["correct"] += int(correct)
                progress["count"] += config.batch_size
                bar.update(progress["last_cost"] if by_evals else 1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
                kill_point("step", step)
                epoch_end = progress["batch"] >= steps_per_epoch
                stop = not _budget_left(config, step, evals, progress["last_cost"]) or (
                    epoch_end and config.epochs is not None and progress["epoch"] + 1 >= config.epochs
                )
                row_due = epoch_end or stop or bool(config.eval_every and step % config.eval_every == 0)
                save_due = epoch_end or stop or bool(config.checkpoint_every and step % config.checkpoint_every == 0)
                if (row_due or save_due) and not tree_all_finite(state.params):
                    diverged, message = True, f"the parameters are not finite at step {step}"
                    break
                if row_due:
                    write_row(epoch_end)
                if save_due:
                    save()
                if stop:
                    break
    finally:
        bar.close()
    if diverged:
        kept = checkpointer.latest_step() if checkpointer is not None else None
        message = (
            f"Training diverged: {message} (epoch {progress['epoch'] + 1}). "
            + (f"The last good checkpoint (step {kept}) is kept in {out / 'checkpoints'}."
               if kept is not None else "No checkpoint was written.")
        )
        logger.error(message)
        log.write({
            "epoch": _number(progress["epoch"] + progress["batch"] / steps_per_epoch), "step": step,
            "grad_evals": evals, "diverged": True, "message": message,
            "time_s": time.perf_counter() - started,
        })
    else:
        message = f"Finished after {step} steps and {evals} gradient evaluations."
    return RunResult(state, graphdef, log.rows, diverged, message, dataset.label)
