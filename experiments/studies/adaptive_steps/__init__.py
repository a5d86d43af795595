"""Gradient evaluations to a target loss: adaptive embedded pairs vs tuned fixed-step RK vs SGD.

Problems:

* ``logistic``: L2-regularised logistic regression on synthetic features whose
  scales spread over two decades (ill-conditioned); full batch; target
  relative suboptimality ``(f - f*)/(f_0 - f*) ≤ 1e-3`` with ``f*`` from Newton.
* ``mlp``: a 196-32-10 tanh MLP on 1024 MNIST images (downsampled to 14×14;
  the labelled synthetic stand-in if MNIST is unavailable), full batch,
  target training loss 0.01.
* ``mlp-minibatch``: the same MLP with batches of 64; target full training
  loss 0.05, checked every 10 updates (monitoring, not counted).

Methods: the adaptive pairs (:func:`flowopt.adaptive_runge_kutta`,
untuned initial step ``1e-3``, tolerances ``rtol = atol ∈ {1e-2, 1e-3,
1e-4}``; :func:`flowopt.minibatch_adaptive_runge_kutta` on minibatches),
fixed-step Runge–Kutta and SGD (with and without momentum) at every step of
a log grid; a fixed method's result is its best step. A gradient evaluation
is an incoming gradient (one per update) or an oracle call (the state's
count); the adaptive optimizers pay every stage of every attempt, rejected
ones included, and cannot reuse the FSAL stage (see :mod:`flowopt.rk.adaptive`).

One run per problem. Writes ``runs.csv`` (one row per method and setting),
``summary.csv`` (per problem and method: best setting, evaluations there,
how many settings reach the target) and ``adaptive_steps.png`` (evaluations
against the learning rate, and the steps the adaptive methods chose) to
``results/adaptive-steps/<config>/``::

    flowopt-experiment adaptive-steps --config cpu

Configuration (JSON)::

    {"problems": ["logistic", "mlp", "mlp-minibatch"], "budget": 10000,
     "tolerances": [1e-2, 1e-3, 1e-4], "rate_stride": 1, "dataset": "mnist"}

``rate_stride`` keeps every n-th rate of the fixed methods' grids;
``dataset`` is the MLP's data (``mnist``, or its labelled synthetic stand-in
``synthetic_mnist``, also used when MNIST is unavailable).
"""

from __future__ import annotations

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
from flowopt import tableaus

INITIAL_STEP = 1e-3
CHECK_EVERY = 10
PROBLEMS = ("logistic", "mlp", "mlp-minibatch")


class Problem(NamedTuple):
    name: str
    loss: Callable[[Any], jax.Array]  # full-batch loss
    params0: Any
    target: float  # reached when loss <= target
    rates: np.ndarray  # step grid of the fixed methods
    batch_loss: Callable[[Any, jax.Array], jax.Array] | None = None  # (params, key) -> minibatch loss
    data_label: str = ""


def logistic_regression(samples: int = 500, dim: int = 20, reg: float = 1e-4, seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)
    scales = np.logspace(0, -2, dim)
    features = rng.normal(size=(samples, dim)) * scales
    truth = rng.normal(size=dim) / scales / np.sqrt(dim)
    labels = np.where(features @ truth + 0.5 * rng.normal(size=samples) > 0, 1.0, -1.0)
    margins = jnp.asarray(labels[:, None] * features, jnp.float32)

    def loss(w):
        return jnp.mean(jnp.logaddexp(0.0, -margins @ w)) + 0.5 * reg * w @ w

    w0 = jnp.zeros(dim, jnp.float32)
    minimum = _newton_minimum(loss, dim)
    target = minimum + 1e-3 * (float(loss(w0)) - minimum)
    lipschitz = np.linalg.eigvalsh(features.T @ features)[-1] / (4 * samples) + reg
    return Problem("logistic", loss, w0, target, 2.0 ** np.arange(-2, 8.5, 0.5) / lipschitz, data_label="synthetic")


def _newton_minimum(loss: Callable, dim: int) -> float:
    with jax.enable_x64(True):
        f = lambda w: loss(w.astype(jnp.float32)).astype(jnp.float64)
        grad, hess = jax.jit(jax.grad(f)), jax.jit(jax.hessian(f))
        w = jnp.zeros(dim, jnp.float64)
        for _ in range(50):
            w = w - jnp.linalg.solve(hess(w), grad(w))
        return float(f(w))


def mnist_subset(samples: int, dataset_name: str = "mnist") -> tuple[np.ndarray, np.ndarray, str]:
    """``samples`` training images, 2×2 average-pooled to 14×14 and scaled to [0, 1], with labels.

    ``dataset_name`` ``mnist`` falls back to the synthetic stand-in (and says so) when MNIST is unavailable.
    """
    from flowopt.training import data

    dataset = None
    if dataset_name == "mnist":
        try:
            dataset = data.load_dataset("mnist")
        except (data.DataUnavailableError, data.DataIntegrityError) as error:
            print(f"MNIST unavailable ({error}); using the synthetic stand-in.")
    if dataset is None:
        dataset = data.synthetic_dataset("synthetic_mnist", num_train=samples)
    images = dataset.x_train[:samples, :, :, 0].astype(np.float32) / 255.0
    pooled = images.reshape(samples, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(samples, -1)
    return pooled, dataset.y_train[:samples], dataset.label


def mlp_problems(
    samples: int = 1024, hidden: int = 32, batch: int = 64, seed: int = 0, dataset_name: str = "mnist"
) -> list[Problem]:
    x, y, label = mnist_subset(samples, dataset_name)
    x, y = jnp.asarray(x), jnp.asarray(y)
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params0 = {
        "w1": jax.random.normal(k1, (x.shape[1], hidden)) / np.sqrt(x.shape[1]),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, 10)) / np.sqrt(hidden),
        "b2": jnp.zeros(10),
    }

    def loss_on(params, inputs, labels):
        logits = jnp.tanh(inputs @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def batch_loss(params, key):
        idx = jax.random.randint(key, (batch,), 0, samples)
        return loss_on(params, x[idx], y[idx])

    full = lambda params: loss_on(params, x, y)
    rates = 2.0 ** np.arange(-2, 4.5, 0.5)
    return [
        Problem("mlp", full, params0, 0.01, rates, data_label=label),
        Problem("mlp-minibatch", full, params0, 0.05, rates, batch_loss=batch_loss, data_label=label),
    ]


class Outcome(NamedTuple):
    reached: jax.Array
    gradient_evals: jax.Array
    loss: jax.Array
    accepted: jax.Array  # adaptive: accepted and rejected attempts (-1 for fixed methods)
    rejected: jax.Array
    step_sizes: jax.Array  # adaptive: step after each update (zeros beyond the run)


def make_run(problem: Problem, constructor: Callable, budget: int, record_steps: bool = False) -> Callable[[Any], Outcome]:
    """A jitted ``setting -> Outcome``: update until the loss reaches the target or the budget is spent.

    With ``record_steps`` the adaptive step size after each update is kept (one per gradient of budget).
    """
    trace_length = budget if record_steps else 1

    @jax.jit
    def run(setting) -> Outcome:
        tx = constructor(setting)

        def evals(state, steps):
            return flowopt.oracle_evaluations(state) + steps

        def keep_going(carry):
            _, state, steps, loss, _ = carry
            return (loss > problem.target) & jnp.isfinite(loss) & (evals(state, steps) < budget)

        def step(carry):
            params, state, steps, loss, trace = carry
            if problem.batch_loss is None:
                value_fn = problem.loss
            else:
                value_fn = jax.tree_util.Partial(problem.batch_loss, key=jax.random.fold_in(jax.random.PRNGKey(1), steps))
            updates, state = tx.update(jax.grad(value_fn)(params), state, params, value_fn=value_fn)
            params = optax.apply_updates(params, updates)
            if problem.batch_loss is None:
                loss = problem.loss(params)
            else:
                loss = jax.lax.cond((steps + 1) % CHECK_EVERY == 0, problem.loss, lambda p: loss, params)
            if record_steps:
                trace = trace.at[jnp.minimum(steps, trace_length - 1)].set(state.controller.step_size)
            return params, state, steps + 1, loss, trace

        params0 = problem.params0
        carry = (params0, tx.init(params0), jnp.zeros([], jnp.int32), problem.loss(params0), jnp.zeros(trace_length))
        _, state, steps, loss, trace = jax.lax.while_loop(keep_going, step, carry)
        adaptive = isinstance(getattr(state, "stage_state", None), flowopt.AdaptiveState)
        counts = (state.accepted, state.rejected) if adaptive else (-1, -1)
        return Outcome(loss <= problem.target, evals(state, steps), loss, *counts, trace)

    return run


def fixed_methods(minibatch: bool) -> dict[str, Callable]:
    methods = {
        "sgd": optax.sgd,
        "sgd momentum 0.9": lambda lr: optax.sgd(lr, momentum=0.9),
        "heun": flowopt.heun,
        "rk4": flowopt.rk4,
    }
    if not minibatch:
        methods["bosh3 fixed"] = lambda lr: flowopt.runge_kutta(tableaus.BOSH3, lr)
    return methods


def adaptive_methods(minibatch: bool) -> dict[str, Callable]:
    if minibatch:
        return {
            "bosh3 adaptive (minibatch)": lambda tol: flowopt.minibatch_adaptive_runge_kutta(
                tableaus.BOSH3, learning_rate=INITIAL_STEP, rtol=tol, atol=tol, dtmin=1e-4, dtmax=1e2
            )
        }
    return {
        f"{tableau.name} adaptive": (
            lambda tol, tableau=tableau: flowopt.adaptive_runge_kutta(tableau, learning_rate=INITIAL_STEP, rtol=tol, atol=tol)
        )
        for tableau in (tableaus.HEUN_EULER, tableaus.BOSH3, tableaus.DOPRI5)
    }


def measure(problem: Problem, budget: int, tolerances) -> tuple[list[dict], list[dict]]:
    """Rows of every fixed method at every rate and every adaptive method at every tolerance; the adaptive steps."""
    rows, traces = [], []
    minibatch = problem.batch_loss is not None
    for name, constructor in fixed_methods(minibatch).items():
        run = make_run(problem, constructor, budget)
        for rate in problem.rates:
            outcome = jax.device_get(run(jnp.asarray(rate, jnp.float32)))
            rows.append(_row(problem, name, "fixed", "learning_rate", rate, outcome))
    for name, constructor in adaptive_methods(minibatch).items():
        for tol in tolerances:
            run = make_run(problem, lambda _, tol=tol: constructor(tol), budget, record_steps=True)
            outcome = jax.device_get(run(0.0))
            rows.append(_row(problem, name, "adaptive", "rtol=atol", tol, outcome))
            steps = outcome.step_sizes[outcome.step_sizes > 0]
            traces.append({"problem": problem.name, "method": name, "tolerance": tol, "steps": [float(h) for h in steps]})
    return rows, traces


def _row(problem, method, kind, setting_name, setting, outcome) -> dict:
    return dict(
        problem=problem.name,
        data=problem.data_label,
        method=method,
        kind=kind,
        setting_name=setting_name,
        setting=float(setting),
        reached=bool(outcome.reached),
        gradient_evals=int(outcome.gradient_evals) if outcome.reached else "",
        final_loss=float(outcome.loss),
        accepted=int(outcome.accepted) if kind == "adaptive" else "",
        rejected=int(outcome.rejected) if kind == "adaptive" else "",
        target_loss=problem.target,
    )


def summary_rows(rows: list[dict]) -> list[dict]:
    """Per problem and method: the settings that reach the target, the best and the median cost."""
    summary = []
    keys = dict.fromkeys((row["problem"], row["method"]) for row in rows)
    for problem, method in keys:
        runs = [r for r in rows if r["problem"] == problem and r["method"] == method]
        reached = [r for r in runs if r["reached"]]
        best = min(reached, key=lambda r: r["gradient_evals"]) if reached else None
        summary.append(
            dict(
                problem=problem,
                method=method,
                kind=runs[0]["kind"],
                settings_tried=len(runs),
                settings_reaching_target=len(reached),
                best_setting=best["setting"] if best else "",
                best_gradient_evals=best["gradient_evals"] if best else "",
                median_gradient_evals_when_reached=int(np.median([r["gradient_evals"] for r in reached])) if reached else "",
            )
        )
    return summary


def plot(rows: list[dict], traces: list[dict], path: Path, budget: int) -> None:
    """Evaluations to the target against the rate (top), the adaptive methods' steps (bottom), per problem."""
    plt = report.pyplot()
    import matplotlib.ticker

    problems = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = plt.subplots(2, len(problems), figsize=(5.2 * len(problems), 8.5), squeeze=False)
    for column, problem in enumerate(problems):
        ax = axes[0, column]
        runs = [r for r in rows if r["problem"] == problem]
        for method in dict.fromkeys(r["method"] for r in runs if r["kind"] == "fixed"):
            points = [(r["setting"], r["gradient_evals"] if r["reached"] else np.nan) for r in runs if r["method"] == method]
            ax.plot(*zip(*points), marker="o", markersize=3, label=method)
        colors = plt.cm.Dark2(np.linspace(0, 1, 8))
        for i, method in enumerate(dict.fromkeys(r["method"] for r in runs if r["kind"] == "adaptive")):
            reached = [r for r in runs if r["method"] == method and r["reached"]]
            if reached:
                best = min(reached, key=lambda r: r["gradient_evals"])
                ax.axhline(best["gradient_evals"], color=colors[i], linestyle="--", label=f"{method}, tol {best['setting']:g}")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="fixed learning rate",
            ylabel="gradient evaluations to target",
            title=f"{problem} (target loss {runs[0]['target_loss']:.3g})",
            ylim=(None, budget),
        )
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=7)
        ax = axes[1, column]
        for trace in traces:
            steps = trace["steps"]
            if trace["problem"] == problem and len(steps):
                ax.plot(
                    np.arange(1, len(steps) + 1), steps, label=f"{trace['method']}, tol {trace['tolerance']:g}", linewidth=0.8
                )
        ax.set(yscale="log", xlabel="update", ylabel="adaptive step size h", title=f"{problem}: chosen steps")
        ax.legend(fontsize=7)
    report.save_figure(fig, path, dpi=130)


# --------------------------------------------------------------------------- the study


def build_problem(name: str, config: dict[str, Any]) -> Problem:
    """Problem ``name`` with its fixed methods' rate grid thinned to every ``rate_stride``-th rate."""
    if name == "logistic":
        problem = logistic_regression()
    else:
        problem = {p.name: p for p in mlp_problems(dataset_name=config.get("dataset", "mnist"))}[name]
    return problem._replace(rates=problem.rates[:: config.get("rate_stride", 1)])


def plan(config: dict[str, Any]) -> list[RunSpec]:
    """One run per problem: every fixed method at every rate, every adaptive one at every tolerance."""
    return [RunSpec(name, {"problem": name}) for name in config["problems"]]


def execute(spec: RunSpec, config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Measure every method on one problem."""
    rows, traces = measure(build_problem(spec.settings["problem"], config), config["budget"], config["tolerances"])
    return {"rows": report.pack(rows), "traces": traces}


def summarize(config: dict[str, Any], results: dict[str, dict[str, Any]], output_dir: Path) -> None:
    """``runs.csv``, ``summary.csv`` and ``adaptive_steps.png``."""
    finished = [results[name] for name in config["problems"] if name in results]
    rows = [row for result in finished for row in report.unpack(result["rows"])]
    report.write_csv(output_dir / "runs.csv", rows)
    report.write_csv(output_dir / "summary.csv", summary_rows(rows))
    if rows:
        plot(rows, [t for result in finished for t in result["traces"]], output_dir / "adaptive_steps.png", config["budget"])


SCHEMA = {
    **runner.COMMON,
    "problems": runner.ListOf(runner.one_of(*PROBLEMS), unique=None),
    "budget": runner.POSITIVE_INT,
    "tolerances": runner.ListOf(runner.POSITIVE),
    "rate_stride": runner.optional(runner.POSITIVE_INT),
    "dataset": runner.optional(runner.one_of("mnist", "synthetic_mnist")),
}

STUDY = Study("adaptive-steps", plan, execute, summarize, SCHEMA)
