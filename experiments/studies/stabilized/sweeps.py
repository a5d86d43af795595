"""Run settings on a full-batch problem: gradient evaluations to a target, best setting per method, loss curves.

Runs go through :func:`experiments.studies.bdf_stability.measure` (a jitted
``while_loop`` per optimizer until the relative gap ``(f - f*)/(f_0 - f*)``
reaches the target, the run diverges or the evaluation budget is spent) and
:func:`~experiments.studies.bdf_stability.loss_curve`; a gradient evaluation
is the incoming gradient of a step or an oracle call.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from experiments.studies.bdf_stability import loss_curve, measure
from experiments.studies.stabilized.methods import Setting, conjugate_gradient
from experiments.studies.stabilized.problems import Conditioned

CURVE_POINTS = 300
"""The most points kept of a loss curve (log-spaced in the step index)."""


def run_settings(conditioned: Conditioned, settings: list[Setting], target: float, budget: int) -> list[dict[str, Any]]:
    """One row per setting and rate: its family, label, parameters, cost per step, and what :func:`measure` found."""
    rows = []
    for setting in settings:
        for row in measure(conditioned.problem, {setting.label: setting.build}, setting.rates, target, budget):
            row["label"] = row.pop("method")
            rows.append({"method": setting.method, **row, "cost_per_step": setting.cost, **setting.params})
    return rows


def best_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method family: the row that reached the target with the fewest gradient evaluations.

    A family none of whose rows reached it maps to its row with the smallest final gap, marked unreached.
    """
    best: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(row["method"] for row in rows):
        own = [row for row in rows if row["method"] == method]
        reached = [row for row in own if row["reached"]]
        if reached:
            best[method] = min(reached, key=lambda row: row["gradient_evaluations"])
        else:
            best[method] = min(own, key=lambda row: _finite(row["final_relative_gap"]))
    return best


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def cg_row(eigenvalues: np.ndarray, conditioned: Conditioned, target: float, budget: int) -> tuple[dict[str, Any], list]:
    """The conjugate-gradient row of a quadratic, and its gap after each iteration."""
    reached, evaluations, gaps = conjugate_gradient(eigenvalues, np.asarray(conditioned.problem.x0), target, budget)
    row = {
        "method": "cg",
        "problem": conditioned.problem.name,
        "label": "cg",
        "lr_times_L": None,
        "reached": reached,
        "gradient_evaluations": evaluations if reached else "",
        "final_relative_gap": gaps[-1] if gaps else 1.0,
        "diverged": False,
        "cost_per_step": 1,
    }
    return row, gaps


def curve(conditioned: Conditioned, setting: Setting, rate: float, budget: int) -> dict[str, list]:
    """The relative gap against gradient evaluations of ``setting`` at ``h·L = rate``, for ``budget`` evaluations."""
    problem = conditioned.problem
    evals, gaps = jax.device_get(loss_curve(problem, setting.build, setting.cost, budget)(rate / problem.lipschitz))
    return thin(np.asarray(evals).tolist(), np.asarray(gaps).tolist())


def thin(evals: list, gaps: list) -> dict[str, list]:
    """At most :data:`CURVE_POINTS` points of a curve, log-spaced in the index (first and last kept), gaps JSON-safe."""
    index = np.unique(np.geomspace(1, len(evals), min(CURVE_POINTS, len(evals))).astype(int) - 1) if evals else []
    return {
        "grad_evals": [int(evals[i]) for i in index],
        "relative_gap": [float(gaps[i]) if math.isfinite(gaps[i]) else None for i in index],
    }
