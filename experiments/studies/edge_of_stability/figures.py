"""The study's figure: per step size, the losses, the sharpness and the distances to GD's averaged iterate, against t = kη."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from experiments import report

FLOWS = {
    "gradient_flow": ("gradient flow", "C0"),
    "modified_flow": ("modified flow", "C2"),
    "central_flow": ("central flow", "C3"),
}


def plot(path: Path, runs: list[dict[str, Any]]) -> None:
    """One row per run: loss, sharpness ``λ_max·η/2`` and ``‖θ_flow(t) - θ̄_GD(t)‖``."""
    plt = report.pyplot()
    fig, axes = plt.subplots(len(runs), 3, figsize=(16, 4.2 * len(runs)), squeeze=False)
    for row, run in zip(axes, runs):
        eta = run["learning_rate"]
        steps = np.arange(len(run["gd"]["losses"]))
        times = np.asarray(run["times"])
        loss_ax, sharp_ax, distance_ax = row
        loss_ax.plot(steps * eta, run["gd"]["losses"], color="0.75", linewidth=0.6, label="gradient descent")
        loss_ax.plot(times, run["gd"]["averaged_losses"], "ko", markersize=3, label="GD, time-averaged")
        for name, (label, color) in FLOWS.items():
            loss_ax.plot(times, run[name]["loss"], color=color, label=f"{label} (prediction)")
            sharp_ax.plot(times, np.asarray(run[name]["sharpness"]) * eta / 2, color=color, label=label)
            distance_ax.plot(times, run[name]["distance_to_gd_average"], color=color, label=label)
        loss_ax.set(yscale="log", xlabel="t = kη", ylabel="training loss", title=f"η = {eta:.4g}")
        sharp_ax.plot(
            np.asarray(run["gd"]["sharpness_steps"]) * eta,
            np.asarray(run["gd"]["sharpness"]) * eta / 2,
            "k.",
            markersize=3,
            label="gradient descent",
        )
        sharp_ax.axhline(1.0, color="0.4", linestyle="--", linewidth=0.8, label="2/η")
        sharp_ax.set(xlabel="t = kη", ylabel="λ_max · η / 2", title="sharpness")
        distance_ax.plot(times, run["gd"]["oscillation"], "k:", label="GD iterate (its own oscillation)")
        distance_ax.set(xlabel="t = kη", ylabel="‖θ(t) − θ̄_GD(t)‖", title="distance to GD's averaged iterate")
        for ax in row:
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    report.save_figure(fig, path, dpi=100)
