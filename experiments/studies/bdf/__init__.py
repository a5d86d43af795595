"""Approximate BDF on ill-conditioned problems and small networks: loss per gradient evaluation, learning-rate range.

Huang et al., *Approximate backwards differentiation of gradient flow*
(2022), approximate the implicit BDF-τ step of ``θ' = -∇f(θ)`` by a few
inner gradient steps and argue that the larger stability region of the
implicit formula makes the method less sensitive to the learning rate. This
study measures that claim against gradient descent (Euler) and explicit
Runge–Kutta (Heun, RK4) at equal gradient evaluations:

* **synthetic** problems (float64): quadratics ``½ θᵀAθ`` of growing
  condition number and an ill-conditioned logistic regression, from the
  bdf-stability study (:mod:`experiments.studies.bdf_stability`). Each
  method runs at every rate ``h = r/L`` of a log grid until the relative
  suboptimality reaches ``target``, the run diverges, or the budget is
  spent; a rate *trains* when the target is reached. Loss curves are recorded at each method's best rate.
* **MNIST** (minibatch training with the library's loop): L2 logistic
  regression, an MLP and a CNN, each method at each rate for a fixed budget
  of gradient evaluations; a rate *trains* when the run does not diverge and
  the final full training loss is below ``loss_target``.

A gradient evaluation is the incoming minibatch gradient of a step or one
oracle call, so BDF with ``K`` inner steps costs ``K + 1`` per step (its
start-up steps cost more, and are counted).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import numpy as np

from experiments import report, runner
from experiments.runner import RunSpec, Study
from experiments.studies import bdf_stability
from experiments.studies.bdf_stability import loss_curve
from experiments.training_runs import check_train_run, train_run, train_schema
from flowopt.training import make_optimizer
from flowopt.training.optimizers import gradients_per_step

EXPLICIT = {"gd": "euler", "heun": "heun", "rk4": "rk4"}


def optimizer_name(method: str) -> str:
    """The optimizer behind a method label: ``gd``, ``heun``, ``rk4`` or ``bdf1``…``bdf6``."""
    if method in EXPLICIT:
        return EXPLICIT[method]
    if method.startswith("bdf") and method[3:].isdigit():
        return method
    raise ValueError(f"unknown method {method!r}; use gd, heun, rk4 or bdf1..bdf6.")


def optimizer_options(method: str, inner_steps: int) -> dict[str, Any]:
    """Options of a method's optimizer: the inner steps of the BDF methods."""
    return {"inner_steps": inner_steps} if method.startswith("bdf") else {}


def constructor(method: str, inner_steps: int):
    """``learning_rate -> optimizer`` for a method label."""
    name, options = optimizer_name(method), optimizer_options(method, inner_steps)
    return lambda lr: make_optimizer(name, lr, **options)


def _key(problem: str, method: str, lr: float) -> str:
    return f"{problem}-{method}-lr{lr:g}"


def rate_grid(spec: dict[str, Any]) -> np.ndarray:
    """Log-spaced ``h·L`` from ``min_rate`` to ``max_rate``, ``rates_per_decade`` per decade."""
    return bdf_stability.rate_grid(spec["min_rate"], spec["max_rate"], spec["rates_per_decade"])


def _execute_synthetic(spec: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    synthetic, inner = config["synthetic"], config["inner_steps"]
    rates = rate_grid(synthetic)
    rows, curves = [], {}
    with jax.enable_x64(True):
        problem = bdf_stability.problem(spec["problem"], dim=synthetic.get("dim", 50))
        for method in config["methods"]:
            make = constructor(method, inner)
            run = bdf_stability.make_run(problem, make, synthetic["target"], synthetic["budget"])
            method_rows = []
            for rate in rates:
                reached, evals, gap = (np.asarray(v).item() for v in jax.device_get(run(rate / problem.lipschitz)))
                method_rows.append(
                    {
                        "method": method,
                        "lr_times_L": float(rate),
                        "reached": bool(reached),
                        "gradient_evaluations": int(evals),
                        "final_relative_gap": _json_float(gap),
                    }
                )
            rows += method_rows
            best = _best_rate(method_rows)
            cost = gradients_per_step(optimizer_name(method), **optimizer_options(method, inner))
            curve = loss_curve(problem, make, cost, synthetic["curve_budget"])
            evals, gaps = jax.device_get(curve(best / problem.lipschitz))
            keep = np.asarray(evals) <= synthetic["curve_budget"]
            curves[method] = {
                "lr_times_L": best,
                "grad_evals": np.asarray(evals)[keep].tolist(),
                "relative_gap": [_json_float(g) for g in np.asarray(gaps)[keep]],
            }
    return {"kind": "synthetic", "problem": problem.name, "lipschitz": problem.lipschitz, "rows": rows, "curves": curves}


def _json_float(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _best_rate(rows: list[dict[str, Any]]) -> float:
    """Fewest evaluations to the target; if none reached it, the smallest final gap."""
    reached = [r for r in rows if r["reached"]]
    if reached:
        return min(reached, key=lambda r: (r["gradient_evaluations"], r["lr_times_L"]))["lr_times_L"]
    finite = [r for r in rows if r["final_relative_gap"] is not None]
    return min(finite or rows, key=lambda r: r["final_relative_gap"] or math.inf)["lr_times_L"]


def problem_methods(config: dict[str, Any], problem: dict[str, Any]) -> list[str]:
    """The methods run on an MNIST problem: its own ``methods`` list, else the study's."""
    return problem.get("methods", config["methods"])


def plan(config: dict[str, Any]) -> list[RunSpec]:
    """One run per synthetic problem (all methods and rates), one per MNIST problem, method and rate."""
    specs = [
        RunSpec(f"synthetic-{name}", {"kind": "synthetic", "problem": name})
        for name in config.get("synthetic", {}).get("problems", [])
    ]
    for problem in config.get("mnist", []):
        for method in problem_methods(config, problem):
            for lr in problem["rates"]:
                settings = {
                    **problem["train"],
                    "optimizer": optimizer_name(method),
                    "learning_rate": lr,
                    "optimizer_options": optimizer_options(method, config["inner_steps"]),
                    "kind": "mnist",
                    "problem": problem["name"],
                    "method": method,
                }
                specs.append(RunSpec(_key(problem["name"], method, lr), settings))
    return specs


def execute(spec: RunSpec, config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A synthetic sweep, or one training run (resumable from its checkpoints)."""
    if spec.settings["kind"] == "synthetic":
        return _execute_synthetic(spec.settings, config)
    settings = {k: v for k, v in spec.settings.items() if k not in ("kind", "problem", "method")}
    result = train_run({"seed": config.get("seed", 0), **settings}, run_dir)
    return {"kind": "mnist", **result}


def _final_loss(result: dict[str, Any]) -> float | None:
    final = result["final"]
    if result["diverged"] or final is None:
        return None
    value = final.get("full_train_loss", final["train_loss"])
    return value if value is not None and math.isfinite(value) else None


def mnist_rows(config: dict[str, Any], results: dict) -> list[dict[str, Any]]:
    """One row per MNIST run: final full training loss, test accuracy, whether it trained."""
    rows = []
    for problem in config.get("mnist", []):
        for method in problem_methods(config, problem):
            for lr in problem["rates"]:
                result = results.get(_key(problem["name"], method, lr))
                if result is None:
                    continue
                rows.append(
                    {
                        "problem": problem["name"],
                        "method": method,
                        "learning_rate": lr,
                        **training_row(result, problem["loss_target"]),
                    }
                )
    return rows


def training_row(result: dict[str, Any], loss_target: float) -> dict[str, Any]:
    """A training run's evaluations, steps, final full training loss, test accuracy, whether it diverged or trains
    (did not diverge and ended at a training loss ≤ ``loss_target``)."""
    loss, final = _final_loss(result), result["final"] or {}
    return {
        "grad_evals": final.get("grad_evals"),
        "steps": final.get("step"),
        "final_train_loss": loss,
        "test_accuracy": None if loss is None else final["test_accuracy"],
        "diverged": result["diverged"],
        "trains": loss is not None and loss <= loss_target,
    }


def rate_range(rates: list[float], trains: list[bool]) -> dict[str, Any]:
    """The rates that train: how many, the smallest and largest, the decades between, whether none is missing between."""
    good = [r for r, t in zip(rates, trains) if t]
    if not good:
        return {"rates_that_train": 0}
    return {
        "rates_that_train": len(good),
        "min_rate": min(good),
        "max_rate": max(good),
        "decades": math.log10(max(good) / min(good)),
        "contiguous": all(t for r, t in zip(rates, trains) if min(good) <= r <= max(good)),
    }


def sensitivity(config: dict[str, Any], results: dict, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per problem and method: the range of rates that train and the best result."""
    table = []
    for _, result in sorted(results.items()):
        if result["kind"] != "synthetic":
            continue
        for method in config["methods"]:
            rows = [r for r in result["rows"] if r["method"] == method]
            entry = {
                "problem": result["problem"],
                "method": method,
                "rates": "h·L",
                "rates_tried": len(rows),
                **rate_range([r["lr_times_L"] for r in rows], [r["reached"] for r in rows]),
            }
            reached = [r for r in rows if r["reached"]]
            if reached:
                best = min(reached, key=lambda r: r["gradient_evaluations"])
                entry.update(
                    best_rate=best["lr_times_L"],
                    best_grad_evals=best["gradient_evaluations"],
                    median_grad_evals=float(np.median([r["gradient_evaluations"] for r in reached])),
                )
            table.append(entry)
    for problem in config.get("mnist", []):
        for method in problem_methods(config, problem):
            rows = [r for r in runs if r["problem"] == problem["name"] and r["method"] == method]
            entry = {
                "problem": problem["name"],
                "method": method,
                "rates": "h",
                "rates_tried": len(rows),
                **rate_range([r["learning_rate"] for r in rows], [r["trains"] for r in rows]),
            }
            finished = [r for r in rows if r["final_train_loss"] is not None]
            if finished:
                best = min(finished, key=lambda r: r["final_train_loss"])
                entry.update(
                    best_rate=best["learning_rate"],
                    best_final_train_loss=best["final_train_loss"],
                    best_test_accuracy=best["test_accuracy"],
                    best_grad_evals=best["grad_evals"],
                )
            table.append(entry)
    return table


def _cell(entry: dict[str, Any] | None) -> str:
    """``[min, max] (decades)`` of the rates that train, then the best result."""
    if entry is None:
        return "not run"
    if not entry["rates_that_train"]:
        return "none trains"
    cell = f"[{entry['min_rate']:.3g}, {entry['max_rate']:.3g}] ({entry['decades']:.1f})"
    if not entry["contiguous"]:
        cell += " with gaps"
    if entry["rates"] == "h·L":
        cell += f"; {entry['best_grad_evals']} evals at {entry['best_rate']:.3g}"
    elif "best_final_train_loss" in entry:
        cell += f"; loss {entry['best_final_train_loss']:.3f}, acc {100 * entry['best_test_accuracy']:.1f}%"
    return cell


def markdown(config: dict[str, Any], table: list[dict[str, Any]]) -> str:
    """One markdown table: problems as rows, methods as columns, ``[min, max] rate (best)`` per cell."""
    methods = config["methods"]
    synthetic = config.get("synthetic", {})
    lines = [
        f"BDF methods use K = {config['inner_steps']} inner steps ({config['inner_steps'] + 1} gradient "
        "evaluations per step). Cell: range of learning rates that train [min, max] (decades); "
        "then the best result.",
        "",
    ]
    lines += report.markdown_table(
        ["problem", *methods],
        (
            [
                problem,
                *(
                    _cell(next((x for x in table if x["problem"] == problem and x["method"] == method), None))
                    for method in methods
                ),
            ]
            for problem in dict.fromkeys(e["problem"] for e in table)
        ),
    )
    if synthetic:
        lines += [
            "",
            f"- Synthetic rows: rate h·L on {len(rate_grid(synthetic))} log-spaced values in "
            f"[{synthetic['min_rate']:g}, {synthetic['max_rate']:g}]; trains = relative suboptimality "
            f"≤ {synthetic['target']:g} within {synthetic['budget']} gradient evaluations; best = "
            "fewest evaluations.",
        ]
    for problem in config.get("mnist", []):
        train = problem["train"]
        lines.append(
            f"- {problem['name']}: {train['model']}, rates {problem['rates']}, {train['grad_evals']} gradient "
            f"evaluations, batch {train['batch_size']}; trains = final full training loss ≤ "
            f"{problem['loss_target']}; best = lowest final training loss."
        )
    return "\n".join(lines) + "\n"


def plot(config: dict[str, Any], results: dict, runs: list[dict[str, Any]], output_dir: Path) -> None:
    """``synthetic.png`` (sensitivity, loss curves) and ``mnist.png`` (loss vs rate, loss vs evaluations)."""
    plt = report.pyplot()
    colors = {method: f"C{i}" for i, method in enumerate(config["methods"])}
    synthetic = sorted((r for r in results.values() if r["kind"] == "synthetic"), key=lambda r: r["problem"])
    if synthetic:
        fig, axes = plt.subplots(2, len(synthetic), figsize=(4.5 * len(synthetic), 8), squeeze=False)
        for col, result in enumerate(synthetic):
            top, bottom = axes[0, col], axes[1, col]
            for method in config["methods"]:
                rows = [r for r in result["rows"] if r["method"] == method]
                evals = [r["gradient_evaluations"] if r["reached"] else np.nan for r in rows]
                top.plot([r["lr_times_L"] for r in rows], evals, marker="o", ms=3, color=colors[method], label=method)
                curve = result["curves"][method]
                gaps = [np.nan if g is None else g for g in curve["relative_gap"]]
                bottom.plot(curve["grad_evals"], gaps, color=colors[method], label=f"{method} (h·L={curve['lr_times_L']:.3g})")
            top.set(
                xscale="log",
                yscale="log",
                title=result["problem"],
                xlabel="learning rate × L",
                ylabel="gradient evaluations to target",
            )
            bottom.set(yscale="log", xlabel="gradient evaluations", ylabel="relative suboptimality", ylim=(1e-12, 10))
            bottom.legend(fontsize=7)
        axes[0, 0].legend(fontsize=8)
        report.save_figure(fig, output_dir / "synthetic.png")
    problems = config.get("mnist", [])
    if problems:
        fig, axes = plt.subplots(2, len(problems), figsize=(4.5 * len(problems), 8), squeeze=False)
        for col, problem in enumerate(problems):
            top, bottom = axes[0, col], axes[1, col]
            for method in problem_methods(config, problem):
                rows = [r for r in runs if r["problem"] == problem["name"] and r["method"] == method]
                losses = [np.nan if r["final_train_loss"] is None else r["final_train_loss"] for r in rows]
                top.plot([r["learning_rate"] for r in rows], losses, marker="o", ms=3, color=colors[method], label=method)
                finished = [r for r in rows if r["final_train_loss"] is not None]
                if finished:
                    best = min(finished, key=lambda r: r["final_train_loss"])
                    history = results[_key(problem["name"], method, best["learning_rate"])]["history"]
                    bottom.plot(
                        [h["grad_evals"] for h in history],
                        [h.get("full_train_loss", h["train_loss"]) for h in history],
                        marker="o",
                        ms=3,
                        color=colors[method],
                        label=f"{method} (lr {best['learning_rate']:g})",
                    )
            top.axhline(problem["loss_target"], color="grey", lw=0.8, ls="--")
            top.set(
                xscale="log",
                yscale="log",
                title=problem["name"],
                xlabel="learning rate",
                ylabel="final training loss (missing: diverged)",
            )
            bottom.set(xlabel="gradient evaluations", ylabel="training loss")
            if any(np.any(np.asarray(line.get_ydata(), float) > 0) for line in bottom.lines):  # a smoke run may have none
                bottom.set(yscale="log")
            bottom.legend(fontsize=7)
        axes[0, 0].legend(fontsize=8)
        report.save_figure(fig, output_dir / "mnist.png")


def summarize(config: dict[str, Any], results: dict, output_dir: Path) -> None:
    """Write ``synthetic_runs.csv``, ``mnist_runs.csv``, ``sensitivity.csv/.json/.md`` and the figures."""
    synthetic_rows = [{"problem": r["problem"], **row} for r in results.values() if r["kind"] == "synthetic" for row in r["rows"]]
    runs = mnist_rows(config, results)
    table = sensitivity(config, results, runs)
    if synthetic_rows:
        report.write_csv(output_dir / "synthetic_runs.csv", synthetic_rows)
    if runs:
        report.write_csv(output_dir / "mnist_runs.csv", runs)
    report.write_csv(output_dir / "sensitivity.csv", table)
    report.write_json(output_dir / "sensitivity.json", table)
    (output_dir / "sensitivity.md").write_text(markdown(config, table))
    plot(config, results, runs, output_dir)


def _is_method(value: Any) -> bool:
    try:
        optimizer_name(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return not value.startswith("bdf") or 1 <= int(value[3:]) <= 6


METHOD = runner.satisfies("one of gd, heun, rk4, bdf1 ... bdf6", _is_method)
SCHEMA = {
    **runner.COMMON,
    "inner_steps": runner.POSITIVE_INT,
    "methods": runner.ListOf(METHOD),
    "synthetic": runner.optional(
        {
            "problems": runner.ListOf(bdf_stability.PROBLEM, min_length=0),
            "dim": runner.optional(runner.POSITIVE_INT),
            "min_rate": runner.POSITIVE,
            "max_rate": runner.POSITIVE,
            "rates_per_decade": runner.POSITIVE_INT,
            "target": runner.POSITIVE,
            "budget": runner.POSITIVE_INT,
            "curve_budget": runner.POSITIVE_INT,
        }
    ),
    "mnist": runner.optional(
        runner.ListOf(
            {
                "name": runner.STRING,
                "methods": runner.optional(runner.ListOf(METHOD)),
                "rates": runner.ListOf(runner.POSITIVE),
                "loss_target": runner.POSITIVE,
                "train": train_schema("grad_evals"),
            },
            min_length=0,
            unique="name",
        )
    ),
}


def run_config(spec: RunSpec, config: dict[str, Any]) -> dict[str, Any]:
    """Everything a run's result depends on: a synthetic sweep reads the study's methods, inner steps and
    synthetic block; a training run its settings and the seed."""
    if spec.settings["kind"] == "synthetic":
        return {
            **spec.settings,
            "synthetic": config["synthetic"],
            "methods": config["methods"],
            "inner_steps": config["inner_steps"],
        }
    return {**spec.settings, "seed": config.get("seed", 0)}


def check_run(spec: RunSpec, config: dict[str, Any]) -> None:
    """Settings TrainConfig rejects, and a synthetic rate range that is empty, before any run starts."""
    if spec.settings["kind"] == "synthetic":
        synthetic = config["synthetic"]
        if synthetic["min_rate"] > synthetic["max_rate"]:
            raise ValueError(
                f"synthetic.min_rate ({synthetic['min_rate']}) exceeds synthetic.max_rate ({synthetic['max_rate']})."
            )
        return
    settings = {k: v for k, v in run_config(spec, config).items() if k not in ("kind", "problem", "method")}
    check_train_run(settings)


STUDY = Study("bdf", plan, execute, summarize, SCHEMA, run_config, check_run)
