"""Gradient descent against gradient flow on a small ReLU network (Elkabetz & Cohen, NeurIPS 2021).

For each step size ``η`` the GD iterates ``θ_k`` are compared with the flow
``θ(kη)`` (adaptive Dormand–Prince, rtol 1e-9) and with the modified flow of
``f + (η/4)‖∇f‖²``; along the flow the extreme Hessian eigenvalues give the
seed's bound shape ``η t exp(∫₀ᵗ λ_min⁻ dt')``. The seed's cheap reference
(GD at ``η/r``, every ``r``-th iterate) is measured against the adaptive one.

:func:`measure` gives the rows of ``gf_gd_relu.csv`` (per η and t:
distances, bound, ∫λ_min⁻), ``gf_gd_relu_summary.csv`` (slopes, ratios) and
``gf_gd_relu_spectrum.csv`` (λ_min, λ_max along the flow); :func:`plot` draws
``gf_gd_relu.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import report
from flowopt import analysis


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


def measure(horizon: float, etas: list[float], spectrum_every: float, refinement: int) -> dict[str, Any]:
    """GD at each η against the flow up to time ``horizon``; call under ``jax.enable_x64``.

    ``spectrum_every``: flow time between Lanczos runs; ``refinement``: r of
    the cheap reference (GD at η/r). Returns ``{"rows", "summary", "spectrum"}``.
    """
    loss, params0 = relu_problem()
    size = sum(leaf.size for leaf in jax.tree.leaves(params0))
    etas = sorted(etas, reverse=True)
    finest = etas[-1]
    fine_steps = int(round(horizon / finest))
    times = analysis.step_times(finest, fine_steps)
    flow = analysis.gradient_flow(loss, params0, times, rtol=1e-9, atol=1e-11)
    every = int(round(spectrum_every / finest))
    spectrum_times = np.asarray(times[::every])
    spectrum = analysis.spectrum_along(loss, jax.tree.map(lambda x: x[::every], flow.params), num_iterations=size)

    rows, summary = [], []
    for eta in etas:
        steps, stride = int(round(horizon / eta)), int(round(eta / finest))
        iterates = analysis.optimizer_trajectory(optax.sgd(eta), loss, params0, steps)
        on_grid = lambda tree: jax.tree.map(lambda x: x[::stride], tree)
        flow_on_grid = on_grid(flow.params)
        step_times = analysis.step_times(eta, steps)
        distance = np.asarray(analysis.trajectory_distance(iterates, flow_on_grid))
        modified = analysis.gradient_flow(analysis.modified_value_fn(loss, eta), params0, times, rtol=1e-9, atol=1e-11)
        distance_modified = np.asarray(analysis.trajectory_distance(iterates, on_grid(modified.params)))
        cheap = analysis.gradient_flow(loss, params0, step_times, method="gd", substeps=refinement)
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
                {
                    "eta": eta,
                    "t": round(float(t), 10),
                    "distance_to_flow": float(d),
                    "distance_to_modified_flow": float(dm),
                    "bound_eta_t_exp_integral": float(b),
                    "integral_lambda_min_negative": float(integral),
                }
            )
        summary.append(
            {
                "eta": eta,
                "distance_at_T": float(distance[-1]),
                "max_distance": float(distance.max()),
                "distance_to_modified_at_T": float(distance_modified[-1]),
                "bound_at_T": float(bound.bound[-1]),
                "distance_over_bound_at_T": float(distance[-1]) / float(bound.bound[-1]),
                f"cheap_reference_r{refinement}_error_at_T": float(cheap_error[-1]),
            }
        )
    log_eta = np.log(etas)
    slopes = {
        key: float(np.polyfit(log_eta, np.log([s[key] for s in summary]), 1)[0])
        for key in ("distance_at_T", "max_distance", "distance_to_modified_at_T")
    }
    for entry in summary:
        entry.update({f"slope_{k}": v for k, v in slopes.items()})
    spectrum_rows = [
        {"t": float(t), "lambda_min": float(lo), "lambda_max": float(hi)}
        for t, lo, hi in zip(spectrum_times, spectrum.lambda_min, spectrum.lambda_max)
    ]
    return {"rows": rows, "summary": summary, "spectrum": spectrum_rows}


def plot(path: Path, rows: list[dict], summary: list[dict], spectrum: list[dict]) -> None:
    """GD–GF distances rescaled by η, their maxima against η, and the Hessian extremes along the flow."""
    plt = report.pyplot()
    import matplotlib.ticker

    etas = [entry["eta"] for entry in summary]
    slopes = {key[len("slope_") :]: value for key, value in summary[0].items() if key.startswith("slope_")}
    times = [point["t"] for point in spectrum]
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.6), layout="constrained")
    colors = plt.colormaps["viridis"](np.linspace(0, 0.9, len(etas)))
    for eta, color in zip(etas, colors):
        mine = [r for r in rows if r["eta"] == eta]
        t = [r["t"] for r in mine]
        left.plot(t, [r["distance_to_flow"] / eta for r in mine], color=color, label=f"η = {eta:g}")
        left.plot(t, [r["distance_to_modified_flow"] / eta**2 for r in mine], color=color, linestyle=":")
    shape = [r["bound_eta_t_exp_integral"] / r["eta"] for r in rows if r["eta"] == etas[0]]
    left.plot(times, shape, color="black", linestyle="--", label="t·exp(∫λ_min⁻) (bound / η)")
    left.set(
        xlabel="t",
        ylabel="distance / η  (dotted: to the modified flow, / η²)",
        yscale="log",
        title="GD vs gradient flow, rescaled: curves collapse",
    )
    left.legend(fontsize="small")
    maxima = [max(r["distance_to_flow"] for r in rows if r["eta"] == eta) for eta in etas]
    modified = [max(r["distance_to_modified_flow"] for r in rows if r["eta"] == eta) for eta in etas]
    middle.loglog(etas, maxima, "o-", label=f"to the flow, max over t (slope {slopes['max_distance']:.2f})")
    middle.loglog(etas, modified, "s:", label="to the modified flow, max over t")
    middle.set_xticks(etas, [f"{eta:g}" for eta in etas], minor=False)
    middle.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    middle.set(xlabel="η", ylabel="distance", title="GD–GF distance is first order in η")
    middle.legend(fontsize="small")
    right.plot(times, [point["lambda_min"] for point in spectrum], label="λ_min(∇²f(θ(t)))")
    right.plot(times, [point["lambda_max"] for point in spectrum], label="λ_max")
    right.axhline(0.0, color="0.6", linewidth=0.6)
    right.set(xlabel="t", title="Hessian extremes along the flow (Lanczos)")
    right.legend(fontsize="small")
    report.save_figure(figure, path, tight=False)
