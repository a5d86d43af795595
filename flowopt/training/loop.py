"""The train loop: :func:`train` and its phases, from building the run to its last metrics row.

:func:`train` builds the run (:func:`build`: data, optimizer, model, jitted
steps), opens its directory (:func:`flowopt.training.resume.open_run`), then a
:class:`_Training` goes through the epochs: each step is taken, counted in the
:class:`~flowopt.training.progress.Progress` record, and followed where due by
an evaluation and a metrics row, then a checkpoint; the run ends with its
:class:`RunResult`. The jitted pieces live in :mod:`flowopt.training.step`.

The Python loop around the jitted step is deliberate: on CPU, convolutions
inside ``lax.scan`` run several times slower than a loop of jitted steps.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from flowopt.core.trees import tree_all_finite
from flowopt.diagnostics import reports_diagnostics, step_diagnostics
from flowopt.training import distributed, models, parallel
from flowopt.training.checkpoint import Checkpointer
from flowopt.training.config import ConfigError, TrainConfig
from flowopt.training.data import Dataset, iterate_batches, load_dataset
from flowopt.training.metrics import MetricsLog
from flowopt.training.optimizers import make_optimizer
from flowopt.training.progress import Progress, budget_left, budget_spent
from flowopt.training.resume import OpenedRun, data_identity, open_run
from flowopt.training.rundir import RunDirectoryError, RunLock, kill_point, make_run_dir, notice
from flowopt.training.sharpness import SharpnessTracker, is_sharpness_row, sharpness_spent

# The step functions lived here; importers of make_objective from this module keep working.
from flowopt.training.step import (
    EvalSplit,
    Preprocess,
    RunState,
    StepMetrics,
    evaluate_split,
    init_state,
    make_eval_step,
    make_objective,  # noqa: F401
    make_train_step,
)

logger = logging.getLogger(__name__)


def learning_rate_schedule(config: TrainConfig, total_steps: int | None) -> float | optax.Schedule:
    """The step size (or optax schedule) named by ``config.schedule``."""
    if config.schedule == "constant":
        return config.learning_rate
    if total_steps is None:  # TrainConfig refuses a decaying schedule without epochs or steps
        raise ConfigError("schedule", f"The {config.schedule} schedule needs a length: set epochs or steps.")
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.learning_rate, total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps, total_steps)


@dataclasses.dataclass
class RunResult:
    """Outcome of :func:`train`.

    Attributes:
      state: the final device state (at divergence, the state that produced it).
      graphdef: the model's graph definition (``model`` merges it with ``state``).
      history: the metrics rows, one per evaluation (as in ``metrics.jsonl``, less the sharpness rows).
      diverged: whether the run stopped on a non-finite loss or parameters.
      message: why the run stopped.
      dataset_label: how results must be labelled, e.g. ``"CIFAR-10 (JPEG q75 copy)"``.
      sharpness: the sharpness rows of ``metrics.jsonl``, one per measurement
        (:mod:`flowopt.training.sharpness`); empty without ``sharpness_every``.
    """

    state: RunState
    graphdef: nnx.GraphDef
    history: list[dict[str, Any]]
    diverged: bool
    message: str
    dataset_label: str
    sharpness: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def model(self) -> nnx.Module:
        """The trained model."""
        return nnx.merge(self.graphdef, self.state.params, self.state.model_state)


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything :func:`build` makes before the first step: the data, the mesh, the jitted steps, the initial state.

    Attributes:
      config: the run.
      dataset: its data.
      mesh: the devices the batch is sharded over.
      graphdef: the model's graph definition.
      state: the initial device state.
      train_step, eval_step: the jitted steps (:mod:`flowopt.training.step`).
      test_split: the test set, cut into device batches once.
      schedule: the learning rate or schedule, ``None`` when the caller passed its own optimizer.
      steps_per_epoch: full batches in one epoch.
      total_steps: the run's length in steps when ``epochs`` or ``steps`` sets it.
      augment: whether the training images are augmented.
      sharpness: the sharpness measurements, with ``sharpness_every``.
    """

    config: TrainConfig
    dataset: Dataset
    mesh: Mesh
    graphdef: nnx.GraphDef
    state: RunState
    train_step: Callable[[RunState, jax.Array, jax.Array], tuple[RunState, StepMetrics]]
    eval_step: Callable[..., tuple[jax.Array, jax.Array]]
    test_split: EvalSplit
    schedule: float | optax.Schedule | None
    steps_per_epoch: int
    total_steps: int | None
    augment: bool
    sharpness: SharpnessTracker | None

    def record(self) -> dict[str, Any]:
        """The ``config.json`` record of the run."""
        return {
            "config": self.config.to_dict(),
            "dataset": self.dataset.label,
            "source": self.dataset.source,
            "devices": self.mesh.size,
            "augment": self.augment,
        }


def build(config: TrainConfig, dataset: Dataset | None = None, tx: optax.GradientTransformationExtraArgs | None = None) -> Setup:
    """Load the data (unless given), build the optimizer (unless given), the model, the jitted steps and the state.

    Raises:
      ValueError: a batch that does not split over the devices or exceeds the training set, bad names or options;
        ``ConfigError`` for a ``sharpness_top`` above the parameter count.
    """
    if dataset is None:
        dataset = load_dataset(config.dataset, **config.dataset_options)
    mesh = parallel.data_mesh(config.num_devices)
    parallel.check_batch_size(config.batch_size, mesh)
    steps_per_epoch = len(dataset.x_train) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(dataset.x_train)} training examples.")
    total_steps = config.total_steps(len(dataset.x_train))
    schedule = None
    if tx is None:
        schedule = learning_rate_schedule(config, total_steps)
        tx = make_optimizer(config.optimizer, schedule, **config.optimizer_options)
    model = models.create_model(
        config.model,
        input_shape=dataset.image_shape,
        num_classes=dataset.num_classes,
        seed=config.seed,
        **config.model_options,
    )
    augment = config.augment if config.augment is not None else dataset.image_shape == (32, 32, 3)
    prep = Preprocess(*dataset.channel_stats(), augment)
    graphdef, state = init_state(model, tx, config.seed, mesh, config.param_sharding)
    sharpness = None
    if config.sharpness_every is not None:
        sharpness = SharpnessTracker(config, dataset, prep, mesh, graphdef, state, own_optimizer=schedule is not None)
    return Setup(
        config=config,
        dataset=dataset,
        mesh=mesh,
        graphdef=graphdef,
        state=state,
        train_step=make_train_step(
            graphdef, tx, prep, config.weight_decay, mesh, parallel.state_shardings(state, mesh, config.param_sharding)
        ),
        eval_step=make_eval_step(graphdef, prep, mesh),
        test_split=EvalSplit.build(dataset.x_test, dataset.y_test, config.eval_batch_size, mesh),
        schedule=schedule,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        augment=augment,
        sharpness=sharpness,
    )


def train(
    config: TrainConfig,
    output_dir: str | os.PathLike | None = None,
    *,
    dataset: Dataset | None = None,
    tx: optax.GradientTransformationExtraArgs | None = None,
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

    With ``config.coordinator`` (a multi-process run), the processes are joined
    first (:func:`flowopt.training.distributed.initialize`); every process
    calls :func:`train` with the same config but for ``process_id``, and
    ``output_dir`` names one directory shared by all: process 0 locks it and
    writes the metrics and ``config.json``, the checkpoints are written by all.

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
      ``learning_rate``; ``optimizer``, the optimizer's
      :func:`flowopt.step_diagnostics` (as a dict of numbers) where it has
      them (adaptive Runge–Kutta, :func:`flowopt.rkc_auto`, guards);
      ``partial`` and ``time_s``. A diverged run ends with a
      row holding ``diverged: true`` and ``message``. With
      ``sharpness_every``, the sharpness measurements are rows of their own
      (:mod:`flowopt.training.sharpness`), returned in ``RunResult.sharpness``.

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
    if config.coordinator is not None:
        distributed.initialize(config.coordinator, config.num_processes, config.process_id, timeout=config.cluster_timeout)
    setup = build(config, dataset, tx)
    out = Path(output_dir) if output_dir is not None else None
    lock = checkpointer = None
    try:
        opened = OpenedRun(None, setup.state, Progress.start(), MetricsLog(None), legacy=False)
        if out is not None:
            lock = _lock_run_dir(out)
            opened = open_run(
                out, config, setup.state, setup.record(), overwrite, data_identity(setup.dataset), setup.steps_per_epoch
            )
            checkpointer = opened.checkpointer
        return _Training(setup, opened, out).run()
    finally:
        if checkpointer is not None:
            checkpointer.close()
        if lock is not None:
            lock.release()


def _lock_run_dir(out: Path) -> RunLock | None:
    """Process 0 creates and locks the run directory; a failure there is every process's (``RunDirectoryError``)."""

    def lock() -> RunLock:
        make_run_dir(out)
        return RunLock(out)

    return distributed.on_first_process(lock, RunDirectoryError)


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


class _Training:
    """A run under way: its device state, step and evaluation counts, progress, metrics log and checkpoints."""

    def __init__(self, setup: Setup, opened: OpenedRun, out: Path | None):
        self.setup, self.config, self.out = setup, setup.config, out
        self.state, self.progress, self.log = opened.state, opened.progress, opened.log
        self.checkpointer: Checkpointer | None = opened.checkpointer
        self.legacy = opened.legacy
        self.step, self.evals = (int(v) for v in jax.device_get((self.state.step, self.state.grad_evals)))
        self.by_evals = self.config.grad_evals is not None
        self.started = time.perf_counter() - self.progress.time_s
        self.train_split: EvalSplit | None = None  # built at the first full-training-set evaluation
        self.data_identity = data_identity(setup.dataset)
        self.sharpness_spent = sharpness_spent(self.log.rows)

    def run(self) -> RunResult:
        """Train from where the progress record stands until a budget is spent or the run diverges."""
        config, setup = self.config, self.setup
        self.bar = tqdm(
            total=config.grad_evals if self.by_evals else setup.total_steps,
            initial=self.evals if self.by_evals else self.step,
            unit="eval" if self.by_evals else "step",
            disable=not config.progress,
            dynamic_ncols=True,
            desc=f"{config.model}/{config.optimizer} on {setup.dataset.label}",
        )
        divergence = None
        try:
            self._catch_up()
            if self._finished() and self.out is not None:
                notice(f"The run in {self.out} is already complete (step {self.step}); nothing to do.")
            while divergence is None and not self._finished():
                divergence = self._epoch()
        finally:
            self.bar.close()
        return self._finish(divergence)

    def _finished(self) -> bool:
        return budget_spent(self.config, self.step, self.evals, self.progress, self.setup.steps_per_epoch)

    def _elapsed(self) -> float:
        return time.perf_counter() - self.started

    def _catch_up(self) -> None:
        """Write the row a legacy checkpoint may lack, and move past an epoch the checkpoint ended."""
        progress, steps_per_epoch, eval_every = self.progress, self.setup.steps_per_epoch, self.config.eval_every
        epoch_end = progress.batch == steps_per_epoch
        if self.legacy and progress.count and (epoch_end or (eval_every and self.step % eval_every == 0)):
            # A checkpoint of an older flowopt, saved before its step's row: the row may be on disk already.
            if self.log.rows and self.log.rows[-1].get("step") == self.step:
                progress.start_row()
            else:
                self._write_row(epoch_end)
        if progress.batch == steps_per_epoch:
            progress.next_epoch()

    def _epoch(self) -> str | None:
        """Step through the rest of the current epoch (or until a budget ends); why the run diverged, if it did."""
        config, setup = self.config, self.setup
        batches = (
            parallel.shard_local_batch(batch, setup.mesh)
            for batch in iterate_batches(
                setup.dataset.x_train,
                setup.dataset.y_train,
                config.batch_size,
                seed=config.seed,
                epoch=self.progress.epoch,
                start=self.progress.batch,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
        )
        batch = next(batches, None)
        while batch is not None:
            new_state, metrics = setup.train_step(self.state, *batch)
            batch = next(batches, None)  # prepared while the device runs the step
            divergence = self._take(new_state, metrics)
            if divergence is not None:
                return divergence
            divergence, stop = self._after_step()
            if divergence is not None or stop:
                return divergence
        return None

    def _take(self, new_state: RunState, metrics: StepMetrics) -> str | None:
        """Keep a step's result and count it, unless its loss is not finite or the optimizer skipped it."""
        config = self.config
        loss, correct, skipped, new_evals = jax.device_get((metrics.loss, metrics.correct, metrics.skipped, new_state.grad_evals))
        if config.grad_evals is not None and self.evals == 0 and int(new_evals) > config.grad_evals:
            raise ConfigError(
                "grad_evals",
                (
                    f"grad_evals is {config.grad_evals}, less than one step of {config.optimizer} "
                    f"({int(new_evals)} gradient evaluations); nothing was trained."
                ),
            )
        if not np.isfinite(loss):
            return f"the minibatch loss is {float(loss)} at step {self.step}"
        if skipped:
            return (
                f"the optimizer skipped step {self.step} because a stage or its increment was not finite "
                "(lower the learning rate or check its schedule)"
            )
        self.state = new_state
        self.progress.add_step(float(loss), int(correct), config.batch_size, cost=int(new_evals) - self.evals)
        self.step, self.evals = self.step + 1, int(new_evals)
        self.bar.update(self.progress.last_cost if self.by_evals else 1)
        if self.step % 50 == 0:
            self.bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
        kill_point("step", self.step)
        return None

    def _after_step(self) -> tuple[str | None, bool]:
        """The row and the checkpoint due after a step: (why the run diverged, if it did; whether a budget ends)."""
        config, progress, step = self.config, self.progress, self.step
        epoch_end = progress.batch >= self.setup.steps_per_epoch
        stop = not budget_left(config, step, self.evals, progress.last_cost) or (
            epoch_end and config.epochs is not None and progress.epoch + 1 >= config.epochs
        )
        row_due = epoch_end or stop or bool(config.eval_every and step % config.eval_every == 0)
        save_due = epoch_end or stop or bool(config.checkpoint_every and step % config.checkpoint_every == 0)
        if (row_due or save_due) and not tree_all_finite(self.state.params):
            return f"the parameters are not finite at step {step}", stop
        if self.setup.sharpness is not None and self.setup.sharpness.due(step):
            self._write_sharpness_row(self.setup.sharpness)
        if row_due:
            self._write_row(epoch_end)
        if save_due:
            self._checkpoint()
        return None, stop

    def _write_row(self, epoch_end: bool) -> None:
        """Evaluate and append a metrics row; the sums start again, and an epoch's end moves to the next."""
        config, setup, progress, step = self.config, self.setup, self.progress, self.step
        test_loss, test_accuracy = evaluate_split(setup.eval_step, self.state, setup.test_split)
        kill_point("eval", step)
        row = {
            "epoch": _number(progress.position(setup.steps_per_epoch)),
            "step": step,
            "grad_evals": self.evals,
            "train_loss": progress.loss_sum * config.batch_size / progress.count,
            "train_accuracy": progress.correct / progress.count,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
        }
        if config.eval_train:
            if self.train_split is None:
                self.train_split = EvalSplit.build(
                    setup.dataset.x_train, setup.dataset.y_train, config.eval_batch_size, setup.mesh
                )
            row["full_train_loss"], row["full_train_accuracy"] = evaluate_split(setup.eval_step, self.state, self.train_split)
        if setup.schedule is not None:
            row["learning_rate"] = self._learning_rate()
        if reports_diagnostics(self.state.opt_state):
            row["optimizer"] = {k: float(v) for k, v in jax.device_get(step_diagnostics(self.state.opt_state)).items()}
        row["partial"] = not epoch_end
        row["time_s"] = self._elapsed()
        self.log.write(row)
        kill_point("row", step)
        self.bar.set_postfix(loss=f"{row['train_loss']:.4f}", test_acc=f"{test_accuracy:.4f}")
        progress.start_row()
        if epoch_end:
            progress.next_epoch()

    def _learning_rate(self) -> float | None:
        """The step size of the step just taken; ``None`` for a run given its own optimizer."""
        schedule = self.setup.schedule
        if callable(schedule):
            # optax types a schedule's value as any ArrayLike, complex included; a learning rate is real.
            return float(cast(float | jax.Array, schedule(self.step - 1)))
        return schedule

    def _write_sharpness_row(self, tracker: SharpnessTracker) -> None:
        """Measure the sharpness and append its row (:mod:`flowopt.training.sharpness`)."""
        measured = tracker.measurement(self.state, self.step, self._learning_rate(), self.sharpness_spent)
        self.sharpness_spent = measured["sharpness_grad_evals"]
        self.log.write(
            {
                "epoch": _number(self.progress.position(self.setup.steps_per_epoch)),
                "step": self.step,
                "grad_evals": self.evals,
                **measured,
                "learning_rate": self._learning_rate(),
                "time_s": self._elapsed(),
            }
        )

    def _checkpoint(self) -> None:
        """Save the state and progress; after the step's row, so the checkpoint vouches for every row written."""
        if self.checkpointer is None:
            return
        self.progress.time_s = self._elapsed()
        self.checkpointer.save(
            self.step,
            self.state,
            {
                "config": self.config.to_dict(),
                "progress": self.progress.to_record(),
                "data": self.data_identity,
                "metrics": {"rows": len(self.log.rows), "sha256": self.log.sha256()},
            },
        )
        kill_point("save", self.step)

    def _finish(self, divergence: str | None) -> RunResult:
        """The result; a diverged run logs why and ends its metrics with a row that says so."""
        if divergence is None:
            message = f"Finished after {self.step} steps and {self.evals} gradient evaluations."
        else:
            kept = self.checkpointer.latest_step() if self.checkpointer is not None else None
            message = f"Training diverged: {divergence} (epoch {self.progress.epoch + 1}). " + (
                f"The last good checkpoint (step {kept}) is kept in {self.out / 'checkpoints'}."
                if kept is not None and self.out is not None  # checkpoints are written into an output directory only
                else "No checkpoint was written."
            )
            logger.error(message)
            self.log.write(
                {
                    "epoch": _number(self.progress.position(self.setup.steps_per_epoch)),
                    "step": self.step,
                    "grad_evals": self.evals,
                    "diverged": True,
                    "message": message,
                    "time_s": self._elapsed(),
                }
            )
        return RunResult(
            self.state,
            self.setup.graphdef,
            [row for row in self.log.rows if not is_sharpness_row(row)],
            divergence is not None,
            message,
            self.setup.dataset.label,
            [row for row in self.log.rows if is_sharpness_row(row)],
        )
