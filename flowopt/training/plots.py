"""Plots of a run's metrics: :func:`plot_sharpness`, the sharpness against the edge-of-stability threshold.

From the shell: ``python -m flowopt.training.plots RUN_DIR [--output FILE]``
draws ``RUN_DIR/metrics.jsonl`` into ``RUN_DIR/sharpness.png`` (or ``FILE``).
Needs matplotlib (``pip install flowopt[plots]``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowopt.training.sharpness import is_sharpness_row

if TYPE_CHECKING:
    import matplotlib.figure

RULE_LABELS = {
    "gradient_descent": "2/η",
    "heavy_ball": "(2+2β)/η",
    "nesterov": "(2+2β)/((1+2β)η)",
    "adam": "(2+2β₁)/((1-β₁)η)",
    "rmsprop": "2/η",
    "reference": "2/η (reference: no threshold known for this method)",
}


def read_metrics(source: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file, or of the one in run directory ``source``."""
    path = Path(source)
    if path.is_dir():
        path = path / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}.") from error
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not a metrics file: {error.msg} at line {error.lineno}.") from error


def plot_sharpness(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike | None = None, *, title: str | None = None
) -> matplotlib.figure.Figure:
    """Draw the sharpness rows among ``rows`` against the step, with their threshold; save to ``path`` if given.

    ``rows``: metrics rows (:func:`read_metrics`, or ``RunResult.sharpness``);
    evaluation rows among them are skipped. Each of the logged top
    eigenvalues is a line (the largest solid); the threshold (which follows
    the learning-rate schedule) is a dashed line labelled with its rule. A
    preconditioned sharpness is labelled so.

    Raises:
      ValueError: ``rows`` hold no sharpness measurement.
    """
    import matplotlib.figure

    measured = [row for row in rows if is_sharpness_row(row)]
    if not measured:
        raise ValueError("plot_sharpness: the rows hold no sharpness measurement (train with sharpness_every).")
    steps = [row["step"] for row in measured]
    figure = matplotlib.figure.Figure(figsize=(7.0, 4.5), layout="constrained")
    axes = figure.subplots()
    kind = "preconditioned sharpness" if measured[-1].get("preconditioned") else "sharpness"
    for rank in range(max(len(row["sharpness"]) for row in measured)):
        values = [row["sharpness"][rank] if rank < len(row["sharpness"]) else None for row in measured]
        style = {"color": "C0", "linewidth": 1.8} if rank == 0 else {"color": "C0", "linewidth": 0.8, "alpha": 0.5}
        axes.plot(steps, [float("nan") if v is None else v for v in values], label=f"{kind} λ_{rank + 1}", **style)
    thresholds = [row.get("threshold") for row in measured]
    if any(t is not None for t in thresholds):
        rule = str(measured[-1].get("rule"))
        axes.plot(
            steps,
            [float("nan") if t is None else t for t in thresholds],
            "--",
            color="C3",
            label=f"threshold {RULE_LABELS.get(rule, rule)}",
        )
    axes.set_xlabel("step")
    axes.set_ylabel(kind)
    axes.set_title(title or f"{kind.capitalize()} on a fixed training batch")
    axes.legend(loc="best", fontsize="small")
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flowopt.training.plots RUN_DIR [--output FILE]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m flowopt.training.plots", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("run", help="run directory (or its metrics.jsonl)")
    parser.add_argument("--output", help="image file (default: RUN_DIR/sharpness.png)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    output = Path(args.output) if args.output else (run if run.is_dir() else run.parent) / "sharpness.png"
    try:
        plot_sharpness(read_metrics(run), output)
    except ValueError as error:
        parser.error(str(error))
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
