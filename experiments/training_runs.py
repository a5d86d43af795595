"""Training runs of the studies: datasets (cached, optionally subsampled), optimizers by spec, one run.

A study describes a training run as plain JSON-able settings (model,
dataset, optimizer, learning rate, budget, ...); :func:`train_run` turns them
into a :class:`flowopt.training.config.TrainConfig`, trains with the library's
loop in the run directory (so a killed run resumes from its last
checkpoint) and returns the metrics as a JSON-able dict.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import optax

from experiments import runner
from flowopt import tableaus
from flowopt.training.config import SCHEDULES, ConfigError, TrainConfig, nominal_train_size
from flowopt.training.data import DATASET_NAMES, SPECS, Dataset, load_dataset
from flowopt.training.loop import train
from flowopt.training.models import MODELS

BASELINES = ("sgd", "momentum", "nesterov", "adam")
"""The optax baselines the studies train (entries of :data:`flowopt.registry.BASELINES`): one gradient a step."""

FIXED_STEP_METHODS = BASELINES + tuple(tableau.name for tableau in tableaus.FIXED_STEP)
"""Optimizers a study may compare at fixed cost per step: the baselines and flowopt's fixed-step Runge–Kutta."""


# TrainConfig fields a study supplies itself (the data set by name, the optimizer's options, no progress bar);
# a run's other settings that are TrainConfig fields are passed on unchanged.
_SUPPLIED = ("dataset", "optimizer_options", "progress")
_CONFIG_KEYS = tuple(name for name in TrainConfig.field_names() if name not in _SUPPLIED)


def train_schema(*required: str, optimizer: bool = False) -> dict[str, Any]:
    """The schema of a study's ``train`` block: TrainConfig fields plus the data subset; ``required`` budgets."""
    schema: dict[str, Any] = {
        "model": runner.one_of(*MODELS),
        "dataset": runner.one_of(*DATASET_NAMES),
        "batch_size": runner.POSITIVE_INT,
        "epochs": runner.optional(runner.POSITIVE_INT),
        "steps": runner.optional(runner.POSITIVE_INT),
        "grad_evals": runner.optional(runner.POSITIVE_INT),
        "train_subset": runner.optional(runner.POSITIVE_INT),
        "test_subset": runner.optional(runner.POSITIVE_INT),
        "weight_decay": runner.optional(runner.NON_NEGATIVE),
        "schedule": runner.optional(runner.one_of(*SCHEDULES)),
        "warmup_steps": runner.optional(runner.NON_NEGATIVE_INT),
        "augment": runner.optional(runner.BOOL, True),
        "model_options": runner.optional(runner.MapOf(runner.ANY)),
        "eval_batch_size": runner.optional(runner.POSITIVE_INT),
        "eval_train": runner.optional(runner.BOOL),
        "checkpoint_every": runner.optional(runner.POSITIVE_INT),
    }
    if optimizer:
        schema["optimizer_options"] = runner.optional(runner.MapOf(runner.ANY))
    for key in required:
        schema[key] = schema[key].inner if isinstance(schema[key], runner.Optional_) else schema[key]
    return schema


def _train_config(settings: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a run's settings (raises ConfigError)."""
    values = {key: settings[key] for key in _CONFIG_KEYS if key in settings}
    return TrainConfig.from_dict(
        {
            **values,
            "dataset": settings["dataset"],
            "optimizer_options": dict(settings.get("optimizer_options") or {}),
            "progress": False,
        }
    )


def check_train_run(settings: dict[str, Any], build_optimizer: bool = True) -> None:
    """Raise ValueError naming the field when ``settings`` cannot make a run (nothing is loaded or trained).

    ``build_optimizer=False`` when the study passes its own optimizer (``tx``).
    """
    try:
        config = _train_config(settings)
        size = nominal_train_size(config.dataset)
        for key, full in (
            ("train_subset", size),
            ("test_subset", SPECS[config.dataset].num_test if config.dataset in SPECS else None),
        ):
            subset = settings.get(key)
            if subset is not None and full is not None and subset > full:
                raise ValueError(f"{key}: {key} {subset} exceeds the {full} examples of {config.dataset}.")
        size = min(size, settings.get("train_subset") or size)
        config.check_buildable(num_train=size, optimizer=build_optimizer)
    except ConfigError as error:
        raise ValueError(f"{error.field}: {error}") from error


@functools.lru_cache(maxsize=4)
def _full_dataset(name: str) -> Dataset:
    return load_dataset(name)


def get_dataset(name: str, train_subset: int | None = None, test_subset: int | None = None) -> Dataset:
    """Dataset ``name`` (loaded once per process), optionally restricted to random subsets.

    Subsets are drawn by a fixed permutation (seed 0), so every run of a study
    sees the same examples; the label says that a subset was used.
    """
    dataset = _full_dataset(name)
    if train_subset is None and test_subset is None:
        return dataset
    rng = np.random.default_rng(0)
    train_idx = np.sort(rng.permutation(len(dataset.x_train))[: train_subset or len(dataset.x_train)])
    test_idx = np.sort(rng.permutation(len(dataset.x_test))[: test_subset or len(dataset.x_test)])
    label = f"{dataset.label}, {len(train_idx)} train / {len(test_idx)} test images"
    return dataclasses.replace(
        dataset,
        label=label,
        x_train=dataset.x_train[train_idx],
        y_train=dataset.y_train[train_idx],
        x_test=dataset.x_test[test_idx],
        y_test=dataset.y_test[test_idx],
    )


def steps_per_epoch(train: dict[str, Any]) -> int:
    """Full minibatches per epoch of a run's training set (named datasets are not loaded)."""
    if train["dataset"] in SPECS:
        size = SPECS[train["dataset"]].num_train
    else:
        size = len(get_dataset(train["dataset"]).x_train)
    size = min(size, train.get("train_subset") or size)
    return size // train["batch_size"]


def train_run(settings: dict[str, Any], run_dir: Path, tx: optax.GradientTransformation | None = None) -> dict[str, Any]:
    """Train one run described by ``settings`` in ``run_dir``; return its metrics.

    ``settings`` holds TrainConfig fields plus ``dataset`` (a name),
    ``train_subset``/``test_subset`` and ``optimizer_options``; ``tx``, if
    given, replaces the optimizer that ``settings["optimizer"]`` names. Returns
    ``{"history": [...], "final": last row, "diverged", "message", "dataset"}``.
    """
    dataset = get_dataset(settings["dataset"], settings.get("train_subset"), settings.get("test_subset"))
    config = _train_config(settings)
    result = train(config, os.fspath(run_dir), dataset=dataset, tx=tx)
    history = [row for row in result.history if not row.get("diverged")]
    return {
        "history": history,
        "final": history[-1] if history else None,
        "diverged": result.diverged,
        "message": result.message,
        "dataset": result.dataset_label,
    }


def row_at_grad_evals(history: list[dict[str, Any]], grad_evals: int) -> dict[str, Any] | None:
    """The metrics row logged exactly at ``grad_evals`` gradient evaluations, if any."""
    for row in history:
        if row["grad_evals"] == grad_evals:
            return row
    return None
