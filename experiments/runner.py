"""Resumable execution of a study: a list of independent runs, each saved when it finishes.

A study plans its runs from a configuration, executes each into its own
directory, and summarises the finished results into CSV/JSON tables and
figures. A run whose ``result.json`` exists is not redone, so an interrupted
study resumes where it stopped (runs that checkpoint internally, such as
training runs, also resume mid-run from their own directory). Summaries read
every result back from its file, so a fresh and a resumed study write the
same tables. A run whose data set this machine cannot provide is skipped
with a message, not recorded, so it runs once the data is there; the others
go on.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from flowopt.training.data import DataUnavailableError

CONFIG_DIR = Path(__file__).parent / "configs"
CONFIG_NAMES = ("smoke", "cpu", "gpu")


class RunSpec(NamedTuple):
    """One independent run of a study: a unique ``key`` (a directory name) and its settings."""

    key: str
    settings: dict[str, Any]


class Study(NamedTuple):
    """A study: plan runs from a config, execute one run, summarise all results.

    Attributes:
      name: the command-line name, e.g. ``"runge-kutta"``.
      plan: ``config -> list[RunSpec]``.
      execute: ``(spec, config, run_dir) -> result`` (a JSON-serialisable dict).
      summarize: ``(config, {key: result}, output_dir) -> None``: tables and figures.
    """

    name: str
    plan: Callable[[dict[str, Any]], list[RunSpec]]
    execute: Callable[[RunSpec, dict[str, Any], Path], dict[str, Any]]
    summarize: Callable[[dict[str, Any], dict[str, dict[str, Any]], Path], None]


def load_config(study: str, config: str) -> dict[str, Any]:
    """The configuration ``experiments/configs/<study>/<config>.json`` (or a path to a JSON file)."""
    path = Path(config)
    if not path.suffix:
        if config not in CONFIG_NAMES:
            raise ValueError(f"config must be one of {CONFIG_NAMES} or a .json file, got {config!r}.")
        path = CONFIG_DIR / study.replace("-", "_") / f"{config}.json"
    if not path.is_file():
        raise ValueError(f"no configuration file {path} for study {study!r}.")
    settings = json.loads(path.read_text())
    settings.setdefault("config_name", path.stem)
    return settings


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def run_study(study: Study, config: dict[str, Any], output_dir: Path, progress: bool = True) -> dict[str, dict]:
    """Execute every planned run not yet finished, then summarise; returns ``{key: result}``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_json(output_dir / "config.json", config)
    specs = study.plan(config)
    keys = [spec.key for spec in specs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"study {study.name} planned duplicate run keys.")
    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    bar = tqdm(specs, desc=study.name, unit="run", disable=not progress)
    for spec in bar:
        bar.set_postfix_str(spec.key)
        run_dir = output_dir / "runs" / spec.key
        done = run_dir / "result.json"
        if done.is_file():
            results[spec.key] = json.loads(done.read_text())
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            result = study.execute(spec, config, run_dir)
        except DataUnavailableError as error:
            skipped[spec.key] = str(error).splitlines()[0]
            if not any(run_dir.iterdir()):
                run_dir.rmdir()
            continue
        result = {**result, "key": spec.key, "settings": spec.settings, "wall_seconds": time.perf_counter() - start}
        _write_json(done, result)
        results[spec.key] = json.loads(done.read_text())  # as a resumed study sees it
    if skipped:
        reasons = sorted(set(skipped.values()))
        print(f"{study.name}: skipped {len(skipped)} of {len(specs)} runs, their data is unavailable here: "
              + " ".join(reasons))
    study.summarize(config, results, output_dir)
    return results
