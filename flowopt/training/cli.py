"""``flowopt-train``: train a model from the command line or a config file.

Examples::

    flowopt-train --model mlp --dataset mnist --optimizer rk4 --learning-rate 0.1 \\
        --grad-evals 20000 --seed 0 --output runs/mlp-rk4
    flowopt-train --config configs/train/mnist_mlp_sgd.yaml --output runs/mlp-sgd --seed 1

Several processes (hosts), each running the same command but for its id::

    flowopt-train --config c.yaml --output /shared/runs/x --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0

Without ``--coordinator``, the processes SLURM's ``srun`` or Open MPI's
``mpirun`` started are joined (JAX's cluster detection); elsewhere the run is
one process.

Flags override the config file. The output directory receives ``config.json``,
``metrics.jsonl`` (one JSON object per epoch) and ``checkpoints/``; running the
same command again resumes from the newest checkpoint. Exit status: 0 when the
budget is spent, 3 when training diverged, 2 for bad arguments (one line on
stderr naming the flag, or the config file and key, at fault).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from flowopt.training.config import BUDGET_FIELDS, SCHEDULES, ConfigError, TrainConfig, read_config_file
from flowopt.training.data import DATASET_NAMES, DataIntegrityError, DataUnavailableError
from flowopt.training.models import MODELS
from flowopt.training.optimizers import available_optimizers
from flowopt.training.parallel import PARAM_SHARDINGS

EXIT_DIVERGED = 3

_FLAG_OF = {  # the flag that sets each config key
    **{key: "--" + key.replace("_", "-") for key in TrainConfig.field_names()},
    "num_devices": "--devices",
    "model_options": "--model-option",
    "optimizer_options": "--optimizer-option",
    "progress": "--no-progress",
}
_DATA_FLAG_OF = {"path": "--data-path", "data_dir": "--data-dir"}


def one_line(text: object) -> str:
    """``text`` on one line: its lines joined by ``"; "``, every run of whitespace collapsed to one space."""
    lines = [" ".join(line.split()) for line in str(text).splitlines()]
    lines = [line for line in lines if line]
    return "; ".join([line.removesuffix(".") for line in lines[:-1]] + lines[-1:])


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def _option(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE``; the value is JSON when it parses, else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


class _Origins:
    """Where each config value came from: a flag, or the ``--config`` file."""

    def __init__(self, config_file: str | None):
        self.config_file = config_file
        self.flags: dict[tuple[str, str | None], str] = {}

    def set_flag(self, field: str, key: str | None = None, flag: str | None = None) -> None:
        self.flags[(field, key)] = flag or _FLAG_OF[field]

    def describe(self, error: ConfigError) -> str:
        """The one-line message for a bad field: ``argument --flag: ...`` or ``argument --config FILE: ...``."""
        field, key = error.field, error.key
        flag = self.flags.get((field, key)) or (self.flags.get((field, None)) if key is None else None)
        if flag is None and key is None:
            flags = [f for (name, _), f in self.flags.items() if name == field]
            flag = flags[0] if len(flags) == 1 else None
        if flag is not None:
            return f"argument {flag}: {one_line(error)}"
        if self.config_file is not None:
            where = f"key {field}" + (f".{key}" if key is not None else "")
            return f"argument --config: {self.config_file}: {where}: {one_line(error)}"
        if field in BUDGET_FIELDS:
            return f"argument --epochs/--steps/--grad-evals: {one_line(error)}"
        return f"argument {_FLAG_OF[field]}: {one_line(error)}"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``flowopt-train``."""
    parser = OneLineParser(
        prog="flowopt-train",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML or JSON file of TrainConfig fields")
    parser.add_argument("--output", help="run directory (metrics.jsonl, checkpoints)")
    parser.add_argument("--model", help=f"one of: {', '.join(MODELS)}")
    parser.add_argument("--dataset", help=f"one of: {', '.join(DATASET_NAMES)}")
    parser.add_argument("--optimizer", help=f"one of: {', '.join(available_optimizers())}, or any flowopt constructor")
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--batch-size", type=int)
    budget = parser.add_argument_group("budget (the run stops at the first one reached)")
    budget.add_argument("--epochs", type=int)
    budget.add_argument("--steps", type=int)
    budget.add_argument("--grad-evals", type=int, help="gradient evaluations, oracle calls included")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--weight-decay", type=float, help="L2 coefficient on kernels, added to the loss")
    parser.add_argument("--schedule", choices=SCHEDULES)
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CIFAR crop-4 + flip (default: on for 32x32 RGB data)",
    )
    parser.add_argument("--eval-batch-size", type=int)
    parser.add_argument("--eval-train", action="store_true", default=None, help="also evaluate the full training set each epoch")
    parser.add_argument("--eval-every", type=int, help="also evaluate and log at every multiple of N steps")
    parser.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps")
    sharpness = parser.add_argument_group("sharpness (top Hessian eigenvalues on a fixed training batch, by Lanczos)")
    sharpness.add_argument("--sharpness-every", type=int, help="measure and log the sharpness every N steps")
    sharpness.add_argument("--sharpness-top", type=int, help="how many of the top eigenvalues to log (default 1)")
    sharpness.add_argument("--sharpness-iterations", type=int, help="Lanczos steps per measurement (default 20)")
    sharpness.add_argument("--sharpness-batch-size", type=int, help="examples in the fixed batch (default 1000)")
    parser.add_argument("--devices", dest="num_devices", type=int, help="devices to shard the batch over (default: all)")
    parser.add_argument(
        "--param-sharding",
        choices=PARAM_SHARDINGS,
        help="parameters and optimizer state copied to every device (replicated, the default) or split over them (fsdp)",
    )
    parser.add_argument("--model-option", action="append", type=_option, default=[], metavar="KEY=VALUE")
    parser.add_argument("--optimizer-option", action="append", type=_option, default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-path", help="local image folder or tar archive laid out as {train,test}/<class>/<image>")
    parser.add_argument("--data-dir", help="tfds data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cluster = parser.add_argument_group(
        "multi-process run (every process runs the same command; default: the processes srun or mpirun started, else one)"
    )
    cluster.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0, where the processes meet")
    cluster.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    cluster.add_argument("--process-id", type=int, metavar="I", help="this process's id, 0 to N-1")
    cluster.add_argument(
        "--cluster-timeout", type=int, metavar="SECONDS", help="wait for the processes to join, and for a silent one, this long"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run the output directory holds (checkpoints, metrics) with a fresh one",
    )
    parser.add_argument("--list", action="store_true", help="list models, datasets and optimizers, then exit")
    return parser


def _merge(args: argparse.Namespace) -> tuple[dict[str, Any], _Origins]:
    """The config mapping of the config file (if any) with the flags on top, and where each value came from."""
    if args.config is not None and not args.config.strip():
        raise ValueError("argument --config: the file name is empty.")
    try:
        values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    except ValueError as error:
        raise ValueError(f"argument --config: {one_line(error)}") from error
    origins = _Origins(args.config)
    for key in TrainConfig.field_names():  # the flags whose destination is a config key of the same name
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
            origins.set_flag(key)
    for field, pairs in (("model_options", args.model_option), ("optimizer_options", args.optimizer_option)):
        if pairs:
            if not isinstance(values.get(field, {}), dict):
                raise ValueError(f"argument --config: {args.config}: key {field} must be a mapping of options.")
            values[field] = {**values.get(field, {}), **dict(pairs)}
            for key, _ in pairs:
                origins.set_flag(field, key)
    if not isinstance(values.get("dataset_options", {}), dict):
        raise ValueError(f"argument --config: {args.config}: key dataset_options must be a mapping of options.")
    data_options = dict(values.get("dataset_options", {}))
    for key, flag in (("path", "data_path"), ("data_dir", "data_dir")):
        value = getattr(args, flag)
        if value is not None:
            if not value.strip():
                raise ValueError(f"argument {_DATA_FLAG_OF[key]}: the path is empty.")
            data_options[key] = value
            origins.set_flag("dataset_options", key, _DATA_FLAG_OF[key])
    if data_options:
        values["dataset_options"] = data_options
    if args.no_progress:
        values["progress"] = False
    return values, origins


def _build(values: dict[str, Any], origins: _Origins) -> TrainConfig:
    try:
        return TrainConfig.from_dict(values)
    except ConfigError as error:
        raise ValueError(origins.describe(error)) from error
    except ValueError as error:  # unknown keys: only a config file can hold those
        raise ValueError(f"argument --config: {origins.config_file}: {one_line(error)}") from error


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge a config file (if any) with the flags given on the command line.

    Raises:
      ValueError: a one-line message naming the flag (or the config file and key) at fault.
    """
    return _build(*_merge(args))


def _check_paths(config: TrainConfig, output: str, origins: _Origins) -> None:
    """The data path must exist, the cache and output directories must be (or become) writable directories."""
    for key in ("path", "data_dir"):
        value = config.dataset_options.get(key)
        if value is None:
            continue
        where = origins.describe(ConfigError("dataset_options", "", key)).removesuffix(": ")
        path = Path(value).expanduser()
        if key == "path" and not path.exists():
            raise ValueError(f"{where}: {path} does not exist.")
        if key != "path" and path.exists() and not path.is_dir():
            raise ValueError(f"{where}: {path} exists and is not a directory.")
    if not output.strip():
        raise ValueError("argument --output: the directory name is empty.")
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"argument --output: {out} exists and is not a directory.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=".flowopt-write-test-"):
            pass
    except OSError as error:
        raise ValueError(f"argument --output: {out} is not a writable directory: {error.strerror or error}.") from error


def _check_devices(config: TrainConfig, origins: _Origins) -> None:
    from flowopt.training import parallel

    try:
        mesh = parallel.data_mesh(config.num_devices)
    except ValueError as error:
        raise ValueError(origins.describe(ConfigError("num_devices", str(error)))) from error
    try:
        parallel.check_batch_size(config.batch_size, mesh)
    except ValueError as error:
        raise ValueError(origins.describe(ConfigError("batch_size", str(error)))) from error


def _join_processes(config: TrainConfig, origins: _Origins) -> None:
    """Join the processes of a multi-process run (or of the cluster JAX detects) before anything touches a device."""
    from flowopt.training import distributed

    try:
        distributed.initialize(config.coordinator, config.num_processes, config.process_id, timeout=config.cluster_timeout)
    except (ValueError, distributed.ClusterError) as error:
        if config.coordinator is None:
            raise ValueError(f"joining the processes the launcher started: {one_line(error)}") from error
        raise ValueError(origins.describe(ConfigError("coordinator", str(error)))) from error


def _data_error(error: Exception, config: TrainConfig, origins: _Origins) -> str:
    key = "path" if "path" in config.dataset_options else None
    if key is not None:
        return origins.describe(ConfigError("dataset_options", one_line(error), key))
    return origins.describe(ConfigError("dataset", one_line(error)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``flowopt-train``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print("models:     " + ", ".join(MODELS))
        print("datasets:   " + ", ".join(DATASET_NAMES))
        print("optimizers: " + ", ".join(available_optimizers()) + " (and any flowopt constructor)")
        return 0
    if args.output is None:
        parser.error("the following arguments are required: --output")
    try:
        values, origins = _merge(args)
        config = _build(values, origins)
        _join_processes(config, origins)
        try:
            config.check_buildable()
        except ConfigError as error:
            raise ValueError(origins.describe(error)) from error
        _check_devices(config, origins)
        _check_paths(config, args.output, origins)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("flowopt.training.data").setLevel(logging.WARNING)  # a failure names every source it tried
    from flowopt.training.loop import train

    try:
        result = train(config, os.fspath(Path(args.output).expanduser()), overwrite=args.overwrite)
    except (DataIntegrityError, DataUnavailableError) as error:
        parser.error(_data_error(error, config, origins))
    except ConfigError as error:
        parser.error(origins.describe(error))
    except ValueError as error:
        message = one_line(error)
        if os.fspath(Path(args.output).expanduser()) in message:
            message = f"argument --output: {message}"
        parser.error(message)
    except OSError as error:
        parser.error(f"{error.filename or args.output}: {error.strerror or error}")
    last = next((r for r in reversed(result.history) if "test_accuracy" in r), None)
    summary = f"{result.message} Dataset: {result.dataset_label}."
    if last is not None:
        summary += f" Test accuracy {last['test_accuracy']:.4f}, test loss {last['test_loss']:.4f}."
    print(summary, file=sys.stderr if result.diverged else sys.stdout)
    return EXIT_DIVERGED if result.diverged else 0


if __name__ == "__main__":
    sys.exit(main())
