"""``flowopt-experiment STUDY --config {smoke,cpu,gpu,...}``: run one study end to end into ``results/STUDY/CONFIG``.

Exit status: 0 when the study ran, 2 for bad arguments, a malformed
configuration, a damaged data cache or an unwritable output (one line on
stderr naming the flag, or the file and key).
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

from experiments.runner import (
    CONFIG_NAMES,
    ConfigFileError,
    Study,
    check_config,
    config_path,
    load_config,
    run_study,
    study_module,
)
from flowopt.training.cli import OneLineParser
from flowopt.training.data import DataIntegrityError

STUDIES = (
    "runge-kutta",
    "adam-ode",
    "bdf",
    "continuous-vs-discrete",
    "bdf-stability",
    "adaptive-steps",
    "analysis",
    "stabilized",
    "edge-of-stability",
)
"""The study names; study ``a-b`` is the package ``experiments.studies.a_b``, its configurations beside it."""


def get_study(name: str) -> Study:
    """The study registered under ``name``."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; choose one of {sorted(STUDIES)}.")
    return importlib.import_module(study_module(name)).STUDY


def _check_output(output: Path) -> None:
    """``output`` must be, or become, a writable directory."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"argument --output: {output} exists and is not a directory.")
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output, prefix=".flowopt-write-test-"):
            pass
    except OSError as error:
        raise ValueError(f"argument --output: {output} is not a writable directory: {error.strerror or error}.") from error


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``flowopt-experiment``; returns the exit status."""
    parser = OneLineParser(
        prog="flowopt-experiment",
        description="Run a flowopt study; finished runs are kept and reused while their configuration matches.",
    )
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument(
        "--config", default="cpu", help=f"a configuration the study ships ({', '.join(CONFIG_NAMES)}, ...) or a JSON file"
    )
    parser.add_argument("--output", default=None, help="default: results/<study>/<config>")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.output is not None and not args.output.strip():
        parser.error("argument --output: the directory name is empty.")
    study = get_study(args.study)
    try:
        config = load_config(args.study, args.config)
        source = config_path(args.study, args.config)
        check_config(study, config, source)
    except ConfigFileError as error:
        parser.error(f"argument --config: {error}")
    output = Path(args.output).expanduser() if args.output is not None else (Path("results") / args.study / config["config_name"])
    try:
        _check_output(output)
    except ValueError as error:
        parser.error(str(error))
    try:
        run_study(study, config, output, progress=not args.no_progress, source=source)
    except ConfigFileError as error:
        parser.error(f"argument --config: {error}")
    except DataIntegrityError as error:  # a damaged cache: the message says how to repair it
        parser.error(str(error))
    except OSError as error:
        parser.error(f"{error.filename or output}: {error.strerror or error}")
    print(f"results written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
