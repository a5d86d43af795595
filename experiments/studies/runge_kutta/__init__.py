"""Runge–Kutta optimizers vs SGD, per epoch and at equal gradient evaluations.

Reproduces the table of Singhal, *Gradient Flow Optimizers* (NYU poster):
test accuracy / loss of RK2 vs SGD for WideResNet and ResNet-18 on CIFAR-10
and for L2 logistic regression and the Lasso on MNIST. Every method of the
configuration (Euler = SGD, SGD with momentum, Heun, Ralston, RK4, Adam) is
trained at each learning rate of its sweep, and the results are reported in
two views:

* **per epoch** (the poster's view): every method trains ``epochs`` epochs, so
  an s-stage method spends s times the gradient evaluations of SGD;
* **per gradient evaluation** (the fair one): every method gets the budget
  ``G = epochs × steps per epoch`` gradient evaluations that SGD spends.

With a constant learning rate the equal-budget run of an s-stage method is
the first ``epochs/s`` epochs of its per-epoch run (same seed, same data
order), so it is read off that run's log; with a schedule it is a separate
run whose schedule spans its own ``G/s`` steps. For each method and view
the learning rate with the lowest final training objective is reported (the
objective the optimizer minimises; the test split is never used to choose).

Configuration (JSON)::

    {"experiments": [{"name": ..., "row": table row, "train": {TrainConfig
      fields, "dataset", "train_subset", "test_subset"}, "methods":
      {optimizer: [learning rates]}, "source": {"RK2": [acc %, loss],
      "SGD": [acc %, loss]}}]}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from experiments import report, runner
from experiments.runner import RunSpec, Study
from experiments.training_runs import (
    FIXED_STEP_METHODS,
    check_train_run,
    row_at_grad_evals,
    steps_per_epoch,
    train_run,
    train_schema,
)
from flowopt.training.optimizers import gradients_per_step

VIEWS = ("per_epoch", "equal_evals")


def _key(experiment: str, method: str, lr: float, kind: str) -> str:
    return f"{experiment}-{method}-lr{lr:g}-{kind}"


def budget(train: dict[str, Any]) -> int:
    """``G``: the gradient evaluations SGD spends in ``epochs`` epochs."""
    return train["epochs"] * steps_per_epoch(train)


def _reads_prefix(train: dict[str, Any], cost: int) -> bool:
    """Whether the equal-budget result is a logged epoch of the per-epoch run."""
    return train.get("schedule", "constant") == "constant" and train["epochs"] % cost == 0


def _separate(train: dict[str, Any], cost: int) -> bool:
    """Whether an s-stage method's equal-budget result needs its own run (not a prefix of the per-epoch run)."""
    return cost > 1 and not _reads_prefix(train, cost)


def _view_result(experiment: dict[str, Any], method: str, lr: float, view: str, results: dict) -> dict | None:
    """The run behind one method, rate and view, if it has finished."""
    separate = view == "equal_evals" and _separate(experiment["train"], gradients_per_step(method))
    return results.get(_key(experiment["name"], method, lr, "evals" if separate else "epochs"))


def plan(config: dict[str, Any]) -> list[RunSpec]:
    """Equal-budget runs of every method first (the fair comparison), then the per-epoch runs."""
    equal, per_epoch = [], []
    for experiment in config["experiments"]:
        train, name = experiment["train"], experiment["name"]
        for method, rates in experiment["methods"].items():
            cost = gradients_per_step(method)
            for lr in rates:
                settings = {**train, "optimizer": method, "learning_rate": lr, "experiment": name}
                epochs_run = RunSpec(_key(name, method, lr, "epochs"), settings)
                if not _separate(train, cost):
                    (equal if cost == 1 else per_epoch).append(epochs_run)
                    continue
                g = budget(train)
                evals = {k: v for k, v in settings.items() if k != "epochs"}
                evals.update(grad_evals=g, steps=g // cost)
                equal.append(RunSpec(_key(name, method, lr, "evals"), evals))
                per_epoch.append(epochs_run)
    return equal + per_epoch


def execute(spec: RunSpec, config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train one run (resuming from its checkpoints in ``run_dir``)."""
    settings = {k: v for k, v in spec.settings.items() if k != "experiment"}
    return train_run({"seed": config.get("seed", 0), **settings}, run_dir)


def _view_row(experiment: dict[str, Any], method: str, lr: float, view: str, results: dict) -> dict | None:
    """The metrics row of one method and rate in one view, or None if it is missing or diverged."""
    train, cost = experiment["train"], gradients_per_step(method)
    result = _view_result(experiment, method, lr, view, results)
    if result is None or not result["history"]:
        return None
    if view == "per_epoch":
        row = result["history"][-1]
        complete = row["epoch"] == train["epochs"]
    elif cost > 1 and not _separate(train, cost):
        row = row_at_grad_evals(result["history"], budget(train))
        complete = row is not None
    else:
        row = result["history"][-1]
        complete = row["grad_evals"] == budget(train) if cost == 1 else row["step"] == budget(train) // cost
    if row is None:
        return None
    return {**row, "diverged": result["diverged"] and not complete, "complete": complete}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def selections(config: dict[str, Any], results: dict) -> list[dict[str, Any]]:
    """Per experiment, view and method: the rate with the lowest final training objective."""
    table = []
    for experiment in config["experiments"]:
        for view in VIEWS:
            for method, rates in experiment["methods"].items():
                candidates, rates_run = [], 0
                for lr in rates:
                    row = _view_row(experiment, method, lr, view, results)
                    rates_run += row is not None
                    if row is not None and row["complete"] and not row["diverged"] and _finite(row["train_loss"]):
                        candidates.append((row["train_loss"], lr, row))
                entry = {
                    "experiment": experiment["name"],
                    "row": experiment.get("row", experiment["name"]),
                    "view": view,
                    "method": method,
                    "rates_tried": len(rates),
                    "rates_run": rates_run,
                    "rates_complete": len(candidates),
                }
                if candidates:
                    _, lr, row = min(candidates, key=lambda c: c[0])
                    entry.update(
                        learning_rate=lr,
                        epochs=row["epoch"],
                        steps=row["step"],
                        grad_evals=row["grad_evals"],
                        train_loss=row["train_loss"],
                        test_loss=row["test_loss"],
                        test_accuracy=row["test_accuracy"],
                    )
                table.append(entry)
    return table


def run_table(config: dict[str, Any], results: dict) -> list[dict[str, Any]]:
    """One row per run and view: the final metrics of every learning rate of the sweep."""
    rows = []
    for experiment in config["experiments"]:
        for method, rates in experiment["methods"].items():
            for lr in rates:
                for view in VIEWS:
                    row = _view_row(experiment, method, lr, view, results)
                    entry = {"experiment": experiment["name"], "method": method, "learning_rate": lr, "view": view}
                    if row is not None:
                        entry.update(
                            {
                                k: row.get(k)
                                for k in (
                                    "epoch",
                                    "step",
                                    "grad_evals",
                                    "train_loss",
                                    "test_loss",
                                    "test_accuracy",
                                    "complete",
                                    "diverged",
                                )
                            }
                        )
                    else:
                        entry.update(complete=False)
                    rows.append(entry)
    return rows


def _cell(entry: dict[str, Any]) -> str:
    if not entry["rates_run"]:
        return "not run"
    if "test_accuracy" not in entry:
        return "did not train"
    return f"{100 * entry['test_accuracy']:.2f}% / {entry['test_loss']:.4g} (lr {entry['learning_rate']:g})"


def markdown(config: dict[str, Any], table: list[dict[str, Any]], results: dict) -> str:
    """Markdown tables: both views per experiment, with the source's numbers."""
    lines = []
    for experiment in config["experiments"]:
        train = experiment["train"]
        labels = {r["dataset"] for k, r in results.items() if k.startswith(experiment["name"] + "-")}
        lines += [
            f"### {experiment.get('row', experiment['name'])}",
            "",
            f"Data: {', '.join(sorted(labels)) or train['dataset']}. Batch {train['batch_size']}, "
            f"weight decay {train.get('weight_decay', 0)}, schedule {train.get('schedule', 'constant')}, "
            f"{train['epochs']} epochs; equal budget G = {budget(train)} gradient evaluations.",
            "",
        ]
        cells = {
            method: [
                next(e for e in table if e["experiment"] == experiment["name"] and e["view"] == view and e["method"] == method)
                for view in VIEWS
            ]
            for method in experiment["methods"]
        }
        lines += report.markdown_table(
            [
                "method",
                f"per epoch ({train['epochs']} epochs): test acc / test loss",
                f"equal gradient evaluations (G = {budget(train)}): test acc / test loss",
            ],
            ([method, *map(_cell, entries)] for method, entries in cells.items()),
        )
        missing = not all(cell["rates_run"] for entries in cells.values() for cell in entries)
        if missing:
            lines += [
                "",
                "*Not run*: the data set is not available on this machine, or the study stopped before "
                "these runs; re-running the command runs them.",
            ]
        source = experiment.get("source")
        if source:
            lines += [
                "",
                "Source (Singhal, per epoch): " + "; ".join(f"{name} {acc}% / {loss}" for name, (acc, loss) in source.items()),
            ]
        lines.append("")
    return "\n".join(lines)


def _view_history(experiment: dict[str, Any], method: str, lr: float, view: str, results: dict) -> list[dict]:
    """The metrics rows behind one view: the per-epoch run, or the equal-budget run up to ``G``."""
    result = _view_result(experiment, method, lr, view, results)
    if result is None:
        return []
    if view == "per_epoch":
        return result["history"]
    return [row for row in result["history"] if row["grad_evals"] <= budget(experiment["train"])]


def plot(config: dict[str, Any], table: list[dict[str, Any]], results: dict, output_dir: Path) -> None:
    """Per experiment that ran: the equal-budget runs against gradient evaluations, the per-epoch runs against epochs."""
    plt = report.pyplot()
    for experiment in config["experiments"]:
        if not any(key.startswith(experiment["name"] + "-") for key in results):
            continue  # nothing ran: no figure
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for index, method in enumerate(experiment["methods"]):
            for view, panels in (("equal_evals", (0, 1)), ("per_epoch", (2,))):
                entry = next(
                    e for e in table if e["experiment"] == experiment["name"] and e["view"] == view and e["method"] == method
                )
                if "learning_rate" not in entry:
                    continue
                history = _view_history(experiment, method, entry["learning_rate"], view, results)
                style = dict(color=f"C{index}", marker="o", markersize=3, label=f"{method} (lr {entry['learning_rate']:g})")
                evals = [r["grad_evals"] for r in history]
                if 0 in panels:
                    axes[0].plot(evals, [r["train_loss"] for r in history], **style)
                    axes[1].plot(evals, [100 * r["test_accuracy"] for r in history], **style)
                else:
                    axes[2].plot([r["epoch"] for r in history], [100 * r["test_accuracy"] for r in history], **style)
        for ax in axes[:2]:
            ax.set_xlabel("gradient evaluations")
        axes[0].set(ylabel="training objective (epoch mean)", yscale="log")
        axes[1].set(ylabel="test accuracy (%)", title=f"equal gradient evaluations (G = {budget(experiment['train'])})")
        axes[2].set(xlabel="epoch", ylabel="test accuracy (%)", title=f"per epoch ({experiment['train']['epochs']} epochs)")
        axes[0].legend(fontsize=8)
        axes[2].legend(fontsize=8)
        fig.suptitle(experiment.get("row", experiment["name"]))
        report.save_figure(fig, output_dir / f"{experiment['name']}.png")


def summarize(config: dict[str, Any], results: dict, output_dir: Path) -> None:
    """Write ``runs.csv``, ``results.csv``, ``results.md``, ``results.json`` and one figure per experiment."""
    table = selections(config, results)
    report.write_csv(output_dir / "runs.csv", run_table(config, results))
    report.write_csv(output_dir / "results.csv", table)
    report.write_json(output_dir / "results.json", table)
    (output_dir / "results.md").write_text(markdown(config, table, results))
    plot(config, table, results, output_dir)


SCHEMA = {
    **runner.COMMON,
    "experiments": runner.ListOf(
        {
            "name": runner.STRING,
            "row": runner.optional(runner.STRING),
            "train": train_schema("epochs"),
            "methods": runner.MapOf(runner.ListOf(runner.POSITIVE), keys=runner.one_of(*FIXED_STEP_METHODS), min_length=1),
            "source": runner.optional(runner.MapOf(runner.ListOf(runner.NUMBER))),
        },
        unique="name",
    ),
}


def run_config(spec: RunSpec, config: dict[str, Any]) -> dict[str, Any]:
    """Everything a run's result depends on: its settings and the study's seed."""
    return {**spec.settings, "seed": config.get("seed", 0)}


def check_run(spec: RunSpec, config: dict[str, Any]) -> None:
    """Settings TrainConfig rejects, before any run starts."""
    settings = {k: v for k, v in run_config(spec, config).items() if k != "experiment"}
    check_train_run(settings)


STUDY = Study("runge-kutta", plan, execute, summarize, SCHEMA, run_config, check_run)
