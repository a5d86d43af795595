"""The figures of the stabilized study: evaluations against κ, loss curves, stability polynomials, MLP rates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from experiments import report
from flowopt.rk.chebyshev import chebyshev_method

STABILITY_STAGES = (5, 10, 20)
STABILITY_METHODS = ((1, 0.05), (1, 0.5), (1, 2.0), (2, 2.0 / 13.0))
"""(order, ε) of the polynomials drawn for each ``s`` of :data:`STABILITY_STAGES`."""


def evaluations_vs_kappa(path: Path, tables: list[list[dict[str, Any]]], rkc_s20: dict[float, int | None]) -> None:
    """Best evaluations to the target against κ (log-log), with ``√κ`` and ``κ`` reference slopes."""
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    methods = list(dict.fromkeys(e["method"] for t in tables for e in t))
    for index, method in enumerate(methods):
        points = [(e["kappa"], e["gradient_evaluations"]) for t in tables for e in t if e["method"] == method and e["reached"]]
        if points:
            ax.plot(*zip(*points), marker="o", color=f"C{index}", label=f"{method} (best)")
    points = [(kappa, evals) for kappa, evals in rkc_s20.items() if evals is not None]
    if points:
        ax.plot(*zip(*points), marker="s", ls="--", color="black", label="rkc s=20, ε=0.05")
    kappas = np.array(sorted({t[0]["kappa"] for t in tables}))
    if len(kappas):
        anchor = min(e["gradient_evaluations"] for t in tables for e in t if e["reached"] and e["kappa"] == kappas[0])
        ax.plot(kappas, anchor * np.sqrt(kappas / kappas[0]), ":", color="grey", label="∝ √κ")
        ax.plot(kappas, anchor * kappas / kappas[0], "-.", color="grey", label="∝ κ")
    ax.set(xscale="log", yscale="log", xlabel="condition number κ", ylabel="gradient evaluations to the target")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    report.save_figure(fig, path, dpi=110)


def loss_curves(path: Path, results: list[dict[str, Any]]) -> None:
    """Relative gap against gradient evaluations at each method's best setting, one panel per run with curves."""
    plt = report.pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, result in zip(axes.flat, results):
        for index, curve in enumerate(result["curves"].values()):
            gaps = [np.nan if g is None else g for g in curve["relative_gap"]]
            rate = "" if curve["lr_times_L"] is None else f", h·L = {curve['lr_times_L']:.3g}"
            ax.plot(curve["grad_evals"], gaps, color=f"C{index}", label=f"{curve['label']}{rate}")
        ax.set(xscale="log", yscale="log", title=result["problem"], xlabel="gradient evaluations", ylabel="(f − f*)/(f₀ − f*)")
        ax.set_ylim(1e-12, 10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    report.save_figure(fig, path, dpi=110)


def stability_polynomials(path: Path) -> None:
    """``|R_s(-x)|`` on ``x ∈ [0, ℓ_s]`` (log scale from 0.01) for a few ``s`` and ``ε`` (and order 2).

    Beside GD's ``|1 - x|`` on ``[0, 2]``. Near ``x = 0`` every polynomial is
    ``1 - x + O(x²)``: per step a slow mode contracts as under GD, but at a
    step ``h`` up to ``ℓ_s/L``.
    """
    plt = report.pyplot()
    fig, axes = plt.subplots(1, len(STABILITY_STAGES), figsize=(5 * len(STABILITY_STAGES), 4), squeeze=False)
    for ax, stages in zip(axes.flat, STABILITY_STAGES):
        for index, (order, damping) in enumerate(STABILITY_METHODS):
            method = chebyshev_method(stages, order, damping)
            x = np.geomspace(1e-2, method.stability_interval, 4000)
            ax.plot(
                x,
                np.abs(method.stability_function(-x)),
                color=f"C{index}",
                label=f"{method.name}, ℓ = {method.stability_interval:.4g}",
            )
        x = np.geomspace(1e-2, 2.0, 200)
        ax.plot(x, np.abs(1 - x), color="black", lw=2, label="GD |1 − x| (ℓ = 2)")
        ax.set(title=f"s = {stages}", xscale="log", xlabel="x = h·λ", ylabel="|R(−x)|", ylim=(0, 1.05))
        ax.legend(fontsize=7)
    report.save_figure(fig, path, dpi=110)


def mlp_rates(path: Path, runs: list[dict[str, Any]], loss_target: float) -> None:
    """Final training loss (missing: diverged) against the learning rate, per method."""
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for index, method in enumerate(dict.fromkeys(r["method"] for r in runs)):
        own = [r for r in runs if r["method"] == method]
        losses = [np.nan if r["final_train_loss"] is None else r["final_train_loss"] for r in own]
        ax.plot([r["learning_rate"] for r in own], losses, marker="o", color=f"C{index}", label=method)
    ax.axhline(loss_target, color="grey", ls="--", lw=0.8, label="trains below")
    ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final full training loss")
    ax.legend(fontsize=8)
    report.save_figure(fig, path, dpi=110)
