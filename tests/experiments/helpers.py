"""Helpers shared by the study tests: a smoke run, a rerun that records what it executes, a results table's rows."""

import csv

from experiments.runner import Study, load_config, run_study


def run_smoke(study: Study, config_name: str, tmp_path_factory) -> tuple:
    """``(config, output, results)`` of ``study`` run on its ``smoke`` configuration into a fresh folder."""
    config = load_config(config_name, "smoke")
    output = tmp_path_factory.mktemp(config_name.replace("-", "_") + "_smoke")
    results = run_study(study, config, output, progress=False)
    return config, output, results


def rerun_recording(study: Study, config, output) -> list[str]:
    """Run ``study`` again into ``output`` (kept runs are not redone); the keys of the runs it executed, in order."""
    executed = []

    def execute(spec, cfg, run_dir):
        executed.append(spec.key)
        return study.execute(spec, cfg, run_dir)

    run_study(study._replace(execute=execute), config, output, progress=False)
    return executed


def read_rows(path) -> list[dict[str, str]]:
    """The rows of the CSV file at ``path``, as dicts keyed by its header."""
    with path.open() as handle:
        return list(csv.DictReader(handle))
