"""``flowopt-train``: train a model from the command line or a config file.

Examples::

    flowopt-train --model mlp --dataset mnist --optimizer rk4 --learning-rate 0.1 \\
        --grad-evals 20000 --seed 0 --output runs/mlp-rk4
    flowopt-train --config configs/train/mnist_mlp_sgd.yaml --output runs/mlp-sgd --seed 1

Flags override the config file. The output directory receives ``config.json``,
``metrics.jsonl`` (one JSON object per epoch) and ``checkpoints/``; running the
same command again resumes from the newest checkpoint. Exit status: 0 when the
budget is spent, 3 when training diverged, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from flowopt.training.config import SCHEDULES, TrainConfig, read_config_file
from flowopt.training.data import DATASET_NAMES, DataIntegrityError, DataUnavailableError
from flowopt.training.models import MODELS
from flowopt.training.optimizers import available_optimizers

EXIT_DIVERGED = 3

_FLAGS = (  # flags whose destination is a config key of the same name
    "model", "dataset", "optimizer", "learning_rate", "batch_size", "epochs", "steps", "grad_evals", "seed",
    "weight_decay", "schedule", "warmup_steps", "augment", "eval_batch_size", "eval_train", "eval_every",
    "checkpoint_every", "num_devices",
)


def _option(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE``; the value is JSON when it parses, else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``flowopt-train``."""
    parser = argparse.ArgumentParser(
        prog="flowopt-train", description=__doc__.split("\n\n")[0],
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
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="CIFAR crop-4 + flip (default: on for 32x32 RGB data)")
    parser.add_argument("--eval-batch-size", type=int)
    parser.add_argument("--eval-train", action="store_true", default=None,
                        help="also evaluate the full training set each epoch")
    parser.add_argument("--eval-every", type=int, help="also evaluate and log at every multiple of N steps")
    parser.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps")
    parser.add_argument("--devices", dest="num_devices", type=int, help="devices to shard the batch over (default: all)")
    parser.add_argument("--model-option", action="append", type=_option, default=[], metavar="KEY=VALUE")
    parser.add_argument("--optimizer-option", action="append", type=_option, default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-path", help="local dataset copy (IDX dir, image folder or tar archive)")
    parser.add_argument("--data-dir", help="dataset cache directory (default $FLOWOPT_DATA_DIR or ~/.cache/flowopt)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--list", action="store_true", help="list models, datasets and optimizers, then exit")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge a config file (if any) with the flags given on the command line."""
    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    for key in _FLAGS:
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    for field, pairs in (("model_options", args.model_option), ("optimizer_options", args.optimizer_option)):
        if pairs:
            values[field] = {**values.get(field, {}), **dict(pairs)}
    data_options = dict(values.get("dataset_options", {}))
    if args.data_path:
        data_options["path"] = args.data_path
    if args.data_dir:
        data_options["data_dir"] = args.data_dir
    if data_options:
        values["dataset_options"] = data_options
    if args.no_progress:
        values["progress"] = False
    return TrainConfig.from_dict(values)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``flowopt-train``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print("models:     " + ", ".join(MODELS))
        print("datasets:   " + ", ".join(DATASET_NAMES))
        print("optimizers: " + ", ".join(available_optimizers()) + " (and any flowopt constructor)")
        return 0
    if not args.output:
        parser.error("--output DIR is required")
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from flowopt.training.loop import train

    try:
        result = train(config, args.output)
    except (ValueError, DataIntegrityError, DataUnavailableError) as error:
        print(f"flowopt-train: error: {error}", file=sys.stderr)
        return 2
    last = next((r for r in reversed(result.history) if "test_accuracy" in r), None)
    summary = f"{result.message} Dataset: {result.dataset_label}."
    if last is not None:
        summary += f" Test accuracy {last['test_accuracy']:.4f}, test loss {last['test_loss']:.4f}."
    print(summary, file=sys.stderr if result.diverged else sys.stdout)
    return EXIT_DIVERGED if result.diverged else 0


if __name__ == "__main__":
    sys.exit(main())
