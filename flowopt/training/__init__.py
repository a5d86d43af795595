"""Flax training stack for flowopt: datasets, NNX models, the train loop, checkpoints.

Typical use::

    from flowopt import training

    config = training.TrainConfig(model="mlp", dataset="mnist", optimizer="rk4",
                                  learning_rate=0.1, grad_evals=20_000)
    result = training.train(config, "runs/mlp-rk4")
    result.history[-1]["test_accuracy"]

or from the shell: ``flowopt-train --model mlp --dataset mnist --optimizer rk4 --output runs/mlp-rk4``.

The modules, one job each:

- ``config``: :class:`TrainConfig`, a run's definition, and its checks;
- ``data``: datasets through tensorflow-datasets (a subpackage: catalog, loading, prepare, originals, builders,
  reader, formats, batches, augment);
- ``models``: the NNX classifiers; ``optimizers``: optimizers by name, from :mod:`flowopt.registry`;
- ``step``: the jitted objective, train and eval steps, the initial state;
- ``loop``: :func:`train` and its phases; ``progress``: the typed progress record and the budgets;
- ``resume``: opening a run directory and resuming it; ``rundir``: its lock, atomic writes, notices;
- ``checkpoint``, ``metrics``: the checkpoints and ``metrics.jsonl`` of a run;
- ``sharpness``: the top Hessian eigenvalues measured every N steps; ``thresholds``: the
  edge-of-stability threshold and preconditioner of each optimizer; ``plots``: :func:`plot_sharpness`;
- ``parallel``: the device mesh and shardings; ``distributed``: joining the processes of a multi-process run;
- ``cli``: ``flowopt-train``; ``demo``: ``flowopt-demo``.
"""

from flowopt.training.checkpoint import Checkpointer, CheckpointError
from flowopt.training.config import ConfigError, TrainConfig
from flowopt.training.data import (
    DATASET_NAMES,
    DataIntegrityError,
    Dataset,
    DataUnavailableError,
    iterate_batches,
    load_dataset,
    normalize,
    prepare_tfds,
    random_crop_flip,
    synthetic_dataset,
)
from flowopt.training.loop import RunResult, train
from flowopt.training.models import MODELS, create_model
from flowopt.training.optimizers import available_optimizers, make_optimizer
from flowopt.training.parallel import data_mesh
from flowopt.training.plots import plot_sharpness
from flowopt.training.rundir import RunDirectoryError
from flowopt.training.step import RunState, evaluate, make_eval_step, make_train_step

__all__ = [
    "Checkpointer",
    "CheckpointError",
    "ConfigError",
    "DATASET_NAMES",
    "DataIntegrityError",
    "DataUnavailableError",
    "Dataset",
    "MODELS",
    "RunDirectoryError",
    "RunResult",
    "RunState",
    "TrainConfig",
    "available_optimizers",
    "create_model",
    "data_mesh",
    "evaluate",
    "iterate_batches",
    "load_dataset",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "normalize",
    "plot_sharpness",
    "prepare_tfds",
    "random_crop_flip",
    "synthetic_dataset",
    "train",
]
