"""Stabilised Runge–Kutta (Chebyshev) against tuned first-order baselines, in gradient evaluations.

Eftekhari, Vandereycken, Vilmart & Zygalakis (*Explicit stabilised gradient
descent for faster strongly convex optimisation*, BIT 2021) integrate the
gradient flow with ``s``-stage Runge–Kutta–Chebyshev steps, whose real
stability interval ``ℓ_s ≈ 2s²`` lets the step grow with ``s²`` at a cost of
``s`` gradients. This study measures what that buys, every method at its best
setting from a grid and every cost in gradient evaluations (an incoming
gradient or an oracle call; a CG iteration is one product ``Ap``, one
gradient):

1. **Quadratics** ``½ Σ λ_i x_i²`` (float64), ``λ`` log-uniform on ``[1, κ]``,
   κ = 1e2, 1e4, 1e6: evaluations until ``f - f* ≤ target·(f_0 - f*)`` for
   GD (grid of ``h·L`` plus ``2/(μ+L)``), Polyak's heavy ball and Nesterov
   at their optimal constants, conjugate gradients (the Krylov lower bound),
   RK4, BDF-2 and RKC (fixed ``s``, ``s`` from ``stages_for``, and a sweep of
   ``s`` and ``ε``; :mod:`.methods`). Slopes of log evaluations against log κ.
2. **Full-batch L2 logistic regression on MNIST** (:func:`.problems.logistic_regression`):
   evaluations to a relative gap for GD, Nesterov (and what else the config
   lists), each at its best grid setting.
3. **A minibatch MLP on MNIST** (:mod:`.minibatch`): each method at each
   learning rate of a log grid for the same gradient-evaluation budget: the
   range of rates that train and the test accuracy at the best one.

Writes ``fullbatch_runs.csv``, ``quadratics.csv``, ``logistic.csv``,
``mlp_runs.csv``, ``mlp.csv``, ``summary.json`` (the issue's target numbers),
``results.md`` and four figures to ``results/stabilized/<config>/``::

    flowopt-experiment stabilized --config cpu
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments import report, runner
from experiments.runner import RunSpec, Study
from experiments.studies.stabilized import figures, fullbatch, minibatch, tables
from experiments.studies.stabilized.methods import RATE_METHODS
from experiments.training_runs import check_train_run, train_run, train_schema


def _quadratic_key(kappa: float) -> str:
    return f"quadratic-kappa{kappa:g}"


def plan(config: dict[str, Any]) -> list[RunSpec]:
    """One run per quadratic (every method), one for the logistic regression, one per MLP method and rate."""
    specs = [
        RunSpec(_quadratic_key(k), {"kind": "quadratic", "kappa": k}) for k in config.get("quadratics", {}).get("kappas", [])
    ]
    if "logistic" in config:
        specs.append(RunSpec("logistic", {"kind": "logistic"}))
    if "mlp" in config:
        specs += minibatch.plan(config["mlp"])
    return specs


def execute(spec: RunSpec, config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A full-batch sweep, or one MLP training run (resumable from its checkpoints)."""
    kind = spec.settings["kind"]
    if kind == "quadratic":
        return fullbatch.execute_quadratic(spec.settings["kappa"], config)
    if kind == "logistic":
        return fullbatch.execute_logistic(config)
    return {"kind": "mlp", **train_run(_train_settings(spec, config), run_dir)}


def _train_settings(spec: RunSpec, config: dict[str, Any]) -> dict[str, Any]:
    return {"seed": config.get("seed", 0), **{k: v for k, v in spec.settings.items() if k not in ("kind", "method")}}


def summarize(config: dict[str, Any], results: dict[str, dict[str, Any]], output_dir: Path) -> None:
    """The CSV tables, ``summary.json``, ``results.md`` and the figures."""
    quadratic_results = [results[s.key] for s in plan(config) if s.settings["kind"] == "quadratic" and s.key in results]
    runs = {r["kappa"]: report.unpack(r["rows"]) for r in quadratic_results}
    quadratics = {r["kappa"]: (runs[r["kappa"]], tables.best_table(r, runs[r["kappa"]])) for r in quadratic_results}
    best = [table for _, table in quadratics.values()]
    logistic = results.get("logistic")
    logistic_rows = report.unpack(logistic["rows"]) if logistic else []
    logistic_table = tables.best_table(logistic, logistic_rows) if logistic else []
    mlp_runs = minibatch.rows(config["mlp"], results) if "mlp" in config else []
    mlp_table = minibatch.summary(config["mlp"], mlp_runs) if "mlp" in config else []

    all_rows = [{"problem": r["problem"], **row} for r in quadratic_results for row in runs[r["kappa"]]]
    all_rows += [{"problem": logistic["problem"], **row} for row in logistic_rows] if logistic else []
    report.write_csv(output_dir / "fullbatch_runs.csv", all_rows)
    report.write_csv(output_dir / "quadratics.csv", [e for table in best for e in table])
    report.write_csv(output_dir / "logistic.csv", logistic_table)
    report.write_csv(output_dir / "mlp_runs.csv", mlp_runs)
    report.write_csv(output_dir / "mlp.csv", mlp_table)
    numbers = tables.target_numbers(quadratics, tables.slopes(best), logistic_table, mlp_table)
    facts = {"logistic_problem": logistic["facts"]} if logistic else {}
    report.write_json(output_dir / "summary.json", {**numbers, **facts})
    (output_dir / "results.md").write_text(tables.markdown(best, logistic_table, mlp_table, numbers))

    s20 = {kappa: tables.row_evaluations(rows, tables.TARGET_ROW) for kappa, (rows, _) in quadratics.items()}
    if best:
        figures.evaluations_vs_kappa(output_dir / "evaluations_vs_kappa.png", best, s20)
    with_curves = [r for r in [*quadratic_results, logistic] if r and r["curves"]]
    if with_curves:
        figures.loss_curves(output_dir / "loss_curves.png", with_curves)
    figures.stability_polynomials(output_dir / "stability_polynomials.png")
    if mlp_runs:
        figures.mlp_rates(output_dir / "mlp_rates.png", mlp_runs, config["mlp"]["loss_target"])


def run_config(spec: RunSpec, config: dict[str, Any]) -> dict[str, Any]:
    """What a run's result depends on: a full-batch sweep its block and the seed; a training run its settings and the seed."""
    kind = spec.settings["kind"]
    if kind == "mlp":
        return {**spec.settings, "seed": config.get("seed", 0)}
    return {**spec.settings, kind: config["quadratics" if kind == "quadratic" else "logistic"], "seed": config.get("seed", 0)}


def check_run(spec: RunSpec, config: dict[str, Any]) -> None:
    """Training settings TrainConfig rejects, before any run starts."""
    if spec.settings["kind"] == "mlp":
        check_train_run(_train_settings(spec, config))


_RATES = {"rates": runner.ListOf(runner.POSITIVE)}
_RKC = {
    "safety": runner.satisfies("a number in (0, 1]", lambda v: isinstance(v, (int, float)) and 0 < v <= 1),
    "fixed_stages": runner.optional(runner.ListOf(runner.POSITIVE_INT, min_length=0)),
    "stages_for_h_mu": runner.optional(runner.ListOf(runner.POSITIVE, min_length=0)),
    "orders": runner.optional(runner.ListOf(runner.one_of(1, 2))),
    "stage_factors": runner.optional(runner.ListOf(runner.POSITIVE, min_length=0)),
    "damping_factors": runner.optional(runner.ListOf(runner.POSITIVE, min_length=0)),
}
_METHODS = {
    **{name: runner.optional(_RATES) for name in RATE_METHODS},
    **{name: runner.optional({}) for name in ("heavy_ball", "nesterov")},
    "rkc": runner.optional(_RKC),
}
"""The ``methods`` block of a full-batch problem: the methods it runs, with their grids (none for the momentum methods)."""
_BUDGET = {"target": runner.POSITIVE, "budget": runner.POSITIVE_INT}
SCHEMA = {
    **runner.COMMON,
    "quadratics": runner.optional(
        {
            "kappas": runner.ListOf(runner.satisfies("a number ≥ 1", lambda v: isinstance(v, (int, float)) and v >= 1)),
            "dim": runner.satisfies("an integer ≥ 2", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2),
            "methods": {**_METHODS, "cg": runner.optional({})},
            "curve_kappa": runner.POSITIVE,
            "curve_budget": runner.POSITIVE_INT,
            **_BUDGET,
        }
    ),
    "logistic": runner.optional(
        {
            "dataset": runner.one_of("mnist", "synthetic_mnist"),
            "train_subset": runner.POSITIVE_INT,
            "reg": runner.POSITIVE,
            "methods": _METHODS,
            "momentum_rate_scales": runner.ListOf(runner.POSITIVE),
            "curve_budget": runner.POSITIVE_INT,
            **_BUDGET,
        }
    ),
    "mlp": runner.optional(
        {
            "methods": runner.ListOf(
                runner.satisfies("sgd, momentum, nesterov, adam, a Runge–Kutta name or rkc<s>", minibatch.is_method)
            ),
            "rates": runner.ListOf(runner.POSITIVE),
            "loss_target": runner.POSITIVE,
            "train": train_schema("grad_evals"),
        }
    ),
}

STUDY = Study("stabilized", plan, execute, summarize, SCHEMA, run_config, check_run)
