"""Adam as an ODE: the seed's Figures 2 and 3, and Adam's flow integrated by Euler, Heun and RK4 on MNIST.

Belotto da Silva & Gazeau (JMLR 2020) write Adam as the forward-Euler
discretisation of ``θ' = -m/sqrt(v+ε)``, ``m' = g₁ᴬ(t)(∇f - m)``,
``v' = g₂ᴬ(t)(∇f² - v)`` with step ``s = λ`` (:func:`flowopt.adam_flow`).
Like the figures, the training runs keep the seed's ``ε`` inside the root
(``eps = 0, eps_root = 1e-8`` in the configurations; flowopt's field is
``θ' = -m/(sqrt(v + ε_root) + ε)``), so their Euler scheme is
``optax.adam(eps=0, eps_root=1e-8)``. With optax's default, ``ε`` only outside
the root, the flow is stiff where ``v`` is small and RK4 diverged on MNIST
(see :func:`flowopt.adam_flow`).
This study

* reproduces the seed's Figures 2 and 3 on ``(x + y)⁴ + (x/2 - y/2)⁴`` with
  :mod:`experiments.studies.adam_ode.figures` (gradient descent beats Adam with large
  β's; at fixed β's the learning rate changes the ODE);
* trains a network on MNIST with the *same* flow integrated three ways at the
  same step ``s``: the seed's Euler scheme (which is Adam), Heun and RK4
  (``adam_flow(s, integrator=HEUN | RK4)``; every stage evaluates the
  minibatch gradient at an intermediate point of the same minibatch).

The training curves are reported per step (every method takes the same
steps, so an s-stage method spends s gradient evaluations a step) and per
gradient evaluation (every method gets the budget ``G`` that Euler spends).
With a constant learning rate the equal-budget point of an s-stage method is
epoch ``epochs/s`` of its own run, read off its log.

Configuration (JSON)::

    {"seed": 0, "figures": true, "b1": 0.9, "b2": 0.999, "eps": 0.0, "eps_root": 1e-8,
     "integrators": ["euler", "heun", "rk4"], "learning_rates": [...],
     "train": {TrainConfig fields, "dataset", "train_subset", "test_subset"}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

import flowopt
from experiments import report, runner, training_runs
from experiments.runner import RunSpec, Study
from experiments.studies.adam_ode import figures
from flowopt import tableaus
from flowopt.training.optimizers import gradients_per_step

INTEGRATORS = {"euler": None, "heun": tableaus.HEUN, "rk4": tableaus.RK4}
FIGURES_KEY = "figures"
VIEWS = ("per_step", "equal_evals")


def _key(integrator: str, lr: float) -> str:
    return f"{integrator}-lr{lr:g}"


def cost(integrator: str) -> int:
    """Gradient evaluations of one step of Adam's flow integrated by ``integrator``."""
    return gradients_per_step("adam_flow", integrator=INTEGRATORS[integrator])


def optimizer(integrator: str, learning_rate: float, config: dict[str, Any]):
    """``adam_flow`` at step ``learning_rate`` integrated by ``integrator`` (Euler: the seed's scheme, i.e. Adam)."""
    if integrator not in INTEGRATORS:
        raise ValueError(f"unknown integrator {integrator!r}; use one of {sorted(INTEGRATORS)}.")
    return flowopt.adam_flow(
        learning_rate,
        config.get("b1", 0.9),
        config.get("b2", 0.999),
        *_epsilons(config),
        integrator=INTEGRATORS[integrator],
    )


def _epsilons(config: dict[str, Any]) -> tuple[float, float]:
    """``(eps, eps_root)`` of the training runs: the seed's ``ε = 1e-8`` inside the root unless configured."""
    return config.get("eps", 0.0), config.get("eps_root", 1e-8)


def budget(config: dict[str, Any]) -> int:
    """``G``: the gradient evaluations the Euler scheme (Adam) spends in ``epochs`` epochs."""
    return config["train"]["epochs"] * training_runs.steps_per_epoch(config["train"])


def plan(config: dict[str, Any]) -> list[RunSpec]:
    """The figures (if asked for), then one training run per integrator and learning rate."""
    specs = [RunSpec(FIGURES_KEY, {"kind": "figures"})] if config.get("figures", True) else []
    epochs = config["train"]["epochs"]
    for integrator in config["integrators"]:
        if epochs % cost(integrator):
            raise ValueError(
                f"epochs ({epochs}) must be a multiple of {cost(integrator)} so that {integrator}'s "
                "equal-budget point is a logged epoch."
            )
        for lr in config["learning_rates"]:
            specs.append(RunSpec(_key(integrator, lr), {"kind": "train", "integrator": integrator, "learning_rate": lr}))
    return specs


def _figures(run_dir: Path) -> dict[str, Any]:
    with jax.enable_x64(True):
        fig2 = figures.figure2()
        fig3_paths, fig3_errors = figures.figure3()
    summary = figures.write_csvs(run_dir, fig2, fig3_paths, fig3_errors)
    figures.plot(run_dir, fig2, fig3_paths, fig3_errors)
    return {"kind": "figures", "summary": {name: float(value) for name, value in summary}}


def _train_settings(spec: RunSpec, config: dict[str, Any]) -> dict[str, Any]:
    integrator, lr = spec.settings["integrator"], spec.settings["learning_rate"]
    return {
        **config["train"],
        "optimizer": "adam_flow",
        "learning_rate": lr,
        "seed": config.get("seed", 0),
        "optimizer_options": {
            "integrator": integrator,
            "b1": config.get("b1", 0.9),
            "b2": config.get("b2", 0.999),
            **dict(zip(("eps", "eps_root"), _epsilons(config))),
        },
    }


def execute(spec: RunSpec, config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Draw the figures, or train one integrator at one rate (resuming from ``run_dir``'s checkpoints)."""
    if spec.settings["kind"] == "figures":
        return _figures(run_dir)
    integrator, lr = spec.settings["integrator"], spec.settings["learning_rate"]
    tx = optimizer(integrator, lr, config)
    return {"kind": "train", **training_runs.train_run(_train_settings(spec, config), run_dir, tx=tx)}


def run_config(spec: RunSpec, config: dict[str, Any]) -> dict[str, Any]:
    """Everything a run's result depends on: the figures depend on nothing, a training run on its full settings."""
    if spec.settings["kind"] == "figures":
        return dict(spec.settings)
    return {**spec.settings, **_train_settings(spec, config)}


def check_run(spec: RunSpec, config: dict[str, Any]) -> None:
    """Settings TrainConfig or adam_flow rejects, before any run starts."""
    if spec.settings["kind"] == "train":
        training_runs.check_train_run(_train_settings(spec, config), build_optimizer=False)
        optimizer(spec.settings["integrator"], spec.settings["learning_rate"], config)


_BETA = runner.satisfies("a number in [0, 1)", lambda v: runner.NUMBER.test(v) and 0 <= v < 1)
SCHEMA = {
    **runner.COMMON,
    "figures": runner.optional(runner.BOOL),
    "b1": runner.optional(_BETA),
    "b2": runner.optional(_BETA),
    "eps": runner.optional(runner.NON_NEGATIVE),
    "eps_root": runner.optional(runner.NON_NEGATIVE),
    "integrators": runner.ListOf(runner.one_of(*INTEGRATORS)),
    "learning_rates": runner.ListOf(runner.POSITIVE),
    "train": training_runs.train_schema("epochs"),
}


# --------------------------------------------------------------------------- summaries


def _loss(row: dict[str, Any]) -> float:
    """The full training loss at the end of an epoch (the running minibatch mean without ``eval_train``)."""
    return row.get("full_train_loss", row["train_loss"])


def view_row(config: dict[str, Any], result: dict[str, Any], view: str) -> dict[str, Any] | None:
    """The logged row of a run at the end of a view: last epoch, or the Euler budget ``G``."""
    history = result["history"]
    if view == "per_step":
        row = history[-1] if history else None
        return row if row is not None and row["epoch"] == config["train"]["epochs"] else None
    return training_runs.row_at_grad_evals(history, budget(config))


def table(config: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per integrator, rate and view."""
    rows = []
    for integrator in config["integrators"]:
        for lr in config["learning_rates"]:
            result = results.get(_key(integrator, lr))
            for view in VIEWS:
                entry: dict[str, Any] = {"integrator": integrator, "learning_rate": lr, "view": view}
                row = None if result is None else view_row(config, result, view)
                if row is None:
                    entry["complete"] = False
                else:
                    entry.update(
                        complete=True,
                        epoch=row["epoch"],
                        step=row["step"],
                        grad_evals=row["grad_evals"],
                        train_loss=_loss(row),
                        test_loss=row["test_loss"],
                        test_accuracy=row["test_accuracy"],
                    )
                if result is not None:
                    entry["diverged"] = result["diverged"]
                rows.append(entry)
    return rows


def markdown(config: dict[str, Any], rows: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> str:
    train_settings = config["train"]
    labels = sorted({r["dataset"] for r in results.values() if r.get("kind") == "train"})
    lines = []
    drawn = results.get(FIGURES_KEY)
    if drawn is not None:
        lines += ["### Figures 2 and 3 (quartic, float64)", ""]
        lines += report.markdown_table(["quantity", "value"], ((n, report.fmt(v)) for n, v in drawn["summary"].items()))
        lines.append("")
    lines += [
        f"### Adam's flow on {', '.join(labels) or train_settings['dataset']}: Euler (= Adam) vs Heun vs RK4",
        "",
        f"Model {train_settings['model']}, batch {train_settings['batch_size']}, constant step s, "
        f"β₁ = {config.get('b1', 0.9)}, β₂ = {config.get('b2', 0.999)}, ε = {_epsilons(config)[0]} outside and "
        f"ε_root = {_epsilons(config)[1]} inside the square root. "
        f"Per step: {train_settings['epochs']} epochs each. Per gradient evaluation: G = {budget(config)} each.",
        "",
    ]
    table = []
    for lr in config["learning_rates"]:
        for integrator in config["integrators"]:
            cells = {}
            for view in VIEWS:
                entry = next(r for r in rows if r["integrator"] == integrator and r["learning_rate"] == lr and r["view"] == view)
                cells[view] = (
                    (f"{report.fmt(entry['train_loss'])} / {100 * entry['test_accuracy']:.2f}%", entry)
                    if entry["complete"]
                    else ("diverged" if entry.get("diverged") else "missing", entry)
                )
            table.append(
                [
                    f"{lr:g}",
                    integrator,
                    cells["per_step"][0],
                    cells["per_step"][1].get("grad_evals", "–"),
                    cells["equal_evals"][0],
                    cells["equal_evals"][1].get("step", "–"),
                ]
            )
    lines += report.markdown_table(
        ["s", "integrator", "per step: train loss / test acc", "grad evals", "equal evals: train loss / test acc", "steps"], table
    )
    lines.append("")
    return "\n".join(lines)


def plot(config: dict[str, Any], results: dict[str, dict[str, Any]], output_dir: Path) -> None:
    """``training.png``: train loss and test accuracy per step and per gradient evaluation, one column per rate."""
    plt = report.pyplot()
    rates = config["learning_rates"]
    fig, axes = plt.subplots(3, len(rates), figsize=(4.8 * len(rates), 10), squeeze=False)
    per_epoch = training_runs.steps_per_epoch(config["train"])
    for column, lr in enumerate(rates):
        for color, integrator in enumerate(config["integrators"]):
            result = results.get(_key(integrator, lr))
            if result is None or not result["history"]:
                continue
            history = result["history"]
            steps = [row["step"] for row in history]
            evals = [row["grad_evals"] for row in history]
            label = f"{integrator} ({cost(integrator)} grads/step)"
            style = {"color": f"C{color}", "marker": "o", "ms": 3, "label": label}
            axes[0, column].semilogy(steps, [_loss(r) for r in history], **style)
            axes[1, column].semilogy(evals, [_loss(r) for r in history], **style)
            axes[2, column].plot(evals, [100 * r["test_accuracy"] for r in history], **style)
        axes[0, column].set_title(f"Adam's flow, s = {lr:g}")
        axes[0, column].set_xlabel(f"step ({per_epoch} per epoch)")
        axes[0, column].set_ylabel("training loss")
        axes[1, column].axvline(budget(config), color="0.6", ls=":", label="G (Euler's budget)")
        axes[1, column].set_xlabel("gradient evaluations")
        axes[1, column].set_ylabel("training loss")
        axes[2, column].axvline(budget(config), color="0.6", ls=":")
        axes[2, column].set_xlabel("gradient evaluations")
        axes[2, column].set_ylabel("test accuracy (%)")
        for ax in axes[:, column]:
            ax.legend(fontsize=8)
    report.save_figure(fig, output_dir / "training.png", dpi=80)


def summarize(config: dict[str, Any], results: dict[str, dict[str, Any]], output_dir: Path) -> None:
    """``results.csv``, ``curves.csv``, ``results.md``, ``summary.json``, ``training.png``, and the figures' files."""
    rows = table(config, results)
    report.write_csv(output_dir / "results.csv", rows)
    curves = [
        {
            "integrator": r["settings"]["integrator"],
            "learning_rate": r["settings"]["learning_rate"],
            **{k: row[k] for k in ("epoch", "step", "grad_evals", "train_loss", "test_loss", "test_accuracy")},
            "full_train_loss": row.get("full_train_loss"),
        }
        for key, r in sorted(results.items())
        if r.get("kind") == "train"
        for row in r["history"]
    ]
    report.write_csv(output_dir / "curves.csv", curves)
    (output_dir / "results.md").write_text(markdown(config, rows, results))
    drawn = results.get(FIGURES_KEY)
    summary = {"training": rows, "figures": None if drawn is None else drawn["summary"], "budget": budget(config)}
    report.write_json(output_dir / "summary.json", summary)
    if drawn is not None:
        run_dir = output_dir / "runs" / FIGURES_KEY
        for name in figures.FILES:
            source = run_dir / name
            if source.is_file():
                target = output_dir / (name if name != "summary.csv" else "figures_summary.csv")
                target.write_bytes(source.read_bytes())
    plot(config, results, output_dir)


STUDY = Study("adam-ode", plan, execute, summarize, SCHEMA, run_config, check_run)
