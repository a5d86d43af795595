"""How step time grows with the parameter count and with the number of gradient evaluations per step.

1. Parameters: SGD, Euler and RK4 on the ``elementwise`` loss from 10³ to
   10⁷ parameters (10⁸ on a GPU). The log-log slope of time against size over
   the largest sizes is 1 for linear growth; flowopt's slope is reported
   beside SGD's (their ratio is 1 when flowopt grows exactly as the gradient
   does), with RK4's overhead at every size.
2. Evaluations: explicit Runge–Kutta methods with 1–6 gradient evaluations
   per step on the MLP. A least-squares line ``t = α + β·evals`` in units of
   one SGD step should have ``β ≈ 1`` and ``α ≈ 0``; ``R²`` shows linearity.
   BDF-1's step time against the number of inner iterations is fitted the
   same way.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

import flowopt
from benchmarks import methods
from benchmarks.problems import DESCRIPTIONS, Problem, classifier, elementwise
from benchmarks.report import Report, Row, at_most, judged
from benchmarks.timing import StepRunner, interleaved


class Config(NamedTuple):
    sizes: tuple[int, ...]
    fit_points: int  # fit the slope over this many of the largest sizes
    stages_model: str
    stages_batch: int
    stage_methods: tuple[str, ...]
    bdf_inner: tuple[int, ...]
    repeats: int
    block_seconds: float


def _slope(x, y) -> tuple[float, float]:
    """Least-squares slope and R² of ``y`` against ``x``."""
    slope, intercept = np.polyfit(x, y, 1)
    residual = np.asarray(y) - (slope * np.asarray(x) + intercept)
    total = np.sum((np.asarray(y) - np.mean(y)) ** 2)
    return float(slope), float(1 - np.sum(residual**2) / total) if total > 0 else 1.0


def run(config: Config, report: Report) -> None:
    _parameters(config, report)
    problem = classifier(config.stages_model, config.stages_batch)
    _evaluations(config, report, problem)
    _bdf(config, report, problem)


def _parameters(config: Config, report: Report) -> None:
    section = "4a. scaling with parameter count (elementwise loss)"
    names = ("optax.sgd", "euler", "rk4")
    times = {name: [] for name in names}
    for size in config.sizes:
        problem = elementwise(size)
        runners = {name: StepRunner(methods.build(name), problem) for name in names}
        measured = interleaved(runners, config.repeats, config.block_seconds)
        for name in names:
            times[name].append(measured[name].best)
        rk4, sgd = measured["rk4"], measured["optax.sgd"]
        report.add(
            judged(
                Row(
                    section=section,
                    model=f"{size:.0e} params",
                    method="rk4",
                    metric="time / (4 × sgd step)",
                    value=rk4.best / (4 * sgd.best),
                    value_median=rk4.median / (4 * sgd.median),
                    method_ms=1e3 * rk4.best,
                    baseline_ms=1e3 * sgd.best,
                ),
                at_most(1.03),
            )
        )
    fit = slice(len(config.sizes) - config.fit_points, None)
    log_size = np.log10(config.sizes)[fit]
    base_slope, _ = _slope(log_size, np.log10(times["optax.sgd"])[fit])
    span = f"{config.sizes[fit][0]:.0e}–{config.sizes[-1]:.0e}"
    for name in names:
        slope, r2 = _slope(log_size, np.log10(times[name])[fit])
        report.add(
            Row(
                section=section,
                model=f"fit over {span} params",
                method=name,
                metric="log-log slope of time vs size",
                value=slope,
                note=f"R² {r2:.3f}; slope / SGD's {slope / base_slope:.3f} (1 for linear growth)",
            )
        )


def _evaluations(config: Config, report: Report, problem: Problem) -> None:
    _fit_evaluations(config, report, problem, {name: methods.build(name) for name in config.stage_methods})


def _bdf(config: Config, report: Report, problem: Problem) -> None:
    if not config.bdf_inner:
        return
    # Backward Euler (BDF-1) with a fixed inner step, so every inner iteration is one oracle call.
    txs = {
        f"bdf1 inner {n}": flowopt.bdf(1, methods.LEARNING_RATE, inner_steps=n, inner_learning_rate=methods.LEARNING_RATE)
        for n in config.bdf_inner
    }
    _fit_evaluations(config, report, problem, txs)


def _fit_evaluations(config: Config, report: Report, problem: Problem, txs: dict) -> None:
    """Time ``txs`` interleaved with SGD; report the line ``t = α + β·evals`` in SGD steps."""
    runners = {"optax.sgd": StepRunner(methods.build("optax.sgd"), problem)}
    runners |= {name: StepRunner(tx, problem) for name, tx in txs.items()}
    measured = interleaved(runners, config.repeats, config.block_seconds)
    sgd = measured["optax.sgd"].best
    names = list(txs)
    evals = [methods.gradients_per_step(runners[n].state, runners[n].steps) for n in names]
    units = [measured[n].best / sgd for n in names]
    slope, r2 = _slope(evals, units)
    intercept = float(np.mean(units) - slope * np.mean(evals))
    report.add(
        judged(
            Row(
                section="4b. scaling with gradient evaluations per step",
                model=f"{DESCRIPTIONS[config.stages_model]}, batch {config.stages_batch}",
                method=", ".join(f"{n} ({e:g})" for n, e in zip(names, evals)),
                metric="β: SGD steps per extra gradient",
                value=slope,
                note=f"t = α + β·evals in SGD steps: α = {intercept:+.3f}, R² = {r2:.4f}; "
                + ", ".join(f"{n} {u:.2f}" for n, u in zip(names, units)),
                baseline_ms=1e3 * sgd,
            ),
            at_most(1.03),
        )
    )
