"""``flowopt-experiment STUDY --config {smoke,cpu,gpu}``: run one study end to end."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from experiments.runner import CONFIG_NAMES, Study, load_config, run_study

STUDIES = {
    "runge-kutta": "experiments.studies.runge_kutta",
    "adam-ode": "experiments.studies.adam_ode",
    "bdf": "experiments.studies.bdf",
    "continuous-vs-discrete": "experiments.studies.continuous_vs_discrete",
}


def get_study(name: str) -> Study:
    """The study registered under ``name``."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; choose one of {sorted(STUDIES)}.")
    return importlib.import_module(STUDIES[name]).STUDY


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a flowopt study; finished runs are kept and skipped on re-runs.")
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--config", default="cpu", help=f"one of {CONFIG_NAMES} or a JSON file")
    parser.add_argument("--output", type=Path, default=None, help="default: results/<study>/<config>")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = load_config(args.study, args.config)
    output = args.output or Path("results") / args.study / config["config_name"]
    run_study(get_study(args.study), config, output, progress=not args.no_progress)
    print(f"results written to {output}")


if __name__ == "__main__":
    main()
