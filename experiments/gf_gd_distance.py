"""Gradient descent against gradient flow on a small ReLU network (Elkabetz & Cohen, NeurIPS 2021).

For each step size ``η`` the GD iterates ``θ_k`` are compared with the flow
``θ(kη)`` (adaptive Dormand–Prince, rtol 1e-9) and with the modified flow of
``f + (η/4)‖∇f‖²``; along the flow the extreme Hessian eigenvalues give the
seed's bound shape ``η t exp(∫₀ᵗ λ_min⁻ dt')``. The seed's cheap reference
(GD at ``η/r``, every ``r``-th iterate) is measured against the adaptive one.

Writes ``gf_gd_relu.csv`` (per η and t: distances, bound, ∫λ_min⁻),
``gf_gd_relu_spectrum.csv`` (λ_min, λ_max along the flow),
``gf_gd_relu_summary.csv`` (slopes, ratios) and ``gf_gd_relu.png``::

    python experiments/gf_gd_distance.py --output-dir results/analysis
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from experiments.tables import write_csv
from flowopt import analysis  # noqa: E402


def relu_problem(hidden: int = 10, samples: int = 24, seed: int = 0):
    """A 3-``hidden``-1 ReLU regression net on Gaussian inputs, ``y = sin(2x₁)x₂``."""
    k = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(k[0], (samples, 3))
    y = jnp.sin(2 * x[:, :1]) * x[:, 1:2]
    params0 = {
        "w1": jax.random.normal(k[1], (3, hidden)) / np.sqrt(3),
        "b1": 0.1 * jnp.ones(hidden),
        "w2": jax.random.normal(k[2], (hidden, 1)) / np.sqrt(hidden),
        "b2": jnp.zeros(1),
    }

    def loss(p):
        return 0.5 * jnp.mean((jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"] - y) ** 2)

    return loss, params0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("results/analysis"))
    parser.add_argument("--horizon", type=float, default=4.0, help="flow time T (the flow slides on a kink near 4.7)")
    parser.add_argument("--etas", type=float, nargs="+", default=[0.2, 0.1, 0.05, 0.025, 0.0125])
    parser.add_argument("--spectrum-every", type=float, default=0.1, help="flow time between Lanczos runs")
    parser.add_argument("--refinement", type=int, default=8, help="r of the cheap reference (GD at η/r)")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)

    loss, params0 = relu_problem()
    size = sum(leaf.size for leaf in jax.tree.leaves(params0))
    etas = sorted(args.etas, reverse=True)
    finest = etas[-1]
    fine_steps = int(round(args.horizon / finest))
    times = analysis.step_times(finest, fine_steps)
    flow = analysis.gradient_flow(loss, params0, times, rtol=1e-9, atol=1e-11)
    print(f"flow: {int(flow.num_steps)} steps, {int(flow.num_rejected)} rejected, {int(flow.oracle_evals)} gradients")
    every = int(round(args.spectrum_every / finest))
    spectrum_times = np.asarray(times[::every])
    spectrum = analysis.spectrum_along(loss, jax.tree.map(lambda x: x[::every], flow.params), num_iterations=size)

    rows, summary = [], []
    for eta in etas:
        steps, stride = int(round(args.horizon / eta)), int(round(eta / finest))
        iterates = analysis.optimizer_trajectory(optax.sgd(eta), loss, params0, steps)
        on_grid = lambda tree: jax.tree.map(lambda x: x[::stride], tree)
        flow_on_grid = on_grid(flow.params)
        step_times = analysis.step_times(eta, steps)
        distance = np.asarray(analysis.trajectory_distance(iterates, flow_on_grid))
        modified = analysis.gradient_flow(analysis.modified_value_fn(loss, eta), params0, times, rtol=1e-9, atol=1e-11)
        distance_modified = np.asarray(analysis.trajectory_distance(iterates, on_grid(modified.params)))
        cheap = analysis.gradient_flow(loss, params0, step_times, method="gd", substeps=args.refinement)
        cheap_error = np.asarray(analysis.trajectory_distance(cheap.params, flow_on_grid))
        bound = analysis.gd_error_bound(spectrum_times, spectrum.lambda_min, eta)
        step_times = np.asarray(step_times)
        for t, d, dm, b, integral in zip(
            spectrum_times,
            np.interp(spectrum_times, step_times, distance),
            np.interp(spectrum_times, step_times, distance_modified),
            np.asarray(bound.bound),
            np.asarray(bound.negative_curvature),
        ):
            rows.append(
                {"eta": eta, "t": round(float(t), 10), "distance_to_flow": d, "distance_to_modified_flow": dm,
                 "bound_eta_t_exp_integral": b, "integral_lambda_min_negative": integral}
            )  # fmt: skip
        summary.append(
            {"eta": eta, "distance_at_T": distance[-1], "max_distance": distance.max(),
             "distance_to_modified_at_T": distance_modified[-1], "bound_at_T": float(bound.bound[-1]),
             "distance_over_bound_at_T": distance[-1] / float(bound.bound[-1]),
             f"cheap_reference_r{args.refinement}_error_at_T": cheap_error[-1]}
        )  # fmt: skip
        print(f"eta={eta:<8g} |θ(T)-θ_T/η|={distance[-1]:.4g}  modified={distance_modified[-1]:.4g}  "
              f"bound shape={float(bound.bound[-1]):.4g}  cheap ref error={cheap_error[-1]:.3g}")  # fmt: skip
    log_eta = np.log(etas)
    slopes = {
        key: float(np.polyfit(log_eta, np.log([s[key] for s in summary]), 1)[0])
        for key in ("distance_at_T", "max_distance", "distance_to_modified_at_T")
    }
    print("log-log slopes in η:", {k: round(v, 3) for k, v in slopes.items()})
    integral, lowest = float(bound.negative_curvature[-1]), float(spectrum.lambda_min.min())
    print(f"∫λ_min⁻ dt up to T = {integral:.4f}; min λ_min = {lowest:.4f}")
    for entry in summary:
        entry.update({f"slope_{k}": v for k, v in slopes.items()})

    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_csv(args.output_dir / "gf_gd_relu.csv", rows)
    write_csv(args.output_dir / "gf_gd_relu_summary.csv", summary)
    write_csv(
        args.output_dir / "gf_gd_relu_spectrum.csv",
        [{"t": float(t), "lambda_min": float(lo), "lambda_max": float(hi)}
         for t, lo, hi in zip(spectrum_times, spectrum.lambda_min, spectrum.lambda_max)],
    )  # fmt: skip
    plot(args.output_dir / "gf_gd_relu.png", rows, etas, spectrum_times, spectrum, slopes)
    print(f"wrote {args.output_dir}")


def plot(path: Path, rows: list[dict], etas: list[float], times: np.ndarray, spectrum, slopes: dict) -> None:
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.6), layout="constrained")
    colors = plt.colormaps["viridis"](np.linspace(0, 0.9, len(etas)))
    for eta, color in zip(etas, colors):
        mine = [r for r in rows if r["eta"] == eta]
        t = [r["t"] for r in mine]
        left.plot(t, [r["distance_to_flow"] / eta for r in mine], color=color, label=f"η = {eta:g}")
        left.plot(t, [r["distance_to_modified_flow"] / eta**2 for r in mine], color=color, linestyle=":")
    shape = [r["bound_eta_t_exp_integral"] / r["eta"] for r in rows if r["eta"] == etas[0]]
    left.plot(times, shape, color="black", linestyle="--", label="t·exp(∫λ_min⁻) (bound / η)")
    left.set(xlabel="t", ylabel="distance / η  (dotted: to the modified flow, / η²)", yscale="log",
             title="GD vs gradient flow, rescaled: curves collapse")  # fmt: skip
    left.legend(fontsize="small")
    maxima = [max(r["distance_to_flow"] for r in rows if r["eta"] == eta) for eta in etas]
    modified = [max(r["distance_to_modified_flow"] for r in rows if r["eta"] == eta) for eta in etas]
    middle.loglog(etas, maxima, "o-", label=f"to the flow, max over t (slope {slopes['max_distance']:.2f})")
    middle.loglog(etas, modified, "s:", label="to the modified flow, max over t")
    middle.set_xticks(etas, [f"{eta:g}" for eta in etas], minor=False)
    middle.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    middle.set(xlabel="η", ylabel="distance", title="GD–GF distance is first order in η")
    middle.legend(fontsize="small")
    right.plot(times, spectrum.lambda_min, label="λ_min(∇²f(θ(t)))")
    right.plot(times, spectrum.lambda_max, label="λ_max")
    right.axhline(0.0, color="0.6", linewidth=0.6)
    right.set(xlabel="t", title="Hessian extremes along the flow (Lanczos)")
    right.legend(fontsize="small")
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
