"""Learning-rate range and gradient evaluations to a target loss: approximate BDF vs explicit methods.

On ill-conditioned quadratics (κ = 1e2, 1e4, 1e6) and an ill-conditioned
L2-regularised logistic regression, every method runs at each learning rate
``h = r / L`` of a log grid until the relative suboptimality
``(f - f*) / (f_0 - f*)`` reaches the target, the run diverges, or the
gradient-evaluation budget is spent. A gradient evaluation is an incoming
gradient (one per step) or an oracle call (the state's count).

One run per problem. Writes ``runs.csv`` (one row per problem, method and
rate), ``summary.csv`` (per problem and method: the range of rates that reach
the target, the evaluations at the best rate, the median over the range) and
``bdf_stability.png`` to ``results/bdf-stability/<config>/``::

    flowopt-experiment bdf-stability --config cpu

The bdf study reuses these problems (:func:`problem`) and runs
(:func:`make_run`) for its synthetic rows.

Configuration (JSON)::

    {"problems": ["quadratic_kappa1e2", ..., "logistic_regression"], "dim": 50,
     "methods": [labels of METHODS], "min_rate": 0.1, "max_rate": 1000,
     "rates_per_decade": 4, "target": 1e-3, "budget": 20000}
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flowopt
from experiments import report, runner
from experiments.runner import RunSpec, Study


class Problem(NamedTuple):
    name: str
    loss: Callable[[jax.Array], jax.Array]
    x0: np.ndarray
    minimum: float
    lipschitz: float


def quadratic(condition: float, dim: int = 50, seed: int = 0) -> Problem:
    """½ xᵀAx, eigenvalues log-spaced on [1/κ, 1] in a random basis; f* = 0, L = 1."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    a = jnp.asarray(q @ np.diag(np.logspace(-np.log10(condition), 0, dim)) @ q.T)
    return Problem(f"quadratic kappa=1e{round(np.log10(condition))}", lambda x: 0.5 * x @ a @ x, rng.normal(size=dim), 0.0, 1.0)


def logistic_regression(samples: int = 500, dim: int = 20, reg: float = 1e-4, seed: int = 0) -> Problem:
    """Mean logistic loss + (reg/2)||w||² on features with scales spread over 2 decades."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(samples, dim)) * np.logspace(0, -2, dim)
    truth = rng.normal(size=dim) / np.logspace(0, -2, dim) / np.sqrt(dim)
    labels = np.where(features @ truth + 0.5 * rng.normal(size=samples) > 0, 1.0, -1.0)
    margins = jnp.asarray(labels[:, None] * features)

    def loss(w):
        return jnp.mean(jnp.logaddexp(0.0, -margins @ w)) + 0.5 * reg * w @ w

    lipschitz = np.linalg.eigvalsh(features.T @ features)[-1] / (4 * samples) + reg
    return Problem("logistic regression", loss, np.zeros(dim), _newton_minimum(loss, dim), float(lipschitz))


def _newton_minimum(loss, dim: int) -> float:
    w = jnp.zeros(dim)
    grad, hess = jax.jit(jax.grad(loss)), jax.jit(jax.hessian(loss))
    for _ in range(100):
        w = w - jnp.linalg.solve(hess(w), grad(w))
    assert float(jnp.linalg.norm(grad(w))) < 1e-12, "Newton did not converge"
    return float(loss(w))


def problem(name: str, dim: int = 50) -> Problem:
    """``quadratic_kappa1e4`` (a quadratic of that condition number, dimension ``dim``) or ``logistic_regression``.

    Call under ``jax.enable_x64``.
    """
    if name.startswith("quadratic_kappa"):
        return quadratic(float(name[len("quadratic_kappa") :]), dim=dim)
    if name == "logistic_regression":
        return logistic_regression()
    raise ValueError(f"unknown synthetic problem {name!r}.")


def _is_problem(value: Any) -> bool:
    if value == "logistic_regression":
        return True
    if not isinstance(value, str) or not value.startswith("quadratic_kappa"):
        return False
    try:
        return float(value[len("quadratic_kappa") :]) >= 1
    except ValueError:
        return False


PROBLEM = runner.satisfies("logistic_regression or quadratic_kappa<condition number ≥ 1>", _is_problem)
"""The schema of a problem name."""

INNER_STEPS = 3

METHODS: dict[str, Callable] = {
    "gd": flowopt.euler,
    "heun": flowopt.heun,
    "rk4": flowopt.rk4,
    "ab2": lambda lr: flowopt.adams_bashforth(2, lr),
    "ab3": lambda lr: flowopt.adams_bashforth(3, lr),
    "ab4": lambda lr: flowopt.adams_bashforth(4, lr),
    "backward_euler K=1": lambda lr: flowopt.backward_euler(lr, 1),
    f"backward_euler K={INNER_STEPS}": lambda lr: flowopt.backward_euler(lr, INNER_STEPS),
    f"bdf2 K={INNER_STEPS}": lambda lr: flowopt.bdf(2, lr, INNER_STEPS),
    f"bdf3 K={INNER_STEPS}": lambda lr: flowopt.bdf(3, lr, INNER_STEPS),
    f"bdf4 K={INNER_STEPS}": lambda lr: flowopt.bdf(4, lr, INNER_STEPS),
}


def rate_grid(min_rate: float, max_rate: float, per_decade: int) -> np.ndarray:
    """Log-spaced learning rates × L from ``min_rate`` to ``max_rate``, ``per_decade`` per decade."""
    count = round(math.log10(max_rate / min_rate) * per_decade) + 1
    return np.logspace(math.log10(min_rate), math.log10(max_rate), count)


def advance(
    problem: Problem, tx: optax.GradientTransformation, gap0: float, x: jax.Array, state: Any
) -> tuple[jax.Array, Any, jax.Array]:
    """One optimizer step on ``problem`` (its oracle is the exact loss): new iterate, state, relative gap."""
    updates, state = tx.update(jax.grad(problem.loss)(x), state, x, value_fn=problem.loss)
    x = x + updates
    return x, state, (problem.loss(x) - problem.minimum) / gap0


def _evaluations(carry: tuple) -> jax.Array:
    """Gradient evaluations so far: one incoming gradient per step plus the oracle calls."""
    _, state, steps, _ = carry
    return flowopt.oracle_evaluations(state) + steps


def _jitted(problem: Problem, constructor: Callable, loop: Callable) -> Callable:
    """A jitted ``learning_rate -> loop(step, carry)``, ``step`` one optimizer step on ``carry = (x, state, steps, gap)``."""
    x0 = jnp.asarray(problem.x0)
    gap0 = float(problem.loss(x0)) - problem.minimum

    @jax.jit
    def run(learning_rate):
        tx = constructor(learning_rate)

        def step(carry):
            x, state, steps, _ = carry
            x, state, gap = advance(problem, tx, gap0, x, state)
            return x, state, steps + 1, gap

        return loop(step, (x0, tx.init(x0), jnp.zeros([], jnp.int32), jnp.ones([], x0.dtype)))

    return run


def make_run(problem: Problem, constructor: Callable, target: float, budget: int):
    """A jitted ``learning_rate -> (reached, gradient evaluations, relative gap)``.

    The loss of each new iterate is evaluated to test the target; those
    evaluations are monitoring and not counted.
    """

    def until_target(step, carry):
        def keep_going(carry):
            gap = carry[3]
            running = (gap > target) & (gap < 1e6) & jnp.isfinite(gap)
            return running & (_evaluations(carry) < budget)

        carry = jax.lax.while_loop(keep_going, step, carry)
        return carry[3] <= target, _evaluations(carry), carry[3]

    return _jitted(problem, constructor, until_target)


def loss_curve(problem: Problem, constructor: Callable, cost: int, budget: int):
    """A jitted ``learning_rate -> (gradient evaluations, relative gap)`` after each step, ``budget // cost`` steps."""

    def record(step, carry):
        def one(carry, _):
            carry = step(carry)
            return carry, (_evaluations(carry), carry[3])

        return jax.lax.scan(one, carry, None, length=budget // cost)[1]

    return _jitted(problem, constructor, record)


def measure(problem: Problem, methods: dict[str, Callable], rates, target: float, budget: int) -> list[dict]:
    """One row per method and rate: whether the target was reached, with how many gradient evaluations."""
    rows = []
    for name, constructor in methods.items():
        run = make_run(problem, constructor, target, budget)
        for rate in rates:
            reached, evals, gap = jax.device_get(run(rate / problem.lipschitz))
            rows.append(
                dict(
                    problem=problem.name,
                    method=name,
                    lr_times_L=float(rate),
                    reached=bool(reached),
                    gradient_evaluations=int(evals) if reached else "",
                    final_relative_gap=float(gap),
                    diverged=bool(not np.isfinite(gap) or gap >= 1e6),
                )
            )
    return rows


def summarise(rows: list[dict], methods, problems: list[str]) -> list[dict]:
    """Per problem (display name) and method: the rates that reach the target, the best and median cost."""
    summary = []
    for name_of_problem in problems:
        for name in methods:
            runs = [r for r in rows if r["problem"] == name_of_problem and r["method"] == name]
            good = [r for r in runs if r["reached"]]
            entry = dict(problem=name_of_problem, method=name, rates_tried=len(runs), rates_reaching_target=len(good))
            if good:
                best = min(good, key=lambda r: r["gradient_evaluations"])
                low, high = min(r["lr_times_L"] for r in good), max(r["lr_times_L"] for r in good)
                entry |= dict(
                    min_lr_times_L=low,
                    max_lr_times_L=high,
                    decades=float(np.log10(high / low)),
                    best_lr_times_L=best["lr_times_L"],
                    best_gradient_evaluations=best["gradient_evaluations"],
                    median_gradient_evaluations=float(np.median([r["gradient_evaluations"] for r in good])),
                    max_rate_diverged=any(r["diverged"] for r in runs if r["lr_times_L"] > high),
                )
            summary.append(entry)
    return summary


def plot(path: Path, rows: list[dict], methods, problems: list[str], target: float, budget: int) -> None:
    """Gradient evaluations to the target against the rate, one panel per problem (two columns)."""
    plt = report.pyplot()
    columns = min(2, len(problems))
    lines = math.ceil(len(problems) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(6 * columns, 4.5 * lines), sharex=True, sharey=True, squeeze=False)
    colors = [f"C{i}" for i in range(10)] + ["black"]
    styles = {name: ("--" if name in ("gd", "heun", "rk4") else ":" if name.startswith("ab") else "-") for name in methods}
    for ax, name_of_problem in zip(axes.flat, problems):
        for index, name in enumerate(methods):
            runs = [r for r in rows if r["problem"] == name_of_problem and r["method"] == name]
            rates = [r["lr_times_L"] for r in runs]
            evals = [r["gradient_evaluations"] if r["reached"] else np.nan for r in runs]
            ax.plot(rates, evals, styles[name], marker="o", markersize=3, color=colors[index], label=name)
        ax.set(xscale="log", yscale="log", title=name_of_problem, xlabel="learning rate × L")
        ax.set_ylabel(f"gradient evaluations to gap ≤ {target:g}")
        ax.grid(True, which="major", alpha=0.3)
    axes.flat[0].legend(fontsize=8, ncol=2)
    fig.suptitle(f"Learning rates reaching the target within {budget} gradient evaluations (missing = not reached)")
    report.save_figure(fig, path, dpi=110)


# --------------------------------------------------------------------------- the study


def _methods(config: dict[str, Any]) -> dict[str, Callable]:
    return {name: METHODS[name] for name in config.get("methods", METHODS)}


def plan(config: dict[str, Any]) -> list[RunSpec]:
    """One run per problem: every method at every rate of the grid."""
    if config["min_rate"] > config["max_rate"]:
        raise ValueError(f"min_rate ({config['min_rate']}) exceeds max_rate ({config['max_rate']}).")
    return [RunSpec(name, {"problem": name}) for name in config["problems"]]


def execute(spec: RunSpec, config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Every method at every rate on one problem, in float64."""
    rates = rate_grid(config["min_rate"], config["max_rate"], config["rates_per_decade"])
    with jax.enable_x64(True):
        built = problem(spec.settings["problem"], dim=config.get("dim", 50))
        rows = measure(built, _methods(config), rates, config["target"], config["budget"])
    return {"problem": built.name, "rows": report.pack(rows)}


def summarize(config: dict[str, Any], results: dict[str, dict[str, Any]], output_dir: Path) -> None:
    """``runs.csv``, ``summary.csv`` and ``bdf_stability.png``."""
    finished = [results[name] for name in config["problems"] if name in results]
    rows = [row for result in finished for row in report.unpack(result["rows"])]
    problems = [result["problem"] for result in finished]
    methods = _methods(config)
    report.write_csv(output_dir / "runs.csv", rows)
    report.write_csv(output_dir / "summary.csv", summarise(rows, methods, problems))
    if problems:
        plot(output_dir / "bdf_stability.png", rows, methods, problems, config["target"], config["budget"])


SCHEMA = {
    **runner.COMMON,
    "problems": runner.ListOf(PROBLEM, unique=None),
    "dim": runner.optional(runner.POSITIVE_INT),
    "methods": runner.optional(runner.ListOf(runner.one_of(*METHODS))),
    "min_rate": runner.POSITIVE,
    "max_rate": runner.POSITIVE,
    "rates_per_decade": runner.POSITIVE_INT,
    "target": runner.POSITIVE,
    "budget": runner.POSITIVE_INT,
}

STUDY = Study("bdf-stability", plan, execute, summarize, SCHEMA)
