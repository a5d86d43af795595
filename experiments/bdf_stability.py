"""Learning-rate range and gradient evaluations to a target loss: approximate BDF vs explicit methods.

On ill-conditioned quadratics (κ = 1e2, 1e4, 1e6) and an ill-conditioned
L2-regularised logistic regression, every method runs at each learning rate
``h = r / L`` of a log grid until the relative suboptimality
``(f - f*) / (f_0 - f*)`` reaches the target, the run diverges, or the
gradient-evaluation budget is spent. A gradient evaluation is an incoming
gradient (one per step) or an oracle call (the state's count).

Writes ``runs.csv`` (one row per method and rate), ``summary.csv`` (per
method: the range of rates that reach the target, the evaluations at the
best rate, the median over the range) and ``bdf_stability.png``::

    python experiments/bdf_stability.py --output-dir results/bdf
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flowopt
from experiments.tables import write_csv


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


def make_run(problem: Problem, constructor: Callable, target: float, budget: int):
    """A jitted ``learning_rate -> (reached, gradient evaluations, relative gap)``.

    The loss of each new iterate is evaluated to test the target; those
    evaluations are monitoring and not counted.
    """
    x0 = jnp.asarray(problem.x0)
    gap0 = float(problem.loss(x0)) - problem.minimum

    @jax.jit
    def run(learning_rate):
        tx = constructor(learning_rate)

        def evaluations(state, steps):
            return flowopt.oracle_evaluations(state) + steps

        def keep_going(carry):
            _, state, steps, gap = carry
            running = (gap > target) & (gap < 1e6) & jnp.isfinite(gap)
            return running & (evaluations(state, steps) < budget)

        def step(carry):
            x, state, steps, _ = carry
            x, state, gap = advance(problem, tx, gap0, x, state)
            return x, state, steps + 1, gap

        carry = (x0, tx.init(x0), jnp.zeros([], jnp.int32), jnp.ones([], x0.dtype))
        _, state, steps, gap = jax.lax.while_loop(keep_going, step, carry)
        return gap <= target, evaluations(state, steps), gap

    return run


def measure(problems, methods, rates, target: float, budget: int) -> list[dict]:
    rows = []
    for problem in problems:
        for name, constructor in methods.items():
            start = time.perf_counter()
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
            print(f"{problem.name:28s} {name:20s} {time.perf_counter() - start:6.1f}s", flush=True)
    return rows


def summarise(rows: list[dict], methods, problems) -> list[dict]:
    summary = []
    for problem in problems:
        for name in methods:
            runs = [r for r in rows if r["problem"] == problem.name and r["method"] == name]
            good = [r for r in runs if r["reached"]]
            entry = dict(problem=problem.name, method=name, rates_tried=len(runs), rates_reaching_target=len(good))
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


def plot(path: Path, rows: list[dict], methods, problems, target: float, budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9), sharex=True, sharey=True)
    colors = [f"C{i}" for i in range(10)] + ["black"]
    styles = {name: ("--" if name in ("gd", "heun", "rk4") else ":" if name.startswith("ab") else "-") for name in methods}
    for ax, problem in zip(axes.flat, problems):
        for index, name in enumerate(methods):
            runs = [r for r in rows if r["problem"] == problem.name and r["method"] == name]
            rates = [r["lr_times_L"] for r in runs]
            evals = [r["gradient_evaluations"] if r["reached"] else np.nan for r in runs]
            ax.plot(rates, evals, styles[name], marker="o", markersize=3, color=colors[index], label=name)
        ax.set(xscale="log", yscale="log", title=problem.name, xlabel="learning rate × L")
        ax.set_ylabel(f"gradient evaluations to gap ≤ {target:g}")
        ax.grid(True, which="major", alpha=0.3)
    axes.flat[0].legend(fontsize=8, ncol=2)
    fig.suptitle(f"Learning rates reaching the target within {budget} gradient evaluations (missing = not reached)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("results/bdf"))
    parser.add_argument("--target", type=float, default=1e-3, help="relative suboptimality to reach")
    parser.add_argument("--budget", type=int, default=20_000, help="gradient evaluations per run")
    parser.add_argument("--rates-per-decade", type=int, default=4)
    parser.add_argument("--max-rate", type=float, default=1e3, help="largest learning rate × L")
    parser.add_argument("--min-rate", type=float, default=1e-1, help="smallest learning rate × L")
    args = parser.parse_args(argv)

    jax.config.update("jax_enable_x64", True)
    problems = [quadratic(1e2), quadratic(1e4), quadratic(1e6), logistic_regression()]
    rates = rate_grid(args.min_rate, args.max_rate, args.rates_per_decade)
    rows = measure(problems, METHODS, rates, args.target, args.budget)
    summary = summarise(rows, METHODS, problems)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_csv(args.output_dir / "runs.csv", rows)
    write_csv(args.output_dir / "summary.csv", summary)
    plot(args.output_dir / "bdf_stability.png", rows, METHODS, problems, args.target, args.budget)
    for entry in summary:
        if entry["rates_reaching_target"]:
            print(
                f"{entry['problem']:28s} {entry['method']:20s} h·L in [{entry['min_lr_times_L']:.3g}, "
                f"{entry['max_lr_times_L']:.3g}]  best {entry['best_gradient_evaluations']} evals"
                f" at {entry['best_lr_times_L']:.3g}, median {entry['median_gradient_evaluations']:.0f}"
            )
        else:
            print(f"{entry['problem']:28s} {entry['method']:20s} never reached the target")
    print(f"wrote {args.output_dir}")


if __name__ == "__main__":
    main()
