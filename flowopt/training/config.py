"""Training run configuration: one frozen dataclass, loadable from YAML or JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowopt.training import distributed, models, optimizers
from flowopt.training.data import DATASET_NAMES, SPECS, SYNTHETIC
from flowopt.training.models import MODELS
from flowopt.training.parallel import PARAM_SHARDINGS

SCHEDULES = ("constant", "cosine", "warmup_cosine")

# Fields that fix the trajectory of a run: a resumed run must agree on them.
TRAJECTORY_FIELDS = (
    "model",
    "dataset",
    "optimizer",
    "learning_rate",
    "batch_size",
    "seed",
    "weight_decay",
    "schedule",
    "warmup_steps",
    "augment",
    "model_options",
    "optimizer_options",
)
BUDGET_FIELDS = ("epochs", "steps", "grad_evals")
DATASET_OPTIONS = ("path", "data_dir", "refresh")
MAX_COUNT = 2**31 - 1  # step and gradient-evaluation counters are int32 on the device
MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits: larger seeds would repeat smaller ones
SYNTHETIC_TRAIN_EXAMPLES = 2048  # synthetic_dataset's default size
SHARPNESS_OPTIONS = ("sharpness_top", "sharpness_iterations", "sharpness_batch_size")  # only with sharpness_every


class ConfigError(ValueError):
    """A :class:`TrainConfig` field holds a bad value.

    Attributes:
      field: the field's name, e.g. ``"learning_rate"``.
      key: for the option mappings (``model_options``, ...), the option at fault, if one is.
    """

    def __init__(self, field: str, message: str, key: str | None = None):
        super().__init__(message)
        self.field = field
        self.key = key


def _kind(value: Any) -> str:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return f"the string {value!r}"
        return f"the string {value!r} (quoted, or in YAML an exponent without a decimal point, e.g. 1e-3 for 1.0e-3)"
    return repr(value)


def _check_type(name: str, value: Any, annotation: str) -> None:
    """``value`` must fit the field's annotation (``int``, ``float``, ``bool``, ``str``, ``X | None``, mappings)."""
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None:
        if "None" in kinds:
            return
        raise ConfigError(name, f"{name} must not be null.")
    kind = next(k for k in kinds if k != "None")
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(name, f"{name} must be an integer, got {_kind(value)}.")
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(name, f"{name} must be a number, got {_kind(value)}.")
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(name, f"{name} must be true or false, got {_kind(value)}.")
    if kind == "str" and not isinstance(value, str):
        raise ConfigError(name, f"{name} must be a string, got {value!r}.")
    if kind.startswith("Mapping"):
        if not isinstance(value, Mapping):
            raise ConfigError(name, f"{name} must be a mapping of option names to values, got {value!r}.")
        for key in value:
            if not isinstance(key, str) or not key:
                raise ConfigError(name, f"{name} keys must be non-empty strings, got {key!r}.")
        for key, item in value.items():
            try:
                json.dumps(item, allow_nan=False)
            except (TypeError, ValueError) as error:
                raise ConfigError(
                    name,
                    f"{name} {key} must be plain JSON (finite numbers, strings, lists, true/false, null), got {item!r}.",
                    key,
                ) from error


def nominal_shape(dataset: str) -> tuple[int, int, int]:
    """The image shape ``(H, W, C)`` of dataset ``dataset`` as :func:`load_dataset` returns it."""
    return SPECS[dataset].image_shape if dataset in SPECS else SYNTHETIC[dataset][1]


def nominal_train_size(dataset: str) -> int:
    """The number of training examples :func:`load_dataset` returns for ``dataset``."""
    return SPECS[dataset].num_train if dataset in SPECS else SYNTHETIC_TRAIN_EXAMPLES


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
      sharpness_every: also measure the sharpness every this many steps: the
        top eigenvalues of the objective's Hessian on a fixed batch of the
        training set, by Lanczos on Hessian-vector products, logged as rows of
        their own (:mod:`flowopt.training.sharpness`). Their cost is counted
        apart (``sharpness_grad_evals``, two gradients per product) and not in
        ``grad_evals``; the training trajectory is the same with or without it.
      sharpness_top: how many of the top eigenvalues to log (at most
        ``sharpness_iterations`` and the parameter count).
      sharpness_iterations: Lanczos steps per measurement (one Hessian-vector
        product each, capped at the parameter count).
      sharpness_batch_size: size of the fixed batch (capped at the training
        set): the same examples, chosen by ``seed``, at every measurement.
      num_devices: devices to shard the batch over (default: all).
      param_sharding: ``replicated`` (every device holds the parameters and
        optimizer state) or ``fsdp`` (each leaf split over the devices along its
        largest dimension they divide: :mod:`flowopt.training.parallel`); the
        batch is split either way, and the trajectory is the same up to float32
        round-off, so a run may resume with the other choice.
      progress: show a progress bar.
      resume: continue from the checkpoints in the output directory if present.
      coordinator, num_processes, process_id: a multi-process run: the
        ``HOST:PORT`` of process 0, the number of processes and this one's id
        (all three or none; every process runs the same config but for its id).
        :func:`train` joins them (:func:`flowopt.training.distributed.initialize`)
        before any computation; ``batch_size`` stays the global batch, each
        process reading its ``batch_size / num_processes`` rows of it. They are
        not part of the run's identity: a run may resume with other processes.
      cluster_timeout: seconds to wait for the processes to join, and after
        which a silent process is taken for dead (default: JAX's).
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
    sharpness_every: int | None = None
    sharpness_top: int = 1
    sharpness_iterations: int = 20
    sharpness_batch_size: int = 1000
    num_devices: int | None = None
    param_sharding: str = "replicated"
    progress: bool = True
    resume: bool = True
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    cluster_timeout: int | None = None

    def __post_init__(self) -> None:
        """Reject every field value that would fail later or be silently ignored (:class:`ConfigError`)."""
        for field in dataclasses.fields(self):
            _check_type(field.name, getattr(self, field.name), str(field.type))
        if self.model not in MODELS:
            raise ConfigError("model", f"Unknown model {self.model!r}; valid names: {', '.join(MODELS)}.")
        if self.dataset not in DATASET_NAMES:
            raise ConfigError("dataset", f"Unknown dataset {self.dataset!r}; valid names: {', '.join(DATASET_NAMES)}.")
        try:
            optimizers.resolve_optimizer(self.optimizer)
        except ValueError as error:
            raise ConfigError("optimizer", str(error)) from error
        if all(getattr(self, f) is None for f in BUDGET_FIELDS):
            raise ConfigError("epochs", "Set a budget: epochs, steps or grad_evals.")
        for name in (
            *BUDGET_FIELDS,
            "eval_every",
            "checkpoint_every",
            "num_devices",
            "batch_size",
            "eval_batch_size",
            "keep_checkpoints",
            "sharpness_every",
            *SHARPNESS_OPTIONS,
        ):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_COUNT:
                raise ConfigError(name, f"{name} must be an integer in [1, {MAX_COUNT}], got {value!r}.")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError("seed", f"seed must be an integer in [0, {MAX_SEED}], got {self.seed!r}.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError("learning_rate", f"learning_rate must be a positive finite number, got {self.learning_rate!r}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError("weight_decay", f"weight_decay must be a non-negative finite number, got {self.weight_decay!r}.")
        if self.param_sharding not in PARAM_SHARDINGS:
            raise ConfigError(
                "param_sharding", f"Unknown param_sharding {self.param_sharding!r}; valid: {', '.join(PARAM_SHARDINGS)}."
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError("schedule", f"Unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}.")
        if self.schedule != "constant" and self.epochs is None and self.steps is None:
            raise ConfigError("schedule", f"The {self.schedule} schedule needs a length: set epochs or steps.")
        if not 0 <= self.warmup_steps <= MAX_COUNT:
            raise ConfigError("warmup_steps", f"warmup_steps must be an integer in [0, {MAX_COUNT}], got {self.warmup_steps!r}.")
        if self.warmup_steps and self.schedule != "warmup_cosine":
            raise ConfigError(
                "warmup_steps",
                f"warmup_steps ({self.warmup_steps}) only applies to the warmup_cosine schedule, not to {self.schedule}.",
            )
        if self.warmup_steps and self.steps is not None and self.warmup_steps >= self.steps:
            raise ConfigError("warmup_steps", f"warmup_steps ({self.warmup_steps}) must be less than steps ({self.steps}).")
        self._check_sharpness()
        self._check_dataset_options()
        self._check_processes()
        if self.model_options:
            try:
                models.check_model_options(self.model, dict(self.model_options))
            except ValueError as error:
                raise ConfigError("model_options", str(error), _key_in(error, self.model_options)) from error
        try:
            optimizers.check_option_values(self.optimizer, dict(self.optimizer_options))
        except ValueError as error:
            raise ConfigError("optimizer_options", str(error), _key_in(error, self.optimizer_options)) from error

    def _check_sharpness(self) -> None:
        if self.sharpness_every is None:
            defaults = {field.name: field.default for field in dataclasses.fields(self)}
            for name in SHARPNESS_OPTIONS:
                if getattr(self, name) != defaults[name]:
                    raise ConfigError(name, f"{name} only applies with sharpness_every (the sharpness is not measured).")
        if self.sharpness_top > self.sharpness_iterations:
            raise ConfigError(
                "sharpness_top",
                f"sharpness_top ({self.sharpness_top}) exceeds sharpness_iterations ({self.sharpness_iterations}): "
                "Lanczos gives at most one eigenvalue per iteration.",
            )

    def _check_processes(self) -> None:
        if self.cluster_timeout is not None and not 1 <= self.cluster_timeout <= MAX_COUNT:
            raise ConfigError(
                "cluster_timeout", f"cluster_timeout must be an integer in [1, {MAX_COUNT}], got {self.cluster_timeout!r}."
            )
        problem = distributed.process_problem(self.coordinator, self.num_processes, self.process_id)
        if problem is not None:
            raise ConfigError(*problem)
        if self.num_processes is not None and self.batch_size % self.num_processes:
            raise ConfigError(
                "batch_size", f"batch_size {self.batch_size} does not split evenly over the {self.num_processes} processes."
            )

    def _check_dataset_options(self) -> None:
        options = self.dataset_options
        if options and self.dataset in SYNTHETIC:
            raise ConfigError(
                "dataset_options",
                f"dataset_options {sorted(options)} do not apply to the synthetic dataset {self.dataset!r}.",
                next(iter(options)),
            )
        for key, value in options.items():
            if key not in DATASET_OPTIONS:
                raise ConfigError("dataset_options", f"Unknown dataset option {key!r}; valid: {', '.join(DATASET_OPTIONS)}.", key)
            if key == "refresh" and not isinstance(value, bool):
                raise ConfigError("dataset_options", f"dataset option refresh must be true or false, got {value!r}.", key)
            if key in ("path", "data_dir") and (not isinstance(value, str) or not value):
                raise ConfigError("dataset_options", f"dataset option {key} must be a non-empty path, got {value!r}.", key)

    def check_buildable(
        self, input_shape: tuple[int, ...] | None = None, num_train: int | None = None, optimizer: bool = True
    ) -> None:
        """Build the model and the optimizer abstractly (nothing is allocated or computed) and check the run length.

        ``input_shape`` and ``num_train`` default to those of the named data
        set. Raises :class:`ConfigError` naming the field at fault: a model
        option the constructor rejects or that does not fit the images, an
        optimizer option of the wrong type, a batch larger than the training
        set, a warm-up as long as the run. ``optimizer=False`` skips the
        optimizer (for runs given their own ``tx``).
        """
        shape = tuple(input_shape) if input_shape is not None else nominal_shape(self.dataset)
        size = num_train if num_train is not None else nominal_train_size(self.dataset)
        try:
            models.check_model_options(self.model, dict(self.model_options), input_shape=shape)
        except ValueError as error:
            field = "model_options" if self.model_options else "model"
            raise ConfigError(field, f"{error} (images of shape {shape})", _key_in(error, self.model_options)) from error
        if optimizer:
            self._check_optimizer()
        if self.batch_size > size:
            raise ConfigError(
                "batch_size", f"batch_size {self.batch_size} exceeds the {size} training examples of {self.dataset}."
            )
        total_steps = self.total_steps(size)
        if self.warmup_steps and total_steps is not None and self.warmup_steps >= total_steps:
            raise ConfigError(
                "warmup_steps",
                f"warmup_steps ({self.warmup_steps}) must be less than the run's {total_steps} steps.",
            )

    def total_steps(self, num_train: int) -> int | None:
        """The run's length in steps on ``num_train`` training examples, where ``epochs`` or ``steps`` sets it.

        The smaller of ``steps`` and ``epochs`` full epochs; ``None`` for a budget of ``grad_evals`` only.
        """
        lengths = [n for n in (self.steps, self.epochs and self.epochs * (num_train // self.batch_size)) if n]
        return min(lengths, default=None)

    def _check_optimizer(self) -> None:
        if self.schedule == "constant":
            rate = self.learning_rate
        else:
            import optax

            rate = optax.cosine_decay_schedule(self.learning_rate, 100)
        try:
            optimizers.check_optimizer(self.optimizer, rate, **dict(self.optimizer_options))
        except ValueError as error:
            field = "optimizer_options" if self.optimizer_options else "optimizer"
            raise ConfigError(field, str(error), _key_in(error, self.optimizer_options)) from error

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The config keys, in the order of the fields: the keys :meth:`from_dict` and config files accept."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping, rejecting unknown keys."""
        if not isinstance(values, Mapping):
            raise ValueError(f"A config must be a mapping of config keys, got {type(values).__name__}.")
        valid = set(cls.field_names())
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


def _key_in(error: Exception, options: Mapping[str, Any]) -> str | None:
    """The option of ``options`` an error message names, if exactly one is named."""
    text = str(error)
    named = [k for k in options if f" {k} " in text or f"'{k}'" in text or f"[{k!r}]" in text]
    return named[0] if len(named) == 1 else None


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a config mapping from JSON or YAML; every failure is a one-line ValueError naming the file."""
    path = Path(path)
    if path.suffix not in (".json", ".yaml", ".yml"):
        raise ValueError(f"Config files must be .json, .yaml or .yml, got {path.name}.")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ValueError(f"cannot read {path}: {reason}.") from error
    if path.suffix == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}.") from error
    else:
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error)
            raise ValueError(f"{path} is not valid YAML: {' '.join(str(problem).split())}{where}.") from error
        values = {} if values is None else values
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of config keys, got {type(values).__name__}.")
    return values


def trajectory_mismatch(stored: Mapping[str, Any], config: TrainConfig) -> list[str]:
    """Fields in which ``config`` would not continue the stored run's trajectory."""
    current = config.to_dict()
    fields = TRAJECTORY_FIELDS + (BUDGET_FIELDS if config.schedule != "constant" else ())
    return [f for f in fields if stored.get(f) != current[f]]
