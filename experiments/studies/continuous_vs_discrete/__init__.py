"""Continuous vs discrete: how closely full-batch gradient descent follows gradient flow on MNIST networks.

Elkabetz & Cohen, *Continuous vs. Discrete Optimization of Deep Neural
Networks* (NeurIPS 2021), bound the distance between gradient descent with
step ``η`` and the gradient flow ``θ' = -∇f(θ)`` by
``‖θ(t) - θ_{t/η}‖ ≲ η t exp(∫₀ᵗ λ_min⁻(∇²f(θ(t'))) dt')`` and observe that
along the flow of small networks ``λ_min`` is only slightly negative, so GD
stays close to GF. Their experiment, reproduced here: MNIST, 1000 training
examples (every 50th of the first 50,000), cross-entropy, full-batch GD with
``η₀ = 10⁻³`` for 10⁴ iterations, on a bias-free fully connected
784-50-50-10 net (linear and ReLU), a bias-free strided conv net and LeNet-5.

Each **small-step** run records, at the times ``t = kη`` of every
``record_every``-th iterate:

* the training loss and the distance ``‖θ_k - θ_0‖`` from the initialisation;
* the distance to gradient descent with step ``η/r`` (its ``kr``-th iterate),
  for each ``r`` of ``ratios``: the seed's own proxy for the flow;
* the distance to the reference flow of :func:`flowopt.analysis.gradient_flow`
  (Dormand–Prince with error control, the ``r → ∞`` limit);
* ``λ_min`` and ``λ_max`` of the Hessian along the flow (Lanczos on
  Hessian-vector products) and the seed's bound ``η t exp(∫ λ_min⁻ dt)``
  (:func:`flowopt.analysis.gd_error_bound`, without its constant).

Each **large-step** run (edge of stability, Cohen et al., ICLR 2021) does the
same at a step ``η`` for which the sharpness ``λ_max`` rises to ``2/η``,
records the sharpness along gradient descent itself, and adds the distance
to the *modified* flow of ``f + (η/4)‖∇f‖²``
(:func:`flowopt.analysis.modified_value_fn`), which GD follows to second
order in ``η`` while it is stable.

Parameters are one flat float64 vector (the network computes in float32). On CPU gradient descent
runs as a Python loop over a jitted step (XLA:CPU runs convolutions inside
``lax.scan`` several times slower, and the fully connected nets gain nothing
from it); on accelerators it runs as jitted ``lax.fori_loop`` chunks. Every
trajectory checkpoints with the training stack's :class:`Checkpointer`, so
an interrupted run resumes mid-trajectory.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

from experiments import report, runner
from experiments.runner import RunSpec, Study
from experiments.training_runs import get_dataset
from flowopt import analysis
from flowopt.training.checkpoint import Checkpointer
from flowopt.training.data import DATASET_NAMES, normalize
from flowopt.training.loop import make_objective
from flowopt.training.models import MODELS, create_model

# Read off the seed's plots (loss after 10⁴ iterations at η₀ = 10⁻³).
SOURCE_FINAL_LOSS = {"deep_linear": 0.1, "relu_fc": 0.1, "bias_free_cnn": 0.04, "lenet5": 0.03}
SOURCE_DISTANCE_FROM_INIT = (2.6, 3.0)
SOURCE_MAX_DISTANCE_TO_FINER = 0.05
MODEL_LABELS = {
    "deep_linear": "FC 784-50-50-10, linear",
    "relu_fc": "FC 784-50-50-10, ReLU",
    "bias_free_cnn": "conv net, strided, bias-free",
    "lenet5": "LeNet-5, max-pool",
}
REGIMES = ("small_step", "large_step")


class Problem(NamedTuple):
    """The training objective as a function of one flat parameter vector."""

    params0: jax.Array
    value_fn: Partial
    label: str
    num_examples: int


class Trajectory(NamedTuple):
    """Gradient-descent iterates at the record points, and their losses."""

    params: np.ndarray  # (T, n)
    losses: np.ndarray  # (T,)


def training_subset(dataset: str, pool: int, stride: int) -> tuple[np.ndarray, np.ndarray, str, tuple]:
    """Every ``stride``-th of the first ``pool`` training examples, with its label and normalisation."""
    data = get_dataset(dataset)
    if pool > len(data.x_train):
        raise ValueError(f"pool {pool} exceeds the {len(data.x_train)} training examples of {dataset}.")
    images, labels = data.x_train[:pool:stride], data.y_train[:pool:stride]
    label = f"{data.label}, {len(images)} training examples (every {stride}th of the first {pool})"
    return images, labels, label, data.channel_stats()


def make_problem(settings: dict[str, Any]) -> Problem:
    """The cross-entropy of ``settings['model']`` on the training subset, as ``flat θ -> f(θ)``.

    The parameters are a float64 vector (call under ``jax.enable_x64``); the
    network evaluates in float32. Float64 master weights matter here: in
    float32, steps ``η∇f`` below half a unit in the last place of ``θ`` are
    lost, a systematic error that grows with the number of steps and swamps
    the ``O(η)`` differences this study measures (GD at ``η₀/5`` drifts by
    more than its distance to GD at ``η₀``).
    """
    data = settings["data"]
    images, labels, label, (mean, std) = training_subset(data["dataset"], data["pool"], data["stride"])
    model = create_model(settings["model"], input_shape=images.shape[1:], num_classes=10, seed=settings["seed"])
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    params0, unravel = ravel_pytree(params)
    objective = make_objective(graphdef, weight_decay=0.0)

    def loss(x: jax.Array, y: jax.Array, flat: jax.Array) -> jax.Array:
        return objective(unravel(flat.astype(params0.dtype)), model_state, x, y)[0]

    x = normalize(jnp.asarray(images), jnp.asarray(mean), jnp.asarray(std)).astype(params0.dtype)
    return Problem(params0.astype(jnp.float64), Partial(loss, x, jnp.asarray(labels)), label, len(images))


def _use_python_loop() -> bool:
    return jax.default_backend() == "cpu"


def gradient_descent(
    problem: Problem,
    learning_rate: float,
    iterations: int,
    stride: int,
    directory: Path,
    checkpoint_seconds: float,
) -> Trajectory:
    """GD ``θ_{k+1} = θ_k - η∇f(θ_k)`` from ``params0``, keeping every ``stride``-th iterate.

    The finished trajectory is stored as ``directory.npz``; while running,
    the state is checkpointed every ``checkpoint_seconds`` under ``directory``.
    """
    done = directory.with_suffix(".npz")
    if done.is_file():
        with np.load(done) as stored:
            return Trajectory(stored["params"], stored["losses"])
    if iterations % stride:
        raise ValueError(f"iterations {iterations} must be a multiple of the record stride {stride}.")
    points = iterations // stride + 1
    value_fn = problem.value_fn
    lr = jnp.asarray(learning_rate, problem.params0.dtype)
    loss = jax.jit(lambda f, theta: f(theta))

    @jax.jit
    def step(f, theta):
        return theta - lr * jax.grad(f)(theta)

    @jax.jit
    def chunk(f, theta):
        return jax.lax.fori_loop(0, stride, lambda _, t: t - lr * jax.grad(f)(t), theta)

    state = {
        "theta": problem.params0,
        "params": np.zeros((points, problem.params0.size), np.float64),
        "losses": np.zeros(points, np.float64),
    }
    checkpointer = Checkpointer(directory, keep=1)
    start = 0
    if checkpointer.latest_step() is not None:
        state, progress = checkpointer.restore(state)
        state = {k: np.asarray(v) if k != "theta" else jnp.asarray(v) for k, v in state.items()}
        start = progress["point"]
    else:
        state["params"][0] = np.asarray(problem.params0)
        state["losses"][0] = float(loss(value_fn, problem.params0))
    theta, saved = state["theta"], time.perf_counter()
    for point in range(start + 1, points):
        if _use_python_loop():
            for _ in range(stride):
                theta = step(value_fn, theta)
        else:
            theta = chunk(value_fn, theta)
        state["params"][point] = np.asarray(theta)
        state["losses"][point] = float(loss(value_fn, theta))
        if not np.isfinite(state["losses"][point]):
            raise FloatingPointError(f"gradient descent at step {learning_rate} diverged by iteration {point * stride}.")
        if time.perf_counter() - saved > checkpoint_seconds and point < points - 1:
            state["theta"] = theta
            checkpointer.save(point, state, {"point": point})
            saved = time.perf_counter()
    checkpointer.close()
    np.savez(done, params=state["params"], losses=state["losses"])
    shutil.rmtree(directory, ignore_errors=True)
    return Trajectory(state["params"], state["losses"])


def reference_flow(
    value_fn: Callable, params0: jax.Array, times: np.ndarray, options: dict[str, Any], path: Path
) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`flowopt.analysis.gradient_flow` at ``times``, stored as ``path`` once solved."""
    if path.is_file():
        with np.load(path) as stored:
            return stored["params"], json.loads(str(stored["info"]))
    start = time.perf_counter()
    solution = analysis.gradient_flow(value_fn, params0, jnp.asarray(times, params0.dtype), **options)
    params = np.asarray(solution.params)
    info = {
        "steps": int(solution.num_steps),
        "rejected": int(solution.num_rejected),
        "oracle_evals": int(solution.oracle_evals),
        "seconds": time.perf_counter() - start,
    }
    np.savez(path, params=params, info=json.dumps(info))
    return params, info


def extrapolated_flow(coarse: tuple[int, np.ndarray], fine: tuple[int, np.ndarray]) -> np.ndarray:
    """Richardson extrapolation of GD at ``η/r₁`` and ``η/r₂`` to ``η → 0``: ``(r₂θ_{r₂} - r₁θ_{r₁})/(r₂ - r₁)``.

    GD's error is ``C(t)·η/r + O((η/r)²)``, so the combination cancels the
    first-order term; it costs nothing beyond the finer runs and, unlike a
    high-order solver, it does not suffer from the kinks that ReLU
    activations put into the gradient field.
    """
    (r1, theta1), (r2, theta2) = coarse, fine
    return (r2 * theta2 - r1 * theta1) / (r2 - r1)


def _distance(a: np.ndarray, b: np.ndarray) -> list[float]:
    return np.linalg.norm(a.astype(np.float64) - b, axis=1).tolist()


def plan(config: dict[str, Any]) -> list[RunSpec]:
    """One run per regime, model and learning rate; ``overrides[model]`` replaces a block's settings."""
    specs = []
    for regime in REGIMES:
        block = config.get(regime)
        if not block:
            continue
        for model in block["models"]:
            merged = {**block, **block.get("overrides", {}).get(model, {})}
            if merged["iterations"] % merged["record_points"]:
                raise ValueError(f"{regime}/{model}: iterations must be a multiple of record_points.")
            for lr in merged["learning_rates"]:
                settings = {
                    "regime": regime,
                    "model": model,
                    "learning_rate": lr,
                    "seed": config.get("seed", 0),
                    "data": config["data"],
                    "iterations": merged["iterations"],
                    "record_every": merged["iterations"] // merged["record_points"],
                    "ratios": merged.get("ratios", []),
                    "flow": merged["flow"],
                    "modified_flow": regime == "large_step",
                    "spectrum": {**merged["spectrum"], "along": "flow" if regime == "small_step" else "gd"},
                }
                specs.append(RunSpec(f"{regime}-{model}-lr{lr:g}", settings))
    return specs


def execute(spec: RunSpec, config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """GD at η and at η/r, the reference (and modified) flow, the Hessian spectrum, all distances."""
    with jax.enable_x64(True):
        return _execute(spec.settings, config, run_dir)


def _execute(s: dict[str, Any], config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    problem = make_problem(s)
    lr, iterations, every = s["learning_rate"], s["iterations"], s["record_every"]
    checkpoint_seconds = config.get("checkpoint_seconds", 60.0)
    times = np.arange(iterations // every + 1) * every * lr
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    gd = gradient_descent(problem, lr, iterations, every, run_dir / "gd", checkpoint_seconds)
    seconds["gd"] = time.perf_counter() - start
    curves: dict[str, list[float]] = {
        "iteration": (np.arange(len(times)) * every).tolist(),
        "time": times.tolist(),
        "loss": gd.losses.astype(float).tolist(),
        "distance_from_init": _distance(gd.params, gd.params[:1]),
    }
    finest: list[tuple[int, np.ndarray]] = []
    for r in s["ratios"]:
        start = time.perf_counter()
        fine = gradient_descent(problem, lr / r, iterations * r, every * r, run_dir / f"gd_r{r}", checkpoint_seconds)
        seconds[f"gd_r{r}"] = time.perf_counter() - start
        curves[f"distance_to_gd_r{r}"] = _distance(gd.params, fine.params)
        finest = (finest + [(r, fine.params)])[-2:]
    extrapolated = extrapolated_flow(*finest) if len(finest) == 2 else None
    if extrapolated is not None:
        curves["distance_to_extrapolated_flow"] = _distance(gd.params, extrapolated)
    flows: dict[str, dict[str, Any]] = {}
    flow_params = None
    if s["flow"]:
        flow_params, flows["flow"] = reference_flow(problem.value_fn, problem.params0, times, s["flow"], run_dir / "flow.npz")
        curves["distance_to_flow"] = _distance(gd.params, flow_params)
    if s["modified_flow"]:
        modified = analysis.modified_value_fn(problem.value_fn, lr)
        modified_params, flows["modified_flow"] = reference_flow(
            modified, problem.params0, times, s["flow"], run_dir / "modified_flow.npz"
        )
        curves["distance_to_modified_flow"] = _distance(gd.params, modified_params)

    spec_settings = s["spectrum"]
    reference, along_name = (flow_params, "flow") if flow_params is not None else (extrapolated, "extrapolated flow")
    along_flow = spec_settings["along"] == "flow" and reference is not None
    along, along_name = (reference, along_name) if along_flow else (gd.params, "gd")
    index = np.unique(np.linspace(0, len(times) - 1, spec_settings["points"]).round().astype(int))
    start = time.perf_counter()
    extremes = analysis.spectrum_along(problem.value_fn, jnp.asarray(along[index]), spec_settings["lanczos_iterations"])
    lows, highs = extremes.lambda_min.tolist(), extremes.lambda_max.tolist()
    seconds["spectrum"] = time.perf_counter() - start
    bound = analysis.gd_error_bound(jnp.asarray(times[index]), jnp.asarray(lows), lr)
    return {
        "model": s["model"],
        "regime": s["regime"],
        "dataset": problem.label,
        "num_params": int(problem.params0.size),
        "backend": jax.default_backend(),
        "loop": "python" if _use_python_loop() else "fori_loop",
        "curves": curves,
        "spectrum": {
            "along": along_name,
            "iteration": (index * every).tolist(),
            "time": times[index].tolist(),
            "lambda_min": lows,
            "lambda_max": highs,
            "negative_curvature_integral": np.asarray(bound.negative_curvature).tolist(),
            "bound_shape": np.asarray(bound.bound).tolist(),
        },
        "flows": flows,
        "seconds": seconds,
    }


# --------------------------------------------------------------------------- summaries


def _first_time_at_edge(result: dict[str, Any], fraction: float = 0.9) -> float | None:
    """The first iteration at which the sharpness reaches ``fraction · 2/η``, or None."""
    threshold = fraction * 2.0 / result["settings"]["learning_rate"]
    for iteration, high in zip(result["spectrum"]["iteration"], result["spectrum"]["lambda_max"]):
        if high >= threshold:
            return iteration
    return None


def summary_rows(config: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: final loss, distances (max over the run), curvature, cost."""
    rows = []
    for spec in plan(config):
        result = results.get(spec.key)
        if result is None:
            continue
        s, curves, spec_ = result["settings"], result["curves"], result["spectrum"]
        row: dict[str, Any] = {
            "regime": s["regime"],
            "model": s["model"],
            "learning_rate": s["learning_rate"],
            "iterations": s["iterations"],
            "time": curves["time"][-1],
            "final_loss": curves["loss"][-1],
            "distance_from_init": curves["distance_from_init"][-1],
        }
        for r in s["ratios"]:
            row[f"max_distance_to_gd_r{r}"] = max(curves[f"distance_to_gd_r{r}"])
        if "distance_to_extrapolated_flow" in curves:
            row["max_distance_to_extrapolated_flow"] = max(curves["distance_to_extrapolated_flow"])
        for name in ("flow", "modified_flow"):
            if f"distance_to_{name}" in curves:
                row[f"max_distance_to_{name}"] = max(curves[f"distance_to_{name}"])
                row[f"{name}_oracle_evals"] = result["flows"][name]["oracle_evals"]
        row.update(
            spectrum_along=spec_["along"],
            min_lambda_min=min(spec_["lambda_min"]),
            initial_lambda_max=spec_["lambda_max"][0],
            max_lambda_max=max(spec_["lambda_max"]),
            integral_negative_lambda_min=spec_["negative_curvature_integral"][-1],
            bound_shape_final=spec_["bound_shape"][-1],
        )
        if s["regime"] == "large_step":
            row["two_over_eta"] = 2.0 / s["learning_rate"]
            edge = _first_time_at_edge(result)
            row["first_iteration_sharpness_above_0.9x2/eta"] = edge
            if edge is not None:
                before = [i for i, it in enumerate(curves["iteration"]) if it <= edge]
                for name in ("flow", "extrapolated_flow", "modified_flow"):
                    if f"distance_to_{name}" in curves:
                        row[f"max_distance_to_{name}_before_edge"] = max(curves[f"distance_to_{name}"][i] for i in before)
        row["wall_seconds"] = result["wall_seconds"]
        rows.append(row)
    return rows


def _curve_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key, result in sorted(results.items()):
        curves = result["curves"]
        names = [n for n in curves if n not in ("iteration", "time")]
        for i, iteration in enumerate(curves["iteration"]):
            rows.append({"run": key, "iteration": iteration, "time": curves["time"][i], **{n: curves[n][i] for n in names}})
    return rows


def _short(value: float | None) -> str:
    return report.fmt(value, digits=3)


def _with_before_edge(row: dict[str, Any], name: str) -> str:
    """``max (max before the edge)`` of a distance."""
    return f"{_short(row.get(f'max_distance_to_{name}'))} ({_short(row.get(f'max_distance_to_{name}_before_edge'))})"


def markdown(config: dict[str, Any], rows: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> str:
    """The small- and large-step tables, side by side with the seed's numbers."""
    labels = sorted({r["dataset"] for r in results.values()})
    lines = [f"Data: {'; '.join(labels)}. Full-batch GD, cross-entropy; float32 network, float64 parameters.", ""]
    small = [r for r in rows if r["regime"] == "small_step"]
    if small:
        ratios = config["small_step"].get("ratios", [])
        lines += [
            f"### Small step (η₀ = {', '.join(f'{lr:g}' for lr in config['small_step']['learning_rates'])}): "
            "GD vs GD at η₀/r and vs the reference flow",
            "",
        ]
        lines += report.markdown_table(
            [
                "model",
                "iterations",
                "final loss (seed)",
                "‖θ−θ₀‖ (seed 2.6–3.0)",
                *(f"max dist. to η₀/{r}" for r in ratios),
                "max dist. to extrapolated flow",
                "max dist. to toolkit flow",
                "min λ_min",
                "max λ_max",
                "∫λ_min⁻ dt",
            ],
            (
                [
                    MODEL_LABELS[r["model"]],
                    r["iterations"],
                    f"{_short(r['final_loss'])} ({_short(SOURCE_FINAL_LOSS[r['model']])})",
                    _short(r["distance_from_init"]),
                    *(_short(r.get(f"max_distance_to_gd_r{k}")) for k in ratios),
                    *(_short(r.get(key)) for key in ("max_distance_to_extrapolated_flow", "max_distance_to_flow")),
                    *(_short(r[key]) for key in ("min_lambda_min", "max_lambda_max", "integral_negative_lambda_min")),
                ]
                for r in small
            ),
        )
        lines.append("")
    large = [r for r in rows if r["regime"] == "large_step"]
    if large:
        lines += [
            "### Large step (edge of stability): sharpness along GD, distance to the flow and to the modified flow",
            "",
        ]
        lines += report.markdown_table(
            [
                "model",
                "η",
                "2/η",
                "iterations",
                "final loss",
                "λ_max at init / max along GD",
                "first iteration λ_max ≥ 0.9·2/η",
                "max dist. to extrapolated flow (before that)",
                "max dist. to toolkit flow (before that)",
                "max dist. to modified flow (before that)",
            ],
            (
                [
                    MODEL_LABELS[r["model"]],
                    f"{r['learning_rate']:g}",
                    _short(r["two_over_eta"]),
                    r["iterations"],
                    _short(r["final_loss"]),
                    f"{_short(r['initial_lambda_max'])} / {_short(r['max_lambda_max'])}",
                    edge if (edge := r["first_iteration_sharpness_above_0.9x2/eta"]) is not None else "not reached",
                    *(_with_before_edge(r, name) for name in ("extrapolated_flow", "flow", "modified_flow")),
                ]
                for r in large
            ),
        )
        lines.append("")
    return "\n".join(lines)


def plot(config: dict[str, Any], results: dict[str, dict[str, Any]], output_dir: Path) -> None:
    """``small_step.png`` (loss, distances, λ_min per model) and ``large_step.png`` (per run)."""
    plt = report.pyplot()
    for regime in REGIMES:
        runs = [
            (spec.key, results[spec.key]) for spec in plan(config) if spec.settings["regime"] == regime and spec.key in results
        ]
        if not runs:
            continue
        fig, axes = plt.subplots(3, len(runs), figsize=(4.2 * len(runs), 10), squeeze=False)
        for column, (_, result) in enumerate(runs):
            s, curves, spec_ = result["settings"], result["curves"], result["spectrum"]
            iterations = np.asarray(curves["iteration"])
            title = f"{MODEL_LABELS[s['model']]}\nη = {s['learning_rate']:g}"
            ax = axes[0, column]
            ax.semilogy(iterations, curves["loss"], color="k")
            if regime == "small_step":
                ax.axhline(SOURCE_FINAL_LOSS[s["model"]], ls=":", color="0.5", label="seed's final loss")
                ax.legend(fontsize=8)
            ax.set_title(title, fontsize=9)
            ax.set_ylabel("training loss")
            ax = axes[1, column]
            ax.semilogy(iterations[1:], curves["distance_from_init"][1:], color="k", label="‖θ_k − θ_0‖")
            for r in s["ratios"]:
                ax.semilogy(iterations[1:], curves[f"distance_to_gd_r{r}"][1:], label=f"to GD at η/{r}")
            for name, style, color in (("extrapolated_flow", "-.", "C8"), ("flow", "--", "C7"), ("modified_flow", ":", "C9")):
                if f"distance_to_{name}" in curves:
                    label = f"toolkit flow ({s['flow']['method']})" if name == "flow" else name.replace("_", " ")
                    ax.semilogy(
                        iterations[1:], curves[f"distance_to_{name}"][1:], ls=style, color=color, lw=2, label=f"to the {label}"
                    )
            ax.set_ylabel("distance")
            ax.legend(fontsize=7)
            ax = axes[2, column]
            spectrum_iterations = np.asarray(spec_["iteration"])
            if regime == "small_step":
                ax.plot(spectrum_iterations, spec_["lambda_min"], "o-", label=f"λ_min along the {spec_['along']}")
                ax.axhline(0.0, color="0.5", lw=0.8)
                ax.set_ylabel("λ_min(∇²f)")
            else:
                ax.plot(spectrum_iterations, spec_["lambda_max"], "o-", label="λ_max along GD")
                ax.axhline(2.0 / s["learning_rate"], ls="--", color="r", label="2/η")
                ax.set_ylabel("sharpness")
            ax.legend(fontsize=8)
            ax.set_xlabel("iteration k (t = kη)")
        report.save_figure(fig, output_dir / f"{regime}.png", dpi=80)


def summarize(config: dict[str, Any], results: dict[str, dict[str, Any]], output_dir: Path) -> None:
    """``summary.csv``, ``summary.md``, ``curves.csv``, ``spectrum.csv``, ``summary.json`` and the figures."""
    rows = summary_rows(config, results)
    report.write_csv(output_dir / "summary.csv", rows)
    report.write_csv(output_dir / "curves.csv", _curve_rows(results))
    spectra = [
        {
            "run": key,
            "iteration": it,
            "time": t,
            "lambda_min": lo,
            "lambda_max": hi,
            "negative_curvature_integral": neg,
            "bound_shape": b,
        }
        for key, r in sorted(results.items())
        for it, t, lo, hi, neg, b in zip(
            *(
                r["spectrum"][k]
                for k in ("iteration", "time", "lambda_min", "lambda_max", "negative_curvature_integral", "bound_shape")
            )
        )
    ]
    report.write_csv(output_dir / "spectrum.csv", spectra)
    (output_dir / "summary.md").write_text(markdown(config, rows, results))
    report.write_json(
        output_dir / "summary.json",
        {
            "rows": rows,
            "source": {
                "final_loss": SOURCE_FINAL_LOSS,
                "distance_from_init": SOURCE_DISTANCE_FROM_INIT,
                "max_distance_to_finer": SOURCE_MAX_DISTANCE_TO_FINER,
            },
        },
    )
    plot(config, results, output_dir)


_FLOW = runner.MapOf(runner.ANY)  # keyword arguments of analysis.gradient_flow, checked by check_run
_BLOCK = {
    "models": runner.ListOf(runner.one_of(*MODELS)),
    "learning_rates": runner.ListOf(runner.POSITIVE),
    "iterations": runner.POSITIVE_INT,
    "record_points": runner.POSITIVE_INT,
    "ratios": runner.optional(
        runner.ListOf(runner.satisfies("an integer ≥ 2", lambda v: runner.POSITIVE_INT.test(v) and v >= 2), min_length=0)
    ),
    "flow": runner.Nullable(_FLOW),
    "spectrum": {"points": runner.POSITIVE_INT, "lanczos_iterations": runner.POSITIVE_INT},
}
_OVERRIDE = {key: runner.optional(value) for key, value in _BLOCK.items() if key != "models"}
SCHEMA = {
    **runner.COMMON,
    "checkpoint_seconds": runner.optional(runner.POSITIVE),
    "data": {"dataset": runner.one_of(*DATASET_NAMES), "pool": runner.POSITIVE_INT, "stride": runner.POSITIVE_INT},
    **{
        regime: runner.optional(
            {**_BLOCK, "overrides": runner.optional(runner.MapOf(_OVERRIDE, keys=runner.one_of(*MODELS)))}, nullable=True
        )
        for regime in REGIMES
    },
}


def run_config(spec: RunSpec, config: dict[str, Any]) -> dict[str, Any]:
    """Everything a run's result depends on: its settings hold all of it (checkpoint_seconds changes nothing)."""
    return dict(spec.settings)


def check_run(spec: RunSpec, config: dict[str, Any]) -> None:
    """Flow options gradient_flow does not take, a large step without a flow, before any run starts."""
    import inspect

    flow = spec.settings["flow"]
    if flow is None and spec.settings["modified_flow"]:
        raise ValueError(f"{spec.settings['regime']}: flow must be set: the large-step runs integrate the modified flow.")
    if flow is not None:
        valid = [
            k
            for k, p in inspect.signature(analysis.gradient_flow).parameters.items()
            if p.kind is p.KEYWORD_ONLY and k != "grad_fn"
        ]
        unknown = sorted(set(flow) - set(valid))
        if unknown:
            raise ValueError(f"{spec.settings['regime']}: flow has unknown option(s) {unknown}; valid: {valid}.")


STUDY = Study("continuous-vs-discrete", plan, execute, summarize, SCHEMA, run_config, check_run)
