"""Figures 2 and 3 of Belotto da Silva & Gazeau on ``f(x, y) = (x + y)⁴ + (x/2 - y/2)⁴`` from (0.5, -2.5).

Figure 2: gradient descent against Adam with large β's at the same learning
rate. Adam's second moment remembers the large early gradients, so its
steps ``s m/sqrt(v + ε)`` shrink long before the gradient does, and gradient
descent reaches a lower loss.

Figure 3: Adam at fixed β's for several learning rates ``s``. Since
``βᵢ = e^{-s/αᵢ}``, fixing the β's moves the ODE with ``s`` (its memory
``αᵢ = -s/ln βᵢ`` shrinks with ``s``), so the trajectories differ at equal
time ``t = ks``; the error is measured against the smallest rate. The third
panel fixes the ODE instead (``adam_flow(s, reference_learning_rate=λ)``):
the Euler trajectories then converge to one flow, with error ∝ s, measured
against an RK4 solution of that flow. All runs in float64.

Writes :data:`FILES` into the ``figures`` run of the adam-ode study, which
copies them to ``results/adam-ode/<config>/`` (``summary.csv`` as
``figures_summary.csv``)::

    flowopt-experiment adam-ode --config cpu
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flowopt
from experiments import report
from flowopt import tableaus

START = (0.5, -2.5)
SEED_EPS = {"eps": 0.0, "eps_root": 1e-8}  # the seed's ε, inside the square root
FIG2_LR, FIG2_STEPS, FIG2_BETAS = 0.01, 2000, (0.99, 0.9999)
FIG3_BETAS, FIG3_HORIZON = (0.9, 0.999), 10.0
FIG3_RATES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)
FIG3_ODE_RATE = 0.05  # λ of the fixed ODE in the third panel
FIG3_ODE_REFERENCE_STEP = 0.0005
MAX_ROWS_PER_RUN = 250
FILES = ("fig2_paths.csv", "fig3_paths.csv", "fig3_errors.csv", "summary.csv", "adam_ode_fig2.png", "adam_ode_fig3.png")


def quartic(theta: jax.Array) -> jax.Array:
    x, y = theta[0], theta[1]
    return (x + y) ** 4 + (x / 2 - y / 2) ** 4


def run(tx: optax.GradientTransformationExtraArgs, steps: int) -> dict[str, np.ndarray]:
    """θ_0..θ_steps and their losses; per step k < steps the gradient at θ_k and the ``v`` used from θ_k."""

    def step(carry, _):
        theta, state = carry
        grads = jax.grad(quartic)(theta)
        updates, state = tx.update(grads, state, theta, value_fn=quartic)
        v = state.v if isinstance(getattr(state, "stage_state", None), flowopt.AdaptiveFlowState) else jnp.full(2, jnp.nan)
        theta = optax.apply_updates(theta, updates)
        return (theta, state), (theta, grads, v)

    theta0 = jnp.asarray(START)
    _, (path, grads, v) = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), length=steps))(theta0)
    theta = np.concatenate([np.asarray(theta0)[None], np.asarray(path)])
    return {
        "theta": theta,
        "loss": np.asarray(jax.vmap(quartic)(jnp.asarray(theta))),
        "grad": np.asarray(grads),
        "v": np.asarray(v),
    }


def figure2() -> dict[str, dict[str, np.ndarray]]:
    b1, b2 = FIG2_BETAS
    return {
        "gd": run(flowopt.euler(FIG2_LR), FIG2_STEPS),
        "adam": run(flowopt.adam_flow(FIG2_LR, b1, b2, **SEED_EPS), FIG2_STEPS),
    }


def figure3() -> tuple[dict[str, dict[float, np.ndarray]], dict[str, dict[float, np.ndarray]]]:
    """Paths on the time grid ``t = ks`` and their errors, for fixed β's and for the fixed ODE."""
    b1, b2 = FIG3_BETAS
    paths = {"fixed_betas": {}, "fixed_ode": {}}
    for s in FIG3_RATES:
        steps = round(FIG3_HORIZON / s)
        paths["fixed_betas"][s] = run(flowopt.adam_flow(s, b1, b2, **SEED_EPS), steps)["theta"]
        tx = flowopt.adam_flow(s, b1, b2, **SEED_EPS, init_from_gradient=True, reference_learning_rate=FIG3_ODE_RATE)
        paths["fixed_ode"][s] = run(tx, steps)["theta"]
    reference_step = FIG3_ODE_REFERENCE_STEP
    tx = flowopt.adam_flow(reference_step, b1, b2, **SEED_EPS, integrator=tableaus.RK4, reference_learning_rate=FIG3_ODE_RATE)
    ode = run(tx, round(FIG3_HORIZON / reference_step))["theta"]
    finest = paths["fixed_betas"][min(FIG3_RATES)]
    errors = {"fixed_betas": {}, "fixed_ode": {}}
    for s in FIG3_RATES:
        if s != min(FIG3_RATES):
            errors["fixed_betas"][s] = _distance_on_grid(paths["fixed_betas"][s], finest, s, min(FIG3_RATES))
        errors["fixed_ode"][s] = _distance_on_grid(paths["fixed_ode"][s], ode, s, reference_step)
    return paths, errors


def _distance_on_grid(path: np.ndarray, reference: np.ndarray, step: float, reference_step: float) -> np.ndarray:
    """|θ_k - θ_ref(ks)|: the reference's step divides ``step``."""
    stride = round(step / reference_step)
    return np.linalg.norm(path - reference[::stride][: len(path)], axis=1)


def _row(*values) -> list:
    """CSV cells, floats to 7 significant digits."""
    return [f"{v:.7g}" if isinstance(v, (float, np.floating)) else v for v in values]


def _subsample(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, MAX_ROWS_PER_RUN)).round().astype(int))


def _write(path: Path, columns: list[str], rows: Iterable[tuple]) -> None:
    report.write_csv(path, (dict(zip(columns, _row(*row))) for row in rows))


def write_csvs(output: Path, fig2: dict, fig3_paths: dict, fig3_errors: dict) -> list[list]:
    _write(
        output / "fig2_paths.csv",
        ["method", "step", "x", "y", "loss", "grad_x", "grad_y", "sqrt_v_x", "sqrt_v_y"],
        (
            (method, k, *result["theta"][k], result["loss"][k], *result["grad"][k], *np.sqrt(result["v"][k]))
            for method, result in fig2.items()
            for k in _subsample(len(result["theta"]) - 1)
        ),
    )
    _write(
        output / "fig3_paths.csv",
        ["mode", "learning_rate", "step", "time", "x", "y"],
        (
            (mode, s, k, k * s, *path[k])
            for mode, by_rate in fig3_paths.items()
            for s, path in by_rate.items()
            for k in _subsample(len(path))
        ),
    )
    _write(
        output / "fig3_errors.csv",
        ["mode", "learning_rate", "step", "time", "error"],
        (
            (mode, s, k, k * s, error[k])
            for mode, by_rate in fig3_errors.items()
            for s, error in by_rate.items()
            for k in _subsample(len(error))
        ),
    )
    rates = np.array(FIG3_RATES)
    ode_errors = np.array([fig3_errors["fixed_ode"][s].max() for s in FIG3_RATES])
    summary = [
        ["fig2 final loss gd", fig2["gd"]["loss"][-1]],
        ["fig2 final loss adam", fig2["adam"]["loss"][-1]],
        [
            "fig2 adam final sqrt(v)/|grad| (min over coordinates)",
            float(np.min(np.sqrt(fig2["adam"]["v"][-1]) / np.abs(fig2["adam"]["grad"][-1]))),
        ],
        *[[f"fig3 fixed betas max error s={s}", error.max()] for s, error in fig3_errors["fixed_betas"].items()],
        *[[f"fig3 fixed ode max error s={s}", e] for s, e in zip(FIG3_RATES, ode_errors)],
        ["fig3 fixed ode error order (log-log slope)", float(np.polyfit(np.log(rates), np.log(ode_errors), 1)[0])],
    ]
    _write(output / "summary.csv", ["quantity", "value"], summary)
    return summary


def plot(output: Path, fig2: dict, fig3_paths: dict, fig3_errors: dict) -> None:
    plt = report.pyplot()
    grid = np.linspace(-3.0, 3.0, 241)
    xx, yy = np.meshgrid(grid, grid)
    levels = np.logspace(-3, 2.5, 14)

    def contours(ax):
        ax.contour(xx, yy, quartic(np.stack([xx, yy])), levels=levels, colors="0.8", linewidths=0.7)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_aspect("equal")

    b1, b2 = FIG2_BETAS
    labels = {"gd": f"gradient descent, s={FIG2_LR}", "adam": f"Adam, s={FIG2_LR}, β1={b1}, β2={b2}"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    contours(axes[0])
    for method, result in fig2.items():
        axes[0].plot(*result["theta"].T, lw=1.2, label=labels[method])
        axes[1].semilogy(result["loss"], label=labels[method])
    axes[0].plot(*START, "ko")
    axes[0].set_xlim(-1.2, 1.6)
    axes[0].set_ylim(-2.8, 1.2)
    axes[0].set_title("trajectories from (0.5, -2.5)")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("step k")
    axes[1].set_ylabel("f(θ_k)")
    axes[1].set_title("loss")
    adam = fig2["adam"]
    for i, name in enumerate("xy"):
        axes[2].semilogy(np.sqrt(adam["v"][:, i]), label=f"Adam sqrt(v_{name})", color=f"C{i}")
        axes[2].semilogy(np.abs(adam["grad"][:, i]), ls=":", label=f"|∂f/∂{name}|", color=f"C{i}")
    axes[2].set_xlabel("step k")
    axes[2].set_title("Adam's memory: sqrt(v) against the current gradient")
    axes[2].legend(fontsize=8)
    report.save_figure(fig, output / "adam_ode_fig2.png", dpi=90)

    b1, b2 = FIG3_BETAS
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    contours(axes[0])
    for s, path in fig3_paths["fixed_betas"].items():
        axes[0].plot(*path.T, lw=1.0, label=f"s={s}")
    axes[0].plot(*START, "ko")
    axes[0].set_xlim(-1.2, 1.6)
    axes[0].set_ylim(-2.8, 1.2)
    axes[0].set_title(f"Adam, β1={b1}, β2={b2} fixed")
    axes[0].legend(fontsize=8)
    for s, error in fig3_errors["fixed_betas"].items():
        axes[1].semilogy(np.arange(len(error))[1:] * s, error[1:], label=f"s={s}")
    axes[1].set_title(f"fixed β's: |θ_s(t) - θ_{{s={min(FIG3_RATES)}}}(t)|")
    axes[2].set_title(f"fixed ODE (λ={FIG3_ODE_RATE}): |θ_s(t) - θ(t)|, θ by RK4")
    for s, error in fig3_errors["fixed_ode"].items():
        axes[2].semilogy(np.arange(len(error))[1:] * s, error[1:], label=f"s={s}")
    for ax in axes[1:]:
        ax.set_xlabel("time t = ks")
        ax.legend(fontsize=8)
    report.save_figure(fig, output / "adam_ode_fig3.png", dpi=90)
