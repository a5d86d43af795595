"""Edge of stability: gradient descent at large steps against the gradient, modified and central flows.

Full-batch gradient descent with step ``η`` on a small MLP with squared loss
(Cohen et al., ICLR 2021: progressive sharpening drives ``λ_max`` up to
``2/η``, where it stays while the loss keeps falling, non-monotonically).
For each step size the run records, at the save steps ``k`` (times ``t = kη``):

* gradient descent's loss at every step, its **time average** over a window
  of ``window`` steps centred on each save step, its averaged iterate
  ``θ̄_GD``, and ``λ_max`` every ``sharpness_every`` steps (Lanczos);
* the predictions of gradient descent's time-averaged loss by the
  **gradient flow** (``L(θ_GF(t))``), the **modified flow** of
  ``L + (η/4)‖∇L‖²`` (``L(θ_MF(t))``; second order in ``η`` while GD is
  stable) and the **central flow** of Cohen, Damian, Talwalkar, Kolter & Lee
  (ICLR 2025; :func:`flowopt.analysis.central_flow`, ``L + ½⟨H, Σ⟩``);
* each flow's distance to ``θ̄_GD`` and its sharpness.

Step sizes are given as ``λ_max(θ_0)·η/2``, the fraction of the threshold
gradient descent starts at. A relative error is ``|prediction - GD average| /
GD average`` at a save step whose window lies inside the run (from
``window/2`` on); each flow's error is its maximum over those steps.

Writes to ``results/edge-of-stability/<config>/``: ``summary.json`` (per run
and, at the top, the largest error of each flow over the runs and the mean of
GD's ``λ_max·η/2`` over the runs' edge phases), ``curves.csv``,
``results.md`` and ``edge_of_stability.png``::

    flowopt-experiment edge-of-stability --config cpu
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from experiments import report, runner
from experiments.runner import RunSpec, Study
from experiments.studies.edge_of_stability import descent, figures, predictions
from experiments.studies.edge_of_stability.problem import ACTIVATIONS, make_problem
from flowopt.training.data import DATASET_NAMES

FLOW_NAMES = tuple(figures.FLOWS)
EDGE_TOLERANCE = 0.05


def plan(config: dict[str, Any]) -> list[RunSpec]:
    """One run per step size."""
    if config["save_every"] < config["window"] // 2 or config["steps"] % config["save_every"]:
        raise ValueError("steps must be a multiple of save_every, and save_every at least window/2.")
    return [RunSpec(f"fraction{fraction:g}", {"fraction": fraction}) for fraction in config["sharpness_fractions"]]


def execute(spec: RunSpec, config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Gradient descent and the three flows at one step size, in float64."""
    with jax.enable_x64(True):
        return _execute(spec.settings["fraction"], config)


def _execute(fraction: float, config: dict[str, Any]) -> dict[str, Any]:
    problem = make_problem(config["data"], config["model"])
    lanczos = config["lanczos_iterations"]
    initial = descent.initial_sharpness(problem, lanczos)
    eta = 2 * fraction / initial
    gd = descent.gradient_descent(
        problem, eta, config["steps"], config["save_every"], config["window"], config["sharpness_every"], lanczos
    )
    times = gd.saves * eta
    flows = predictions.reference_flows(problem, eta, times, config["flow"], lanczos)
    flows["central_flow"] = predictions.central(problem, eta, float(times[-1]), len(times), config["central_flow"])
    compared = gd.saves >= config["window"] // 2
    edge = descent.edge_phase(gd, eta, EDGE_TOLERANCE)
    result: dict[str, Any] = {
        "problem": problem.label,
        "fraction": fraction,
        "initial_sharpness": initial,
        "learning_rate": eta,
        "saves": gd.saves.tolist(),
        "times": times.tolist(),
        "gd": {
            "losses": gd.losses.tolist(),
            "averaged_losses": gd.averaged_losses.tolist(),
            "sharpness_steps": gd.sharpness_steps.tolist(),
            "sharpness": gd.sharpness.tolist(),
            "oscillation": np.linalg.norm(gd.params - gd.averaged_params, axis=1).tolist(),
            "edge_sharpness_over_2_over_eta": float(edge.mean()) if edge.size else None,
            "edge_measurements": int(edge.size),
            "edge_within_tolerance": float(np.mean(np.abs(edge - 1) <= EDGE_TOLERANCE)) if edge.size else None,
        },
    }
    for name, prediction in flows.items():
        errors = predictions.relative_errors(prediction.loss, gd.averaged_losses)
        result[name] = {
            "loss": prediction.loss.tolist(),
            "sharpness": prediction.sharpness.tolist(),
            "distance_to_gd_average": np.linalg.norm(prediction.params - gd.averaged_params, axis=1).tolist(),
            "loss_rel_errors": errors.tolist(),
            "loss_rel_error": float(errors[compared].max()),
            "cost": prediction.cost,
        }
    return result


def _median_error(config: dict[str, Any], run: dict[str, Any], name: str) -> float:
    """The median of a flow's relative errors over the compared save steps (a catapult's spike weighs one step)."""
    compared = np.asarray(run["saves"]) >= config["window"] // 2
    return float(np.median(np.asarray(run[name]["loss_rel_errors"])[compared]))


def summary(config: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline numbers: the largest error of each flow over the runs, GD's sharpness at the edge, and each run's."""
    edges = [run["gd"]["edge_sharpness_over_2_over_eta"] for run in runs if run["gd"]["edge_measurements"]]
    headline: dict[str, Any] = {
        "gd_sharpness_over_2_over_eta": float(np.mean(edges)) if edges else None,
        **{f"{name}_loss_rel_error": max(run[name]["loss_rel_error"] for run in runs) for name in FLOW_NAMES},
    }
    per_run = [
        {
            "learning_rate": run["learning_rate"],
            "fraction": run["fraction"],
            "gd_sharpness_over_2_over_eta": run["gd"]["edge_sharpness_over_2_over_eta"],
            "gd_edge_measurements_within_5_percent": run["gd"]["edge_within_tolerance"],
            **{f"{name}_loss_rel_error": run[name]["loss_rel_error"] for name in FLOW_NAMES},
            **{f"{name}_loss_rel_error_median": _median_error(config, run, name) for name in FLOW_NAMES},
            "central_flow_cost": run["central_flow"]["cost"],
        }
        for run in runs
    ]
    return {**headline, "runs": per_run, "problem": runs[0]["problem"] if runs else None, "config": config.get("config_name")}


def _curve_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        for index, (step, time) in enumerate(zip(run["saves"], run["times"])):
            row = {
                "learning_rate": run["learning_rate"],
                "step": step,
                "t": time,
                "gd_average": run["gd"]["averaged_losses"][index],
            }
            for name in FLOW_NAMES:
                row[f"{name}_loss"] = run[name]["loss"][index]
                row[f"{name}_sharpness"] = run[name]["sharpness"][index]
                row[f"{name}_distance"] = run[name]["distance_to_gd_average"][index]
            rows.append(row)
    return rows


def markdown(headline: dict[str, Any]) -> str:
    """``results.md``: per step size, GD at the edge and each flow's largest relative error."""
    lines = [
        f"# Edge of stability: {headline['problem']}",
        "",
        "| η | GD λ_max·η/2 at the edge (mean) | within 5% | gradient flow | modified flow | central flow |",
        "|---|---|---|---|---|---|",
    ]
    for run in headline["runs"]:
        sharp, within = run["gd_sharpness_over_2_over_eta"], run["gd_edge_measurements_within_5_percent"]
        cells = [f"{run[f'{name}_loss_rel_error']:.1%} ({run[f'{name}_loss_rel_error_median']:.1%})" for name in FLOW_NAMES]
        edge = f"{sharp:.3f}" if sharp is not None else "never reached"
        share = f"{within:.0%}" if within is not None else "—"
        lines.append(f"| {run['learning_rate']:.4g} | {edge} | {share} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cells of the flows: the largest (median) relative error of the predicted time-averaged training loss over the save",
        "steps; a catapult (a loss spike inside one averaging window) sets the largest.",
    ]
    return "\n".join(lines) + "\n"


def summarize(config: dict[str, Any], results: dict[str, dict[str, Any]], output_dir: Path) -> None:
    """``summary.json``, ``curves.csv``, ``results.md`` and ``edge_of_stability.png``."""
    runs = [results[spec.key] for spec in plan(config) if spec.key in results]
    if not runs:
        return
    headline = summary(config, runs)
    (output_dir / "summary.json").write_text(json.dumps(headline, indent=2) + "\n")
    report.write_csv(output_dir / "curves.csv", _curve_rows(runs))
    (output_dir / "results.md").write_text(markdown(headline))
    figures.plot(output_dir / "edge_of_stability.png", runs)


FRACTION = runner.satisfies("a number in (0, 2)", lambda value: runner.POSITIVE.test(value) and value < 2)

_FLOW_SCHEMA = {
    "method": runner.optional(runner.one_of("bosh3", "dopri5", "heun_euler")),
    "rtol": runner.optional(runner.POSITIVE),
    "atol": runner.optional(runner.POSITIVE),
}

SCHEMA = {
    **runner.COMMON,
    "data": {
        "dataset": runner.one_of(*DATASET_NAMES),
        "examples": runner.POSITIVE_INT,
        "pool": runner.POSITIVE_INT,
        "seed": runner.optional(runner.NON_NEGATIVE_INT),
    },
    "model": {
        "hidden": runner.ListOf(runner.POSITIVE_INT, unique=None),
        "activation": runner.one_of(*ACTIVATIONS),
        "seed": runner.optional(runner.NON_NEGATIVE_INT),
    },
    "sharpness_fractions": runner.ListOf(FRACTION),
    "steps": runner.POSITIVE_INT,
    "save_every": runner.POSITIVE_INT,
    "window": runner.POSITIVE_INT,
    "sharpness_every": runner.POSITIVE_INT,
    "lanczos_iterations": runner.POSITIVE_INT,
    "flow": _FLOW_SCHEMA,
    "central_flow": {
        **_FLOW_SCHEMA,
        "num_eigs": runner.optional(runner.POSITIVE_INT),
        "lanczos_iterations": runner.optional(runner.POSITIVE_INT),
        "relaxation": runner.optional(runner.POSITIVE),
    },
}

STUDY = Study("edge-of-stability", plan, execute, summarize, SCHEMA)
