"""Training run configuration: one frozen dataclass, loadable from YAML or JSON."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowopt.training.data import DATASET_NAMES
from flowopt.training.models import MODELS

SCHEDULES = ("constant", "cosine", "warmup_cosine")

# Fields that fix the trajectory of a run: a resumed run must agree on them.
TRAJECTORY_FIELDS = (
    "model", "dataset", "optimizer", "learning_rate", "batch_size", "seed", "weight_decay",
    "schedule", "warmup_steps", "augment", "model_options", "optimizer_options",
)
BUDGET_FIELDS = ("epochs", "steps", "grad_evals")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Budgets: set any of ``epochs``, ``steps`` and ``grad_evals``; the run stops
    at the first one reached. ``grad_evals`` counts every gradient evaluation
    (one per step for the minibatch gradient plus the optimizer's oracle calls),
    so methods of different stage counts can be compared at equal cost; a step
    is not started when the previous step's cost would take the count past the
    budget.

    Attributes:
      model, dataset, optimizer: registry names (see ``models.MODELS``,
        ``data.DATASET_NAMES``, ``optimizers.available_optimizers()``).
      learning_rate: peak step size.
      batch_size: global batch size (split over devices).
      seed: seeds initialisation, data order and augmentation.
      weight_decay: coefficient ``λ`` of ``λ/2 · Σ‖W‖²`` over weight matrices
        and kernels (not biases or norm scales), added to the loss.
      schedule: ``constant``, ``cosine`` or ``warmup_cosine`` (needs ``epochs`` or ``steps``).
      warmup_steps: linear warm-up length for ``warmup_cosine``.
      augment: CIFAR crop-4 + flip; ``None`` turns it on for 32×32 RGB data.
      model_options, optimizer_options, dataset_options: keyword arguments of
        ``create_model``, ``make_optimizer`` and ``load_dataset``.
      eval_batch_size: batch size of evaluation passes.
      eval_train: also evaluate the full training set after each epoch.
      eval_every: also evaluate (and log a row) at every multiple of this many
        steps, for finer curves against gradient evaluations; the training
        trajectory is the same with or without it.
      checkpoint_every: also checkpoint every this many steps (epochs always checkpoint).
      keep_checkpoints: how many checkpoints to keep.
      num_devices: devices to shard the batch over (default: all).
      progress: show a progress bar.
      resume: continue from the checkpoints in the output directory if present.
    """

    model: str = "mlp"
    dataset: str = "mnist"
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    batch_size: int = 128
    epochs: int | None = None
    steps: int | None = None
    grad_evals: int | None = None
    seed: int = 0
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    augment: bool | None = None
    model_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    optimizer_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dataset_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    eval_batch_size: int = 1000
    eval_train: bool = False
    eval_every: int | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    num_devices: int | None = None
    progress: bool = True
    resume: bool = True

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"Unknown model {self.model!r}; valid names: {', '.join(MODELS)}.")
        if self.dataset not in DATASET_NAMES:
            raise ValueError(f"Unknown dataset {self.dataset!r}; valid names: {', '.join(DATASET_NAMES)}.")
        if all(getattr(self, f) is None for f in BUDGET_FIELDS):
            raise ValueError("Set a budget: epochs, steps or grad_evals.")
        for name in (*BUDGET_FIELDS, "eval_every", "checkpoint_every", "num_devices"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
        for name in ("batch_size", "eval_batch_size", "keep_checkpoints"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}.")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}.")
        if self.schedule != "constant" and self.epochs is None and self.steps is None:
            raise ValueError(f"The {self.schedule} schedule needs a length: set epochs or steps.")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping, rejecting unknown keys."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"Unknown config key(s) {unknown}; valid keys: {', '.join(sorted(valid))}.")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """Load a ``.json``, ``.yaml`` or ``.yml`` file."""
        return cls.from_dict(read_config_file(path))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a config mapping from JSON or YAML."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        values = json.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"Config files must be .json, .yaml or .yml, got {path.name}.")
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of config keys.")
    return values


def trajectory_mismatch(stored: Mapping[str, Any], config: TrainConfig) -> list[str]:
    """Fields in which ``config`` would not continue the stored run's trajectory."""
    current = config.to_dict()
    fields = TRAJECTORY_FIELDS + (BUDGET_FIELDS if config.schedule != "constant" else ())
    return [f for f in fields if stored.get(f) != current[f]]
