"""The full-batch runs of the stabilized study: one quadratic, or the MNIST logistic regression, every method.

Each run sweeps every setting (:mod:`.methods`) until the relative gap
reaches the target, keeps each method's best row, and (where asked) records
the loss curve of each method at its best setting.
"""

from __future__ import annotations

from typing import Any

import jax

from experiments import report
from experiments.studies.stabilized import methods, sweeps
from experiments.studies.stabilized.problems import Conditioned, logistic_regression, quadratic


def _sweep(
    conditioned: Conditioned, settings: list[methods.Setting], block: dict[str, Any], curves: bool
) -> tuple[list[dict], dict[str, dict]]:
    """Rows of every setting, and (``curves``) each method's curve at its best setting."""
    rows = sweeps.run_settings(conditioned, settings, block["target"], block["budget"])
    by_label = {setting.label: setting for setting in settings}
    recorded = {}
    if curves:
        for method, row in sweeps.best_rows(rows).items():
            curve = sweeps.curve(conditioned, by_label[row["label"]], row["lr_times_L"], block["curve_budget"])
            recorded[method] = {"label": row["label"], "lr_times_L": row["lr_times_L"], **curve}
    return rows, recorded


def execute_quadratic(kappa: float, config: dict[str, Any]) -> dict[str, Any]:
    """Every method (and CG) on the quadratic of condition number ``kappa``, in float64."""
    block = config["quadratics"]
    with jax.enable_x64(True):
        conditioned, eigenvalues = quadratic(kappa, block["dim"], config.get("seed", 0))
        settings = methods.settings(block["methods"], conditioned.mu, conditioned.problem.lipschitz)
        rows, curves = _sweep(conditioned, settings, block, kappa == block.get("curve_kappa"))
        if "cg" in block["methods"]:
            row, gaps = sweeps.cg_row(eigenvalues, conditioned, block["target"], block["budget"])
            rows.append(row)
            if curves:
                curves["cg"] = {"label": "cg", "lr_times_L": None, **sweeps.thin(list(range(2, len(gaps) + 2)), gaps)}
    return _result("quadratic", conditioned, rows, curves)


def execute_logistic(config: dict[str, Any]) -> dict[str, Any]:
    """Every method on the full-batch MNIST logistic regression, in float64."""
    block = config["logistic"]
    with jax.enable_x64(True):
        conditioned = logistic_regression(block["dataset"], block["train_subset"], block["reg"])
        settings = methods.settings(
            block["methods"],
            conditioned.mu,
            conditioned.problem.lipschitz,
            rate_scales=tuple(block["momentum_rate_scales"]),
        )
        rows, curves = _sweep(conditioned, settings, block, True)
    return _result("logistic", conditioned, rows, curves)


def _result(kind: str, conditioned: Conditioned, rows: list[dict], curves: dict[str, dict]) -> dict[str, Any]:
    """A full-batch run's result: the problem, its facts (κ first among them), the rows and curves."""
    facts = conditioned.facts
    return {
        "kind": kind,
        "problem": conditioned.problem.name,
        "kappa": facts["kappa"],
        "facts": facts,
        "rows": report.pack(rows),
        "curves": curves,
    }
